//! Table tests of the VolumeRestore and BackupRepository decisions.

use cairn_kube::config::Config;
use cairn_kube::controller::{
    decide_repository, decide_restore, Action, DecideContext, JobInfo, JobSettings,
    RepositoryObserved, RestoreObserved,
};
use cairn_kube::crd::{
    BackupRepository, BackupRepositoryStatus, VolumeBackup, VolumeRestore,
    VolumeRestorePhase as Phase, VolumeRestoreStatus,
};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

fn ctx_at(now: &str, data: &[(&str, &str)]) -> DecideContext {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DecideContext {
        config: Config::from_data(&data),
        jobs: JobSettings::default(),
        now: now.parse::<Timestamp>().unwrap(),
    }
}

fn ctx() -> DecideContext {
    ctx_at("2025-06-01T12:00:00Z", &[])
}

fn repository(status: Value) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "main", "namespace": "shop", "uid": "uid-repo"},
        "spec": {"location": "fs:///backups", "passwordSecret": {"name": "pw", "key": "password"},
                 "maintenance": {"quickInterval": "1h", "fullInterval": "24h"}},
        "status": status,
    }))
    .unwrap()
}

fn restore(spec: Value, status: Value) -> VolumeRestore {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": "db-restore", "namespace": "shop", "uid": "uid-vr"},
        "spec": spec, "status": status,
    }))
    .unwrap()
}

fn completed_backup() -> VolumeBackup {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup", "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"source": {"persistentVolumeClaim": "data"}, "repository": "main"},
        "status": {"phase": "Completed", "snapshotId": "5f3a"},
    }))
    .unwrap()
}

fn restore_obs(vr: VolumeRestore) -> RestoreObserved {
    RestoreObserved {
        restore: vr,
        source_backup: Some(completed_backup()),
        repository: Some(repository(json!(null))),
        target_exists: false,
        target_block: false,
        target_node: None,
        job: None,
        running_restore_jobs: 0,
    }
}

fn restore_status(actions: &[Action]) -> VolumeRestoreStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::PatchRestoreStatus(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("status patch")
}

fn repo_status(actions: &[Action]) -> BackupRepositoryStatus {
    actions
        .iter()
        .find_map(|a| match a {
            Action::PatchRepositoryStatus(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("status patch")
}

fn jobs(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(j) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .collect()
}

fn args(job: &Value) -> Vec<String> {
    job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

const NEW_TARGET: &str = r#"{"source": {"volumeBackup": "nightly"}, "target": {"persistentVolumeClaim": "data-restored", "create": {"size": "10Gi", "storageClassName": "gp3"}}, "includePaths": ["etc"]}"#;

#[test]
fn restore_creates_a_missing_target_then_runs_the_job_into_it() {
    let spec: Value = serde_json::from_str(NEW_TARGET).unwrap();
    let mut obs = restore_obs(restore(spec.clone(), json!(null)));
    let actions = decide_restore(&obs, &ctx());
    let status = restore_status(&actions);
    assert_eq!(
        (
            status.phase,
            status.created_target,
            status.snapshot_id.as_deref()
        ),
        (Phase::PreparingTarget, true, Some("5f3a"))
    );
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert!(
        pvc["metadata"].get("ownerReferences").is_none(),
        "restored data outlives the VolumeRestore"
    );

    obs.restore = restore(spec, serde_json::to_value(&status).unwrap());
    obs.target_exists = true;
    let actions = decide_restore(&obs, &ctx());
    assert_eq!(restore_status(&actions).phase, Phase::Restoring);
    let job = &jobs(&actions)[0];
    let a = args(job);
    for pair in [
        ["job", "restore"],
        ["--snapshot", "5f3a"],
        ["--include", "etc"],
        ["--target", "/data"],
    ] {
        assert!(a.windows(2).any(|w| w == pair), "{pair:?} in {a:?}");
    }
    let data = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap()
        .clone();
    assert_eq!(
        data["persistentVolumeClaim"],
        json!({"claimName": "data-restored", "readOnly": false})
    );
}

#[test]
fn restore_into_a_missing_pvc_without_create_fails() {
    let spec = json!({"source": {"snapshotId": "5f3a", "repository": "main"}, "target": {"persistentVolumeClaim": "nope"}});
    let mut obs = restore_obs(restore(spec, json!(null)));
    obs.source_backup = None;
    let status = restore_status(&decide_restore(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert!(status
        .failure_reason
        .unwrap()
        .contains("spec.target.create is not set"));
}

#[test]
fn restore_waits_for_an_unfinished_backup_and_for_a_job_slot() {
    let spec: Value = serde_json::from_str(NEW_TARGET).unwrap();
    let mut obs = restore_obs(restore(spec.clone(), json!(null)));
    let mut running = completed_backup();
    running.status.as_mut().unwrap().phase = cairn_kube::crd::VolumeBackupPhase::Uploading;
    obs.source_backup = Some(running);
    let actions = decide_restore(&obs, &ctx());
    assert_eq!(restore_status(&actions).phase, Phase::New);
    assert!(actions.contains(&Action::RequeueAfter(Duration::from_secs(30))));

    let mut obs = restore_obs(restore(spec, json!(null)));
    obs.target_exists = true;
    obs.running_restore_jobs = 1;
    let actions = decide_restore(
        &obs,
        &ctx_at("2025-06-01T12:00:00Z", &[("KDMP_RESTORE_JOB_LIMIT", "1")]),
    );
    assert!(jobs(&actions).is_empty());
    assert!(restore_status(&actions)
        .conditions
        .iter()
        .any(|c| c.type_ == "WaitingForJobSlot"));
}

#[test]
fn restore_job_failure_retries_then_fails_and_success_completes() {
    let spec: Value = serde_json::from_str(NEW_TARGET).unwrap();
    let mut obs = restore_obs(restore(
        spec.clone(),
        json!({"phase": "Restoring", "attempts": 1, "jobName": "db-restore-restore-1"}),
    ));
    obs.target_exists = true;
    obs.job = Some(JobInfo {
        name: "db-restore-restore-1".into(),
        failed: true,
        termination_message: Some(r#"{"succeeded":false,"message":"disk full"}"#.into()),
        ..Default::default()
    });
    let actions = decide_restore(&obs, &ctx());
    assert_eq!(restore_status(&actions).attempts, 2);
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "db-restore-restore-1".into()
    }));

    obs.restore = restore(
        spec.clone(),
        json!({"phase": "Restoring", "attempts": 3, "jobName": "db-restore-restore-1"}),
    );
    let status = restore_status(&decide_restore(&obs, &ctx()));
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(
        status.failure_reason.as_deref(),
        Some("disk full (after 3 attempts)")
    );

    obs.job = Some(JobInfo {
        name: "db-restore-restore-1".into(),
        succeeded: true,
        termination_message: Some(r#"{"succeeded":true,"bytesDone":7,"totalBytes":7}"#.into()),
        ..Default::default()
    });
    let status = restore_status(&decide_restore(&obs, &ctx()));
    assert_eq!(
        (status.phase, status.progress.unwrap().bytes_done),
        (Phase::Completed, 7)
    );
}

#[test]
fn restore_cancel_deletes_the_job() {
    let mut spec: Value = serde_json::from_str(NEW_TARGET).unwrap();
    spec["cancel"] = json!(true);
    let mut obs = restore_obs(restore(
        spec,
        json!({"phase": "Restoring", "attempts": 1, "jobName": "j"}),
    ));
    obs.job = Some(JobInfo {
        name: "j".into(),
        ..Default::default()
    });
    let actions = decide_restore(&obs, &ctx());
    assert_eq!(restore_status(&actions).phase, Phase::Canceled);
    assert!(actions.contains(&Action::DeleteJob {
        namespace: "shop".into(),
        name: "j".into()
    }));
}

fn repo_obs(status: Value) -> RepositoryObserved {
    RepositoryObserved {
        repository: repository(status),
        maintenance_job: None,
        catalog_job: None,
        running_maintenance_jobs: 0,
    }
}

#[test]
fn new_repository_gets_full_maintenance_and_a_catalog_refresh() {
    let actions = decide_repository(&repo_obs(json!(null)), &ctx());
    let created = jobs(&actions);
    assert_eq!(created.len(), 2);
    assert!(args(&created[0])
        .windows(3)
        .any(|w| w == ["maintenance", "--kind", "full"]));
    assert_eq!(args(&created[1])[1], "catalog");
    assert!(created
        .iter()
        .all(|j| j["metadata"]["labels"]["cairn.io/job-kind"] == "maintenance"));
    assert!(created
        .iter()
        .all(|j| j["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "data")));
    let status = repo_status(&actions);
    assert_eq!(status.maintenance.last_full.unwrap().result, "Running");
    assert!(status.catalog_job.is_some());
}

#[test]
fn quick_maintenance_runs_on_its_interval_and_results_are_recorded() {
    let status = json!({
        "maintenance": {
            "lastFull": {"jobName": "main-full-1", "startTime": "2025-06-01T02:00:00Z", "completionTime": "2025-06-01T02:10:00Z", "result": "Succeeded"},
            "lastQuick": {"jobName": "main-quick-1", "startTime": "2025-06-01T11:30:00Z", "result": "Running"}
        },
        "lastCatalogRefresh": "2025-06-01T11:55:00Z"
    });
    let mut obs = repo_obs(status.clone());
    obs.maintenance_job = Some(JobInfo {
        name: "main-quick-1".into(),
        ..Default::default()
    });
    let actions = decide_repository(&obs, &ctx());
    assert!(
        jobs(&actions).is_empty(),
        "one maintenance Job per repository at a time"
    );
    assert_eq!(
        actions,
        vec![Action::RequeueAfter(Duration::from_secs(600))],
        "next: the catalog refresh in 10 minutes"
    );

    obs.maintenance_job = Some(JobInfo {
        name: "main-quick-1".into(),
        succeeded: true,
        termination_message: Some(
            r#"{"succeeded":true,"message":"3 segments merged","bytesReclaimed":300,"repositoryBytes":5000,"blobCount":42,"damageRecords":2}"#.into(),
        ),
        ..Default::default()
    });
    let recorded = repo_status(&decide_repository(&obs, &ctx()));
    let quick = recorded.maintenance.last_quick.unwrap();
    assert_eq!(
        (quick.result.as_str(), quick.message.as_str()),
        ("Succeeded", "3 segments merged")
    );
    assert_eq!(
        (
            quick.bytes_reclaimed,
            quick.repository_bytes,
            quick.blob_count
        ),
        (Some(300), Some(5000), Some(42)),
        "the run's figures are kept in the status, where the metrics read them"
    );
    assert_eq!(quick.damage_records, Some(2));
    let damaged = recorded
        .conditions
        .iter()
        .find(|c| c.type_ == "Damaged")
        .expect("a Damaged condition");
    assert_eq!(
        (damaged.status.as_str(), damaged.reason.as_str()),
        ("True", "DamageRecorded")
    );
    assert!(
        damaged.message.contains("cairn check"),
        "{}",
        damaged.message
    );

    // An hour after the last quick run started, the next one is due.
    let later = ctx_at("2025-06-01T12:31:00Z", &[]);
    let mut done = status.clone();
    done["maintenance"]["lastQuick"]["result"] = json!("Succeeded");
    let actions = decide_repository(&repo_obs(done), &later);
    let created = jobs(&actions);
    assert!(
        args(&created[0])
            .windows(3)
            .any(|w| w == ["maintenance", "--kind", "quick"]),
        "{:?}",
        args(&created[0])
    );
}

#[test]
fn failed_maintenance_is_recorded_and_bad_intervals_block_with_a_condition() {
    let status = json!({"maintenance": {"lastFull": {"jobName": "f", "startTime": "2025-06-01T11:00:00Z", "result": "Running"}}});
    let mut obs = repo_obs(status);
    obs.maintenance_job = Some(JobInfo {
        name: "f".into(),
        failed: true,
        failure_message: Some("DeadlineExceeded: too slow".into()),
        ..Default::default()
    });
    let full = repo_status(&decide_repository(&obs, &ctx()))
        .maintenance
        .last_full
        .unwrap();
    assert_eq!(full.result, "Failed");
    assert!(full.message.contains("DeadlineExceeded"));

    let mut bad = repo_obs(json!(null));
    bad.repository.spec.maintenance.quick_interval = Some("hourly".into());
    let actions = decide_repository(&bad, &ctx());
    assert!(jobs(&actions).is_empty());
    let c = repo_status(&actions)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ConfigValid")
        .unwrap();
    assert!(c.message.contains("quickInterval: \"hourly\""));
}

#[test]
fn maintenance_respects_the_job_limit() {
    let mut obs = repo_obs(json!(null));
    obs.running_maintenance_jobs = 2;
    let actions = decide_repository(
        &obs,
        &ctx_at(
            "2025-06-01T12:00:00Z",
            &[("KDMP_MAINTENANCE_JOB_LIMIT", "2")],
        ),
    );
    assert!(jobs(&actions).is_empty());
    assert!(repo_status(&actions)
        .conditions
        .iter()
        .any(|c| c.type_ == "WaitingForJobSlot"));
    assert!(actions.contains(&Action::RequeueAfter(Duration::from_secs(5))));
}

#[test]
fn restore_from_a_repository_of_another_namespace_needs_its_permission_and_mounts_copies() {
    let spec = json!({"source": {"snapshotId": "5f3a", "repository": "main", "repositoryNamespace": "backups"},
                      "target": {"persistentVolumeClaim": "data"}});
    for (allowed, ok) in [(json!([]), false), (json!(["*"]), true)] {
        let mut repo = repository(json!(null));
        repo.metadata.namespace = Some("backups".into());
        repo.spec.allowed_namespaces = serde_json::from_value(allowed.clone()).unwrap();
        let mut obs = restore_obs(restore(spec.clone(), json!(null)));
        obs.source_backup = None;
        obs.repository = Some(repo);
        obs.target_exists = true;
        let actions = decide_restore(&obs, &ctx());
        let status = restore_status(&actions);
        if ok {
            assert_eq!(status.phase, Phase::Restoring, "{allowed}");
            let copy = actions
                .iter()
                .find_map(|a| match a {
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
                .expect("a Secret copy");
            assert_eq!(
                (
                    copy.0.as_str(),
                    copy.1.as_str(),
                    copy.2.as_str(),
                    copy.4.as_str()
                ),
                ("backups", "pw", "shop", "uid-vr")
            );
            let job = &jobs(&actions)[0];
            let password = &job["spec"]["template"]["spec"]["volumes"][0];
            assert_eq!(password["name"], "password");
            assert_eq!(password["secret"]["secretName"], json!(copy.3));
        } else {
            assert_eq!(status.phase, Phase::Failed, "{allowed}");
            assert!(status
                .failure_reason
                .unwrap()
                .contains("add \"shop\" (or \"*\") to its spec.allowedNamespaces"));
            assert!(jobs(&actions).is_empty());
        }
    }
}

#[test]
fn a_block_target_is_restored_onto_as_a_device_and_can_be_created_block() {
    let spec = json!({"source": {"volumeBackup": "nightly"},
        "target": {"persistentVolumeClaim": "disk-restored",
                   "create": {"size": "10Gi", "volumeMode": "Block"}}});
    let mut obs = restore_obs(restore(spec.clone(), json!(null)));
    let actions = decide_restore(&obs, &ctx());
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            Action::CreatePvc(p) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(pvc["spec"]["volumeMode"], "Block", "{pvc}");

    obs.restore = restore(spec, actions_json(&actions));
    obs.target_exists = true;
    obs.target_block = true;
    let actions = decide_restore(&obs, &ctx());
    let job = &jobs(&actions)[0];
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["volumeDevices"],
        json!([{"name": "data", "devicePath": "/dev/cairn-data"}])
    );
    assert!(!c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "data"));
    let args = args(job);
    assert!(
        args.windows(2)
            .any(|w| w == ["--device", "/dev/cairn-data"]),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--target"), "{args:?}");
    let data = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .unwrap()
        .clone();
    assert_eq!(
        data["persistentVolumeClaim"],
        json!({"claimName": "disk-restored", "readOnly": false})
    );

    // A Filesystem target is mounted, as before.
    obs.target_block = false;
    let job = &jobs(&decide_restore(&obs, &ctx()))[0];
    assert!(args_of_has(job, ["--target", "/data"]));
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0].get("volumeDevices"),
        None
    );
}

fn args_of_has(job: &Value, pair: [&str; 2]) -> bool {
    args(job).windows(2).any(|w| w == pair)
}

/// The status a decision patched, as the JSON a VolumeRestore carries.
fn actions_json(actions: &[Action]) -> Value {
    serde_json::to_value(restore_status(actions)).unwrap()
}
