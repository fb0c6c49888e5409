//! Decisions for Velero's DataUploads and DataDownloads whose `spec.datamover` is `cairn`:
//! expose the snapshot as a backupPVC in cairn's namespace, run a cairn Job, report in
//! Velero's terms; restore into a fresh volume and hand its PV to the target PVC.
//!
//! Invariants: objects of any other mover are never touched. cairn never sets
//! `status.node` (Velero's node agent resumes an InProgress DataUpload only when that
//! names its own node) and never adds Velero's mover finalizer. Intermediate objects are
//! named after the Velero object, so a repeated reconcile finds what the previous one made;
//! a terminal object leaves none of them behind.

use super::backup::failure_reason;
use super::objects::{self, DataVolume, JobKind, JobSpec};
use super::{judged, running_poll, time, Action, DecideContext, JobInfo, SnapshotInfo, POLL};
use crate::crd::{BackupRepository, BackupRepositorySpec, SecretKeyRef, SecretRef};
use crate::protocol::{JobOutcome, DATA_DIR};
use crate::velero::repository::{repository_for, VeleroRepository};
use crate::velero::{
    phase, BackupPvc, BackupStorageLocation, DataDownload, DataDownloadStatus, DataUpload,
    DataUploadStatus, Progress, DATA_MOVER, LABEL_BACKUP_NAME,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Label on cairn's Jobs, PVCs and VolumeSnapshots for a Velero object: its kind
/// (`DataUpload`, `DataDownload`); [`objects::LABEL_OWNER`] holds its name.
pub const LABEL_VELERO: &str = "cairn.io/velero";
/// Label on a restored PV naming the DataDownload that hands it over.
pub const LABEL_DOWNLOAD: &str = "cairn.io/velero-data-download";
/// Annotation on a restored PV keeping its reclaim policy while it is Retain for the handover.
pub const ANNOTATION_RECLAIM: &str = "cairn.io/original-reclaim-policy";
/// Snapshot tag naming the DataUpload a snapshot was made for.
pub const TAG_DATA_UPLOAD: &str = "velero.io/data-upload";
/// cairn's finalizer on a Completed DataUpload: when Velero's Backup (its owner) is
/// deleted, the DataUpload's snapshot is forgotten before the object goes.
pub const FINALIZER_FORGET: &str = "cairn.io/forget-snapshot";

/// Where Velero and cairn live, and which Secret holds the repository password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VeleroContext {
    /// Velero's namespace: DataUploads, DataDownloads, BackupStorageLocations, Secrets.
    pub velero_namespace: String,
    /// cairn's namespace: backupPVCs, restore PVCs, Jobs and their Secrets.
    pub cairn_namespace: String,
    /// A Secret in cairn's namespace whose key `repository-password` is the password;
    /// None: Velero's `velero-repo-credentials`.
    pub password_secret: Option<String>,
}

/// A VolumeSnapshotContent as the decisions see it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotContentInfo {
    /// Name.
    pub name: String,
    /// `status.snapshotHandle`: the storage system's snapshot.
    pub snapshot_handle: Option<String>,
    /// CSI driver.
    pub driver: String,
    /// `spec.volumeSnapshotClassName`.
    pub class: Option<String>,
    /// `spec.deletionPolicy`.
    pub deletion_policy: String,
}

/// What the adapter does for Velero objects besides the generic [`Action`]s.
#[derive(Clone, Debug, PartialEq)]
pub enum VeleroAction {
    /// A generic action, executed in cairn's namespace.
    Kube(Action),
    /// Merge-patch the changed fields of the DataUpload's status.
    PatchUploadStatus(Box<DataUploadStatus>),
    /// Merge-patch the changed fields of the DataDownload's status.
    PatchDownloadStatus(Box<DataDownloadStatus>),
    /// Create a VolumeSnapshotContent (whole object).
    CreateSnapshotContent(Value),
    /// Set a VolumeSnapshotContent's `deletionPolicy` to Retain.
    RetainSnapshotContent(String),
    /// Delete a VolumeSnapshotContent.
    DeleteSnapshotContent(String),
    /// Write the repository Secrets in cairn's namespace from Velero's.
    SyncSecrets(Box<SecretSync>),
    /// Merge-patch the DataUpload's `metadata.finalizers` to exactly this list (the
    /// observed one with cairn's own added or removed; others are kept as they are), with
    /// the observed resourceVersion so a concurrent change is not overwritten.
    SetUploadFinalizers {
        /// The whole new list.
        finalizers: Vec<String>,
        /// The resourceVersion the list was read at.
        resource_version: Option<String>,
        /// Why the snapshot is let go without being forgotten, to log as a warning.
        warning: Option<String>,
    },
    /// Merge-patch a PersistentVolume.
    PatchPersistentVolume {
        /// PV name.
        name: String,
        /// The merge patch.
        patch: Value,
    },
}

/// The Secrets a Velero Job mounts, made from Velero's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSync {
    /// Secret (cairn's namespace) to write with key `password`.
    pub password_name: String,
    /// Where the password is: namespace, name, key.
    pub password_from: (String, String, String),
    /// Secret (cairn's namespace) to write with `AWS_*` keys, and the AWS-style file
    /// (namespace, name, key) they come from.
    pub credentials: Option<(String, (String, String, String))>,
}

/// Everything the DataUpload decision looks at.
#[derive(Clone, Debug)]
pub struct DataUploadObserved {
    /// The DataUpload.
    pub upload: DataUpload,
    /// Its BackupStorageLocation, if it exists.
    pub location: Option<BackupStorageLocation>,
    /// The node agent ConfigMap's backupPVC section, or why it could not be read.
    pub backup_pvc_config: Result<BTreeMap<String, BackupPvc>, String>,
    /// Names of all StorageClasses.
    pub storage_classes: Vec<String>,
    /// The VolumeSnapshot Velero's CSI plugin took (in the source namespace).
    pub source_snapshot: Option<SnapshotInfo>,
    /// Its content.
    pub source_content: Option<SnapshotContentInfo>,
    /// The VolumeSnapshot in cairn's namespace the backupPVC is made from.
    pub backup_snapshot: Option<SnapshotInfo>,
    /// Whether its content (cluster scoped, named after the DataUpload) exists.
    pub backup_content_exists: bool,
    /// Whether the backupPVC exists.
    pub backup_pvc_exists: bool,
    /// Why the provisioner cannot make the backupPVC (its `ProvisioningFailed` Warning
    /// Event), while it is Pending.
    pub backup_pvc_failure: Option<String>,
    /// The Job, if it exists.
    pub job: Option<JobInfo>,
    /// Backup Jobs running in the cluster now.
    pub running_backup_jobs: u32,
    /// Secret keys (`namespace/name/key`) the Job's Secrets are made from, and whether
    /// each exists: read before the Job is created.
    pub secret_keys: BTreeMap<String, bool>,
    /// The Job forgetting the snapshot of a deleted DataUpload, if it exists.
    pub forget_job: Option<JobInfo>,
}

impl Default for DataUploadObserved {
    fn default() -> Self {
        DataUploadObserved {
            upload: DataUpload::new("", Default::default()),
            location: None,
            backup_pvc_config: Ok(BTreeMap::new()),
            storage_classes: Vec::new(),
            source_snapshot: None,
            source_content: None,
            backup_snapshot: None,
            backup_content_exists: false,
            backup_pvc_exists: false,
            backup_pvc_failure: None,
            job: None,
            running_backup_jobs: 0,
            secret_keys: BTreeMap::new(),
            forget_job: None,
        }
    }
}

/// Decides the next steps for one DataUpload.
pub fn decide_data_upload(
    obs: &DataUploadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
) -> Vec<VeleroAction> {
    let du = &obs.upload;
    if du.spec.datamover != DATA_MOVER {
        return Vec::new();
    }
    if du.metadata.deletion_timestamp.is_some() {
        return upload_deleted(obs, ctx, v);
    }
    let before = du.status.clone().unwrap_or_default();
    let mut s = Step {
        status: before.clone(),
        actions: Vec::new(),
        now: ctx.now,
    };
    let phase = s.status.phase.clone().unwrap_or_default();
    let name = du.name_any();
    if phase::is_terminal(&phase) {
        upload_cleanup(obs, v, &mut s.actions);
    } else if du.spec.cancel {
        delete_job(&obs.job, v, &mut s.actions);
        s.end_upload(phase::CANCELED, "canceled (spec.cancel)".into());
        upload_cleanup(obs, v, &mut s.actions);
    } else if let Some(why) = &obs.backup_pvc_failure {
        // The provisioner said it cannot make the volume (a class whose driver cannot make
        // a ReadOnlyMany volume, above all): no wait changes that.
        delete_job(&obs.job, v, &mut s.actions);
        s.end_upload(
            phase::FAILED,
            format!(
                "the backupPVC {}/{name} cannot be provisioned: {why}; choose a backupPVC \
                 storageClass whose driver can make it, or set readOnly: false, in the node \
                 agent ConfigMap's backupPVC section",
                v.cairn_namespace
            ),
        );
        upload_cleanup(obs, v, &mut s.actions);
    } else {
        match phase.as_str() {
            "" | phase::NEW => {
                s.status.phase = Some(phase::ACCEPTED.into());
                s.status.start_timestamp = Some(time(ctx.now));
                s.status.accepted_timestamp = Some(time(ctx.now));
                s.actions.push(VeleroAction::Kube(Action::RequeueAfter(
                    std::time::Duration::ZERO,
                )));
            }
            phase::ACCEPTED => upload_accepted(obs, ctx, v, &mut s),
            phase::PREPARED => upload_prepared(obs, ctx, v, &mut s),
            phase::IN_PROGRESS => upload_in_progress(obs, ctx, v, &mut s),
            other => {
                s.end_upload(
                    phase::FAILED,
                    format!("DataUpload {name} is in phase {other:?}, which cairn does not know"),
                );
                upload_cleanup(obs, v, &mut s.actions);
            }
        }
    }
    // Only once Completed is observed: the status patch that completes it changes the
    // resourceVersion the finalizer patch is made against (its watch event comes back here).
    let hold = before.phase.as_deref() == Some(phase::COMPLETED)
        && before
            .snapshot_id
            .as_deref()
            .is_some_and(|id| !id.is_empty())
        && !du.finalizers().iter().any(|f| f == FINALIZER_FORGET);
    let mut actions = s.actions;
    if s.status != before {
        actions.insert(0, VeleroAction::PatchUploadStatus(Box::new(s.status)));
    }
    if hold {
        // Velero leaves a third-party mover's data alone when a backup is deleted: the
        // finalizer lets cairn forget the snapshot first.
        let mut finalizers = du.finalizers().to_vec();
        finalizers.push(FINALIZER_FORGET.into());
        actions.push(VeleroAction::SetUploadFinalizers {
            finalizers,
            resource_version: du.metadata.resource_version.clone(),
            warning: None,
        });
    }
    actions
}

/// A DataUpload being deleted (with its Velero Backup): while it carries cairn's
/// finalizer, a Job forgets its snapshot, then the finalizer is removed. Reclaiming the
/// snapshot's data is left to maintenance.
fn upload_deleted(
    obs: &DataUploadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
) -> Vec<VeleroAction> {
    let du = &obs.upload;
    if !du.finalizers().iter().any(|f| f == FINALIZER_FORGET) {
        return Vec::new();
    }
    let name = du.name_any();
    let release = |warning: Option<String>| VeleroAction::SetUploadFinalizers {
        finalizers: du
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER_FORGET)
            .cloned()
            .collect(),
        resource_version: du.metadata.resource_version.clone(),
        warning,
    };
    let status = du.status.clone().unwrap_or_default();
    let Some(id) = status.snapshot_id.filter(|id| !id.is_empty()) else {
        return vec![release(None)];
    };
    let job_name = objects::job_name(&name, "forget");
    match judged(&obs.forget_job, ctx) {
        Some(job) if job.is_running() => {
            vec![VeleroAction::Kube(Action::RequeueAfter(running_poll(&job)))]
        }
        Some(job) if job.succeeded => vec![release(None)],
        Some(job) => {
            let retryable = job
                .termination_message
                .as_deref()
                .and_then(JobOutcome::parse)
                .is_none_or(|o| o.retryable);
            let why = failure_reason(&job);
            if retryable {
                // A new Job tries again (the failed one's logs go with it).
                let mut actions = Vec::new();
                delete_job(&Some(job), v, &mut actions);
                actions.push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
                actions
            } else {
                vec![release(Some(format!(
                    "snapshot {id} of DataUpload {name} was not forgotten: {why}; forget it \
                     with `cairn forget` and let maintenance reclaim it"
                )))]
            }
        }
        None => {
            let plan = repository(
                obs.location.as_ref(),
                &du.spec.backup_storage_location,
                &du.spec.source_namespace,
                v,
            )
            .and_then(|plan| match missing_secret(&plan.sync, &obs.secret_keys) {
                Some(why) => Err(why),
                None => Ok(plan),
            });
            let plan = match plan {
                Ok(plan) => plan,
                Err(why) => {
                    return vec![release(Some(format!(
                        "snapshot {id} of DataUpload {name} was not forgotten: {why}; forget \
                         it with `cairn forget` and let maintenance reclaim it"
                    )))]
                }
            };
            let args = vec!["forget".to_string(), "--snapshot".into(), id];
            let mut job = velero_job(
                ctx,
                v,
                &plan.repository,
                "DataUpload",
                du.metadata.uid.as_deref(),
                &name,
                JobKind::Maintenance,
                args,
                None,
            );
            job.metadata.name = Some(job_name);
            vec![
                VeleroAction::SyncSecrets(Box::new(plan.sync)),
                VeleroAction::Kube(Action::CreateJob(Box::new(job))),
                VeleroAction::Kube(Action::RequeueAfter(POLL)),
            ]
        }
    }
}

struct Step<S> {
    status: S,
    actions: Vec<VeleroAction>,
    now: jiff::Timestamp,
}

impl Step<DataUploadStatus> {
    fn end_upload(&mut self, phase: &str, message: String) {
        self.status.phase = Some(phase.into());
        self.status.message = Some(message);
        self.status.completion_timestamp = Some(time(self.now));
    }
}

impl Step<DataDownloadStatus> {
    fn end_download(&mut self, phase: &str, message: String) {
        self.status.phase = Some(phase.into());
        self.status.message = Some(message);
        self.status.completion_timestamp = Some(time(self.now));
    }
}

fn delete_job(job: &Option<JobInfo>, v: &VeleroContext, actions: &mut Vec<VeleroAction>) {
    if let Some(job) = job {
        actions.push(VeleroAction::Kube(Action::DeleteJob {
            namespace: v.cairn_namespace.clone(),
            name: job.name.clone(),
        }));
    }
}

/// The storage class of the backupPVC and whether it is ReadOnlyMany, per the node agent's
/// backupPVC section for the source's class.
fn backup_pvc_class(
    source_class: &str,
    config: &BTreeMap<String, BackupPvc>,
) -> (Option<String>, bool) {
    let cfg = config.get(source_class);
    let class = cfg
        .and_then(|c| c.storage_class.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| Some(source_class.to_string()).filter(|c| !c.is_empty()));
    (class, cfg.is_some_and(|c| c.read_only))
}

fn upload_accepted(
    obs: &DataUploadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
    s: &mut Step<DataUploadStatus>,
) {
    let du = &obs.upload;
    let name = du.name_any();
    if let Err(why) = repository(
        obs.location.as_ref(),
        &du.spec.backup_storage_location,
        &du.spec.source_namespace,
        v,
    ) {
        s.end_upload(phase::FAILED, why);
        return upload_cleanup(obs, v, &mut s.actions);
    }
    let config = match &obs.backup_pvc_config {
        Ok(c) => c,
        Err(why) => {
            s.end_upload(phase::FAILED, why.clone());
            return upload_cleanup(obs, v, &mut s.actions);
        }
    };
    let csi = du.spec.csi_snapshot.clone().unwrap_or_default();
    let (class, read_only) = backup_pvc_class(&csi.storage_class, config);
    if let Some(class) = class.as_ref().filter(|c| !obs.storage_classes.contains(c)) {
        // Velero's own mover waits for its prepare timeout (30 minutes) here.
        s.end_upload(
            phase::FAILED,
            format!(
                "the backupPVC storage class {class:?} does not exist (from the node agent \
                 ConfigMap's backupPVC entry for {:?}, or the source's class): create it or fix \
                 the entry",
                csi.storage_class
            ),
        );
        return upload_cleanup(obs, v, &mut s.actions);
    }
    let ns = &du.spec.source_namespace;
    let mut size = obs
        .backup_snapshot
        .as_ref()
        .and_then(|b| b.restore_size.clone());
    if !obs.backup_content_exists {
        // Move the snapshot into cairn's namespace as Velero's exposer does: a new
        // content (deletionPolicy Delete) on the same storage snapshot and a VolumeSnapshot
        // bound to it; the original content is retained, then both originals deleted.
        let vs_name = &csi.volume_snapshot;
        let Some(vs) = &obs.source_snapshot else {
            s.end_upload(
                phase::FAILED,
                format!("VolumeSnapshot {ns}/{vs_name} does not exist"),
            );
            return upload_cleanup(obs, v, &mut s.actions);
        };
        if let Some(error) = &vs.error {
            s.end_upload(
                phase::FAILED,
                format!("VolumeSnapshot {ns}/{vs_name} failed: {error}"),
            );
            return upload_cleanup(obs, v, &mut s.actions);
        }
        let content = obs
            .source_content
            .as_ref()
            .filter(|c| vs.ready && c.snapshot_handle.is_some());
        let Some(content) = content else {
            let since = s
                .status
                .accepted_timestamp
                .as_ref()
                .map_or(ctx.now, |t| t.0);
            let waited = ctx.now.duration_since(since).unsigned_abs();
            if waited >= ctx.config.snapshot_timeout {
                s.end_upload(
                    phase::FAILED,
                    format!(
                        "VolumeSnapshot {ns}/{vs_name} not ready to use after {}; check the CSI \
                         snapshotter, or raise SNAPSHOT_TIMEOUT in cairn's ConfigMap",
                        super::human(ctx.config.snapshot_timeout)
                    ),
                );
                return upload_cleanup(obs, v, &mut s.actions);
            }
            s.actions
                .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
            return;
        };
        size = vs.restore_size.clone();
        s.actions.push(VeleroAction::CreateSnapshotContent(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": { "name": name, "labels": labels("DataUpload", &name) },
            "spec": {
                "deletionPolicy": "Delete",
                "driver": content.driver,
                "volumeSnapshotClassName": content.class,
                "source": { "snapshotHandle": content.snapshot_handle },
                "volumeSnapshotRef": { "apiVersion": "snapshot.storage.k8s.io/v1",
                    "kind": "VolumeSnapshot", "name": name, "namespace": v.cairn_namespace },
            }
        })));
        s.actions
            .push(VeleroAction::Kube(Action::CreateVolumeSnapshot(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": { "name": name, "namespace": v.cairn_namespace,
                              "labels": labels("DataUpload", &name) },
                "spec": {
                    "volumeSnapshotClassName": content.class,
                    "source": { "volumeSnapshotContentName": name },
                }
            }))));
        s.actions
            .push(VeleroAction::RetainSnapshotContent(content.name.clone()));
    }
    if obs.source_snapshot.is_some() {
        s.actions
            .push(VeleroAction::Kube(Action::DeleteVolumeSnapshot {
                namespace: ns.clone(),
                name: csi.volume_snapshot.clone(),
            }));
    }
    if let Some(content) = &obs.source_content {
        s.actions
            .push(VeleroAction::DeleteSnapshotContent(content.name.clone()));
    }
    if !obs.backup_pvc_exists {
        let cfg = crate::config::BackupPvcConfig {
            storage_class: class.clone(),
            read_only: Some(read_only),
        };
        let mut pvc = objects::backup_pvc(
            &v.cairn_namespace,
            &name,
            &name,
            class.as_deref(),
            size.as_deref().unwrap_or("1Gi"),
            Some(&cfg),
            false,
            &owner("DataUpload", du.metadata.uid.as_deref(), &name),
        );
        disown(&mut pvc.metadata, "DataUpload", &name, v);
        s.actions
            .push(VeleroAction::Kube(Action::CreatePvc(Box::new(pvc))));
    }
    s.status.phase = Some(phase::PREPARED.into());
    s.actions
        .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
}

fn upload_prepared(
    obs: &DataUploadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
    s: &mut Step<DataUploadStatus>,
) {
    let du = &obs.upload;
    let name = du.name_any();
    if !obs.backup_pvc_exists {
        s.end_upload(
            phase::FAILED,
            format!(
                "the backupPVC {}/{name} disappeared before the upload started",
                v.cairn_namespace
            ),
        );
        return upload_cleanup(obs, v, &mut s.actions);
    }
    let limit = JobKind::Backup.limit(&ctx.config);
    if obs.running_backup_jobs >= limit {
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    }
    let repo = match repository(
        obs.location.as_ref(),
        &du.spec.backup_storage_location,
        &du.spec.source_namespace,
        v,
    ) {
        Ok(r) => r,
        Err(why) => {
            s.end_upload(phase::FAILED, why);
            return upload_cleanup(obs, v, &mut s.actions);
        }
    };
    let csi = du.spec.csi_snapshot.clone().unwrap_or_default();
    let mut args = vec![
        "backup".to_string(),
        "--velero-namespace".into(),
        v.velero_namespace.clone(),
        "--data-upload".into(),
        name.clone(),
        "--source".into(),
        DATA_DIR.into(),
        "--source-name".into(),
        format!("{}/{}", du.spec.source_namespace, du.spec.source_pvc),
        "--storage-class".into(),
        csi.storage_class,
        "--tag".into(),
        format!("{TAG_DATA_UPLOAD}={name}"),
        // One repository per source namespace: its first backup creates it.
        "--init-if-missing".into(),
    ];
    if let Some(backup) = du.labels().get(LABEL_BACKUP_NAME) {
        args.extend(["--tag".into(), format!("{LABEL_BACKUP_NAME}={backup}")]);
    }
    if let Some(why) = missing_secret(&repo.sync, &obs.secret_keys) {
        s.end_upload(phase::FAILED, why);
        return upload_cleanup(obs, v, &mut s.actions);
    }
    s.actions
        .push(VeleroAction::SyncSecrets(Box::new(repo.sync)));
    let data = DataVolume {
        claim: name.clone(),
        read_only: true,
        node: None,
        block: false,
    };
    let job = velero_job(
        ctx,
        v,
        &repo.repository,
        "DataUpload",
        du.metadata.uid.as_deref(),
        &name,
        JobKind::Backup,
        args,
        Some(data),
    );
    s.actions
        .push(VeleroAction::Kube(Action::CreateJob(Box::new(job))));
    s.status.phase = Some(phase::IN_PROGRESS.into());
}

fn upload_in_progress(
    obs: &DataUploadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
    s: &mut Step<DataUploadStatus>,
) {
    let name = obs.upload.name_any();
    let job_name = objects::job_name(&name, "backup");
    let job = judged(&obs.job, ctx);
    let failure = match &job {
        None => format!(
            "Job {}/{job_name} was deleted before it finished",
            v.cairn_namespace
        ),
        Some(job) if job.is_running() => {
            s.actions
                .push(VeleroAction::Kube(Action::RequeueAfter(running_poll(job))));
            return;
        }
        Some(job) if job.succeeded => match job
            .termination_message
            .as_deref()
            .and_then(JobOutcome::parse)
        {
            Some(outcome) if outcome.succeeded && outcome.snapshot_id.is_some() => {
                s.status.snapshot_id = outcome.snapshot_id.clone();
                s.status.path = Some(DATA_DIR.into());
                s.status.progress = Some(Progress {
                    total_bytes: i64::try_from(outcome.total_bytes).unwrap_or(i64::MAX),
                    bytes_done: i64::try_from(outcome.bytes_done).unwrap_or(i64::MAX),
                });
                s.status.incremental_bytes = outcome
                    .bytes_added
                    .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
                s.end_upload(phase::COMPLETED, outcome.message);
                return upload_cleanup(obs, v, &mut s.actions);
            }
            _ => format!("Job {job_name} exited 0 without reporting a snapshot id"),
        },
        Some(job) => failure_reason(job),
    };
    s.end_upload(phase::FAILED, failure);
    upload_cleanup(obs, v, &mut s.actions);
}

/// Deletes what a DataUpload leaves behind: the backupPVC, both VolumeSnapshots and their
/// contents (the storage snapshot goes with the content whose policy is Delete).
fn upload_cleanup(obs: &DataUploadObserved, v: &VeleroContext, actions: &mut Vec<VeleroAction>) {
    let du = &obs.upload;
    let name = du.name_any();
    if obs.backup_pvc_exists {
        actions.push(VeleroAction::Kube(Action::DeletePvc {
            namespace: v.cairn_namespace.clone(),
            name: name.clone(),
        }));
    }
    if obs.backup_snapshot.is_some() {
        actions.push(VeleroAction::Kube(Action::DeleteVolumeSnapshot {
            namespace: v.cairn_namespace.clone(),
            name: name.clone(),
        }));
    } else if obs.backup_content_exists {
        actions.push(VeleroAction::DeleteSnapshotContent(name.clone()));
    }
    let csi = du.spec.csi_snapshot.clone().unwrap_or_default();
    if obs.source_snapshot.is_some() {
        actions.push(VeleroAction::Kube(Action::DeleteVolumeSnapshot {
            namespace: du.spec.source_namespace.clone(),
            name: csi.volume_snapshot,
        }));
    } else if let Some(content) = &obs.source_content {
        actions.push(VeleroAction::DeleteSnapshotContent(content.name.clone()));
    }
}

/// `namespace/name/key`, the key of [`DataUploadObserved::secret_keys`].
pub fn secret_key_id((ns, name, key): &(String, String, String)) -> String {
    format!("{ns}/{name}/{key}")
}

/// Why the Job's Secrets cannot be made, when a key they come from is missing.
fn missing_secret(sync: &SecretSync, present: &BTreeMap<String, bool>) -> Option<String> {
    let missing = |source: &(String, String, String)| {
        !present
            .get(&secret_key_id(source))
            .copied()
            .unwrap_or(false)
    };
    if missing(&sync.password_from) {
        let (ns, name, key) = &sync.password_from;
        return Some(format!(
            "the repository password is missing: Secret {ns}/{name} has no key {key:?} (Velero \
             creates velero-repo-credentials at install; or give --velero-password-secret)"
        ));
    }
    if let Some((_, source)) = sync.credentials.as_ref().filter(|(_, c)| missing(c)) {
        let (ns, name, key) = source;
        return Some(format!(
            "the storage credentials are missing: Secret {ns}/{name} has no key {key:?} (the \
             BackupStorageLocation's spec.credential, else Velero's cloud-credentials)"
        ));
    }
    None
}

/// The Secret keys (`namespace/name/key`) the Job Secrets for a Velero object in `v` with
/// location `bsl` come from: what the adapter reads into `secret_keys`.
pub fn secret_sources(
    bsl: Option<&BackupStorageLocation>,
    v: &VeleroContext,
) -> Vec<(String, String, String)> {
    let Ok(plan) = repository(bsl, "", "default", v) else {
        return Vec::new();
    };
    let mut out = vec![plan.sync.password_from];
    out.extend(plan.sync.credentials.map(|(_, c)| c));
    out
}

/// The repository, its Job-side view and the Secrets it needs.
struct RepositoryPlan {
    repository: BackupRepository,
    sync: SecretSync,
}

fn repository(
    location: Option<&BackupStorageLocation>,
    name: &str,
    source_namespace: &str,
    v: &VeleroContext,
) -> Result<RepositoryPlan, String> {
    let Some(bsl) = location else {
        return Err(format!(
            "BackupStorageLocation {name:?} does not exist in namespace {:?}",
            v.velero_namespace
        ));
    };
    let VeleroRepository {
        location,
        credentials,
    } = repository_for(bsl, source_namespace)?;
    let base = format!("cairn-velero-{name}");
    let password_name = objects::job_name(&base, "password");
    let credentials_name = objects::job_name(&base, "credentials");
    let password_from = match &v.password_secret {
        Some(secret) => (
            v.cairn_namespace.clone(),
            secret.clone(),
            crate::velero::REPOSITORY_PASSWORD.1.to_string(),
        ),
        None => (
            v.velero_namespace.clone(),
            crate::velero::REPOSITORY_PASSWORD.0.to_string(),
            crate::velero::REPOSITORY_PASSWORD.1.to_string(),
        ),
    };
    let sync = SecretSync {
        password_name: password_name.clone(),
        password_from,
        credentials: credentials.as_ref().map(|(secret, key)| {
            (
                credentials_name.clone(),
                (v.velero_namespace.clone(), secret.clone(), key.clone()),
            )
        }),
    };
    let mut repository = BackupRepository::new(
        &objects::job_name(&format!("velero-{name}"), source_namespace),
        BackupRepositorySpec {
            location,
            credentials_secret: credentials.map(|_| SecretRef {
                name: credentials_name,
            }),
            password_secret: SecretKeyRef {
                name: password_name,
                key: "password".into(),
            },
            maintenance: Default::default(),
            catalog_refresh_interval: None,
            allowed_namespaces: Vec::new(),
        },
    );
    repository.metadata.namespace = Some(v.cairn_namespace.clone());
    Ok(RepositoryPlan { repository, sync })
}

fn labels(kind: &str, name: &str) -> Value {
    json!({ LABEL_VELERO: kind, objects::LABEL_OWNER: name })
}

fn owner(kind: &str, uid: Option<&str>, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "velero.io/v2alpha1".into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.unwrap_or_default().into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Labels an object cairn makes for a Velero object, and drops the owner reference when
/// the object is in another namespace (an owner reference cannot cross namespaces: the
/// garbage collector would delete the object at once).
fn disown(meta: &mut kube::api::ObjectMeta, kind: &str, name: &str, v: &VeleroContext) {
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(LABEL_VELERO.into(), kind.into());
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(objects::LABEL_OWNER.into(), name.into());
    if v.velero_namespace != v.cairn_namespace {
        meta.owner_references = None;
    }
}

#[allow(clippy::too_many_arguments)]
fn velero_job(
    ctx: &DecideContext,
    v: &VeleroContext,
    repository: &BackupRepository,
    kind: &str,
    uid: Option<&str>,
    name: &str,
    job_kind: JobKind,
    args: Vec<String>,
    data: Option<DataVolume>,
) -> k8s_openapi::api::batch::v1::Job {
    let owner = owner(kind, uid, name);
    let spec = JobSpec {
        name: objects::job_name(name, job_kind.as_str()),
        namespace: &v.cairn_namespace,
        kind: job_kind,
        owner: &owner,
        repository,
        args,
        data,
        with_excludes: job_kind == JobKind::Backup,
    };
    let mut job = objects::job(&spec, &ctx.config, &ctx.jobs);
    disown(&mut job.metadata, kind, name, v);
    job
}

/// Everything the DataDownload decision looks at.
#[derive(Clone, Debug)]
pub struct DataDownloadObserved {
    /// The DataDownload.
    pub download: DataDownload,
    /// Its BackupStorageLocation, if it exists.
    pub location: Option<BackupStorageLocation>,
    /// The target PVC, once Velero created it.
    pub target_pvc: Option<PersistentVolumeClaim>,
    /// The temporary PVC cairn restores into (cairn's namespace, named after the
    /// DataDownload).
    pub restore_pvc: Option<PersistentVolumeClaim>,
    /// The restored PV: bound to the restore PVC, or labelled with [`LABEL_DOWNLOAD`].
    pub restored_pv: Option<PersistentVolume>,
    /// The Job, if it exists.
    pub job: Option<JobInfo>,
    /// Restore Jobs running in the cluster now.
    pub running_restore_jobs: u32,
    /// As [`DataUploadObserved::secret_keys`].
    pub secret_keys: BTreeMap<String, bool>,
}

impl Default for DataDownloadObserved {
    fn default() -> Self {
        DataDownloadObserved {
            download: DataDownload::new("", Default::default()),
            location: None,
            target_pvc: None,
            restore_pvc: None,
            restored_pv: None,
            job: None,
            running_restore_jobs: 0,
            secret_keys: BTreeMap::new(),
        }
    }
}

/// Decides the next steps for one DataDownload.
pub fn decide_data_download(
    obs: &DataDownloadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
) -> Vec<VeleroAction> {
    let dd = &obs.download;
    if dd.spec.datamover != DATA_MOVER {
        return Vec::new();
    }
    let before = dd.status.clone().unwrap_or_default();
    let mut s = Step {
        status: before.clone(),
        actions: Vec::new(),
        now: ctx.now,
    };
    let phase = s.status.phase.clone().unwrap_or_default();
    let name = dd.name_any();
    if phase::is_terminal(&phase) {
        download_cleanup(obs, v, &mut s.actions);
    } else if dd.spec.cancel {
        delete_job(&obs.job, v, &mut s.actions);
        s.end_download(phase::CANCELED, "canceled (spec.cancel)".into());
        download_cleanup(obs, v, &mut s.actions);
    } else {
        match phase.as_str() {
            "" | phase::NEW => {
                s.status.phase = Some(phase::ACCEPTED.into());
                s.status.start_timestamp = Some(time(ctx.now));
                s.status.accepted_timestamp = Some(time(ctx.now));
                s.actions.push(VeleroAction::Kube(Action::RequeueAfter(
                    std::time::Duration::ZERO,
                )));
            }
            phase::ACCEPTED => download_accepted(obs, v, &mut s),
            phase::PREPARED => download_prepared(obs, ctx, v, &mut s),
            phase::IN_PROGRESS => download_in_progress(obs, ctx, v, &mut s),
            other => {
                s.end_download(
                    phase::FAILED,
                    format!("DataDownload {name} is in phase {other:?}, which cairn does not know"),
                );
                download_cleanup(obs, v, &mut s.actions);
            }
        }
    }
    let mut actions = s.actions;
    if s.status != before {
        actions.insert(0, VeleroAction::PatchDownloadStatus(Box::new(s.status)));
    }
    actions
}

fn download_accepted(
    obs: &DataDownloadObserved,
    v: &VeleroContext,
    s: &mut Step<DataDownloadStatus>,
) {
    let dd = &obs.download;
    let name = dd.name_any();
    if let Err(why) = repository(
        obs.location.as_ref(),
        &dd.spec.backup_storage_location,
        &dd.spec.source_namespace,
        v,
    ) {
        s.end_download(phase::FAILED, why);
        return download_cleanup(obs, v, &mut s.actions);
    }
    // Velero creates the target PVC after the DataDownload: wait for it.
    let Some(target) = &obs.target_pvc else {
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    };
    if obs.restore_pvc.is_none() {
        let spec = target.spec.clone().unwrap_or_default();
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref()?.get("storage").cloned())
            .map_or_else(|| "1Gi".to_string(), |q| q.0);
        let mut pvc = objects::target_pvc(
            &v.cairn_namespace,
            &name,
            spec.storage_class_name.as_deref(),
            &size,
            &spec.access_modes.unwrap_or_default(),
            None,
        );
        pvc.spec.get_or_insert_with(Default::default).volume_mode = spec.volume_mode;
        disown(&mut pvc.metadata, "DataDownload", &name, v);
        s.actions
            .push(VeleroAction::Kube(Action::CreatePvc(Box::new(pvc))));
    }
    s.status.phase = Some(phase::PREPARED.into());
    s.actions
        .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
}

fn download_prepared(
    obs: &DataDownloadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
    s: &mut Step<DataDownloadStatus>,
) {
    let dd = &obs.download;
    let name = dd.name_any();
    if obs.restore_pvc.is_none() {
        s.end_download(
            phase::FAILED,
            format!(
                "the restore PVC {}/{name} disappeared before the restore started",
                v.cairn_namespace
            ),
        );
        return download_cleanup(obs, v, &mut s.actions);
    }
    if obs.running_restore_jobs >= JobKind::Restore.limit(&ctx.config) {
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    }
    let repo = match repository(
        obs.location.as_ref(),
        &dd.spec.backup_storage_location,
        &dd.spec.source_namespace,
        v,
    ) {
        Ok(r) => r,
        Err(why) => {
            s.end_download(phase::FAILED, why);
            return download_cleanup(obs, v, &mut s.actions);
        }
    };
    let args = vec![
        "restore".to_string(),
        "--velero-namespace".into(),
        v.velero_namespace.clone(),
        "--data-download".into(),
        name.clone(),
        "--snapshot".into(),
        dd.spec.snapshot_id.clone(),
        "--target".into(),
        DATA_DIR.into(),
    ];
    if let Some(why) = missing_secret(&repo.sync, &obs.secret_keys) {
        s.end_download(phase::FAILED, why);
        return download_cleanup(obs, v, &mut s.actions);
    }
    s.actions
        .push(VeleroAction::SyncSecrets(Box::new(repo.sync)));
    let data = DataVolume {
        claim: name.clone(),
        read_only: false,
        node: None,
        block: false,
    };
    let job = velero_job(
        ctx,
        v,
        &repo.repository,
        "DataDownload",
        dd.metadata.uid.as_deref(),
        &name,
        JobKind::Restore,
        args,
        Some(data),
    );
    s.actions
        .push(VeleroAction::Kube(Action::CreateJob(Box::new(job))));
    s.status.phase = Some(phase::IN_PROGRESS.into());
}

fn download_in_progress(
    obs: &DataDownloadObserved,
    ctx: &DecideContext,
    v: &VeleroContext,
    s: &mut Step<DataDownloadStatus>,
) {
    let dd = &obs.download;
    let name = dd.name_any();
    let job_name = objects::job_name(&name, "restore");
    let job = judged(&obs.job, ctx);
    let handed_over = obs
        .restored_pv
        .as_ref()
        .is_some_and(|pv| pv.labels().contains_key(LABEL_DOWNLOAD));
    if !handed_over {
        let failure = match &job {
            None => format!(
                "Job {}/{job_name} was deleted before it finished",
                v.cairn_namespace
            ),
            Some(job) if job.is_running() => {
                s.actions
                    .push(VeleroAction::Kube(Action::RequeueAfter(running_poll(job))));
                return;
            }
            Some(job) if job.succeeded => {
                let outcome = job
                    .termination_message
                    .as_deref()
                    .and_then(JobOutcome::parse)
                    .unwrap_or_default();
                s.status.progress = Some(Progress {
                    total_bytes: i64::try_from(outcome.total_bytes).unwrap_or(i64::MAX),
                    bytes_done: i64::try_from(outcome.bytes_done).unwrap_or(i64::MAX),
                });
                return hand_over(obs, v, s);
            }
            Some(job) => failure_reason(job),
        };
        s.end_download(phase::FAILED, failure);
        return download_cleanup(obs, v, &mut s.actions);
    }
    hand_over(obs, v, s);
}

/// Hands the restored PV to the target PVC as Velero's restore exposer does: reclaim
/// policy Retain, temporary claim deleted, `claimRef` set to the target and its selector's
/// labels put on the PV, both Bound, reclaim policy restored.
fn hand_over(obs: &DataDownloadObserved, v: &VeleroContext, s: &mut Step<DataDownloadStatus>) {
    let dd = &obs.download;
    let name = dd.name_any();
    let target_ns = &dd.spec.target_volume.namespace;
    let target_name = &dd.spec.target_volume.pvc;
    let Some(pv) = &obs.restored_pv else {
        s.end_download(
            phase::FAILED,
            format!(
                "the volume restored into {}/{name} disappeared before it was handed to \
                 {target_ns}/{target_name}",
                v.cairn_namespace
            ),
        );
        return download_cleanup(obs, v, &mut s.actions);
    };
    let Some(target) = &obs.target_pvc else {
        s.end_download(
            phase::FAILED,
            format!("the target PVC {target_ns}/{target_name} was deleted during the restore"),
        );
        return download_cleanup(obs, v, &mut s.actions);
    };
    let pv_name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let policy = spec
        .persistent_volume_reclaim_policy
        .clone()
        .unwrap_or_else(|| "Delete".into());
    if !pv.labels().contains_key(LABEL_DOWNLOAD) {
        let mut labels: BTreeMap<String, String> = target
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref()?.match_labels.clone())
            .unwrap_or_default();
        labels.insert(LABEL_DOWNLOAD.into(), name.clone());
        s.actions.push(VeleroAction::PatchPersistentVolume {
            name: pv_name,
            patch: json!({
                "metadata": { "labels": labels, "annotations": { ANNOTATION_RECLAIM: policy } },
                "spec": { "persistentVolumeReclaimPolicy": "Retain" },
            }),
        });
        s.actions.push(VeleroAction::Kube(Action::RequeueAfter(
            std::time::Duration::ZERO,
        )));
        return;
    }
    if obs.restore_pvc.is_some() {
        s.actions.push(VeleroAction::Kube(Action::DeletePvc {
            namespace: v.cairn_namespace.clone(),
            name,
        }));
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    }
    let claim = spec.claim_ref.clone().unwrap_or_default();
    if claim.namespace.as_deref() != Some(target_ns) || claim.name.as_deref() != Some(target_name) {
        s.actions.push(VeleroAction::PatchPersistentVolume {
            name: pv_name,
            patch: json!({ "spec": { "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": target_ns, "name": target_name,
                "uid": null, "resourceVersion": null,
            } } }),
        });
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    }
    let pv_bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let target_bound = target.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        && target.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv_name.as_str());
    if !(pv_bound && target_bound) {
        s.actions
            .push(VeleroAction::Kube(Action::RequeueAfter(POLL)));
        return;
    }
    let original = pv
        .annotations()
        .get(ANNOTATION_RECLAIM)
        .cloned()
        .unwrap_or_else(|| "Delete".into());
    if policy != original {
        s.actions.push(VeleroAction::PatchPersistentVolume {
            name: pv_name,
            patch: json!({
                "metadata": { "annotations": { ANNOTATION_RECLAIM: null } },
                "spec": { "persistentVolumeReclaimPolicy": original },
            }),
        });
    }
    s.end_download(
        phase::COMPLETED,
        format!("restored into {target_ns}/{target_name}"),
    );
}

/// Deletes the temporary restore PVC (unless its volume is already handed over: then it
/// is gone already).
fn download_cleanup(
    obs: &DataDownloadObserved,
    v: &VeleroContext,
    actions: &mut Vec<VeleroAction>,
) {
    if obs.restore_pvc.is_some() {
        actions.push(VeleroAction::Kube(Action::DeletePvc {
            namespace: v.cairn_namespace.clone(),
            name: obs.download.name_any(),
        }));
    }
}
