//! `VolumeBackup`: one backup of one PersistentVolumeClaim into a BackupRepository.

use super::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Back up one PVC of this namespace into a repository.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "VolumeBackup",
    derive = "PartialEq",
    namespaced,
    status = "VolumeBackupStatus",
    shortname = "vb",
    category = "cairn",
    printcolumn(
        name = "PVC",
        type_ = "string",
        json_path = ".spec.source.persistentVolumeClaim"
    ),
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.progress.bytesDone",
        priority = "1"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.progress.totalBytes",
        priority = "1"
    ),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotId"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupSpec {
    /// The volume to back up; it lives in the VolumeBackup's namespace.
    pub source: SourceVolume,
    /// Name of the BackupRepository to write to, in `repositoryNamespace`.
    pub repository: String,
    /// Namespace of the BackupRepository; this VolumeBackup's namespace when absent. A
    /// repository in another namespace must list this one in `spec.allowedNamespaces`;
    /// the controller copies its Secrets next to the Job (owned by this VolumeBackup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_namespace: Option<String>,
    /// How the data is read: from a CSI snapshot or from the live volume.
    #[serde(default)]
    pub mode: BackupMode,
    /// VolumeSnapshotClass to use. Default: the class marked default for the PVC's CSI driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    /// Keep the local VolumeSnapshot after the upload (the local copy of a 3-2-1 strategy).
    /// When false, the VolumeSnapshot is deleted once the upload is complete.
    #[serde(default = "default_true")]
    pub offload: bool,
    /// Tags recorded in the repository snapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// BackupRule (same namespace) whose pre commands run before the snapshot and whose
    /// post commands run after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// Set to true to stop the backup: the Job, backupPVC and (unless kept) VolumeSnapshot
    /// are deleted and the phase becomes Canceled.
    #[serde(default)]
    pub cancel: bool,
}

fn default_true() -> bool {
    true
}

/// The volume a backup reads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceVolume {
    /// PersistentVolumeClaim name.
    pub persistent_volume_claim: String,
    /// An existing VolumeSnapshot of that PVC (same namespace) to upload instead of cutting
    /// one: the rule and snapshot steps are skipped (an ApplicationBackup cuts the
    /// snapshots of a group at once). The backup waits for it to be ready; it is deleted
    /// after the upload unless `offload` keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
}

/// A BackupRule by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RuleRef {
    /// BackupRule name in the VolumeBackup's namespace.
    pub name: String,
}

/// How a backup reads the volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum BackupMode {
    /// Snapshot when a VolumeSnapshotClass exists for the PVC's driver, direct otherwise.
    #[default]
    Auto,
    /// Always from a CSI snapshot; fails when there is no VolumeSnapshotClass.
    Snapshot,
    /// Always from the live volume (cross-cloud, or storage without CSI snapshots).
    Direct,
}

/// Where a VolumeBackup is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum VolumeBackupPhase {
    /// Accepted, nothing created yet.
    #[default]
    New,
    /// Pre rules ran, the VolumeSnapshot is being cut and waited for.
    SnapshotInProgress,
    /// The backupPVC is being provisioned from the snapshot.
    Exposing,
    /// The backup Job is reading the volume and writing to the repository.
    Uploading,
    /// The repository holds a complete snapshot (`status.snapshotId`).
    Completed,
    /// The backup ended without a snapshot; `status.failureReason` says why.
    Failed,
    /// `spec.cancel` stopped the backup.
    Canceled,
}

impl VolumeBackupPhase {
    /// Whether the phase is final: nothing more happens to the VolumeBackup.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

/// Bytes processed so far.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes read and processed.
    pub bytes_done: u64,
    /// Bytes to process in total, when known.
    pub total_bytes: u64,
}

/// Result of running one side (pre or post) of a BackupRule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookOutcome {
    /// Whether every command exited 0 in every matching pod.
    pub succeeded: bool,
    /// What ran where, and the first failure.
    #[serde(default)]
    pub message: String,
}

/// Which sides of the BackupRule have run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookResults {
    /// Pre commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<HookOutcome>,
    /// Post commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<HookOutcome>,
}

/// Observed state of a VolumeBackup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    /// Phase.
    #[serde(default)]
    pub phase: VolumeBackupPhase,
    /// Mode actually used (`Snapshot` or `Direct`), once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<BackupMode>,
    /// Progress reported by the backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Repository snapshot id, once Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes the backup added to the repository (after deduplication and compression),
    /// once Completed, when the Job reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Local VolumeSnapshot name (kept after completion when offload is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_name: Option<String>,
    /// The intermediate PVC created from the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_pvc_name: Option<String>,
    /// The current backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Backup Jobs created so far; each retry resumes from the repository's checkpoints.
    #[serde(default)]
    pub attempts: u32,
    /// BackupRule results.
    #[serde(default)]
    pub hooks: HookResults,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the phase became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why the backup Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// `ConfigValid`, `WaitingForJobSlot`, `Ready`, ...
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
