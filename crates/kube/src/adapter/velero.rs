//! Observing and acting for Velero's DataUploads and DataDownloads: reads what
//! [`crate::controller::decide_data_upload`] and [`crate::controller::decide_data_download`]
//! look at, and executes the [`VeleroAction`]s they return. No decisions here.

use super::observe::{job_info, running_jobs, snapshot_info};
use super::{api_err, volume_snapshot_resource, AdapterError, Target};
use crate::controller::{
    job_name as objects_job_name, DataDownloadObserved, DataUploadObserved, JobKind, SecretSync,
    SnapshotContentInfo, VeleroAction, VeleroContext, LABEL_DOWNLOAD,
};
use crate::velero::{parse_node_agent_config, BackupStorageLocation, DataDownload, DataUpload};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::ByteString;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The VolumeSnapshotContent API resource.
fn content_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
    ))
}

fn content_info(object: DynamicObject) -> SnapshotContentInfo {
    let text = |p: &str| {
        object
            .data
            .pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    SnapshotContentInfo {
        snapshot_handle: text("/status/snapshotHandle"),
        driver: text("/spec/driver").unwrap_or_default(),
        class: text("/spec/volumeSnapshotClassName"),
        deletion_policy: text("/spec/deletionPolicy").unwrap_or_default(),
        name: object.name_any(),
    }
}

async fn location(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BackupStorageLocation>, AdapterError> {
    Api::<BackupStorageLocation>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(api_err(format!(
            "reading BackupStorageLocation {ns}/{name}"
        )))
}

/// Which of the Secret keys the Job Secrets come from exist (read only in Prepared, just
/// before the Job is created).
async fn secret_keys(
    client: &kube::Client,
    location: Option<&BackupStorageLocation>,
    v: &VeleroContext,
    phase: &str,
    deleting: bool,
) -> Result<BTreeMap<String, bool>, AdapterError> {
    let mut out = BTreeMap::new();
    if phase != crate::velero::phase::PREPARED && !deleting {
        return Ok(out);
    }
    for source in crate::controller::secret_sources(location, v) {
        let present = secret_key(client, &source).await?.is_ok();
        out.insert(crate::controller::secret_key_id(&source), present);
    }
    Ok(out)
}

/// Observes everything the DataUpload decision needs. `node_agent_config` names the node
/// agent ConfigMap in Velero's namespace (None: no backupPVC settings).
pub async fn observe_data_upload(
    client: &kube::Client,
    du: &DataUpload,
    v: &VeleroContext,
    node_agent_config: Option<&str>,
) -> Result<DataUploadObserved, AdapterError> {
    let name = du.name_any();
    let status = du.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let terminal = crate::velero::phase::is_terminal(&phase);
    let backup_pvc_config = match node_agent_config {
        Some(cm) if !terminal => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &v.velero_namespace);
            match api.get_opt(cm).await.map_err(api_err(format!(
                "reading ConfigMap {}/{cm}",
                v.velero_namespace
            )))? {
                Some(c) => parse_node_agent_config(&c.data.unwrap_or_default())
                    .map_err(|e| format!("ConfigMap {}/{cm}: {e}", v.velero_namespace)),
                None => Ok(BTreeMap::new()),
            }
        }
        _ => Ok(BTreeMap::new()),
    };
    let storage_classes = if terminal {
        Vec::new()
    } else {
        Api::<StorageClass>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing StorageClasses"))?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect()
    };
    let source_ns = &du.spec.source_namespace;
    let vs_name = du
        .spec
        .csi_snapshot
        .as_ref()
        .map(|c| c.volume_snapshot.clone())
        .unwrap_or_default();
    let snapshots = |ns: &str| {
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &volume_snapshot_resource())
    };
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &content_resource());
    let source = if vs_name.is_empty() {
        None
    } else {
        snapshots(source_ns)
            .get_opt(&vs_name)
            .await
            .map_err(api_err(format!(
                "reading VolumeSnapshot {source_ns}/{vs_name}"
            )))?
    };
    let source_content_name = source
        .as_ref()
        .and_then(|s| s.data.pointer("/status/boundVolumeSnapshotContentName"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let source_content = match &source_content_name {
        Some(c) => contents
            .get_opt(c)
            .await
            .map_err(api_err(format!("reading VolumeSnapshotContent {c}")))?
            .map(content_info),
        None => None,
    };
    let backup_snapshot = snapshots(&v.cairn_namespace)
        .get_opt(&name)
        .await
        .map_err(api_err(format!(
            "reading VolumeSnapshot {}/{name}",
            v.cairn_namespace
        )))?
        .map(snapshot_info);
    let backup_content_exists = contents
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading VolumeSnapshotContent {name}")))?
        .is_some();
    let backup_pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &v.cairn_namespace)
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading PVC {}/{name}", v.cairn_namespace)))?;
    let backup_pvc_exists = backup_pvc.is_some();
    let pending = backup_pvc
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .is_some_and(|s| s.phase.as_deref() == Some("Pending"));
    let backup_pvc_failure = match (pending, &backup_pvc) {
        (true, Some(pvc)) => provisioning_failure(client, pvc).await?,
        _ => None,
    };
    let job = objects_job_name(&name, JobKind::Backup.as_str());
    let forget_job = objects_job_name(&name, "forget");
    let deleting = du.metadata.deletion_timestamp.is_some();
    let location = location(
        client,
        &v.velero_namespace,
        &du.spec.backup_storage_location,
    )
    .await?;
    Ok(DataUploadObserved {
        upload: du.clone(),
        secret_keys: secret_keys(client, location.as_ref(), v, &phase, deleting).await?,
        forget_job: match deleting {
            true => job_info(client, &v.cairn_namespace, Some(&forget_job)).await?,
            false => None,
        },
        location,
        backup_pvc_config,
        storage_classes,
        source_snapshot: source.map(snapshot_info),
        source_content,
        backup_snapshot,
        backup_content_exists,
        backup_pvc_exists,
        backup_pvc_failure,
        job: job_info(client, &v.cairn_namespace, Some(&job)).await?,
        running_backup_jobs: if terminal {
            0
        } else {
            running_jobs(client, JobKind::Backup).await?
        },
    })
}

/// Observes everything the DataDownload decision needs.
pub async fn observe_data_download(
    client: &kube::Client,
    dd: &DataDownload,
    v: &VeleroContext,
) -> Result<DataDownloadObserved, AdapterError> {
    let name = dd.name_any();
    let phase = dd
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let terminal = crate::velero::phase::is_terminal(&phase);
    let target = &dd.spec.target_volume;
    let target_pvc = if target.pvc.is_empty() || target.namespace.is_empty() {
        None
    } else {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &target.namespace)
            .get_opt(&target.pvc)
            .await
            .map_err(api_err(format!(
                "reading PVC {}/{}",
                target.namespace, target.pvc
            )))?
    };
    let restore_pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &v.cairn_namespace)
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading PVC {}/{name}", v.cairn_namespace)))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let bound = restore_pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.volume_name.clone());
    let restored_pv = match bound {
        Some(pv) => pvs
            .get_opt(&pv)
            .await
            .map_err(api_err(format!("reading PersistentVolume {pv}")))?,
        None if !terminal => pvs
            .list(&ListParams::default().labels(&format!(
                "{LABEL_DOWNLOAD}={}",
                crate::controller::label_value(&name)
            )))
            .await
            .map_err(api_err("listing restored PersistentVolumes"))?
            .items
            .into_iter()
            .next(),
        None => None,
    };
    let job = objects_job_name(&name, JobKind::Restore.as_str());
    let location = location(
        client,
        &v.velero_namespace,
        &dd.spec.backup_storage_location,
    )
    .await?;
    Ok(DataDownloadObserved {
        download: dd.clone(),
        secret_keys: secret_keys(client, location.as_ref(), v, &phase, false).await?,
        location,
        target_pvc,
        restore_pvc,
        restored_pv,
        job: job_info(client, &v.cairn_namespace, Some(&job)).await?,
        running_restore_jobs: if terminal {
            0
        } else {
            running_jobs(client, JobKind::Restore).await?
        },
    })
}

/// Merge-patches the status fields that changed between `old` and `new` of a Velero
/// object; fields cairn does not model are never sent.
async fn patch_velero_status(
    client: &kube::Client,
    v: &VeleroContext,
    kind: &str,
    target: &Target,
    new: Value,
) -> Result<(), AdapterError> {
    let body = super::status_diff_patch(&target.old_status, &new);
    if body["status"].as_object().is_some_and(|m| m.is_empty()) {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &v.velero_namespace,
        &crate::velero::resource(kind),
    );
    api.patch_status(&target.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(api_err(format!(
            "patching {kind} {}/{} status",
            v.velero_namespace, target.name
        )))?;
    if let Some(to) = new.get("phase").and_then(Value::as_str) {
        if target.old_status.get("phase").and_then(Value::as_str) != Some(to) {
            let message = new.get("message").and_then(Value::as_str);
            tracing::info!(kind, to, message, "phase changed");
        }
    }
    Ok(())
}

/// Executes `actions` for the Velero object `target` (in Velero's namespace); generic
/// actions run in cairn's namespace. Returns the shortest requeue asked for.
pub async fn execute_velero(
    client: &kube::Client,
    v: &VeleroContext,
    target: &Target,
    actions: &[VeleroAction],
) -> Result<Option<Duration>, AdapterError> {
    let cairn = Target {
        namespace: v.cairn_namespace.clone(),
        name: target.name.clone(),
        old_status: Value::Null,
    };
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &content_resource());
    let mut requeue: Option<Duration> = None;
    for action in actions {
        match action {
            VeleroAction::Kube(a) => {
                if let Some(d) = super::execute(client, &cairn, std::slice::from_ref(a)).await? {
                    requeue = Some(requeue.map_or(d, |r| r.min(d)));
                }
            }
            VeleroAction::PatchUploadStatus(s) => {
                let new = serde_json::to_value(s).unwrap_or_default();
                patch_velero_status(client, v, "DataUpload", target, new).await?;
            }
            VeleroAction::PatchDownloadStatus(s) => {
                let new = serde_json::to_value(s).unwrap_or_default();
                patch_velero_status(client, v, "DataDownload", target, new).await?;
            }
            VeleroAction::CreateSnapshotContent(object) => {
                let object: DynamicObject = serde_json::from_value(object.clone())
                    .map_err(|e| AdapterError::Convert(e.to_string()))?;
                match contents.create(&PostParams::default(), &object).await {
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    other => {
                        other.map(drop).map_err(api_err(format!(
                            "creating VolumeSnapshotContent {}",
                            object.name_any()
                        )))?;
                    }
                }
            }
            VeleroAction::RetainSnapshotContent(name) => {
                let patch = json!({ "spec": { "deletionPolicy": "Retain" } });
                match contents
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    other => {
                        other
                            .map(drop)
                            .map_err(api_err(format!("retaining VolumeSnapshotContent {name}")))?;
                    }
                }
            }
            VeleroAction::DeleteSnapshotContent(name) => {
                match contents.delete(name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    other => {
                        other
                            .map(drop)
                            .map_err(api_err(format!("deleting VolumeSnapshotContent {name}")))?;
                    }
                }
            }
            VeleroAction::SyncSecrets(sync) => sync_secrets(client, v, sync).await?,
            VeleroAction::PatchPersistentVolume { name, patch } => {
                Api::<PersistentVolume>::all(client.clone())
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(api_err(format!("patching PersistentVolume {name}")))?;
            }
            VeleroAction::SetUploadFinalizers {
                finalizers,
                resource_version,
                warning,
            } => {
                if let Some(warning) = warning {
                    tracing::warn!(data_upload = %target.name, "{warning}");
                }
                let api: Api<DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    &v.velero_namespace,
                    &crate::velero::resource("DataUpload"),
                );
                let body = json!({"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}});
                api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .map_err(api_err(format!(
                        "setting the finalizers of DataUpload {}/{}",
                        v.velero_namespace, target.name
                    )))?;
            }
        }
    }
    Ok(requeue)
}

async fn secret_key(
    client: &kube::Client,
    (ns, name, key): &(String, String, String),
) -> Result<Result<String, String>, AdapterError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading Secret {ns}/{name}")))?
    else {
        return Ok(Err(format!("Secret {ns}/{name} does not exist")));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        });
    Ok(value.ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}")))
}

/// Writes (creates or replaces the data of) Secret `name` in `ns`.
async fn put_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), AdapterError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, ByteString> = data
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/created-by".to_string(),
                    "cairn".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({ "data": data });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(api_err(format!("updating Secret {ns}/{name}")))
        }
        other => other
            .map(drop)
            .map_err(api_err(format!("creating Secret {ns}/{name}"))),
    }
}

/// Writes the password and credentials Secrets a Velero Job mounts. A missing Secret or
/// key is not an API failure: the Job's pod then cannot start and the decision reports
/// why (its start timeout), so only a warning is logged here.
async fn sync_secrets(
    client: &kube::Client,
    v: &VeleroContext,
    sync: &SecretSync,
) -> Result<(), AdapterError> {
    match secret_key(client, &sync.password_from).await? {
        Ok(password) => {
            let data = [("password".to_string(), password)].into();
            put_secret(client, &v.cairn_namespace, &sync.password_name, data).await?;
        }
        Err(why) => tracing::warn!(%why, "no repository password for the Velero job"),
    }
    if let Some((name, from)) = &sync.credentials {
        match secret_key(client, from).await? {
            Ok(file) => match crate::velero::repository::aws_credentials(&file, "default") {
                Ok(env) => put_secret(client, &v.cairn_namespace, name, env).await?,
                Err(why) => tracing::warn!(%why, secret = %from.1, "unusable credentials file"),
            },
            Err(why) => tracing::warn!(%why, "no storage credentials for the Velero job"),
        }
    }
    Ok(())
}

/// The message of the provisioner's `ProvisioningFailed` Warning about this very claim (its
/// uid), if it recorded one: the claim will not bind however long one waits.
async fn provisioning_failure(
    client: &kube::Client,
    pvc: &PersistentVolumeClaim,
) -> Result<Option<String>, AdapterError> {
    let (Some(ns), Some(uid)) = (
        pvc.metadata.namespace.as_deref(),
        pvc.metadata.uid.as_deref(),
    ) else {
        return Ok(None);
    };
    let name = pvc.name_any();
    let selector = format!("involvedObject.name={name},reason=ProvisioningFailed,type=Warning");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .map_err(api_err(format!("listing the events of PVC {ns}/{name}")))?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))
        .and_then(|e| e.message))
}
