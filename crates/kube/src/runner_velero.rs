//! The Velero controllers of `cairn kube controller --velero-namespace NS`: DataUploads and
//! DataDownloads in Velero's namespace whose `spec.datamover` is `cairn`, reconciled as
//! observe -> decide -> execute under the controller's one lock.

use crate::adapter::{self, Target};
use crate::controller::{self, VeleroContext, LABEL_OWNER, LABEL_VELERO};
use crate::runner::{ControllerError, ControllerOptions, VeleroOptions};
use crate::velero::{DataDownload, DataUpload, DATA_MOVER};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// What the Velero reconciles share with the rest of the controller.
pub(crate) struct VeleroShared {
    pub client: kube::Client,
    pub velero: VeleroOptions,
    pub context: VeleroContext,
    pub options: ControllerOptions,
    pub lock: Arc<tokio::sync::Mutex<()>>,
}

async fn decide_context(
    shared: &VeleroShared,
) -> Result<controller::DecideContext, ControllerError> {
    let o = &shared.options;
    let config = adapter::read_config(&shared.client, &o.namespace, &o.config_map).await?;
    Ok(controller::DecideContext {
        config,
        jobs: o.jobs.clone(),
        now: jiff::Timestamp::now(),
    })
}

/// Runs the DataUpload and DataDownload controllers until shutdown.
pub(crate) async fn run(shared: Arc<VeleroShared>) {
    let client = shared.client.clone();
    let ns = shared.velero.namespace.clone();
    let jobs = |kind: &'static str| {
        let ns = ns.clone();
        (
            watcher::Config::default().labels(&format!("{LABEL_VELERO}={kind}")),
            move |job: Job| {
                let name = job.labels().get(LABEL_OWNER)?.clone();
                Some((name, ns.clone()))
            },
        )
    };
    let (up_cfg, up_map) = jobs("DataUpload");
    let uploads = Controller::new(
        Api::<DataUpload>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .watches(Api::<Job>::all(client.clone()), up_cfg, move |job| {
        up_map(job).map(|(name, ns)| ObjectRef::<DataUpload>::new(&name).within(&ns))
    })
    .shutdown_on_signal()
    .run(reconcile_upload, retry, shared.clone())
    .for_each(log_result);
    let (down_cfg, down_map) = jobs("DataDownload");
    let downloads = Controller::new(
        Api::<DataDownload>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .watches(Api::<Job>::all(client.clone()), down_cfg, move |job| {
        down_map(job).map(|(name, ns)| ObjectRef::<DataDownload>::new(&name).within(&ns))
    })
    .shutdown_on_signal()
    .run(reconcile_download, retry, shared)
    .for_each(log_result);
    futures::join!(uploads, downloads);
}

async fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "reconcile failed");
    }
}

fn retry<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &ControllerError,
    _: Arc<VeleroShared>,
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

fn requeue(wanted: Option<Duration>) -> Requeue {
    wanted.map_or_else(
        || Requeue::requeue(Duration::from_secs(300)),
        Requeue::requeue,
    )
}

async fn reconcile_upload(
    du: Arc<DataUpload>,
    shared: Arc<VeleroShared>,
) -> Result<Requeue, ControllerError> {
    if du.spec.datamover != DATA_MOVER {
        return Ok(Requeue::await_change());
    }
    let span = tracing::error_span!("reconcile", kind = "DataUpload",
        namespace = %du.namespace().unwrap_or_default(), resource = %du.name_any());
    tracing::Instrument::instrument(
        async move {
            let _guard = shared.lock.lock().await;
            let api: Api<DataUpload> =
                Api::namespaced(shared.client.clone(), &shared.velero.namespace);
            let Some(du) = api
                .get_opt(&du.name_any())
                .await
                .map_err(adapter::api_err(format!(
                    "reading DataUpload {}",
                    du.name_any()
                )))?
            else {
                return Ok(Requeue::await_change());
            };
            let decide = decide_context(&shared).await?;
            let observed = adapter::observe_data_upload(
                &shared.client,
                &du,
                &shared.context,
                shared.velero.node_agent_config.as_deref(),
            )
            .await?;
            let actions = controller::decide_data_upload(&observed, &decide, &shared.context);
            tracing::debug!(?actions, "decided");
            let target = Target {
                namespace: shared.velero.namespace.clone(),
                name: du.name_any(),
                old_status: du
                    .status
                    .as_ref()
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or_default(),
            };
            let wanted =
                adapter::execute_velero(&shared.client, &shared.context, &target, &actions).await?;
            Ok(requeue(wanted))
        },
        span,
    )
    .await
}

async fn reconcile_download(
    dd: Arc<DataDownload>,
    shared: Arc<VeleroShared>,
) -> Result<Requeue, ControllerError> {
    if dd.spec.datamover != DATA_MOVER {
        return Ok(Requeue::await_change());
    }
    let span = tracing::error_span!("reconcile", kind = "DataDownload",
        namespace = %dd.namespace().unwrap_or_default(), resource = %dd.name_any());
    tracing::Instrument::instrument(
        async move {
            let _guard = shared.lock.lock().await;
            let api: Api<DataDownload> =
                Api::namespaced(shared.client.clone(), &shared.velero.namespace);
            let Some(dd) = api
                .get_opt(&dd.name_any())
                .await
                .map_err(adapter::api_err(format!(
                    "reading DataDownload {}",
                    dd.name_any()
                )))?
            else {
                return Ok(Requeue::await_change());
            };
            let decide = decide_context(&shared).await?;
            let observed =
                adapter::observe_data_download(&shared.client, &dd, &shared.context).await?;
            let actions = controller::decide_data_download(&observed, &decide, &shared.context);
            tracing::debug!(?actions, "decided");
            let target = Target {
                namespace: shared.velero.namespace.clone(),
                name: dd.name_any(),
                old_status: dd
                    .status
                    .as_ref()
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or_default(),
            };
            let wanted =
                adapter::execute_velero(&shared.client, &shared.context, &target, &actions).await?;
            Ok(requeue(wanted))
        },
        span,
    )
    .await
}
