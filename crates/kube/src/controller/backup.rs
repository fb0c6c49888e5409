//! Decisions for a VolumeBackup: pre rule, VolumeSnapshot, post rule, backupPVC, Job,
//! retries, cancel and cleanup.
//!
//! Invariants: post commands run whenever pre commands ran, whatever happens next; a
//! backupPVC never outlives the backup; a local VolumeSnapshot survives only a Completed
//! backup with `offload: true`.

use super::access::{repository_for_job, repository_refusal};
use super::objects::{self, DataVolume, JobKind, JobSpec};
use super::{
    human, running_poll, time, Action, DecideContext, HookSide, JobInfo, Plan, BLOCKED_POLL, POLL,
};
use crate::config::BACKUP_KEYS;
use crate::crd::{
    BackupMode, BackupRepository, BackupRule, HookOutcome, Progress, VolumeBackup,
    VolumeBackupPhase as Phase, VolumeBackupStatus,
};
use crate::protocol::JobOutcome;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{Resource, ResourceExt};

/// A VolumeSnapshot as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// `status.readyToUse`.
    pub ready: bool,
    /// `status.error.message`, when the snapshotter gave up.
    pub error: Option<String>,
    /// `status.restoreSize`, the size a PVC made from it needs.
    pub restore_size: Option<String>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `status.creationTime` is set: the storage system took the point-in-time snapshot
    /// (it may be ready to use much later).
    pub cut: bool,
}

/// A VolumeSnapshotClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotClassInfo {
    /// Name.
    pub name: String,
    /// CSI driver it snapshots for.
    pub driver: String,
    /// Annotated `snapshot.storage.kubernetes.io/is-default-class: "true"`.
    pub is_default: bool,
}

/// Everything the backup decision looks at.
#[derive(Clone, Debug)]
pub struct BackupObserved {
    /// The VolumeBackup.
    pub backup: VolumeBackup,
    /// Its BackupRepository, if it exists.
    pub repository: Option<BackupRepository>,
    /// The source PVC, if it exists.
    pub pvc: Option<PersistentVolumeClaim>,
    /// Provisioner (CSI driver) of the PVC's storage class, if known.
    pub provisioner: Option<String>,
    /// All VolumeSnapshotClasses.
    pub snapshot_classes: Vec<SnapshotClassInfo>,
    /// The referenced BackupRule, if referenced and found.
    pub rule: Option<BackupRule>,
    /// The VolumeSnapshot named in the status, if it exists.
    pub volume_snapshot: Option<SnapshotInfo>,
    /// Whether the backupPVC named in the status exists.
    pub backup_pvc_exists: bool,
    /// The Job named in the status, if it exists.
    pub job: Option<JobInfo>,
    /// Node of a running pod using the source PVC.
    pub pvc_node: Option<String>,
    /// Backup Jobs running in the cluster now.
    pub running_backup_jobs: u32,
}

/// Decides the next steps for one VolumeBackup.
pub fn decide_backup(obs: &BackupObserved, ctx: &DecideContext) -> Vec<Action> {
    let obs = &BackupObserved {
        job: super::judged(&obs.job, ctx),
        ..obs.clone()
    };
    let mut plan = Plan::new(obs.backup.status.clone().unwrap_or_default(), ctx.now);
    step(obs, ctx, &mut plan);
    plan.finish()
}

fn step(obs: &BackupObserved, ctx: &DecideContext, plan: &mut Plan<VolumeBackupStatus>) {
    let vb = &obs.backup;
    let ns = vb.namespace().unwrap_or_default();
    let phase = plan.status.phase;
    if phase.is_terminal() {
        cleanup(obs, plan, phase == Phase::Completed);
        return;
    }
    if plan.status.start_time.is_none() {
        plan.status.start_time = Some(time(ctx.now));
    }
    if vb.spec.cancel {
        if let Some(job) = &obs.job {
            plan.actions.push(Action::DeleteJob {
                namespace: ns.clone(),
                name: job.name.clone(),
            });
        }
        if run_post_if_owed(obs, plan) {
            return;
        }
        plan.terminal(Phase::Canceled, None);
        cleanup(obs, plan, false);
        return;
    }
    if let Some(problem) = ctx.config.problems_with(BACKUP_KEYS) {
        plan.condition("ConfigValid", false, "InvalidConfigMap", problem);
        plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    }
    plan.status.conditions.retain(|c| c.type_ != "ConfigValid");
    let Some(repository) = &obs.repository else {
        let repo_ns = vb.spec.repository_namespace.as_deref().unwrap_or(&ns);
        plan.condition(
            "RepositoryFound",
            false,
            "RepositoryNotFound",
            format!(
                "BackupRepository {:?} does not exist in namespace {repo_ns:?}; create it",
                vb.spec.repository
            ),
        );
        plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    };
    plan.status
        .conditions
        .retain(|c| c.type_ != "RepositoryFound");
    if let Some(refusal) = repository_refusal(repository, &ns) {
        plan.condition(
            "ConfigValid",
            false,
            "RepositoryNotAllowed",
            refusal.clone(),
        );
        if run_post_if_owed(obs, plan) {
            return;
        }
        plan.terminal(Phase::Failed, Some(refusal));
        cleanup(obs, plan, false);
        return;
    }
    let pvc_name = &vb.spec.source.persistent_volume_claim;
    let Some(pvc) = &obs.pvc else {
        if run_post_if_owed(obs, plan) {
            return;
        }
        plan.terminal(
            Phase::Failed,
            Some(format!(
                "PersistentVolumeClaim {pvc_name:?} not found in namespace {ns:?}"
            )),
        );
        cleanup(obs, plan, false);
        return;
    };
    if let (Some(snapshot), Phase::New) = (&vb.spec.source.volume_snapshot, phase) {
        // Cut already (by an ApplicationBackup, for the whole group): no rule, no snapshot
        // of our own; wait for it to be ready like one we cut.
        plan.status.mode = Some(BackupMode::Snapshot);
        plan.status.volume_snapshot_name = Some(snapshot.clone());
        plan.status.phase = Phase::SnapshotInProgress;
        plan.actions.push(Action::RequeueAfter(POLL));
        return;
    }
    if vb.spec.rule.is_some() && obs.rule.is_none() && phase == Phase::New {
        let name = vb
            .spec
            .rule
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default();
        plan.terminal(
            Phase::Failed,
            Some(format!("BackupRule {name:?} not found in namespace {ns:?}")),
        );
        return;
    }
    let mode = match plan.status.mode {
        Some(mode) => mode,
        None => match resolve_mode(obs, ctx) {
            Ok(mode) => {
                plan.status.mode = Some(mode);
                mode
            }
            Err(why) => {
                plan.terminal(Phase::Failed, Some(why));
                return;
            }
        },
    };
    // Pre commands gate the capture step (the snapshot, or the Job in direct mode).
    if phase == Phase::New {
        if pre_owed(obs, plan) {
            plan.actions.push(rule_action(obs, HookSide::Pre));
            return;
        }
        if let Some(failure) = plan.status.hooks.pre.as_ref().filter(|o| !o.succeeded) {
            let reason = format!("pre rule failed: {}", failure.message);
            if run_post_if_owed(obs, plan) {
                return;
            }
            plan.terminal(Phase::Failed, Some(reason));
            return;
        }
    }
    match (mode, phase) {
        (BackupMode::Direct, Phase::New) => {
            let data = DataVolume {
                claim: pvc_name.clone(),
                read_only: true,
                node: rwo_node(pvc, obs),
                block: objects::is_block(pvc),
            };
            create_job(obs, ctx, plan, repository, data);
        }
        (_, Phase::New) => {
            let class = snapshot_class(obs).unwrap_or_default();
            let name = objects::job_name(&vb.name_any(), "snapshot");
            plan.actions
                .push(Action::CreateVolumeSnapshot(objects::volume_snapshot(
                    &ns,
                    &name,
                    pvc_name,
                    &class,
                    &owner(vb),
                )));
            plan.status.volume_snapshot_name = Some(name);
            plan.status.phase = Phase::SnapshotInProgress;
        }
        (_, Phase::SnapshotInProgress) => snapshot_in_progress(obs, ctx, plan, pvc),
        (_, Phase::Exposing) => {
            if !obs.backup_pvc_exists {
                // Created in the step that entered Exposing; recreate if it vanished since.
                plan.actions.push(expose(obs, ctx, pvc));
            }
            let claim = plan.status.backup_pvc_name.clone().unwrap_or_default();
            create_job(
                obs,
                ctx,
                plan,
                repository,
                DataVolume {
                    claim,
                    read_only: true,
                    node: None,
                    block: objects::is_block(pvc),
                },
            );
        }
        (_, Phase::Uploading) => uploading(obs, ctx, plan, repository, pvc),
        (_, Phase::Completed | Phase::Failed | Phase::Canceled) => {}
    }
}

fn owner(vb: &VolumeBackup) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    vb.controller_owner_ref(&()).unwrap_or_default()
}

/// Picks Snapshot or Direct for this backup.
fn resolve_mode(obs: &BackupObserved, ctx: &DecideContext) -> Result<BackupMode, String> {
    let spec = &obs.backup.spec;
    if spec.mode == BackupMode::Direct || (spec.mode == BackupMode::Auto && ctx.config.force_direct)
    {
        return Ok(BackupMode::Direct);
    }
    if let Some(name) = &spec.volume_snapshot_class_name {
        return if obs.snapshot_classes.iter().any(|c| &c.name == name) {
            Ok(BackupMode::Snapshot)
        } else {
            Err(format!("VolumeSnapshotClass {name:?} does not exist"))
        };
    }
    match (snapshot_class(obs), spec.mode) {
        (Some(_), _) => Ok(BackupMode::Snapshot),
        (None, BackupMode::Auto) => Ok(BackupMode::Direct),
        (None, _) => {
            let class = obs
                .pvc
                .as_ref()
                .and_then(|p| p.spec.as_ref()?.storage_class_name.clone())
                .unwrap_or_default();
            let driver = obs.provisioner.clone().unwrap_or_else(|| "unknown".into());
            Err(format!(
                "storage class {class:?} (provisioner {driver:?}) has no VolumeSnapshotClass: create one, \
                 name one in spec.volumeSnapshotClassName, or use mode: Direct"
            ))
        }
    }
}

/// The class to snapshot with: the one named in the spec, else the default (or only) class
/// for the PVC's driver.
fn snapshot_class(obs: &BackupObserved) -> Option<String> {
    if let Some(name) = &obs.backup.spec.volume_snapshot_class_name {
        return Some(name.clone());
    }
    let driver = obs.provisioner.as_deref()?;
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

fn rule_action(obs: &BackupObserved, side: HookSide) -> Action {
    Action::RunRule {
        namespace: obs.backup.namespace().unwrap_or_default(),
        rule: obs
            .backup
            .spec
            .rule
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        side,
        volume_backup: obs.backup.name_any(),
    }
}

fn pre_owed(obs: &BackupObserved, plan: &Plan<VolumeBackupStatus>) -> bool {
    obs.backup.spec.source.volume_snapshot.is_none()
        && obs.rule.as_ref().is_some_and(|r| !r.spec.pre.is_empty())
        && plan.status.hooks.pre.is_none()
}

/// Post commands are owed once pre commands ran (or there are none) and the capture step
/// happened or was abandoned, until they have run once.
fn run_post_if_owed(obs: &BackupObserved, plan: &mut Plan<VolumeBackupStatus>) -> bool {
    let Some(rule) = &obs.rule else { return false };
    if obs.backup.spec.source.volume_snapshot.is_some() {
        // A pre-cut snapshot's rules ran where it was cut.
        return false;
    }
    let pre_ran = rule.spec.pre.is_empty() || plan.status.hooks.pre.is_some();
    let capture_started = plan.status.phase != Phase::New || plan.status.hooks.pre.is_some();
    if rule.spec.post.is_empty() || plan.status.hooks.post.is_some() || !pre_ran || !capture_started
    {
        return false;
    }
    plan.actions.push(rule_action(obs, HookSide::Post));
    true
}

fn snapshot_in_progress(
    obs: &BackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<VolumeBackupStatus>,
    pvc: &PersistentVolumeClaim,
) {
    // Release the application once the storage system has cut the snapshot (or failed
    // to), not when the VolumeSnapshot object merely exists.
    let cut = obs
        .volume_snapshot
        .as_ref()
        .is_some_and(|v| v.cut || v.ready || v.error.is_some());
    if cut && run_post_if_owed(obs, plan) {
        return;
    }
    let name = plan.status.volume_snapshot_name.clone().unwrap_or_default();
    let Some(vs) = &obs.volume_snapshot else {
        if run_post_if_owed(obs, plan) {
            return;
        }
        plan.terminal(
            Phase::Failed,
            Some(format!(
                "VolumeSnapshot {name:?} disappeared before it was ready"
            )),
        );
        return;
    };
    if let Some(error) = &vs.error {
        plan.terminal(
            Phase::Failed,
            Some(format!("VolumeSnapshot {name:?} failed: {error}")),
        );
        cleanup(obs, plan, false);
        return;
    }
    if !vs.ready {
        let started = vs
            .created
            .or(plan.status.start_time.as_ref().map(|t| t.0))
            .unwrap_or(ctx.now);
        let waited = ctx.now.duration_since(started).unsigned_abs();
        let timeout = ctx.config.snapshot_timeout;
        if waited >= timeout {
            if run_post_if_owed(obs, plan) {
                return;
            }
            plan.terminal(
                Phase::Failed,
                Some(format!(
                    "VolumeSnapshot {name:?} not ready to use after {}: check the CSI snapshotter, or raise \
                     SNAPSHOT_TIMEOUT in the ConfigMap",
                    human(timeout)
                )),
            );
            cleanup(obs, plan, false);
        } else {
            plan.actions
                .push(Action::RequeueAfter(POLL.min(timeout - waited)));
        }
        return;
    }
    plan.actions.push(expose(obs, ctx, pvc));
    plan.status.backup_pvc_name = Some(objects::job_name(&obs.backup.name_any(), "backup-pvc"));
    plan.status.phase = Phase::Exposing;
}

/// The CreatePvc action for the backupPVC, recording its name in the status.
fn expose(obs: &BackupObserved, ctx: &DecideContext, pvc: &PersistentVolumeClaim) -> Action {
    let vb = &obs.backup;
    let ns = vb.namespace().unwrap_or_default();
    let source_class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    let size = obs
        .volume_snapshot
        .as_ref()
        .and_then(|vs| vs.restore_size.clone())
        .or_else(|| pvc_size(pvc))
        .unwrap_or_else(|| "1Gi".into());
    let cfg = source_class
        .as_ref()
        .and_then(|c| ctx.config.backup_pvc.get(c));
    let name = objects::job_name(&vb.name_any(), "backup-pvc");
    let snapshot = obs
        .volume_snapshot
        .as_ref()
        .map(|v| v.name.clone())
        .unwrap_or_default();
    Action::CreatePvc(Box::new(objects::backup_pvc(
        &ns,
        &name,
        &snapshot,
        source_class.as_deref(),
        &size,
        cfg,
        objects::is_block(pvc),
        &owner(vb),
    )))
}

fn pvc_size(pvc: &PersistentVolumeClaim) -> Option<String> {
    let from_status = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref()?.get("storage").cloned());
    let from_spec = || {
        pvc.spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")
            .cloned()
    };
    from_status.or_else(from_spec).map(|q| q.0)
}

/// The node to pin a direct-mode Job to: a ReadWriteOnce volume can only be mounted
/// again on the node that already has it.
fn rwo_node(pvc: &PersistentVolumeClaim, obs: &BackupObserved) -> Option<String> {
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let rwo = modes.iter().any(|m| m == "ReadWriteOnce")
        && !modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany");
    if rwo {
        obs.pvc_node.clone()
    } else {
        None
    }
}

/// Creates the next backup Job if a slot is free; otherwise waits with a condition saying so.
fn create_job(
    obs: &BackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<VolumeBackupStatus>,
    repository: &BackupRepository,
    data: DataVolume,
) {
    let limit = JobKind::Backup.limit(&ctx.config);
    if obs.running_backup_jobs >= limit {
        plan.condition(
            "WaitingForJobSlot",
            true,
            "JobLimitReached",
            format!(
                "{} backup Jobs are running, the limit (KDMP_BACKUP_JOB_LIMIT) is {limit}",
                obs.running_backup_jobs
            ),
        );
        plan.actions.push(Action::RequeueAfter(POLL));
        return;
    }
    plan.status
        .conditions
        .retain(|c| c.type_ != "WaitingForJobSlot");
    let vb = &obs.backup;
    let ns = vb.namespace().unwrap_or_default();
    let attempt = plan.status.attempts + 1;
    let name = objects::job_name(&vb.name_any(), &format!("backup-{attempt}"));
    let class = obs
        .pvc
        .as_ref()
        .and_then(|p| p.spec.as_ref()?.storage_class_name.clone())
        .unwrap_or_default();
    // A Block volume is read as one file of the device's size.
    let source = if data.block {
        ["--device", crate::protocol::DATA_DEVICE]
    } else {
        ["--source", crate::protocol::DATA_DIR]
    };
    let mut args = vec![
        "backup".to_string(),
        "--volume-backup".into(),
        vb.name_any(),
        source[0].into(),
        source[1].into(),
        "--source-name".into(),
        format!("{ns}/{}", vb.spec.source.persistent_volume_claim),
        "--storage-class".into(),
        class,
    ];
    for (k, v) in &vb.spec.tags {
        args.extend(["--tag".into(), format!("{k}={v}")]);
    }
    let owner = owner(vb);
    let (repository, copies) = repository_for_job(repository, &ns, &owner);
    plan.actions.extend(copies);
    let spec = JobSpec {
        name: name.clone(),
        namespace: &ns,
        kind: JobKind::Backup,
        owner: &owner,
        repository: &repository,
        args,
        data: Some(data),
        with_excludes: true,
    };
    plan.actions.push(Action::CreateJob(Box::new(objects::job(
        &spec,
        &ctx.config,
        &ctx.jobs,
    ))));
    plan.status.job_name = Some(name);
    plan.status.attempts = attempt;
    plan.status.phase = Phase::Uploading;
}

fn uploading(
    obs: &BackupObserved,
    ctx: &DecideContext,
    plan: &mut Plan<VolumeBackupStatus>,
    repository: &BackupRepository,
    pvc: &PersistentVolumeClaim,
) {
    let ns = obs.backup.namespace().unwrap_or_default();
    let job_name = plan.status.job_name.clone().unwrap_or_default();
    let failure = match &obs.job {
        Some(job) if job.is_running() => {
            plan.actions.push(Action::RequeueAfter(running_poll(job)));
            return;
        }
        Some(job) if job.succeeded => match job
            .termination_message
            .as_deref()
            .and_then(JobOutcome::parse)
        {
            Some(outcome) if outcome.succeeded && outcome.snapshot_id.is_some() => {
                if run_post_if_owed(obs, plan) {
                    return;
                }
                plan.status.snapshot_id = outcome.snapshot_id;
                plan.status.bytes_added = outcome.bytes_added;
                plan.status.progress = Some(Progress {
                    bytes_done: outcome.bytes_done,
                    total_bytes: outcome.total_bytes,
                });
                plan.terminal(Phase::Completed, None);
                cleanup(obs, plan, true);
                return;
            }
            _ => format!("Job {job_name:?} exited 0 without reporting a snapshot id"),
        },
        Some(job) => failure_reason(job),
        None => format!("Job {job_name:?} was deleted before it finished"),
    };
    if plan.status.attempts < ctx.jobs.max_attempts {
        if obs.job.is_some() {
            plan.actions.push(Action::DeleteJob {
                namespace: ns,
                name: job_name,
            });
        }
        plan.condition(
            "Retrying",
            true,
            "JobFailed",
            format!(
                "attempt {} of {} failed ({failure}); the next attempt resumes from the repository's checkpoints",
                plan.status.attempts, ctx.jobs.max_attempts
            ),
        );
        let data = match plan.status.backup_pvc_name.clone() {
            Some(claim) if plan.status.mode != Some(BackupMode::Direct) => DataVolume {
                claim,
                read_only: true,
                node: None,
                block: objects::is_block(pvc),
            },
            _ => DataVolume {
                claim: obs.backup.spec.source.persistent_volume_claim.clone(),
                read_only: true,
                node: rwo_node(pvc, obs),
                block: objects::is_block(pvc),
            },
        };
        create_job(obs, ctx, plan, repository, data);
        return;
    }
    if run_post_if_owed(obs, plan) {
        return;
    }
    plan.terminal(
        Phase::Failed,
        Some(format!(
            "{failure} (after {} attempts)",
            plan.status.attempts
        )),
    );
    cleanup(obs, plan, false);
}

/// Why a Job failed, from its termination message or its Failed condition.
pub(crate) fn failure_reason(job: &JobInfo) -> String {
    let outcome = job
        .termination_message
        .as_deref()
        .and_then(JobOutcome::parse);
    match (outcome, &job.termination_message, &job.failure_message) {
        (Some(o), _, _) if !o.message.is_empty() => o.message,
        (None, Some(log_tail), _) if !log_tail.trim().is_empty() => {
            format!("Job {:?} crashed: {}", job.name, log_tail.trim())
        }
        (_, _, Some(m)) => format!("Job {:?} failed: {m}", job.name),
        _ => format!("Job {:?} failed", job.name),
    }
}

/// Deletes what a finished backup must not leave behind: the backupPVC always; the
/// VolumeSnapshot unless the backup completed with offload on (the 3-2-1 local copy).
fn cleanup(obs: &BackupObserved, plan: &mut Plan<VolumeBackupStatus>, completed: bool) {
    let ns = obs.backup.namespace().unwrap_or_default();
    if obs.backup_pvc_exists {
        if let Some(name) = plan.status.backup_pvc_name.clone() {
            plan.actions.push(Action::DeletePvc {
                namespace: ns.clone(),
                name,
            });
        }
    }
    let keep = completed && obs.backup.spec.offload;
    if let (Some(vs), false) = (&obs.volume_snapshot, keep) {
        plan.actions.push(Action::DeleteVolumeSnapshot {
            namespace: ns,
            name: vs.name.clone(),
        });
        plan.status.volume_snapshot_name = None;
    }
}

/// Records the outcome of a rule run in the status (used by the adapter after RunRule).
pub fn record_hook(status: &mut VolumeBackupStatus, side: HookSide, outcome: HookOutcome) {
    match side {
        HookSide::Pre => status.hooks.pre = Some(outcome),
        HookSide::Post => status.hooks.post = Some(outcome),
    }
}
