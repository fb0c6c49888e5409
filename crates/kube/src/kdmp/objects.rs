//! KDMP's own objects as its executor reads and writes them (group `kdmp.portworx.com`,
//! version `v1alpha1`, JSON names from KDMP's Go types): the VolumeBackup a backup creates
//! and reports into, the VolumeBackupDelete a delete fails into, the
//! BackupLocationMaintenance a maintenance run records each repository in.
//!
//! None of these CRDs has a status subresource: every write replaces the whole object,
//! read just before, and is retried when another writer got in between (409).

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::Api;
use serde::Serialize;
use serde_json::{json, Value};

/// KDMP's API group.
pub const GROUP: &str = "kdmp.portworx.com";
/// KDMP's API version.
pub const VERSION: &str = "v1alpha1";

/// Annotation KDMP puts on the objects of its jobs so Stork leaves them out of application
/// backups.
pub const SKIP_RESOURCE_ANNOTATION: &str = "stork.libopenstorage.org/skip-resource";

/// KDMP keeps at most this many characters of an error in `lastKnownError`.
pub const LAST_KNOWN_ERROR_MAX: usize = 1000;

/// Attempts at a read-modify-replace before giving up on conflicts.
const REPLACE_ATTEMPTS: usize = 8;

/// One of KDMP's kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdmpKind {
    /// `VolumeBackup`.
    VolumeBackup,
    /// `VolumeBackupDelete`.
    VolumeBackupDelete,
    /// `BackupLocationMaintenance`.
    BackupLocationMaintenance,
}

impl KdmpKind {
    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            KdmpKind::VolumeBackup => "VolumeBackup",
            KdmpKind::VolumeBackupDelete => "VolumeBackupDelete",
            KdmpKind::BackupLocationMaintenance => "BackupLocationMaintenance",
        }
    }

    /// Its API resource (the plural is the lower-cased kind plus `s`, as KDMP registers it).
    pub fn resource(self) -> ApiResource {
        let kind = self.kind();
        ApiResource {
            group: GROUP.into(),
            version: VERSION.into(),
            api_version: format!("{GROUP}/{VERSION}"),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        }
    }

    /// The objects of this kind in `namespace`.
    pub fn api(self, client: kube::Client, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client, namespace, &self.resource())
    }
}

/// A KDMP object that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The API server refused or failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error (boxed: it is large, and errors travel through every return).
        source: Box<kube::Error>,
    },
    /// The object exists in a state this run must not touch.
    #[error("{0}")]
    Conflict(String),
}

impl ObjectError {
    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ObjectError::Api { source, .. } if matches!(&**source, kube::Error::Api(s) if s.code == 404))
    }
}

fn api_error(
    action: &'static str,
    kind: KdmpKind,
    api: &Api<DynamicObject>,
    name: &str,
    source: kube::Error,
) -> ObjectError {
    ObjectError::Api {
        action,
        kind: kind.kind(),
        namespace: api.namespace().unwrap_or_default().to_string(),
        name: name.to_string(),
        source: Box::new(source),
    }
}

/// The status KDMP reads from a VolumeBackup (`VolumeBackupStatus`); empty fields are left
/// out, as Go's `omitempty` does.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VolumeBackupStatus {
    /// Percent done, 0 to 100; KDMP counts a backup done only at 100.
    #[serde(rename = "progressPercentage", skip_serializing_if = "is_zero_f64")]
    pub progress_percentage: f64,
    /// Bytes in the source.
    #[serde(rename = "totalBytes", skip_serializing_if = "is_zero")]
    pub total_bytes: u64,
    /// Bytes processed so far.
    #[serde(rename = "totalBytesProcessed", skip_serializing_if = "is_zero")]
    pub total_bytes_processed: u64,
    /// The snapshot made.
    #[serde(rename = "snapshotID", skip_serializing_if = "String::is_empty")]
    pub snapshot_id: String,
    /// Why the operation failed.
    #[serde(rename = "lastKnownError", skip_serializing_if = "String::is_empty")]
    pub last_known_error: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// `error` as KDMP keeps it in `lastKnownError`: whole when it fits in
/// [`LAST_KNOWN_ERROR_MAX`] characters, else cut there with a pointer to the job log
/// (where the executor logs it whole).
pub fn last_known_error(error: &str) -> String {
    if error.chars().count() <= LAST_KNOWN_ERROR_MAX {
        return error.to_string();
    }
    const TAIL: &str = "... (cut; the job pod's log has the whole error)";
    let keep = LAST_KNOWN_ERROR_MAX - TAIL.len();
    let mut cut: String = error.chars().take(keep).collect();
    cut.push_str(TAIL);
    cut
}

/// Progress as KDMP shows it: percent of `total` done, below 100 until the operation ends
/// (KDMP takes 100 to mean done).
pub fn progress_percentage(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let percent = (done as f64 * 100.0 / total as f64).min(99.0);
    (percent * 100.0).floor() / 100.0
}

/// The VolumeBackup a backup creates before any long work.
pub fn volume_backup(
    name: &str,
    namespace: &str,
    repository: &str,
    location: &str,
    location_namespace: &str,
) -> DynamicObject {
    let mut object = DynamicObject::new(name, &KdmpKind::VolumeBackup.resource()).within(namespace);
    object.metadata.annotations = Some(
        [(SKIP_RESOURCE_ANNOTATION.to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    );
    object.data = json!({
        "spec": volume_backup_spec(repository, location, location_namespace),
    });
    object
}

fn volume_backup_spec(repository: &str, location: &str, location_namespace: &str) -> Value {
    json!({
        "repository": repository,
        "backupLocation": { "name": location, "namespace": location_namespace },
    })
}

/// Creates the VolumeBackup as KDMP's executor does: an existing one is reused when its
/// spec is the same and it records no snapshot yet; otherwise this run must not go on.
pub async fn create_volume_backup(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
) -> Result<(), ObjectError> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let kind = KdmpKind::VolumeBackup;
    match api.get_opt(&name).await {
        Err(e) => Err(api_error("reading", kind, api, &name, e)),
        Ok(None) => match api.create(&PostParams::default(), object).await {
            Ok(_) => Ok(()),
            // Created meanwhile (a retried pod): check it as an existing one.
            Err(kube::Error::Api(s)) if s.code == 409 => check_existing(api, object, &name).await,
            Err(e) => Err(api_error("creating", kind, api, &name, e)),
        },
        Ok(Some(_)) => check_existing(api, object, &name).await,
    }
}

async fn check_existing(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    name: &str,
) -> Result<(), ObjectError> {
    let kind = KdmpKind::VolumeBackup;
    let existing = api
        .get(name)
        .await
        .map_err(|e| api_error("reading", kind, api, name, e))?;
    let ns = api.namespace().unwrap_or_default();
    if existing.data["spec"] != object.data["spec"] {
        return Err(ObjectError::Conflict(format!(
            "VolumeBackup {ns}/{name} already exists with a different spec (repository or \
             backup location); delete it or use another name"
        )));
    }
    if existing.data["status"]["snapshotID"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ObjectError::Conflict(format!(
            "VolumeBackup {ns}/{name} already records a snapshot: this backup is done; \
             start a new one under a new name"
        )));
    }
    Ok(())
}

/// Reads object `name`, lets `change` edit it (its JSON body without metadata), and
/// replaces it, again from a fresh read when another writer changed it meanwhile.
pub async fn update(
    kind: KdmpKind,
    api: &Api<DynamicObject>,
    name: &str,
    change: impl Fn(&mut Value),
) -> Result<(), ObjectError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut object = api
            .get(name)
            .await
            .map_err(|e| api_error("reading", kind, api, name, e))?;
        change(&mut object.data);
        match api.replace(name, &PostParams::default(), &object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < REPLACE_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt as u64)).await;
            }
            Err(e) => return Err(api_error("updating", kind, api, name, e)),
        }
    }
}

/// Writes `status` as the VolumeBackup's whole status.
pub async fn write_volume_backup_status(
    api: &Api<DynamicObject>,
    name: &str,
    status: &VolumeBackupStatus,
) -> Result<(), ObjectError> {
    let status = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    update(KdmpKind::VolumeBackup, api, name, |data| {
        data["status"] = status.clone();
    })
    .await
}

/// Records a failed delete in the VolumeBackupDelete: `status: Failed` and the reason.
pub async fn write_delete_failed(
    api: &Api<DynamicObject>,
    name: &str,
    reason: &str,
) -> Result<(), ObjectError> {
    update(KdmpKind::VolumeBackupDelete, api, name, |data| {
        data["status"] = json!({ "status": "Failed", "reason": reason });
    })
    .await
}

/// Field of a BackupLocationMaintenance status holding the runs of `kind` (KDMP's Go field
/// names, which carry no JSON tags).
pub fn maintenance_status_field(kind: crate::crd::MaintenanceKind) -> &'static str {
    match kind {
        crate::crd::MaintenanceKind::Full => "FullMaintenanceRepoStatus",
        crate::crd::MaintenanceKind::Quick => "QuickMaintenanceRepoStatus",
    }
}

/// Records one repository's maintenance run (`repository` is its key, `generic-backup/<dir>/`):
/// `Successful` with an empty reason, or `Failed` with it.
pub async fn write_maintenance_run(
    api: &Api<DynamicObject>,
    name: &str,
    kind: crate::crd::MaintenanceKind,
    repository: &str,
    result: Result<(), String>,
    at: jiff::Timestamp,
) -> Result<(), ObjectError> {
    let (status, reason) = match result {
        Ok(()) => ("Successful", String::new()),
        Err(reason) => ("Failed", reason),
    };
    let entry = json!({
        "lastRunTimestamp": at.round(jiff::Unit::Second).unwrap_or(at).to_string(),
        "status": status,
        "reason": reason,
    });
    let field = maintenance_status_field(kind);
    update(KdmpKind::BackupLocationMaintenance, api, name, |data| {
        if !data["status"].is_object() {
            data["status"] = json!({});
        }
        if !data["status"][field].is_object() {
            data["status"][field] = json!({});
        }
        data["status"][field][repository] = entry.clone();
    })
    .await
}
