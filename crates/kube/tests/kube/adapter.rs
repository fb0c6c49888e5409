//! The kube adapter against a tower-test mock API: each action becomes exactly the
//! expected request (method, path, body), and observation maps 404s to absent objects.

use crate::common;

use cairn_kube::adapter::{execute, observe_backup, read_config, status_patch, Target};
use cairn_kube::controller::{decide_backup, Action, DecideContext, JobSettings};
use cairn_kube::crd::VolumeBackup;
use common::{mock_client, not_found, Recorded};
use serde_json::{json, Value};
use std::time::Duration;

fn vb(status: Value) -> VolumeBackup {
    serde_json::from_value(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": "db-nightly", "namespace": "shop", "uid": "uid-vb"},
        "spec": {"source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main"},
        "status": status,
    }))
    .unwrap()
}

fn target(old: Value) -> Target {
    Target {
        namespace: "shop".into(),
        name: "db-nightly".into(),
        old_status: old,
    }
}

fn echo(r: &Recorded) -> (u16, Value) {
    match r.method.as_str() {
        "POST" | "PATCH" => {
            let mut body = r.body.clone();
            if r.path.ends_with("/status") {
                body = json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup", "metadata": {"name": "db-nightly"},
                              "spec": {"source": {"persistentVolumeClaim": "x"}, "repository": "main"}});
            }
            (201, body)
        }
        "DELETE" if r.path.contains("persistentvolumeclaims") => not_found(),
        _ => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
    }
}

#[tokio::test]
async fn actions_become_the_expected_requests() {
    let (client, log) = mock_client(echo);
    let mut obs_json = json!({"phase": "Uploading", "attempts": 3, "jobName": "db-nightly-backup-3", "backupPvcName": "db-nightly-backup-pvc", "volumeSnapshotName": "db-nightly-snapshot"});
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "cairn.io/v1alpha1".into(),
        kind: "VolumeBackup".into(),
        name: "db-nightly".into(),
        uid: "uid-vb".into(),
        controller: Some(true),
        ..Default::default()
    };
    let vs = cairn_kube::controller::volume_snapshot(
        "shop",
        "db-nightly-snapshot",
        "data-db-0",
        "ebs",
        &owner,
    );
    let actions = vec![
        Action::CreateVolumeSnapshot(vs.clone()),
        Action::DeleteVolumeSnapshot {
            namespace: "shop".into(),
            name: "db-nightly-snapshot".into(),
        },
        Action::DeletePvc {
            namespace: "shop".into(),
            name: "db-nightly-backup-pvc".into(),
        },
        Action::DeleteJob {
            namespace: "shop".into(),
            name: "db-nightly-backup-3".into(),
        },
        Action::RequeueAfter(Duration::from_secs(30)),
        Action::RequeueAfter(Duration::from_secs(5)),
    ];
    let requeue = execute(&client, &target(obs_json.clone()), &actions)
        .await
        .unwrap();
    assert_eq!(
        requeue,
        Some(Duration::from_secs(5)),
        "the shortest requeue wins"
    );

    // A status patch removes fields that disappeared (the deleted snapshot's name).
    obs_json["phase"] = json!("Uploading");
    let mut new_status = vb(obs_json.clone()).status.unwrap();
    new_status.volume_snapshot_name = None;
    new_status.phase = cairn_kube::crd::VolumeBackupPhase::Failed;
    execute(
        &client,
        &target(obs_json.clone()),
        &[Action::PatchBackupStatus(Box::new(new_status))],
    )
    .await
    .unwrap();

    let log = log.lock().unwrap().clone();
    let calls: Vec<(&str, &str)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST", "/apis/snapshot.storage.k8s.io/v1/namespaces/shop/volumesnapshots"),
            ("DELETE", "/apis/snapshot.storage.k8s.io/v1/namespaces/shop/volumesnapshots/db-nightly-snapshot"),
            ("DELETE", "/api/v1/namespaces/shop/persistentvolumeclaims/db-nightly-backup-pvc"),
            ("DELETE", "/apis/batch/v1/namespaces/shop/jobs/db-nightly-backup-3"),
            ("PATCH", "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-nightly/status"),
            ("POST", "/api/v1/namespaces/shop/events"),
        ]
    );
    assert_eq!(log[0].body, vs);
    assert_eq!(
        log[3].body["propagationPolicy"], "Background",
        "a deleted Job takes its pods with it"
    );
    let patch = &log[4];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.body["status"]["phase"], "Failed");
    assert_eq!(patch.body["status"]["volumeSnapshotName"], Value::Null);
    assert!(patch.body["status"]
        .as_object()
        .unwrap()
        .contains_key("volumeSnapshotName"));
}

#[tokio::test]
async fn create_conflicts_and_delete_not_found_are_tolerated_other_errors_are_not() {
    let (client, _) = mock_client(|r: &Recorded| match r.method.as_str() {
        "POST" if r.path.contains("jobs") => (
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
        ),
        "POST" => (
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "no"}),
        ),
        _ => not_found(),
    });
    let job: k8s_openapi::api::batch::v1::Job =
        serde_json::from_value(json!({"metadata": {"name": "j", "namespace": "shop"}})).unwrap();
    execute(
        &client,
        &target(Value::Null),
        &[
            Action::CreateJob(Box::new(job)),
            Action::DeleteJob {
                namespace: "shop".into(),
                name: "j".into(),
            },
        ],
    )
    .await
    .unwrap();
    let pvc: k8s_openapi::api::core::v1::PersistentVolumeClaim =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}})).unwrap();
    let err = execute(
        &client,
        &target(Value::Null),
        &[Action::CreatePvc(Box::new(pvc))],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("creating PVC shop/p"), "{err}");
}

#[tokio::test]
async fn observing_a_new_backup_reads_what_the_decision_needs() {
    let (client, log) = mock_client(|r: &Recorded| {
        let path = r.path.as_str();
        if path.ends_with("/backuprepositories/main") {
            (
                200,
                json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository", "metadata": {"name": "main", "namespace": "shop", "uid": "u"},
                         "spec": {"location": "fs:///r", "passwordSecret": {"name": "p", "key": "k"}}}),
            )
        } else if path.ends_with("/persistentvolumeclaims/data-db-0") {
            (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-db-0", "namespace": "shop"},
                         "spec": {"storageClassName": "gp3", "accessModes": ["ReadWriteOnce"]}}),
            )
        } else if path.ends_with("/storageclasses/gp3") {
            (
                200,
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "gp3"}, "provisioner": "ebs.csi.aws.com"}),
            )
        } else if path.ends_with("/volumesnapshotclasses") {
            (
                200,
                json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClassList", "metadata": {}, "items": [
                {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "driver": "ebs.csi.aws.com", "deletionPolicy": "Delete",
                 "metadata": {"name": "ebs", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}}}]}),
            )
        } else if path.ends_with("/pods") {
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                {"metadata": {"name": "db-0"}, "spec": {"nodeName": "node-a", "containers": [], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-db-0"}}]},
                 "status": {"phase": "Running"}}]}),
            )
        } else if path.ends_with("/jobs") {
            (
                200,
                json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [
                {"metadata": {"name": "a"}, "status": {"active": 1}},
                {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}]}),
            )
        } else if path.ends_with("/configmaps/cairn-config") {
            (
                200,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cairn-config"}, "data": {"KDMP_BACKUP_JOB_LIMIT": "1"}}),
            )
        } else {
            not_found()
        }
    });
    let backup = vb(Value::Null);
    let obs = observe_backup(&client, &backup).await.unwrap();
    assert!(obs.repository.is_some() && obs.pvc.is_some());
    assert_eq!(obs.provisioner.as_deref(), Some("ebs.csi.aws.com"));
    assert_eq!(obs.snapshot_classes.len(), 1);
    assert!(obs.snapshot_classes[0].is_default);
    assert_eq!(obs.pvc_node.as_deref(), Some("node-a"));
    assert_eq!(obs.running_backup_jobs, 1, "finished Jobs do not count");
    assert!(obs.rule.is_none() && obs.job.is_none() && obs.volume_snapshot.is_none());
    let config = read_config(&client, "cairn-system", "cairn-config")
        .await
        .unwrap();
    assert_eq!(config.backup_job_limit, 1);

    let log = log.lock().unwrap().clone();
    let jobs = log
        .iter()
        .find(|r| r.path == "/apis/batch/v1/jobs")
        .expect("jobs are counted cluster-wide");
    assert_eq!(jobs.query, "&labelSelector=cairn.io%2Fjob-kind%3Dbackup");
    assert!(
        log.iter().all(|r| r.method == "GET"),
        "observing never writes"
    );

    let ctx = DecideContext {
        config,
        jobs: JobSettings::default(),
        now: "2025-06-01T12:00:00Z".parse().unwrap(),
    };
    let actions = decide_backup(&obs, &ctx);
    assert!(actions.iter().any(|a| matches!(a, Action::CreateVolumeSnapshot(v) if v["spec"]["volumeSnapshotClassName"] == "ebs")));
}

#[test]
fn status_patch_nulls_removed_fields_only() {
    let body = status_patch(&json!({"a": 1, "b": 2}), &json!({"a": 3, "c": 4}));
    assert_eq!(body, json!({"status": {"a": 3, "b": null, "c": 4}}));
}

#[tokio::test]
async fn a_secret_copy_reads_the_original_and_creates_an_owned_copy_next_to_the_job() {
    let (client, log) = mock_client(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/v1/namespaces/backups/secrets/repo-pass") => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "repo-pass", "namespace": "backups", "resourceVersion": "7",
                                "uid": "uid-original"},
                   "type": "Opaque", "data": {"password": "c2VjcmV0"}}),
        ),
        ("POST", "/api/v1/namespaces/shop/secrets") => (201, r.body.clone()),
        _ => not_found(),
    });
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "cairn.io/v1alpha1".into(),
        kind: "VolumeBackup".into(),
        name: "db-nightly".into(),
        uid: "uid-vb".into(),
        controller: Some(true),
        ..Default::default()
    };
    let copy = Action::CopySecret {
        from_namespace: "backups".into(),
        from_name: "repo-pass".into(),
        namespace: "shop".into(),
        name: "cairn-repo-main-1234abcd".into(),
        owner,
    };
    execute(&client, &target(json!({})), &[copy]).await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    let created = &log[1].body;
    assert_eq!(created["metadata"]["name"], "cairn-repo-main-1234abcd");
    assert_eq!(created["metadata"]["namespace"], "shop");
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-vb");
    assert_eq!(
        created["metadata"]["labels"]["cairn.io/copy-of"],
        "backups.repo-pass"
    );
    assert_eq!(created["data"], json!({"password": "c2VjcmV0"}));
    assert_eq!(created["type"], "Opaque");
    // Nothing of the original's identity is carried over.
    assert!(created["metadata"]["resourceVersion"].is_null());
    assert!(created["metadata"]["uid"].is_null());
}

/// A responder for status patches: the patched VolumeBackup as the API server returns it
/// (with uid and resourceVersion); Event creation answers `event_code`.
fn patched_backup(event_code: u16) -> impl Fn(&Recorded) -> (u16, Value) {
    move |r: &Recorded| {
        if r.path.ends_with("/events") {
            return match event_code {
                201 => (201, r.body.clone()),
                code => (
                    code,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "Forbidden", "code": code, "message": "events is forbidden"}),
                ),
            };
        }
        let mut object = serde_json::to_value(vb(r.body["status"].clone())).unwrap();
        object["metadata"]["resourceVersion"] = json!("42");
        (200, object)
    }
}

#[tokio::test]
async fn a_phase_change_records_an_event_about_the_patched_object() {
    let (client, log) = mock_client(patched_backup(201));
    let old = json!({"phase": "Uploading", "attempts": 1});
    let mut failed = vb(old.clone()).status.unwrap();
    failed.phase = cairn_kube::crd::VolumeBackupPhase::Failed;
    failed.failure_reason = Some("VolumeSnapshot \"s\" failed: disk on fire".into());
    execute(
        &client,
        &target(old.clone()),
        &[Action::PatchBackupStatus(Box::new(failed))],
    )
    .await
    .unwrap();
    // A patch that changes no phase records nothing.
    let same = vb(old.clone()).status.unwrap();
    execute(
        &client,
        &target(old.clone()),
        &[Action::PatchBackupStatus(Box::new(same))],
    )
    .await
    .unwrap();

    let log = log.lock().unwrap().clone();
    let events: Vec<&Recorded> = log.iter().filter(|r| r.path.ends_with("/events")).collect();
    assert_eq!(events.len(), 1, "{log:#?}");
    let event = &events[0];
    assert_eq!(event.method, "POST");
    assert_eq!(event.path, "/api/v1/namespaces/shop/events");
    let body = &event.body;
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "Failed");
    assert_eq!(body["message"], "VolumeSnapshot \"s\" failed: disk on fire");
    assert_eq!(body["reportingComponent"], "cairn-controller");
    assert_eq!(body["source"]["component"], "cairn-controller");
    let involved = &body["involvedObject"];
    assert_eq!(involved["kind"], "VolumeBackup");
    assert_eq!(involved["apiVersion"], "cairn.io/v1alpha1");
    assert_eq!(involved["namespace"], "shop");
    assert_eq!(involved["name"], "db-nightly");
    assert_eq!(involved["uid"], "uid-vb");
    assert_eq!(involved["resourceVersion"], "42");
    let name = body["metadata"]["name"].as_str().unwrap();
    let (resource, hex) = name.split_once('.').unwrap();
    assert_eq!(resource, "db-nightly");
    assert!(
        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
}

#[tokio::test]
async fn a_refused_event_does_not_fail_the_status_patch() {
    let (client, log) = mock_client(patched_backup(403));
    let old = json!({"phase": "Uploading"});
    let mut done = vb(old.clone()).status.unwrap();
    done.phase = cairn_kube::crd::VolumeBackupPhase::Completed;
    done.snapshot_id = Some("ab12".into());
    execute(
        &client,
        &target(old),
        &[Action::PatchBackupStatus(Box::new(done))],
    )
    .await
    .expect("an Event the API refuses is only logged");
    let log = log.lock().unwrap().clone();
    let event = log
        .iter()
        .find(|r| r.path.ends_with("/events"))
        .expect("an Event was tried");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["reason"], "Completed");
}
