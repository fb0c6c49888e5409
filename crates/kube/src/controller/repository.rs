//! Decisions for a BackupRepository: quick and full maintenance Jobs on their intervals,
//! periodic catalog Jobs that refresh the RepositorySnapshot mirror, and recording results.
//!
//! Invariant: at most one maintenance Job and one catalog Job per repository at a time;
//! a due full maintenance goes first, since it does everything quick maintenance does.

use super::backup::failure_reason;
use super::objects::{self, JobKind, JobSpec};
use super::{time, Action, DecideContext, JobInfo, BLOCKED_POLL, POLL};
use crate::config::{parse_duration, MAINTENANCE_KEYS};
use crate::crd::{set_condition, BackupRepository, Condition, MaintenanceKind, MaintenanceRun};
use crate::protocol::JobOutcome;
use jiff::Timestamp;
use kube::{Resource, ResourceExt};
use std::time::Duration;

/// Default interval between quick maintenance runs.
pub const DEFAULT_QUICK: Duration = Duration::from_secs(3600);
/// Default interval between full maintenance runs.
pub const DEFAULT_FULL: Duration = Duration::from_secs(24 * 3600);
/// Default interval between catalog refreshes.
pub const DEFAULT_CATALOG: Duration = Duration::from_secs(15 * 60);

/// Everything the repository decision looks at.
#[derive(Clone, Debug)]
pub struct RepositoryObserved {
    /// The BackupRepository.
    pub repository: BackupRepository,
    /// The Job of a maintenance run recorded as Running, if it exists.
    pub maintenance_job: Option<JobInfo>,
    /// The catalog Job named in the status, if it exists.
    pub catalog_job: Option<JobInfo>,
    /// Maintenance and catalog Jobs running in the cluster now.
    pub running_maintenance_jobs: u32,
}

/// Decides the next steps for one BackupRepository.
pub fn decide_repository(obs: &RepositoryObserved, ctx: &DecideContext) -> Vec<Action> {
    let obs = &RepositoryObserved {
        maintenance_job: super::judged(&obs.maintenance_job, ctx),
        catalog_job: super::judged(&obs.catalog_job, ctx),
        ..obs.clone()
    };
    let repo = &obs.repository;
    let before = repo.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let mut actions = Vec::new();
    let now = ctx.now;
    let cond =
        |status: &mut crate::crd::BackupRepositoryStatus, t: &str, ok: bool, r: &str, m: String| {
            set_condition(
                &mut status.conditions,
                Condition::new(t, ok, r, m, time(now)),
            );
        };
    let schedule = &repo.spec.maintenance;
    let intervals = [
        (
            "quickInterval",
            schedule.quick_interval.as_deref(),
            DEFAULT_QUICK,
        ),
        (
            "fullInterval",
            schedule.full_interval.as_deref(),
            DEFAULT_FULL,
        ),
        (
            "catalogRefreshInterval",
            repo.spec.catalog_refresh_interval.as_deref(),
            DEFAULT_CATALOG,
        ),
    ]
    .map(|(field, text, default)| match text.map(parse_duration) {
        None => Ok(default),
        Some(Ok(d)) if !d.is_zero() => Ok(d),
        Some(_) => Err(format!(
            "{field}: {:?} is not a duration; use for example \"6h\"",
            text.unwrap_or_default()
        )),
    });
    let problems: Vec<String> = ctx
        .config
        .problems_with(MAINTENANCE_KEYS)
        .into_iter()
        .chain(intervals.iter().filter_map(|r| r.clone().err()))
        .collect();
    if !problems.is_empty() {
        cond(
            &mut status,
            "ConfigValid",
            false,
            "InvalidConfiguration",
            problems.join("; "),
        );
        actions.push(Action::RequeueAfter(BLOCKED_POLL));
        return finish(before, status, actions);
    }
    status.conditions.retain(|c| c.type_ != "ConfigValid");
    let [quick_every, full_every, catalog_every] = intervals.map(|r| r.unwrap_or_default());

    // Record finished runs.
    let mut damage = None;
    for slot in [
        &mut status.maintenance.last_quick,
        &mut status.maintenance.last_full,
    ] {
        if let Some(run) = slot.as_mut().filter(|r| r.result == "Running") {
            let job = obs
                .maintenance_job
                .as_ref()
                .filter(|j| j.name == run.job_name);
            if let Some((result, message, outcome)) = settle(job, &run.job_name) {
                run.completion_time = Some(time(now));
                (run.result, run.message) = (result, message);
                run.bytes_reclaimed = outcome.bytes_reclaimed;
                run.repository_bytes = outcome.repository_bytes;
                run.blob_count = outcome.blob_count;
                run.damage_records = outcome.damage_records;
                if let Some(n) = outcome.damage_records {
                    damage = Some(n);
                }
            }
        }
    }
    if let Some(n) = damage {
        let message = if n > 0 {
            format!("{n} damage records name packs still indexed: run `cairn check` on the repository, then `cairn repair`")
        } else {
            "the last maintenance run found no recorded damage".into()
        };
        let reason = if n > 0 {
            "DamageRecorded"
        } else {
            "NoDamageRecorded"
        };
        cond(&mut status, "Damaged", n > 0, reason, message);
    }
    if let Some(name) = status.catalog_job.clone() {
        let job = obs.catalog_job.as_ref().filter(|j| j.name == name);
        if let Some((result, message, _)) = settle(job, &name) {
            status.catalog_job = None;
            status.last_catalog_refresh = Some(time(now));
            let ok = result == "Succeeded";
            let message = if ok {
                "the repository opened and its snapshots are mirrored".into()
            } else {
                message
            };
            cond(
                &mut status,
                "Ready",
                ok,
                if ok {
                    "CatalogRefreshed"
                } else {
                    "CatalogRefreshFailed"
                },
                message,
            );
        }
    }

    let mut running = obs.running_maintenance_jobs;
    let limit = JobKind::Maintenance.limit(&ctx.config);
    let mut next_due = catalog_every.min(quick_every);
    let maintenance_running = [
        &status.maintenance.last_quick,
        &status.maintenance.last_full,
    ]
    .iter()
    .any(|r| r.as_ref().is_some_and(|r| r.result == "Running"));
    if !schedule.suspend && !maintenance_running {
        let due = |last: &Option<MaintenanceRun>, every: Duration| -> Option<Duration> {
            let started = last
                .as_ref()
                .and_then(|r| r.start_time.as_ref())
                .map(|t| t.0);
            remaining(started, every, now)
        };
        let full_wait = due(&status.maintenance.last_full, full_every);
        let quick_wait = due(&status.maintenance.last_quick, quick_every);
        let kind = match (full_wait, quick_wait) {
            (None, _) => Some(MaintenanceKind::Full),
            (_, None) => Some(MaintenanceKind::Quick),
            (Some(f), Some(q)) => {
                next_due = next_due.min(f).min(q);
                None
            }
        };
        if let Some(kind) = kind {
            if running >= limit {
                cond(&mut status, "WaitingForJobSlot", true, "JobLimitReached", format!("{running} maintenance Jobs are running, the limit (KDMP_MAINTENANCE_JOB_LIMIT) is {limit}"));
                next_due = POLL;
            } else {
                let name = objects::job_name(
                    &repo.name_any(),
                    &format!("{}-{}", kind.as_str(), now.as_second()),
                );
                actions.push(create_job(
                    repo,
                    ctx,
                    &name,
                    vec!["maintenance".into(), "--kind".into(), kind.as_str().into()],
                ));
                running += 1;
                let run = MaintenanceRun {
                    job_name: name,
                    start_time: Some(time(now)),
                    completion_time: None,
                    result: "Running".into(),
                    message: String::new(),
                    bytes_reclaimed: None,
                    repository_bytes: None,
                    blob_count: None,
                    damage_records: None,
                };
                match kind {
                    MaintenanceKind::Quick => status.maintenance.last_quick = Some(run),
                    MaintenanceKind::Full => status.maintenance.last_full = Some(run),
                }
                status.conditions.retain(|c| c.type_ != "WaitingForJobSlot");
            }
        }
    }
    if status.catalog_job.is_none() {
        match remaining(
            status.last_catalog_refresh.as_ref().map(|t| t.0),
            catalog_every,
            now,
        ) {
            Some(wait) => next_due = next_due.min(wait),
            None if running < limit => {
                let name =
                    objects::job_name(&repo.name_any(), &format!("catalog-{}", now.as_second()));
                actions.push(create_job(repo, ctx, &name, vec!["catalog".into()]));
                status.catalog_job = Some(name);
            }
            None => next_due = POLL,
        }
    }
    actions.push(Action::RequeueAfter(next_due.max(Duration::from_secs(1))));
    finish(before, status, actions)
}

fn finish(
    before: crate::crd::BackupRepositoryStatus,
    status: crate::crd::BackupRepositoryStatus,
    mut actions: Vec<Action>,
) -> Vec<Action> {
    if status != before {
        actions.insert(0, Action::PatchRepositoryStatus(Box::new(status)));
    }
    actions
}

/// Time left until `last + every`; None when due now (or never ran).
fn remaining(last: Option<Timestamp>, every: Duration, now: Timestamp) -> Option<Duration> {
    let elapsed = now.duration_since(last?);
    let left = every.as_secs_f64() - elapsed.as_secs_f64();
    (left > 0.0).then(|| Duration::from_secs_f64(left))
}

/// `(result, message, outcome)` once the Job named `name` has ended or vanished (the
/// outcome is empty unless it succeeded); None while it runs.
fn settle(job: Option<&JobInfo>, name: &str) -> Option<(String, String, JobOutcome)> {
    match job {
        Some(j) if j.is_running() => None,
        Some(j) if j.succeeded => {
            let outcome = j
                .termination_message
                .as_deref()
                .and_then(JobOutcome::parse)
                .unwrap_or_default();
            Some(("Succeeded".into(), outcome.message.clone(), outcome))
        }
        Some(j) => Some(("Failed".into(), failure_reason(j), JobOutcome::default())),
        None => Some((
            "Failed".into(),
            format!("Job {name:?} was deleted before it finished"),
            JobOutcome::default(),
        )),
    }
}

fn create_job(
    repo: &BackupRepository,
    ctx: &DecideContext,
    name: &str,
    args: Vec<String>,
) -> Action {
    let ns = repo.namespace().unwrap_or_default();
    let owner = repo.controller_owner_ref(&()).unwrap_or_default();
    let spec = JobSpec {
        name: name.to_string(),
        namespace: &ns,
        kind: JobKind::Maintenance,
        owner: &owner,
        repository: repo,
        args,
        data: None,
        with_excludes: false,
    };
    Action::CreateJob(Box::new(objects::job(&spec, &ctx.config, &ctx.jobs)))
}
