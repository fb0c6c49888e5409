//! Table tests of the BackupSchedule decisions: when runs are created, caught up, skipped
//! and suspended; how outcomes are counted across restarts; retention of run objects and
//! the forget Job for their snapshots.

use cairn_kube::config::Config;
use cairn_kube::controller::{
    decide_schedule, run_name, Action, DecideContext, JobInfo, JobSettings, RunKind, RunOutcome,
    ScheduleObserved, ScheduleRun, ScheduledRun,
};
use cairn_kube::crd::{BackupRepository, BackupSchedule, BackupScheduleStatus};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

const CREATED: &str = "2025-06-01T00:00:00Z";

fn ctx(now: &str) -> DecideContext {
    DecideContext {
        config: Config::from_data(&BTreeMap::new()),
        jobs: JobSettings::default(),
        now: ts(now),
    }
}

fn schedule(spec: Value, status: Value) -> BackupSchedule {
    let mut full = json!({ "template": { "volumeBackup": {
        "source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main",
        "tags": {"team": "shop"} } } });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly", "namespace": "shop", "uid": "uid-sched",
                     "creationTimestamp": CREATED},
        "spec": full, "status": status,
    }))
    .unwrap()
}

fn repository() -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "main", "namespace": "shop", "uid": "uid-repo"},
        "spec": {"location": "s3://backups/shop",
                 "passwordSecret": {"name": "repo-pass", "key": "password"}},
    }))
    .unwrap()
}

fn run(name: &str, outcome: RunOutcome, time: &str) -> ScheduleRun {
    ScheduleRun {
        name: name.into(),
        outcome,
        time: ts(time),
        finished: (outcome != RunOutcome::Running).then(|| ts(time)),
    }
}

fn observed(schedule: BackupSchedule, runs: Vec<ScheduleRun>) -> ScheduleObserved {
    ScheduleObserved {
        schedule,
        runs,
        repository: Some(repository()),
        forget_job: None,
        running_maintenance_jobs: 0,
        repository_busy: false,
    }
}

fn status_of(actions: &[Action]) -> Option<BackupScheduleStatus> {
    actions.iter().find_map(|a| match a {
        Action::PatchScheduleStatus(s) => Some(s.as_ref().clone()),
        _ => None,
    })
}

fn created(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateScheduledRun(r) => Some(r.to_json()),
            _ => None,
        })
        .collect()
}

fn deleted(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteScheduledRun { name, kind, .. } => {
                assert_eq!(*kind, RunKind::Volume);
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

fn jobs(actions: &[Action]) -> Vec<Vec<String>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(job) => {
                let c = &job.spec.as_ref()?.template.spec.as_ref()?.containers[0];
                c.args.clone()
            }
            _ => None,
        })
        .collect()
}

fn requeue(actions: &[Action]) -> Duration {
    actions
        .iter()
        .find_map(|a| match a {
            Action::RequeueAfter(d) => Some(*d),
            _ => None,
        })
        .unwrap()
}

fn t(text: &str) -> Value {
    json!(text)
}

#[test]
fn a_due_run_is_created_from_the_template_with_the_schedule_tag() {
    let s = schedule(json!({"schedule": "0 2 * * *"}), json!({}));
    let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-01T02:00:30Z"));
    let runs = created(&actions);
    assert_eq!(runs.len(), 1, "{actions:?}");
    let vb = &runs[0];
    assert_eq!(vb["kind"], "VolumeBackup");
    assert_eq!(vb["metadata"]["name"], "nightly-20250601020000");
    assert_eq!(vb["metadata"]["namespace"], "shop");
    assert_eq!(vb["metadata"]["labels"]["cairn.io/schedule"], "nightly");
    assert_eq!(
        vb["metadata"]["annotations"]["cairn.io/scheduled-time"],
        "2025-06-01T02:00:00Z"
    );
    assert_eq!(vb["metadata"]["ownerReferences"][0]["uid"], "uid-sched");
    assert_eq!(
        vb["metadata"]["ownerReferences"][0]["kind"],
        "BackupSchedule"
    );
    assert_eq!(
        vb["spec"]["tags"],
        json!({"team": "shop", "cairn.io/schedule": "nightly"})
    );
    assert_eq!(vb["spec"]["source"]["persistentVolumeClaim"], "data-db-0");
    let status = status_of(&actions).unwrap();
    assert_eq!(status.runs, 1);
    assert_eq!(status.active.as_deref(), Some("nightly-20250601020000"));
    assert_eq!(
        status.last_schedule_time.unwrap().0,
        ts("2025-06-01T02:00:00Z")
    );
    assert_eq!(
        status.next_schedule_time.unwrap().0,
        ts("2025-06-02T02:00:00Z")
    );
    // The run is created before the status that counts it.
    assert!(matches!(actions[0], Action::CreateScheduledRun(_)));
    // Due in almost a day: checked again within the hour all the same.
    assert_eq!(requeue(&actions), Duration::from_secs(3600));
}

#[test]
fn an_application_backup_template_creates_an_application_backup() {
    let mut s = schedule(json!({"every": "6h"}), json!({}));
    s.spec.template = serde_json::from_value(json!({ "applicationBackup": {
        "includedNamespaces": ["shop"], "repository": "main" } }))
    .unwrap();
    let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-01T06:00:00Z"));
    let runs = created(&actions);
    assert_eq!(runs[0]["kind"], "ApplicationBackup");
    assert_eq!(runs[0]["metadata"]["name"], "nightly-20250601060000");
    assert_eq!(
        runs[0]["spec"]["tags"],
        json!({"cairn.io/schedule": "nightly"})
    );
    assert!(matches!(
        actions.iter().find(|a| matches!(a, Action::CreateScheduledRun(_))),
        Some(Action::CreateScheduledRun(r)) if matches!(r.as_ref(), ScheduledRun::Application(_))
    ));
}

#[test]
fn nothing_is_due_before_the_first_time() {
    let s = schedule(json!({"every": "6h"}), json!({}));
    let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-01T05:00:00Z"));
    assert!(created(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert_eq!(
        status.next_schedule_time.unwrap().0,
        ts("2025-06-01T06:00:00Z")
    );
    assert_eq!(status.runs, 0);
    assert_eq!(requeue(&actions), Duration::from_secs(3600));
}

#[test]
fn missed_runs_are_caught_up_once_with_the_latest_due_time() {
    // Controller down from 02:00 on June 1 to 10:30 on June 4: three nightly runs missed.
    let s = schedule(
        json!({"schedule": "0 2 * * *"}),
        json!({"lastScheduleTime": "2025-06-01T02:00:00Z", "runs": 1,
               "countedRuns": ["nightly-20250601020000"], "succeeded": 1}),
    );
    let runs = vec![run(
        "nightly-20250601020000",
        RunOutcome::Succeeded,
        "2025-06-01T02:00:00Z",
    )];
    let actions = decide_schedule(&observed(s, runs), &ctx("2025-06-04T10:30:00Z"));
    let made = created(&actions);
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["metadata"]["name"], "nightly-20250604020000");
    let status = status_of(&actions).unwrap();
    assert_eq!(status.runs, 2);
    assert_eq!(status.skipped, 0);
    assert_eq!(
        status.next_schedule_time.unwrap().0,
        ts("2025-06-05T02:00:00Z")
    );
}

#[test]
fn an_interval_counts_from_the_last_scheduled_time() {
    let s = schedule(
        json!({"every": "6h"}),
        json!({"lastScheduleTime": "2025-06-01T06:00:00Z", "runs": 1}),
    );
    let runs = vec![run(
        "nightly-20250601060000",
        RunOutcome::Succeeded,
        "2025-06-01T06:00:00Z",
    )];
    let actions = decide_schedule(&observed(s, runs), &ctx("2025-06-01T20:00:00Z"));
    assert_eq!(
        created(&actions)[0]["metadata"]["name"],
        "nightly-20250601180000"
    );
    let status = status_of(&actions).unwrap();
    assert_eq!(
        status.next_schedule_time.unwrap().0,
        ts("2025-06-02T00:00:00Z")
    );
}

#[test]
fn a_run_still_going_skips_the_next_and_the_time_after_counts_from_now() {
    let s = schedule(
        json!({"every": "1h"}),
        json!({"lastScheduleTime": "2025-06-01T01:00:00Z", "runs": 1}),
    );
    let runs = vec![run(
        "nightly-20250601010000",
        RunOutcome::Running,
        "2025-06-01T01:00:00Z",
    )];
    let actions = decide_schedule(&observed(s, runs.clone()), &ctx("2025-06-01T02:00:10Z"));
    assert!(created(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert_eq!(status.skipped, 1);
    assert_eq!(status.runs, 1);
    assert_eq!(status.active.as_deref(), Some("nightly-20250601010000"));
    assert_eq!(
        status.not_before.as_ref().unwrap().0,
        ts("2025-06-01T02:00:10Z")
    );
    assert_eq!(
        status.next_schedule_time.as_ref().unwrap().0,
        ts("2025-06-01T03:00:10Z")
    );
    let skipped = status
        .conditions
        .iter()
        .find(|c| c.type_ == "LastRunSkipped")
        .unwrap();
    assert!(skipped
        .message
        .contains("nightly-20250601010000 was still running"));

    // The next reconcile, a moment later, does not skip again.
    let mut again = schedule(json!({"every": "1h"}), json!({}));
    again.status = Some(status);
    let actions = decide_schedule(&observed(again, runs), &ctx("2025-06-01T02:00:20Z"));
    assert!(status_of(&actions).is_none(), "{actions:?}");
    assert!(created(&actions).is_empty());
}

#[test]
fn a_run_created_by_a_reconcile_whose_patch_was_lost_is_adopted() {
    let s = schedule(json!({"schedule": "0 2 * * *"}), json!({}));
    let runs = vec![run(
        "nightly-20250601020000",
        RunOutcome::Running,
        "2025-06-01T02:00:00Z",
    )];
    let actions = decide_schedule(&observed(s, runs), &ctx("2025-06-01T02:00:30Z"));
    assert!(created(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert_eq!(status.skipped, 0);
    assert_eq!(
        status.last_schedule_time.unwrap().0,
        ts("2025-06-01T02:00:00Z")
    );
    assert_eq!(status.active.as_deref(), Some("nightly-20250601020000"));
}

#[test]
fn suspend_creates_nothing_and_resuming_drops_what_was_missed() {
    let s = schedule(
        json!({"every": "1h", "suspend": true}),
        json!({"lastScheduleTime": "2025-06-01T01:00:00Z", "runs": 1,
               "nextScheduleTime": "2025-06-01T02:00:00Z"}),
    );
    let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-01T05:00:00Z"));
    assert!(created(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert_eq!(
        status.suspended_at.as_ref().unwrap().0,
        ts("2025-06-01T05:00:00Z")
    );
    assert_eq!(status.next_schedule_time, None);

    // Resumed at 09:30: the runs due at 02:00 ... 09:00 are dropped; the next is an hour on.
    let mut resumed = schedule(json!({"every": "1h"}), json!({}));
    resumed.status = Some(status);
    let actions = decide_schedule(&observed(resumed, vec![]), &ctx("2025-06-01T09:30:00Z"));
    assert!(created(&actions).is_empty(), "{actions:?}");
    let status = status_of(&actions).unwrap();
    assert_eq!(status.suspended_at, None);
    assert_eq!(
        status.next_schedule_time.unwrap().0,
        ts("2025-06-01T10:30:00Z")
    );
}

#[test]
fn finished_runs_are_counted_once_even_after_a_restart() {
    let s = schedule(
        json!({"every": "1h"}),
        json!({"lastScheduleTime": "2025-06-01T03:00:00Z", "runs": 3}),
    );
    let runs = vec![
        run(
            "nightly-20250601010000",
            RunOutcome::Succeeded,
            "2025-06-01T01:00:00Z",
        ),
        run(
            "nightly-20250601020000",
            RunOutcome::Failed,
            "2025-06-01T02:00:00Z",
        ),
        run(
            "nightly-20250601030000",
            RunOutcome::Succeeded,
            "2025-06-01T03:00:00Z",
        ),
    ];
    let actions = decide_schedule(&observed(s, runs.clone()), &ctx("2025-06-01T03:30:00Z"));
    let status = status_of(&actions).unwrap();
    assert_eq!((status.succeeded, status.failed), (2, 1));
    assert_eq!(status.active, None);
    assert_eq!(
        status.last_successful_backup.as_deref(),
        Some("nightly-20250601030000")
    );
    assert_eq!(
        status.last_successful_time.as_ref().unwrap().0,
        ts("2025-06-01T03:00:00Z")
    );
    // A restarted controller reads the same status and counts nothing again.
    let mut again = schedule(json!({"every": "1h"}), json!({}));
    again.status = Some(status.clone());
    let actions = decide_schedule(&observed(again, runs), &ctx("2025-06-01T03:31:00Z"));
    assert!(status_of(&actions).is_none(), "{actions:?}");
}

#[test]
fn invalid_schedules_block_with_a_condition_saying_what_to_write() {
    let cases = [
        (json!({}), "neither spec.schedule nor spec.every"),
        (json!({"schedule": "0 2 * *"}), "write 5: minute hour"),
        (json!({"every": "6h", "schedule": "@daily"}), "keep one"),
        (
            json!({"schedule": "0 2 * * *", "timeZone": "Europe/Nowhere"}),
            "IANA",
        ),
    ];
    for (spec, want) in cases {
        let s = schedule(spec.clone(), json!({}));
        let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-02T00:00:00Z"));
        assert!(created(&actions).is_empty());
        let status = status_of(&actions).unwrap();
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "ConfigValid")
            .unwrap();
        assert_eq!(c.status, "False", "{spec}");
        assert!(c.message.contains(want), "{spec}: {}", c.message);
        assert_eq!(requeue(&actions), Duration::from_secs(30));
    }
    let mut s = schedule(json!({"every": "1h"}), json!({}));
    s.spec.template = serde_json::from_value(json!({})).unwrap();
    let actions = decide_schedule(&observed(s, vec![]), &ctx("2025-06-02T00:00:00Z"));
    let status = status_of(&actions).unwrap();
    assert!(status.conditions[0]
        .message
        .contains("exactly one of applicationBackup and volumeBackup"));
}

#[test]
fn retention_deletes_unkept_runs_and_forgets_their_snapshots() {
    let s = schedule(
        json!({"every": "1h", "retention": {"keepLast": 2}}),
        json!({"lastScheduleTime": "2025-06-01T04:00:00Z", "runs": 4,
               "countedRuns": ["nightly-20250601010000", "nightly-20250601020000",
                               "nightly-20250601030000"],
               "succeeded": 2, "failed": 1}),
    );
    let runs = vec![
        run(
            "nightly-20250601010000",
            RunOutcome::Succeeded,
            "2025-06-01T01:00:00Z",
        ),
        run(
            "nightly-20250601020000",
            RunOutcome::Failed,
            "2025-06-01T02:00:00Z",
        ),
        run(
            "nightly-20250601030000",
            RunOutcome::Succeeded,
            "2025-06-01T03:00:00Z",
        ),
        run(
            "nightly-20250601040000",
            RunOutcome::Succeeded,
            "2025-06-01T04:00:00Z",
        ),
    ];
    let actions = decide_schedule(&observed(s, runs.clone()), &ctx("2025-06-01T04:10:00Z"));
    // The failed run is older than the oldest kept one: it goes too.
    assert_eq!(
        deleted(&actions),
        ["nightly-20250601010000", "nightly-20250601020000"]
    );
    let status = status_of(&actions).unwrap();
    assert_eq!(status.pruned, 2);
    assert_eq!(status.succeeded, 3);
    assert_eq!(
        status.pruned_runs,
        ["nightly-20250601010000", "nightly-20250601020000"]
    );
    let forget = jobs(&actions);
    assert_eq!(forget.len(), 1);
    let args = &forget[0];
    assert_eq!(
        args[..6],
        [
            "job",
            "forget",
            "--tag",
            "cairn.io/schedule=nightly",
            "--keep-last",
            "2"
        ]
    );
    assert!(
        args.windows(2).any(|w| w == ["--repository", "main"]),
        "{args:?}"
    );
    assert_eq!(
        status.forget_job.as_deref(),
        Some(forget_name(&actions).as_str())
    );
    assert!(!status.forget_pending);
    // The status patch comes before the deletions it counts.
    let patch = actions
        .iter()
        .position(|a| matches!(a, Action::PatchScheduleStatus(_)));
    let delete = actions
        .iter()
        .position(|a| matches!(a, Action::DeleteScheduledRun { .. }));
    assert!(patch < delete);

    // Observed again before the deletions show: nothing is counted or deleted twice.
    let mut again = schedule(
        json!({"every": "1h", "retention": {"keepLast": 2}}),
        json!({}),
    );
    again.status = Some(status.clone());
    let mut o = observed(again, runs);
    o.forget_job = Some(JobInfo {
        name: status.forget_job.clone().unwrap(),
        ..JobInfo::default()
    });
    let actions = decide_schedule(&o, &ctx("2025-06-01T04:10:05Z"));
    assert_eq!(deleted(&actions), Vec::<String>::new());
    assert!(status_of(&actions).is_none(), "{actions:?}");
    assert!(jobs(&actions).is_empty());
}

fn forget_name(actions: &[Action]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            Action::CreateJob(job) => job.metadata.name.clone(),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_failed_run_does_not_trigger_retention_and_is_not_counted_by_it() {
    let s = schedule(
        json!({"every": "1h", "retention": {"keepLast": 1}}),
        json!({"lastScheduleTime": "2025-06-01T02:00:00Z", "runs": 2,
               "countedRuns": ["nightly-20250601010000"], "succeeded": 1}),
    );
    let runs = vec![
        run(
            "nightly-20250601010000",
            RunOutcome::Succeeded,
            "2025-06-01T01:00:00Z",
        ),
        run(
            "nightly-20250601020000",
            RunOutcome::Failed,
            "2025-06-01T02:00:00Z",
        ),
    ];
    let actions = decide_schedule(&observed(s, runs), &ctx("2025-06-01T02:30:00Z"));
    assert!(deleted(&actions).is_empty());
    assert!(jobs(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert_eq!(status.failed, 1);
    assert!(!status.forget_pending);
}

#[test]
fn the_forget_job_waits_for_a_slot_and_for_its_repository() {
    let s = schedule(
        json!({"every": "1h", "retention": {"keepDaily": 7, "keepWeekly": 4}}),
        json!({"lastScheduleTime": "2025-06-01T01:00:00Z", "runs": 1}),
    );
    let runs = vec![run(
        "nightly-20250601010000",
        RunOutcome::Succeeded,
        "2025-06-01T01:00:00Z",
    )];
    let mut o = observed(s.clone(), runs.clone());
    o.repository_busy = true;
    let actions = decide_schedule(&o, &ctx("2025-06-01T01:30:00Z"));
    assert!(jobs(&actions).is_empty());
    let status = status_of(&actions).unwrap();
    assert!(status.forget_pending);
    let waiting = status
        .conditions
        .iter()
        .find(|c| c.type_ == "WaitingForJobSlot")
        .unwrap();
    assert!(waiting.message.contains("BackupRepository \"main\""));
    assert_eq!(requeue(&actions), Duration::from_secs(5));

    let mut o = observed(s.clone(), runs.clone());
    o.running_maintenance_jobs = 5;
    let actions = decide_schedule(&o, &ctx("2025-06-01T01:30:00Z"));
    assert!(jobs(&actions).is_empty());

    let mut o = observed(s.clone(), runs.clone());
    o.repository = None;
    let actions = decide_schedule(&o, &ctx("2025-06-01T01:30:00Z"));
    let status = status_of(&actions).unwrap();
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "RetentionApplied")
        .unwrap();
    assert!(c.message.contains("does not exist"), "{}", c.message);

    // Free: the Job carries every keep rule.
    let actions = decide_schedule(&observed(s, runs), &ctx("2025-06-01T01:30:00Z"));
    let args = &jobs(&actions)[0];
    assert_eq!(
        args[..8],
        [
            "job",
            "forget",
            "--tag",
            "cairn.io/schedule=nightly",
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4"
        ]
    );
}

#[test]
fn a_finished_forget_job_is_recorded() {
    for (succeeded, message, status_want) in [
        (
            true,
            r#"{"succeeded":true,"message":"forgot 3 snapshot(s)"}"#,
            "True",
        ),
        (
            false,
            r#"{"succeeded":false,"message":"repository locked"}"#,
            "False",
        ),
    ] {
        let s = schedule(
            json!({"every": "1h", "retention": {"keepLast": 1}}),
            json!({"lastScheduleTime": "2025-06-01T01:00:00Z", "forgetJob": "nightly-forget-1"}),
        );
        let mut o = observed(s, vec![]);
        o.forget_job = Some(JobInfo {
            name: "nightly-forget-1".into(),
            succeeded,
            failed: !succeeded,
            termination_message: Some(message.into()),
            ..Default::default()
        });
        let actions = decide_schedule(&o, &ctx("2025-06-01T01:30:00Z"));
        let status = status_of(&actions).unwrap();
        assert_eq!(status.forget_job, None);
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "RetentionApplied")
            .unwrap();
        assert_eq!(c.status, status_want);
        assert!(c.message.contains(if succeeded {
            "forgot 3"
        } else {
            "repository locked"
        }));
    }
}

#[test]
fn long_schedule_names_give_valid_run_names() {
    let name = "a".repeat(70);
    let run = run_name(&name, ts("2025-06-01T02:00:00Z"));
    assert!(run.len() <= 63, "{run}");
    assert!(run.ends_with("-20250601020000"), "{run}");
    assert_eq!(
        t(&run_name("db", ts("2025-06-01T02:00:00Z"))),
        "db-20250601020000"
    );
}
