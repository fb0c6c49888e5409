//! Job mode: what the cairn binary does inside the Jobs the controller creates. It runs the
//! engine, patches progress into the owner's status every few seconds, mirrors snapshots
//! into RepositorySnapshot objects, and leaves a [`JobOutcome`] in the termination message.

mod apiobjects;
mod capture;
mod catalog;
mod engine;
mod location;
mod params;
mod restore_resources;

pub use capture::{TAG_APPLICATION_BACKUP, TAG_CONTENT};
pub use catalog::{snapshot_object, snapshot_object_name};
pub use engine::{
    BackupJobRequest, BackupJobResult, Engine, EngineError, EngineProgress, ForgetJobRequest,
    LocationContent, MaintenanceJobRequest, MaintenanceJobResult, RepositoryAccess,
    RestoreJobRequest, RestoreJobResult, SnapshotSummary,
};
pub use location::{ensure_repository, forget_one};
pub use params::{secret_value, JobCommand, JobParams};
pub use restore_resources::{replacement, status_patch, Applied, StageCounts, MAX_FAILURES};

use crate::crd::{VolumeBackup, VolumeRestore};
use crate::protocol::JobOutcome;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;

/// Job-mode failures outside the engine.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Bad or missing arguments.
    #[error("job arguments: {0}")]
    Usage(String),
    /// A mounted Secret could not be read: check the BackupRepository's Secret refs.
    #[error("reading a mounted secret: {0}")]
    Secret(String),
    /// The termination message could not be written.
    #[error("writing the termination message to {path}: {source}")]
    Termination {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The engine thread panicked.
    #[error("the engine stopped unexpectedly: {0}")]
    Engine(String),
}

/// Runs one job to its end and writes the outcome to `params.termination_log`.
///
/// With a client, progress is patched into the VolumeBackup (or VolumeRestore) status every
/// `params.progress_interval` while it changes, and snapshots are mirrored as
/// RepositorySnapshots. API failures only log: the repository, not the API server, holds
/// the result. Returns the outcome, whose `succeeded` decides the process exit code.
pub async fn run_job(
    params: JobParams,
    engine: Arc<dyn Engine>,
    client: Option<kube::Client>,
) -> Result<JobOutcome, JobError> {
    // Every line the job logs (also from the engine's thread) names what it works for.
    let (kind, name) = job_resource(&params);
    let span = tracing::error_span!(
        "job",
        command = ?params.command,
        namespace = %params.namespace.as_deref().unwrap_or_default(),
        kind,
        resource = %name,
    );
    tracing::Instrument::instrument(run_job_in_span(params, engine, client), span).await
}

/// The kind and name of the resource a job works for: its VolumeBackup, VolumeRestore,
/// ApplicationBackup or ApplicationRestore, else its BackupRepository.
fn job_resource(params: &JobParams) -> (&'static str, &str) {
    let named = [
        ("VolumeBackup", &params.volume_backup),
        ("VolumeRestore", &params.volume_restore),
        ("ApplicationBackup", &params.application_backup),
        ("ApplicationRestore", &params.application_restore),
        ("BackupRepository", &params.repository_name),
    ];
    named
        .into_iter()
        .find_map(|(kind, name)| Some((kind, name.as_deref()?)))
        .unwrap_or(("", ""))
}

async fn run_job_in_span(
    params: JobParams,
    engine: Arc<dyn Engine>,
    client: Option<kube::Client>,
) -> Result<JobOutcome, JobError> {
    if matches!(
        params.command,
        JobCommand::CaptureResources | JobCommand::RestoreResources
    ) {
        return run_resource_job(params, engine, client).await;
    }
    let (tx, rx) = watch::channel(None::<engine::EngineProgress>);
    let reporter = client
        .clone()
        .and_then(|c| progress_target(&params, c))
        .map(|target| {
            let interval = params.progress_interval;
            tokio::spawn(report_progress(target, rx, interval))
        });
    let work = {
        let params = params.clone();
        let engine = engine.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                run_engine(&params, engine.as_ref(), &move |p| {
                    tx.send_replace(Some(p));
                })
            })
        })
    };
    let result = work.await.map_err(|e| JobError::Engine(e.to_string()));
    if let Some(reporter) = reporter {
        // The sender dropped with the engine closure: the reporter sends the last value and ends.
        let _ = reporter.await;
    }
    let (mut outcome, snapshots) = result?;
    if params.command == JobCommand::Catalog && client.is_none() && outcome.succeeded {
        // The mirror is the catalog job's whole purpose: listing alone did nothing.
        outcome = JobOutcome {
            succeeded: false,
            retryable: true,
            message: format!(
                "{}, but no Kubernetes API access to update RepositorySnapshots",
                outcome.message
            ),
            ..outcome
        };
    }
    if let (Some(client), true) = (client, outcome.succeeded) {
        if let Err(e) = catalog::mirror(&params, client, snapshots).await {
            tracing::warn!(error = %e, "could not update the RepositorySnapshot mirror");
            if params.command == JobCommand::Catalog {
                outcome = JobOutcome {
                    succeeded: false,
                    retryable: true,
                    message: format!("updating RepositorySnapshots: {e}"),
                    ..outcome
                };
            }
        }
    }
    let path = params.termination_log.clone();
    tokio::fs::write(&path, outcome.to_message())
        .await
        .map_err(|source| JobError::Termination {
            path: path.display().to_string(),
            source,
        })?;
    Ok(outcome)
}

/// `capture-resources` and `restore-resources`: the work is mostly API calls, so it runs
/// on the async runtime and reaches the engine once, off it.
async fn run_resource_job(
    params: JobParams,
    engine: Arc<dyn Engine>,
    client: Option<kube::Client>,
) -> Result<JobOutcome, JobError> {
    let outcome = match client {
        None => JobOutcome {
            succeeded: false,
            retryable: true,
            message: "no Kubernetes API access: resource jobs read and write cluster objects"
                .into(),
            ..Default::default()
        },
        Some(client) => match params.command {
            JobCommand::CaptureResources => {
                let (mut outcome, mirror) = capture::run(&params, engine, client.clone()).await;
                if outcome.succeeded {
                    if let Err(e) = catalog::mirror(&params, client, mirror).await {
                        tracing::warn!(error = %e, "could not update the RepositorySnapshot mirror");
                        outcome.message.push_str("; RepositorySnapshot not written");
                    }
                }
                outcome
            }
            _ => restore_resources::run(&params, engine, client).await,
        },
    };
    let path = params.termination_log.clone();
    tokio::fs::write(&path, outcome.to_message())
        .await
        .map_err(|source| JobError::Termination {
            path: path.display().to_string(),
            source,
        })?;
    Ok(outcome)
}

/// What the catalog step should do after the engine ran.
enum Mirror {
    Nothing,
    /// Add or refresh one snapshot (a backup just made it).
    One(SnapshotSummary),
    /// Replace the whole mirror.
    All(Vec<SnapshotSummary>),
}

fn run_engine(
    params: &JobParams,
    engine: &dyn Engine,
    progress: &dyn Fn(EngineProgress),
) -> (JobOutcome, Mirror) {
    let repository = params.repository.clone();
    let failed = |e: EngineError| {
        (
            JobOutcome {
                succeeded: false,
                message: e.message,
                retryable: e.retryable,
                ..Default::default()
            },
            Mirror::Nothing,
        )
    };
    match params.command {
        JobCommand::Backup => {
            let req = BackupJobRequest {
                repository,
                source: params.source.clone().unwrap_or_default(),
                device: params.device,
                source_name: params.source_name.clone().unwrap_or_default(),
                tags: params.tags.clone(),
                storage_class: params.storage_class.clone(),
                exclude_config: params.exclude_config.clone(),
                checkpoint_interval: params.checkpoint_interval,
                limit_read: params.limit_read,
            };
            if params.init_if_missing {
                if let Err(e) = ensure_repository(engine, &req.repository) {
                    return failed(e);
                }
            }
            match engine.backup(&req, progress) {
                Ok(r) => {
                    progress(EngineProgress {
                        bytes_done: r.bytes_done,
                        total_bytes: r.total_bytes,
                    });
                    let summary = r.summary_for(&req);
                    let outcome = JobOutcome {
                        succeeded: true,
                        snapshot_id: Some(r.snapshot_id),
                        bytes_done: r.bytes_done,
                        total_bytes: r.total_bytes,
                        bytes_added: r.bytes_added,
                        message: r.summary,
                        ..Default::default()
                    };
                    (outcome, Mirror::One(summary))
                }
                Err(e) => failed(e),
            }
        }
        JobCommand::Restore => {
            let req = RestoreJobRequest {
                repository,
                snapshot: params.snapshot.clone().unwrap_or_default(),
                target: params.target.clone().unwrap_or_default(),
                device: params.device,
                include_paths: params.include_paths.clone(),
            };
            match engine.restore(&req, progress) {
                Ok(r) => {
                    progress(EngineProgress {
                        bytes_done: r.bytes_done,
                        total_bytes: r.total_bytes,
                    });
                    let outcome = JobOutcome {
                        succeeded: true,
                        bytes_done: r.bytes_done,
                        total_bytes: r.total_bytes,
                        message: r.summary,
                        ..Default::default()
                    };
                    (outcome, Mirror::Nothing)
                }
                Err(e) => failed(e),
            }
        }
        JobCommand::Maintenance => match engine.maintenance(&MaintenanceJobRequest {
            repository: repository.clone(),
            kind: params.maintenance_kind,
        }) {
            // Maintenance may have removed snapshots: refresh the mirror while we are here.
            Ok(r) => {
                let mirror = engine
                    .list_snapshots(&repository)
                    .map(Mirror::All)
                    .unwrap_or(Mirror::Nothing);
                (
                    JobOutcome {
                        succeeded: true,
                        message: r.summary,
                        bytes_reclaimed: Some(r.bytes_reclaimed),
                        repository_bytes: r.repository_bytes,
                        blob_count: r.blob_count,
                        damage_records: r.damage_records,
                        ..Default::default()
                    },
                    mirror,
                )
            }
            Err(e) => failed(e),
        },
        JobCommand::CaptureResources | JobCommand::RestoreResources => failed(EngineError {
            message: "resource jobs run through run_resource_job".into(),
            retryable: false,
        }),
        JobCommand::Forget if params.snapshot.is_some() => {
            let id = params.snapshot.as_deref().unwrap_or_default();
            match forget_one(engine, &repository, id) {
                Ok(summary) => (
                    JobOutcome {
                        succeeded: true,
                        message: summary,
                        ..Default::default()
                    },
                    Mirror::Nothing,
                ),
                Err(e) => failed(e),
            }
        }
        JobCommand::Forget => match engine.forget(&ForgetJobRequest {
            repository: repository.clone(),
            tags: params.tags.clone(),
            policy: params.retention.clone(),
        }) {
            // Refresh the mirror so forgotten snapshots leave it.
            Ok(summary) => {
                let mirror = engine
                    .list_snapshots(&repository)
                    .map(Mirror::All)
                    .unwrap_or(Mirror::Nothing);
                (
                    JobOutcome {
                        succeeded: true,
                        message: summary,
                        ..Default::default()
                    },
                    mirror,
                )
            }
            Err(e) => failed(e),
        },
        JobCommand::Catalog => match engine.list_snapshots(&repository) {
            Ok(list) => {
                let message = format!("{} snapshots", list.len());
                (
                    JobOutcome {
                        succeeded: true,
                        message,
                        ..Default::default()
                    },
                    Mirror::All(list),
                )
            }
            Err(e) => failed(e),
        },
    }
}

/// Where progress goes: the status of the VolumeBackup or VolumeRestore the job serves.
enum ProgressTarget {
    Backup(Api<VolumeBackup>, String),
    Restore(Api<VolumeRestore>, String),
    /// A Velero DataUpload or DataDownload (same `status.progress` shape).
    Velero(Api<kube::api::DynamicObject>, String),
}

fn progress_target(params: &JobParams, client: kube::Client) -> Option<ProgressTarget> {
    if let Some((api, name)) = crate::velero::progress_api(params, client.clone()) {
        return Some(ProgressTarget::Velero(api, name));
    }
    let ns = params.namespace.as_deref()?;
    match params.command {
        JobCommand::Backup => Some(ProgressTarget::Backup(
            Api::namespaced(client, ns),
            params.volume_backup.clone()?,
        )),
        JobCommand::Restore => Some(ProgressTarget::Restore(
            Api::namespaced(client, ns),
            params.volume_restore.clone()?,
        )),
        _ => None,
    }
}

/// Patches the latest progress every `interval` while it changes, and once more when the
/// engine ends (the sender is dropped), so the last patch always carries the final numbers.
async fn report_progress(
    target: ProgressTarget,
    mut rx: watch::Receiver<Option<EngineProgress>>,
    interval: std::time::Duration,
) {
    let mut sent = None;
    loop {
        let open = rx.changed().await.is_ok();
        let latest = *rx.borrow_and_update();
        if let Some(p) = latest.filter(|p| Some(*p) != sent) {
            let body = json!({ "status": { "progress": { "bytesDone": p.bytes_done, "totalBytes": p.total_bytes } } });
            let patch = Patch::Merge(&body);
            let pp = PatchParams::default();
            let result = match &target {
                ProgressTarget::Backup(api, name) => {
                    api.patch_status(name, &pp, &patch).await.map(drop)
                }
                ProgressTarget::Restore(api, name) => {
                    api.patch_status(name, &pp, &patch).await.map(drop)
                }
                ProgressTarget::Velero(api, name) => {
                    api.patch_status(name, &pp, &patch).await.map(drop)
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "progress patch failed; continuing");
            }
            sent = Some(p);
        }
        if !open {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}
