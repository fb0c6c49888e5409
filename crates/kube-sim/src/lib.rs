//! **A test double, not a product**: a simulated Kubernetes cluster for cairn's end-to-end
//! tests, reached through a kubeconfig like any cluster.
//!
//! [`Sim::start`] serves the Kubernetes API over HTTP on a random port of 127.0.0.1 with
//! real state in memory (see [`store`] for the semantics: resourceVersions and 409s,
//! status subresources, finalizers and deletion propagation, generateName, merge / JSON /
//! strategic-merge patches and server-side apply, CRDs served from their schemas) and
//! [`server`] for the wire (discovery, list with limit/continue, watch with bookmarks and
//! `410 Gone`, label and field selectors, pod logs, pods/exec over a websocket).
//!
//! Actors stand in for the rest of a cluster ([`actors`]): a scheduler and a kubelet that
//! runs every pod's container as a local process (real binaries, for example the `cairn`
//! binary under test), the Job controller, the garbage collector, the namespace
//! controller, a provisioner whose volumes are directories, and a CSI snapshotter whose
//! snapshots are copies of them. Faults on demand: an API server restart, snapshot delays
//! and failures, a pod's process killed, a node that never starts pods.
//!
//! What it does not prove is in docs/KUBERNETES.md ("The simulated cluster").

pub mod actors;
mod exec;
pub mod patch;
pub mod resources;
pub mod schema;
pub mod select;
pub mod server;
pub mod store;

use actors::kubelet::Kubelet;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{ApiError, DeleteOptions, PatchBody, State, WriteOptions};

/// What a container image runs as a local process.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// The program run when the container sets no `command` (the image's entrypoint).
    pub entrypoint: PathBuf,
    /// Extra environment (for example where the program writes its termination message).
    pub env: Vec<(String, String)>,
    /// Environment variable through which the program is told the host path of the
    /// container's `terminationMessagePath` (processes here share the host filesystem,
    /// so the kubelet cannot bind-mount a file there).
    pub termination_log_env: Option<String>,
}

/// How a CSI snapshot behaves.
#[derive(Clone, Debug)]
pub enum SnapshotBehaviour {
    /// Ready after the delay.
    ReadyAfter(Duration),
    /// Fails with this message after the delay.
    FailAfter(Duration, String),
    /// Cut, but never ready.
    NeverReady,
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Image name -> what runs.
    pub images: BTreeMap<String, Image>,
    /// Nodes with a kubelet.
    pub nodes: Vec<String>,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Events kept for watches; older resourceVersions get 410 Gone.
    pub history: usize,
    /// Actor loop period.
    pub tick: Duration,
    /// Default snapshot behaviour.
    pub snapshots: SnapshotBehaviour,
    /// Files every container's filesystem holds besides its mounts: container path -> host
    /// path (such as `/kopiaexecutor` -> a link to the cairn binary). Arguments naming them
    /// are rewritten as mount paths are, also word by word inside a `sh -c` script.
    pub image_files: BTreeMap<String, PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            images: BTreeMap::new(),
            nodes: vec!["sim-node-1".into()],
            bookmark_interval: Duration::from_secs(2),
            history: 20_000,
            tick: Duration::from_millis(100),
            snapshots: SnapshotBehaviour::ReadyAfter(Duration::from_millis(500)),
            image_files: BTreeMap::new(),
        }
    }
}

/// One request the API server answered.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query pairs.
    pub query: Vec<(String, String)>,
    /// Content-Type.
    pub content_type: String,
    /// Body (JSON or YAML parsed), Null without one.
    pub body: Value,
    /// Response status.
    pub code: u16,
}

/// State shared by the server, the actors and the test's handle.
pub struct Shared {
    /// API state.
    pub state: Mutex<State>,
    /// Bumped on every commit; watches wait on it.
    pub notify: tokio::sync::watch::Sender<u64>,
    /// Bumped by an API server restart: listeners, connections and watches end.
    pub epoch: tokio::sync::watch::Sender<u64>,
    /// Settings.
    pub options: SimOptions,
    /// Every request, in order.
    pub requests: Mutex<Vec<RequestRecord>>,
    /// Where volumes, snapshots and pod directories live.
    pub root: PathBuf,
    /// The kubelet stand-in.
    pub kubelet: Kubelet,
    /// Snapshot behaviour by VolumeSnapshot name (overrides the default).
    pub snapshot_faults: Mutex<BTreeMap<String, SnapshotBehaviour>>,
    /// Nodes whose kubelet is stopped (pods bound there never start).
    pub dead_nodes: Mutex<Vec<String>>,
    /// Whether the API server is down (restart in progress).
    pub down: Mutex<bool>,
    /// The kubeconfig pods get (API access).
    pub kubeconfig: PathBuf,
    address: Mutex<SocketAddr>,
}

impl Shared {
    fn record(&self, r: RequestRecord) {
        self.requests.lock().unwrap().push(r);
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        self.address.lock().unwrap().to_string()
    }

    /// The directory of a pod (log, termination message, Secret files, emptyDirs).
    pub fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join("pods").join(ns).join(name)
    }

    /// Runs `f` on the state as the cluster's own components do.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

/// A running simulated cluster. Dropping it kills every pod process and stops the server.
pub struct Sim {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    _root: tempfile::TempDir,
}

async fn serve(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    mut epoch: tokio::sync::watch::Receiver<u64>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let mut conn_epoch = shared.epoch.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_epoch.changed() => {}
                    }
                });
            }
            _ = epoch.changed() => return,
        }
    }
}

impl Sim {
    /// Starts the API server and the actors.
    pub fn start(options: SimOptions) -> Sim {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let root = tempfile::Builder::new()
            .prefix("kube-sim-")
            .tempdir()
            .expect("temp dir");
        let (notify, _) = tokio::sync::watch::channel(0u64);
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address = listener.local_addr().unwrap();
        let kubeconfig = root.path().join("kubeconfig");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(options.history, notify.clone())),
            notify,
            epoch,
            requests: Mutex::new(Vec::new()),
            root: root.path().to_path_buf(),
            kubelet: Kubelet::default(),
            snapshot_faults: Mutex::new(BTreeMap::new()),
            dead_nodes: Mutex::new(Vec::new()),
            down: Mutex::new(false),
            kubeconfig: kubeconfig.clone(),
            address: Mutex::new(address),
            options,
        });
        let sim = Sim {
            shared: shared.clone(),
            runtime: Some(runtime),
            _root: root,
        };
        sim.write_kubeconfig(&kubeconfig, "default");
        sim.bootstrap();
        let rt = sim.runtime.as_ref().unwrap();
        rt.spawn(serve(shared.clone(), listener, shared.epoch.subscribe()));
        rt.spawn(actors::run(shared));
        sim
    }

    fn bootstrap(&self) {
        for ns in ["default", "kube-system", "kube-public"] {
            self.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .unwrap();
            self.create(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}))
                .unwrap();
        }
        for node in &self.shared.options.nodes {
            self.create(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}}}),
            )
            .unwrap();
            let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-cairn-sim"}}});
            self.shared
                .with_state(|s| {
                    let t = s.registry.get("", "v1", "nodes").cloned().unwrap();
                    s.patch(
                        &t,
                        None,
                        node,
                        Some("status"),
                        PatchBody::Merge(status),
                        &WriteOptions::default(),
                    )
                })
                .unwrap();
        }
    }

    /// The shared state (for actors' helpers in tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address())
    }

    /// The kubeconfig every pod gets; tests may use it too.
    pub fn kubeconfig(&self) -> &Path {
        &self.shared.kubeconfig
    }

    /// Writes a kubeconfig for this cluster with `namespace` as the context's namespace.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
             users:\n- name: admin\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: admin\n    namespace: {namespace}\n\
             current-context: sim\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    fn type_of(&self, object: &Value) -> Result<resources::ResourceType, ApiError> {
        self.shared
            .with_state(|s| s.type_of(object))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no resource type for {} {}",
                    object["apiVersion"], object["kind"]
                ))
            })
    }

    /// Creates an object as an administrator would (through the same admission).
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let t = self.type_of(&object)?;
        let ns = object["metadata"]["namespace"].as_str().map(str::to_string);
        self.shared
            .with_state(|s| s.create(&t, ns.as_deref(), object, &WriteOptions::default()))
    }

    /// Gets an object by apiVersion, kind, namespace and name.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let t = self
            .type_of(&json!({"apiVersion": api_version, "kind": kind}))
            .ok()?;
        self.shared.with_state(|s| s.get(&t, ns, name).ok())
    }

    /// Lists objects of a kind (all namespaces when `ns` is None).
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let Ok(t) = self.type_of(&json!({"apiVersion": api_version, "kind": kind})) else {
            return Vec::new();
        };
        self.shared
            .with_state(|s| s.list(&t, ns, &Default::default(), &Default::default()))
    }

    /// Merge-patches an object (`sub` = Some("status") for its status).
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let t = self.type_of(&json!({"apiVersion": api_version, "kind": kind}))?;
        self.shared.with_state(|s| {
            s.patch(
                &t,
                ns,
                name,
                sub,
                PatchBody::Merge(patch),
                &WriteOptions::default(),
            )
        })
    }

    /// Deletes an object (default propagation).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let t = self.type_of(&json!({"apiVersion": api_version, "kind": kind}))?;
        self.shared
            .with_state(|s| s.delete(&t, ns, name, &DeleteOptions::default()))
    }

    /// The directory backing a bound PVC.
    pub fn volume_dir(&self, ns: &str, pvc: &str) -> Option<PathBuf> {
        let claim = self.get("v1", "PersistentVolumeClaim", Some(ns), pvc)?;
        let pv = claim["spec"]["volumeName"].as_str()?;
        Some(actors::storage::volume_path(&self.shared, pv))
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Unknown fields the server pruned (with the object), in order.
    pub fn warnings(&self) -> Vec<String> {
        self.shared.with_state(|s| s.warnings.clone())
    }

    /// How the VolumeSnapshot `name` (any namespace) behaves.
    pub fn set_snapshot_behaviour(&self, name: &str, behaviour: SnapshotBehaviour) {
        self.shared
            .snapshot_faults
            .lock()
            .unwrap()
            .insert(name.to_string(), behaviour);
    }

    /// Stops (or restarts) the kubelet of `node`: pods bound there stay Pending.
    pub fn set_node_dead(&self, node: &str, dead: bool) {
        let mut nodes = self.shared.dead_nodes.lock().unwrap();
        nodes.retain(|n| n != node);
        if dead {
            nodes.push(node.to_string());
        }
    }

    /// Kills the process of a running pod with SIGKILL (the container dies; the API
    /// object stays and turns Failed, as when a node kills a container).
    pub fn kill_pod_process(&self, ns: &str, pod: &str) -> bool {
        self.shared.kubelet.kill(ns, pod)
    }

    /// Restarts the API server: every connection and watch is cut, the port refuses
    /// connections for `downtime`, and every resourceVersion seen so far becomes too old
    /// to watch from (410 Gone), as after an etcd compaction.
    pub fn restart_api_server(&self, downtime: Duration) {
        let rt = self.runtime.as_ref().unwrap();
        let shared = self.shared.clone();
        shared.epoch.send_modify(|e| *e += 1);
        *shared.down.lock().unwrap() = true;
        shared.with_state(|s| s.compact_all());
        std::thread::sleep(downtime);
        let address = *shared.address.lock().unwrap();
        let listener = loop {
            match std::net::TcpListener::bind(address) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        *shared.down.lock().unwrap() = false;
        let epoch = shared.epoch.subscribe();
        rt.spawn(serve(shared, listener, epoch));
    }

    /// Waits until `check` returns Some, polling every 50 ms, or panics after `timeout`
    /// with `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Sim) -> Option<T>,
    ) -> T {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.kubelet.kill_all();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
