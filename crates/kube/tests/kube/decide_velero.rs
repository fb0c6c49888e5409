//! Table tests of the Velero data mover decisions: DataUpload and DataDownload phases,
//! fast failures, cancel in every phase, cleanup and the PV handover.

use cairn_kube::config::Config;
use cairn_kube::controller::{
    decide_data_download, decide_data_upload, Action, DataDownloadObserved, DataUploadObserved,
    DecideContext, JobInfo, JobSettings, SnapshotContentInfo, SnapshotInfo, VeleroAction,
    VeleroContext, ANNOTATION_RECLAIM, FINALIZER_FORGET, LABEL_DOWNLOAD,
};
use cairn_kube::velero::{BackupPvc, BackupStorageLocation, DataDownload, DataUpload};
use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn ctx() -> DecideContext {
    DecideContext {
        config: Config::from_data(&BTreeMap::new()),
        jobs: JobSettings::default(),
        now: now(),
    }
}

fn velero() -> VeleroContext {
    VeleroContext {
        velero_namespace: "velero".into(),
        cairn_namespace: "cairn-system".into(),
        password_secret: None,
    }
}

fn upload(status: Value, cancel: bool, mover: &str) -> DataUpload {
    serde_json::from_value(json!({
        "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
        "metadata": {"name": "b1-x7k2p", "namespace": "velero", "uid": "uid-du",
                     "labels": {"velero.io/backup-name": "b1", "velero.io/async-operation-id": "du-1.2"}},
        "spec": {"snapshotType": "CSI",
                 "csiSnapshot": {"volumeSnapshot": "velero-data-abc", "storageClass": "gp3", "snapshotClass": "snap"},
                 "sourcePVC": "data", "datamover": mover, "backupStorageLocation": "default",
                 "sourceNamespace": "shop", "operationTimeout": "10m0s", "cancel": cancel},
        "status": status,
    }))
    .unwrap()
}

fn bsl() -> BackupStorageLocation {
    serde_json::from_value(json!({
        "apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
        "metadata": {"name": "default", "namespace": "velero"},
        "spec": {"provider": "aws", "objectStorage": {"bucket": "b", "prefix": "velero"},
                 "config": {"region": "eu-west-1"}},
    }))
    .unwrap()
}

fn ready_snapshot() -> SnapshotInfo {
    SnapshotInfo {
        name: "velero-data-abc".into(),
        ready: true,
        restore_size: Some("10Gi".into()),
        cut: true,
        ..Default::default()
    }
}

fn content() -> SnapshotContentInfo {
    SnapshotContentInfo {
        name: "snapcontent-1".into(),
        snapshot_handle: Some("handle-1".into()),
        driver: "ebs.csi.aws.com".into(),
        class: Some("snap".into()),
        deletion_policy: "Delete".into(),
    }
}

fn observed(phase: &str) -> DataUploadObserved {
    DataUploadObserved {
        upload: upload(
            json!({"phase": phase, "acceptedTimestamp": "2025-06-01T11:59:50Z"}),
            false,
            "cairn",
        ),
        location: Some(bsl()),
        backup_pvc_config: Ok(BTreeMap::new()),
        storage_classes: vec!["gp3".into(), "ro".into()],
        source_snapshot: Some(ready_snapshot()),
        source_content: Some(content()),
        ..Default::default()
    }
}

fn status_of(actions: &[VeleroAction]) -> Value {
    actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::PatchUploadStatus(s) => Some(serde_json::to_value(s).unwrap()),
            VeleroAction::PatchDownloadStatus(s) => Some(serde_json::to_value(s).unwrap()),
            _ => None,
        })
        .unwrap_or(Value::Null)
}

fn kinds(actions: &[VeleroAction]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            VeleroAction::Kube(k) => format!("{:?}", k)
                .split(['(', ' ', '{'])
                .next()
                .unwrap()
                .to_string(),
            other => format!("{:?}", other)
                .split(['(', ' ', '{'])
                .next()
                .unwrap()
                .to_string(),
        })
        .collect()
}

#[test]
fn objects_of_other_movers_are_never_touched() {
    for mover in ["", "velero", "kopia"] {
        let mut obs = observed("");
        obs.upload = upload(json!({}), true, mover);
        assert!(
            decide_data_upload(&obs, &ctx(), &velero()).is_empty(),
            "{mover:?}"
        );
    }
}

#[test]
fn a_new_upload_is_accepted_without_naming_a_node() {
    let actions = decide_data_upload(&observed(""), &ctx(), &velero());
    let status = status_of(&actions);
    assert_eq!(status["phase"], "Accepted");
    assert_eq!(status["startTimestamp"], "2025-06-01T12:00:00Z");
    assert!(status.get("node").is_none() && status.get("acceptedByNode").is_none());
}

#[test]
fn accepted_moves_the_snapshot_into_cairn_s_namespace_and_exposes_it() {
    let actions = decide_data_upload(&observed("Accepted"), &ctx(), &velero());
    assert_eq!(
        kinds(&actions),
        [
            "PatchUploadStatus",
            "CreateSnapshotContent",
            "CreateVolumeSnapshot",
            "RetainSnapshotContent",
            "DeleteVolumeSnapshot",
            "DeleteSnapshotContent",
            "CreatePvc",
            "RequeueAfter"
        ]
    );
    assert_eq!(status_of(&actions)["phase"], "Prepared");
    let VeleroAction::CreateSnapshotContent(vsc) = &actions[1] else {
        panic!()
    };
    assert_eq!(vsc["spec"]["source"]["snapshotHandle"], "handle-1");
    assert_eq!(vsc["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        vsc["spec"]["volumeSnapshotRef"]["namespace"],
        "cairn-system"
    );
    let VeleroAction::Kube(Action::CreatePvc(pvc)) = &actions[6] else {
        panic!()
    };
    let pvc = serde_json::to_value(pvc).unwrap();
    assert_eq!(pvc["metadata"]["namespace"], "cairn-system");
    assert_eq!(pvc["spec"]["dataSource"]["name"], "b1-x7k2p");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "gp3");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    // An owner reference cannot cross namespaces: the PVC is found by label instead.
    assert!(pvc["metadata"]["ownerReferences"].is_null());
    assert_eq!(pvc["metadata"]["labels"]["cairn.io/velero"], "DataUpload");
}

#[test]
fn the_node_agent_backup_pvc_section_chooses_class_and_access_mode() {
    let mut obs = observed("Accepted");
    obs.backup_pvc_config = Ok([(
        "gp3".to_string(),
        BackupPvc {
            storage_class: Some("ro".into()),
            read_only: true,
        },
    )]
    .into());
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    let pvc = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::Kube(Action::CreatePvc(p)) => Some(serde_json::to_value(p).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(pvc["spec"]["storageClassName"], "ro");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadOnlyMany"]));
}

/// A change to the observed objects.
type Change = Box<dyn Fn(&mut DataUploadObserved)>;

#[test]
fn fast_failures_say_what_is_wrong_and_clean_up() {
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "missing backupPVC class",
            Box::new(|o| {
                o.backup_pvc_config = Ok([(
                    "gp3".to_string(),
                    BackupPvc {
                        storage_class: Some("nope".into()),
                        read_only: false,
                    },
                )]
                .into())
            }),
            "backupPVC storage class \"nope\" does not exist",
        ),
        (
            "no location",
            Box::new(|o| o.location = None),
            "BackupStorageLocation \"default\" does not exist",
        ),
        (
            "bad node agent config",
            Box::new(|o| o.backup_pvc_config = Err("ConfigMap velero/x: not valid JSON".into())),
            "not valid JSON",
        ),
        (
            "snapshot gone",
            Box::new(|o| o.source_snapshot = None),
            "VolumeSnapshot shop/velero-data-abc does not exist",
        ),
        (
            "snapshot failed",
            Box::new(|o| {
                o.source_snapshot = Some(SnapshotInfo {
                    error: Some("disk on fire".into()),
                    ..ready_snapshot()
                })
            }),
            "failed: disk on fire",
        ),
    ];
    for (what, change, needle) in cases {
        let mut obs = observed("Accepted");
        change(&mut obs);
        let actions = decide_data_upload(&obs, &ctx(), &velero());
        let status = status_of(&actions);
        assert_eq!(status["phase"], "Failed", "{what}");
        assert!(
            status["message"].as_str().unwrap().contains(needle),
            "{what}: {status}"
        );
        assert_eq!(status["completionTimestamp"], "2025-06-01T12:00:00Z");
        if obs.source_snapshot.is_some() {
            assert!(
                kinds(&actions).contains(&"DeleteVolumeSnapshot".to_string()),
                "{what}"
            );
        }
    }
}

#[test]
fn a_backup_pvc_the_provisioner_cannot_make_fails_at_once_in_any_phase() {
    for phase in ["Accepted", "Prepared", "InProgress"] {
        let mut obs = prepared();
        obs.upload = observed(phase).upload;
        obs.backup_pvc_failure =
            Some("volume capability access mode ReadOnlyMany is not supported".into());
        obs.job = Some(job(false, ""));
        let actions = decide_data_upload(&obs, &ctx(), &velero());
        let status = status_of(&actions);
        assert_eq!(status["phase"], "Failed", "{phase}");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("cannot be provisioned")
                && message.contains("ReadOnlyMany")
                && message.contains("readOnly: false"),
            "{phase}: {message}"
        );
        let kinds = kinds(&actions);
        assert!(
            kinds.contains(&"DeleteJob".to_string()),
            "{phase}: {kinds:?}"
        );
    }
    // Without the provisioner's word, a Pending backupPVC just waits in Prepared.
    let actions = decide_data_upload(&prepared(), &ctx(), &velero());
    assert_ne!(status_of(&actions)["phase"], "Failed");
}

#[test]
fn a_snapshot_not_ready_waits_then_times_out() {
    let mut obs = observed("Accepted");
    obs.source_snapshot = Some(SnapshotInfo {
        ready: false,
        ..ready_snapshot()
    });
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    assert_eq!(kinds(&actions), ["RequeueAfter"]);
    obs.upload = upload(
        json!({"phase": "Accepted", "acceptedTimestamp": "2025-06-01T11:50:00Z"}),
        false,
        "cairn",
    );
    let status = status_of(&decide_data_upload(&obs, &ctx(), &velero()));
    assert_eq!(status["phase"], "Failed");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("SNAPSHOT_TIMEOUT"));
}

fn prepared() -> DataUploadObserved {
    DataUploadObserved {
        source_snapshot: None,
        source_content: None,
        backup_snapshot: Some(SnapshotInfo {
            name: "b1-x7k2p".into(),
            ready: true,
            ..Default::default()
        }),
        backup_content_exists: true,
        backup_pvc_exists: true,
        secret_keys: [
            (
                "velero/velero-repo-credentials/repository-password".to_string(),
                true,
            ),
            ("velero/cloud-credentials/cloud".to_string(), true),
        ]
        .into(),
        ..observed("Prepared")
    }
}

#[test]
fn a_missing_password_or_credentials_secret_fails_before_the_job() {
    for (key, needle) in [
        (
            "velero/velero-repo-credentials/repository-password",
            "repository password is missing",
        ),
        (
            "velero/cloud-credentials/cloud",
            "storage credentials are missing",
        ),
    ] {
        let mut obs = prepared();
        obs.secret_keys.insert(key.to_string(), false);
        let actions = decide_data_upload(&obs, &ctx(), &velero());
        let status = status_of(&actions);
        assert_eq!(status["phase"], "Failed", "{key}");
        assert!(
            status["message"].as_str().unwrap().contains(needle),
            "{status}"
        );
        assert!(!kinds(&actions).contains(&"CreateJob".to_string()));
    }
}

#[test]
fn prepared_starts_the_job_with_the_namespace_repository() {
    let actions = decide_data_upload(&prepared(), &ctx(), &velero());
    assert_eq!(status_of(&actions)["phase"], "InProgress");
    let sync = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::SyncSecrets(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        sync.password_from,
        (
            "velero".into(),
            "velero-repo-credentials".into(),
            "repository-password".into()
        )
    );
    assert_eq!(
        sync.credentials.as_ref().unwrap().1,
        ("velero".into(), "cloud-credentials".into(), "cloud".into())
    );
    let job = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::Kube(Action::CreateJob(j)) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(job["metadata"]["name"], "b1-x7k2p-backup");
    assert_eq!(job["metadata"]["namespace"], "cairn-system");
    assert!(job["metadata"]["ownerReferences"].is_null());
    let args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .unwrap();
    let joined = args.join(" ");
    for needle in [
        "--data-upload b1-x7k2p",
        "--velero-namespace velero",
        "--source-name shop/data",
        "--tag velero.io/backup-name=b1",
        "--location s3://b/velero/cairn/shop?region=eu-west-1",
        // The namespace's repository is created by its first backup.
        "--init-if-missing",
    ] {
        assert!(joined.contains(needle), "{needle} not in {joined}");
    }
    // A full job slot keeps it Prepared.
    let mut busy = prepared();
    busy.running_backup_jobs = 100;
    assert_eq!(
        kinds(&decide_data_upload(&busy, &ctx(), &velero())),
        ["RequeueAfter"]
    );
}

fn job(succeeded: bool, message: &str) -> JobInfo {
    JobInfo {
        name: "b1-x7k2p-backup".into(),
        succeeded,
        failed: !succeeded,
        termination_message: Some(message.into()),
        ..Default::default()
    }
}

#[test]
fn a_finished_job_completes_or_fails_the_upload_and_disposes_of_the_snapshot() {
    let mut obs = prepared();
    obs.upload = upload(json!({"phase": "InProgress"}), false, "cairn");
    obs.job = Some(job(
        true,
        r#"{"succeeded":true,"snapshotId":"5f3a","bytesDone":100,"totalBytes":100,"bytesAdded":40,"message":"ok"}"#,
    ));
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    let status = status_of(&actions);
    assert_eq!(status["phase"], "Completed");
    assert_eq!(status["snapshotID"], "5f3a");
    assert_eq!(status["incrementalBytes"], 40);
    assert_eq!(
        status["progress"],
        json!({"totalBytes": 100, "bytesDone": 100})
    );
    assert_eq!(status["path"], "/data");
    assert_eq!(
        kinds(&actions),
        ["PatchUploadStatus", "DeletePvc", "DeleteVolumeSnapshot"]
    );

    obs.job = Some(job(
        false,
        r#"{"succeeded":false,"message":"bucket unreachable"}"#,
    ));
    let status = status_of(&decide_data_upload(&obs, &ctx(), &velero()));
    assert_eq!(status["phase"], "Failed");
    assert_eq!(status["message"], "bucket unreachable");

    obs.job = None;
    let status = status_of(&decide_data_upload(&obs, &ctx(), &velero()));
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("was deleted before it finished"));
}

#[test]
fn cancel_in_every_phase_removes_everything_and_ends_canceled() {
    for phase in ["", "New", "Accepted", "Prepared", "InProgress"] {
        let mut obs = prepared();
        obs.source_snapshot = Some(ready_snapshot());
        obs.upload = upload(json!({"phase": phase}), true, "cairn");
        obs.job = Some(JobInfo {
            name: "b1-x7k2p-backup".into(),
            ..Default::default()
        });
        let actions = decide_data_upload(&obs, &ctx(), &velero());
        assert_eq!(status_of(&actions)["phase"], "Canceled", "{phase}");
        assert_eq!(
            kinds(&actions),
            [
                "PatchUploadStatus",
                "DeleteJob",
                "DeletePvc",
                "DeleteVolumeSnapshot",
                "DeleteVolumeSnapshot"
            ],
            "{phase}"
        );
    }
    // Ended: no status change, leftovers still removed, cancel ignored.
    let mut obs = prepared();
    obs.upload = upload(json!({"phase": "Completed"}), true, "cairn");
    assert_eq!(
        kinds(&decide_data_upload(&obs, &ctx(), &velero())),
        ["DeletePvc", "DeleteVolumeSnapshot"]
    );
}

/// A Completed DataUpload with snapshot `5f3a`, its finalizers `finalizers`, and a
/// deletionTimestamp when `deleting`.
fn completed(finalizers: &[&str], deleting: bool) -> DataUploadObserved {
    let mut du = upload(
        json!({"phase": "Completed", "snapshotID": "5f3a", "completionTimestamp": "2025-06-01T11:00:00Z"}),
        false,
        "cairn",
    );
    du.metadata.resource_version = Some("42".into());
    du.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    if deleting {
        du.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2025-06-01T11:30:00Z".parse().unwrap(),
            ));
    }
    DataUploadObserved {
        upload: du,
        ..prepared()
    }
}

fn finalizers_of(
    actions: &[VeleroAction],
) -> Option<(Vec<String>, Option<String>, Option<String>)> {
    actions.iter().find_map(|a| match a {
        VeleroAction::SetUploadFinalizers {
            finalizers,
            resource_version,
            warning,
        } => Some((
            finalizers.clone(),
            resource_version.clone(),
            warning.clone(),
        )),
        _ => None,
    })
}

#[test]
fn a_completed_upload_gets_cairn_s_finalizer_next_to_others_and_only_once() {
    // The reconcile that completes it does not add the finalizer (its status patch changes
    // the resourceVersion); the next one, seeing Completed, does.
    let mut obs = prepared();
    obs.upload = upload(json!({"phase": "InProgress"}), false, "cairn");
    obs.job = Some(job(
        true,
        r#"{"succeeded":true,"snapshotId":"5f3a","bytesDone":1,"totalBytes":1,"message":"ok"}"#,
    ));
    assert_eq!(
        finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())),
        None
    );

    let obs = completed(&["example.com/keep"], false);
    let (list, rv, warning) = finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())).unwrap();
    assert_eq!(list, ["example.com/keep", FINALIZER_FORGET]);
    assert_eq!(rv.as_deref(), Some("42"));
    assert_eq!(warning, None);

    let obs = completed(&["example.com/keep", FINALIZER_FORGET], false);
    assert_eq!(
        finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())),
        None
    );

    // Failed or Canceled uploads made no snapshot: nothing to hold.
    let mut failed = completed(&[], false);
    failed.upload = upload(json!({"phase": "Failed", "message": "x"}), false, "cairn");
    assert_eq!(
        finalizers_of(&decide_data_upload(&failed, &ctx(), &velero())),
        None
    );
}

#[test]
fn a_deleted_upload_forgets_its_snapshot_then_releases_only_cairn_s_finalizer() {
    // No cairn finalizer: nothing to do, even being deleted.
    let obs = completed(&["example.com/keep"], true);
    assert!(decide_data_upload(&obs, &ctx(), &velero()).is_empty());

    // With it: the forget Job, in cairn's namespace, on the namespace's repository.
    let mut obs = completed(&["example.com/keep", FINALIZER_FORGET], true);
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    assert_eq!(
        kinds(&actions),
        ["SyncSecrets", "CreateJob", "RequeueAfter"]
    );
    let job = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::Kube(Action::CreateJob(j)) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .unwrap();
    assert_eq!(job["metadata"]["name"], "b1-x7k2p-forget");
    assert_eq!(job["metadata"]["namespace"], "cairn-system");
    let args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
            .unwrap();
    let joined = args.join(" ");
    for needle in [
        "forget --snapshot 5f3a",
        "--location s3://b/velero/cairn/shop?region=eu-west-1",
    ] {
        assert!(joined.contains(needle), "{needle} not in {joined}");
    }
    assert!(!joined.contains("--data-upload"), "{joined}");

    // Running: wait. Succeeded (forgotten or already gone): release cairn's finalizer only.
    obs.forget_job = Some(JobInfo {
        name: "b1-x7k2p-forget".into(),
        ..Default::default()
    });
    assert_eq!(
        kinds(&decide_data_upload(&obs, &ctx(), &velero())),
        ["RequeueAfter"]
    );
    obs.forget_job = Some(JobInfo {
        name: "b1-x7k2p-forget".into(),
        succeeded: true,
        termination_message: Some(r#"{"succeeded":true,"message":"forgot snapshot 5f3a"}"#.into()),
        ..Default::default()
    });
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    let (list, rv, warning) = finalizers_of(&actions).unwrap();
    assert_eq!(list, ["example.com/keep"]);
    assert_eq!(rv.as_deref(), Some("42"));
    assert_eq!(warning, None);
    assert_eq!(kinds(&actions), ["SetUploadFinalizers"]);

    // A retryable failure runs a new Job; a permanent one lets go with a warning.
    obs.forget_job = Some(JobInfo {
        name: "b1-x7k2p-forget".into(),
        failed: true,
        termination_message: Some(
            r#"{"succeeded":false,"retryable":true,"message":"s3: 503"}"#.into(),
        ),
        ..Default::default()
    });
    assert_eq!(
        kinds(&decide_data_upload(&obs, &ctx(), &velero())),
        ["DeleteJob", "RequeueAfter"]
    );
    obs.forget_job = Some(JobInfo {
        name: "b1-x7k2p-forget".into(),
        failed: true,
        termination_message: Some(
            r#"{"succeeded":false,"retryable":false,"message":"wrong password"}"#.into(),
        ),
        ..Default::default()
    });
    let (list, _, warning) = finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())).unwrap();
    assert_eq!(list, ["example.com/keep"]);
    let warning = warning.unwrap();
    assert!(
        warning.contains("5f3a") && warning.contains("wrong password"),
        "{warning}"
    );
}

#[test]
fn a_deleted_upload_whose_repository_cannot_be_reached_is_released_with_a_warning() {
    // The deletion must not hang forever on a location or Secret that is gone.
    let mut obs = completed(&[FINALIZER_FORGET], true);
    obs.location = None;
    let (list, _, warning) = finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())).unwrap();
    assert!(list.is_empty());
    assert!(warning.unwrap().contains("BackupStorageLocation"));

    let mut obs = completed(&[FINALIZER_FORGET], true);
    obs.secret_keys.clear();
    let (_, _, warning) = finalizers_of(&decide_data_upload(&obs, &ctx(), &velero())).unwrap();
    assert!(warning.unwrap().contains("repository password is missing"));

    // A deleted upload that never completed holds no snapshot: released at once.
    let mut obs = completed(&[FINALIZER_FORGET], true);
    obs.upload.status = None;
    let actions = decide_data_upload(&obs, &ctx(), &velero());
    assert_eq!(kinds(&actions), ["SetUploadFinalizers"]);
}

fn download(status: Value, cancel: bool) -> DataDownload {
    serde_json::from_value(json!({
        "apiVersion": "velero.io/v2alpha1", "kind": "DataDownload",
        "metadata": {"name": "r1-abcde", "namespace": "velero", "uid": "uid-dd"},
        "spec": {"targetVolume": {"pvc": "data", "pv": "", "namespace": "shop"},
                 "backupStorageLocation": "default", "datamover": "cairn", "snapshotID": "5f3a",
                 "sourceNamespace": "shop", "operationTimeout": "10m0s", "cancel": cancel},
        "status": status,
    }))
    .unwrap()
}

fn target(bound_to: Option<&str>) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "shop"},
        "spec": {"storageClassName": "gp3", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "5Gi"}}, "volumeName": bound_to,
                 "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": "shop.data.x1"}}},
        "status": {"phase": if bound_to.is_some() { "Bound" } else { "Pending" }},
    }))
    .unwrap()
}

fn pv(
    labels: Value,
    claim: Value,
    policy: &str,
    phase: &str,
) -> k8s_openapi::api::core::v1::PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1", "labels": labels, "annotations": {ANNOTATION_RECLAIM: "Delete"}},
        "spec": {"persistentVolumeReclaimPolicy": policy, "claimRef": claim},
        "status": {"phase": phase},
    }))
    .unwrap()
}

#[test]
fn a_download_waits_for_its_target_then_restores_into_a_fresh_volume() {
    let mut obs = DataDownloadObserved {
        download: download(json!({"phase": "Accepted"}), false),
        location: Some(bsl()),
        ..Default::default()
    };
    assert_eq!(
        kinds(&decide_data_download(&obs, &ctx(), &velero())),
        ["RequeueAfter"]
    );
    obs.target_pvc = Some(target(None));
    let actions = decide_data_download(&obs, &ctx(), &velero());
    assert_eq!(status_of(&actions)["phase"], "Prepared");
    let VeleroAction::Kube(Action::CreatePvc(pvc)) = &actions[1] else {
        panic!("{actions:?}")
    };
    let pvc = serde_json::to_value(pvc).unwrap();
    assert_eq!(pvc["metadata"]["namespace"], "cairn-system");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert!(pvc["spec"]["selector"].is_null());

    obs.download = download(json!({"phase": "Prepared"}), false);
    obs.secret_keys = [
        (
            "velero/velero-repo-credentials/repository-password".to_string(),
            true,
        ),
        ("velero/cloud-credentials/cloud".to_string(), true),
    ]
    .into();
    obs.restore_pvc =
        Some(serde_json::from_value(json!({"metadata": {"name": "r1-abcde"}})).unwrap());
    let actions = decide_data_download(&obs, &ctx(), &velero());
    assert_eq!(status_of(&actions)["phase"], "InProgress");
    let job = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::Kube(Action::CreateJob(j)) => Some(serde_json::to_value(j).unwrap()),
            _ => None,
        })
        .unwrap();
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("\"--snapshot\",\"5f3a\"")
            && args.contains("\"--data-download\",\"r1-abcde\""),
        "{args}"
    );
}

#[test]
fn the_restored_volume_is_handed_over_as_velero_does() {
    let done = r#"{"succeeded":true,"bytesDone":7,"totalBytes":7,"message":"ok"}"#;
    let restore_pvc: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(
        json!({"metadata": {"name": "r1-abcde"}, "spec": {"volumeName": "pvc-1"}}),
    )
    .unwrap();
    let base = DataDownloadObserved {
        download: download(json!({"phase": "InProgress"}), false),
        location: Some(bsl()),
        target_pvc: Some(target(None)),
        job: Some(JobInfo {
            name: "r1-abcde-restore".into(),
            succeeded: true,
            termination_message: Some(done.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let claim_tmp = json!({"namespace": "cairn-system", "name": "r1-abcde", "uid": "u1"});
    // 1. Retain, labels.
    let obs = DataDownloadObserved {
        restore_pvc: Some(restore_pvc.clone()),
        restored_pv: Some(pv(json!({}), claim_tmp.clone(), "Delete", "Bound")),
        ..base.clone()
    };
    let actions = decide_data_download(&obs, &ctx(), &velero());
    let patch = actions
        .iter()
        .find_map(|a| match a {
            VeleroAction::PatchPersistentVolume { patch, .. } => Some(patch.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(patch["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(status_of(&actions)["progress"]["bytesDone"], 7);
    assert_eq!(
        patch["metadata"]["labels"]["velero.io/dynamic-pv-restore"],
        "shop.data.x1"
    );
    assert_eq!(patch["metadata"]["labels"][LABEL_DOWNLOAD], "r1-abcde");
    // 2. The temporary claim is deleted.
    let labelled =
        json!({LABEL_DOWNLOAD: "r1-abcde", "velero.io/dynamic-pv-restore": "shop.data.x1"});
    let obs = DataDownloadObserved {
        restore_pvc: Some(restore_pvc),
        restored_pv: Some(pv(labelled.clone(), claim_tmp.clone(), "Retain", "Bound")),
        ..base.clone()
    };
    assert!(
        kinds(&decide_data_download(&obs, &ctx(), &velero())).contains(&"DeletePvc".to_string())
    );
    // 3. claimRef to the target, no uid.
    let obs = DataDownloadObserved {
        restored_pv: Some(pv(labelled.clone(), claim_tmp, "Retain", "Released")),
        job: None,
        ..base.clone()
    };
    let actions = decide_data_download(&obs, &ctx(), &velero());
    let VeleroAction::PatchPersistentVolume { patch, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(patch["spec"]["claimRef"]["name"], "data");
    assert_eq!(patch["spec"]["claimRef"]["namespace"], "shop");
    assert!(patch["spec"]["claimRef"]["uid"].is_null());
    // 4. Both bound: policy restored, Completed.
    let obs = DataDownloadObserved {
        restored_pv: Some(pv(
            labelled,
            json!({"namespace": "shop", "name": "data", "uid": "u2"}),
            "Retain",
            "Bound",
        )),
        target_pvc: Some(target(Some("pvc-1"))),
        job: None,
        ..base
    };
    let actions = decide_data_download(&obs, &ctx(), &velero());
    let status = status_of(&actions);
    assert_eq!(status["phase"], "Completed");
    let VeleroAction::PatchPersistentVolume { patch, .. } = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(patch["spec"]["persistentVolumeReclaimPolicy"], "Delete");
}

#[test]
fn a_canceled_download_removes_its_job_and_volume() {
    let obs = DataDownloadObserved {
        download: download(json!({"phase": "InProgress"}), true),
        restore_pvc: Some(
            serde_json::from_value(json!({"metadata": {"name": "r1-abcde"}})).unwrap(),
        ),
        job: Some(JobInfo {
            name: "r1-abcde-restore".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let actions = decide_data_download(&obs, &ctx(), &velero());
    assert_eq!(status_of(&actions)["phase"], "Canceled");
    assert_eq!(
        kinds(&actions),
        ["PatchDownloadStatus", "DeleteJob", "DeletePvc"]
    );
}
