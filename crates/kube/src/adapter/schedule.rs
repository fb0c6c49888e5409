//! The BackupSchedule side of the adapter: observes a schedule's runs, its repository and
//! its forget Job, and creates and deletes runs.

use super::observe::{job_info, job_running, running_jobs};
use super::{api_err, create, delete, AdapterError};
use crate::controller::{
    JobKind, RunKind, RunOutcome, ScheduleObserved, ScheduleRun, ScheduledRun,
    ANNOTATION_SCHEDULED_TIME, LABEL_JOB_KIND, LABEL_REPOSITORY, LABEL_SCHEDULE,
};
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase, BackupRepository, BackupSchedule, VolumeBackup,
    VolumeBackupPhase,
};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PropagationPolicy};
use kube::{Api, ResourceExt};

/// When a run was due: its annotation, else its creation time.
fn run_time(meta: &ObjectMeta) -> Timestamp {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SCHEDULED_TIME))
        .and_then(|t| t.parse().ok())
        .or_else(|| meta.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The runs of schedule `name` in `ns`: backup objects of the template's kind with its label.
pub async fn list_runs(
    client: &kube::Client,
    ns: &str,
    name: &str,
    kind: RunKind,
) -> Result<Vec<ScheduleRun>, AdapterError> {
    let params = ListParams::default().labels(&format!("{LABEL_SCHEDULE}={name}"));
    let what = || format!("listing the runs of BackupSchedule {ns}/{name}");
    Ok(match kind {
        RunKind::Volume => Api::<VolumeBackup>::namespaced(client.clone(), ns)
            .list(&params)
            .await
            .map_err(api_err(what()))?
            .items
            .into_iter()
            .map(|vb| {
                let status = vb.status.clone().unwrap_or_default();
                ScheduleRun {
                    name: vb.name_any(),
                    outcome: match status.phase {
                        VolumeBackupPhase::Completed => RunOutcome::Succeeded,
                        VolumeBackupPhase::Failed | VolumeBackupPhase::Canceled => {
                            RunOutcome::Failed
                        }
                        _ => RunOutcome::Running,
                    },
                    time: run_time(&vb.metadata),
                    finished: status.completion_time.map(|t| t.0),
                }
            })
            .collect(),
        RunKind::Application => Api::<ApplicationBackup>::namespaced(client.clone(), ns)
            .list(&params)
            .await
            .map_err(api_err(what()))?
            .items
            .into_iter()
            .map(|ab| {
                let status = ab.status.clone().unwrap_or_default();
                ScheduleRun {
                    name: ab.name_any(),
                    outcome: match status.phase {
                        ApplicationBackupPhase::Completed => RunOutcome::Succeeded,
                        p if p.is_terminal() => RunOutcome::Failed,
                        _ => RunOutcome::Running,
                    },
                    time: run_time(&ab.metadata),
                    finished: status.completion_time.map(|t| t.0),
                }
            })
            .collect(),
    })
}

/// Observes everything [`crate::controller::decide_schedule`] needs.
pub async fn observe_schedule(
    client: &kube::Client,
    schedule: &BackupSchedule,
) -> Result<ScheduleObserved, AdapterError> {
    let ns = schedule.namespace().unwrap_or_default();
    let name = schedule.name_any();
    let status = schedule.status.clone().unwrap_or_default();
    let template = &schedule.spec.template;
    let (kind, repository_name) = match (&template.application_backup, &template.volume_backup) {
        (Some(t), _) => (RunKind::Application, Some(t.repository.clone())),
        (None, Some(t)) => (RunKind::Volume, Some(t.repository.clone())),
        (None, None) => (RunKind::Volume, None),
    };
    let runs = list_runs(client, &ns, &name, kind).await?;
    let repository = match &repository_name {
        Some(repo) => Api::<BackupRepository>::namespaced(client.clone(), &ns)
            .get_opt(repo)
            .await
            .map_err(api_err(format!("reading BackupRepository {ns}/{repo}")))?,
        None => None,
    };
    let repository_busy = match &repository_name {
        Some(repo) => Api::<Job>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&format!(
                "{LABEL_JOB_KIND}={},{LABEL_REPOSITORY}={repo}",
                JobKind::Maintenance.as_str()
            )))
            .await
            .map_err(api_err(format!(
                "listing the maintenance Jobs of BackupRepository {ns}/{repo}"
            )))?
            .items
            .iter()
            .any(job_running),
        None => false,
    };
    Ok(ScheduleObserved {
        schedule: schedule.clone(),
        runs,
        repository,
        forget_job: job_info(client, &ns, status.forget_job.as_deref()).await?,
        running_maintenance_jobs: running_jobs(client, JobKind::Maintenance).await?,
        repository_busy,
    })
}

/// Creates a run; one that exists already counts as created.
pub(super) async fn create_run(
    client: &kube::Client,
    ns: &str,
    run: &ScheduledRun,
) -> Result<(), AdapterError> {
    match run {
        ScheduledRun::Volume(vb) => {
            let api: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
            create(&api, ns, "VolumeBackup", vb.as_ref()).await
        }
        ScheduledRun::Application(ab) => {
            let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
            create(&api, ns, "ApplicationBackup", ab.as_ref()).await
        }
    }
}

/// Deletes a run (its Jobs, PVCs and snapshots go with it through their owner references);
/// one that is gone already counts as deleted.
pub(super) async fn delete_run(
    client: &kube::Client,
    kind: RunKind,
    ns: &str,
    name: &str,
) -> Result<(), AdapterError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match kind {
        RunKind::Volume => {
            let api: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
            delete(&api, ns, "VolumeBackup", name, &params).await
        }
        RunKind::Application => {
            let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
            delete(&api, ns, "ApplicationBackup", name, &params).await
        }
    }
}
