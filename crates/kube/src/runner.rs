//! `cairn kube controller`: kube-runtime controllers (VolumeBackup, VolumeRestore,
//! BackupRepository, BackupSchedule) whose reconcile is observe -> decide -> execute.
//!
//! Invariant: observing, deciding and creating Jobs happen under one lock, so two
//! reconciles never both see a free job slot and both take it. Rule commands, which can
//! run for minutes, are executed after the lock is released.

use crate::adapter::{self, AdapterError, Target};
use crate::controller::{self, Action, DecideContext, JobSettings, LABEL_JOB_KIND};
use crate::crd::{
    ApplicationBackup, BackupRepository, BackupSchedule, VolumeBackup, VolumeRestore,
};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Namespace of the controller and its ConfigMap.
    pub namespace: String,
    /// ConfigMap name (`cairn-config`).
    pub config_map: String,
    /// Image, service account and retry settings for Jobs.
    pub jobs: JobSettings,
}

/// Controller failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A reconcile failed; it is retried.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

struct Context {
    client: kube::Client,
    options: ControllerOptions,
    lock: Mutex<()>,
}

/// Runs the controller until the process is stopped (SIGTERM/ctrl-c).
pub async fn run_controller(
    client: kube::Client,
    options: ControllerOptions,
) -> Result<(), ControllerError> {
    let ctx = Arc::new(Context {
        client: client.clone(),
        options,
        lock: Mutex::new(()),
    });
    let jobs = || watcher::Config::default().labels(LABEL_JOB_KIND);
    let backups = Controller::new(
        Api::<VolumeBackup>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .shutdown_on_signal()
    .run(reconcile_backup, retry, ctx.clone())
    .for_each(log_result);
    let restores = Controller::new(
        Api::<VolumeRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .shutdown_on_signal()
    .run(reconcile_restore, retry, ctx.clone())
    .for_each(log_result);
    let repositories = Controller::new(
        Api::<BackupRepository>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .shutdown_on_signal()
    .run(reconcile_repository, retry, ctx.clone())
    .for_each(log_result);
    // A schedule owns its runs (and its forget Jobs): a run that finishes wakes it.
    let runs = || watcher::Config::default().labels(controller::LABEL_SCHEDULE);
    let schedules = Controller::new(
        Api::<BackupSchedule>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<VolumeBackup>::all(client.clone()), runs())
    .owns(Api::<ApplicationBackup>::all(client.clone()), runs())
    .owns(Api::<Job>::all(client), jobs())
    .shutdown_on_signal()
    .run(reconcile_schedule, retry, ctx)
    .for_each(log_result);
    futures::join!(backups, restores, repositories, schedules);
    Ok(())
}

async fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "reconcile failed");
    }
}

fn retry<K>(_: Arc<K>, error: &ControllerError, _: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, "retrying in 30s");
    Requeue::requeue(Duration::from_secs(30))
}

/// Executes `actions` for `target`, releasing `guard` before a rule runs.
async fn execute(
    ctx: &Context,
    target: Target,
    actions: Vec<Action>,
    guard: tokio::sync::MutexGuard<'_, ()>,
) -> Result<Requeue, ControllerError> {
    let mut guard = Some(guard);
    let mut requeue = None;
    for action in &actions {
        if matches!(action, Action::RunRule { .. }) {
            guard.take();
        }
        let wanted = adapter::execute(&ctx.client, &target, std::slice::from_ref(action)).await?;
        requeue = match (requeue, wanted) {
            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
            (a, b) => a.or(b),
        };
    }
    drop(guard);
    Ok(requeue.map_or_else(
        || Requeue::requeue(Duration::from_secs(300)),
        Requeue::requeue,
    ))
}

async fn decide_context(ctx: &Context) -> Result<DecideContext, ControllerError> {
    let config =
        adapter::read_config(&ctx.client, &ctx.options.namespace, &ctx.options.config_map).await?;
    Ok(DecideContext {
        config,
        jobs: ctx.options.jobs.clone(),
        now: jiff::Timestamp::now(),
    })
}

fn target<K: kube::Resource>(object: &K, status: Option<serde_json::Value>) -> Target {
    Target {
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
        old_status: status.unwrap_or_default(),
    }
}

async fn reconcile_backup(
    vb: Arc<VolumeBackup>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    // Decide on the object as the API server holds it now, not as the
    // watch cache last saw it: a rule's result is patched into the status
    // while the watch event carrying it may still be on its way, and a
    // decision on the older copy would run the rule a second time.
    let ns = vb.namespace().unwrap_or_default();
    let api: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let vb = match api
        .get_opt(&vb.name_any())
        .await
        .map_err(adapter::api_err(format!(
            "reading VolumeBackup {ns}/{}",
            vb.name_any()
        )))? {
        Some(fresh) => Arc::new(fresh),
        None => return Ok(Requeue::await_change()),
    };
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_backup(&ctx.client, &vb).await?;
    let actions = controller::decide_backup(&observed, &decide);
    tracing::debug!(backup = %vb.name_any(), ?actions, "decided");
    let old = vb
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(vb.as_ref(), old), actions, guard).await
}

async fn reconcile_restore(
    vr: Arc<VolumeRestore>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_restore(&ctx.client, &vr).await?;
    let actions = controller::decide_restore(&observed, &decide);
    let old = vr
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(vr.as_ref(), old), actions, guard).await
}

async fn reconcile_repository(
    repo: Arc<BackupRepository>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_repository(&ctx.client, &repo).await?;
    let actions = controller::decide_repository(&observed, &decide);
    let old = repo
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(repo.as_ref(), old), actions, guard).await
}

async fn reconcile_schedule(
    schedule: Arc<BackupSchedule>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    // As for VolumeBackups: decide on the status the API server holds now, so the counts
    // patched by the previous reconcile are never applied twice.
    let ns = schedule.namespace().unwrap_or_default();
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    let schedule = match api
        .get_opt(&schedule.name_any())
        .await
        .map_err(adapter::api_err(format!(
            "reading BackupSchedule {ns}/{}",
            schedule.name_any()
        )))? {
        Some(fresh) => Arc::new(fresh),
        None => return Ok(Requeue::await_change()),
    };
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_schedule(&ctx.client, &schedule).await?;
    let actions = controller::decide_schedule(&observed, &decide);
    tracing::debug!(schedule = %schedule.name_any(), ?actions, "decided");
    let old = schedule
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(schedule.as_ref(), old), actions, guard).await
}
