//! Application backups: `ApplicationBackup` (namespaces or chosen pods, their volumes and
//! their Kubernetes configuration in one backup), `ApplicationRestore` (bring one back, in
//! this cluster or another) and `BackupSchedule` (run either kind of backup on a schedule,
//! with retention).

use super::{BackupMode, Condition, HookOutcome, VolumeBackupSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Back up whole namespaces, or the pods of one application, with their volumes and their
/// configuration, into one repository.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "ApplicationBackup",
    namespaced,
    status = "ApplicationBackupStatus",
    shortname = "abk",
    category = "cairn",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Volumes Done",
        type_ = "integer",
        json_path = ".status.volumesDone"
    ),
    printcolumn(
        name = "Volumes",
        type_ = "integer",
        json_path = ".status.volumesTotal"
    ),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.totalBytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupSpec {
    /// Namespaces to back up by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    /// Namespaces to back up by label; added to `includedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces never backed up, even when named or selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    /// Only the pods this selects: their PVCs, and the resources of their workloads
    /// (owners, the ConfigMaps, Secrets, ServiceAccounts and PVCs they use, the Services
    /// selecting them). Absent: every PVC and resource of the namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Resource kinds to capture, as `plural.group` (`deployments.apps`) or `plural` for
    /// the core group (`secrets`). Empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    /// Resource kinds never captured, in the same syntax.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// Capture only resources with these labels (PVCs are chosen by it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// BackupRepository in this namespace to write to.
    pub repository: String,
    /// BackupRules whose pre commands all run, in every matching pod, before any volume
    /// is snapshotted, and whose post commands run after the last snapshot is cut.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<ApplicationRuleRef>,
    /// VolumeSnapshotClass per CSI driver. A driver not named uses the class marked
    /// default for it; a driver with no class at all is backed up directly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_snapshot_classes: BTreeMap<String, String>,
    /// How volumes are read (as on a VolumeBackup).
    #[serde(default)]
    pub mode: BackupMode,
    /// Keep the VolumeSnapshots after the upload (the local copy of a 3-2-1 strategy).
    #[serde(default = "default_true")]
    pub offload: bool,
    /// Tags recorded on every repository snapshot of this backup.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Set to true to stop the backup.
    #[serde(default)]
    pub cancel: bool,
}

fn default_true() -> bool {
    true
}

/// A BackupRule run across the application's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRuleRef {
    /// BackupRule name.
    pub name: String,
    /// Namespace of the BackupRule and of the pods it runs in; the ApplicationBackup's own
    /// namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Replaces the rule's own pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Where an ApplicationBackup is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ApplicationBackupPhase {
    /// Accepted, nothing done yet.
    #[default]
    New,
    /// Pre commands are running in the application's pods.
    RunningPreRules,
    /// VolumeSnapshots are being cut.
    Snapshotting,
    /// Post commands are running.
    RunningPostRules,
    /// Volumes are uploading and the configuration is being captured.
    Uploading,
    /// Every volume and the configuration are in the repository.
    Completed,
    /// The configuration and some volumes are in the repository; `volumes` says which
    /// failed.
    PartiallyFailed,
    /// Nothing restorable was stored; `failureReason` says why.
    Failed,
    /// `spec.cancel` stopped the backup.
    Canceled,
}

impl ApplicationBackupPhase {
    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PartiallyFailed | Self::Failed | Self::Canceled
        )
    }
}

/// One volume of an ApplicationBackup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationVolume {
    /// Namespace of the PVC.
    pub namespace: String,
    /// PVC name.
    pub persistent_volume_claim: String,
    /// CSI driver of its volume, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// VolumeSnapshotClass used; absent for a direct backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    /// The VolumeSnapshot cut for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_name: Option<String>,
    /// The child VolumeBackup (in the PVC's namespace) that uploads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_backup: Option<String>,
    /// Phase of the child VolumeBackup (`Completed`, `Failed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Repository snapshot id, once uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Bytes processed.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes in the volume, when known.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes its backup added to the repository, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Why this volume failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// Results of one side of the rules across all pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupHookResults {
    /// Pre commands, one entry per pod (`namespace/pod`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pre: BTreeMap<String, HookOutcome>,
    /// Post commands, one entry per pod where pre commands ran.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub post: BTreeMap<String, HookOutcome>,
}

/// Observed state of an ApplicationBackup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupStatus {
    /// Phase.
    #[serde(default)]
    pub phase: ApplicationBackupPhase,
    /// Namespaces the backup resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// One entry per volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ApplicationVolume>,
    /// Volumes in the repository.
    #[serde(default)]
    pub volumes_done: u32,
    /// Volumes in the backup.
    #[serde(default)]
    pub volumes_total: u32,
    /// Bytes processed over all volumes.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes over all volumes, when known.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes the volumes' backups added to the repository (those that reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Rule outcomes per pod.
    #[serde(default)]
    pub hooks: GroupHookResults,
    /// Seconds between the first and the last VolumeSnapshot of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_spread_seconds: Option<f64>,
    /// The repository snapshot holding the captured configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_snapshot_id: Option<String>,
    /// Resources captured into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_count: Option<u32>,
    /// The capture Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Capture Jobs created so far.
    #[serde(default)]
    pub attempts: u32,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the phase became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why the backup failed (or partially failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Restore an application backup: its configuration and its volumes, into this cluster or
/// another one that has the repository.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "ApplicationRestore",
    namespaced,
    status = "ApplicationRestoreStatus",
    shortname = "ares",
    category = "cairn",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Created", type_ = "integer", json_path = ".status.created"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreSpec {
    /// What to restore.
    pub source: ApplicationRestoreSource,
    /// Old namespace name to new one. Unmapped namespaces keep their name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Old StorageClass name to new one, for restored PVCs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_mapping: BTreeMap<String, String>,
    /// Kinds to restore (`deployments.apps`, `secrets`). Empty: every captured kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    /// Kinds never restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// What to do with a resource that exists already.
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// Set to true to stop the restore.
    #[serde(default)]
    pub cancel: bool,
}

/// An application backup by object (same cluster) or by repository and snapshot id
/// (another cluster). Exactly one of `applicationBackup` and `snapshotId` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreSource {
    /// A Completed or PartiallyFailed ApplicationBackup in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_backup: Option<String>,
    /// The resource snapshot's id (or unique prefix) in `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// BackupRepository in this namespace; required with `snapshotId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
}

/// What a restore does with a resource that exists already.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum ExistingResourcePolicy {
    /// Leave it as it is and report it as skipped.
    #[default]
    Skip,
    /// Replace its spec and data with the backed-up ones.
    Update,
}

/// Where an ApplicationRestore is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ApplicationRestorePhase {
    /// Accepted, nothing done yet.
    #[default]
    New,
    /// Namespaces, ServiceAccounts, ConfigMaps and Secrets are being created, and the PVCs
    /// with their VolumeRestores.
    RestoringConfiguration,
    /// The PVCs are being filled.
    RestoringVolumes,
    /// Everything else, workloads last, is being created.
    RestoringWorkloads,
    /// Every resource was created (or skipped by policy).
    Completed,
    /// Some resources or volumes were not restored; `status.failures` says which.
    PartiallyFailed,
    /// Nothing was restored; `failureReason` says why.
    Failed,
    /// `spec.cancel` stopped the restore.
    Canceled,
}

impl ApplicationRestorePhase {
    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PartiallyFailed | Self::Failed | Self::Canceled
        )
    }
}

/// A resource the restore did not create.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceOutcome {
    /// `group/kind` (`apps/Deployment`, `core/Secret`).
    pub kind: String,
    /// Namespace it was restored into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `Skipped` or `Failed`.
    pub outcome: String,
    /// Why.
    pub message: String,
}

/// One PVC an ApplicationRestore creates and fills through a child VolumeRestore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolume {
    /// Namespace restored into (after `namespaceMapping`).
    pub namespace: String,
    /// PVC name.
    pub persistent_volume_claim: String,
    /// Repository snapshot holding its data.
    pub snapshot_id: String,
    /// StorageClass to create it with (after `storageClassMapping`); the cluster default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requested size (`10Gi`), from the captured PVC.
    pub size: String,
    /// Access modes, from the captured PVC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Volume mode, from the captured PVC: a Block PVC is created Block and restored
    /// onto as a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<super::VolumeMode>,
    /// The child VolumeRestore, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_restore: Option<String>,
    /// Phase of the child VolumeRestore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why this volume was not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

/// Observed state of an ApplicationRestore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreStatus {
    /// Phase.
    #[serde(default)]
    pub phase: ApplicationRestorePhase,
    /// Resolved repository and resource snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Resolved resource snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Resources created.
    #[serde(default)]
    pub created: u32,
    /// Resources updated (policy `update`).
    #[serde(default)]
    pub updated: u32,
    /// Resources that existed and were left alone.
    #[serde(default)]
    pub skipped: u32,
    /// Resources that could not be created.
    #[serde(default)]
    pub failed: u32,
    /// Every resource not created, and why (at most 100 entries; the counts are exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ResourceOutcome>,
    /// The volumes to fill, found by the configuration stage among the captured PVCs
    /// (each names the repository snapshot holding its data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<RestoreVolume>,
    /// The current resource Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Resource Jobs created so far.
    #[serde(default)]
    pub attempts: u32,
    /// Resource Jobs created so far for the current stage (configuration or workloads);
    /// a stage fails once this reaches the controller's attempt limit.
    #[serde(default)]
    pub stage_attempts: u32,
    /// When work started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the phase became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why the restore failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Run an ApplicationBackup or a VolumeBackup on a schedule and keep a bounded history.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    status = "BackupScheduleStatus",
    shortname = "bsched",
    category = "cairn",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Every", type_ = "string", json_path = ".spec.every"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime"
    ),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// A standard 5-field cron expression (`0 2 * * *`). Exactly one of `schedule` and
    /// `every` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone the cron expression is read in (`Europe/Paris`); UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A fixed interval (`6h`, `30m`) instead of a cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// What each run creates.
    pub template: ScheduleTemplate,
    /// How many runs (snapshots and backup objects) to keep.
    #[serde(default)]
    pub retention: ScheduleRetention,
    /// Set to true to stop creating runs; nothing is caught up when it is set back.
    #[serde(default)]
    pub suspend: bool,
}

/// The backup a schedule creates. Exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleTemplate {
    /// Create an ApplicationBackup with this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_backup: Option<ApplicationBackupSpec>,
    /// Create a VolumeBackup with this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_backup: Option<VolumeBackupSpec>,
}

/// Keep rules, as `cairn forget` reads them; all zero keeps everything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRetention {
    /// Keep the last N runs.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the last run of each of the last N hours.
    #[serde(default)]
    pub keep_hourly: u32,
    /// Keep the last run of each of the last N days.
    #[serde(default)]
    pub keep_daily: u32,
    /// Keep the last run of each of the last N weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Keep the last run of each of the last N months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Keep the last run of each of the last N years.
    #[serde(default)]
    pub keep_yearly: u32,
}

/// Observed state of a BackupSchedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// When the last run was due (and created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the next run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When the last run that completed successfully finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The last run that completed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    /// The run in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// Runs created.
    #[serde(default)]
    pub runs: u32,
    /// Runs that completed.
    #[serde(default)]
    pub succeeded: u32,
    /// Runs that failed or partially failed.
    #[serde(default)]
    pub failed: u32,
    /// Runs skipped because the previous one was still going.
    #[serde(default)]
    pub skipped: u32,
    /// Backup objects deleted by retention.
    #[serde(default)]
    pub pruned: u32,
    /// Finished runs already counted in `succeeded` or `failed`, so that a restarted
    /// controller does not count them again; a run leaves the list when it is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_runs: Vec<String>,
    /// Runs deleted by retention (already counted in `pruned`) that still exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned_runs: Vec<String>,
    /// Due times up to this instant are dropped: set when the schedule resumes from
    /// `suspend` and when a run is skipped, so nothing missed is caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// When the controller first saw `suspend: true`; cleared on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<Time>,
    /// The running Job forgetting the repository snapshots retention does not keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_job: Option<String>,
    /// A run succeeded since the last forget Job was created: one is owed.
    #[serde(default)]
    pub forget_pending: bool,
    /// Conditions (`ConfigValid`, `RetentionApplied`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
