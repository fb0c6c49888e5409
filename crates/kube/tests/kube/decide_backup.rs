//! Table tests of the VolumeBackup decisions: every phase and every failure the controller
//! must handle, from observed objects to actions.

use cairn_kube::config::Config;
use cairn_kube::controller::{
    decide_backup, Action, BackupObserved, DecideContext, HookSide, JobInfo, JobSettings,
    JobWaiting, SnapshotClassInfo, SnapshotInfo,
};
use cairn_kube::crd::{
    BackupRepository, BackupRule, HookOutcome, VolumeBackup, VolumeBackupPhase as Phase,
    VolumeBackupStatus,
};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn ctx_with(data: &[(&str, &str)]) -> DecideContext {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DecideContext {
        config: Config::from_data(&data),
        jobs: JobSettings::default(),
        now: now(),
    }
}

fn ctx() -> DecideContext {
    ctx_with(&[
        ("KDMP_EXCLUDE_FILE_LIST", "gp3=lost+found,*.tmp\n"),
        ("KDMP_KOPIAEXECUTOR_LIMIT_CPU", "2"),
    ])
}

fn backup(spec: Value, status: Value) -> VolumeBackup {
    let mut full =
        json!({ "source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main" });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": "db-nightly", "namespace": "shop", "uid": "uid-vb"},
        "spec": full, "status": status,
    }))
    .unwrap()
}

fn repository() -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "main", "namespace": "shop", "uid": "uid-repo"},
        "spec": {"location": "s3://backups/shop", "credentialsSecret": {"name": "s3-creds"},
                 "passwordSecret": {"name": "repo-pass", "key": "password"}},
    }))
    .unwrap()
}

fn rule(pre: bool, post: bool) -> BackupRule {
    let cmd = json!([{"command": ["nodetool", "flush"]}]);
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRule",
        "metadata": {"name": "cassandra", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "cassandra"}},
                 "pre": if pre { cmd.clone() } else { json!([]) }, "post": if post { cmd } else { json!([]) }},
    }))
    .unwrap()
}

fn pvc(modes: &[&str]) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "data-db-0", "namespace": "shop"},
        "spec": {"storageClassName": "gp3", "accessModes": modes, "resources": {"requests": {"storage": "10Gi"}}},
    }))
    .unwrap()
}

fn observed(vb: VolumeBackup) -> BackupObserved {
    BackupObserved {
        backup: vb,
        repository: Some(repository()),
        pvc: Some(pvc(&["ReadWriteOnce"])),
        provisioner: Some("ebs.csi.aws.com".into()),
        snapshot_classes: vec![
            SnapshotClassInfo {
                name: "ebs-default".into(),
                driver: "ebs.csi.aws.com".into(),
                is_default: true,
            },
            SnapshotClassInfo {
                name: "ebs-other".into(),
                driver: "ebs.csi.aws.com".into(),
                is_default: false,
            },
            SnapshotClassInfo {
                name: "pd".into(),
                driver: "pd.csi.storage.gke.io".into(),
                is_default: true,
            },
        ],
        rule: None,
        volume_snapshot: None,
        backup_pvc_exists: false,
        job: None,
        pvc_node: Some("node-a".into()),
        running_backup_jobs: 0,
    }
}

fn status_of(actions: &[Action]) -> VolumeBackupStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::PatchBackupStatus(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a status patch")
}

fn created_job(actions: &[Action]) -> Value {
    actions
        .iter()
        .find_map(|a| match a {
            Action::CreateJob(j) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .expect("a CreateJob")
}

fn condition<'a>(status: &'a VolumeBackupStatus, type_: &str) -> &'a cairn_kube::crd::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect(type_)
}

fn in_phase(phase: &str, extra: Value) -> Value {
    let mut s = json!({"phase": phase, "mode": "Snapshot", "startTime": "2025-06-01T11:58:00Z",
        "volumeSnapshotName": "db-nightly-snapshot", "backupPvcName": "db-nightly-backup-pvc"});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

fn ready_snapshot() -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        name: "db-nightly-snapshot".into(),
        ready: true,
        restore_size: Some("10Gi".into()),
        ..Default::default()
    })
}

fn failed_job(name: &str, message: &str) -> Option<JobInfo> {
    Some(JobInfo {
        name: name.into(),
        failed: true,
        termination_message: Some(message.into()),
        ..Default::default()
    })
}

#[test]
fn new_backup_cuts_a_snapshot_with_the_drivers_default_class() {
    let actions = decide_backup(&observed(backup(json!({}), json!(null))), &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::SnapshotInProgress);
    assert_eq!(
        status.volume_snapshot_name.as_deref(),
        Some("db-nightly-snapshot")
    );
    let vs = actions.iter().find_map(|a| match a {
        Action::CreateVolumeSnapshot(v) => Some(v.clone()),
        _ => None,
    });
    let vs = vs.expect("CreateVolumeSnapshot");
    assert_eq!(vs["spec"]["volumeSnapshotClassName"], "ebs-default");
    assert_eq!(
        vs["spec"]["source"]["persistentVolumeClaimName"],
        "data-db-0"
    );
    assert_eq!(vs["metadata"]["ownerReferences"][0]["uid"], "uid-vb");
}

#[test]
fn pre_rule_runs_before_the_snapshot_and_post_rule_right_after_it() {
    let mut obs = observed(backup(json!({"rule": {"name": "cassandra"}}), json!(null)));
    obs.rule = Some(rule(true, true));
    let actions = decide_backup(&obs, &ctx());
    assert!(actions.contains(&Action::RunRule {
        namespace: "shop".into(),
        rule: "cassandra".into(),
        side: HookSide::Pre,
        volume_backup: "db-nightly".into()
    }));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::CreateVolumeSnapshot(_))));

    obs.backup = backup(
        json!({"rule": {"name": "cassandra"}}),
        json!({"hooks": {"pre": {"succeeded": true}}}),
    );
    let actions = decide_backup(&obs, &ctx());
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::CreateVolumeSnapshot(_))));

    obs.backup = backup(
        json!({"rule": {"name": "cassandra"}}),
        in_phase(
            "SnapshotInProgress",
            json!({"hooks": {"pre": {"succeeded": true}}}),
        ),
    );
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "db-nightly-snapshot".into(),
        cut: true,
        ..Default::default()
    });
    let actions = decide_backup(&obs, &ctx());
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::RunRule {
                side: HookSide::Post,
                ..
            }
        )),
        "{actions:?}"
    );
}

/// Regression: post commands ran as soon as the VolumeSnapshot object existed, before
/// the storage system had cut the snapshot, so the application was released too early.
#[test]
fn post_rule_waits_until_the_snapshot_is_cut() {
    let mut obs = observed(backup(
        json!({"rule": {"name": "cassandra"}}),
        in_phase(
            "SnapshotInProgress",
            json!({"hooks": {"pre": {"succeeded": true}}, "volumeSnapshotName": "db-nightly-snapshot"}),
        ),
    ));
    obs.rule = Some(rule(true, true));
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "db-nightly-snapshot".into(),
        created: Some(now()),
        ..Default::default()
    });
    let is_post = |a: &Action| {
        matches!(
            a,
            Action::RunRule {
                side: HookSide::Post,
                ..
            }
        )
    };
    let actions = decide_backup(&obs, &ctx());
    assert!(!actions.iter().any(is_post), "{actions:?}");
    // A snapshot that never gets cut still releases the application when it times out.
    obs.volume_snapshot.as_mut().unwrap().created =
        Some(now() - jiff::SignedDuration::from_secs(3600));
    let actions = decide_backup(&obs, &ctx());
    assert!(actions.iter().any(is_post), "{actions:?}");
}

#[test]
fn pre_rule_failure_still_runs_post_then_fails_with_the_reason() {
    let failed = json!({"hooks": {"pre": {"succeeded": false, "message": "nodetool: connection refused in pod cassandra-0"}}});
    let mut obs = observed(backup(json!({"rule": {"name": "cassandra"}}), failed));
    obs.rule = Some(rule(true, true));
    let actions = decide_backup(&obs, &ctx());
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::RunRule {
            side: HookSide::Post,
            ..
        }
    )));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::CreateVolumeSnapshot(_))));

    let mut status: VolumeBackupStatus = obs.backup.status.clone().unwrap();
    cairn_kube::controller::record_hook(
        &mut status,
        HookSide::Post,
        HookOutcome {
            succeeded: true,
            message: String::new(),
        },
    );
    obs.backup.status = Some(status);
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("pre rule failed: nodetool: connection refused"));
}

#[test]
fn snapshot_not_ready_requeues_then_times_out_and_is_deleted() {
    let mut obs = observed(backup(json!({}), in_phase("SnapshotInProgress", json!({}))));
    let created: Timestamp = "2025-06-01T11:58:00Z".parse().unwrap();
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "db-nightly-snapshot".into(),
        created: Some(created),
        ..Default::default()
    });
    let actions = decide_backup(&obs, &ctx());
    assert_eq!(actions, vec![Action::RequeueAfter(Duration::from_secs(5))]);

    let actions = decide_backup(&obs, &ctx_with(&[("SNAPSHOT_TIMEOUT", "2m")]));
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("not ready to use after 2m"));
    assert!(actions.contains(&Action::DeleteVolumeSnapshot {
        namespace: "shop".into(),
        name: "db-nightly-snapshot".into()
    }));
}

#[test]
fn snapshot_error_fails_the_backup() {
    let mut obs = observed(backup(json!({}), in_phase("SnapshotInProgress", json!({}))));
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "db-nightly-snapshot".into(),
        error: Some("quota exceeded".into()),
        ..Default::default()
    });
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.failure_reason.unwrap().contains("quota exceeded"));
}

#[test]
fn ready_snapshot_is_exposed_through_a_backup_pvc_with_the_class_override() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("SnapshotInProgress", json!({"backupPvcName": null})),
    ));
    obs.volume_snapshot = ready_snapshot();
    let config = ctx_with(&[(
        "backupPVC",
        r#"{"backupPVC": {"gp3": {"storageClass": "gp3-single-replica", "readOnly": true}}}"#,
    )]);
    let actions = decide_backup(&obs, &config);
    assert_eq!(status_of(&actions).phase, Phase::Exposing);
    assert_eq!(
        status_of(&actions).backup_pvc_name.as_deref(),
        Some("db-nightly-backup-pvc")
    );
    let pvc = actions.iter().find_map(|a| match a {
        Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
        _ => None,
    });
    let pvc = pvc.expect("CreatePvc");
    assert_eq!(pvc["spec"]["storageClassName"], "gp3-single-replica");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadOnlyMany"]));
    assert_eq!(pvc["spec"]["dataSource"]["name"], "db-nightly-snapshot");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");

    // Without a backupPVC entry: the source's class, ReadWriteOnce.
    let actions = decide_backup(&obs, &ctx());
    let pvc = actions.iter().find_map(|a| match a {
        Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
        _ => None,
    });
    assert_eq!(pvc.as_ref().unwrap()["spec"]["storageClassName"], "gp3");
    assert_eq!(
        pvc.unwrap()["spec"]["accessModes"],
        json!(["ReadWriteOnce"])
    );
}

#[test]
fn exposed_backup_starts_a_job_with_the_backup_pvc_credentials_and_resources() {
    let mut obs = observed(backup(
        json!({"tags": {"app": "shop"}}),
        in_phase("Exposing", json!({})),
    ));
    obs.volume_snapshot = ready_snapshot();
    obs.backup_pvc_exists = true;
    let actions = decide_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!((status.phase, status.attempts), (Phase::Uploading, 1));
    assert_eq!(status.job_name.as_deref(), Some("db-nightly-backup-1"));
    let job = created_job(&actions);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(job["metadata"]["labels"]["cairn.io/job-kind"], "backup");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let volumes = pod["volumes"].as_array().unwrap();
    let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
    assert_eq!(
        data["persistentVolumeClaim"],
        json!({"claimName": "db-nightly-backup-pvc", "readOnly": true})
    );
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"] == "s3-creds"));
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"] == "repo-pass"));
    let c = &pod["containers"][0];
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "data", "mountPath": "/data", "readOnly": true})));
    assert_eq!(c["resources"]["limits"]["cpu"], "2");
    assert_eq!(c["resources"]["requests"]["memory"], "700Mi");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [
        ["job", "backup"],
        ["--storage-class", "gp3"],
        ["--tag", "app=shop"],
        ["--credentials-dir", "/etc/cairn/credentials"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert!(args
        .windows(2)
        .any(|w| w == ["--password-file", "/etc/cairn/password/password"]));
    let env = c["env"].as_array().unwrap();
    assert!(env.contains(
        &json!({"name": "CAIRN_KDMP_EXCLUDE_FILE_LIST", "value": "gp3=lost+found,*.tmp\n"})
    ));
    assert!(pod.get("nodeName").is_none(), "snapshot mode is not pinned");
}

#[test]
fn job_limit_reached_waits_with_a_condition() {
    let mut obs = observed(backup(json!({}), in_phase("Exposing", json!({}))));
    obs.backup_pvc_exists = true;
    obs.running_backup_jobs = 2;
    let actions = decide_backup(&obs, &ctx_with(&[("KDMP_BACKUP_JOB_LIMIT", "2")]));
    assert!(!actions.iter().any(|a| matches!(a, Action::CreateJob(_))));
    assert!(actions.contains(&Action::RequeueAfter(Duration::from_secs(5))));
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Exposing);
    assert!(condition(&status, "WaitingForJobSlot")
        .message
        .contains("limit (KDMP_BACKUP_JOB_LIMIT) is 2"));
}

#[test]
fn failed_job_is_retried_then_the_backup_fails_with_the_jobs_reason() {
    let mut obs = observed(backup(
        json!({}),
        in_phase(
            "Uploading",
            json!({"attempts": 1, "jobName": "db-nightly-backup-1"}),
        ),
    ));
    obs.volume_snapshot = ready_snapshot();
    obs.backup_pvc_exists = true;
    let message = r#"{"succeeded":false,"message":"s3: connection reset","retryable":true}"#;
    obs.job = failed_job("db-nightly-backup-1", message);
    let actions = decide_backup(&obs, &ctx());
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "db-nightly-backup-1".into()
    }));
    let status = status_of(&actions);
    assert_eq!(
        (status.phase, status.attempts, status.job_name.as_deref()),
        (Phase::Uploading, 2, Some("db-nightly-backup-2"))
    );
    assert!(condition(&status, "Retrying")
        .message
        .contains("resumes from the repository's checkpoints"));
    let job = created_job(&actions);
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .unwrap()["persistentVolumeClaim"]["claimName"],
        "db-nightly-backup-pvc"
    );

    obs.backup = backup(
        json!({}),
        in_phase(
            "Uploading",
            json!({"attempts": 3, "jobName": "db-nightly-backup-3"}),
        ),
    );
    obs.job = failed_job("db-nightly-backup-3", message);
    let actions = decide_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("s3: connection reset (after 3 attempts)")
    );
    assert!(actions.contains(&Action::DeletePvc {
        namespace: "shop".into(),
        name: "db-nightly-backup-pvc".into()
    }));
    assert!(actions.contains(&Action::DeleteVolumeSnapshot {
        namespace: "shop".into(),
        name: "db-nightly-snapshot".into()
    }));
    assert!(!actions.iter().any(|a| matches!(a, Action::CreateJob(_))));
}

/// Regression: a Job whose pod never started (unschedulable, image never pulled) left
/// the VolumeBackup in Uploading forever.
#[test]
fn job_whose_pod_never_starts_is_retried_after_the_start_timeout() {
    let mut obs = observed(backup(
        json!({}),
        in_phase(
            "Uploading",
            json!({"attempts": 1, "jobName": "db-nightly-backup-1"}),
        ),
    ));
    obs.volume_snapshot = ready_snapshot();
    obs.backup_pvc_exists = true;
    let waiting = |minutes: i64| {
        Some(JobInfo {
            name: "db-nightly-backup-1".into(),
            waiting: Some(JobWaiting {
                since: now() - jiff::SignedDuration::from_mins(minutes),
                reason: "Unschedulable: 0/3 nodes are available: 3 Insufficient memory".into(),
            }),
            ..Default::default()
        })
    };
    // Within JOB_START_TIMEOUT (default 10m): still waiting.
    obs.job = waiting(9);
    let actions = decide_backup(&obs, &ctx());
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::DeleteJob { .. } | Action::CreateJob(_))));
    // Past it: the attempt failed with the scheduler's reason, and the next one starts.
    obs.job = waiting(11);
    let actions = decide_backup(&obs, &ctx());
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "db-nightly-backup-1".into()
    }));
    let status = status_of(&actions);
    assert_eq!((status.phase, status.attempts), (Phase::Uploading, 2));
    let retrying = &condition(&status, "Retrying").message;
    assert!(
        retrying.contains("did not start within 10m") && retrying.contains("Insufficient memory"),
        "{retrying}"
    );
    // The timeout is the ConfigMap's.
    obs.job = waiting(11);
    let actions = decide_backup(&obs, &ctx_with(&[("JOB_START_TIMEOUT", "30m")]));
    assert!(!actions.iter().any(|a| matches!(a, Action::CreateJob(_))));
    let bad = ctx_with(&[("JOB_START_TIMEOUT", "soon")]);
    assert!(bad.config.problems.contains_key("JOB_START_TIMEOUT"));
}

#[test]
fn crashed_job_reports_the_log_tail() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("Uploading", json!({"attempts": 3, "jobName": "j"})),
    ));
    obs.job = failed_job("j", "thread 'main' panicked at out of memory");
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert!(status
        .failure_reason
        .unwrap()
        .contains("crashed: thread 'main' panicked"));
}

#[test]
fn completed_job_completes_the_backup_and_keeps_the_snapshot_only_with_offload() {
    for offload in [true, false] {
        let mut obs = observed(backup(
            json!({"offload": offload}),
            in_phase("Uploading", json!({"attempts": 1, "jobName": "j"})),
        ));
        obs.volume_snapshot = ready_snapshot();
        obs.backup_pvc_exists = true;
        let message = r#"{"succeeded":true,"snapshotId":"5f3a9c","bytesDone":1000,"totalBytes":1000,"bytesAdded":400,"message":"ok"}"#;
        obs.job = Some(JobInfo {
            name: "j".into(),
            succeeded: true,
            termination_message: Some(message.into()),
            ..Default::default()
        });
        let actions = decide_backup(&obs, &ctx());
        let status = status_of(&actions);
        assert_eq!(status.phase, Phase::Completed);
        assert_eq!(status.snapshot_id.as_deref(), Some("5f3a9c"));
        assert_eq!(status.progress.unwrap().bytes_done, 1000);
        assert_eq!(status.bytes_added, Some(400));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert!(actions.contains(&Action::DeletePvc {
            namespace: "shop".into(),
            name: "db-nightly-backup-pvc".into()
        }));
        let deletes_snapshot = actions
            .iter()
            .any(|a| matches!(a, Action::DeleteVolumeSnapshot { .. }));
        assert_eq!(deletes_snapshot, !offload, "offload={offload}");
        assert_eq!(status.volume_snapshot_name.is_some(), offload);
    }
}

#[test]
fn job_that_exits_0_without_a_snapshot_id_counts_as_failed() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("Uploading", json!({"attempts": 3, "jobName": "j"})),
    ));
    obs.job = Some(JobInfo {
        name: "j".into(),
        succeeded: true,
        ..Default::default()
    });
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
}

#[test]
fn missing_pvc_fails_the_backup() {
    let mut obs = observed(backup(json!({}), json!(null)));
    obs.pvc = None;
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("PersistentVolumeClaim \"data-db-0\" not found in namespace \"shop\"")
    );
}

#[test]
fn storage_class_without_snapshot_class_fails_in_snapshot_mode_and_goes_direct_in_auto() {
    let mut obs = observed(backup(json!({"mode": "Snapshot"}), json!(null)));
    obs.provisioner = Some("efs.csi.aws.com".into());
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status.failure_reason.unwrap().contains(
        "storage class \"gp3\" (provisioner \"efs.csi.aws.com\") has no VolumeSnapshotClass"
    ));

    obs.backup = backup(json!({}), json!(null));
    let actions = decide_backup(&obs, &ctx());
    let status = status_of(&actions);
    assert_eq!(
        (status.phase, status.mode),
        (Phase::Uploading, Some(cairn_kube::crd::BackupMode::Direct))
    );
    let job = created_job(&actions);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeName"], "node-a",
        "a ReadWriteOnce volume pins the Job to its node"
    );
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap()
        .clone();
    assert_eq!(data["persistentVolumeClaim"]["claimName"], "data-db-0");

    obs.pvc = Some(pvc(&["ReadWriteMany"]));
    let job = created_job(&decide_backup(&obs, &ctx()));
    assert!(job["spec"]["template"]["spec"].get("nodeName").is_none());
}

#[test]
fn named_snapshot_class_must_exist_and_backup_type_generic_forces_direct() {
    let obs = observed(backup(
        json!({"volumeSnapshotClassName": "nope"}),
        json!(null),
    ));
    let status = status_of(&decide_backup(&obs, &ctx()));
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("VolumeSnapshotClass \"nope\" does not exist")
    );
    let obs = observed(backup(json!({}), json!(null)));
    let status = status_of(&decide_backup(
        &obs,
        &ctx_with(&[("BACKUP_TYPE", "Generic")]),
    ));
    assert_eq!(status.mode, Some(cairn_kube::crd::BackupMode::Direct));
}

#[test]
fn cancel_deletes_the_job_backup_pvc_and_snapshot() {
    let mut obs = observed(backup(
        json!({"cancel": true}),
        in_phase("Uploading", json!({"attempts": 1, "jobName": "j"})),
    ));
    obs.volume_snapshot = ready_snapshot();
    obs.backup_pvc_exists = true;
    obs.job = Some(JobInfo {
        name: "j".into(),
        ..Default::default()
    });
    let actions = decide_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Canceled);
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "j".into()
    }));
    assert!(actions.contains(&Action::DeletePvc {
        namespace: "shop".into(),
        name: "db-nightly-backup-pvc".into()
    }));
    assert!(actions.contains(&Action::DeleteVolumeSnapshot {
        namespace: "shop".into(),
        name: "db-nightly-snapshot".into()
    }));
}

#[test]
fn bad_config_value_blocks_with_a_condition_and_changes_nothing_else() {
    let obs = observed(backup(json!({}), json!(null)));
    let actions = decide_backup(&obs, &ctx_with(&[("SNAPSHOT_TIMEOUT", "five minutes")]));
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::New);
    let c = condition(&status, "ConfigValid");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidConfigMap")
    );
    assert!(c
        .message
        .contains("SNAPSHOT_TIMEOUT: \"five minutes\" is not a duration"));
    assert_eq!(actions.len(), 2, "{actions:?}");
}

#[test]
fn missing_repository_waits_for_it() {
    let mut obs = observed(backup(json!({}), json!(null)));
    obs.repository = None;
    let actions = decide_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::New);
    assert!(actions.contains(&Action::RequeueAfter(Duration::from_secs(30))));
}

#[test]
fn finished_backup_only_cleans_up_leftovers() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("Completed", json!({"snapshotId": "5f3a9c"})),
    ));
    obs.volume_snapshot = ready_snapshot();
    obs.backup_pvc_exists = true;
    let actions = decide_backup(&obs, &ctx());
    assert_eq!(
        actions,
        vec![Action::DeletePvc {
            namespace: "shop".into(),
            name: "db-nightly-backup-pvc".into()
        }]
    );
    obs.backup_pvc_exists = false;
    assert_eq!(decide_backup(&obs, &ctx()), vec![]);
}

/// The repository `main` of namespace `backups`, allowing `allowed`.
fn foreign_repository(allowed: &[&str]) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "main", "namespace": "backups", "uid": "uid-repo"},
        "spec": {"location": "s3://backups/all", "credentialsSecret": {"name": "s3-creds"},
                 "passwordSecret": {"name": "repo-pass", "key": "password"},
                 "allowedNamespaces": allowed},
    }))
    .unwrap()
}

#[test]
fn a_repository_of_another_namespace_is_refused_unless_it_allows_this_one() {
    let table: &[(&[&str], bool)] = &[
        (&[], false),
        (&["web"], false),
        (&["web", "shop"], true),
        (&["*"], true),
    ];
    for (allowed, ok) in table {
        let mut obs = observed(backup(
            json!({"repositoryNamespace": "backups", "mode": "Direct"}),
            json!(null),
        ));
        obs.repository = Some(foreign_repository(allowed));
        let actions = decide_backup(&obs, &ctx());
        let status = status_of(&actions);
        if *ok {
            assert_eq!(status.phase, Phase::Uploading, "{allowed:?}");
        } else {
            assert_eq!(status.phase, Phase::Failed, "{allowed:?}");
            let why = status.failure_reason.clone().unwrap();
            assert!(
                why.contains("spec.allowedNamespaces") && why.contains("\"shop\""),
                "{why}"
            );
            let c = condition(&status, "ConfigValid");
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "RepositoryNotAllowed")
            );
            assert!(!actions.iter().any(|a| matches!(a, Action::CreateJob(_))));
        }
    }
}

#[test]
fn a_job_for_a_repository_of_another_namespace_mounts_copies_of_its_secrets() {
    let mut obs = observed(backup(
        json!({"repositoryNamespace": "backups", "mode": "Direct"}),
        json!(null),
    ));
    obs.repository = Some(foreign_repository(&["shop"]));
    let actions = decide_backup(&obs, &ctx());
    let copies: Vec<(String, String, String, String, String)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CopySecret {
                from_namespace,
                from_name,
                namespace,
                name,
                owner,
            } => Some((
                from_namespace.clone(),
                from_name.clone(),
                namespace.clone(),
                name.clone(),
                owner.uid.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 2, "{actions:?}");
    let (password, credentials) = (&copies[0], &copies[1]);
    assert_eq!(
        (
            password.0.as_str(),
            password.1.as_str(),
            password.2.as_str(),
            password.4.as_str()
        ),
        ("backups", "repo-pass", "shop", "uid-vb")
    );
    assert_eq!(
        (credentials.0.as_str(), credentials.1.as_str()),
        ("backups", "s3-creds")
    );
    assert!(password.3.starts_with("cairn-repo-main-"), "{}", password.3);
    assert_ne!(password.3, credentials.3);
    // The copies are made before the Job that mounts them.
    let copy_at = actions
        .iter()
        .position(|a| matches!(a, Action::CopySecret { .. }))
        .unwrap();
    let job_at = actions
        .iter()
        .position(|a| matches!(a, Action::CreateJob(_)))
        .unwrap();
    assert!(copy_at < job_at);
    let job = created_job(&actions);
    assert_eq!(job["metadata"]["namespace"], "shop");
    let volumes = &job["spec"]["template"]["spec"]["volumes"];
    let secret = |volume: &str| {
        volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .map(|v| v["secret"]["secretName"].clone())
            .unwrap()
    };
    assert_eq!(secret("password"), json!(password.3));
    assert_eq!(secret("credentials"), json!(credentials.3));
    // In the repository's own namespace nothing is copied.
    let same = decide_backup(
        &observed(backup(json!({"mode": "Direct"}), json!(null))),
        &ctx(),
    );
    assert!(!same.iter().any(|a| matches!(a, Action::CopySecret { .. })));
    let job = created_job(&same);
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "repo-pass"
    );
}

fn pre_cut(status: Value) -> BackupObserved {
    let mut obs = observed(backup(
        json!({"source": {"persistentVolumeClaim": "data-db-0", "volumeSnapshot": "group-snap"},
               "rule": {"name": "cassandra"}}),
        status,
    ));
    obs.rule = Some(rule(true, true));
    obs
}

#[test]
fn a_pre_cut_snapshot_skips_the_rule_and_the_snapshot_step() {
    let actions = decide_backup(&pre_cut(json!(null)), &ctx());
    let status = status_of(&actions);
    assert_eq!(status.phase, Phase::SnapshotInProgress);
    assert_eq!(status.volume_snapshot_name.as_deref(), Some("group-snap"));
    assert_eq!(status.mode, Some(cairn_kube::crd::BackupMode::Snapshot));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::RunRule { .. } | Action::CreateVolumeSnapshot(_))),
        "{actions:?}"
    );
}

#[test]
fn a_pre_cut_snapshot_is_waited_for_then_exposed_and_uploaded() {
    let waiting = in_phase(
        "SnapshotInProgress",
        json!({"volumeSnapshotName": "group-snap", "backupPvcName": null}),
    );
    // Not ready: wait, and no post rule (it ran where the snapshot was cut).
    let mut obs = pre_cut(waiting.clone());
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "group-snap".into(),
        cut: true,
        created: Some(now()),
        ..Default::default()
    });
    let actions = decide_backup(&obs, &ctx());
    assert!(
        actions.contains(&Action::RequeueAfter(Duration::from_secs(5))),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::RunRule { .. })));
    // Ready: the backupPVC is provisioned from it.
    let mut obs = pre_cut(waiting);
    obs.volume_snapshot = Some(SnapshotInfo {
        name: "group-snap".into(),
        ready: true,
        restore_size: Some("10Gi".into()),
        ..Default::default()
    });
    let actions = decide_backup(&obs, &ctx());
    assert_eq!(status_of(&actions).phase, Phase::Exposing);
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .expect("CreatePvc");
    assert_eq!(pvc["spec"]["dataSource"]["name"], "group-snap");
}

#[test]
fn a_pre_cut_snapshot_is_deleted_after_upload_only_without_offload() {
    let done = JobInfo {
        name: "db-nightly-backup-1".into(),
        succeeded: true,
        termination_message: Some(
            r#"{"succeeded":true,"snapshotId":"ab12","bytesDone":10,"totalBytes":10}"#.into(),
        ),
        ..Default::default()
    };
    for (offload, deleted) in [(true, false), (false, true)] {
        let mut obs = observed(backup(
            json!({"source": {"persistentVolumeClaim": "data-db-0", "volumeSnapshot": "group-snap"},
                   "offload": offload}),
            in_phase(
                "Uploading",
                json!({"volumeSnapshotName": "group-snap", "jobName": "db-nightly-backup-1", "attempts": 1}),
            ),
        ));
        obs.volume_snapshot = Some(SnapshotInfo {
            name: "group-snap".into(),
            ready: true,
            ..Default::default()
        });
        obs.backup_pvc_exists = true;
        obs.job = Some(done.clone());
        let actions = decide_backup(&obs, &ctx());
        assert_eq!(status_of(&actions).phase, Phase::Completed);
        let deletes_snapshot = actions.contains(&Action::DeleteVolumeSnapshot {
            namespace: "shop".into(),
            name: "group-snap".into(),
        });
        assert_eq!(deletes_snapshot, deleted, "offload {offload}: {actions:?}");
    }
}

fn block_pvc() -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "data-db-0", "namespace": "shop"},
        "spec": {"storageClassName": "gp3", "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                 "resources": {"requests": {"storage": "10Gi"}}},
    }))
    .unwrap()
}

/// The container of `job`, its data volume, and its args.
fn block_job_shape(job: &Value) -> (Value, Value, Vec<String>) {
    let pod = &job["spec"]["template"]["spec"];
    let c = pod["containers"][0].clone();
    let data = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap()
        .clone();
    let args = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (c, data, args)
}

/// A Job for a Block volume gets it as a device, never mounted (the kubelet refuses a
/// Block volume in volumeMounts), and is told to read a device.
fn assert_backs_up_a_device(job: &Value, claim: &str) {
    let (c, data, args) = block_job_shape(job);
    assert_eq!(
        data["persistentVolumeClaim"],
        json!({"claimName": claim, "readOnly": true})
    );
    assert_eq!(
        c["volumeDevices"],
        json!([{"name": "data", "devicePath": "/dev/cairn-data"}])
    );
    assert!(
        !c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "data"),
        "{c}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--device", "/dev/cairn-data"]),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--source"), "{args:?}");
    let security = &c["securityContext"];
    assert_eq!(security["privileged"], Value::Null, "no privileged mode");
    assert_eq!(security["capabilities"]["add"].as_array().unwrap().len(), 5);
}

#[test]
fn a_block_pvc_is_backed_up_as_a_device_in_direct_mode() {
    let mut obs = observed(backup(json!({"mode": "Direct"}), json!(null)));
    obs.pvc = Some(block_pvc());
    let job = created_job(&decide_backup(&obs, &ctx()));
    assert_backs_up_a_device(&job, "data-db-0");
    assert_eq!(job["spec"]["template"]["spec"]["nodeName"], "node-a");
}

#[test]
fn a_block_pvc_is_snapshotted_into_a_block_backup_pvc_given_to_the_job_as_a_device() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("SnapshotInProgress", json!({"backupPvcName": null})),
    ));
    obs.pvc = Some(block_pvc());
    obs.volume_snapshot = ready_snapshot();
    let actions = decide_backup(&obs, &ctx());
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .expect("CreatePvc");
    assert_eq!(pvc["spec"]["volumeMode"], "Block", "{pvc}");

    obs.backup = backup(json!({}), in_phase("Exposing", json!({})));
    obs.backup_pvc_exists = true;
    let job = created_job(&decide_backup(&obs, &ctx()));
    assert_backs_up_a_device(&job, "db-nightly-backup-pvc");

    // A retry after a failed attempt keeps the device.
    obs.backup = backup(
        json!({}),
        in_phase(
            "Uploading",
            json!({"attempts": 1, "jobName": "db-nightly-backup-1"}),
        ),
    );
    obs.job = failed_job("db-nightly-backup-1", "killed");
    let job = created_job(&decide_backup(&obs, &ctx()));
    assert_backs_up_a_device(&job, "db-nightly-backup-pvc");
}

#[test]
fn a_filesystem_pvc_is_still_mounted_and_its_backup_pvc_has_no_volume_mode() {
    let mut obs = observed(backup(
        json!({}),
        in_phase("SnapshotInProgress", json!({"backupPvcName": null})),
    ));
    obs.volume_snapshot = ready_snapshot();
    let actions = decide_backup(&obs, &ctx());
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(pvc["spec"].get("volumeMode"), None);
    let mut obs = observed(backup(json!({"mode": "Direct"}), json!(null)));
    obs.pvc = Some(pvc_with_mode("Filesystem"));
    let (c, _, args) = block_job_shape(&created_job(&decide_backup(&obs, &ctx())));
    assert_eq!(c.get("volumeDevices"), None);
    assert!(args.windows(2).any(|w| w == ["--source", "/data"]));
}

fn pvc_with_mode(mode: &str) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    let mut p = pvc(&["ReadWriteOnce"]);
    p.spec.as_mut().unwrap().volume_mode = Some(mode.into());
    p
}
