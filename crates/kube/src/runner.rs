//! `cairn kube controller`: kube-runtime controllers (VolumeBackup, VolumeRestore,
//! BackupRepository, ApplicationBackup, ApplicationRestore, BackupSchedule) whose reconcile
//! is observe -> decide -> execute.
//!
//! Invariant: observing, deciding and creating Jobs happen under one lock, so two
//! reconciles never both see a free job slot and both take it. Rule commands, which can
//! run for minutes, are executed after the lock is released.

use crate::adapter::{self, AdapterError, Target};
use crate::controller::{
    self, parent_of, Action, DecideContext, JobSettings, LABEL_APP_BACKUP, LABEL_APP_RESTORE,
    LABEL_JOB_KIND,
};
use crate::crd::{
    ApplicationBackup, ApplicationRestore, BackupRepository, BackupSchedule, VolumeBackup,
    VolumeRestore,
};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
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
    /// Velero's data mover: None leaves DataUploads and DataDownloads alone.
    pub velero: Option<VeleroOptions>,
}

/// How cairn serves as Velero's data mover (`--velero-namespace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VeleroOptions {
    /// Velero's namespace: DataUploads, DataDownloads, BackupStorageLocations, its Secrets.
    pub namespace: String,
    /// The node agent ConfigMap (Velero's `--node-agent-configmap`) whose `backupPVC`
    /// section cairn honours.
    pub node_agent_config: Option<String>,
    /// A Secret in cairn's namespace whose key `repository-password` is the repository
    /// password; None: Velero's `velero-repo-credentials`.
    pub password_secret: Option<String>,
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
    lock: Arc<Mutex<()>>,
}

/// Runs the controller until the process is stopped (SIGTERM/ctrl-c).
pub async fn run_controller(
    client: kube::Client,
    options: ControllerOptions,
) -> Result<(), ControllerError> {
    let ctx = Arc::new(Context {
        client: client.clone(),
        options,
        lock: Arc::new(Mutex::new(())),
    });
    let velero = match ctx.options.velero.clone() {
        Some(velero) => futures::future::Either::Left(crate::runner_velero::run(Arc::new(
            crate::runner_velero::VeleroShared {
                client: client.clone(),
                context: controller::VeleroContext {
                    velero_namespace: velero.namespace.clone(),
                    cairn_namespace: ctx.options.namespace.clone(),
                    password_secret: velero.password_secret.clone(),
                },
                velero,
                options: ctx.options.clone(),
                lock: ctx.lock.clone(),
            },
        ))),
        None => futures::future::Either::Right(futures::future::ready(())),
    };
    let jobs = || watcher::Config::default().labels(LABEL_JOB_KIND);
    let config = || config_changes(&client, &ctx.options.namespace, &ctx.options.config_map);
    let backups = Controller::new(
        Api::<VolumeBackup>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_backup), retry, ctx.clone())
    .for_each(log_result);
    let restores = Controller::new(
        Api::<VolumeRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_restore), retry, ctx.clone())
    .for_each(log_result);
    let repositories = Controller::new(
        Api::<BackupRepository>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_repository), retry, ctx.clone())
    .for_each(log_result);
    // Children live in other namespaces too, where owner references cannot point: they
    // are found by label and mapped to their parent by annotation.
    let app_backups = Controller::new(
        Api::<ApplicationBackup>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .watches(
        Api::<VolumeBackup>::all(client.clone()),
        watcher::Config::default().labels(LABEL_APP_BACKUP),
        |child: VolumeBackup| {
            parent_of(&child.metadata)
                .map(|(ns, name)| ObjectRef::<ApplicationBackup>::new(&name).within(&ns))
        },
    )
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_application_backup), retry, ctx.clone())
    .for_each(log_result);
    let app_restores = Controller::new(
        Api::<ApplicationRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), jobs())
    .watches(
        Api::<VolumeRestore>::all(client.clone()),
        watcher::Config::default().labels(LABEL_APP_RESTORE),
        |child: VolumeRestore| {
            parent_of(&child.metadata)
                .map(|(ns, name)| ObjectRef::<ApplicationRestore>::new(&name).within(&ns))
        },
    )
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_application_restore), retry, ctx.clone())
    .for_each(log_result);
    // A schedule owns its runs (and its forget Jobs): a run that finishes wakes it.
    let runs = || watcher::Config::default().labels(controller::LABEL_SCHEDULE);
    let schedules = Controller::new(
        Api::<BackupSchedule>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<VolumeBackup>::all(client.clone()), runs())
    .owns(Api::<ApplicationBackup>::all(client.clone()), runs())
    .owns(Api::<Job>::all(client.clone()), jobs())
    .reconcile_all_on(config())
    .shutdown_on_signal()
    .run(in_span(reconcile_schedule), retry, ctx)
    .for_each(log_result);
    futures::join!(
        backups,
        restores,
        repositories,
        app_backups,
        app_restores,
        schedules,
        velero
    );
    Ok(())
}

/// A tick each time the controller's ConfigMap is created or changed: every resource is
/// reconciled again at once, so a fixed value unblocks waiting backups without waiting for
/// their next poll.
fn config_changes(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let only = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher(api, only)
        .applied_objects()
        .filter_map(|event| async move { event.ok().map(drop) })
}

/// `reconcile` inside a span carrying the resource's kind, namespace and name (as
/// `resource`: the JSON format writes the span's own name as `name`), so every line it logs
/// says which resource it was about. The span is at ERROR level so that it is
/// enabled (and its fields appear) whatever level the filter lets through.
fn in_span<K, F, Fut>(
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<Context>) -> tracing::instrument::Instrumented<Fut>
where
    K: kube::Resource<DynamicType = ()>,
    F: Fn(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future,
{
    move |object, ctx| {
        let span = tracing::error_span!(
            "reconcile",
            kind = %K::kind(&()),
            namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
            resource = %object.meta().name.as_deref().unwrap_or_default(),
        );
        tracing::Instrument::instrument(reconcile(object, ctx), span)
    }
}

async fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "reconcile failed");
    }
}

fn retry<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &ControllerError,
    _: Arc<Context>,
) -> Requeue {
    tracing::warn!(
        kind = %K::kind(&()),
        namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
        resource = %object.meta().name.as_deref().unwrap_or_default(),
        error = %error,
        "retrying in 30s"
    );
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
        if matches!(
            action,
            Action::RunRule { .. } | Action::RunGroupHooks { .. }
        ) {
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

/// The object as the API server holds it now (None once it is gone): its status may have
/// been patched by a Job or a hook run since the watch event that triggered the reconcile.
async fn fresh<K>(client: &kube::Client, object: &K) -> Result<Option<K>, ControllerError>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let ns = object.meta().namespace.clone().unwrap_or_default();
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    Ok(api.get_opt(&name).await.map_err(adapter::api_err(format!(
        "reading {} {ns}/{name}",
        K::kind(&())
    )))?)
}

async fn reconcile_application_backup(
    ab: Arc<ApplicationBackup>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    let Some(ab) = fresh(&ctx.client, ab.as_ref()).await? else {
        return Ok(Requeue::await_change());
    };
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_application_backup(&ctx.client, &ab).await?;
    let actions = controller::decide_application_backup(&observed, &decide);
    tracing::debug!(application_backup = %ab.name_any(), ?actions, "decided");
    let old = ab
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(&ab, old), actions, guard).await
}

async fn reconcile_application_restore(
    ar: Arc<ApplicationRestore>,
    ctx: Arc<Context>,
) -> Result<Requeue, ControllerError> {
    let guard = ctx.lock.lock().await;
    let Some(ar) = fresh(&ctx.client, ar.as_ref()).await? else {
        return Ok(Requeue::await_change());
    };
    let decide = decide_context(&ctx).await?;
    let observed = adapter::observe_application_restore(&ctx.client, &ar).await?;
    let actions = controller::decide_application_restore(&observed, &decide);
    tracing::debug!(application_restore = %ar.name_any(), ?actions, "decided");
    let old = ar
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok());
    execute(&ctx, target(&ar, old), actions, guard).await
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
