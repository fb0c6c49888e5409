//! Decisions for a BackupSchedule: create the run that is due, skip one while the previous
//! run is still going, count outcomes, apply retention to the finished runs and forget the
//! repository snapshots it does not keep.
//!
//! Invariants: a missed run is caught up once (only the latest due time runs), never in a
//! burst; at most one run is active; a run's name is derived from its due time, so a
//! reconcile repeated after a crash finds the run instead of creating a second one; counts
//! are derived from `countedRuns`/`prunedRuns`, so a restart never counts a run twice.

use super::backup::failure_reason;
use super::objects::{self, JobKind, JobSpec, LABEL_OWNER};
use super::{time, Action, DecideContext, JobInfo, BLOCKED_POLL, POLL};
use crate::crd::{
    set_condition, ApplicationBackup, ApplicationBackupSpec, BackupRepository, BackupSchedule,
    BackupScheduleStatus, Condition, ScheduleRetention, VolumeBackup, VolumeBackupSpec,
};
use crate::protocol::JobOutcome;
use crate::schedule::Schedule;
use cairn_policy::retention::{apply, RetentionPolicy, SnapshotInfo};
use jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::time::Duration;

/// Label on every run, naming the BackupSchedule that created it.
pub const LABEL_SCHEDULE: &str = "cairn.io/schedule";
/// Snapshot tag recorded on every run's snapshots (`cairn.io/schedule=<name>`).
pub const TAG_SCHEDULE: &str = "cairn.io/schedule";
/// Annotation on every run: the due time it was created for (RFC 3339, UTC).
pub const ANNOTATION_SCHEDULED_TIME: &str = "cairn.io/scheduled-time";

/// Which kind of backup object a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// An ApplicationBackup.
    Application,
    /// A VolumeBackup.
    Volume,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Not finished.
    Running,
    /// Completed.
    Succeeded,
    /// Failed, partially failed or canceled.
    Failed,
}

/// A run of the schedule as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    /// Object name.
    pub name: String,
    /// Outcome so far.
    pub outcome: RunOutcome,
    /// The due time it was created for, else its creation time.
    pub time: Timestamp,
    /// When it finished, if it did.
    pub finished: Option<Timestamp>,
}

/// A run to create: the whole object.
#[derive(Clone, Debug)]
pub enum ScheduledRun {
    /// An ApplicationBackup.
    Application(Box<ApplicationBackup>),
    /// A VolumeBackup.
    Volume(Box<VolumeBackup>),
}

impl ScheduledRun {
    /// The object as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ScheduledRun::Application(a) => serde_json::to_value(a.as_ref()),
            ScheduledRun::Volume(v) => serde_json::to_value(v.as_ref()),
        }
        .unwrap_or_default()
    }
}

// The generated resource types have no `PartialEq`; two runs are equal as JSON.
impl PartialEq for ScheduledRun {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

/// Everything the schedule decision looks at.
#[derive(Clone, Debug)]
pub struct ScheduleObserved {
    /// The BackupSchedule.
    pub schedule: BackupSchedule,
    /// Its runs: backup objects of the template's kind labelled with its name.
    pub runs: Vec<ScheduleRun>,
    /// The template's BackupRepository, if it exists (the forget Job needs it).
    pub repository: Option<BackupRepository>,
    /// The forget Job named in the status, if it exists.
    pub forget_job: Option<JobInfo>,
    /// Maintenance-kind Jobs running in the cluster now.
    pub running_maintenance_jobs: u32,
    /// A maintenance-kind Job (maintenance, catalog or forget) is running on the template's
    /// repository: forget waits, one at a time per repository.
    pub repository_busy: bool,
}

/// Decides the next steps for one BackupSchedule.
pub fn decide_schedule(obs: &ScheduleObserved, ctx: &DecideContext) -> Vec<Action> {
    let obs = &ScheduleObserved {
        forget_job: super::judged(&obs.forget_job, ctx),
        ..obs.clone()
    };
    let sched = &obs.schedule;
    let before = sched.status.clone().unwrap_or_default();
    let mut plan = Plan {
        status: before.clone(),
        before,
        creates: Vec::new(),
        deletes: Vec::new(),
        jobs: Vec::new(),
        requeue: Duration::from_secs(3600),
        now: ctx.now,
    };
    settle_forget(obs, &mut plan);
    let new_success = count_runs(obs, &mut plan);
    match validate(sched) {
        Err(problem) => {
            plan.condition("ConfigValid", false, "InvalidSchedule", problem);
            plan.status.next_schedule_time = None;
            plan.requeue = BLOCKED_POLL;
        }
        Ok((schedule, kind)) => {
            let message = match (&sched.spec.schedule, &sched.spec.every) {
                (Some(cron), _) => format!(
                    "runs on {cron:?} in {}",
                    sched.spec.time_zone.as_deref().unwrap_or("UTC")
                ),
                (_, every) => format!("runs every {}", every.as_deref().unwrap_or_default()),
            };
            plan.condition("ConfigValid", true, "Valid", message);
            run_when_due(obs, ctx, &mut plan, &schedule);
            retain(obs, ctx, &mut plan, kind, new_success);
        }
    }
    plan.finish()
}

/// Status and actions under construction.
struct Plan {
    before: BackupScheduleStatus,
    status: BackupScheduleStatus,
    creates: Vec<Action>,
    deletes: Vec<Action>,
    jobs: Vec<Action>,
    requeue: Duration,
    now: Timestamp,
}

impl Plan {
    fn condition(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        set_condition(
            &mut self.status.conditions,
            Condition::new(type_, ok, reason, message, time(self.now)),
        );
    }

    /// Runs are created before the status records them (a lost patch then finds the run
    /// by name); deletions and Jobs follow the patch that counts them.
    fn finish(self) -> Vec<Action> {
        let mut actions = self.creates;
        if self.status != self.before {
            actions.push(Action::PatchScheduleStatus(Box::new(self.status)));
        }
        actions.extend(self.deletes);
        actions.extend(self.jobs);
        actions.push(Action::RequeueAfter(
            self.requeue.max(Duration::from_secs(1)),
        ));
        actions
    }
}

/// The schedule and the template kind, or what to fix.
fn validate(sched: &BackupSchedule) -> Result<(Schedule, RunKind), String> {
    let schedule = Schedule::from_spec(&sched.spec);
    let template = &sched.spec.template;
    let kind = match (&template.application_backup, &template.volume_backup) {
        (Some(_), None) => Ok(RunKind::Application),
        (None, Some(_)) => Ok(RunKind::Volume),
        _ => Err("spec.template must set exactly one of applicationBackup and volumeBackup".into()),
    };
    match (schedule, kind) {
        (Ok(s), Ok(k)) => Ok((s, k)),
        (s, k) => Err([s.err(), k.err()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Records the result of a finished forget Job.
fn settle_forget(obs: &ScheduleObserved, plan: &mut Plan) {
    let Some(name) = plan.status.forget_job.clone() else {
        return;
    };
    let job = obs.forget_job.as_ref().filter(|j| j.name == name);
    let (ok, message) = match job {
        Some(j) if j.is_running() => {
            plan.requeue = plan.requeue.min(Duration::from_secs(60));
            return;
        }
        Some(j) if j.succeeded => {
            let outcome = j
                .termination_message
                .as_deref()
                .and_then(JobOutcome::parse)
                .unwrap_or_default();
            (true, outcome.message)
        }
        Some(j) => (false, failure_reason(j)),
        None => (
            false,
            format!("Job {name:?} was deleted before it finished"),
        ),
    };
    plan.status.forget_job = None;
    if ok {
        plan.condition("RetentionApplied", true, "SnapshotsForgotten", message);
    } else {
        plan.condition(
            "RetentionApplied",
            false,
            "ForgetFailed",
            format!("{message}; the next successful run tries again"),
        );
    }
}

/// Counts runs seen finished for the first time and sets `active` and the last success.
/// Returns whether a run succeeded since the last reconcile.
fn count_runs(obs: &ScheduleObserved, plan: &mut Plan) -> bool {
    let exists = |name: &String| obs.runs.iter().any(|r| &r.name == name);
    let status = &mut plan.status;
    status.pruned_runs.retain(exists);
    status.counted_runs.retain(exists);
    let mut runs: Vec<&ScheduleRun> = obs
        .runs
        .iter()
        .filter(|r| !status.pruned_runs.contains(&r.name))
        .collect();
    runs.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.name.cmp(&b.name)));
    let mut new_success = false;
    for run in &runs {
        if run.outcome == RunOutcome::Running || status.counted_runs.contains(&run.name) {
            continue;
        }
        status.counted_runs.push(run.name.clone());
        if run.outcome == RunOutcome::Succeeded {
            status.succeeded += 1;
            new_success = true;
        } else {
            status.failed += 1;
        }
    }
    status.active = runs
        .iter()
        .rev()
        .find(|r| r.outcome == RunOutcome::Running)
        .map(|r| r.name.clone());
    if let Some(last) = runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Succeeded)
        .max_by_key(|r| (r.finished.unwrap_or(r.time), r.time))
    {
        let finished = last.finished.unwrap_or(last.time);
        let newer = status
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 <= finished);
        if newer {
            status.last_successful_time = Some(time(finished));
            status.last_successful_backup = Some(last.name.clone());
        }
    }
    new_success
}

/// The name of the run due at `due`: `<schedule>-<yyyymmddhhmmss UTC>`, shortened with a
/// hash when too long.
pub fn run_name(schedule: &str, due: Timestamp) -> String {
    objects::job_name(schedule, &due.strftime("%Y%m%d%H%M%S").to_string())
}

/// Creates the run that is due, or skips it while another runs; sets the next time.
fn run_when_due(obs: &ScheduleObserved, ctx: &DecideContext, plan: &mut Plan, schedule: &Schedule) {
    let sched = &obs.schedule;
    let now = ctx.now;
    if sched.spec.suspend {
        if plan.status.suspended_at.is_none() {
            plan.status.suspended_at = Some(time(now));
        }
        plan.status.next_schedule_time = None;
        return;
    }
    if plan.status.suspended_at.take().is_some() {
        // Due times missed while suspended are dropped.
        plan.status.not_before = Some(time(now));
    }
    let base = |status: &BackupScheduleStatus| -> Timestamp {
        [
            status.last_schedule_time.as_ref().map(|t| t.0),
            status.not_before.as_ref().map(|t| t.0),
            sched.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now)
    };
    if let Some(due) = schedule.latest_due(base(&plan.status), now) {
        let name = run_name(&sched.name_any(), due);
        if obs.runs.iter().any(|r| r.name == name) {
            // Created by a reconcile whose status patch was lost.
            plan.status.last_schedule_time = Some(time(due));
        } else if let Some(active) = plan.status.active.clone() {
            plan.status.skipped += 1;
            plan.status.not_before = Some(time(now));
            plan.condition(
                "LastRunSkipped",
                true,
                "PreviousRunActive",
                format!(
                    "the run due at {due} was skipped: {active} was still running; the next \
                     time counts from {now}"
                ),
            );
        } else if let Some(run) = run_object(sched, &name, due) {
            plan.creates.push(Action::CreateScheduledRun(Box::new(run)));
            plan.status.runs += 1;
            plan.status.last_schedule_time = Some(time(due));
            plan.status.active = Some(name);
        }
    }
    let from = base(&plan.status);
    match schedule.next_after(from, now.max(from)) {
        Some(next) => {
            plan.status.next_schedule_time = Some(time(next));
            let wait = now.duration_until(next).unsigned_abs();
            plan.requeue = plan.requeue.min(wait);
        }
        None => plan.status.next_schedule_time = None,
    }
}

/// The backup object of one run: the template's spec with the schedule's tag, labelled and
/// owned by the schedule.
fn run_object(sched: &BackupSchedule, name: &str, due: Timestamp) -> Option<ScheduledRun> {
    let owner = sched.controller_owner_ref(&()).unwrap_or_default();
    let schedule = sched.name_any();
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: sched.namespace(),
        labels: Some(BTreeMap::from([
            (LABEL_SCHEDULE.to_string(), schedule.clone()),
            (LABEL_OWNER.to_string(), schedule.clone()),
        ])),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_SCHEDULED_TIME.to_string(),
            due.to_string(),
        )])),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    let template = &sched.spec.template;
    let tagged = |tags: &BTreeMap<String, String>| {
        let mut tags = tags.clone();
        tags.insert(TAG_SCHEDULE.into(), schedule.clone());
        tags
    };
    match (&template.application_backup, &template.volume_backup) {
        (Some(spec), None) => Some(ScheduledRun::Application(Box::new(ApplicationBackup {
            metadata,
            spec: ApplicationBackupSpec {
                tags: tagged(&spec.tags),
                ..spec.clone()
            },
            status: None,
        }))),
        (None, Some(spec)) => Some(ScheduledRun::Volume(Box::new(VolumeBackup {
            metadata,
            spec: VolumeBackupSpec {
                tags: tagged(&spec.tags),
                ..spec.clone()
            },
            status: None,
        }))),
        _ => None,
    }
}

/// The keep rules as `cairn forget` reads them; None when every count is zero.
pub fn retention_policy(r: &ScheduleRetention) -> Option<RetentionPolicy> {
    let some = |n: u32| (n > 0).then_some(n);
    let policy = RetentionPolicy {
        keep_last: some(r.keep_last),
        keep_hourly: some(r.keep_hourly),
        keep_daily: some(r.keep_daily),
        keep_weekly: some(r.keep_weekly),
        keep_monthly: some(r.keep_monthly),
        keep_yearly: some(r.keep_yearly),
        ..RetentionPolicy::default()
    };
    (!policy.is_empty()).then_some(policy)
}

/// The `--keep-*` flags of `cairn job forget` for `r`.
pub fn keep_flags(r: &ScheduleRetention) -> Vec<String> {
    [
        ("--keep-last", r.keep_last),
        ("--keep-hourly", r.keep_hourly),
        ("--keep-daily", r.keep_daily),
        ("--keep-weekly", r.keep_weekly),
        ("--keep-monthly", r.keep_monthly),
        ("--keep-yearly", r.keep_yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .flat_map(|(flag, n)| [flag.to_string(), n.to_string()])
    .collect()
}

fn chrono_time(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Deletes the finished runs retention does not keep, and owes a forget Job after a
/// success so the repository keeps the same history.
fn retain(
    obs: &ScheduleObserved,
    ctx: &DecideContext,
    plan: &mut Plan,
    kind: RunKind,
    new_success: bool,
) {
    let sched = &obs.schedule;
    let Some(policy) = retention_policy(&sched.spec.retention) else {
        plan.status
            .conditions
            .retain(|c| c.type_ != "RetentionApplied");
        return;
    };
    let runs: Vec<&ScheduleRun> = obs
        .runs
        .iter()
        .filter(|r| !plan.status.pruned_runs.contains(&r.name))
        .collect();
    let successes: Vec<SnapshotInfo> = runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Succeeded)
        .map(|r| SnapshotInfo {
            id: r.name.clone(),
            time: chrono_time(r.time),
            host: String::new(),
            source: sched.name_any(),
            tags: Vec::new(),
        })
        .collect();
    let decisions = apply(&policy, &successes, chrono_time(ctx.now)).unwrap_or_default();
    let mut doomed: Vec<String> = decisions.iter().flat_map(|d| d.remove.clone()).collect();
    let oldest_kept = decisions
        .iter()
        .flat_map(|d| &d.keep)
        .filter_map(|k| runs.iter().find(|r| r.name == k.id).map(|r| r.time))
        .min();
    if let Some(oldest) = oldest_kept {
        doomed.extend(
            runs.iter()
                .filter(|r| r.outcome == RunOutcome::Failed && r.time < oldest)
                .map(|r| r.name.clone()),
        );
    }
    let ns = sched.namespace().unwrap_or_default();
    for name in doomed {
        plan.status.pruned += 1;
        plan.status.counted_runs.retain(|n| n != &name);
        plan.status.pruned_runs.push(name.clone());
        plan.deletes.push(Action::DeleteScheduledRun {
            kind,
            namespace: ns.clone(),
            name,
        });
    }
    if new_success {
        plan.status.forget_pending = true;
    }
    if plan.status.forget_pending && plan.status.forget_job.is_none() {
        forget(obs, ctx, plan);
    }
}

/// Creates the forget Job when its repository and a maintenance slot are free.
fn forget(obs: &ScheduleObserved, ctx: &DecideContext, plan: &mut Plan) {
    let sched = &obs.schedule;
    let ns = sched.namespace().unwrap_or_default();
    let template = &sched.spec.template;
    let repository_name = template
        .volume_backup
        .as_ref()
        .map(|t| t.repository.clone())
        .or_else(|| {
            template
                .application_backup
                .as_ref()
                .map(|t| t.repository.clone())
        })
        .unwrap_or_default();
    let Some(repository) = &obs.repository else {
        plan.condition(
            "RetentionApplied",
            false,
            "RepositoryNotFound",
            format!(
                "BackupRepository {repository_name:?} does not exist in namespace {ns:?}; \
                 snapshots are forgotten once it does"
            ),
        );
        plan.requeue = plan.requeue.min(BLOCKED_POLL);
        return;
    };
    let limit = JobKind::Maintenance.limit(&ctx.config);
    if obs.running_maintenance_jobs >= limit || obs.repository_busy {
        let why = if obs.repository_busy {
            format!("another maintenance Job is running on BackupRepository {repository_name:?}")
        } else {
            format!(
                "{} maintenance Jobs are running, the limit (KDMP_MAINTENANCE_JOB_LIMIT) is {limit}",
                obs.running_maintenance_jobs
            )
        };
        plan.condition("WaitingForJobSlot", true, "JobLimitReached", why);
        plan.requeue = plan.requeue.min(POLL);
        return;
    }
    plan.status
        .conditions
        .retain(|c| c.type_ != "WaitingForJobSlot");
    let name = objects::job_name(
        &sched.name_any(),
        &format!("forget-{}", ctx.now.as_second()),
    );
    let mut args = vec![
        "forget".to_string(),
        "--tag".into(),
        format!("{TAG_SCHEDULE}={}", sched.name_any()),
    ];
    args.extend(keep_flags(&sched.spec.retention));
    let owner = sched.controller_owner_ref(&()).unwrap_or_default();
    let spec = JobSpec {
        name: name.clone(),
        namespace: &ns,
        kind: JobKind::Maintenance,
        owner: &owner,
        repository,
        args,
        data: None,
        with_excludes: false,
    };
    plan.jobs.push(Action::CreateJob(Box::new(objects::job(
        &spec,
        &ctx.config,
        &ctx.jobs,
    ))));
    plan.status.forget_job = Some(name);
    plan.status.forget_pending = false;
    plan.requeue = plan.requeue.min(Duration::from_secs(60));
}
