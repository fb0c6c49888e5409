//! Decisions for an ApplicationBackup: resolve namespaces and volumes, run the pre
//! commands of every rule in every matching pod, cut every VolumeSnapshot, run the post
//! commands, hand each volume to a child VolumeBackup, then capture the configuration.
//!
//! Invariants: post commands run in every pod whose pre commands succeeded, whatever
//! happens next (a failed pre command elsewhere, a failed snapshot, a cancel); no snapshot
//! is cut before every pre command succeeded; a snapshot not handed to a child is deleted
//! when the backup stops; the capture Job starts only once every child is terminal.

use super::backup::failure_reason;
use super::objects::{self, JobKind, JobSpec};
use super::{
    human, repository_refusal, time, Action, DecideContext, HookPod, HookRun, HookSide, JobInfo,
    Plan, SnapshotClassInfo, SnapshotInfo, BLOCKED_POLL, POLL,
};
use crate::config::BACKUP_KEYS;
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase as Phase, ApplicationBackupStatus, ApplicationVolume,
    BackupMode, BackupRepository, BackupRule, VolumeBackup, VolumeBackupPhase,
};
use crate::protocol::JobOutcome;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Label on the children (VolumeBackups, VolumeSnapshots) of an ApplicationBackup:
/// `<namespace>.<name>` of the parent (a label value cannot hold `/`), shortened by
/// [`label_value`].
pub const LABEL_APP_BACKUP: &str = "cairn.io/application-backup";
/// Annotation on every child of an ApplicationBackup or ApplicationRestore naming its
/// parent as `<namespace>/<name>` (exact, where the label may be shortened).
pub const ANNOTATION_PARENT: &str = "cairn.io/parent";
/// Finalizer of an ApplicationBackup: its children in other namespaces (which owner
/// references cannot reach) are deleted before it goes.
pub const FINALIZER_CHILDREN: &str = "cairn.io/children";

/// Longest name or label value the controller makes.
const MAX_NAME: usize = 63;

/// `text` if it fits a label value (63 characters), else its start and a hash of all of it.
pub fn label_value(text: &str) -> String {
    short_name(text)
}

/// `text` if it is at most 63 characters, else its first 54 and a hash of all of it, so
/// two long names never collide.
pub fn short_name(text: &str) -> String {
    if text.len() <= MAX_NAME {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_NAME - 9).collect();
    format!(
        "{}-{}",
        cut.trim_end_matches(['-', '.']),
        objects::short_hash(text)
    )
}

/// The parent `(namespace, name)` a child names in its [`ANNOTATION_PARENT`].
pub fn parent_of(meta: &ObjectMeta) -> Option<(String, String)> {
    let value = meta.annotations.as_ref()?.get(ANNOTATION_PARENT)?;
    let (ns, name) = value.split_once('/')?;
    Some((ns.to_string(), name.to_string()))
}

/// One rule reference of the ApplicationBackup, resolved.
#[derive(Clone, Debug)]
pub struct RuleTarget {
    /// Namespace of the rule and its pods.
    pub namespace: String,
    /// BackupRule name.
    pub name: String,
    /// The rule, if it exists.
    pub rule: Option<BackupRule>,
    /// Running pods its selector (or the reference's) matches, by name.
    pub pods: Vec<String>,
}

/// Everything the ApplicationBackup decision looks at.
#[derive(Clone, Debug)]
pub struct ApplicationBackupObserved {
    /// The ApplicationBackup.
    pub backup: ApplicationBackup,
    /// Its BackupRepository, if it exists.
    pub repository: Option<BackupRepository>,
    /// Namespaces `spec.namespaceSelector` matches (empty without one).
    pub selected_namespaces: Vec<String>,
    /// PVCs of the candidate namespaces matching `spec.labelSelector`.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// Pods of the candidate namespaces matching `spec.podSelector` (only with one).
    pub pods: Vec<Pod>,
    /// PersistentVolume name -> CSI driver.
    pub pv_drivers: BTreeMap<String, String>,
    /// All VolumeSnapshotClasses.
    pub snapshot_classes: Vec<SnapshotClassInfo>,
    /// The rules, resolved.
    pub rules: Vec<RuleTarget>,
    /// VolumeSnapshots labelled as this backup's, by `namespace/name`.
    pub snapshots: BTreeMap<String, SnapshotInfo>,
    /// VolumeBackups labelled as this backup's children.
    pub children: Vec<VolumeBackup>,
    /// The capture Job named in the status, if it exists.
    pub job: Option<JobInfo>,
}

/// Decides the next steps for one ApplicationBackup.
pub fn decide_application_backup(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
) -> Vec<Action> {
    let obs = &ApplicationBackupObserved {
        job: super::judged(&obs.job, ctx),
        ..obs.clone()
    };
    let mut plan = Plan::new(obs.backup.status.clone().unwrap_or_default(), ctx.now);
    step(obs, ctx, &mut plan);
    plan.finish()
}

fn step(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    let has_finalizer = ab.finalizers().iter().any(|f| f == FINALIZER_CHILDREN);
    if ab.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            for child in &obs.children {
                let child_ns = child.namespace().unwrap_or_default();
                if child_ns != ns {
                    plan.actions.push(Action::DeleteVolumeBackup {
                        namespace: child_ns,
                        name: child.name_any(),
                    });
                }
            }
            for key in obs.snapshots.keys() {
                if let Some((snap_ns, name)) = key.split_once('/') {
                    if snap_ns != ns {
                        plan.actions.push(Action::DeleteVolumeSnapshot {
                            namespace: snap_ns.into(),
                            name: name.into(),
                        });
                    }
                }
            }
            plan.actions
                .push(Action::SetApplicationBackupFinalizer(false));
        }
        return;
    }
    if !has_finalizer {
        plan.actions
            .push(Action::SetApplicationBackupFinalizer(true));
    }
    if plan.status.phase.is_terminal() {
        return;
    }
    if plan.status.start_time.is_none() {
        plan.status.start_time = Some(time(ctx.now));
    }
    match plan.status.phase {
        Phase::New => new(obs, ctx, plan),
        Phase::RunningPreRules => after_pre(obs, plan),
        Phase::Snapshotting => snapshotting(obs, ctx, plan),
        Phase::RunningPostRules => after_post(obs, plan),
        Phase::Uploading => uploading(obs, ctx, plan),
        Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::Canceled => {}
    }
}

fn new(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    if ab.spec.cancel {
        plan.terminal(Phase::Canceled, None);
        return;
    }
    if let Some(problem) = ctx.config.problems_with(BACKUP_KEYS) {
        plan.condition("ConfigValid", false, "InvalidConfigMap", problem);
        plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    }
    plan.status.conditions.retain(|c| c.type_ != "ConfigValid");
    let Some(repository) = &obs.repository else {
        let why = format!(
            "BackupRepository {:?} does not exist in namespace {ns:?}; create it and create \
             the ApplicationBackup again",
            ab.spec.repository
        );
        plan.terminal(Phase::Failed, Some(why));
        return;
    };
    let namespaces = resolve_namespaces(obs);
    let volumes = resolve_volumes(obs, ctx, &namespaces);
    let volume_namespaces: BTreeSet<&str> = volumes.iter().map(|v| v.namespace.as_str()).collect();
    if let Some(refusal) = volume_namespaces
        .iter()
        .find_map(|n| repository_refusal(repository, n))
    {
        plan.condition(
            "ConfigValid",
            false,
            "RepositoryNotAllowed",
            refusal.clone(),
        );
        plan.terminal(Phase::Failed, Some(refusal));
        return;
    }
    for target in &obs.rules {
        let Some(rule) = &target.rule else {
            let why = format!(
                "BackupRule {:?} not found in namespace {:?}",
                target.name, target.namespace
            );
            plan.terminal(Phase::Failed, Some(why));
            return;
        };
        if target.pods.is_empty() && !(rule.spec.pre.is_empty() && rule.spec.post.is_empty()) {
            let why = format!(
                "BackupRule {}/{} matches no running pod: the application would not be \
                 quiesced; start its pods or fix the pod selector",
                target.namespace, target.name
            );
            plan.terminal(Phase::Failed, Some(why));
            return;
        }
    }
    plan.status.volumes_total = u32::try_from(volumes.len()).unwrap_or(u32::MAX);
    plan.status.namespaces = namespaces;
    plan.status.volumes = volumes;
    let pre = hook_pods(obs, plan, HookSide::Pre);
    if pre.is_empty() {
        cut_snapshots(obs, plan);
    } else {
        plan.status.phase = Phase::RunningPreRules;
        plan.actions.push(Action::RunGroupHooks {
            side: HookSide::Pre,
            pods: pre,
        });
    }
}

/// `includedNamespaces` and the selected ones, minus `excludedNamespaces`; the backup's
/// own namespace when neither names nor a selector are given.
fn resolve_namespaces(obs: &ApplicationBackupObserved) -> Vec<String> {
    let spec = &obs.backup.spec;
    let mut set: BTreeSet<String> = spec.included_namespaces.iter().cloned().collect();
    set.extend(obs.selected_namespaces.iter().cloned());
    if spec.included_namespaces.is_empty() && spec.namespace_selector.is_none() {
        set.insert(obs.backup.namespace().unwrap_or_default());
    }
    set.retain(|n| !spec.excluded_namespaces.contains(n));
    set.into_iter().collect()
}

fn resolve_volumes(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    namespaces: &[String],
) -> Vec<ApplicationVolume> {
    let spec = &obs.backup.spec;
    let mounted: Option<BTreeSet<(String, String)>> = spec.pod_selector.as_ref().map(|_| {
        obs.pods
            .iter()
            .flat_map(|p| {
                let ns = p.namespace().unwrap_or_default();
                p.spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .filter_map(|v| v.persistent_volume_claim.as_ref())
                    .map(move |c| (ns.clone(), c.claim_name.clone()))
            })
            .collect()
    });
    let direct = spec.mode == BackupMode::Direct
        || (spec.mode == BackupMode::Auto && ctx.config.force_direct);
    let mut volumes: Vec<ApplicationVolume> = obs
        .pvcs
        .iter()
        .filter_map(|pvc| {
            let ns = pvc.namespace().unwrap_or_default();
            let name = pvc.name_any();
            if !namespaces.contains(&ns) {
                return None;
            }
            if let Some(m) = &mounted {
                if !m.contains(&(ns.clone(), name.clone())) {
                    return None;
                }
            }
            let driver = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_ref())
                .and_then(|pv| obs.pv_drivers.get(pv))
                .cloned();
            let class = if direct {
                None
            } else {
                driver.as_deref().and_then(|d| class_for(obs, d))
            };
            let failure = (spec.mode == BackupMode::Snapshot && class.is_none()).then(|| {
                format!(
                    "no VolumeSnapshotClass for CSI driver {:?}: name one in \
                     spec.volumeSnapshotClasses, or use mode: Auto or Direct",
                    driver.as_deref().unwrap_or("unknown")
                )
            });
            Some(ApplicationVolume {
                namespace: ns,
                persistent_volume_claim: name,
                driver,
                volume_snapshot_class_name: class,
                phase: failure.as_ref().map(|_| "Failed".to_string()),
                failure_reason: failure,
                ..ApplicationVolume::default()
            })
        })
        .collect();
    volumes.sort_by(|a, b| {
        (&a.namespace, &a.persistent_volume_claim).cmp(&(&b.namespace, &b.persistent_volume_claim))
    });
    volumes
}

/// The class named for `driver` in the spec, else the driver's default (or only) class.
fn class_for(obs: &ApplicationBackupObserved, driver: &str) -> Option<String> {
    if let Some(name) = obs.backup.spec.volume_snapshot_classes.get(driver) {
        return Some(name.clone());
    }
    let mut classes: Vec<&SnapshotClassInfo> = obs
        .snapshot_classes
        .iter()
        .filter(|c| c.driver == driver)
        .collect();
    classes.sort_by_key(|c| !c.is_default);
    match classes.as_slice() {
        [only] => Some(only.name.clone()),
        [first, ..] if first.is_default => Some(first.name.clone()),
        _ => None,
    }
}

/// The pods one side runs in: every pod of every rule with commands on that side; for
/// post, of a rule with pre commands, only the pods where they succeeded.
fn hook_pods(
    obs: &ApplicationBackupObserved,
    plan: &Plan<ApplicationBackupStatus>,
    side: HookSide,
) -> Vec<HookPod> {
    let mut pods: BTreeMap<(String, String), Vec<HookRun>> = BTreeMap::new();
    for target in &obs.rules {
        let Some(rule) = &target.rule else { continue };
        let commands = match side {
            HookSide::Pre => &rule.spec.pre,
            HookSide::Post => &rule.spec.post,
        };
        if commands.is_empty() {
            continue;
        }
        for pod in &target.pods {
            let key = format!("{}/{pod}", target.namespace);
            let pre_ok = plan.status.hooks.pre.get(&key).is_some_and(|o| o.succeeded);
            if side == HookSide::Post && !rule.spec.pre.is_empty() && !pre_ok {
                continue;
            }
            pods.entry((target.namespace.clone(), pod.clone()))
                .or_default()
                .push(HookRun {
                    rule: target.name.clone(),
                    container: rule.spec.container.clone(),
                    commands: commands.clone(),
                });
        }
    }
    pods.into_iter()
        .map(|((namespace, pod), runs)| HookPod {
            namespace,
            pod,
            runs,
        })
        .collect()
}

fn after_pre(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    let pre = hook_pods(obs, plan, HookSide::Pre);
    if plan.status.hooks.pre.is_empty() && !pre.is_empty() && !obs.backup.spec.cancel {
        // The run was interrupted before its results were recorded: run it again.
        plan.actions.push(Action::RunGroupHooks {
            side: HookSide::Pre,
            pods: pre,
        });
        return;
    }
    if obs.backup.spec.cancel || pre_failure(plan).is_some() {
        enter_post(obs, plan);
        return;
    }
    cut_snapshots(obs, plan);
}

fn pre_failure(plan: &Plan<ApplicationBackupStatus>) -> Option<String> {
    plan.status
        .hooks
        .pre
        .iter()
        .find(|(_, o)| !o.succeeded)
        .map(|(pod, o)| format!("pre command failed in pod {pod}: {}", o.message))
}

fn snapshot_name(ab: &ApplicationBackup, pvc: &str) -> String {
    objects::job_name(&child_name(ab, pvc), "snapshot")
}

fn child_name(ab: &ApplicationBackup, pvc: &str) -> String {
    short_name(&format!("{}-{pvc}", ab.name_any()))
}

fn parent_label(ab: &ApplicationBackup) -> String {
    label_value(&format!(
        "{}.{}",
        ab.namespace().unwrap_or_default(),
        ab.name_any()
    ))
}

fn owner(ab: &ApplicationBackup) -> OwnerReference {
    ab.controller_owner_ref(&()).unwrap_or_default()
}

/// Metadata of a child in `child_ns`: the parent's label and annotation, and an owner
/// reference when in the parent's namespace (owner references cannot cross namespaces).
pub(crate) fn child_meta(
    name: &str,
    child_ns: &str,
    parent_ns: &str,
    parent_name: &str,
    label: (&str, String),
    owner: &OwnerReference,
) -> Value {
    let owners = if child_ns == parent_ns {
        json!([owner])
    } else {
        json!([])
    };
    json!({
        "name": name, "namespace": child_ns,
        "labels": { label.0: label.1 },
        "annotations": { ANNOTATION_PARENT: format!("{parent_ns}/{parent_name}") },
        "ownerReferences": owners,
    })
}

/// Creates every VolumeSnapshot of the group at once, then waits for them in Snapshotting.
fn cut_snapshots(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    let mut any = false;
    for v in plan.status.volumes.iter_mut() {
        let Some(class) = v.volume_snapshot_class_name.clone() else {
            continue;
        };
        if v.failure_reason.is_some() {
            continue;
        }
        let name = snapshot_name(ab, &v.persistent_volume_claim);
        let meta = child_meta(
            &name,
            &v.namespace,
            &ns,
            &ab.name_any(),
            (LABEL_APP_BACKUP, parent_label(ab)),
            &owner(ab),
        );
        plan.actions.push(Action::CreateVolumeSnapshot(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": meta,
            "spec": {
                "volumeSnapshotClassName": class,
                "source": { "persistentVolumeClaimName": v.persistent_volume_claim },
            }
        })));
        v.volume_snapshot_name = Some(name);
        any = true;
    }
    if any {
        plan.status.phase = Phase::Snapshotting;
        plan.actions
            .push(Action::RequeueAfter(Duration::from_secs(1)));
    } else {
        enter_post(obs, plan);
    }
}

fn snapshotting(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
) {
    if obs.backup.spec.cancel {
        enter_post(obs, plan);
        return;
    }
    let started = plan
        .status
        .start_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(ctx.now);
    let timeout = ctx.config.snapshot_timeout;
    let mut wait = POLL;
    let mut pending = false;
    let mut created: Vec<Timestamp> = Vec::new();
    for v in plan.status.volumes.iter_mut() {
        let Some(name) = v.volume_snapshot_name.clone() else {
            continue;
        };
        if v.failure_reason.is_some() {
            continue;
        }
        let key = format!("{}/{name}", v.namespace);
        let failure = match obs.snapshots.get(&key) {
            None => Some(format!(
                "VolumeSnapshot {key} disappeared before it was cut"
            )),
            Some(s) if s.error.is_some() => Some(format!(
                "VolumeSnapshot {key} failed: {}",
                s.error.clone().unwrap_or_default()
            )),
            Some(s) if s.cut || s.ready => {
                created.extend(s.created);
                None
            }
            Some(s) => {
                let waited = ctx
                    .now
                    .duration_since(s.created.unwrap_or(started))
                    .unsigned_abs();
                if waited >= timeout {
                    Some(format!(
                        "VolumeSnapshot {key} not cut after {}: check the CSI snapshotter, \
                         or raise SNAPSHOT_TIMEOUT in the ConfigMap",
                        human(timeout)
                    ))
                } else {
                    pending = true;
                    wait = wait.min(timeout - waited);
                    None
                }
            }
        };
        if let Some(why) = failure {
            v.phase = Some("Failed".into());
            v.failure_reason = Some(why);
        }
    }
    if pending {
        plan.actions.push(Action::RequeueAfter(wait));
        return;
    }
    if let (Some(first), Some(last)) = (created.iter().min(), created.iter().max()) {
        let spread = last.duration_since(*first).as_secs_f64();
        plan.status.snapshot_spread_seconds = Some(spread);
    }
    enter_post(obs, plan);
}

fn enter_post(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    plan.status.phase = Phase::RunningPostRules;
    after_post(obs, plan);
}

fn after_post(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    let post = hook_pods(obs, plan, HookSide::Post);
    if plan.status.hooks.post.is_empty() && !post.is_empty() {
        plan.actions.push(Action::RunGroupHooks {
            side: HookSide::Post,
            pods: post,
        });
        return;
    }
    let stop = if obs.backup.spec.cancel {
        Some((Phase::Canceled, None))
    } else {
        pre_failure(plan).map(|why| (Phase::Failed, Some(why)))
    };
    if let Some((phase, why)) = stop {
        delete_group_snapshots(plan, |_| true);
        plan.terminal(phase, why);
        return;
    }
    // Snapshots of volumes that failed already are of no use.
    delete_group_snapshots(plan, |v| v.failure_reason.is_some());
    create_children(obs, plan);
}

fn delete_group_snapshots(
    plan: &mut Plan<ApplicationBackupStatus>,
    which: impl Fn(&ApplicationVolume) -> bool,
) {
    for v in plan.status.volumes.iter_mut() {
        if !which(v) {
            continue;
        }
        if let Some(name) = v.volume_snapshot_name.take() {
            plan.actions.push(Action::DeleteVolumeSnapshot {
                namespace: v.namespace.clone(),
                name,
            });
        }
    }
}

fn create_children(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    for v in plan.status.volumes.iter_mut() {
        if v.failure_reason.is_some() {
            continue;
        }
        let name = child_name(ab, &v.persistent_volume_claim);
        let meta = child_meta(
            &name,
            &v.namespace,
            &ns,
            &ab.name_any(),
            (LABEL_APP_BACKUP, parent_label(ab)),
            &owner(ab),
        );
        let mut tags = ab.spec.tags.clone();
        tags.insert(LABEL_APP_BACKUP.into(), ab.name_any());
        tags.insert("cairn.io/namespace".into(), v.namespace.clone());
        tags.insert("cairn.io/pvc".into(), v.persistent_volume_claim.clone());
        let mode = if v.volume_snapshot_name.is_some() {
            BackupMode::Snapshot
        } else {
            BackupMode::Direct
        };
        let child = json!({
            "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
            "metadata": meta,
            "spec": {
                "source": { "persistentVolumeClaim": v.persistent_volume_claim,
                            "volumeSnapshot": v.volume_snapshot_name },
                "repository": ab.spec.repository,
                "repositoryNamespace": (v.namespace != ns).then(|| ns.clone()),
                "mode": mode,
                "offload": ab.spec.offload,
                "tags": tags,
            }
        });
        match serde_json::from_value::<VolumeBackup>(child) {
            Ok(child) => {
                plan.actions
                    .push(Action::CreateVolumeBackup(Box::new(child)));
                v.volume_backup = Some(name);
                v.phase = Some("New".into());
            }
            Err(e) => {
                v.phase = Some("Failed".into());
                v.failure_reason = Some(format!("could not build its VolumeBackup: {e}"));
            }
        }
    }
    plan.status.phase = Phase::Uploading;
    plan.actions
        .push(Action::RequeueAfter(Duration::from_secs(60)));
}

fn is_terminal_phase(phase: Option<&str>) -> bool {
    matches!(phase, Some("Completed" | "Failed" | "Canceled"))
}

fn uploading(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    mirror_children(obs, plan);
    if ab.spec.cancel {
        for v in &plan.status.volumes {
            if let (Some(name), false) = (&v.volume_backup, is_terminal_phase(v.phase.as_deref())) {
                plan.actions.push(Action::CancelVolumeBackup {
                    namespace: v.namespace.clone(),
                    name: name.clone(),
                });
            }
        }
        if let Some(job) = &obs.job {
            plan.actions.push(Action::DeleteJob {
                namespace: ns,
                name: job.name.clone(),
            });
        }
        plan.terminal(Phase::Canceled, None);
        return;
    }
    if !plan
        .status
        .volumes
        .iter()
        .all(|v| is_terminal_phase(v.phase.as_deref()))
    {
        plan.actions
            .push(Action::RequeueAfter(Duration::from_secs(60)));
        return;
    }
    let failed: Vec<&ApplicationVolume> = plan
        .status
        .volumes
        .iter()
        .filter(|v| v.phase.as_deref() != Some("Completed"))
        .collect();
    let summary = failed
        .iter()
        .map(|v| {
            format!(
                "{}/{}: {}",
                v.namespace,
                v.persistent_volume_claim,
                v.failure_reason.as_deref().unwrap_or("not completed")
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let total = plan.status.volumes.len();
    if total > 0 && failed.len() == total {
        if let Some(job) = &obs.job {
            plan.actions.push(Action::DeleteJob {
                namespace: ns,
                name: job.name.clone(),
            });
        }
        let why = format!("every volume failed: {summary}");
        plan.terminal(Phase::Failed, Some(why));
        return;
    }
    let failed_count = failed.len();
    capture(obs, ctx, plan, failed_count, summary);
}

fn mirror_children(obs: &ApplicationBackupObserved, plan: &mut Plan<ApplicationBackupStatus>) {
    let children: BTreeMap<(String, String), &VolumeBackup> = obs
        .children
        .iter()
        .map(|c| ((c.namespace().unwrap_or_default(), c.name_any()), c))
        .collect();
    for v in plan.status.volumes.iter_mut() {
        let Some(name) = v.volume_backup.clone() else {
            continue;
        };
        match children.get(&(v.namespace.clone(), name.clone())) {
            Some(child) => {
                let st = child.status.clone().unwrap_or_default();
                v.phase = Some(format!("{:?}", st.phase));
                v.snapshot_id = st.snapshot_id;
                if let Some(p) = st.progress {
                    v.bytes_done = p.bytes_done;
                    v.total_bytes = p.total_bytes;
                }
                v.bytes_added = st.bytes_added;
                v.failure_reason = match st.phase {
                    VolumeBackupPhase::Failed | VolumeBackupPhase::Canceled => Some(
                        st.failure_reason
                            .unwrap_or_else(|| format!("VolumeBackup {name} ended {:?}", st.phase)),
                    ),
                    _ => None,
                };
            }
            None if !is_terminal_phase(v.phase.as_deref()) => {
                v.phase = Some("Failed".into());
                v.failure_reason = Some(format!(
                    "VolumeBackup {}/{name} was deleted before it finished",
                    v.namespace
                ));
            }
            None => {}
        }
    }
    let s = &mut plan.status;
    s.volumes_done = u32::try_from(
        s.volumes
            .iter()
            .filter(|v| v.phase.as_deref() == Some("Completed"))
            .count(),
    )
    .unwrap_or(u32::MAX);
    s.bytes_done = s.volumes.iter().map(|v| v.bytes_done).sum();
    s.total_bytes = s.volumes.iter().map(|v| v.total_bytes).sum();
    let added: Vec<u64> = s.volumes.iter().filter_map(|v| v.bytes_added).collect();
    s.bytes_added = (!added.is_empty()).then(|| added.iter().sum());
}

fn capture(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
    failed_volumes: usize,
    summary: String,
) {
    let ns = obs.backup.namespace().unwrap_or_default();
    let Some(job_name) = plan.status.job_name.clone() else {
        create_capture_job(obs, ctx, plan);
        return;
    };
    let failure = match &obs.job {
        Some(job) if job.is_running() => {
            plan.actions
                .push(Action::RequeueAfter(super::running_poll(job)));
            return;
        }
        Some(job) if job.succeeded => match job
            .termination_message
            .as_deref()
            .and_then(JobOutcome::parse)
        {
            Some(outcome) if outcome.succeeded && outcome.snapshot_id.is_some() => {
                plan.status.resource_snapshot_id = outcome.snapshot_id;
                plan.status.resource_count = outcome.resource_count;
                plan.status.conditions.retain(|c| c.type_ != "Retrying");
                if failed_volumes == 0 {
                    plan.terminal(Phase::Completed, None);
                } else {
                    let why = format!(
                        "{failed_volumes} of {} volumes failed (the others and the \
                         configuration are restorable): {summary}",
                        plan.status.volumes.len()
                    );
                    plan.terminal(Phase::PartiallyFailed, Some(why));
                }
                return;
            }
            _ => format!("Job {job_name:?} exited 0 without reporting a snapshot id"),
        },
        Some(job) => failure_reason(job),
        None => format!("Job {job_name:?} was deleted before it finished"),
    };
    if obs.job.is_some() {
        plan.actions.push(Action::DeleteJob {
            namespace: ns,
            name: job_name,
        });
    }
    if plan.status.attempts < ctx.jobs.max_attempts {
        let why = format!(
            "capture attempt {} of {} failed ({failure}); retrying",
            plan.status.attempts, ctx.jobs.max_attempts
        );
        plan.condition("Retrying", true, "JobFailed", why);
        create_capture_job(obs, ctx, plan);
        return;
    }
    let why = format!(
        "capturing the configuration failed: {failure} (after {} attempts)",
        plan.status.attempts
    );
    plan.terminal(Phase::Failed, Some(why));
}

fn create_capture_job(
    obs: &ApplicationBackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationBackupStatus>,
) {
    let ab = &obs.backup;
    let ns = ab.namespace().unwrap_or_default();
    let Some(repository) = &obs.repository else {
        let why = format!(
            "BackupRepository {:?} disappeared from namespace {ns:?} before the \
             configuration was captured",
            ab.spec.repository
        );
        plan.terminal(Phase::Failed, Some(why));
        return;
    };
    let attempt = plan.status.attempts + 1;
    let name = objects::job_name(&ab.name_any(), &format!("capture-{attempt}"));
    let owner = owner(ab);
    let spec = JobSpec {
        name: name.clone(),
        namespace: &ns,
        kind: JobKind::Backup,
        owner: &owner,
        repository,
        args: vec![
            "capture-resources".into(),
            "--application-backup".into(),
            ab.name_any(),
        ],
        data: None,
        with_excludes: false,
    };
    plan.actions.push(Action::CreateJob(Box::new(objects::job(
        &spec,
        &ctx.config,
        &ctx.jobs,
    ))));
    plan.status.job_name = Some(name);
    plan.status.attempts = attempt;
    plan.actions
        .push(Action::RequeueAfter(Duration::from_secs(60)));
}
