//! The thin kube adapter: observes objects for the decision functions and executes the
//! [`Action`]s they return. No decisions are made here.
//!
//! Invariant: every create tolerates AlreadyExists and every delete tolerates NotFound,
//! so executing the same actions twice (after a crash or a stale read) is harmless.

mod exec;
mod observe;
mod schedule;

pub use exec::run_rule;
pub use observe::{observe_backup, observe_repository, observe_restore, read_config};
pub use schedule::{list_runs, observe_schedule};

use crate::controller::Action;
use crate::crd::{BackupRepository, BackupSchedule, VolumeBackup, VolumeRestore};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    PropagationPolicy,
};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;

/// Adapter failures: an API call failed (retried by requeueing the reconcile).
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The API server refused or could not be reached.
    #[error("{action}: {}", describe(source))]
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

/// A client error in the API's own words: for a refusal, its message and reason without
/// the client's dump of the Status object.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
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

/// Creates `object`; one that exists already counts as created.
async fn create<K>(api: &Api<K>, ns: &str, kind: &str, object: &K) -> Result<(), AdapterError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.meta().name.as_deref().unwrap_or_default();
    tolerate(
        api.create(&PostParams::default(), object).await.map(drop),
        409,
        format!("creating {kind} {ns}/{name}"),
    )
}

/// Deletes `name`; one that is gone already counts as deleted.
async fn delete<K>(
    api: &Api<K>,
    ns: &str,
    kind: &str,
    name: &str,
    params: &DeleteParams,
) -> Result<(), AdapterError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    tolerate(
        api.delete(name, params).await.map(drop),
        404,
        format!("deleting {kind} {ns}/{name}"),
    )
}

/// Merge-patches the target's status to `status` (see [`status_patch`]).
async fn patch_status<K>(
    api: &Api<K>,
    target: &Target,
    status: &impl Serialize,
) -> Result<(), AdapterError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let body = status_patch(
        &target.old_status,
        &serde_json::to_value(status).unwrap_or_default(),
    );
    api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(drop)
        .map_err(api_err(format!(
            "patching {} {}/{} status",
            K::kind(&()),
            target.namespace,
            target.name
        )))
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
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for action in actions {
        match action {
            Action::CreateVolumeSnapshot(object) => {
                let object: DynamicObject = serde_json::from_value(object.clone())
                    .map_err(|e| AdapterError::Convert(e.to_string()))?;
                let api = Api::namespaced_with(client.clone(), ns, &volume_snapshot_resource());
                create(&api, ns, "VolumeSnapshot", &object).await?;
            }
            Action::DeleteVolumeSnapshot { namespace, name } => {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), namespace, &volume_snapshot_resource());
                let params = DeleteParams::default();
                delete(&api, namespace, "VolumeSnapshot", name, &params).await?;
            }
            Action::CreatePvc(pvc) => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
                create(&api, ns, "PVC", pvc).await?;
            }
            Action::DeletePvc { namespace, name } => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
                let params = DeleteParams::default();
                delete(&api, namespace, "PVC", name, &params).await?;
            }
            Action::CreateJob(job) => {
                let api: Api<Job> = Api::namespaced(client.clone(), ns);
                create(&api, ns, "Job", job).await?;
            }
            Action::DeleteJob { namespace, name } => {
                let api: Api<Job> = Api::namespaced(client.clone(), namespace);
                delete(&api, namespace, "Job", name, &background).await?;
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
                patch_status(&api, target, status).await?;
            }
            Action::PatchRestoreStatus(status) => {
                let api: Api<VolumeRestore> = Api::namespaced(client.clone(), ns);
                patch_status(&api, target, status).await?;
            }
            Action::PatchRepositoryStatus(status) => {
                let api: Api<BackupRepository> = Api::namespaced(client.clone(), ns);
                patch_status(&api, target, status).await?;
            }
            Action::RequeueAfter(d) => requeue = Some(requeue.map_or(*d, |r| r.min(*d))),
            Action::CreateScheduledRun(run) => schedule::create_run(client, ns, run).await?,
            Action::DeleteScheduledRun {
                kind,
                namespace,
                name,
            } => schedule::delete_run(client, *kind, namespace, name).await?,
            Action::PatchScheduleStatus(status) => {
                let api: Api<BackupSchedule> = Api::namespaced(client.clone(), ns);
                patch_status(&api, target, status).await?;
            }
        }
    }
    Ok(requeue)
}
