//! Velero's objects as cairn reads them: DataUpload and DataDownload (`velero.io/v2alpha1`),
//! BackupStorageLocation (`velero.io/v1`), the node agent's `backupPVC` configuration, and
//! the cairn repository a location stands for ([`repository`]).
//!
//! Invariant: only the fields cairn reads or writes are modelled. cairn never writes a
//! whole Velero object back: it merge-patches the status fields it changed, so Velero's
//! own fields, labels (`velero.io/async-operation-id`) and finalizers stay untouched.

pub mod repository;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `spec.datamover` value that hands an object to cairn.
pub const DATA_MOVER: &str = "cairn";
/// Label Velero puts on each DataUpload and DataDownload: the Backup (or Restore) name.
pub const LABEL_BACKUP_NAME: &str = "velero.io/backup-name";
/// Velero's default credentials Secret (in Velero's namespace) and its key.
pub const DEFAULT_CREDENTIALS: (&str, &str) = ("cloud-credentials", "cloud");
/// Velero's repository password Secret (in Velero's namespace) and its key.
pub const REPOSITORY_PASSWORD: (&str, &str) = ("velero-repo-credentials", "repository-password");

/// Phases shared by DataUpload and DataDownload.
pub mod phase {
    /// Not yet taken by a mover (also the empty phase).
    pub const NEW: &str = "New";
    /// Taken by a mover.
    pub const ACCEPTED: &str = "Accepted";
    /// The volume is exposed; the data path can start.
    pub const PREPARED: &str = "Prepared";
    /// Data is moving.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Ended: canceled through `spec.cancel`.
    pub const CANCELED: &str = "Canceled";
    /// Ended: done.
    pub const COMPLETED: &str = "Completed";
    /// Ended: failed, `status.message` says why.
    pub const FAILED: &str = "Failed";

    /// Whether `phase` is an end.
    pub fn is_terminal(phase: &str) -> bool {
        matches!(phase, CANCELED | COMPLETED | FAILED)
    }
}

/// A CSI snapshot Velero's CSI plugin took, for a mover to upload.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "velero.io",
    version = "v2alpha1",
    kind = "DataUpload",
    namespaced,
    status = "DataUploadStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadSpec {
    /// `CSI`.
    #[serde(default)]
    pub snapshot_type: String,
    /// The VolumeSnapshot (in `sourceNamespace`).
    #[serde(default)]
    pub csi_snapshot: Option<CsiSnapshotSpec>,
    /// The PVC the snapshot was taken of.
    #[serde(default, rename = "sourcePVC")]
    pub source_pvc: String,
    /// The mover: `cairn` for cairn.
    #[serde(default)]
    pub datamover: String,
    /// BackupStorageLocation name (in Velero's namespace).
    #[serde(default)]
    pub backup_storage_location: String,
    /// Namespace of the PVC and the VolumeSnapshot.
    #[serde(default)]
    pub source_namespace: String,
    /// Mover-specific settings.
    #[serde(default)]
    pub data_mover_config: BTreeMap<String, String>,
    /// Set by Velero to stop the upload.
    #[serde(default)]
    pub cancel: bool,
    /// How long Velero waits, as a Go duration (`10m0s`).
    #[serde(default)]
    pub operation_timeout: Option<String>,
}

/// The VolumeSnapshot of a DataUpload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CsiSnapshotSpec {
    /// VolumeSnapshot name.
    #[serde(default)]
    pub volume_snapshot: String,
    /// Storage class of the source PVC.
    #[serde(default)]
    pub storage_class: String,
    /// VolumeSnapshotClass used.
    #[serde(default)]
    pub snapshot_class: String,
    /// CSI driver.
    #[serde(default)]
    pub driver: Option<String>,
}

/// Bytes moved, as Velero shows them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes to move.
    #[serde(default)]
    pub total_bytes: i64,
    /// Bytes moved.
    #[serde(default)]
    pub bytes_done: i64,
}

/// The DataUpload status fields cairn writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataUploadStatus {
    /// See [`phase`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Where the data was read (the backupPVC's mount in the job pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The cairn snapshot id.
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// What went wrong, or a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When cairn accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Bytes moved; the job patches it while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Bytes this upload added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_bytes: Option<i64>,
    /// When it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_timestamp: Option<Time>,
}

/// A restore of one snapshot into a PVC Velero creates.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "velero.io",
    version = "v2alpha1",
    kind = "DataDownload",
    namespaced,
    status = "DataDownloadStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadSpec {
    /// The PVC to fill.
    #[serde(default)]
    pub target_volume: TargetVolume,
    /// BackupStorageLocation name (in Velero's namespace).
    #[serde(default)]
    pub backup_storage_location: String,
    /// The mover: `cairn` for cairn.
    #[serde(default)]
    pub datamover: String,
    /// The snapshot to restore (a cairn snapshot id).
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: String,
    /// Namespace the data was backed up from: selects the repository.
    #[serde(default)]
    pub source_namespace: String,
    /// Mover-specific settings.
    #[serde(default)]
    pub data_mover_config: BTreeMap<String, String>,
    /// Set by Velero to stop the restore.
    #[serde(default)]
    pub cancel: bool,
    /// How long Velero waits.
    #[serde(default)]
    pub operation_timeout: Option<String>,
}

/// The PVC a DataDownload fills.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetVolume {
    /// PVC name.
    #[serde(default)]
    pub pvc: String,
    /// PV name (unused by cairn).
    #[serde(default)]
    pub pv: String,
    /// PVC namespace.
    #[serde(default)]
    pub namespace: String,
}

/// The DataDownload status fields cairn writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataDownloadStatus {
    /// See [`phase`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What went wrong, or a summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When cairn accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Bytes moved; the job patches it while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// When it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_timestamp: Option<Time>,
}

/// Where Velero keeps backups: an object store bucket and its credentials.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "velero.io",
    version = "v1",
    kind = "BackupStorageLocation",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorageLocationSpec {
    /// Object store plugin: `aws` (also any S3-compatible store, `velero.io/aws`), ...
    #[serde(default)]
    pub provider: String,
    /// Bucket and prefix.
    #[serde(default)]
    pub object_storage: Option<ObjectStorage>,
    /// Provider settings (`region`, `s3Url`, `s3ForcePathStyle`, `insecureSkipTLSVerify`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secret key holding an AWS-style credentials file (in Velero's namespace).
    #[serde(default)]
    pub credential: Option<SecretKeySelector>,
}

/// Bucket and prefix of a location.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorage {
    /// Bucket.
    #[serde(default)]
    pub bucket: String,
    /// Prefix inside the bucket.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// One key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct SecretKeySelector {
    /// Secret name.
    #[serde(default)]
    pub name: String,
    /// Key.
    #[serde(default)]
    pub key: String,
}

/// The `backupPVC` settings for one source storage class in the node agent's ConfigMap.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupPvc {
    /// Storage class of the backupPVC; the source's when absent or empty.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// `true`: the backupPVC is ReadOnlyMany.
    #[serde(default)]
    pub read_only: bool,
}

/// The `backupPVC` section of the node agent ConfigMap. Velero reads the ConfigMap's one
/// data entry (whatever its key) as JSON; other sections are ignored here.
pub fn parse_node_agent_config(
    data: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BackupPvc>, String> {
    #[derive(Deserialize)]
    struct NodeAgentConfig {
        #[serde(default, rename = "backupPVC")]
        backup_pvc: BTreeMap<String, BackupPvc>,
    }
    let Some(text) = data.values().next() else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_str::<NodeAgentConfig>(text)
        .map(|c| c.backup_pvc)
        .map_err(|e| format!("the node agent ConfigMap is not valid JSON for Velero's node agent configuration ({e})"))
}

/// The DataUpload or DataDownload API resource.
pub fn resource(kind: &str) -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "velero.io",
        "v2alpha1",
        kind,
    ))
}

/// Where a job mode run reports progress when it works for a Velero object: the
/// DataUpload (backup) or DataDownload (restore) in `--velero-namespace`.
pub(crate) fn progress_api(
    params: &crate::job::JobParams,
    client: kube::Client,
) -> Option<(kube::Api<kube::api::DynamicObject>, String)> {
    let ns = params.velero_namespace.as_deref()?;
    let (kind, name) = match params.command {
        crate::job::JobCommand::Backup => ("DataUpload", params.data_upload.clone()?),
        crate::job::JobCommand::Restore => ("DataDownload", params.data_download.clone()?),
        _ => return None,
    };
    Some((
        kube::Api::namespaced_with(client, ns, &resource(kind)),
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_pvc_section_is_read_from_the_one_data_entry() {
        let data = [(
            "node-agent-config.json".to_string(),
            r#"{"loadConcurrency": {"globalConfig": 2},
                "backupPVC": {"sc-1": {"storageClass": "ro-class", "readOnly": true, "spcNoRelabeling": true},
                              "sc-2": {"readOnly": true}}}"#
                .to_string(),
        )]
        .into();
        let cfg = parse_node_agent_config(&data).unwrap();
        assert_eq!(cfg["sc-1"].storage_class.as_deref(), Some("ro-class"));
        assert!(cfg["sc-1"].read_only && cfg["sc-2"].read_only);
        assert_eq!(cfg["sc-2"].storage_class, None);
        assert!(parse_node_agent_config(&BTreeMap::new())
            .unwrap()
            .is_empty());
        let bad = [("x".to_string(), "{".to_string())].into();
        assert!(parse_node_agent_config(&bad)
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn a_data_upload_as_velero_writes_it_parses() {
        let du: DataUpload = serde_json::from_value(serde_json::json!({
            "apiVersion": "velero.io/v2alpha1", "kind": "DataUpload",
            "metadata": {"name": "b1-x7k2p", "namespace": "velero"},
            "spec": {"snapshotType": "CSI", "csiSnapshot": {"volumeSnapshot": "velero-data-abc",
                     "storageClass": "fast", "snapshotClass": "fast-snap"},
                     "sourcePVC": "data", "datamover": "cairn", "backupStorageLocation": "default",
                     "sourceNamespace": "shop", "operationTimeout": "10m0s"},
            "status": {"phase": "InProgress", "progress": {"totalBytes": 10, "bytesDone": 4},
                       "node": "node-1", "snapshotID": ""}
        }))
        .unwrap();
        assert_eq!(du.spec.source_pvc, "data");
        assert_eq!(du.status.unwrap().progress.unwrap().bytes_done, 4);
    }
}
