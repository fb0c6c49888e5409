//! `GET /metrics` on the controller: the counters of [`super::global`] followed by the
//! gauges of [`super::encode_state`], computed from watch caches of the objects they read.

use super::state::{encode_state, Observed};
use crate::config::Config;
use crate::controller::LABEL_JOB_KIND;
use crate::crd::{
    ApplicationBackup, ApplicationRestore, BackupRepository, BackupSchedule, VolumeBackup,
    VolumeRestore,
};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

/// Failures of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("listening for metrics on {address}: {source} (choose another --metrics-address, or 0 to disable)")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Watch caches of everything the gauges read.
#[derive(Clone)]
struct Stores {
    volume_backups: Store<VolumeBackup>,
    application_backups: Store<ApplicationBackup>,
    volume_restores: Store<VolumeRestore>,
    application_restores: Store<ApplicationRestore>,
    repositories: Store<BackupRepository>,
    schedules: Store<BackupSchedule>,
    jobs: Store<Job>,
    config: Store<ConfigMap>,
}

/// A store of `api`'s objects kept current by a background watch.
fn watch<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|event| async move {
        if let Err(e) = event {
            tracing::debug!(error = %e, "metrics watch interrupted; retrying");
        }
    }));
    reader
}

impl Stores {
    fn start(client: &kube::Client, namespace: &str, config_map: &str) -> Self {
        let all = watcher::Config::default;
        Stores {
            volume_backups: watch(Api::all(client.clone()), all()),
            application_backups: watch(Api::all(client.clone()), all()),
            volume_restores: watch(Api::all(client.clone()), all()),
            application_restores: watch(Api::all(client.clone()), all()),
            repositories: watch(Api::all(client.clone()), all()),
            schedules: watch(Api::all(client.clone()), all()),
            jobs: watch(Api::all(client.clone()), all().labels(LABEL_JOB_KIND)),
            config: watch(
                Api::namespaced(client.clone(), namespace),
                all().fields(&format!("metadata.name={config_map}")),
            ),
        }
    }

    fn observed(&self) -> Observed {
        let data = self
            .config
            .state()
            .first()
            .and_then(|c| c.data.clone())
            .unwrap_or_default();
        Observed {
            volume_backups: self.volume_backups.state(),
            application_backups: self.application_backups.state(),
            volume_restores: self.volume_restores.state(),
            application_restores: self.application_restores.state(),
            repositories: self.repositories.state(),
            schedules: self.schedules.state(),
            jobs: self.jobs.state(),
            config: Config::from_data(&data),
        }
    }
}

/// The whole exposition: counters, gauges, `# EOF`.
fn render(stores: &Stores) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    super::global().encode(&mut out)?;
    encode_state(&stores.observed(), &mut out)?;
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}

fn respond(stores: &Stores, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match render(stores) {
            Ok(body) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("encoding the metrics failed: {e}\n"),
            ),
        },
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the controller serves /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served\n".into(),
        ),
    }
}

/// The metrics endpoint, bound (so a taken address fails at start, before any work).
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    /// Binds `address` (port 0 picks a free port: see [`MetricsServer::local_addr`]).
    pub async fn bind(address: SocketAddr) -> Result<Self, MetricsError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| MetricsError::Bind { address, source })?;
        Ok(MetricsServer { listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `/metrics` until the process stops, watching the objects the gauges read
    /// (the controller's `namespace` and `config_map` give the job limits).
    pub async fn run(self, client: kube::Client, namespace: String, config_map: String) {
        let address = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%address, "serving metrics on /metrics");
        let stores = Arc::new(Stores::start(&client, &namespace, &config_map));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let stores = stores.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&stores, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

/// Parses `--metrics-address`: None (disabled) for `0` or empty.
pub fn parse_address(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" | "0" => Ok(None),
        t => t.parse().map(Some).map_err(|e| {
            format!(
                "--metrics-address {t:?}: {e}; give host:port like 0.0.0.0:8080, or 0 to disable"
            )
        }),
    }
}
