//! The actors: Jobs run as local processes (exit code, termination message, deadline,
//! missing ServiceAccount), pod deletion kills, garbage collection, and volumes from
//! snapshots.

use cairn_kube_sim::{Image, Sim, SimOptions, SnapshotBehaviour};
use serde_json::{json, Value};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(30);

fn sim() -> Sim {
    let image = Image {
        entrypoint: "/bin/sh".into(),
        env: vec![],
        termination_log_env: Some("TERMINATION_LOG".into()),
    };
    Sim::start(SimOptions {
        images: [("shell".to_string(), image)].into(),
        ..SimOptions::default()
    })
}

fn job(name: &str, script: &str, extra: Value) -> Value {
    let mut spec = json!({"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
        "volumes": [{"name": "out", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "shell", "args": ["-c", script, "sh", "/out"],
                        "volumeMounts": [{"name": "out", "mountPath": "/out"}]}]}}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn condition(sim: &Sim, name: &str) -> Option<(String, String)> {
    let j = sim.get("batch/v1", "Job", Some("default"), name)?;
    j["status"]["conditions"].as_array()?.iter().find_map(|c| {
        matches!(c["type"].as_str(), Some("Complete" | "Failed")).then(|| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
    })
}

fn pods_of(sim: &Sim, job: &str) -> Vec<Value> {
    sim.list("v1", "Pod", Some("default"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["job-name"] == job)
        .collect()
}

#[test]
fn jobs_run_processes_and_report_how_they_ended() {
    let sim = sim();
    // $1 is the mounted emptyDir, rewritten to its host directory.
    sim.create(job(
        "ok",
        "echo hi > \"$1/x\" && echo '{\"done\":1}' > \"$TERMINATION_LOG\"",
        json!({}),
    ))
    .unwrap();
    sim.create(job("bad", "echo boom >&2; exit 3", json!({})))
        .unwrap();
    sim.create(job("slow", "sleep 30", json!({"activeDeadlineSeconds": 1})))
        .unwrap();
    for (name, want) in [("ok", "Complete"), ("bad", "Failed"), ("slow", "Failed")] {
        let (got, reason) = sim.wait_for(&format!("job {name} finished"), PATIENCE, |s| {
            condition(s, name)
        });
        assert_eq!(got, want, "{name}: {reason}");
    }
    let ok = &pods_of(&sim, "ok")[0];
    let terminated = &ok["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0);
    assert_eq!(terminated["message"], "{\"done\":1}\n");
    let bad = &pods_of(&sim, "bad")[0];
    assert_eq!(
        bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(condition(&sim, "slow").unwrap().1, "DeadlineExceeded");
    // The deadline killed the pod and its process.
    sim.wait_for("slow's pod gone", PATIENCE, |s| {
        pods_of(s, "slow").is_empty().then_some(())
    });
}

#[test]
fn a_job_without_its_service_account_never_gets_a_pod() {
    let sim = sim();
    let mut j = job("nosa", "true", json!({}));
    j["spec"]["template"]["spec"]["serviceAccountName"] = json!("missing");
    sim.create(j).unwrap();
    sim.wait_for("FailedCreate event", PATIENCE, |s| {
        s.list("v1", "Event", Some("default"))
            .iter()
            .any(|e| {
                e["reason"] == "FailedCreate"
                    && e["message"]
                        .as_str()
                        .unwrap()
                        .contains("serviceaccount \"missing\" not found")
            })
            .then_some(())
    });
    assert!(pods_of(&sim, "nosa").is_empty());
    let job = sim.get("batch/v1", "Job", Some("default"), "nosa").unwrap();
    assert!(job["status"]["active"].is_null(), "{}", job["status"]);
}

#[test]
fn deleting_a_job_in_the_background_kills_its_pod() {
    let sim = sim();
    sim.create(job("long", "sleep 60", json!({}))).unwrap();
    sim.wait_for("pod running", PATIENCE, |s| {
        pods_of(s, "long")
            .first()
            .filter(|p| p["status"]["phase"] == "Running")
            .map(|_| ())
    });
    let t0 = std::time::Instant::now();
    let api = sim.shared().clone();
    api.with_state(|s| {
        let t = s.registry.by_id("batch/jobs").cloned().unwrap();
        let opts = cairn_kube_sim::store::DeleteOptions {
            propagation: Some(cairn_kube_sim::store::Propagation::Background),
            ..Default::default()
        };
        s.delete(&t, Some("default"), "long", &opts).unwrap();
    });
    sim.wait_for("pod gone", PATIENCE, |s| {
        pods_of(s, "long").is_empty().then_some(())
    });
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "SIGTERM ended sleep before the grace period"
    );
}

#[test]
fn foreground_deletion_waits_for_dependents() {
    let sim = sim();
    let owner = sim
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": "default"}}))
        .unwrap();
    let dependent = |name: &str, finalizer: bool| {
        let mut meta = json!({"name": name, "namespace": "default", "ownerReferences": [{"apiVersion": "v1",
            "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"], "blockOwnerDeletion": true}]});
        if finalizer {
            meta["finalizers"] = json!(["test/hold"]);
        }
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    };
    sim.create(dependent("held", true)).unwrap();
    sim.shared().with_state(|s| {
        let t = s.registry.by_id("core/configmaps").cloned().unwrap();
        let opts = cairn_kube_sim::store::DeleteOptions {
            propagation: Some(cairn_kube_sim::store::Propagation::Foreground),
            ..Default::default()
        };
        s.delete(&t, Some("default"), "owner", &opts).unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sim.get("v1", "ConfigMap", Some("default"), "owner")
            .is_some(),
        "the owner waits for its dependent"
    );
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "held",
        None,
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    sim.wait_for("owner gone", PATIENCE, |s| {
        s.get("v1", "ConfigMap", Some("default"), "owner")
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_pvc_from_a_snapshot_is_a_copy_and_failing_snapshots_report_errors() {
    let sim = sim();
    for o in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "sc"}, "provisioner": "d"}),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "metadata": {"name": "vsc"},
               "driver": "d", "deletionPolicy": "Delete"}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "src", "namespace": "default"},
               "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        sim.create(o).unwrap();
    }
    let src = sim.wait_for("src bound", PATIENCE, |s| s.volume_dir("default", "src"));
    std::fs::write(src.join("f"), b"before").unwrap();
    let snap = |name: &str| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"volumeSnapshotClassName": "vsc", "source": {"persistentVolumeClaimName": "src"}}})
    };
    sim.set_snapshot_behaviour(
        "broken",
        SnapshotBehaviour::FailAfter(Duration::ZERO, "disk on fire".into()),
    );
    sim.create(snap("s1")).unwrap();
    sim.create(snap("broken")).unwrap();
    sim.wait_for("s1 ready", PATIENCE, |s| {
        (s.get(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some("default"),
            "s1",
        )?["status"]["readyToUse"]
            == true)
            .then_some(())
    });
    std::fs::write(src.join("f"), b"after").unwrap();
    sim.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "copy", "namespace": "default"},
        "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s1"}}})).unwrap();
    let copy = sim.wait_for("copy bound", PATIENCE, |s| s.volume_dir("default", "copy"));
    assert_eq!(std::fs::read(copy.join("f")).unwrap(), b"before");
    let broken = sim.wait_for("broken failed", PATIENCE, |s| {
        let vs = s.get(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some("default"),
            "broken",
        )?;
        vs["status"]["error"]["message"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(broken, "disk on fire");
    // Deleting the snapshot removes its content (deletionPolicy Delete).
    sim.delete(
        "snapshot.storage.k8s.io/v1",
        "VolumeSnapshot",
        Some("default"),
        "s1",
    )
    .unwrap();
    sim.wait_for("s1 and its content gone", PATIENCE, |s| {
        (s.get(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some("default"),
            "s1",
        )
        .is_none()
            && s.list("snapshot.storage.k8s.io/v1", "VolumeSnapshotContent", None)
                .iter()
                .all(|c| c["spec"]["volumeSnapshotRef"]["name"] != "s1"))
        .then_some(())
    });
}

/// What a data mover does (Velero's exposers): a snapshot moved to another namespace
/// through a pre-provisioned content on the same storage snapshot, and a restored PV
/// handed to a claim with a selector by setting its `claimRef`.
#[test]
fn moved_snapshots_and_handed_over_volumes_bind_statically() {
    let sim = sim();
    let vs_api = "snapshot.storage.k8s.io/v1";
    for o in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mover"}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "sc"},
               "provisioner": "d", "reclaimPolicy": "Delete"}),
        json!({"apiVersion": vs_api, "kind": "VolumeSnapshotClass", "metadata": {"name": "vsc"},
               "driver": "d", "deletionPolicy": "Delete"}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "src", "namespace": "default"},
               "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        sim.create(o).unwrap();
    }
    let src = sim.wait_for("src bound", PATIENCE, |s| s.volume_dir("default", "src"));
    std::fs::write(src.join("f"), b"data").unwrap();
    sim.create(json!({"apiVersion": vs_api, "kind": "VolumeSnapshot",
        "metadata": {"name": "s1", "namespace": "default"},
        "spec": {"volumeSnapshotClassName": "vsc", "source": {"persistentVolumeClaimName": "src"}}}))
        .unwrap();
    let content = sim.wait_for("s1 ready", PATIENCE, |s| {
        let vs = s.get(vs_api, "VolumeSnapshot", Some("default"), "s1")?;
        (vs["status"]["readyToUse"] == true).then(|| {
            vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap()
                .to_string()
        })
    });
    // Move: a new content on the same handle, the original retained, then deleted.
    sim.create(
        json!({"apiVersion": vs_api, "kind": "VolumeSnapshotContent", "metadata": {"name": "moved"},
        "spec": {"deletionPolicy": "Delete", "driver": "d", "volumeSnapshotClassName": "vsc",
                 "source": {"snapshotHandle": content},
                 "volumeSnapshotRef": {"name": "moved", "namespace": "mover"}}}),
    )
    .unwrap();
    sim.create(json!({"apiVersion": vs_api, "kind": "VolumeSnapshot", "metadata": {"name": "moved", "namespace": "mover"},
        "spec": {"volumeSnapshotClassName": "vsc", "source": {"volumeSnapshotContentName": "moved"}}}))
        .unwrap();
    sim.merge_patch(
        vs_api,
        "VolumeSnapshotContent",
        None,
        &content,
        None,
        json!({"spec": {"deletionPolicy": "Retain"}}),
    )
    .unwrap();
    sim.delete(vs_api, "VolumeSnapshot", Some("default"), "s1")
        .unwrap();
    sim.wait_for("s1 gone", PATIENCE, |s| {
        s.get(vs_api, "VolumeSnapshot", Some("default"), "s1")
            .is_none()
            .then_some(())
    });
    sim.delete(vs_api, "VolumeSnapshotContent", None, &content)
        .unwrap();
    sim.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "tmp", "namespace": "mover"},
        "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "dataSource": {"apiGroup": vs_api, "kind": "VolumeSnapshot", "name": "moved"}}})).unwrap();
    let tmp = sim.wait_for("tmp bound", PATIENCE, |s| s.volume_dir("mover", "tmp"));
    assert_eq!(std::fs::read(tmp.join("f")).unwrap(), b"data");
    // A claim with a selector is not provisioned; it binds to the PV handed to it.
    sim.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "target", "namespace": "default"},
        "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": "x"}}}})).unwrap();
    let pv = sim
        .get("v1", "PersistentVolumeClaim", Some("mover"), "tmp")
        .unwrap()["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    sim.merge_patch(
        "v1",
        "PersistentVolume",
        None,
        &pv,
        None,
        json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}}),
    )
    .unwrap();
    sim.delete("v1", "PersistentVolumeClaim", Some("mover"), "tmp")
        .unwrap();
    sim.wait_for("PV released", PATIENCE, |s| {
        (s.get("v1", "PersistentVolume", None, &pv)?["status"]["phase"] == "Released").then_some(())
    });
    let pending = sim
        .get("v1", "PersistentVolumeClaim", Some("default"), "target")
        .unwrap();
    assert_eq!(pending["status"]["phase"], "Pending", "{pending}");
    sim.merge_patch(
        "v1",
        "PersistentVolume",
        None,
        &pv,
        None,
        json!({
        "metadata": {"labels": {"velero.io/dynamic-pv-restore": "x"}},
        "spec": {"claimRef": {"namespace": "default", "name": "target", "uid": null}}}),
    )
    .unwrap();
    let target = sim.wait_for("target bound", PATIENCE, |s| {
        s.volume_dir("default", "target")
    });
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"data");
    assert_eq!(
        sim.get("v1", "PersistentVolume", None, &pv).unwrap()["status"]["phase"],
        "Bound"
    );
    // Deleting the moved snapshot deletes the storage snapshot (policy Delete).
    sim.delete(vs_api, "VolumeSnapshot", Some("mover"), "moved")
        .unwrap();
    sim.wait_for("moved content gone", PATIENCE, |s| {
        s.get(vs_api, "VolumeSnapshotContent", None, "moved")
            .is_none()
            .then_some(())
    });
}

#[test]
fn a_claim_for_an_access_mode_its_class_cannot_serve_stays_pending_with_an_event() {
    let sim = sim();
    for o in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "rwo-only"},
               "provisioner": "d", "parameters": {"accessModes": "ReadWriteOnce"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "rox", "namespace": "default"},
               "spec": {"storageClassName": "rwo-only", "accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "rwo", "namespace": "default"},
               "spec": {"storageClassName": "rwo-only", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        sim.create(o).unwrap();
    }
    sim.wait_for("rwo bound", PATIENCE, |s| s.volume_dir("default", "rwo"));
    let event = sim.wait_for("a ProvisioningFailed event", PATIENCE, |s| {
        s.list("v1", "Event", Some("default"))
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == "rox" && e["reason"] == "ProvisioningFailed")
    });
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"].as_str().unwrap().contains("ReadOnlyMany"),
        "{event}"
    );
    let claim = sim
        .get("v1", "PersistentVolumeClaim", Some("default"), "rox")
        .unwrap();
    assert_eq!(claim["status"]["phase"], "Pending", "{claim}");
}

fn block_claim(name: &str, size: &str, source: Option<Value>) -> Value {
    let mut o = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                 "resources": {"requests": {"storage": size}}}});
    if let Some(source) = source {
        o["spec"]["dataSource"] = source;
    }
    o
}

fn events_of(sim: &Sim, name: &str, reason: &str) -> Vec<String> {
    sim.list("v1", "Event", Some("default"))
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A Block claim is a sparse image file of its size; a snapshot and a clone of it copy
/// the image (and grow it to a larger request); a Filesystem claim from a Block snapshot
/// is refused by the provisioner.
#[test]
fn a_block_pvc_is_an_image_file_that_snapshots_and_clones_copy() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let sim = sim();
    for o in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "sc"}, "provisioner": "d"}),
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "metadata": {"name": "vsc"},
               "driver": "d", "deletionPolicy": "Delete"}),
        block_claim("disk", "64Mi", None),
    ] {
        sim.create(o).unwrap();
    }
    let image = sim.wait_for("disk bound", PATIENCE, |s| s.volume_dir("default", "disk"));
    let meta = std::fs::metadata(&image).unwrap();
    assert!(meta.is_file(), "{}", image.display());
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "sparse: {} blocks",
        meta.blocks()
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.write_all_at(b"boot sector", 0).unwrap();
    file.write_all_at(b"middle", 40 << 20).unwrap();
    sim.create(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "s1", "namespace": "default"},
        "spec": {"volumeSnapshotClassName": "vsc", "source": {"persistentVolumeClaimName": "disk"}}}))
        .unwrap();
    sim.wait_for("s1 ready", PATIENCE, |s| {
        (s.get(
            "snapshot.storage.k8s.io/v1",
            "VolumeSnapshot",
            Some("default"),
            "s1",
        )?["status"]["readyToUse"]
            == true)
            .then_some(())
    });
    file.write_all_at(b"changed", 0).unwrap();
    let from_snapshot =
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s1"});
    sim.create(block_claim(
        "restored",
        "128Mi",
        Some(from_snapshot.clone()),
    ))
    .unwrap();
    sim.create(block_claim(
        "clone",
        "64Mi",
        Some(json!({"kind": "PersistentVolumeClaim", "name": "disk"})),
    ))
    .unwrap();
    let restored = sim.wait_for("restored bound", PATIENCE, |s| {
        s.volume_dir("default", "restored")
    });
    let bytes = std::fs::read(&restored).unwrap();
    assert_eq!(bytes.len(), 128 << 20, "grown to the claim's size");
    assert_eq!(&bytes[..11], b"boot sector", "the snapshot's content");
    assert_eq!(&bytes[40 << 20..(40 << 20) + 6], b"middle");
    assert!(std::fs::metadata(&restored).unwrap().blocks() * 512 < 4 << 20);
    let clone = sim.wait_for("clone bound", PATIENCE, |s| {
        s.volume_dir("default", "clone")
    });
    assert_eq!(&std::fs::read(&clone).unwrap()[..7], b"changed");

    let mut filesystem = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "fs", "namespace": "default"},
        "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "64Mi"}}}});
    filesystem["spec"]["dataSource"] = from_snapshot;
    sim.create(filesystem).unwrap();
    let refused = sim.wait_for("fs refused", PATIENCE, |s| {
        events_of(s, "fs", "ProvisioningFailed").into_iter().next()
    });
    assert!(
        refused.contains("volume mode Block but the claim asks for Filesystem"),
        "{refused}"
    );
    assert_eq!(
        sim.get("v1", "PersistentVolumeClaim", Some("default"), "fs")
            .unwrap()["status"]["phase"],
        "Pending"
    );
}

/// The kubelet gives a Block volume as the `devicePath` of `volumeDevices` (rewritten to
/// the image file), and refuses a Block volume in volumeMounts or a Filesystem one in
/// volumeDevices.
#[test]
fn the_kubelet_gives_block_volumes_as_devices_only() {
    let sim = sim();
    for o in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "sc"}, "provisioner": "d"}),
        block_claim("disk", "1Mi", None),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "files", "namespace": "default"},
               "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}),
    ] {
        sim.create(o).unwrap();
    }
    let image = sim.wait_for("disk bound", PATIENCE, |s| s.volume_dir("default", "disk"));
    sim.wait_for("files bound", PATIENCE, |s| {
        s.volume_dir("default", "files")
    });
    let pod_job = |name: &str, claim: &str, devices: bool| {
        let mut c = json!({"name": "c", "image": "shell",
            "args": ["-c", "printf written | dd of=\"$1\" conv=notrunc 2>/dev/null", "sh", "/dev/xvda"]});
        if devices {
            c["volumeDevices"] = json!([{"name": "v", "devicePath": "/dev/xvda"}]);
        } else {
            c["volumeMounts"] = json!([{"name": "v", "mountPath": "/dev/xvda"}]);
        }
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}],
                "containers": [c]}}}})
    };
    sim.create(pod_job("device", "disk", true)).unwrap();
    let ended = sim.wait_for("device job ended", PATIENCE, |s| condition(s, "device"));
    assert_eq!(
        ended.0,
        "Complete",
        "{ended:?}: {:?}",
        pods_of(&sim, "device")
    );
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!((&bytes[..7], bytes.len()), (&b"written"[..], 1 << 20));

    for (job, claim, devices, message) in [
        (
            "mounted-block",
            "disk",
            false,
            "volume v has volumeMode Block, but is specified in volumeMounts",
        ),
        (
            "device-of-files",
            "files",
            true,
            "volume v has volumeMode Filesystem, but is specified in volumeDevices",
        ),
    ] {
        sim.create(pod_job(job, claim, devices)).unwrap();
        let waiting = sim.wait_for(&format!("{job} refused"), PATIENCE, |s| {
            let pod = pods_of(s, job).into_iter().next()?;
            pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
                .as_str()
                .map(str::to_string)
        });
        assert_eq!(waiting, message);
        assert_eq!(pods_of(&sim, job)[0]["status"]["phase"], "Pending");
    }
}
