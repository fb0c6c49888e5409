//! cairn as Velero's data mover, end to end against the simulated cluster: Velero's CRDs
//! installed from `testdata/velero/crds.yaml`, DataUploads and DataDownloads created the
//! way Velero's CSI plugin and restore flow create them, and the real controller binary
//! (`--velero-namespace velero`) moving the data with real job pods. Velero itself is not
//! running: the tests play its part. Every wait is bounded.

use crate::common::text;
use crate::kube_e2e::{
    config, controller_logic_only, small_files, tree, Cluster, NS, PASSWORD, PATIENCE,
};
use cairn_kube_sim::SnapshotBehaviour;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Instant;

const VELERO: &str = "velero";
const CAIRN: &str = "cairn-system";
const DU: &str = "velero.io/v2alpha1";

/// A cluster with Velero's CRDs and namespace, a BackupStorageLocation `default` whose
/// repositories are local directories, Velero's repository password Secret, the node
/// agent ConfigMap with `backup_pvc`, a Velero Backup `b1`, and the controller serving as
/// Velero's data mover.
struct Velero {
    cluster: Cluster,
    /// Base of the location (a `file://` URL); the shop namespace's repository is under
    /// `cairn/shop`.
    base: tempfile::TempDir,
    backup_uid: String,
}

impl Velero {
    fn start(name: &str, backup_pvc: Value, settings: &[(&str, &str)]) -> Velero {
        let cluster = Cluster::start_with_args(
            name,
            config(settings),
            json!({"suspend": true}),
            &[
                "--velero-namespace",
                VELERO,
                "--velero-node-agent-configmap",
                "node-agent-config",
                // Tests run in parallel: no fixed metrics port.
                "--metrics-address",
                "0",
            ],
        );
        let crds = include_str!("../../../../testdata/velero/crds.yaml");
        for doc in serde_yaml::Deserializer::from_str(crds) {
            let crd: Value = serde::Deserialize::deserialize(doc).unwrap();
            cluster.create(crd);
        }
        let base = tempfile::tempdir().unwrap();
        // No `cairn init`: the namespace's first backup creates its repository.
        for o in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VELERO}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cairn-job", "namespace": CAIRN}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "velero-repo-credentials", "namespace": VELERO},
                   "stringData": {"repository-password": PASSWORD}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "node-agent-config", "namespace": VELERO},
                   "data": {"node-agent-config.json": json!({"backupPVC": backup_pvc}).to_string()}}),
            json!({"apiVersion": "velero.io/v1", "kind": "BackupStorageLocation",
                   "metadata": {"name": "default", "namespace": VELERO},
                   "spec": {"provider": "aws", "objectStorage": {"bucket": "velero", "prefix": "cluster-1"},
                            "config": {"region": "minio", "cairnLocation": format!("file://{}", base.path().display())}}}),
        ] {
            cluster.create(o);
        }
        let backup = cluster
            .sim
            .create(json!({"apiVersion": "velero.io/v1", "kind": "Backup",
                "metadata": {"name": "b1", "namespace": VELERO},
                "spec": {"snapshotMoveData": true, "datamover": "cairn", "storageLocation": "default"}}))
            .unwrap();
        Velero {
            cluster,
            base,
            backup_uid: backup["metadata"]["uid"].as_str().unwrap().to_string(),
        }
    }

    /// Takes a VolumeSnapshot of `pvc` the way Velero's CSI plugin does, waits until it is
    /// ready, and creates the DataUpload as the plugin does (generateName, labels, owner).
    /// Returns the names of the DataUpload and the VolumeSnapshot.
    fn data_upload(&self, pvc: &str) -> (String, String) {
        self.data_upload_of(pvc, None)
    }

    /// [`Velero::data_upload`]; with `stuck`, the VolumeSnapshot is named so, never becomes
    /// ready, and is not waited for.
    fn data_upload_of(&self, pvc: &str, stuck: Option<&str>) -> (String, String) {
        let sim = &self.cluster.sim;
        let claim = sim
            .get("v1", "PersistentVolumeClaim", Some(NS), pvc)
            .unwrap();
        let pvc_uid = claim["metadata"]["uid"].as_str().unwrap().to_string();
        let mut vs = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"generateName": "velero-data-", "namespace": NS,
                         "labels": {"velero.io/backup-name": "b1"}},
            "spec": {"volumeSnapshotClassName": "fast-snap", "source": {"persistentVolumeClaimName": pvc}}});
        if let Some(name) = stuck {
            sim.set_snapshot_behaviour(name, SnapshotBehaviour::NeverReady);
            vs["metadata"]["name"] = json!(name);
        }
        let vs = sim.create(vs).unwrap();
        let vs_name = vs["metadata"]["name"].as_str().unwrap().to_string();
        if stuck.is_none() {
            sim.wait_for("the VolumeSnapshot ready", PATIENCE, |s| {
                let vs = s.get(
                    "snapshot.storage.k8s.io/v1",
                    "VolumeSnapshot",
                    Some(NS),
                    &vs_name,
                )?;
                (vs["status"]["readyToUse"] == true).then_some(())
            });
        }
        let du = sim
            .create(json!({"apiVersion": DU, "kind": "DataUpload",
                "metadata": {"generateName": "b1-", "namespace": VELERO,
                    "ownerReferences": [{"apiVersion": "velero.io/v1", "kind": "Backup", "name": "b1",
                                         "uid": self.backup_uid, "controller": true}],
                    "labels": {"velero.io/backup-name": "b1", "velero.io/backup-uid": self.backup_uid,
                               "velero.io/pvc-uid": pvc_uid,
                               "velero.io/async-operation-id": format!("du-{}.{pvc_uid}", self.backup_uid)}},
                "spec": {"snapshotType": "CSI",
                         "csiSnapshot": {"volumeSnapshot": vs_name, "storageClass": "fast",
                                         "snapshotClass": "fast-snap", "driver": "sim.csi.cairn.io"},
                         "sourcePVC": pvc, "datamover": "cairn", "backupStorageLocation": "default",
                         "sourceNamespace": NS, "operationTimeout": "10m0s"}}))
            .unwrap();
        (
            du["metadata"]["name"].as_str().unwrap().to_string(),
            vs_name,
        )
    }

    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.cluster.sim.get(DU, kind, Some(VELERO), name)
    }

    /// Waits until the object's phase is one of `phases`, failing at once on another end.
    fn wait_phase(&self, kind: &str, name: &str, phases: &[&str]) -> Value {
        self.cluster
            .sim
            .wait_for(&format!("{kind} {name} in {phases:?}"), PATIENCE, |_| {
                let o = self.get(kind, name)?;
                let phase = o["status"]["phase"].as_str()?;
                if !phases.contains(&phase) && matches!(phase, "Completed" | "Failed" | "Canceled")
                {
                    panic!(
                        "{kind} {name} ended {phase}: {}\ncontroller log:\n{}",
                        o["status"],
                        self.cluster.controller_log()
                    );
                }
                phases.contains(&phase).then_some(o)
            })
    }

    /// Nothing is left of DataUpload `name` and its VolumeSnapshot `vs`: no PVC or
    /// VolumeSnapshot of it in cairn's namespace (nor a Job or pod, unless `keep_job`: a
    /// finished Job stays for its logs until its TTL), not the VolumeSnapshot in the source
    /// namespace, no VolumeSnapshotContent of either.
    fn wait_nothing_left(&self, name: &str, vs: &str, keep_job: bool) {
        let snap = "snapshot.storage.k8s.io/v1";
        self.cluster
            .sim
            .wait_for(&format!("nothing left of {name}"), PATIENCE, |s| {
                let mine = |o: &Value| {
                    o["metadata"]["labels"]["cairn.io/owner"] == name
                        || o["metadata"]["labels"]["job-name"]
                            .as_str()
                            .is_some_and(|j| j.starts_with(name))
                };
                let mut left: Vec<String> = [
                    ("batch/v1", "Job"),
                    ("v1", "Pod"),
                    ("v1", "PersistentVolumeClaim"),
                    (snap, "VolumeSnapshot"),
                ]
                .into_iter()
                .filter(|(_, k)| !(keep_job && matches!(*k, "Job" | "Pod")))
                .flat_map(|(v, k)| {
                    s.list(v, k, Some(CAIRN))
                        .into_iter()
                        .filter(|o| mine(o))
                        .map(move |o| format!("{k} {}", o["metadata"]["name"]))
                })
                .collect();
                if s.get(snap, "VolumeSnapshot", Some(NS), vs).is_some() {
                    left.push(format!("VolumeSnapshot {NS}/{vs}"));
                }
                for c in s.list(snap, "VolumeSnapshotContent", None) {
                    let r = &c["spec"]["volumeSnapshotRef"]["name"];
                    if c["metadata"]["name"] == name || r == vs || r == name {
                        left.push(format!("VolumeSnapshotContent {}", c["metadata"]["name"]));
                    }
                }
                left.is_empty().then_some(())
            });
    }

    fn cancel(&self, name: &str) {
        self.cluster
            .sim
            .merge_patch(
                DU,
                "DataUpload",
                Some(VELERO),
                name,
                None,
                json!({"spec": {"cancel": true}}),
            )
            .unwrap();
    }
}

#[test]
fn a_data_upload_as_velero_creates_it_completes_with_progress_and_restores_through_a_data_download()
{
    if controller_logic_only() {
        return;
    }
    let v = Velero::start("velero-roundtrip", json!({}), &[]);
    let files = small_files();
    let source = v.cluster.volume("data", &files);
    let (name, vs) = v.data_upload("data");
    let started = Instant::now();
    let done = v.wait_phase("DataUpload", &name, &["Completed"]);
    let status = &done["status"];
    assert!(
        status["snapshotID"].as_str().is_some_and(|s| !s.is_empty()),
        "{status}"
    );
    assert_eq!(status["path"], "/data");
    assert!(status["startTimestamp"].is_string() && status["completionTimestamp"].is_string());
    assert!(
        status["incrementalBytes"].as_i64().is_some_and(|b| b > 0),
        "{status}"
    );
    assert!(
        status["progress"]["totalBytes"]
            .as_i64()
            .is_some_and(|b| b > 0),
        "{status}"
    );
    assert!(
        status.get("node").is_none(),
        "cairn never names a node: {status}"
    );
    // Velero's labels and owner are untouched; no mover finalizer was added.
    assert!(done["metadata"]["labels"]["velero.io/async-operation-id"]
        .as_str()
        .is_some_and(|l| l.starts_with("du-")));
    assert_eq!(done["metadata"]["ownerReferences"][0]["name"], "b1");
    // Once Completed, cairn's own finalizer (never Velero's mover finalizer) holds the
    // object until its snapshot is forgotten.
    v.cluster
        .sim
        .wait_for("cairn's finalizer on the DataUpload", PATIENCE, |_| {
            let du = v.get("DataUpload", &name)?;
            (du["metadata"]["finalizers"] == json!(["cairn.io/forget-snapshot"])).then_some(())
        });
    // Progress was patched by the job pod on the way, then the final phase by the controller.
    let progress_path = format!("/apis/{DU}/namespaces/{VELERO}/datauploads/{name}/status");
    let patches: Vec<Value> = v
        .cluster
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == progress_path && r.code == 200)
        .map(|r| r.body)
        .collect();
    let phases: Vec<&str> = patches
        .iter()
        .filter_map(|b| b["status"]["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        ["Accepted", "Prepared", "InProgress", "Completed"],
        "{patches:?}"
    );
    assert!(
        patches
            .iter()
            .any(|b| b["status"]["progress"]["bytesDone"].as_i64().is_some()
                && b["status"].get("phase").is_none()),
        "no progress patch from the job: {patches:?}"
    );
    assert!(started.elapsed() < PATIENCE);
    v.wait_nothing_left(&name, &vs, true);
    // The repository is the namespace's, under the location's base.
    assert!(v
        .base
        .path()
        .join("cairn")
        .join(NS)
        .join("snapshots")
        .is_dir());

    // Restore as Velero does: a DataDownload first, the target PVC (with Velero's
    // selector) after it.
    let snapshot = status["snapshotID"].as_str().unwrap();
    let dd = v
        .cluster
        .sim
        .create(json!({"apiVersion": DU, "kind": "DataDownload",
            "metadata": {"generateName": "r1-", "namespace": VELERO,
                         "labels": {"velero.io/restore-name": "r1", "velero.io/async-operation-id": "dd-1"}},
            "spec": {"targetVolume": {"pvc": "data-restored", "pv": "", "namespace": NS},
                     "backupStorageLocation": "default", "datamover": "cairn", "snapshotID": snapshot,
                     "sourceNamespace": NS, "operationTimeout": "10m0s"}}))
        .unwrap();
    let dd_name = dd["metadata"]["name"].as_str().unwrap().to_string();
    v.wait_phase("DataDownload", &dd_name, &["Accepted"]);
    v.cluster.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-restored", "namespace": NS},
        "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}},
                 "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": "shop.data-restored.abcde"}}}}));
    v.wait_phase("DataDownload", &dd_name, &["Completed"]);
    let target = v
        .cluster
        .sim
        .volume_dir(NS, "data-restored")
        .expect("target bound");
    assert_eq!(tree(&target), tree(&source));
    let claim = v
        .cluster
        .sim
        .get("v1", "PersistentVolumeClaim", Some(NS), "data-restored")
        .unwrap();
    assert_eq!(claim["status"]["phase"], "Bound");
    let pv = v
        .cluster
        .sim
        .get(
            "v1",
            "PersistentVolume",
            None,
            claim["spec"]["volumeName"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(
        pv["metadata"]["labels"]["velero.io/dynamic-pv-restore"],
        "shop.data-restored.abcde"
    );
    assert_eq!(
        pv["spec"]["persistentVolumeReclaimPolicy"], "Delete",
        "policy restored"
    );
    assert!(v
        .cluster
        .sim
        .get("v1", "PersistentVolumeClaim", Some(CAIRN), &dd_name)
        .is_none());

    // Deleting Velero's Backup: the garbage collector deletes its DataUpload, cairn forgets
    // the snapshot, and only then is the DataUpload gone.
    let repo = format!("file://{}/cairn/{NS}", v.base.path().display());
    let listed = || {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["snapshots", "--json", "-r", &repo])
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("HOME", v.base.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "snapshots: {}", text(&out));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        list.iter()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(), [snapshot.to_string()]);
    v.cluster
        .sim
        .delete("velero.io/v1", "Backup", Some(VELERO), "b1")
        .unwrap();
    v.cluster
        .sim
        .wait_for("the DataUpload gone after its Backup", PATIENCE, |_| {
            v.get("DataUpload", &name).is_none().then_some(())
        });
    assert!(
        listed().is_empty(),
        "snapshot {snapshot} was not forgotten\ncontroller log:\n{}",
        v.cluster.controller_log()
    );
    v.cluster.assert_no_pruned_fields();
}

#[test]
fn a_missing_backup_pvc_storage_class_fails_within_seconds() {
    if controller_logic_only() {
        return;
    }
    let v = Velero::start(
        "velero-no-class",
        json!({"fast": {"storageClass": "does-not-exist", "readOnly": true}}),
        &[],
    );
    v.cluster.volume("data", &small_files());
    let (name, vs) = v.data_upload("data");
    let started = Instant::now();
    let failed = v.wait_phase("DataUpload", &name, &["Failed"]);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"does-not-exist\"") && message.contains("does not exist"),
        "{message}"
    );
    v.wait_nothing_left(&name, &vs, false);
}

/// A class whose driver cannot make ReadOnlyMany volumes: the provisioner says so in a
/// `ProvisioningFailed` Event on the backupPVC, and the upload fails with that reason at
/// once instead of waiting in Prepared.
#[test]
fn a_backup_pvc_class_that_cannot_make_read_only_many_fails_within_seconds() {
    if controller_logic_only() {
        return;
    }
    let v = Velero::start(
        "velero-no-rox",
        json!({"fast": {"storageClass": "rwo-only", "readOnly": true}}),
        &[],
    );
    v.cluster
        .sim
        .create(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "rwo-only"}, "provisioner": "sim.csi.cairn.io",
            "parameters": {"accessModes": "ReadWriteOnce"}}),
        )
        .unwrap();
    v.cluster.volume("data", &small_files());
    let (name, vs) = v.data_upload("data");
    let started = Instant::now();
    let failed = v.wait_phase("DataUpload", &name, &["Failed"]);
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot be provisioned") && message.contains("ReadOnlyMany"),
        "{message}"
    );
    v.wait_nothing_left(&name, &vs, false);
}

/// Each phase is held deterministically: Accepted by a VolumeSnapshot that never becomes
/// ready, InProgress by a node that never starts the Job's pod, Prepared by the backup
/// Job limit (1) that the InProgress one holds.
#[test]
fn cancel_in_each_phase_ends_canceled_with_nothing_left_behind() {
    if controller_logic_only() {
        return;
    }
    let v = Velero::start(
        "velero-cancel",
        json!({}),
        &[("KDMP_BACKUP_JOB_LIMIT", "1")],
    );
    v.cluster.volume("data", &small_files());
    let (accepted, accepted_vs) = v.data_upload_of("data", Some("never-ready"));
    v.wait_phase("DataUpload", &accepted, &["Accepted"]);
    v.cluster.sim.set_node_dead("sim-node-1", true);
    let (running, running_vs) = v.data_upload("data");
    v.wait_phase("DataUpload", &running, &["InProgress"]);
    let (prepared, prepared_vs) = v.data_upload("data");
    v.wait_phase("DataUpload", &prepared, &["Prepared"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let still = v.get("DataUpload", &prepared).unwrap();
    assert_eq!(
        still["status"]["phase"], "Prepared",
        "the job slot is taken"
    );
    for (name, vs) in [
        (&accepted, &accepted_vs),
        (&prepared, &prepared_vs),
        (&running, &running_vs),
    ] {
        v.cancel(name);
        let canceled = v.wait_phase("DataUpload", name, &["Canceled"]);
        assert!(canceled["status"]["completionTimestamp"].is_string());
        if name == &running {
            // A dead node's kubelet never finalizes the deleted pod (nor does a real one).
            v.cluster.sim.set_node_dead("sim-node-1", false);
        }
        v.wait_nothing_left(name, vs, false);
    }
}
