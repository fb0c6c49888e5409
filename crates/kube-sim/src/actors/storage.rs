//! Storage: a provisioner binding each PVC to a new PV backed by a directory, or for a
//! `volumeMode: Block` claim by a sparse image file of the requested size (a PVC from
//! a VolumeSnapshot or another PVC starts as a copy of it), PV reclaim, the
//! `kubernetes.io/pvc-protection` finalizer (a PVC in use by a pod stays until the pod
//! ends), and a CSI snapshotter (a VolumeSnapshot is a copy of its PVC's directory,
//! ready after a delay, or failing, or never ready; deletion honours the class's
//! `deletionPolicy` and waits while a PVC is being provisioned from it).

use super::{event, name, namespace, replace, set_status, terminating, ty, uid};
use crate::store::{now, remove_finalizer, DeleteOptions, State, WriteOptions};
use crate::{Shared, SnapshotBehaviour};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Finalizer the snapshotter puts on VolumeSnapshots it bound.
const SNAPSHOT_FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";

/// The directory of PV `pv`, or its image file when it is a Block volume.
pub fn volume_path(shared: &Shared, pv: &str) -> PathBuf {
    shared.root.join("volumes").join(pv)
}

/// The directory (or image file) of VolumeSnapshotContent `content`.
pub fn snapshot_path(shared: &Shared, content: &str) -> PathBuf {
    shared.root.join("snapshots").join(content)
}

/// The directory of the storage snapshot behind VolumeSnapshotContent `content`: its
/// `snapshotHandle` (a pre-provisioned content points at another content's snapshot).
fn content_dir(shared: &Shared, s: &State, content: &str) -> PathBuf {
    let t = ty(s, "snapshot.storage.k8s.io/volumesnapshotcontents");
    let handle = s.get(&t, None, content).ok().and_then(|c| {
        c["status"]["snapshotHandle"]
            .as_str()
            .or(c["spec"]["source"]["snapshotHandle"].as_str())
            .map(str::to_string)
    });
    snapshot_path(shared, handle.as_deref().unwrap_or(content))
}

/// Copies a directory tree (files, directories, symlinks; modes and mtimes kept).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let target = to.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if ft.is_dir() {
            copy_tree(&entry.path(), &target)?;
            std::fs::set_permissions(&target, meta.permissions())?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            let f = std::fs::File::options().write(true).open(&target)?;
            f.set_modified(meta.modified()?)?;
        }
    }
    Ok(())
}

/// Whether a PVC or PV object is a raw block volume.
pub fn is_block(object: &Value) -> bool {
    object["spec"]["volumeMode"] == "Block"
}

/// Bytes of a quantity such as `64Mi`, `1Gi`, `500M` or `1048576` (the forms a PVC's
/// storage request takes); None for anything else.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| Some((text.strip_suffix(suffix)?, *unit)))
        .unwrap_or((text, 1));
    number.parse::<u64>().ok()?.checked_mul(unit)
}

/// Copies a volume: a directory tree, or an image file with its holes kept (all-zero
/// blocks of 64 KiB are skipped, so a sparse image stays sparse).
pub fn copy_volume(from: &Path, to: &Path) -> std::io::Result<()> {
    if !std::fs::metadata(from)?.is_file() {
        return copy_tree(from, to);
    }
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut source = std::fs::File::open(from)?;
    let target = std::fs::File::create(to)?;
    let mut block = vec![0u8; 64 << 10];
    let mut at = 0u64;
    loop {
        let n = source.read(&mut block)?;
        if n == 0 {
            break;
        }
        if block[..n].iter().any(|b| *b != 0) {
            target.write_all_at(&block[..n], at)?;
        }
        at += n as u64;
    }
    target.set_len(at)
}

/// Removes a volume's directory or image file.
fn remove_volume(path: &Path) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {
            let _ = std::fs::remove_file(path);
        }
        _ => {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Makes the PV at `path` for `pvc`: a directory, or for a Block claim an image file of
/// at least the requested size, starting as a copy of `from` when given. A Block claim
/// from a Filesystem source (or the reverse) is refused, as CSI drivers do.
fn make_volume(pvc: &Value, from: Option<&Path>, path: &Path) -> Result<(), String> {
    let block = is_block(pvc);
    if let Some(from) = from {
        let source_block = std::fs::metadata(from)
            .map_err(|e| format!("reading the data source: {e}"))?
            .is_file();
        if source_block != block {
            let mode = |b: bool| if b { "Block" } else { "Filesystem" };
            return Err(format!(
                "the data source has volume mode {} but the claim asks for {}",
                mode(source_block),
                mode(block)
            ));
        }
        copy_volume(from, path).map_err(|e| format!("copying the data source: {e}"))?;
    } else if !block {
        std::fs::create_dir_all(path).map_err(|e| format!("creating the volume: {e}"))?;
    }
    if block {
        let request = pvc["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap_or_default();
        let Some(size) = quantity_bytes(request) else {
            return Err(format!(
                "the claim's storage request {request:?} is not a size this provisioner reads"
            ));
        };
        let grow = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let image = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            if image.metadata()?.len() < size {
                image.set_len(size)?;
            }
            Ok(())
        };
        grow().map_err(|e| format!("creating the image file: {e}"))?;
    }
    Ok(())
}

fn storage_class(s: &State, pvc: &Value) -> Option<Value> {
    let t = ty(s, "storage.k8s.io/storageclasses");
    match pvc["spec"]["storageClassName"].as_str() {
        Some(c) => s.get(&t, None, c).ok(),
        None => s
            .all("storage.k8s.io/storageclasses")
            .into_iter()
            .find(|c| {
                c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                    == "true"
            }),
    }
}

/// The first access mode `pvc` asks for that its class's driver cannot serve. The
/// simulated driver serves every mode unless the class lists them in its `accessModes`
/// parameter (comma-separated), as a real driver that cannot make ReadOnlyMany volumes.
fn unsupported_access_mode(class: &Value, pvc: &Value) -> Option<String> {
    let served = class["parameters"]["accessModes"].as_str()?;
    let served: Vec<&str> = served.split(',').map(str::trim).collect();
    pvc["spec"]["accessModes"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|m| !served.contains(m))
        .map(str::to_string)
}

fn pod_uses_claim(s: &State, ns: &str, claim: &str, only_live: bool) -> bool {
    s.all("core/pods").iter().any(|p| {
        namespace(p).as_deref() == Some(ns)
            && (!only_live
                || !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            && p["spec"]["volumes"].as_array().is_some_and(|vs| {
                vs.iter()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == claim)
            })
    })
}

/// One provisioning pass.
pub fn provision(shared: &Shared) {
    shared.with_state(|s| {
        for pvc in s.all("core/persistentvolumeclaims") {
            let ns = namespace(&pvc).unwrap_or_default();
            if terminating(&pvc) {
                let protected = pvc["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "kubernetes.io/pvc-protection"));
                if protected && !pod_uses_claim(s, &ns, &name(&pvc), true) {
                    let mut new = pvc.clone();
                    remove_finalizer(&mut new, "kubernetes.io/pvc-protection");
                    replace(s, "core/persistentvolumeclaims", new);
                }
                continue;
            }
            if pvc["status"]["phase"] != "Pending" {
                continue;
            }
            bind(shared, s, &pvc);
        }
        let claims: Vec<String> = s
            .all("core/persistentvolumeclaims")
            .iter()
            .map(uid)
            .collect();
        for pv in s.all("core/persistentvolumes") {
            let claim = pv["spec"]["claimRef"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if claim.is_empty() || claims.contains(&claim) || terminating(&pv) {
                continue;
            }
            if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                let t = ty(s, "core/persistentvolumes");
                let _ = s.delete(&t, None, &name(&pv), &DeleteOptions::default());
                remove_volume(&volume_path(shared, &name(&pv)));
            } else if pv["status"]["phase"] != "Released" {
                set_status(
                    s,
                    "core/persistentvolumes",
                    &pv,
                    json!({"phase": "Released"}),
                );
            }
        }
    });
}

/// Binds `pvc` to a PV whose `claimRef` names it (pre-bound, or handed over by a data
/// mover); true when one was found.
fn bind_static(s: &mut State, pvc: &Value) -> bool {
    let ns = namespace(pvc).unwrap_or_default();
    let pv = s.all("core/persistentvolumes").into_iter().find(|pv| {
        let claim = &pv["spec"]["claimRef"];
        !terminating(pv)
            && claim["namespace"] == ns.as_str()
            && claim["name"] == name(pvc).as_str()
            && (claim["uid"].is_null() || claim["uid"] == uid(pvc).as_str())
    });
    let Some(pv) = pv else { return false };
    let mut new = pv.clone();
    new["spec"]["claimRef"]["uid"] = json!(uid(pvc));
    replace(s, "core/persistentvolumes", new);
    let t = ty(s, "core/persistentvolumes");
    if let Ok(now_pv) = s.get(&t, None, &name(&pv)) {
        set_status(
            s,
            "core/persistentvolumes",
            &now_pv,
            json!({"phase": "Bound"}),
        );
    }
    let mut claim = pvc.clone();
    claim["spec"]["volumeName"] = json!(name(&pv));
    claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
    replace(s, "core/persistentvolumeclaims", claim);
    let t = ty(s, "core/persistentvolumeclaims");
    if let Ok(now_claim) = s.get(&t, Some(&ns), &name(pvc)) {
        set_status(
            s,
            "core/persistentvolumeclaims",
            &now_claim,
            json!({ "phase": "Bound", "accessModes": pv["spec"]["accessModes"],
                    "capacity": pv["spec"]["capacity"] }),
        );
    }
    true
}

fn bind(shared: &Shared, s: &mut State, pvc: &Value) {
    let ns = namespace(pvc).unwrap_or_default();
    // As Kubernetes: a claim with a selector is never provisioned dynamically.
    if bind_static(s, pvc) || !pvc["spec"]["selector"].is_null() {
        return;
    }
    let Some(class) = storage_class(s, pvc) else {
        return;
    };
    if class["volumeBindingMode"] == "WaitForFirstConsumer"
        && !pod_uses_claim(s, &ns, &name(pvc), true)
    {
        return;
    }
    if let Some(refused) = unsupported_access_mode(&class, pvc) {
        // As a CSI driver that cannot serve the mode: the claim stays Pending and the
        // external provisioner records why (once here; it retries with backoff).
        let already = s.all("core/events").iter().any(|e| {
            e["involvedObject"]["uid"] == pvc["metadata"]["uid"]
                && e["reason"] == "ProvisioningFailed"
        });
        if !already {
            let message = format!(
                "failed to provision volume with StorageClass {:?}: rpc error: code = \
                 InvalidArgument desc = volume capability access mode {refused} is not supported",
                name(&class)
            );
            event(
                s,
                pvc,
                "Warning",
                "ProvisioningFailed",
                &message,
                "sim-provisioner",
            );
        }
        return;
    }
    let source = &pvc["spec"]["dataSource"];
    let from: Option<PathBuf> = match source["kind"].as_str() {
        Some("VolumeSnapshot") => {
            let t = ty(s, "snapshot.storage.k8s.io/volumesnapshots");
            let Ok(vs) = s.get(&t, Some(&ns), source["name"].as_str().unwrap_or_default()) else {
                return;
            };
            if vs["status"]["readyToUse"] != true {
                return;
            }
            let content = vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap_or_default();
            Some(content_dir(shared, s, content))
        }
        Some("PersistentVolumeClaim") => {
            let t = ty(s, "core/persistentvolumeclaims");
            let Ok(src) = s.get(&t, Some(&ns), source["name"].as_str().unwrap_or_default()) else {
                return;
            };
            let Some(pv) = src["spec"]["volumeName"].as_str() else {
                return;
            };
            Some(volume_path(shared, pv))
        }
        _ => None,
    };
    let pv_name = format!("pvc-{}", uid(pvc));
    let dir = volume_path(shared, &pv_name);
    if let Err(why) = make_volume(pvc, from.as_deref(), &dir) {
        remove_volume(&dir);
        let already = s.all("core/events").iter().any(|e| {
            e["involvedObject"]["uid"] == pvc["metadata"]["uid"]
                && e["reason"] == "ProvisioningFailed"
        });
        if !already {
            event(
                s,
                pvc,
                "Warning",
                "ProvisioningFailed",
                &why,
                "sim-provisioner",
            );
        }
        return;
    }
    let size = pvc["spec"]["resources"]["requests"]["storage"].clone();
    let driver = class["provisioner"].clone();
    let pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": { "name": pv_name, "annotations": { "pv.kubernetes.io/provisioned-by": driver } },
        "spec": {
            "capacity": { "storage": size }, "accessModes": pvc["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class["metadata"]["name"], "volumeMode": pvc["spec"]["volumeMode"],
            "claimRef": { "apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                          "name": name(pvc), "uid": uid(pvc) },
            "csi": { "driver": driver, "volumeHandle": dir.to_string_lossy() },
        }
    });
    let pv_type = ty(s, "core/persistentvolumes");
    let Ok(pv) = s.create(&pv_type, None, pv, &WriteOptions::default()) else {
        return;
    };
    set_status(s, "core/persistentvolumes", &pv, json!({"phase": "Bound"}));
    let mut claim = pvc.clone();
    claim["spec"]["volumeName"] = json!(pv_name);
    claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
    claim["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
    replace(s, "core/persistentvolumeclaims", claim);
    let t = ty(s, "core/persistentvolumeclaims");
    if let Ok(now_claim) = s.get(&t, Some(&ns), &name(pvc)) {
        set_status(
            s,
            "core/persistentvolumeclaims",
            &now_claim,
            json!({ "phase": "Bound", "accessModes": pvc["spec"]["accessModes"], "capacity": { "storage": size } }),
        );
    }
}

/// Binds a VolumeSnapshot to the pre-provisioned content it names, once that exists: both
/// ready at once (the storage snapshot exists already).
fn bind_pre_provisioned(s: &mut State, vs: &Value, content: &str) {
    let t = ty(s, "snapshot.storage.k8s.io/volumesnapshotcontents");
    let Ok(c) = s.get(&t, None, content) else {
        return;
    };
    let handle = c["spec"]["source"]["snapshotHandle"].clone();
    set_status(
        s,
        "snapshot.storage.k8s.io/volumesnapshotcontents",
        &c,
        json!({ "readyToUse": true, "snapshotHandle": handle, "creationTime": 0 }),
    );
    let mut with_finalizer = vs.clone();
    crate::store::add_finalizer(&mut with_finalizer, SNAPSHOT_FINALIZER);
    replace(s, "snapshot.storage.k8s.io/volumesnapshots", with_finalizer);
    let vt = ty(s, "snapshot.storage.k8s.io/volumesnapshots");
    if let Ok(vs) = s.get(&vt, namespace(vs).as_deref(), &name(vs)) {
        set_status(
            s,
            "snapshot.storage.k8s.io/volumesnapshots",
            &vs,
            json!({ "boundVolumeSnapshotContentName": content, "creationTime": now(),
                    "readyToUse": true }),
        );
    }
}

/// The CSI snapshotter's memory: when each VolumeSnapshot was cut.
#[derive(Default)]
pub struct Snapshotter {
    cut: HashMap<String, Instant>,
}

impl Snapshotter {
    /// One pass over every VolumeSnapshot.
    pub fn tick(&mut self, shared: &Shared) {
        let faults = shared.snapshot_faults.lock().unwrap().clone();
        shared.with_state(|s| {
            for vs in s.all("snapshot.storage.k8s.io/volumesnapshots") {
                if terminating(&vs) {
                    self.delete(shared, s, &vs);
                    continue;
                }
                if vs["status"]["readyToUse"] == true || vs["status"]["error"].is_object() {
                    continue;
                }
                if let Some(content) = vs["spec"]["source"]["volumeSnapshotContentName"].as_str() {
                    bind_pre_provisioned(s, &vs, content);
                    continue;
                }
                let behaviour = faults
                    .get(&name(&vs))
                    .cloned()
                    .unwrap_or_else(|| shared.options.snapshots.clone());
                match self.cut.get(&uid(&vs)) {
                    None => self.cut_snapshot(shared, s, &vs),
                    Some(at) => {
                        let elapsed = at.elapsed();
                        let mut status = vs["status"].clone();
                        match behaviour {
                            SnapshotBehaviour::ReadyAfter(d) if elapsed >= d => {
                                status["readyToUse"] = json!(true);
                                self.set_content_ready(s, &vs);
                            }
                            SnapshotBehaviour::FailAfter(d, message) if elapsed >= d => {
                                status["error"] = json!({ "message": message, "time": now() });
                            }
                            _ => continue,
                        }
                        set_status(s, "snapshot.storage.k8s.io/volumesnapshots", &vs, status);
                    }
                }
            }
            let alive: Vec<String> = s
                .all("snapshot.storage.k8s.io/volumesnapshots")
                .iter()
                .map(uid)
                .collect();
            self.cut.retain(|k, _| alive.contains(k));
        });
    }

    fn fail(&mut self, s: &mut State, vs: &Value, message: String) {
        self.cut.insert(uid(vs), Instant::now());
        event(
            s,
            vs,
            "Warning",
            "SnapshotCreationFailed",
            &message,
            "csi-snapshotter",
        );
        set_status(
            s,
            "snapshot.storage.k8s.io/volumesnapshots",
            vs,
            json!({ "readyToUse": false, "error": { "message": message, "time": now() } }),
        );
    }

    fn cut_snapshot(&mut self, shared: &Shared, s: &mut State, vs: &Value) {
        let ns = namespace(vs).unwrap_or_default();
        let class_type = ty(s, "snapshot.storage.k8s.io/volumesnapshotclasses");
        let class = match vs["spec"]["volumeSnapshotClassName"].as_str() {
            Some(c) => s.get(&class_type, None, c).ok(),
            None => None,
        };
        let Some(class) = class else {
            let message = format!(
                "Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io {} not found",
                vs["spec"]["volumeSnapshotClassName"]
            );
            return self.fail(s, vs, message);
        };
        let pvc_type = ty(s, "core/persistentvolumeclaims");
        let claim = vs["spec"]["source"]["persistentVolumeClaimName"]
            .as_str()
            .unwrap_or_default();
        let pvc = match s.get(&pvc_type, Some(&ns), claim) {
            Ok(p) if p["status"]["phase"] == "Bound" => p,
            _ => {
                let message = format!("the source PVC {ns}/{claim} is not bound");
                return self.fail(s, vs, message);
            }
        };
        let driver = storage_class(s, &pvc)
            .map(|c| c["provisioner"].clone())
            .unwrap_or_default();
        if driver != class["driver"] {
            let message = format!(
                "the snapshot class driver {} does not match the PVC's driver {driver}",
                class["driver"]
            );
            return self.fail(s, vs, message);
        }
        let content = format!("snapcontent-{}", uid(vs));
        let pv = pvc["spec"]["volumeName"].as_str().unwrap_or_default();
        if let Err(e) = copy_volume(&volume_path(shared, pv), &snapshot_path(shared, &content)) {
            return self.fail(s, vs, format!("cutting the snapshot: {e}"));
        }
        let object = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": { "name": content },
            "spec": {
                "deletionPolicy": class["deletionPolicy"].as_str().unwrap_or("Delete"),
                "driver": class["driver"], "volumeSnapshotClassName": name(&class),
                "source": { "volumeHandle": volume_path(shared, pv).to_string_lossy() },
                "volumeSnapshotRef": { "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                    "name": name(vs), "namespace": ns, "uid": uid(vs) },
            }
        });
        let content_type = ty(s, "snapshot.storage.k8s.io/volumesnapshotcontents");
        let _ = s.create(&content_type, None, object, &WriteOptions::default());
        self.cut.insert(uid(vs), Instant::now());
        let mut with_finalizer = vs.clone();
        crate::store::add_finalizer(&mut with_finalizer, SNAPSHOT_FINALIZER);
        replace(s, "snapshot.storage.k8s.io/volumesnapshots", with_finalizer);
        let t = ty(s, "snapshot.storage.k8s.io/volumesnapshots");
        if let Ok(vs) = s.get(&t, Some(&ns), &name(vs)) {
            let size = pvc["status"]["capacity"]["storage"].clone();
            set_status(
                s,
                "snapshot.storage.k8s.io/volumesnapshots",
                &vs,
                json!({ "boundVolumeSnapshotContentName": content, "creationTime": now(),
                        "readyToUse": false, "restoreSize": size }),
            );
        }
    }

    fn set_content_ready(&self, s: &mut State, vs: &Value) {
        let t = ty(s, "snapshot.storage.k8s.io/volumesnapshotcontents");
        let content = vs["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap_or_default();
        if let Ok(c) = s.get(&t, None, content) {
            set_status(
                s,
                "snapshot.storage.k8s.io/volumesnapshotcontents",
                &c,
                json!({ "readyToUse": true, "snapshotHandle": content, "creationTime": 0 }),
            );
        }
    }

    fn delete(&mut self, shared: &Shared, s: &mut State, vs: &Value) {
        let ns = namespace(vs).unwrap_or_default();
        let in_use = s.all("core/persistentvolumeclaims").iter().any(|p| {
            namespace(p).as_deref() == Some(&ns)
                && p["status"]["phase"] == "Pending"
                && p["spec"]["dataSource"]["kind"] == "VolumeSnapshot"
                && p["spec"]["dataSource"]["name"] == name(vs).as_str()
        });
        if in_use {
            return;
        }
        let t = ty(s, "snapshot.storage.k8s.io/volumesnapshotcontents");
        if let Some(content) = vs["status"]["boundVolumeSnapshotContentName"].as_str() {
            if let Ok(c) = s.get(&t, None, content) {
                if c["spec"]["deletionPolicy"] == "Delete" {
                    let dir = content_dir(shared, s, content);
                    let _ = s.delete(&t, None, content, &DeleteOptions::default());
                    remove_volume(&dir);
                }
            }
        }
        let mut new = vs.clone();
        remove_finalizer(&mut new, SNAPSHOT_FINALIZER);
        replace(s, "snapshot.storage.k8s.io/volumesnapshots", new);
    }
}
