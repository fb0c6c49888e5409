//! `volumeMode: Block` PVCs end to end: the controller gives the volume to its Jobs as a
//! device (`volumeDevices`), the simulated kubelet maps the device path to the PVC's image
//! file, and the real `cairn` binary backs the device up as one file of its size and
//! writes it back onto another device, refusing one that is too small.

use crate::kube_e2e::{config, Cluster, NS, PATIENCE};
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

impl Cluster {
    /// Creates Block PVC `name` of `size` (class `fast`) and waits until it is bound;
    /// returns its image file.
    fn block_volume(&self, name: &str, size: &str) -> PathBuf {
        self.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                     "volumeMode": "Block", "resources": {"requests": {"storage": size}}}}));
        self.sim
            .wait_for(&format!("PVC {name} bound"), PATIENCE, |sim| {
                sim.volume_dir(NS, name)
            })
    }

    fn restore_into(&self, name: &str, target: Value) {
        self.create(
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"source": {"volumeBackup": "disk-nightly"}, "target": target}}),
        );
    }
}

#[test]
fn a_block_pvc_is_backed_up_as_a_device_and_restored_byte_for_byte_onto_another() {
    let c = Cluster::start("e2e-block", config(&[("KDMP_RESTORE_JOB_LIMIT", "2")]));
    let image = c.block_volume("disk", "64Mi");
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    // A partition table, data in the middle, the last sector: the rest are holes.
    for (at, seed, len) in [
        (0, 1, 512 * 1024),
        (17 * MIB + 4097, 2, 3 * MIB as usize),
        (64 * MIB - 4096, 3, 4096),
    ] {
        disk.write_all_at(&crate::common::xorshift_bytes(seed, len), at)
            .unwrap();
    }
    drop(disk);
    let source = std::fs::read(&image).unwrap();

    c.backup("disk-nightly", "disk", json!({}));
    let vb = c.wait_phase("VolumeBackup", "disk-nightly", &["Completed"]);
    let status = &vb["status"];
    assert_eq!(status["mode"], "Snapshot", "{status}");
    assert_eq!(
        status["progress"]["totalBytes"],
        64 * MIB,
        "progress counts against the device's size: {status}"
    );
    let backup_job = c.get("Job", "disk-nightly-backup-1").unwrap();
    let container = &backup_job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["volumeDevices"],
        json!([{"name": "data", "devicePath": "/dev/cairn-data"}])
    );
    assert!(
        container["args"]
            .to_string()
            .contains("\"--device\",\"/dev/cairn-data\""),
        "{}",
        container["args"]
    );
    let added = status["bytesAdded"].as_u64().unwrap();
    assert!(
        added < 8 * MIB,
        "the holes of a 64 MiB device with 3.5 MiB of data cost nothing: {added} bytes added"
    );

    // Onto a new Block PVC the restore creates, and onto one too small.
    c.restore_into(
        "disk-back",
        json!({"persistentVolumeClaim": "disk-restored",
               "create": {"storageClassName": "fast", "size": "64Mi", "volumeMode": "Block"}}),
    );
    c.block_volume("small", "32Mi");
    c.restore_into("too-small", json!({"persistentVolumeClaim": "small"}));
    c.wait_phase("VolumeRestore", "disk-back", &["Completed"]);
    let restored = c.sim.volume_dir(NS, "disk-restored").unwrap();
    let bytes = std::fs::read(&restored).unwrap();
    assert_eq!(bytes.len(), source.len());
    assert!(
        bytes == source,
        "the restored device differs from the source"
    );

    let vr = c.wait_phase("VolumeRestore", "too-small", &["Failed"]);
    let reason = vr["status"]["failureReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("holds 33554432 bytes, less than")
            && reason.contains("choose a device of at least 67108864 bytes (nothing was written)"),
        "{reason}"
    );
    let small = c.sim.volume_dir(NS, "small").unwrap();
    assert!(
        std::fs::read(small).unwrap().iter().all(|b| *b == 0),
        "nothing was written onto the small device"
    );
    c.assert_no_pruned_fields();
}
