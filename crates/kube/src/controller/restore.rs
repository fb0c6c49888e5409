//! Decisions for a VolumeRestore: resolve the snapshot, create the target PVC if asked,
//! run the restore Job with retries.

use super::access::{repository_for_job, repository_refusal};
use super::backup::failure_reason;
use super::objects::{self, DataVolume, JobKind, JobSpec};
use super::{time, Action, DecideContext, JobInfo, BLOCKED_POLL, POLL};
use crate::config::RESTORE_KEYS;
use crate::crd::{
    set_condition, BackupRepository, Condition, Progress, VolumeBackup, VolumeBackupPhase,
    VolumeRestore, VolumeRestorePhase as Phase, VolumeRestoreStatus,
};
use crate::protocol::JobOutcome;
use kube::{Resource, ResourceExt};

/// Everything the restore decision looks at.
#[derive(Clone, Debug)]
pub struct RestoreObserved {
    /// The VolumeRestore.
    pub restore: VolumeRestore,
    /// The VolumeBackup named in `spec.source.volumeBackup`, if named and found.
    pub source_backup: Option<VolumeBackup>,
    /// The repository (from the source VolumeBackup or `spec.source.repository`, in its
    /// `repositoryNamespace`), if found.
    pub repository: Option<BackupRepository>,
    /// Whether the target PVC exists.
    pub target_exists: bool,
    /// Whether the target PVC is a raw block volume (`volumeMode: Block`): the Job writes
    /// the snapshot's one file (a device backed up as such) onto it.
    pub target_block: bool,
    /// Node of a running pod using the target PVC, for ReadWriteOnce targets.
    pub target_node: Option<String>,
    /// The Job named in the status, if it exists.
    pub job: Option<JobInfo>,
    /// Restore Jobs running in the cluster now.
    pub running_restore_jobs: u32,
}

/// Decides the next steps for one VolumeRestore.
pub fn decide_restore(obs: &RestoreObserved, ctx: &DecideContext) -> Vec<Action> {
    let obs = &RestoreObserved {
        job: super::judged(&obs.job, ctx),
        ..obs.clone()
    };
    let before = obs.restore.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let mut actions = Vec::new();
    step(obs, ctx, &mut status, &mut actions);
    if status != before {
        actions.insert(0, Action::PatchRestoreStatus(Box::new(status)));
    }
    actions
}

fn condition(
    status: &mut VolumeRestoreStatus,
    ctx: &DecideContext,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) {
    set_condition(
        &mut status.conditions,
        Condition::new(type_, ok, reason, message, time(ctx.now)),
    );
}

fn terminal(
    status: &mut VolumeRestoreStatus,
    ctx: &DecideContext,
    phase: Phase,
    reason: Option<String>,
) {
    status.phase = phase;
    status.completion_time = Some(time(ctx.now));
    let message = reason.clone().unwrap_or_else(|| "restore complete".into());
    condition(
        status,
        ctx,
        "Ready",
        phase == Phase::Completed,
        &format!("{phase:?}"),
        message,
    );
    status.failure_reason = reason;
}

fn step(
    obs: &RestoreObserved,
    ctx: &DecideContext,
    status: &mut VolumeRestoreStatus,
    actions: &mut Vec<Action>,
) {
    let vr = &obs.restore;
    let ns = vr.namespace().unwrap_or_default();
    if status.phase.is_terminal() {
        return;
    }
    if status.start_time.is_none() {
        status.start_time = Some(time(ctx.now));
    }
    if vr.spec.cancel {
        if let Some(job) = &obs.job {
            actions.push(Action::DeleteJob {
                namespace: ns,
                name: job.name.clone(),
            });
        }
        terminal(status, ctx, Phase::Canceled, None);
        return;
    }
    if let Some(problem) = ctx.config.problems_with(RESTORE_KEYS) {
        condition(
            status,
            ctx,
            "ConfigValid",
            false,
            "InvalidConfigMap",
            problem,
        );
        actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    }
    status.conditions.retain(|c| c.type_ != "ConfigValid");
    let source = &vr.spec.source;
    let snapshot_id = match (&source.volume_backup, &source.snapshot_id) {
        (Some(name), None) => match &obs.source_backup {
            None => {
                return terminal(
                    status,
                    ctx,
                    Phase::Failed,
                    Some(format!(
                        "VolumeBackup {name:?} not found in namespace {ns:?}"
                    )),
                )
            }
            Some(vb) => {
                let st = vb.status.clone().unwrap_or_default();
                match (st.phase, st.snapshot_id) {
                    (VolumeBackupPhase::Completed, Some(id)) => id,
                    (VolumeBackupPhase::Failed | VolumeBackupPhase::Canceled, _) => {
                        let why = format!(
                            "VolumeBackup {name:?} ended {:?}; it has no snapshot to restore",
                            st.phase
                        );
                        return terminal(status, ctx, Phase::Failed, Some(why));
                    }
                    _ => {
                        let why = format!("waiting for VolumeBackup {name:?} to complete");
                        condition(status, ctx, "SourceReady", false, "BackupInProgress", why);
                        actions.push(Action::RequeueAfter(BLOCKED_POLL));
                        return;
                    }
                }
            }
        },
        (None, Some(id)) if source.repository.is_some() => id.clone(),
        _ => {
            let why =
                "spec.source needs either volumeBackup, or snapshotId with repository".to_string();
            return terminal(status, ctx, Phase::Failed, Some(why));
        }
    };
    status.conditions.retain(|c| c.type_ != "SourceReady");
    status.snapshot_id = Some(snapshot_id.clone());
    let Some(repository) = &obs.repository else {
        let why = "the BackupRepository of the source does not exist; create it".to_string();
        condition(
            status,
            ctx,
            "RepositoryFound",
            false,
            "RepositoryNotFound",
            why,
        );
        actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    };
    if let Some(refusal) = repository_refusal(repository, &ns) {
        condition(
            status,
            ctx,
            "ConfigValid",
            false,
            "RepositoryNotAllowed",
            refusal.clone(),
        );
        if let Some(job) = &obs.job {
            actions.push(Action::DeleteJob {
                namespace: ns,
                name: job.name.clone(),
            });
        }
        return terminal(status, ctx, Phase::Failed, Some(refusal));
    }
    let target = &vr.spec.target;
    if !obs.target_exists {
        match (&target.create, status.created_target) {
            (Some(new), false) => {
                let pvc = objects::target_pvc(
                    &ns,
                    &target.persistent_volume_claim,
                    new.storage_class_name.as_deref(),
                    &new.size,
                    &new.access_modes,
                    new.volume_mode.map(|m| m.as_str()),
                );
                actions.push(Action::CreatePvc(Box::new(pvc)));
                status.created_target = true;
                status.phase = Phase::PreparingTarget;
            }
            (Some(_), true) if status.phase == Phase::PreparingTarget => {
                // Just created; the next observation will see it.
                actions.push(Action::RequeueAfter(POLL));
            }
            _ => {
                let why = format!(
                    "target PVC {:?} does not exist and spec.target.create is not set",
                    target.persistent_volume_claim
                );
                if let Some(job) = &obs.job {
                    actions.push(Action::DeleteJob {
                        namespace: ns,
                        name: job.name.clone(),
                    });
                }
                terminal(status, ctx, Phase::Failed, Some(why));
            }
        }
        return;
    }
    match status.phase {
        Phase::New | Phase::PreparingTarget => {
            create_job(obs, ctx, status, actions, repository, &snapshot_id)
        }
        Phase::Restoring => {
            let job_name = status.job_name.clone().unwrap_or_default();
            let failure = match &obs.job {
                Some(job) if job.is_running() => {
                    actions.push(Action::RequeueAfter(super::running_poll(job)));
                    return;
                }
                Some(job) if job.succeeded => {
                    let outcome = job
                        .termination_message
                        .as_deref()
                        .and_then(JobOutcome::parse)
                        .unwrap_or_default();
                    status.progress = Some(Progress {
                        bytes_done: outcome.bytes_done,
                        total_bytes: outcome.total_bytes,
                    });
                    return terminal(status, ctx, Phase::Completed, None);
                }
                Some(job) => failure_reason(job),
                None => format!("Job {job_name:?} was deleted before it finished"),
            };
            if status.attempts < ctx.jobs.max_attempts {
                if obs.job.is_some() {
                    actions.push(Action::DeleteJob {
                        namespace: ns,
                        name: job_name,
                    });
                }
                let why = format!(
                    "attempt {} of {} failed ({failure}); retrying",
                    status.attempts, ctx.jobs.max_attempts
                );
                condition(status, ctx, "Retrying", true, "JobFailed", why);
                create_job(obs, ctx, status, actions, repository, &snapshot_id);
            } else {
                let why = format!("{failure} (after {} attempts)", status.attempts);
                terminal(status, ctx, Phase::Failed, Some(why));
            }
        }
        Phase::Completed | Phase::Failed | Phase::Canceled => {}
    }
}

fn create_job(
    obs: &RestoreObserved,
    ctx: &DecideContext,
    status: &mut VolumeRestoreStatus,
    actions: &mut Vec<Action>,
    repository: &BackupRepository,
    snapshot_id: &str,
) {
    let limit = JobKind::Restore.limit(&ctx.config);
    if obs.running_restore_jobs >= limit {
        let why = format!(
            "{} restore Jobs are running, the limit (KDMP_RESTORE_JOB_LIMIT) is {limit}",
            obs.running_restore_jobs
        );
        condition(
            status,
            ctx,
            "WaitingForJobSlot",
            true,
            "JobLimitReached",
            why,
        );
        actions.push(Action::RequeueAfter(POLL));
        return;
    }
    status.conditions.retain(|c| c.type_ != "WaitingForJobSlot");
    let vr = &obs.restore;
    let ns = vr.namespace().unwrap_or_default();
    let attempt = status.attempts + 1;
    let name = objects::job_name(&vr.name_any(), &format!("restore-{attempt}"));
    // A Block target receives the snapshot's one file, written onto the device; the
    // job refuses a device smaller than that file.
    let target = if obs.target_block {
        ["--device", crate::protocol::DATA_DEVICE]
    } else {
        ["--target", crate::protocol::DATA_DIR]
    };
    let mut args = vec![
        "restore".to_string(),
        "--volume-restore".into(),
        vr.name_any(),
        "--snapshot".into(),
        snapshot_id.to_string(),
        target[0].into(),
        target[1].into(),
    ];
    for path in &vr.spec.include_paths {
        args.extend(["--include".into(), path.clone()]);
    }
    let owner = vr.controller_owner_ref(&()).unwrap_or_default();
    let data = DataVolume {
        claim: vr.spec.target.persistent_volume_claim.clone(),
        read_only: false,
        node: obs.target_node.clone(),
        block: obs.target_block,
    };
    let (repository, copies) = repository_for_job(repository, &ns, &owner);
    actions.extend(copies);
    let spec = JobSpec {
        name: name.clone(),
        namespace: &ns,
        kind: JobKind::Restore,
        owner: &owner,
        repository: &repository,
        args,
        data: Some(data),
        with_excludes: false,
    };
    actions.push(Action::CreateJob(Box::new(objects::job(
        &spec,
        &ctx.config,
        &ctx.jobs,
    ))));
    status.job_name = Some(name);
    status.attempts = attempt;
    status.phase = Phase::Restoring;
}
