//! The thin kube adapter: observes objects for the decision functions and executes the
//! [`Action`]s they return. No decisions are made here.
//!
//! Invariant: every create tolerates AlreadyExists and every delete tolerates NotFound,
//! so executing the same actions twice (after a crash or a stale read) is harmless.

mod exec;
mod observe;

pub use exec::run_rule;
pub use observe::{observe_backup, observe_repository, observe_restore, read_config};

use crate::controller::Action;
use crate::crd::{BackupRepository, VolumeBackup, VolumeRestore};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    PropagationPolicy,
};
use kube::Api;
use serde_json::{json, Value};
use std::time::Duration;

/// Adapter failures: an API call failed (retried by requeueing the reconcile).
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The API server refused or could not be reached.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// An object from the API could not be converted.
    #[error("{0}")]
    Convert(String),
}

pub(crate) fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> AdapterError {
    let action = action.into();
    move |source| AdapterError::Api { action, source }
}

/// The VolumeSnapshot API resource (`snapshot.storage.k8s.io/v1`).
pub fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
    ))
}

/// The VolumeSnapshotClass API resource.
pub fn snapshot_class_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
    ))
}

/// The resource whose reconcile produced the actions: status patches and rule runs target it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its status as observed, to turn removed fields into explicit nulls in merge patches.
    pub old_status: Value,
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn tolerate(
    result: Result<(), kube::Error>,
    ok_code: u16,
    action: String,
) -> Result<(), AdapterError> {
    match result {
        Err(e) if code(&e) == Some(ok_code) => Ok(()),
        other => other.map_err(api_err(action)),
    }
}

/// A merge patch of `status` that also removes the fields `old` had and `new` lacks.
pub fn status_patch(old: &Value, new: &Value) -> Value {
    let mut body = new.clone();
    if let (Some(old), Some(body)) = (old.as_object(), body.as_object_mut()) {
        for key in old.keys() {
            body.entry(key.clone()).or_insert(Value::Null);
        }
    }
    json!({ "status": body })
}

/// Executes actions in order and returns the requeue delay they ask for (the shortest).
pub async fn execute(
    client: &kube::Client,
    target: &Target,
    actions: &[Action],
) -> Result<Option<Duration>, AdapterError> {
    let mut requeue: Option<Duration> = None;
    let ns = target.namespace.as_str();
    let pp = PostParams::default();
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for action in actions {
        match action {
            Action::CreateVolumeSnapshot(object) => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), ns, &volume_snapshot_resource());
                let object: DynamicObject = serde_json::from_value(object.clone())
                    .map_err(|e| AdapterError::Convert(e.to_string()))?;
                let name = object.metadata.name.clone().unwrap_or_default();
                tolerate(
                    api.create(&pp, &object).await.map(drop),
                    409,
                    format!("creating VolumeSnapshot {ns}/{name}"),
                )?;
            }
            Action::DeleteVolumeSnapshot { namespace, name } => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &volume_snapshot_resource());
                tolerate(
                    api.delete(name, &DeleteParams::default()).await.map(drop),
                    404,
                    format!("deleting VolumeSnapshot {namespace}/{name}"),
                )?;
            }
            Action::CreatePvc(pvc) => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
                let name = pvc.metadata.name.clone().unwrap_or_default();
                tolerate(
                    api.create(&pp, pvc).await.map(drop),
                    409,
                    format!("creating PVC {ns}/{name}"),
                )?;
            }
            Action::DeletePvc { namespace, name } => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
                tolerate(
                    api.delete(name, &DeleteParams::default()).await.map(drop),
                    404,
                    format!("deleting PVC {namespace}/{name}"),
                )?;
            }
            Action::CreateJob(job) => {
                let api: Api<Job> = Api::namespaced(client.clone(), ns);
                let name = job.metadata.name.clone().unwrap_or_default();
                tolerate(
                    api.create(&pp, job).await.map(drop),
                    409,
                    format!("creating Job {ns}/{name}"),
                )?;
            }
            Action::DeleteJob { namespace, name } => {
                let api: Api<Job> = Api::namespaced(client.clone(), namespace);
                tolerate(
                    api.delete(name, &background).await.map(drop),
                    404,
                    format!("deleting Job {namespace}/{name}"),
                )?;
            }
            Action::RunRule {
                namespace,
                rule,
                side,
                volume_backup,
            } => {
                let outcome = run_rule(client, namespace, rule, *side, volume_backup).await?;
                let key = side.as_str();
                let body = json!({ "status": { "hooks": { key: outcome } } });
                let api: Api<VolumeBackup> = Api::namespaced(client.clone(), namespace);
                api.patch_status(volume_backup, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(api_err(format!(
                        "recording the {key} rule result on {namespace}/{volume_backup}"
                    )))?;
            }
            Action::PatchBackupStatus(status) => {
                let api: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
                let body = status_patch(
                    &target.old_status,
                    &serde_json::to_value(status).unwrap_or_default(),
                );
                api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(api_err(format!(
                        "patching VolumeBackup {ns}/{} status",
                        target.name
                    )))?;
            }
            Action::PatchRestoreStatus(status) => {
                let api: Api<VolumeRestore> = Api::namespaced(client.clone(), ns);
                let body = status_patch(
                    &target.old_status,
                    &serde_json::to_value(status).unwrap_or_default(),
                );
                api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(api_err(format!(
                        "patching VolumeRestore {ns}/{} status",
                        target.name
                    )))?;
            }
            Action::PatchRepositoryStatus(status) => {
                let api: Api<BackupRepository> = Api::namespaced(client.clone(), ns);
                let body = status_patch(
                    &target.old_status,
                    &serde_json::to_value(status).unwrap_or_default(),
                );
                api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(api_err(format!(
                        "patching BackupRepository {ns}/{} status",
                        target.name
                    )))?;
            }
            Action::RequeueAfter(d) => requeue = Some(requeue.map_or(*d, |r| r.min(*d))),
        }
    }
    Ok(requeue)
}
