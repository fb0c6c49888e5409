//! `BackupRepository`: where backups go, the Secrets that open it, and its maintenance schedule.

use super::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cairn repository that VolumeBackups write to.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "BackupRepository",
    namespaced,
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    category = "cairn",
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Last Quick",
        type_ = "date",
        json_path = ".status.maintenance.lastQuick.completionTime"
    ),
    printcolumn(
        name = "Last Full",
        type_ = "date",
        json_path = ".status.maintenance.lastFull.completionTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// Repository URL: `s3://bucket/prefix`, `azblob://container/prefix`, `gcs://bucket/prefix`,
    /// `webdav://host/path` or `file:///path`.
    pub location: String,
    /// Secret whose keys are the storage credentials (for S3: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, optional `AWS_REGION` and `AWS_ENDPOINT_URL`). Every key is
    /// mounted as a file in the job pods. Absent for storage that needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretRef>,
    /// Secret key holding the repository password.
    pub password_secret: SecretKeyRef,
    /// When quick and full maintenance run.
    #[serde(default)]
    pub maintenance: MaintenanceSchedule,
    /// How often the RepositorySnapshot mirror is refreshed, as a duration (`15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_refresh_interval: Option<String>,
    /// Other namespaces whose VolumeBackups and VolumeRestores may use this repository
    /// (through `repositoryNamespace`), or `"*"` for all. Empty: only this namespace. The
    /// controller copies the repository's Secrets into those namespaces for their Jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

/// A Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
}

/// One key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Maintenance intervals. Quick maintenance compacts indexes and runs the sweep phase of
/// garbage collection; full maintenance also marks unreferenced packs and rewrites sparse ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceSchedule {
    /// Interval between quick maintenance runs, as a duration (`1h`). Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick_interval: Option<String>,
    /// Interval between full maintenance runs, as a duration (`24h`). Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_interval: Option<String>,
    /// Stops scheduling maintenance; running Jobs finish.
    #[serde(default)]
    pub suspend: bool,
}

/// Which maintenance a Job runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaintenanceKind {
    /// Index compaction and the sweep phase of garbage collection.
    Quick,
    /// Everything quick does plus the mark phase and pack rewriting.
    Full,
}

impl MaintenanceKind {
    /// Lower-case name used in Job names, labels and job-mode arguments.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceKind::Quick => "quick",
            MaintenanceKind::Full => "full",
        }
    }
}

/// Observed state of a BackupRepository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// `Ready`, `ConfigValid`, ...
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Last maintenance runs.
    #[serde(default)]
    pub maintenance: MaintenanceStatus,
    /// When the RepositorySnapshot mirror was last refreshed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_catalog_refresh: Option<Time>,
    /// Name of the catalog Job running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_job: Option<String>,
}

/// The last run of each maintenance kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    /// Last quick maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_quick: Option<MaintenanceRun>,
    /// Last full maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full: Option<MaintenanceRun>,
}

/// One maintenance Job and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceRun {
    /// Job name.
    pub job_name: String,
    /// When the Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the Job ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Running`, `Succeeded` or `Failed`.
    pub result: String,
    /// The job's summary (termination message) or failure reason.
    #[serde(default)]
    pub message: String,
    /// Bytes of packs the run deleted (a succeeded run whose Job reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_reclaimed: Option<u64>,
    /// Bytes of the packs the repository's index lists after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_bytes: Option<u64>,
    /// Distinct blobs the repository's index lists after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_count: Option<u64>,
    /// Damage records (missing packs, blobs that did not open, as checks and reads
    /// record them) still naming indexed packs after the run; more than 0 means damage
    /// that `cairn check` and `cairn repair` should look at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage_records: Option<u64>,
}
