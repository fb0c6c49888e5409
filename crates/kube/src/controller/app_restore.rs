//! Decisions for an ApplicationRestore: resolve the source, run the configuration stage
//! Job, fill the volumes it lists through child VolumeRestores, then run the workloads
//! stage Job.
//!
//! Invariants: the controller never writes the counts (`created`, `updated`, `skipped`,
//! `failed`, `failures`): the resource Jobs patch them, and the controller's status
//! patches carry only the fields it changed. Workloads are created only after every
//! volume is terminal, so pods start on filled volumes.

use super::application::{child_meta, label_value, short_name};
use super::backup::failure_reason;
use super::objects::{self, JobKind, JobSpec};
use super::{repository_refusal, time, Action, DecideContext, JobInfo, Plan, BLOCKED_POLL};
use crate::config::RESTORE_KEYS;
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase, ApplicationRestore,
    ApplicationRestorePhase as Phase, ApplicationRestoreStatus, BackupRepository, VolumeRestore,
    VolumeRestorePhase,
};
use crate::protocol::JobOutcome;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Label on the child VolumeRestores of an ApplicationRestore: `<namespace>.<name>` of the
/// parent, shortened by [`label_value`].
pub const LABEL_APP_RESTORE: &str = "cairn.io/application-restore";

/// Everything the ApplicationRestore decision looks at.
#[derive(Clone, Debug)]
pub struct ApplicationRestoreObserved {
    /// The ApplicationRestore.
    pub restore: ApplicationRestore,
    /// The ApplicationBackup named in `spec.source.applicationBackup`, if named and found.
    pub source_backup: Option<ApplicationBackup>,
    /// The repository (of the source backup, or `spec.source.repository`), if found.
    pub repository: Option<BackupRepository>,
    /// VolumeRestores labelled as this restore's children.
    pub children: Vec<VolumeRestore>,
    /// The resource Job named in the status, if it exists.
    pub job: Option<JobInfo>,
}

/// The two resource Job stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Configuration,
    Workloads,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Configuration => "configuration",
            Stage::Workloads => "workloads",
        }
    }
}

/// Decides the next steps for one ApplicationRestore.
pub fn decide_application_restore(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
) -> Vec<Action> {
    let obs = &ApplicationRestoreObserved {
        job: super::judged(&obs.job, ctx),
        ..obs.clone()
    };
    let mut plan = Plan::new(obs.restore.status.clone().unwrap_or_default(), ctx.now);
    step(obs, ctx, &mut plan);
    plan.finish()
}

fn step(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationRestoreStatus>,
) {
    let ar = &obs.restore;
    let ns = ar.namespace().unwrap_or_default();
    if plan.status.phase.is_terminal() {
        return;
    }
    if plan.status.start_time.is_none() {
        plan.status.start_time = Some(time(ctx.now));
    }
    mirror_children(obs, plan);
    if ar.spec.cancel {
        if let Some(job) = &obs.job {
            plan.actions.push(Action::DeleteJob {
                namespace: ns,
                name: job.name.clone(),
            });
        }
        for v in &plan.status.volumes {
            if let (Some(name), false) = (&v.volume_restore, is_terminal(v.phase.as_deref())) {
                plan.actions.push(Action::CancelVolumeRestore {
                    namespace: v.namespace.clone(),
                    name: name.clone(),
                });
            }
        }
        plan.terminal(Phase::Canceled, None);
        return;
    }
    match plan.status.phase {
        Phase::New => new(obs, ctx, plan),
        Phase::RestoringConfiguration => stage_job(obs, ctx, plan, Stage::Configuration),
        Phase::RestoringVolumes => restoring_volumes(obs, ctx, plan),
        Phase::RestoringWorkloads => stage_job(obs, ctx, plan, Stage::Workloads),
        Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::Canceled => {}
    }
}

fn new(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationRestoreStatus>,
) {
    let ar = &obs.restore;
    let ns = ar.namespace().unwrap_or_default();
    if let Some(problem) = ctx.config.problems_with(RESTORE_KEYS) {
        plan.condition("ConfigValid", false, "InvalidConfigMap", problem);
        plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    }
    plan.status.conditions.retain(|c| c.type_ != "ConfigValid");
    let source = &ar.spec.source;
    let (repository, snapshot_id) = match (&source.application_backup, &source.snapshot_id) {
        (Some(name), None) => {
            let Some(ab) = &obs.source_backup else {
                let why = format!("ApplicationBackup {name:?} not found in namespace {ns:?}");
                plan.terminal(Phase::Failed, Some(why));
                return;
            };
            let st = ab.status.clone().unwrap_or_default();
            match (st.phase, st.resource_snapshot_id) {
                (
                    ApplicationBackupPhase::Completed | ApplicationBackupPhase::PartiallyFailed,
                    Some(id),
                ) => (ab.spec.repository.clone(), id),
                (phase, _) if phase.is_terminal() => {
                    let why = format!(
                        "ApplicationBackup {name:?} ended {phase:?} without a configuration \
                         snapshot; nothing to restore"
                    );
                    plan.terminal(Phase::Failed, Some(why));
                    return;
                }
                _ => {
                    let why = format!("waiting for ApplicationBackup {name:?} to complete");
                    plan.condition("SourceReady", false, "BackupInProgress", why);
                    plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
                    return;
                }
            }
        }
        (None, Some(id)) if source.repository.is_some() => {
            (source.repository.clone().unwrap_or_default(), id.clone())
        }
        _ => {
            let why = "spec.source needs either applicationBackup, or snapshotId with repository"
                .to_string();
            plan.terminal(Phase::Failed, Some(why));
            return;
        }
    };
    plan.status.conditions.retain(|c| c.type_ != "SourceReady");
    plan.status.repository = Some(repository.clone());
    plan.status.snapshot_id = Some(snapshot_id);
    if obs.repository.is_none() {
        let why = format!(
            "BackupRepository {repository:?} does not exist in namespace {ns:?}; create it"
        );
        plan.condition("RepositoryFound", false, "RepositoryNotFound", why);
        plan.actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return;
    }
    plan.status
        .conditions
        .retain(|c| c.type_ != "RepositoryFound");
    plan.status.stage_attempts = 0;
    create_job(obs, ctx, plan, Stage::Configuration);
}

fn create_job(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationRestoreStatus>,
    stage: Stage,
) {
    let ar = &obs.restore;
    let ns = ar.namespace().unwrap_or_default();
    let Some(repository) = &obs.repository else {
        let why = format!(
            "BackupRepository {:?} disappeared from namespace {ns:?}",
            plan.status.repository.clone().unwrap_or_default()
        );
        plan.terminal(Phase::Failed, Some(why));
        return;
    };
    let attempt = plan.status.stage_attempts + 1;
    let name = objects::job_name(&ar.name_any(), &format!("{}-{attempt}", stage.as_str()));
    let owner = ar.controller_owner_ref(&()).unwrap_or_default();
    let spec = JobSpec {
        name: name.clone(),
        namespace: &ns,
        kind: JobKind::Restore,
        owner: &owner,
        repository,
        args: vec![
            "restore-resources".into(),
            "--application-restore".into(),
            ar.name_any(),
            "--stage".into(),
            stage.as_str().into(),
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
    plan.status.attempts += 1;
    plan.status.stage_attempts = attempt;
    plan.status.phase = match stage {
        Stage::Configuration => Phase::RestoringConfiguration,
        Stage::Workloads => Phase::RestoringWorkloads,
    };
    plan.actions
        .push(Action::RequeueAfter(Duration::from_secs(60)));
}

fn stage_job(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationRestoreStatus>,
    stage: Stage,
) {
    let ns = obs.restore.namespace().unwrap_or_default();
    let job_name = plan.status.job_name.clone().unwrap_or_default();
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
            Some(outcome) if outcome.succeeded => {
                plan.status.conditions.retain(|c| c.type_ != "Retrying");
                plan.status.stage_attempts = 0;
                match stage {
                    Stage::Configuration => {
                        plan.status.phase = Phase::RestoringVolumes;
                        create_volume_restores(obs, plan);
                        restoring_volumes(obs, ctx, plan);
                    }
                    Stage::Workloads => finish(plan, None),
                }
                return;
            }
            Some(outcome) if !outcome.message.is_empty() => outcome.message,
            _ => format!("Job {job_name:?} exited 0 without reporting an outcome"),
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
    if plan.status.stage_attempts < ctx.jobs.max_attempts {
        let why = format!(
            "{} stage attempt {} of {} failed ({failure}); retrying",
            stage.as_str(),
            plan.status.stage_attempts,
            ctx.jobs.max_attempts
        );
        plan.condition("Retrying", true, "JobFailed", why);
        create_job(obs, ctx, plan, stage);
        return;
    }
    let why = format!(
        "the {} stage failed: {failure} (after {} attempts)",
        stage.as_str(),
        plan.status.stage_attempts
    );
    match stage {
        Stage::Configuration => plan.terminal(Phase::Failed, Some(why)),
        // The configuration and the volumes are in place: something was restored.
        Stage::Workloads => finish(plan, Some(why)),
    }
}

/// Completed when nothing failed and every volume was filled, PartiallyFailed otherwise.
fn finish(plan: &mut Plan<ApplicationRestoreStatus>, stage_failure: Option<String>) {
    let mut problems: Vec<String> = stage_failure.into_iter().collect();
    if plan.status.failed > 0 {
        problems.push(format!(
            "{} resources could not be restored (see status.failures)",
            plan.status.failed
        ));
    }
    for v in &plan.status.volumes {
        if v.phase.as_deref() != Some("Completed") {
            problems.push(format!(
                "volume {}/{}: {}",
                v.namespace,
                v.persistent_volume_claim,
                v.failure_reason.as_deref().unwrap_or("not restored")
            ));
        }
    }
    if problems.is_empty() {
        plan.terminal(Phase::Completed, None);
    } else {
        plan.terminal(Phase::PartiallyFailed, Some(problems.join("; ")));
    }
}

fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Completed" | "Failed" | "Canceled"))
}

fn create_volume_restores(
    obs: &ApplicationRestoreObserved,
    plan: &mut Plan<ApplicationRestoreStatus>,
) {
    let ar = &obs.restore;
    let ns = ar.namespace().unwrap_or_default();
    let label = label_value(&format!("{ns}.{}", ar.name_any()));
    let owner = ar.controller_owner_ref(&()).unwrap_or_default();
    let repository = plan.status.repository.clone().unwrap_or_default();
    for v in plan.status.volumes.iter_mut() {
        if v.volume_restore.is_some() || is_terminal(v.phase.as_deref()) {
            continue;
        }
        let refusal = match &obs.repository {
            Some(repo) => repository_refusal(repo, &v.namespace),
            None => Some(format!(
                "BackupRepository {repository:?} disappeared from namespace {ns:?}"
            )),
        };
        if let Some(why) = refusal {
            v.phase = Some("Failed".into());
            v.failure_reason = Some(why);
            continue;
        }
        let name = short_name(&format!("{}-{}", ar.name_any(), v.persistent_volume_claim));
        let meta = child_meta(
            &name,
            &v.namespace,
            &ns,
            &ar.name_any(),
            (LABEL_APP_RESTORE, label.clone()),
            &owner,
        );
        let child = json!({
            "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
            "metadata": meta,
            "spec": {
                "source": { "snapshotId": v.snapshot_id, "repository": repository,
                            "repositoryNamespace": (v.namespace != ns).then(|| ns.clone()) },
                "target": { "persistentVolumeClaim": v.persistent_volume_claim,
                            "create": { "storageClassName": v.storage_class_name,
                                        "size": v.size, "accessModes": v.access_modes,
                                        "volumeMode": v.volume_mode } },
            }
        });
        match serde_json::from_value::<VolumeRestore>(child) {
            Ok(child) => {
                plan.actions
                    .push(Action::CreateVolumeRestore(Box::new(child)));
                v.volume_restore = Some(name);
                v.phase = Some("New".into());
            }
            Err(e) => {
                v.phase = Some("Failed".into());
                v.failure_reason = Some(format!("could not build its VolumeRestore: {e}"));
            }
        }
    }
}

fn mirror_children(obs: &ApplicationRestoreObserved, plan: &mut Plan<ApplicationRestoreStatus>) {
    let children: BTreeMap<(String, String), &VolumeRestore> = obs
        .children
        .iter()
        .map(|c| ((c.namespace().unwrap_or_default(), c.name_any()), c))
        .collect();
    for v in plan.status.volumes.iter_mut() {
        let Some(name) = v.volume_restore.clone() else {
            continue;
        };
        match children.get(&(v.namespace.clone(), name.clone())) {
            Some(child) => {
                let st = child.status.clone().unwrap_or_default();
                v.phase = Some(format!("{:?}", st.phase));
                v.failure_reason = match st.phase {
                    VolumeRestorePhase::Failed | VolumeRestorePhase::Canceled => {
                        Some(st.failure_reason.unwrap_or_else(|| {
                            format!("VolumeRestore {name} ended {:?}", st.phase)
                        }))
                    }
                    _ => None,
                };
            }
            None if !is_terminal(v.phase.as_deref()) => {
                v.phase = Some("Failed".into());
                v.failure_reason = Some(format!(
                    "VolumeRestore {}/{name} was deleted before it finished",
                    v.namespace
                ));
            }
            None => {}
        }
    }
}

fn restoring_volumes(
    obs: &ApplicationRestoreObserved,
    ctx: &DecideContext,
    plan: &mut Plan<ApplicationRestoreStatus>,
) {
    if !plan
        .status
        .volumes
        .iter()
        .all(|v| is_terminal(v.phase.as_deref()))
    {
        plan.actions
            .push(Action::RequeueAfter(Duration::from_secs(60)));
        return;
    }
    create_job(obs, ctx, plan, Stage::Workloads);
}
