//! The Kubernetes objects the controller creates: VolumeSnapshots, backupPVCs, restore
//! targets and Jobs, with their names and labels.
//!
//! Invariant: names are deterministic from the owner (and attempt), so a reconcile that
//! repeats after a crash finds what the previous one created instead of creating twice.

use crate::config::{BackupPvcConfig, Config};
use crate::controller::JobSettings;
use crate::crd::BackupRepository;
use crate::protocol::{
    CACHE_DIR, CREDENTIALS_DIR, DATA_DEVICE, DATA_DIR, ENV_EXCLUDE_FILE_LIST, PASSWORD_DIR,
    SCRATCH_DIR, TERMINATION_LOG,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{json, Value};

/// Label naming the cairn resource a Job, PVC or VolumeSnapshot belongs to.
pub const LABEL_OWNER: &str = "cairn.io/owner";
/// Label holding the [`JobKind`] of a Job, used to count Jobs against their limit.
pub const LABEL_JOB_KIND: &str = "cairn.io/job-kind";
/// Label naming the BackupRepository a Job works on.
pub const LABEL_REPOSITORY: &str = "cairn.io/repository";

/// Kubernetes' limit for names that also appear as label values (Jobs label their pods).
const MAX_LABEL_NAME: usize = 63;

/// Which limit a Job counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// KDMP_BACKUP_JOB_LIMIT.
    Backup,
    /// KDMP_RESTORE_JOB_LIMIT.
    Restore,
    /// KDMP_MAINTENANCE_JOB_LIMIT; catalog refreshes count here too.
    Maintenance,
}

impl JobKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Maintenance => "maintenance",
        }
    }

    /// The limit for this kind in `config`.
    pub fn limit(self, config: &Config) -> u32 {
        match self {
            JobKind::Backup => config.backup_job_limit,
            JobKind::Restore => config.restore_job_limit,
            JobKind::Maintenance => config.maintenance_job_limit,
        }
    }
}

/// A short, stable hash of `text` (FNV-1a, 8 hex digits) for shortening names.
pub fn short_hash(text: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `<base>-<suffix>`, shortened to a valid label value by cutting `base` and appending a
/// hash of the full name, so two long names never collide.
pub fn job_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}-{suffix}");
    if full.len() <= MAX_LABEL_NAME {
        return full;
    }
    let room = MAX_LABEL_NAME - suffix.len() - 10;
    let cut: String = base.chars().take(room).collect();
    format!(
        "{}-{}-{suffix}",
        cut.trim_end_matches(['-', '.']),
        short_hash(&full)
    )
}

/// Deserializes an object built by this module. The shapes are fixed and covered by tests;
/// only strings vary, so this cannot fail at run time.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("objects.rs builds well-formed objects")
}

/// The VolumeSnapshot of `pvc` with `class`.
pub fn volume_snapshot(
    namespace: &str,
    name: &str,
    pvc: &str,
    class: &str,
    owner: &OwnerReference,
) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": { LABEL_OWNER: owner.name },
            "ownerReferences": [owner],
        },
        "spec": {
            "volumeSnapshotClassName": class,
            "source": { "persistentVolumeClaimName": pvc },
        }
    })
}

/// Whether `pvc` is a raw block volume (`spec.volumeMode: Block`): Jobs get it as a device
/// through `volumeDevices`, not mounted.
pub fn is_block(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// The backupPVC: a PVC provisioned from the snapshot, with the per-storage-class override
/// of its class and access mode. `block` makes it a raw block volume like its source
/// (a Filesystem claim from a Block snapshot would be refused by the provisioner).
#[allow(clippy::too_many_arguments)]
pub fn backup_pvc(
    namespace: &str,
    name: &str,
    snapshot: &str,
    source_class: Option<&str>,
    size: &str,
    cfg: Option<&BackupPvcConfig>,
    block: bool,
    owner: &OwnerReference,
) -> PersistentVolumeClaim {
    let class = cfg
        .and_then(|c| c.storage_class.as_deref())
        .or(source_class);
    let mode = if cfg.and_then(|c| c.read_only) == Some(true) {
        "ReadOnlyMany"
    } else {
        "ReadWriteOnce"
    };
    typed(json!({
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": { LABEL_OWNER: owner.name },
            "ownerReferences": [owner],
        },
        "spec": {
            "storageClassName": class,
            "accessModes": [mode],
            "volumeMode": block.then_some("Block"),
            "resources": { "requests": { "storage": size } },
            "dataSource": { "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot },
        }
    }))
}

/// A restore target PVC. Not owned by the VolumeRestore: restored data outlives it.
/// `volume_mode` is `Block` for a raw block volume; Filesystem (Kubernetes' default)
/// when absent.
pub fn target_pvc(
    namespace: &str,
    name: &str,
    class: Option<&str>,
    size: &str,
    modes: &[String],
    volume_mode: Option<&str>,
) -> PersistentVolumeClaim {
    let modes: Vec<&str> = if modes.is_empty() {
        vec!["ReadWriteOnce"]
    } else {
        modes.iter().map(String::as_str).collect()
    };
    typed(json!({
        "metadata": { "name": name, "namespace": namespace, "labels": { "app.kubernetes.io/created-by": "cairn" } },
        "spec": { "storageClassName": class, "accessModes": modes, "volumeMode": volume_mode,
                  "resources": { "requests": { "storage": size } } }
    }))
}

/// How a Job mounts the volume it works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataVolume {
    /// PVC name.
    pub claim: String,
    /// Mount read-only (backups).
    pub read_only: bool,
    /// Pin the pod to this node (a ReadWriteOnce volume in use there).
    pub node: Option<String>,
    /// A raw block volume: given to the container as the device [`DATA_DEVICE`]
    /// (`volumeDevices`) instead of mounted at [`DATA_DIR`].
    pub block: bool,
}

/// Everything that varies between Jobs.
#[derive(Clone, Debug)]
pub struct JobSpec<'a> {
    /// Job name.
    pub name: String,
    /// Namespace.
    pub namespace: &'a str,
    /// Limit it counts against.
    pub kind: JobKind,
    /// Owner (a VolumeBackup, VolumeRestore or BackupRepository).
    pub owner: &'a OwnerReference,
    /// The repository worked on.
    pub repository: &'a BackupRepository,
    /// `backup`, `restore`, `maintenance` or `catalog`, then its own arguments; the
    /// repository arguments are added here.
    pub args: Vec<String>,
    /// The volume mounted at /data (or given as the device /dev/cairn-data).
    pub data: Option<DataVolume>,
    /// Pass KDMP_EXCLUDE_FILE_LIST in the environment.
    pub with_excludes: bool,
}

/// Builds a Job running the cairn image in job mode.
pub fn job(spec: &JobSpec<'_>, config: &Config, settings: &JobSettings) -> Job {
    let repo_name = spec.repository.metadata.name.clone().unwrap_or_default();
    let repo = &spec.repository.spec;
    let mut args = vec!["job".to_string()];
    args.extend(spec.args.iter().cloned());
    args.extend([
        "--namespace".into(),
        spec.namespace.into(),
        "--repository".into(),
        repo_name.clone(),
        "--location".into(),
        repo.location.clone(),
        "--password-file".into(),
        format!("{PASSWORD_DIR}/{}", repo.password_secret.key),
        "--cache-dir".into(),
        CACHE_DIR.into(),
    ]);
    let mut volumes = vec![
        json!({ "name": "password", "secret": { "secretName": repo.password_secret.name,
            "items": [{ "key": repo.password_secret.key, "path": repo.password_secret.key }] } }),
        json!({ "name": "cache", "emptyDir": {} }),
        json!({ "name": "scratch", "emptyDir": {} }),
    ];
    // The root filesystem is read-only; resource Jobs stage manifests in TMPDIR.
    let mut mounts = vec![
        json!({ "name": "password", "mountPath": PASSWORD_DIR, "readOnly": true }),
        json!({ "name": "cache", "mountPath": CACHE_DIR }),
        json!({ "name": "scratch", "mountPath": SCRATCH_DIR }),
    ];
    if let Some(secret) = &repo.credentials_secret {
        args.extend(["--credentials-dir".into(), CREDENTIALS_DIR.into()]);
        volumes.push(json!({ "name": "credentials", "secret": { "secretName": secret.name } }));
        mounts
            .push(json!({ "name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true }));
    }
    let mut node_name = None;
    let mut devices = Vec::new();
    if let Some(data) = &spec.data {
        volumes.push(json!({ "name": "data", "persistentVolumeClaim": { "claimName": data.claim, "readOnly": data.read_only } }));
        if data.block {
            // The kubelet refuses a Block volume in volumeMounts (and a Filesystem one
            // in volumeDevices). A device has no read-only flag of its own: the claim's
            // readOnly attaches it read-only.
            devices.push(json!({ "name": "data", "devicePath": DATA_DEVICE }));
        } else {
            mounts
                .push(json!({ "name": "data", "mountPath": DATA_DIR, "readOnly": data.read_only }));
        }
        node_name = data.node.clone();
    }
    let mut env = vec![
        json!({ "name": "RUST_LOG", "value": "info" }),
        json!({ "name": "TMPDIR", "value": SCRATCH_DIR }),
        json!({ "name": "CAIRN_LOG_FORMAT", "value": settings.log_format }),
    ];
    if spec.with_excludes {
        if let Some(list) = &config.exclude_file_list {
            env.push(json!({ "name": ENV_EXCLUDE_FILE_LIST, "value": list }));
        }
    }
    let r = &config.resources;
    let pick = |pairs: [(&str, &Option<String>); 2]| -> serde_json::Map<String, Value> {
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), json!(v.as_ref()?))))
            .collect()
    };
    let requests = pick([("cpu", &r.request_cpu), ("memory", &r.request_memory)]);
    let limits = pick([("cpu", &r.limit_cpu), ("memory", &r.limit_memory)]);
    let labels = json!({
        LABEL_OWNER: spec.owner.name,
        LABEL_JOB_KIND: spec.kind.as_str(),
        LABEL_REPOSITORY: repo_name,
        "app.kubernetes.io/name": "cairn",
        "app.kubernetes.io/component": "job",
    });
    let pull_secrets: Vec<Value> = config
        .image_pull_secret
        .iter()
        .map(|s| json!({ "name": s }))
        .collect();
    typed(json!({
        "metadata": { "name": spec.name, "namespace": spec.namespace, "labels": labels, "ownerReferences": [spec.owner] },
        "spec": {
            // Retries are the controller's: each attempt is a new Job that resumes from
            // the repository's checkpoints, and the attempt count is visible in the status.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "nodeName": node_name,
                    "imagePullSecrets": pull_secrets,
                    "volumes": volumes,
                    "containers": [{
                        "name": "cairn",
                        "image": settings.image,
                        "args": args,
                        "env": env,
                        "volumeMounts": mounts,
                        "volumeDevices": (!devices.is_empty()).then_some(devices),
                        "resources": { "requests": requests, "limits": limits },
                        "terminationMessagePath": TERMINATION_LOG,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": {
                            // Root reads and restores files of every owner, and opens the
                            // device of a Block volume (root-owned in the container);
                            // nothing else is granted: no privileged mode, no device
                            // capability (docs/KUBERNETES.md, "Block volumes").
                            "runAsUser": 0,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"] },
                        },
                    }],
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_to_a_label_value_and_stay_distinct() {
        assert_eq!(job_name("db", "backup-1"), "db-backup-1");
        let a = job_name(&"a".repeat(80), "backup-1");
        let b = job_name(&format!("{}b", "a".repeat(79)), "backup-1");
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert!(a.ends_with("-backup-1"));
        assert_ne!(a, b);
    }
}
