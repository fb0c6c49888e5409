//! The cluster's components besides the API server, run every tick in one loop so their
//! steps never interleave: garbage collector and namespace controller ([`gc`]), Job
//! controller ([`jobs`]), provisioner and CSI snapshotter ([`storage`]), scheduler and
//! kubelet ([`kubelet`]). They read and write through the same [`State`] operations as
//! API clients, so every change they make is versioned and watchable.

pub mod gc;
pub mod jobs;
pub mod kubelet;
pub mod storage;

use crate::resources::ResourceType;
use crate::store::{State, WriteOptions};
use crate::Shared;
use serde_json::{json, Value};
use std::sync::Arc;

/// Runs the actors until the runtime stops.
pub async fn run(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.options.tick);
    let mut jobs = jobs::JobController::default();
    let mut snapshotter = storage::Snapshotter::default();
    loop {
        ticker.tick().await;
        gc::tick(&shared);
        jobs.tick(&shared);
        storage::provision(&shared);
        snapshotter.tick(&shared);
        kubelet::schedule(&shared);
        kubelet::tick(&shared);
    }
}

/// The served type with store id `id` (`core/pods`, `batch/jobs`, ...).
pub fn ty(s: &State, id: &str) -> ResourceType {
    s.registry
        .by_id(id)
        .cloned()
        .unwrap_or_else(|| panic!("resource {id} is served"))
}

/// `metadata.name`.
pub fn name(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `metadata.namespace`, None when cluster-scoped.
pub fn namespace(o: &Value) -> Option<String> {
    o["metadata"]["namespace"].as_str().map(str::to_string)
}

/// `metadata.uid`.
pub fn uid(o: &Value) -> String {
    o["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Whether the object is being deleted.
pub fn terminating(o: &Value) -> bool {
    o["metadata"]["deletionTimestamp"].is_string()
}

/// Whether `o` has an owner reference to `owner_uid`.
pub fn owned_by(o: &Value, owner_uid: &str) -> bool {
    o["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid))
}

/// Writes `status` as the object's status (through the status subresource).
pub fn set_status(s: &mut State, id: &str, o: &Value, status: Value) {
    let t = ty(s, id);
    let mut new = o.clone();
    new["status"] = status;
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let _ = s.update(
        &t,
        namespace(o).as_deref(),
        &name(o),
        Some("status"),
        new,
        &WriteOptions::default(),
    );
}

/// Replaces the object (main resource) with `new`, ignoring conflicts (the next tick retries).
pub fn replace(s: &mut State, id: &str, new: Value) {
    let t = ty(s, id);
    let mut new = new;
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let n = name(&new);
    let ns = namespace(&new);
    let _ = s.update(&t, ns.as_deref(), &n, None, new, &WriteOptions::default());
}

/// Records a core/v1 Event about `involved`.
pub fn event(
    s: &mut State,
    involved: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let t = ty(s, "core/events");
    let ns = namespace(involved).unwrap_or_else(|| "default".into());
    let now = crate::store::now();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "generateName": format!("{}.", name(involved)), "namespace": ns },
        "involvedObject": { "apiVersion": involved["apiVersion"], "kind": involved["kind"],
            "name": name(involved), "namespace": namespace(involved), "uid": uid(involved) },
        "type": type_, "reason": reason, "message": message,
        "source": { "component": component }, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let _ = s.create(&t, Some(&ns), ev, &WriteOptions::default());
}
