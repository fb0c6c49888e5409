//! Table tests of BackupSchedule time arithmetic: every cron field kind, macros, time zones,
//! both daylight saving transitions in Europe/Paris and America/New_York, February 29,
//! intervals, catching up after an outage, and the messages for invalid schedules.

use cairn_kube::crd::BackupScheduleSpec;
use cairn_kube::schedule::{Cron, Schedule};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::json;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// The next `n` fire times of `expr` in `zone` strictly after `from`, in UTC.
fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
    let cron = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let tz = TimeZone::get(zone).unwrap();
    let mut at = ts(from);
    let mut out = Vec::new();
    for _ in 0..n {
        at = cron.next_after(at, &tz).unwrap();
        out.push(at.to_string());
    }
    out
}

#[test]
fn every_field_kind_selects_the_right_times() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "*/20 * * * *",
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-01T00:20:00Z",
                "2025-01-01T00:40:00Z",
                "2025-01-01T01:00:00Z",
            ],
        ),
        (
            "5,10-12 3 * * *",
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-01T03:05:00Z",
                "2025-01-01T03:10:00Z",
                "2025-01-01T03:11:00Z",
                "2025-01-01T03:12:00Z",
                "2025-01-02T03:05:00Z",
            ],
        ),
        (
            "10/20 * * * *",
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-01T00:10:00Z",
                "2025-01-01T00:30:00Z",
                "2025-01-01T00:50:00Z",
            ],
        ),
        (
            "0 8-18/5 * * *",
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-01T08:00:00Z",
                "2025-01-01T13:00:00Z",
                "2025-01-01T18:00:00Z",
            ],
        ),
        // 2025-01-03 is a Friday.
        (
            "0 0 * * mon-fri",
            "2025-01-03T12:00:00Z",
            &["2025-01-06T00:00:00Z", "2025-01-07T00:00:00Z"],
        ),
        (
            "0 0 * * 7",
            "2025-01-01T00:00:00Z",
            &["2025-01-05T00:00:00Z", "2025-01-12T00:00:00Z"],
        ),
        (
            "0 0 * * SUN",
            "2025-01-01T00:00:00Z",
            &["2025-01-05T00:00:00Z"],
        ),
        (
            "0 0 1 jan,Jul *",
            "2025-01-01T00:00:00Z",
            &["2025-07-01T00:00:00Z", "2026-01-01T00:00:00Z"],
        ),
        // Both day fields restricted: the 13th or any Friday (Vixie).
        (
            "0 0 13 * 5",
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-03T00:00:00Z",
                "2025-01-10T00:00:00Z",
                "2025-01-13T00:00:00Z",
                "2025-01-17T00:00:00Z",
            ],
        ),
        // A day field starting with `*` does not count as restricted: both must match.
        (
            "0 0 */10 * fri",
            "2025-01-01T00:00:00Z",
            &["2025-01-31T00:00:00Z", "2025-02-21T00:00:00Z"],
        ),
        (
            "0 12 29 2 *",
            "2025-01-01T00:00:00Z",
            &["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"],
        ),
        (
            "0 0 31 * *",
            "2025-01-31T00:00:00Z",
            &["2025-03-31T00:00:00Z", "2025-05-31T00:00:00Z"],
        ),
    ];
    for (expr, from, want) in cases {
        assert_eq!(fires(expr, "UTC", from, want.len()), *want, "{expr}");
    }
}

#[test]
fn macros_are_their_five_field_equivalents() {
    for (mac, expr) in [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ] {
        assert_eq!(
            Cron::parse(mac).unwrap(),
            Cron::parse(expr).unwrap(),
            "{mac}"
        );
    }
}

#[test]
fn a_time_zone_moves_the_fire_time() {
    assert_eq!(
        fires("0 2 * * *", "Europe/Paris", "2025-01-01T00:00:00Z", 1),
        ["2025-01-01T01:00:00Z"]
    );
    assert_eq!(
        fires("0 2 * * *", "Europe/Paris", "2025-07-01T00:00:00Z", 1),
        ["2025-07-02T00:00:00Z"]
    );
    assert_eq!(
        fires("0 22 * * *", "America/New_York", "2025-01-01T00:00:00Z", 1),
        ["2025-01-01T03:00:00Z"]
    );
}

#[test]
fn spring_forward_runs_a_missing_time_once_at_the_end_of_the_gap() {
    // Paris 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    assert_eq!(
        fires("30 2 * * *", "Europe/Paris", "2025-03-29T12:00:00Z", 2),
        ["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"]
    );
    // Every quarter of the missing hour, and 03:00 itself, is one run.
    assert_eq!(
        fires("*/15 2,3 * * *", "Europe/Paris", "2025-03-30T00:00:00Z", 3),
        [
            "2025-03-30T01:00:00Z",
            "2025-03-30T01:15:00Z",
            "2025-03-30T01:30:00Z"
        ]
    );
    // New York 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    assert_eq!(
        fires("30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z", 2),
        ["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"]
    );
}

#[test]
fn fall_back_runs_a_repeated_time_once_at_its_first_occurrence() {
    // Paris 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    assert_eq!(
        fires("30 2 * * *", "Europe/Paris", "2025-10-25T12:00:00Z", 2),
        ["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]
    );
    // New York 2025-11-02: 02:00 EDT goes back to 01:00 EST; 01:00 EST (06:00 UTC) is skipped.
    assert_eq!(
        fires("0 * * * *", "America/New_York", "2025-11-02T04:30:00Z", 3),
        [
            "2025-11-02T05:00:00Z",
            "2025-11-02T07:00:00Z",
            "2025-11-02T08:00:00Z"
        ]
    );
    assert_eq!(
        fires("30 1 * * *", "America/New_York", "2025-11-01T12:00:00Z", 2),
        ["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]
    );
}

#[test]
fn invalid_expressions_say_what_is_wrong() {
    let cases = [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("* * *", "3 fields; write 5"),
        ("* * * * * *", "6 fields; write 5"),
        ("5-1 * * * *", "goes backwards"),
        ("*/0 * * * *", "step \"0\" is not a positive number"),
        (
            "0 0 * foo *",
            "month \"foo\" is not a number or a name like \"feb\"",
        ),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 30 2 *", "never falls in month"),
        ("0 0 31 4,6 *", "never falls in month"),
        ("@reboot", "unknown macro"),
    ];
    for (expr, want) in cases {
        let err = Cron::parse(expr).unwrap_err();
        assert!(err.contains(want), "{expr}: {err}");
    }
    // Both day fields restricted: the weekday still fires.
    assert!(Cron::parse("0 0 30 2 mon").is_ok());
}

fn spec(fields: serde_json::Value) -> BackupScheduleSpec {
    let mut full = json!({ "template": { "volumeBackup": {
        "source": {"persistentVolumeClaim": "data"}, "repository": "main" } } });
    for (k, v) in fields.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(full).unwrap()
}

#[test]
fn a_spec_sets_exactly_one_schedule() {
    let cases = [
        (json!({}), "neither spec.schedule nor spec.every"),
        (
            json!({"schedule": "0 2 * * *", "every": "6h"}),
            "both spec.schedule and spec.every",
        ),
        (
            json!({"every": "6h", "timeZone": "UTC"}),
            "spec.timeZone only applies",
        ),
        (
            json!({"schedule": "0 2 * * *", "timeZone": "Mars/Olympus"}),
            "spec.timeZone \"Mars/Olympus\"",
        ),
        (
            json!({"schedule": "0 2 * *"}),
            "spec.schedule \"0 2 * *\": 4 fields",
        ),
        (json!({"every": "soon"}), "spec.every \"soon\""),
        (json!({"every": "0"}), "shorter than one second"),
    ];
    for (fields, want) in cases {
        let err = Schedule::from_spec(&spec(fields.clone())).unwrap_err();
        assert!(err.contains(want), "{fields}: {err}");
    }
    assert!(Schedule::from_spec(&spec(json!({"every": "5s"}))).is_ok());
    assert!(Schedule::from_spec(&spec(
        json!({"schedule": "@daily", "timeZone": "Europe/Paris"})
    ))
    .is_ok());
}

#[test]
fn an_interval_counts_from_its_base() {
    let s = Schedule::from_spec(&spec(json!({"every": "6h"}))).unwrap();
    let base = ts("2025-01-01T00:00:00Z");
    let next = |after: &str| s.next_after(base, ts(after)).unwrap().to_string();
    assert_eq!(next("2025-01-01T00:00:00Z"), "2025-01-01T06:00:00Z");
    assert_eq!(next("2024-12-31T00:00:00Z"), "2025-01-01T06:00:00Z");
    assert_eq!(next("2025-01-01T07:00:00Z"), "2025-01-01T12:00:00Z");
    assert_eq!(next("2025-01-01T12:00:00Z"), "2025-01-01T18:00:00Z");
}

#[test]
fn after_an_outage_only_the_latest_due_time_is_due() {
    let base = ts("2025-01-01T00:00:00Z");
    let every = Schedule::from_spec(&spec(json!({"every": "1h"}))).unwrap();
    assert_eq!(every.latest_due(base, ts("2025-01-01T00:59:59Z")), None);
    assert_eq!(
        every.latest_due(base, ts("2025-01-01T05:30:00Z")),
        Some(ts("2025-01-01T05:00:00Z"))
    );
    let hourly = Schedule::from_spec(&spec(json!({"schedule": "0 * * * *"}))).unwrap();
    assert_eq!(hourly.latest_due(base, ts("2025-01-01T00:30:00Z")), None);
    assert_eq!(
        hourly.latest_due(base, ts("2025-03-01T10:30:00Z")),
        Some(ts("2025-03-01T10:00:00Z"))
    );
    assert_eq!(
        hourly.latest_due(base, ts("2025-01-01T01:00:00Z")),
        Some(ts("2025-01-01T01:00:00Z"))
    );
    let leap = Schedule::from_spec(&spec(json!({"schedule": "0 0 29 2 *"}))).unwrap();
    assert_eq!(
        leap.latest_due(ts("2020-03-01T00:00:00Z"), ts("2030-03-01T00:00:00Z")),
        Some(ts("2028-02-29T00:00:00Z"))
    );
    let minutely = Schedule::from_spec(&spec(json!({"schedule": "* * * * *"}))).unwrap();
    assert_eq!(
        minutely.latest_due(base, ts("2026-01-01T00:00:30Z")),
        Some(ts("2026-01-01T00:00:00Z"))
    );
}

#[test]
fn the_sample_schedules_are_valid() {
    let text = include_str!("../../../../deploy/samples/backupschedule.yaml");
    let mut seen = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let schedule: cairn_kube::crd::BackupSchedule =
            serde::Deserialize::deserialize(doc).unwrap();
        Schedule::from_spec(&schedule.spec).unwrap();
        seen += 1;
    }
    assert_eq!(seen, 2);
}
