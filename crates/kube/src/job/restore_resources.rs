//! `cairn job restore-resources --stage configuration|workloads`: restores an application's
//! resource snapshot into a staging directory, plans it, and creates the stage's objects.
//! The configuration stage hands PVCs with repository data to the controller as
//! `status.volumes` instead of creating them. Counts and failures are added to the
//! ApplicationRestore's status.

use super::apiobjects::{discover, dynamic_api, object_error, Failure};
use super::capture::staging;
use super::{Engine, JobParams, RestoreJobRequest};
use crate::controller::{label_value, LABEL_APP_RESTORE};
use crate::crd::{
    ApplicationBackup, ApplicationRestore, ExistingResourcePolicy, ResourceOutcome, RestoreVolume,
};
use crate::protocol::JobOutcome;
use crate::resources::layout::read_tree;
use crate::resources::plan::{plan, PlannedObject, RestoreOptions, Stage};
use crate::resources::KindFilter;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use std::sync::Arc;

/// At most this many entries are kept in `status.failures`; the counts stay exact.
pub const MAX_FAILURES: usize = 100;

/// What one stage did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Objects created.
    pub created: u32,
    /// Objects replaced (policy `update`).
    pub updated: u32,
    /// Objects left as they were.
    pub skipped: u32,
    /// Objects not restored.
    pub failed: u32,
    /// Every object not created, and why.
    pub outcomes: Vec<ResourceOutcome>,
}

pub(super) async fn run(
    params: &JobParams,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> JobOutcome {
    match restore(params, engine, client).await {
        Ok(outcome) => outcome,
        Err(f) => JobOutcome {
            succeeded: false,
            message: f.message,
            retryable: f.retryable,
            ..Default::default()
        },
    }
}

async fn restore(
    params: &JobParams,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<JobOutcome, Failure> {
    let (Some(ns), Some(name), Some(stage)) = (
        params.namespace.as_deref(),
        params.application_restore.as_deref(),
        params.stage,
    ) else {
        return Err(Failure::fatal(
            "restore-resources needs --namespace, --application-restore and --stage".into(),
        ));
    };
    let restores: Api<ApplicationRestore> = Api::namespaced(client.clone(), ns);
    let ar = restores
        .get(name)
        .await
        .map_err(|e| Failure::api(&format!("reading ApplicationRestore {ns}/{name}"), e))?;
    let snapshot = resolve_snapshot(&client, ns, &ar).await?;
    let root = staging(
        params.staging_dir.as_deref(),
        &format!("restore-{}", stage.as_str()),
        ns,
        name,
    )?;
    let req = RestoreJobRequest {
        repository: params.repository.clone(),
        snapshot: snapshot.clone(),
        target: root.clone(),
        device: false,
        include_paths: Vec::new(),
    };
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| engine.restore(&req, &|_| {})))
        .await
        .map_err(|e| Failure::fatal(format!("the engine stopped unexpectedly: {e}")))?
        .map_err(|e| Failure {
            message: format!("restoring resource snapshot {snapshot}: {}", e.message),
            retryable: e.retryable,
        })?;
    let captured = read_tree(&root).map_err(|e| {
        Failure::fatal(format!(
            "snapshot {snapshot} is not an application resource snapshot: {e}"
        ))
    })?;
    let _ = std::fs::remove_dir_all(&root);
    let types: Vec<_> = discover(&client)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let opts = RestoreOptions {
        namespace_mapping: ar.spec.namespace_mapping.clone(),
        storage_class_mapping: ar.spec.storage_class_mapping.clone(),
        filter: KindFilter::new(&ar.spec.included_resources, &ar.spec.excluded_resources),
    };
    let plan = plan(&captured, &types, &opts);
    let mut counts = StageCounts::default();
    if stage == Stage::Configuration {
        // Objects no stage can restore are reported once, by the first.
        for f in &plan.failures {
            counts.failed += 1;
            counts.outcomes.push(f.clone());
        }
    }
    let mut volumes = Vec::new();
    for p in plan.stage(stage) {
        if let Some(volume) = &p.volume {
            volumes.push(volume.clone());
            continue;
        }
        let restored_by = label_value(&format!("{ns}.{name}"));
        match apply(&client, p, ar.spec.existing_resource_policy, &restored_by).await? {
            Applied::Created => counts.created += 1,
            Applied::Updated => counts.updated += 1,
            Applied::Skipped(why) => {
                counts.skipped += 1;
                counts.outcomes.push(p.outcome("Skipped", why));
            }
            Applied::Failed(why) => {
                counts.failed += 1;
                counts.outcomes.push(p.outcome("Failed", why));
            }
        }
    }
    let existing = ar.status.clone().unwrap_or_default();
    let patch = status_patch(
        &existing,
        &counts,
        (stage == Stage::Configuration).then_some(volumes.as_slice()),
    );
    restores
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            Failure::api(
                &format!("updating the status of ApplicationRestore {ns}/{name}"),
                e,
            )
        })?;
    let handled = counts.created + counts.updated + counts.skipped + counts.failed;
    let mut message = format!(
        "{}: {} created, {} updated, {} skipped, {} failed",
        stage.as_str(),
        counts.created,
        counts.updated,
        counts.skipped,
        counts.failed
    );
    if stage == Stage::Configuration {
        message.push_str(&format!(
            "; {} volume(s) to fill from the repository",
            volumes.len()
        ));
    }
    Ok(JobOutcome {
        succeeded: true,
        message,
        resource_count: Some(handled),
        ..Default::default()
    })
}

/// The resource snapshot: `spec.source.snapshotId`, or the named ApplicationBackup's.
async fn resolve_snapshot(
    client: &kube::Client,
    ns: &str,
    ar: &ApplicationRestore,
) -> Result<String, Failure> {
    if let Some(id) = ar
        .spec
        .source
        .snapshot_id
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        return Ok(id.to_string());
    }
    let Some(backup) = ar.spec.source.application_backup.as_deref() else {
        return Err(Failure::fatal(
            "spec.source names neither applicationBackup nor snapshotId: set one".into(),
        ));
    };
    let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
    let ab = api
        .get(backup)
        .await
        .map_err(|e| Failure::api(&format!("reading ApplicationBackup {ns}/{backup}"), e))?;
    ab.status
        .and_then(|s| s.resource_snapshot_id)
        .ok_or_else(|| {
            Failure::fatal(format!(
                "ApplicationBackup {ns}/{backup} has no resource snapshot (status.resourceSnapshotId): restore from a Completed or PartiallyFailed backup"
            ))
        })
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Created.
    Created,
    /// It existed and was replaced.
    Updated,
    /// It existed and was left alone; why.
    Skipped(String),
    /// Not restored; why.
    Failed(String),
}

/// Creates one object, labelled `cairn.io/application-restore=<namespace>.<name>` so what
/// a restore made can be listed (`kubectl get all -l ...`); an existing one is skipped or
/// replaced by `policy`. Err only when the API server cannot be reached (the stage stops
/// and the job is retried).
async fn apply(
    client: &kube::Client,
    p: &PlannedObject,
    policy: ExistingResourcePolicy,
    restored_by: &str,
) -> Result<Applied, Failure> {
    let mut labelled = p.object.clone();
    if let Some(meta) = labelled.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(LABEL_APP_RESTORE.to_string(), json!(restored_by));
        }
    }
    let object: DynamicObject = match serde_json::from_value(labelled.clone()) {
        Ok(o) => o,
        Err(e) => return Ok(Applied::Failed(format!("not a valid object: {e}"))),
    };
    let api = dynamic_api(client, &p.resource, p.namespace.as_deref());
    let unreachable = |e: kube::Error| {
        Failure::api(
            &format!("creating {} {}", p.resource.group_kind(), p.name),
            e,
        )
    };
    let exists = match api.create(&PostParams::default(), &object).await {
        Ok(_) => return Ok(Applied::Created),
        Err(kube::Error::Api(s)) if s.code == 409 => s.message,
        Err(e) => {
            return match object_error(&e) {
                Some(why) => Ok(Applied::Failed(why)),
                None => Err(unreachable(e)),
            }
        }
    };
    if policy == ExistingResourcePolicy::Skip {
        return Ok(Applied::Skipped(format!(
            "already exists; existingResourcePolicy is skip ({exists})"
        )));
    }
    let live = match api.get(&p.name).await {
        Ok(live) => live,
        Err(e) => {
            return match object_error(&e) {
                Some(why) => Ok(Applied::Failed(format!(
                    "exists but could not be read: {why}"
                ))),
                None => Err(unreachable(e)),
            }
        }
    };
    let live_value = serde_json::to_value(&live).unwrap_or_default();
    let replacement = replacement(&labelled, &live_value);
    let replacement: DynamicObject = match serde_json::from_value(replacement) {
        Ok(o) => o,
        Err(e) => return Ok(Applied::Failed(format!("not a valid object: {e}"))),
    };
    match api
        .replace(&p.name, &PostParams::default(), &replacement)
        .await
    {
        Ok(_) => Ok(Applied::Updated),
        Err(e) => match object_error(&e) {
            Some(why) => Ok(Applied::Failed(format!(
                "exists and could not be updated (an immutable field differs?): {why}"
            ))),
            None => Err(unreachable(e)),
        },
    }
}

/// The object that replaces `live` under policy `update`: the captured one with the live
/// resourceVersion, and the fields the cluster allocated (a PVC's `volumeName`, a Service's
/// `clusterIP(s)`) kept, since they cannot change.
pub fn replacement(captured: &Value, live: &Value) -> Value {
    let mut o = captured.clone();
    o["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
    for path in ["/spec/volumeName", "/spec/clusterIP", "/spec/clusterIPs"] {
        if let (Some(v), None) = (live.pointer(path), o.pointer(path)) {
            let field = path.rsplit('/').next().unwrap_or_default();
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert(field.to_string(), v.clone());
            }
        }
    }
    o
}

/// The status merge patch: counts added to the existing ones, failures appended up to
/// [`MAX_FAILURES`], and (configuration stage) the volumes to fill merged with those the
/// controller already works on, by namespace and PVC.
pub fn status_patch(
    existing: &crate::crd::ApplicationRestoreStatus,
    counts: &StageCounts,
    volumes: Option<&[RestoreVolume]>,
) -> Value {
    let mut failures = existing.failures.clone();
    for o in &counts.outcomes {
        if failures.len() >= MAX_FAILURES {
            break;
        }
        failures.push(o.clone());
    }
    let mut patch = json!({ "status": {
        "created": existing.created + counts.created,
        "updated": existing.updated + counts.updated,
        "skipped": existing.skipped + counts.skipped,
        "failed": existing.failed + counts.failed,
        "failures": failures,
    }});
    if let Some(volumes) = volumes {
        let merged: Vec<RestoreVolume> = volumes
            .iter()
            .map(|v| {
                existing
                    .volumes
                    .iter()
                    .find(|e| {
                        e.namespace == v.namespace
                            && e.persistent_volume_claim == v.persistent_volume_claim
                    })
                    .cloned()
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        patch["status"]["volumes"] = json!(merged);
    }
    patch
}
