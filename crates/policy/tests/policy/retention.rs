//! Retention table tests over generated timelines, each checked against a hand-computed set.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use cairn_policy::{apply, GroupDecision, PolicyError, RetentionPolicy, SnapshotInfo};

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn snapshot(id: &str, time: DateTime<Utc>) -> SnapshotInfo {
    SnapshotInfo {
        id: id.to_string(),
        time,
        host: "node-1".into(),
        source: "/data".into(),
        tags: Vec::new(),
    }
}

/// 72 snapshots, every hour at :30 from 2024-03-01 00:30 UTC (a Friday) to 2024-03-03
/// 23:30 (the Sunday of the same ISO week). Ids are `h00`..`h71`, in time order.
fn hourly_three_days() -> Vec<SnapshotInfo> {
    (0..72)
        .map(|k| {
            snapshot(
                &format!("h{k:02}"),
                at(2024, 3, 1, 0, 30) + chrono::Duration::hours(k),
            )
        })
        .collect()
}

/// 730 snapshots, one a day at 02:00 UTC from 2022-01-01 to 2023-12-31. Ids are the dates.
fn daily_two_years() -> Vec<SnapshotInfo> {
    let first = NaiveDate::from_ymd_opt(2022, 1, 1).unwrap();
    (0..730)
        .map(|d| {
            let date = first + chrono::Duration::days(d);
            let time = Utc.from_utc_datetime(&date.and_hms_opt(2, 0, 0).unwrap());
            snapshot(&date.to_string(), time)
        })
        .collect()
}

/// The one group's decision, checked for consistency with the input.
fn single_group(
    policy: &RetentionPolicy,
    snapshots: &[SnapshotInfo],
    now: DateTime<Utc>,
) -> GroupDecision {
    let mut groups = apply(policy, snapshots, now).unwrap();
    assert_eq!(groups.len(), 1);
    let group = groups.remove(0);
    check_partition(&group, snapshots);
    group
}

/// keep and remove are disjoint, cover the input, and are each ordered newest first.
fn check_partition(group: &GroupDecision, snapshots: &[SnapshotInfo]) {
    let kept: Vec<&str> = group.keep.iter().map(|k| k.id.as_str()).collect();
    let mut all: Vec<&str> = kept
        .iter()
        .copied()
        .chain(group.remove.iter().map(String::as_str))
        .collect();
    let time_of = |id: &str| snapshots.iter().find(|s| s.id == id).unwrap().time;
    for list in [
        kept.clone(),
        group.remove.iter().map(String::as_str).collect(),
    ] {
        assert!(
            list.windows(2).all(|w| time_of(w[0]) >= time_of(w[1])),
            "not newest first: {list:?}"
        );
    }
    all.sort_unstable();
    let mut expected: Vec<&str> = snapshots
        .iter()
        .filter(|s| s.host == group.host && s.source == group.source)
        .map(|s| s.id.as_str())
        .collect();
    expected.sort_unstable();
    assert_eq!(all, expected, "keep and remove must partition the group");
    assert!(group.keep.iter().all(|k| !k.reasons.is_empty()));
}

fn kept_ids(group: &GroupDecision) -> BTreeSet<String> {
    group.keep.iter().map(|k| k.id.clone()).collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn reasons_of(group: &GroupDecision, id: &str) -> Vec<String> {
    group
        .keep
        .iter()
        .find(|k| k.id == id)
        .map(|k| k.reasons.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

fn policy() -> RetentionPolicy {
    RetentionPolicy::default()
}

/// Hand-computed expectations for the hourly timeline.
#[test]
fn hourly_timeline_table() {
    let snapshots = hourly_three_days();
    let now = at(2024, 3, 4, 0, 0);
    let hours = |n: u64| Some(Duration::from_secs(n * 3600));
    let cases: Vec<(&str, RetentionPolicy, Vec<&str>)> = vec![
        // Newest 5 hours; then the newest of each day (Mar 3, 2, 1 end at 23:30).
        (
            "hourly 5 + daily 3",
            RetentionPolicy {
                keep_hourly: Some(5),
                keep_daily: Some(3),
                ..policy()
            },
            vec!["h71", "h70", "h69", "h68", "h67", "h47", "h23"],
        ),
        // Only three days exist: the daily rule has two periods left, so the oldest
        // snapshot is kept as well.
        (
            "last 3 + daily 5",
            RetentionPolicy {
                keep_last: Some(3),
                keep_daily: Some(5),
                ..policy()
            },
            vec!["h71", "h70", "h69", "h47", "h23", "h00"],
        ),
        // All 72 snapshots fall in ISO week 2024-W09: its newest, plus the oldest.
        (
            "weekly 2",
            RetentionPolicy {
                keep_weekly: Some(2),
                ..policy()
            },
            vec!["h71", "h00"],
        ),
        // Strictly newer than 23:30 - 6h = 17:30 on Mar 3: 18:30 (h66) .. 23:30 (h71).
        (
            "within 6h",
            RetentionPolicy {
                keep_within: hours(6),
                ..policy()
            },
            vec!["h71", "h70", "h69", "h68", "h67", "h66"],
        ),
        // Every hour is its own period; 72 < 100, all kept.
        (
            "hourly 100",
            RetentionPolicy {
                keep_hourly: Some(100),
                ..policy()
            },
            (0..72)
                .map(|k| Box::leak(format!("h{k:02}").into_boxed_str()) as &str)
                .collect(),
        ),
        // Exactly as many days as asked: no oldest extra.
        (
            "daily 3",
            RetentionPolicy {
                keep_daily: Some(3),
                ..policy()
            },
            vec!["h71", "h47", "h23"],
        ),
        // A zero count is no rule; the other rule still applies.
        (
            "last 1 + hourly 0",
            RetentionPolicy {
                keep_last: Some(1),
                keep_hourly: Some(0),
                ..policy()
            },
            vec!["h71"],
        ),
    ];
    for (name, policy, expected) in cases {
        let group = single_group(&policy, &snapshots, now);
        assert_eq!(kept_ids(&group), ids(&expected), "case {name}");
    }
}

#[test]
fn hourly_timeline_reasons_name_every_rule() {
    let policy = RetentionPolicy {
        keep_last: Some(3),
        keep_hourly: Some(2),
        keep_daily: Some(5),
        ..policy()
    };
    let group = single_group(&policy, &hourly_three_days(), at(2024, 3, 4, 0, 0));
    assert_eq!(
        reasons_of(&group, "h71"),
        ["last snapshot", "hourly snapshot", "daily snapshot"]
    );
    assert_eq!(
        reasons_of(&group, "h70"),
        ["last snapshot", "hourly snapshot"]
    );
    assert_eq!(reasons_of(&group, "h69"), ["last snapshot"]);
    assert_eq!(reasons_of(&group, "h47"), ["daily snapshot"]);
    assert_eq!(reasons_of(&group, "h23"), ["daily snapshot"]);
    // Three days filled two of five daily periods short: the oldest is kept too.
    assert_eq!(reasons_of(&group, "h00"), ["oldest daily snapshot"]);
    assert_eq!(group.keep.len(), 6);
    assert_eq!(group.remove.len(), 66);
}

/// Hand-computed expectations for two years of dailies.
#[test]
fn daily_two_years_table() {
    let snapshots = daily_two_years();
    let now = at(2024, 1, 1, 0, 0);
    let month_ends_2023 = [
        "2023-01-31",
        "2023-02-28",
        "2023-03-31",
        "2023-04-30",
        "2023-05-31",
        "2023-06-30",
        "2023-07-31",
        "2023-08-31",
        "2023-09-30",
        "2023-10-31",
        "2023-11-30",
        "2023-12-31",
    ];
    let month_ends_2022 = [
        "2022-01-31",
        "2022-02-28",
        "2022-03-31",
        "2022-04-30",
        "2022-05-31",
        "2022-06-30",
        "2022-07-31",
        "2022-08-31",
        "2022-09-30",
        "2022-10-31",
        "2022-11-30",
        "2022-12-31",
    ];
    let mut typical = vec![
        // daily 7: Dec 25..31.
        "2023-12-25",
        "2023-12-26",
        "2023-12-27",
        "2023-12-28",
        "2023-12-29",
        "2023-12-30",
        "2023-12-31",
        // weekly 4: the Sundays ending ISO weeks 52, 51, 50, 49 (Dec 31 counted above).
        "2023-12-24",
        "2023-12-17",
        "2023-12-10",
        // yearly 3: two years exist, so also the oldest snapshot.
        "2022-12-31",
        "2022-01-01",
    ];
    // monthly 12: the last day of every month of 2023.
    typical.extend(month_ends_2023);
    let mut monthly_30: Vec<&str> = month_ends_2023
        .iter()
        .chain(&month_ends_2022)
        .copied()
        .collect();
    monthly_30.push("2022-01-01");
    let cases: Vec<(&str, RetentionPolicy, Vec<&str>)> = vec![
        (
            "daily 7 weekly 4 monthly 12 yearly 3",
            RetentionPolicy {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(12),
                keep_yearly: Some(3),
                ..policy()
            },
            typical,
        ),
        (
            "monthly 30",
            RetentionPolicy {
                keep_monthly: Some(30),
                ..policy()
            },
            monthly_30,
        ),
        // 2022-01-01 is a Saturday in ISO week 2021-W52, 2022-01-02 ends it: the newest of
        // that week is Jan 2, and Jan 1 is a week of its own only in calendar terms.
        (
            "weekly 1000",
            RetentionPolicy {
                keep_weekly: Some(1000),
                ..policy()
            },
            {
                let mut sundays: Vec<&str> = daily_two_years()
                    .iter()
                    .filter(|s| s.time.format("%a").to_string() == "Sun")
                    .map(|s| Box::leak(s.id.clone().into_boxed_str()) as &str)
                    .collect();
                // 2022-01-01 (Sat) and 2022-01-02 (Sun) share ISO week 2021-W52; the oldest
                // extra keeps Jan 1 too. 2023-12-31 is a Sunday, so no partial week at the end.
                sundays.push("2022-01-01");
                sundays
            },
        ),
        (
            "within 30 days + yearly 1",
            RetentionPolicy {
                keep_within: Some(Duration::from_secs(30 * 86400)),
                keep_yearly: Some(1),
                ..policy()
            },
            // Strictly after 2023-12-01 02:00: Dec 2 .. Dec 31.
            (2..=31)
                .map(|d| Box::leak(format!("2023-12-{d:02}").into_boxed_str()) as &str)
                .collect(),
        ),
        (
            "yearly 1",
            RetentionPolicy {
                keep_yearly: Some(1),
                ..policy()
            },
            vec!["2023-12-31"],
        ),
    ];
    for (name, policy, expected) in cases {
        let group = single_group(&policy, &snapshots, now);
        assert_eq!(kept_ids(&group), ids(&expected), "case {name}");
    }
}

/// The first example of docs/RETENTION.md, reasons included.
#[test]
fn documented_two_year_example_reasons() {
    let policy = RetentionPolicy {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(12),
        keep_yearly: Some(3),
        ..policy()
    };
    let group = single_group(&policy, &daily_two_years(), at(2024, 1, 1, 0, 0));
    assert_eq!(group.keep.len(), 23);
    assert_eq!(
        reasons_of(&group, "2023-12-31"),
        [
            "daily snapshot",
            "weekly snapshot",
            "monthly snapshot",
            "yearly snapshot"
        ]
    );
    assert_eq!(reasons_of(&group, "2023-12-25"), ["daily snapshot"]);
    assert_eq!(reasons_of(&group, "2023-12-24"), ["weekly snapshot"]);
    assert_eq!(reasons_of(&group, "2023-11-30"), ["monthly snapshot"]);
    assert_eq!(reasons_of(&group, "2022-12-31"), ["yearly snapshot"]);
    assert_eq!(reasons_of(&group, "2022-01-01"), ["oldest yearly snapshot"]);
}

#[test]
fn weekly_count_of_the_two_year_timeline() {
    // 2022-01-02 to 2023-12-31 is 728 days, 104 weeks: 105 Sundays, plus the oldest.
    let group = single_group(
        &RetentionPolicy {
            keep_weekly: Some(1000),
            ..policy()
        },
        &daily_two_years(),
        at(2024, 1, 1, 0, 0),
    );
    assert_eq!(group.keep.len(), 106);
}

/// An irregular timeline: several a day, gaps of weeks, tags, several hosts and sources.
fn irregular() -> Vec<SnapshotInfo> {
    let tagged = |id: &str, time, tags: &[&str]| SnapshotInfo {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..snapshot(id, time)
    };
    let other = |id: &str, time, host: &str, source: &str| SnapshotInfo {
        host: host.into(),
        source: source.into(),
        ..snapshot(id, time)
    };
    vec![
        tagged("s1", at(2024, 1, 1, 10, 0), &[]),
        tagged("s2", at(2024, 1, 1, 12, 0), &[]),
        tagged("s3", at(2024, 1, 5, 9, 0), &["archive"]),
        tagged("s4", at(2024, 2, 10, 8, 0), &["manual", "pinned"]),
        tagged("s5", at(2024, 2, 10, 20, 0), &["manual"]),
        tagged("s6", at(2024, 3, 15, 0, 0), &[]),
        tagged("s7", at(2024, 3, 15, 0, 5), &[]),
        other("b1", at(2024, 1, 2, 0, 0), "node-2", "/data"),
        other("e1", at(2024, 1, 3, 0, 0), "node-1", "/etc"),
        other("e2", at(2024, 3, 1, 0, 0), "node-1", "/etc"),
    ]
}

#[test]
fn irregular_timeline_table() {
    let snapshots = irregular();
    let now = at(2024, 4, 1, 0, 0);
    // Expected kept ids of group (node-1, /data); the other groups are checked below.
    let cases: Vec<(&str, RetentionPolicy, Vec<&str>)> = vec![
        (
            "last 2",
            RetentionPolicy {
                keep_last: Some(2),
                ..policy()
            },
            vec!["s7", "s6"],
        ),
        (
            "last 2 + tag sets",
            RetentionPolicy {
                keep_last: Some(2),
                keep_tags: vec!["manual,pinned".into(), "archive".into()],
                ..policy()
            },
            vec!["s7", "s6", "s4", "s3"],
        ),
        (
            "tag subset matches every snapshot carrying it",
            RetentionPolicy {
                keep_tags: vec!["manual".into()],
                ..policy()
            },
            vec!["s5", "s4"],
        ),
        (
            "a tag set needs all its tags",
            RetentionPolicy {
                keep_tags: vec!["manual, missing".into()],
                ..policy()
            },
            vec![],
        ),
        // Days with snapshots: Mar 15 (s7 newest), Feb 10 (s5), Jan 5 (s3), Jan 1 (s2).
        (
            "daily 3",
            RetentionPolicy {
                keep_daily: Some(3),
                ..policy()
            },
            vec!["s7", "s5", "s3"],
        ),
        // Months: Mar (s7), Feb (s5), Jan (s3); a rule left with periods keeps s1 too.
        (
            "monthly 4",
            RetentionPolicy {
                keep_monthly: Some(4),
                ..policy()
            },
            vec!["s7", "s5", "s3", "s1"],
        ),
        // Hours: 2024-03-15 00 holds s7 and s6: one period.
        (
            "hourly 2",
            RetentionPolicy {
                keep_hourly: Some(2),
                ..policy()
            },
            vec!["s7", "s5"],
        ),
        // Within 40 days of s7 (Mar 15 00:05): after Feb 4 00:05.
        (
            "within 40d",
            RetentionPolicy {
                keep_within: Some(Duration::from_secs(40 * 86400)),
                ..policy()
            },
            vec!["s7", "s6", "s5", "s4"],
        ),
    ];
    for (name, policy, expected) in cases {
        let groups = apply(&policy, &snapshots, now).unwrap();
        let keys: Vec<(&str, &str)> = groups
            .iter()
            .map(|g| (g.host.as_str(), g.source.as_str()))
            .collect();
        assert_eq!(
            keys,
            [("node-1", "/data"), ("node-1", "/etc"), ("node-2", "/data")],
            "case {name}"
        );
        for group in &groups {
            check_partition(group, &snapshots);
        }
        assert_eq!(kept_ids(&groups[0]), ids(&expected), "case {name}");
    }
}

#[test]
fn groups_are_judged_separately() {
    let groups = apply(
        &RetentionPolicy {
            keep_last: Some(1),
            ..policy()
        },
        &irregular(),
        at(2024, 4, 1, 0, 0),
    )
    .unwrap();
    assert_eq!(kept_ids(&groups[0]), ids(&["s7"]));
    assert_eq!(kept_ids(&groups[1]), ids(&["e2"]));
    assert_eq!(groups[1].remove, ["e1"]);
    assert_eq!(kept_ids(&groups[2]), ids(&["b1"]));
    assert!(groups[2].remove.is_empty());
}

#[test]
fn keep_within_is_relative_to_the_newest_snapshot_not_now() {
    // Backups stopped in January; months later keep-within still keeps their last days.
    let snapshots: Vec<SnapshotInfo> = (1..=10)
        .map(|d| snapshot(&format!("jan{d:02}"), at(2024, 1, d, 2, 0)))
        .collect();
    let policy = RetentionPolicy {
        keep_within: Some(Duration::from_secs(3 * 86400)),
        ..policy()
    };
    let now = at(2024, 6, 1, 0, 0);
    let group = single_group(&policy, &snapshots, now);
    // Strictly after Jan 7 02:00.
    assert_eq!(kept_ids(&group), ids(&["jan08", "jan09", "jan10"]));
    assert_eq!(reasons_of(&group, "jan08"), ["within 3days"]);

    // A snapshot dated after `now` (clock skew) is kept but does not move the window.
    let mut skewed = snapshots.clone();
    skewed.push(snapshot("future", at(2024, 7, 1, 0, 0)));
    let group = single_group(&policy, &skewed, now);
    assert_eq!(
        kept_ids(&group),
        ids(&["future", "jan08", "jan09", "jan10"])
    );
}

#[test]
fn periods_are_utc() {
    // 23:30 UTC and 00:30 UTC the next day are two days, whatever the local zone says.
    let snapshots = vec![
        snapshot("a", at(2024, 5, 1, 23, 30)),
        snapshot("b", at(2024, 5, 2, 0, 30)),
    ];
    let group = single_group(
        &RetentionPolicy {
            keep_daily: Some(2),
            ..policy()
        },
        &snapshots,
        at(2024, 6, 1, 0, 0),
    );
    assert_eq!(kept_ids(&group), ids(&["a", "b"]));
    assert_eq!(reasons_of(&group, "a"), ["daily snapshot"]);
}

#[test]
fn equal_times_are_ordered_by_id_whatever_the_input_order() {
    let t = at(2024, 5, 1, 12, 0);
    let forward = vec![snapshot("a", t), snapshot("b", t), snapshot("c", t)];
    let backward: Vec<SnapshotInfo> = forward.iter().rev().cloned().collect();
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..policy()
    };
    let now = at(2024, 6, 1, 0, 0);
    assert_eq!(
        apply(&policy, &forward, now).unwrap(),
        apply(&policy, &backward, now).unwrap()
    );
    assert_eq!(kept_ids(&single_group(&policy, &forward, now)), ids(&["c"]));
}

#[test]
fn empty_policies_are_refused() {
    let snapshots = hourly_three_days();
    let now = at(2024, 3, 4, 0, 0);
    let zeros = RetentionPolicy {
        keep_last: Some(0),
        keep_hourly: Some(0),
        keep_within: Some(Duration::ZERO),
        ..policy()
    };
    for empty in [policy(), zeros] {
        let err = apply(&empty, &snapshots, now).unwrap_err();
        assert!(matches!(err, PolicyError::EmptyRetentionPolicy));
        assert!(err.to_string().contains("refusing to forget"), "{err}");
    }
}

#[test]
fn empty_keep_tag_is_refused() {
    for bad in ["", " , "] {
        let policy = RetentionPolicy {
            keep_tags: vec![bad.into()],
            ..policy()
        };
        let err = apply(&policy, &[], at(2024, 1, 1, 0, 0)).unwrap_err();
        assert!(
            matches!(err, PolicyError::InvalidKeepTag { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn no_snapshots_no_groups() {
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..policy()
    };
    assert!(apply(&policy, &[], at(2024, 1, 1, 0, 0))
        .unwrap()
        .is_empty());
}

#[test]
fn decisions_serialize_for_dry_run_json() {
    let policy = RetentionPolicy {
        keep_last: Some(1),
        keep_tags: vec!["archive".into()],
        ..policy()
    };
    let groups = apply(&policy, &irregular(), at(2024, 4, 1, 0, 0)).unwrap();
    let json = serde_json::to_value(&groups[0]).unwrap();
    assert_eq!(json["host"], "node-1");
    assert_eq!(json["keep"][0]["id"], "s7");
    assert_eq!(json["keep"][0]["reasons"][0], "last snapshot");
    assert_eq!(json["keep"][1]["reasons"][0], "has tags archive");
    assert_eq!(json["remove"][0], "s6");
}
