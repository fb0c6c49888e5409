//! `cairn job capture-resources`: writes the configuration of an ApplicationBackup's
//! namespaces as a manifest tree in a staging directory and backs it up as one snapshot.
//! The controller reads the outcome; this job does not patch the ApplicationBackup.

use super::apiobjects::{discover, list_objects, Failure};
use super::{BackupJobRequest, Engine, JobParams, Mirror};
use crate::crd::{ApplicationBackup, ApplicationBackupSpec};
use crate::protocol::JobOutcome;
use crate::resources::capture::{annotate_pvc, skip_object, skip_type, strip};
use crate::resources::closure::{pod_closure, ObjectKey};
use crate::resources::layout::{
    write_manifest, write_object, ApplicationManifest, ManifestVolume, MANIFEST_VERSION,
};
use crate::resources::{labels_of, name_of, selector_matches, KindFilter, ResourceType};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tag naming the ApplicationBackup a resource snapshot belongs to.
pub const TAG_APPLICATION_BACKUP: &str = "cairn.io/application-backup";
/// Tag saying what a snapshot holds (`resources`).
pub const TAG_CONTENT: &str = "cairn.io/content";

pub(super) async fn run(
    params: &JobParams,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> (JobOutcome, Mirror) {
    match capture(params, engine, client).await {
        Ok(done) => done,
        Err(f) => (
            JobOutcome {
                succeeded: false,
                message: f.message,
                retryable: f.retryable,
                ..Default::default()
            },
            Mirror::Nothing,
        ),
    }
}

/// The staging directory of a job: `<base>/cairn-<what>-<namespace>-<name>`, emptied.
pub(super) fn staging(
    base: Option<&Path>,
    what: &str,
    ns: &str,
    name: &str,
) -> Result<PathBuf, Failure> {
    let dir = base
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("cairn-{what}-{ns}-{name}"));
    let fail = |e: std::io::Error| {
        Failure::fatal(format!(
            "staging directory {}: {e} (set TMPDIR or --staging-dir to a writable directory)",
            dir.display()
        ))
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(fail)?;
    }
    std::fs::create_dir_all(&dir).map_err(fail)?;
    Ok(dir)
}

async fn capture(
    params: &JobParams,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<(JobOutcome, Mirror), Failure> {
    let (Some(ns), Some(name)) = (
        params.namespace.as_deref(),
        params.application_backup.as_deref(),
    ) else {
        return Err(Failure::fatal(
            "capture-resources needs --namespace and --application-backup".into(),
        ));
    };
    let backups: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
    let backup = backups
        .get(name)
        .await
        .map_err(|e| Failure::api(&format!("reading ApplicationBackup {ns}/{name}"), e))?;
    let status = backup.status.clone().unwrap_or_default();
    let namespaces = if status.namespaces.is_empty() {
        resolve_namespaces(&client, &backup.spec).await?
    } else {
        status.namespaces.clone()
    };
    let types = discover(&client).await?;
    let root = staging(params.staging_dir.as_deref(), "capture", ns, name)?;
    let volumes: BTreeMap<(String, String), (String, Option<String>)> = status
        .volumes
        .iter()
        .filter_map(|v| {
            Some((
                (v.namespace.clone(), v.persistent_volume_claim.clone()),
                (v.snapshot_id.clone()?, v.volume_snapshot_name.clone()),
            ))
        })
        .collect();
    let mut count = 0u32;
    let mut unreadable = Vec::new();
    let namespaces_api: Api<Namespace> = Api::all(client.clone());
    let filter = KindFilter::new(
        &backup.spec.included_resources,
        &backup.spec.excluded_resources,
    );
    let ns_type = ResourceType::new("", "v1", "Namespace", "namespaces", false);
    let mut captured_pvcs = BTreeMap::new();
    for target in &namespaces {
        // The Namespace itself, so a restore recreates its labels and annotations.
        if !filter.excludes(&ns_type) {
            let object = namespaces_api
                .get(target)
                .await
                .map_err(|e| Failure::api(&format!("reading Namespace {target}"), e))?;
            let mut v = serde_json::to_value(&object).unwrap_or_default();
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Namespace");
            let v = strip(&ns_type, &v);
            write(&root, &v)?;
            count += 1;
        }
        let mut listed: Vec<(ResourceType, Value)> = Vec::new();
        for (t, listable) in &types {
            if !t.namespaced || !listable || skip_type(t).is_some() {
                continue;
            }
            // Pods are listed for the podSelector even when not captured.
            let needed = filter.allows(t)
                || (backup.spec.pod_selector.is_some() && t.group.is_empty() && t.kind == "Pod");
            if !needed {
                continue;
            }
            match list_objects(&client, t, target).await {
                Ok(objects) => listed.extend(objects.into_iter().map(|o| (t.clone(), o))),
                Err(e) => match super::apiobjects::object_error(&e) {
                    // Forbidden or not listable after all: the capture goes on without it.
                    Some(why) => {
                        unreadable.push(format!("{}.{} in {target}: {why}", t.plural, t.group))
                    }
                    None => {
                        return Err(Failure::api(
                            &format!("listing {} in {target}", t.plural),
                            e,
                        ))
                    }
                },
            }
        }
        let reached: Option<BTreeSet<ObjectKey>> = backup
            .spec
            .pod_selector
            .as_ref()
            .map(|sel| pod_closure(sel, &listed));
        for (t, object) in &listed {
            if !filter.allows(t) || skip_object(t, object).is_some() {
                continue;
            }
            if let Some(sel) = &backup.spec.label_selector {
                if !selector_matches(sel, &labels_of(object)) {
                    continue;
                }
            }
            if let Some(keys) = &reached {
                if !keys.contains(&ObjectKey::of(t, object)) {
                    continue;
                }
            }
            let mut clean = strip(t, object);
            if t.group.is_empty() && t.kind == "PersistentVolumeClaim" {
                let key = (target.clone(), name_of(object).to_string());
                if let Some((id, vs)) = volumes.get(&key) {
                    annotate_pvc(&mut clean, id, vs.as_deref());
                }
                captured_pvcs.insert(key, clean.clone());
            }
            write(&root, &clean)?;
            count += 1;
        }
    }
    let manifest = ApplicationManifest {
        version: MANIFEST_VERSION,
        name: name.to_string(),
        namespace: ns.to_string(),
        spec: backup.spec.clone(),
        namespaces: namespaces.clone(),
        volumes: status
            .volumes
            .iter()
            .map(|v| {
                let pvc =
                    captured_pvcs.get(&(v.namespace.clone(), v.persistent_volume_claim.clone()));
                ManifestVolume {
                    namespace: v.namespace.clone(),
                    persistent_volume_claim: v.persistent_volume_claim.clone(),
                    snapshot_id: v.snapshot_id.clone(),
                    volume_snapshot_name: v.volume_snapshot_name.clone(),
                    storage_class_name: pvc
                        .and_then(|p| p["spec"]["storageClassName"].as_str().map(str::to_string)),
                    size: pvc.and_then(|p| {
                        p.pointer("/spec/resources/requests/storage")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    }),
                }
            })
            .collect(),
        resource_count: count,
    };
    write_manifest(&root, &manifest).map_err(|e| Failure::fatal(e.to_string()))?;

    let mut tags = backup.spec.tags.clone();
    tags.insert(TAG_APPLICATION_BACKUP.into(), name.to_string());
    tags.insert(TAG_CONTENT.into(), "resources".into());
    let req = BackupJobRequest {
        repository: params.repository.clone(),
        source: root.clone(),
        device: false,
        source_name: format!("resources:{ns}/{name}"),
        tags,
        storage_class: None,
        exclude_config: None,
        checkpoint_interval: params.checkpoint_interval,
        limit_read: None,
    };
    let result = {
        let req = req.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| engine.backup(&req, &|_| {})))
            .await
            .map_err(|e| Failure::fatal(format!("the engine stopped unexpectedly: {e}")))?
    };
    let _ = std::fs::remove_dir_all(&root);
    let r = result.map_err(|e| Failure {
        message: e.message,
        retryable: e.retryable,
    })?;
    let mut message = format!(
        "captured {count} resources from {} namespace(s) into snapshot {}",
        namespaces.len(),
        r.snapshot_id
    );
    if !unreadable.is_empty() {
        message.push_str(&format!("; not readable: {}", unreadable.join("; ")));
    }
    let summary = r.summary_for(&req);
    Ok((
        JobOutcome {
            succeeded: true,
            snapshot_id: Some(r.snapshot_id),
            bytes_done: r.bytes_done,
            total_bytes: r.total_bytes,
            message,
            resource_count: Some(count),
            ..Default::default()
        },
        Mirror::One(summary),
    ))
}

fn write(root: &Path, object: &Value) -> Result<(), Failure> {
    write_object(root, object)
        .map(drop)
        .map_err(|e| Failure::fatal(format!("writing the manifest tree: {e}")))
}

/// `includedNamespaces` plus the namespaces `namespaceSelector` selects, minus
/// `excludedNamespaces`. A named namespace that does not exist is an error.
async fn resolve_namespaces(
    client: &kube::Client,
    spec: &ApplicationBackupSpec,
) -> Result<Vec<String>, Failure> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut out = BTreeSet::new();
    for ns in &spec.included_namespaces {
        match api.get_opt(ns).await {
            Ok(Some(_)) => {
                out.insert(ns.clone());
            }
            Ok(None) => {
                return Err(Failure::fatal(format!(
                    "namespace {ns} named in includedNamespaces does not exist: create it or remove it from the ApplicationBackup"
                )))
            }
            Err(e) => return Err(Failure::api(&format!("reading Namespace {ns}"), e)),
        }
    }
    if let Some(sel) = &spec.namespace_selector {
        let all = api
            .list(&ListParams::default())
            .await
            .map_err(|e| Failure::api("listing namespaces", e))?;
        for ns in all.items {
            if selector_matches(sel, &ns.labels().clone()) {
                out.insert(ns.name_any());
            }
        }
    }
    for ns in &spec.excluded_namespaces {
        out.remove(ns);
    }
    if out.is_empty() {
        return Err(Failure::fatal(
            "the ApplicationBackup selects no namespace: set includedNamespaces or a namespaceSelector that matches".into(),
        ));
    }
    Ok(out.into_iter().collect())
}
