//! `VolumeRestore`: restore a repository snapshot into a new or existing PVC.

use super::{Condition, Progress};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Restore one snapshot into a PVC of this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "VolumeRestore",
    derive = "PartialEq",
    namespaced,
    status = "VolumeRestoreStatus",
    shortname = "vr",
    category = "cairn",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.persistentVolumeClaim"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotId"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreSpec {
    /// Which snapshot to restore.
    pub source: RestoreSource,
    /// Where to restore it.
    pub target: RestoreTarget,
    /// Restore only these paths (relative to the volume root). Empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_paths: Vec<String>,
    /// Set to true to stop the restore.
    #[serde(default)]
    pub cancel: bool,
}

/// A snapshot, by id in a repository or through the VolumeBackup that made it.
/// Exactly one of `volumeBackup` and `snapshotId` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// A Completed VolumeBackup in this namespace; its repository and snapshot id are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_backup: Option<String>,
    /// A snapshot id (or unique prefix) in `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// BackupRepository name; required with `snapshotId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Namespace of `repository`; this VolumeRestore's namespace when absent. A repository
    /// in another namespace must list this one in `spec.allowedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_namespace: Option<String>,
}

/// The PVC restored into.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// PVC name in this namespace. When it exists it is restored into; when it does not,
    /// `create` must say how to make it.
    pub persistent_volume_claim: String,
    /// How to create the PVC when it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<NewVolumeClaim>,
}

/// A PVC the restore creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewVolumeClaim {
    /// Storage class; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requested size, a quantity such as `10Gi`.
    pub size: String,
    /// Access modes; `ReadWriteOnce` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `Block` for a raw block volume (to restore a backup of a Block PVC onto);
    /// `Filesystem` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
}

/// How a PVC presents its volume: a mounted filesystem, or a raw block device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VolumeMode {
    /// A filesystem mounted into the pod (Kubernetes' default).
    Filesystem,
    /// A raw block device (`volumeDevices`).
    Block,
}

impl VolumeMode {
    /// The PVC's `spec.volumeMode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Filesystem => "Filesystem",
            VolumeMode::Block => "Block",
        }
    }
}

/// Where a VolumeRestore is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum VolumeRestorePhase {
    /// Accepted, nothing created yet.
    #[default]
    New,
    /// The target PVC is being created.
    PreparingTarget,
    /// The restore Job is writing into the target PVC.
    Restoring,
    /// The target PVC holds the snapshot's data.
    Completed,
    /// The restore ended early; `status.failureReason` says why.
    Failed,
    /// `spec.cancel` stopped the restore.
    Canceled,
}

impl VolumeRestorePhase {
    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

/// Observed state of a VolumeRestore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRestoreStatus {
    /// Phase.
    #[serde(default)]
    pub phase: VolumeRestorePhase,
    /// The snapshot id resolved from the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Progress reported by the restore Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Whether the controller created the target PVC.
    #[serde(default)]
    pub created_target: bool,
    /// The current restore Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Restore Jobs created so far.
    #[serde(default)]
    pub attempts: u32,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the phase became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why the restore Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
