//! The thin kube adapter: observes objects for the decision functions and executes the
//! [`Action`]s they return. No decisions are made here.
//!
//! Invariant: every create tolerates AlreadyExists and every delete tolerates NotFound,
//! so executing the same actions twice (after a crash or a stale read) is harmless.

mod events;
mod exec;
mod observe;
mod schedule;
mod velero;

pub use events::{event_object, status_events, EventSpec, REPORTING_COMPONENT};
pub use exec::{run_in_pod, run_rule};
pub use observe::{
    observe_application_backup, observe_application_restore, observe_backup, observe_repository,
    observe_restore, read_config,
};
pub use schedule::{list_runs, observe_schedule};
pub use velero::{execute_velero, observe_data_download, observe_data_upload};

use crate::controller::{Action, FINALIZER_CHILDREN};
use crate::crd::{
    ApplicationBackup, ApplicationRestore, BackupRepository, BackupSchedule, VolumeBackup,
    VolumeRestore,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
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

/// Sets `spec.cancel` on child `name`; one that is gone already counts as canceled.
async fn cancel<K>(api: &Api<K>, ns: &str, kind: &str, name: &str) -> Result<(), AdapterError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({ "spec": { "cancel": true } });
    tolerate(
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop),
        404,
        format!("canceling {kind} {ns}/{name}"),
    )
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
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let new = serde_json::to_value(status).unwrap_or_default();
    let body = status_patch(&target.old_status, &new);
    let patched = api
        .patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(api_err(format!(
            "patching {} {}/{} status",
            K::kind(&()),
            target.namespace,
            target.name
        )))?;
    log_phase_change::<K>(&target.old_status, &new);
    report(api, &patched, target, &new).await;
    Ok(())
}

/// Counts the transitions of a status patch that succeeded and records its Events.
async fn report<K>(api: &Api<K>, patched: &K, target: &Target, new: &Value)
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let old = &target.old_status;
    let mut object = serde_json::to_value(patched).unwrap_or_default();
    object["metadata"]["namespace"] = Value::from(target.namespace.as_str());
    crate::metrics::global().record(&K::kind(&()), &object, old, new);
    let client = api.clone().into_client();
    events::record(client, patched, &target.namespace, old, new).await;
}

/// Logs (at info) a status patch that changed the resource's `phase`.
fn log_phase_change<K: Resource<DynamicType = ()>>(old: &Value, new: &Value) {
    let (from, to) = (old.get("phase"), new.get("phase"));
    if let Some(to) = to.and_then(Value::as_str).filter(|_| from != to) {
        let from = from.and_then(Value::as_str).unwrap_or("(none)");
        let reason = new.get("failureReason").and_then(Value::as_str);
        tracing::info!(kind = %K::kind(&()), from, to, reason, "phase changed");
    }
}

/// Merge-patches only the top-level status fields that differ between the target's observed
/// status and `status` (see [`status_diff_patch`]).
async fn patch_status_diff<K>(
    api: &Api<K>,
    target: &Target,
    status: &impl Serialize,
) -> Result<(), AdapterError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let new = serde_json::to_value(status).unwrap_or_default();
    let body = status_diff_patch(&target.old_status, &new);
    if body["status"].as_object().is_some_and(|m| m.is_empty()) {
        return Ok(());
    }
    let patched = api
        .patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(api_err(format!(
            "patching {} {}/{} status",
            K::kind(&()),
            target.namespace,
            target.name
        )))?;
    log_phase_change::<K>(&target.old_status, &new);
    report(api, &patched, target, &new).await;
    Ok(())
}

/// A merge patch of the top-level fields of `new` that differ from `old` (removed ones as
/// null): fields others patch meanwhile (a Job's counts) are left as they are.
pub fn status_diff_patch(old: &Value, new: &Value) -> Value {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut body = serde_json::Map::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            body.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            body.insert(k.clone(), Value::Null);
        }
    }
    json!({ "status": body })
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
                // An ApplicationBackup cuts snapshots in other namespaces.
                let ns = object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| ns.into());
                let api = Api::namespaced_with(client.clone(), &ns, &volume_snapshot_resource());
                create(&api, &ns, "VolumeSnapshot", &object).await?;
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
            other => execute_application(client, target, other).await?,
        }
    }
    Ok(requeue)
}

/// Executes the actions of the application controllers (and the Secret copies of
/// cross-namespace repositories).
async fn execute_application(
    client: &kube::Client,
    target: &Target,
    action: &Action,
) -> Result<(), AdapterError> {
    let ns = target.namespace.as_str();
    match action {
        Action::CopySecret {
            from_namespace,
            from_name,
            namespace,
            name,
            owner,
        } => {
            let source: Api<Secret> = Api::namespaced(client.clone(), from_namespace);
            let Some(original) = source.get_opt(from_name).await.map_err(api_err(format!(
                "reading Secret {from_namespace}/{from_name}"
            )))?
            else {
                // The Job's pod will report the missing Secret; nothing to copy.
                tracing::warn!(%from_namespace, %from_name, "repository Secret not found");
                return Ok(());
            };
            let copy = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(
                        [(
                            "cairn.io/copy-of".to_string(),
                            crate::controller::label_value(&format!(
                                "{from_namespace}.{from_name}"
                            )),
                        )]
                        .into(),
                    ),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                data: original.data,
                type_: original.type_,
                ..Default::default()
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            create(&api, namespace, "Secret", &copy).await
        }
        Action::CreateVolumeBackup(vb) => {
            let child_ns = vb.metadata.namespace.clone().unwrap_or_else(|| ns.into());
            let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &child_ns);
            create(&api, &child_ns, "VolumeBackup", vb).await
        }
        Action::CancelVolumeBackup { namespace, name } => {
            let api: Api<VolumeBackup> = Api::namespaced(client.clone(), namespace);
            cancel(&api, namespace, "VolumeBackup", name).await
        }
        Action::DeleteVolumeBackup { namespace, name } => {
            let api: Api<VolumeBackup> = Api::namespaced(client.clone(), namespace);
            let params = DeleteParams::default();
            delete(&api, namespace, "VolumeBackup", name, &params).await
        }
        Action::CreateVolumeRestore(vr) => {
            let child_ns = vr.metadata.namespace.clone().unwrap_or_else(|| ns.into());
            let api: Api<VolumeRestore> = Api::namespaced(client.clone(), &child_ns);
            create(&api, &child_ns, "VolumeRestore", vr).await
        }
        Action::CancelVolumeRestore { namespace, name } => {
            let api: Api<VolumeRestore> = Api::namespaced(client.clone(), namespace);
            cancel(&api, namespace, "VolumeRestore", name).await
        }
        Action::RunGroupHooks { side, pods } => {
            let runs = pods.iter().map(|p| async move {
                let outcome = run_in_pod(client, &p.namespace, &p.pod, &p.runs).await;
                (p.key(), outcome)
            });
            let results: std::collections::BTreeMap<String, crate::crd::HookOutcome> =
                futures::future::join_all(runs).await.into_iter().collect();
            let key = side.as_str();
            let body = json!({ "status": { "hooks": { key: results } } });
            let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
            api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(drop)
                .map_err(api_err(format!(
                    "recording the {key} commands' results on {ns}/{}",
                    target.name
                )))
        }
        Action::PatchApplicationBackupStatus(status) => {
            let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
            patch_status_diff(&api, target, status).await
        }
        Action::PatchApplicationRestoreStatus(status) => {
            let api: Api<ApplicationRestore> = Api::namespaced(client.clone(), ns);
            patch_status_diff(&api, target, status).await
        }
        Action::SetApplicationBackupFinalizer(add) => {
            let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
            let action = format!(
                "updating the finalizers of ApplicationBackup {ns}/{}",
                target.name
            );
            let Some(current) = api
                .get_opt(&target.name)
                .await
                .map_err(api_err(action.clone()))?
            else {
                return Ok(());
            };
            let mut finalizers = current.metadata.finalizers.clone().unwrap_or_default();
            finalizers.retain(|f| f != FINALIZER_CHILDREN);
            if *add {
                finalizers.push(FINALIZER_CHILDREN.into());
            }
            if Some(&finalizers) == current.metadata.finalizers.as_ref() {
                return Ok(());
            }
            let body = json!({ "metadata": {
                "finalizers": finalizers,
                "resourceVersion": current.metadata.resource_version,
            } });
            api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(drop)
                .map_err(api_err(action))
        }
        // Handled by `execute` before it calls this; listed so a new action cannot be
        // forgotten by both.
        Action::CreateVolumeSnapshot(_)
        | Action::DeleteVolumeSnapshot { .. }
        | Action::CreatePvc(_)
        | Action::DeletePvc { .. }
        | Action::CreateJob(_)
        | Action::DeleteJob { .. }
        | Action::RunRule { .. }
        | Action::PatchBackupStatus(_)
        | Action::PatchRestoreStatus(_)
        | Action::PatchRepositoryStatus(_)
        | Action::CreateScheduledRun(_)
        | Action::DeleteScheduledRun { .. }
        | Action::PatchScheduleStatus(_)
        | Action::RequeueAfter(_) => Ok(()),
    }
}
