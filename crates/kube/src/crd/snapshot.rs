//! `RepositorySnapshot`: a read-only mirror of one snapshot in a repository, so
//! `kubectl get repositorysnapshots` lists what a repository holds.

use super::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One snapshot of a repository. Written by catalog and backup Jobs, never by users:
/// edits are overwritten at the next refresh.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "RepositorySnapshot",
    namespaced,
    status = "RepositorySnapshotStatus",
    shortname = "rsnap",
    category = "cairn",
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(
        name = "Source PVC",
        type_ = "string",
        json_path = ".spec.source.persistentVolumeClaim"
    ),
    printcolumn(name = "Time", type_ = "date", json_path = ".spec.time"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".spec.sizeBytes"),
    printcolumn(name = "Tags", type_ = "string", json_path = ".spec.tags"),
    printcolumn(
        name = "Id",
        type_ = "string",
        json_path = ".spec.snapshotId",
        priority = "1"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySnapshotSpec {
    /// BackupRepository (same namespace) holding the snapshot.
    pub repository: String,
    /// Full snapshot id.
    pub snapshot_id: String,
    /// What was backed up.
    pub source: SnapshotSource,
    /// When the snapshot was taken.
    pub time: Time,
    /// Logical size of the snapshot's files, in bytes.
    pub size_bytes: u64,
    /// Tags of the snapshot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// The origin of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// Namespace of the PVC, for snapshots made by a VolumeBackup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PVC name, for snapshots made by a VolumeBackup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    /// The source string recorded in the snapshot (host:path for laptop backups).
    pub path: String,
}

/// Observed state of a RepositorySnapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySnapshotStatus {
    /// When a refresh last saw this snapshot in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
