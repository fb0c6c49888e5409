//! The API server's state and the semantics of every write: objects by (resource,
//! namespace, name), one resourceVersion counter, the event history watches read (and
//! its compaction), and create / update / patch / delete with the API server's rules
//! (preconditions, status subresource, generation, finalizers, deletion propagation,
//! generateName, defaulting of the built-in kinds, CRD schemas).
//!
//! Invariant: every change goes through [`State::commit`], which assigns the next
//! resourceVersion and records exactly one watch event; a write that changes nothing
//! commits nothing (no new resourceVersion, no event), as on a real API server.

use crate::patch;
use crate::resources::{from_crd, Registry, ResourceType};
use crate::schema::{admit, FieldValidation};
use crate::select::{FieldSelector, LabelSelector};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// (resource id, namespace, name); the namespace is empty for cluster-scoped objects.
pub type Key = (String, String, String);

/// Watch event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches replay it.
#[derive(Clone, Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// Resource id.
    pub res: String,
    /// Namespace.
    pub ns: String,
    /// What happened.
    pub kind: EventType,
    /// The object after (or, for Deleted, at) the change.
    pub object: Value,
    /// The object before a modification (selector transitions).
    pub old: Option<Value>,
}

/// A refusal in the API server's words; serialized as a `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `NotFound`, `Conflict`, `Invalid`, ...
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(t: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", t.qualified()),
        )
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    /// 409 on a stale resourceVersion or failed precondition.
    pub fn conflict(t: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                t.qualified()
            ),
        )
    }
    /// 422.
    pub fn invalid(t: &ResourceType, name: &str, causes: &[String]) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {}",
                t.kind,
                t.group,
                causes.join(", ")
            )
            .replace(". \"", " \""),
        )
    }
    /// 410.
    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    /// 405.
    pub fn not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code })
    }
}

/// How a write is done.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// `fieldValidation`.
    pub validation: FieldValidation,
    /// `fieldManager` (required for apply).
    pub manager: Option<String>,
    /// `force` (apply).
    pub force: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            validation: FieldValidation::Warn,
            manager: None,
            force: false,
        }
    }
}

/// Deletion propagation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner is gone.
    Background,
    /// The owner stays (with `foregroundDeletion`) until its dependents are gone.
    Foreground,
    /// Dependents lose their owner reference and stay.
    Orphan,
}

/// How a delete is done.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Propagation; None = the kind's default (Orphan for batch/v1 Jobs, else Background).
    pub propagation: Option<Propagation>,
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub rv: Option<String>,
}

/// A patch body and its type.
#[derive(Clone, Debug)]
pub enum PatchBody {
    /// application/merge-patch+json.
    Merge(Value),
    /// application/json-patch+json.
    Json(Value),
    /// application/strategic-merge-patch+json.
    Strategic(Value),
    /// application/apply-patch+yaml.
    Apply(Value),
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 (UTC, seconds) for `secs` since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The current time in RFC 3339.
pub fn now() -> String {
    rfc3339(now_secs())
}

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn valid_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label)
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The API server's state.
#[derive(Debug)]
pub struct State {
    /// Last resourceVersion handed out.
    pub rv: u64,
    /// Every object.
    pub objects: BTreeMap<Key, Value>,
    /// Recent events, oldest first.
    pub events: VecDeque<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    /// Served types.
    pub registry: Registry,
    /// Server-side apply: the last configuration applied per (object, manager).
    pub applied: BTreeMap<(Key, String), Value>,
    /// Pruned unknown fields and other warnings, for tests to assert on.
    pub warnings: Vec<String>,
    history: usize,
    notify: tokio::sync::watch::Sender<u64>,
}

impl State {
    /// An empty cluster keeping `history` events for watches.
    pub fn new(history: usize, notify: tokio::sync::watch::Sender<u64>) -> State {
        State {
            rv: 1000,
            objects: BTreeMap::new(),
            events: VecDeque::new(),
            compacted: 1000,
            registry: Registry::new(),
            applied: BTreeMap::new(),
            warnings: Vec::new(),
            history,
            notify,
        }
    }

    /// Drops the whole event history: every resourceVersion seen so far is too old to
    /// watch from (what a restarted API server with a compacted etcd answers).
    pub fn compact_all(&mut self) {
        self.events.clear();
        self.compacted = self.rv;
    }

    /// Records a change: next resourceVersion, stored object, one event.
    pub fn commit(
        &mut self,
        key: Key,
        kind: EventType,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        match kind {
            EventType::Deleted => {
                self.objects.remove(&key);
                self.applied.retain(|(k, _), _| k != &key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        self.events.push_back(Event {
            rv: self.rv,
            res: key.0,
            ns: key.1,
            kind,
            object: object.clone(),
            old,
        });
        while self.events.len() > self.history {
            if let Some(e) = self.events.pop_front() {
                self.compacted = e.rv;
            }
        }
        self.notify.send_replace(self.rv);
        object
    }

    /// The type of an object by apiVersion and kind.
    pub fn type_of(&self, object: &Value) -> Option<ResourceType> {
        self.registry
            .by_kind(
                object["apiVersion"].as_str().unwrap_or_default(),
                object["kind"].as_str().unwrap_or_default(),
            )
            .cloned()
    }

    /// The store key of `name` in `ns` for `t`.
    pub fn key(t: &ResourceType, ns: Option<&str>, name: &str) -> Key {
        let ns = if t.namespaced {
            ns.unwrap_or_default()
        } else {
            ""
        };
        (t.id(), ns.to_string(), name.to_string())
    }

    /// One object.
    pub fn get(&self, t: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&State::key(t, ns, name))
            .map(|o| with_type(t, o))
            .ok_or_else(|| ApiError::not_found(t, name))
    }

    /// Objects of `t` (in `ns`, or all namespaces) matching the selectors, by key order.
    pub fn list(
        &self,
        t: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        let id = t.id();
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == id && ns.is_none_or(|ns| ns == n))
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(_, o)| with_type(t, o))
            .collect()
    }

    /// Every object of the resource `id` (any version), for the actors.
    pub fn all(&self, id: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, _, _), _)| r == id)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Creates `object`.
    pub fn create(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        mut object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        let meta = object["metadata"].as_object().cloned().unwrap_or_default();
        let ns = if t.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str);
            match (ns, body_ns) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({b}) does not match the namespace sent on the request ({a})"
                    )))
                }
                (a, b) => Some(
                    a.or(b)
                        .ok_or_else(|| ApiError::bad_request("a namespace is required"))?
                        .to_string(),
                ),
            }
        } else {
            None
        };
        if let Some(ns) = &ns {
            let ns_type = self.registry.get("", "v1", "namespaces").cloned().unwrap();
            match self.objects.get(&State::key(&ns_type, None, ns)) {
                None => return Err(ApiError::not_found(&ns_type, ns)),
                Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            t.qualified()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => loop {
                let candidate = format!("{g}{}", random_suffix(5));
                if !self
                    .objects
                    .contains_key(&State::key(t, ns.as_deref(), &candidate))
                {
                    break candidate;
                }
            },
            _ => {
                return Err(ApiError::invalid(
                    t,
                    "",
                    &["metadata.name: Required value: name or generateName is required".into()],
                ))
            }
        };
        let label_name = matches!(t.kind.as_str(), "Namespace" | "Service");
        if !valid_name(&name, label_name) {
            return Err(ApiError::invalid(
                t,
                &name,
                &[format!(
                    "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    if label_name { "label" } else { "subdomain" }
                )],
            ));
        }
        let key = State::key(t, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
            ));
        }
        let m = object["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta = Map::new();
        for (k, v) in m {
            if !matches!(
                k.as_str(),
                "uid"
                    | "resourceVersion"
                    | "creationTimestamp"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
                    | "generation"
                    | "managedFields"
                    | "selfLink"
            ) {
                meta.insert(k, v);
            }
        }
        meta.insert("name".into(), json!(name));
        if let Some(ns) = &ns {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("uid".into(), json!(uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        object["metadata"] = Value::Object(meta);
        object["apiVersion"] = json!(t.api_version());
        object["kind"] = json!(t.kind);
        if t.status {
            if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        self.defaults_on_create(t, &mut object)?;
        self.admit(t, &name, &mut object, opts)?;
        if t.kind == "CustomResourceDefinition" {
            self.register_crd(&mut object)?;
        }
        Ok(self.commit(key, EventType::Added, object, None))
    }

    /// Validates a custom resource against its schema; records pruned fields.
    fn admit(
        &mut self,
        t: &ResourceType,
        name: &str,
        object: &mut Value,
        opts: &WriteOptions,
    ) -> Result<(), ApiError> {
        if let Some(schema) = &t.schema {
            let a = admit(schema, object);
            if !a.pruned.is_empty() {
                match opts.validation {
                    FieldValidation::Strict => {
                        let causes: Vec<String> = a
                            .pruned
                            .iter()
                            .map(|p| format!("unknown field \"{}\"", p.trim_start_matches('.')))
                            .collect();
                        return Err(ApiError::bad_request(format!(
                            "{}.{} \"{name}\" is invalid: strict decoding error: {}",
                            t.kind,
                            t.group,
                            causes.join(", ")
                        )));
                    }
                    FieldValidation::Warn => {
                        for p in &a.pruned {
                            self.warnings.push(format!(
                                "{} {name}: unknown field \"{}\"",
                                t.kind,
                                p.trim_start_matches('.')
                            ));
                        }
                    }
                    FieldValidation::Ignore => {}
                }
            }
            if !a.errors.is_empty() {
                return Err(ApiError::invalid(t, name, &a.errors));
            }
        }
        Ok(())
    }

    fn register_crd(&mut self, crd: &mut Value) -> Result<(), ApiError> {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let types = from_crd(crd).map_err(|e| {
            let t = self
                .registry
                .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .cloned()
                .unwrap();
            ApiError::invalid(&t, &name, &[e])
        })?;
        if let Some(t) = types.first() {
            self.registry.remove(&t.group, &t.plural);
        }
        for t in types {
            self.registry.add(t);
        }
        let names = crd["spec"]["names"].clone();
        crd["status"] = json!({
            "acceptedNames": names,
            "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "conditions": [
                { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now() },
                { "type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now() },
            ],
        });
        Ok(())
    }

    /// Built-in defaulting at creation (what the kinds' registry strategies do).
    fn defaults_on_create(&mut self, t: &ResourceType, o: &mut Value) -> Result<(), ApiError> {
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = o["metadata"]["uid"].clone();
        match (t.group.as_str(), t.kind.as_str()) {
            ("", "Namespace") => {
                o["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                o["spec"]["finalizers"] = json!(["kubernetes"]);
                o["status"] = json!({ "phase": "Active" });
            }
            ("", "PersistentVolumeClaim") => {
                let spec = &o["spec"];
                let mut causes = Vec::new();
                if spec["accessModes"].as_array().is_none_or(|a| a.is_empty()) {
                    causes.push(
                        "spec.accessModes: Required value: at least 1 access mode is required"
                            .to_string(),
                    );
                }
                if spec["resources"]["requests"]["storage"].is_null() {
                    causes.push("spec.resources[storage]: Required value".to_string());
                }
                if !causes.is_empty() {
                    return Err(ApiError::invalid(t, &name, &causes));
                }
                if o["spec"]["volumeMode"].is_null() {
                    o["spec"]["volumeMode"] = json!("Filesystem");
                }
                add_finalizer(o, "kubernetes.io/pvc-protection");
                o["status"] = json!({ "phase": "Pending" });
            }
            ("", "PersistentVolume") => {
                o["status"] = json!({ "phase": "Pending" });
            }
            ("", "Pod") => {
                let spec = &mut o["spec"];
                if spec["containers"].as_array().is_none_or(|a| a.is_empty()) {
                    return Err(ApiError::invalid(
                        t,
                        &name,
                        &["spec.containers: Required value".into()],
                    ));
                }
                pod_defaults(spec);
                o["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
            }
            ("", "Secret") => {
                if o["type"].is_null() {
                    o["type"] = json!("Opaque");
                }
                if let Some(string_data) = o.as_object_mut().and_then(|m| m.remove("stringData")) {
                    use base64::Engine;
                    for (k, v) in string_data.as_object().into_iter().flatten() {
                        let text = v.as_str().unwrap_or_default();
                        o["data"][k] =
                            json!(base64::engine::general_purpose::STANDARD.encode(text));
                    }
                }
            }
            ("batch", "Job") => {
                let spec = &mut o["spec"];
                if !spec["template"].is_object() {
                    return Err(ApiError::invalid(
                        t,
                        &name,
                        &["spec.template: Required value".into()],
                    ));
                }
                for (k, v) in [
                    ("parallelism", json!(1)),
                    ("completions", json!(1)),
                    ("backoffLimit", json!(6)),
                    ("completionMode", json!("NonIndexed")),
                    ("suspend", json!(false)),
                    ("manualSelector", json!(false)),
                ] {
                    if spec[k].is_null() {
                        spec[k] = v;
                    }
                }
                let labels = json!({ "batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                    "batch.kubernetes.io/job-name": name, "job-name": name });
                spec["selector"] =
                    json!({ "matchLabels": { "batch.kubernetes.io/controller-uid": uid } });
                for (k, v) in labels.as_object().unwrap() {
                    spec["template"]["metadata"]["labels"][k] = v.clone();
                }
                pod_defaults(&mut spec["template"]["spec"]);
                o["status"] = json!({});
            }
            ("apps", "Deployment") | ("apps", "StatefulSet") => {
                if o["spec"]["replicas"].is_null() {
                    o["spec"]["replicas"] = json!(1);
                }
                pod_defaults(&mut o["spec"]["template"]["spec"]);
                o["status"] = json!({});
            }
            _ => {}
        }
        Ok(())
    }

    /// Replaces an object (PUT), or its status (`sub` = `status`).
    pub fn update(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        mut object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = State::key(t, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(t, name));
        };
        if object["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        if let Some(rv) = object["metadata"]["resourceVersion"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            if Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                return Err(ApiError::conflict(
                    t,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        match sub {
            Some("status") => {
                let status = object.get("status").cloned();
                object = old.clone();
                match status {
                    Some(s) => object["status"] = s,
                    None => {
                        object.as_object_mut().unwrap().remove("status");
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::not_allowed(format!(
                    "subresource {other} cannot be written"
                )))
            }
            None => {
                if t.status {
                    match old.get("status") {
                        Some(s) => object["status"] = s.clone(),
                        None => {
                            if let Some(o) = object.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                // The server owns these.
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    match old["metadata"].get(k) {
                        Some(v) => object["metadata"][k] = v.clone(),
                        None => {
                            if let Some(m) = object["metadata"].as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
                self.immutable(t, name, &old, &object)?;
                if spec_of(&old) != spec_of(&object) {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(g + 1);
                }
            }
        }
        object["apiVersion"] = json!(t.api_version());
        object["kind"] = json!(t.kind);
        self.admit(t, name, &mut object, opts)?;
        object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if t.kind == "CustomResourceDefinition" && sub.is_none() {
            self.register_crd(&mut object)?;
        }
        if object == old {
            return Ok(with_type(t, &old));
        }
        let terminating = object["metadata"]["deletionTimestamp"].is_string();
        let no_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if terminating && no_finalizers && t.kind != "Namespace" {
            return Ok(self.remove(key, object));
        }
        Ok(with_type(
            t,
            &self.commit(key, EventType::Modified, object, Some(old)),
        ))
    }

    fn immutable(
        &self,
        t: &ResourceType,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        let field = match t.kind.as_str() {
            "Job" => {
                let strip = |o: &Value| {
                    let mut s = o["spec"].clone();
                    for k in [
                        "suspend",
                        "parallelism",
                        "activeDeadlineSeconds",
                        "ttlSecondsAfterFinished",
                        "backoffLimit",
                    ] {
                        s.as_object_mut().map(|m| m.remove(k));
                    }
                    s
                };
                (strip(old) != strip(new))
                    .then_some("spec.template: Invalid value: field is immutable")
            }
            "PersistentVolumeClaim" => {
                let strip = |o: &Value, keep_volume: bool| {
                    let mut s = o["spec"].clone();
                    s.as_object_mut().map(|m| m.remove("resources"));
                    if !keep_volume {
                        s.as_object_mut().map(|m| m.remove("volumeName"));
                    }
                    s
                };
                let bound = old["spec"]["volumeName"].is_string();
                (strip(old, bound) != strip(new, bound))
                    .then_some("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims")
            }
            "Pod" => {
                let strip = |o: &Value| {
                    let mut s = o["spec"].clone();
                    for c in s["containers"].as_array_mut().into_iter().flatten() {
                        c.as_object_mut().map(|m| m.remove("image"));
                    }
                    for k in ["activeDeadlineSeconds", "tolerations", "nodeName"] {
                        s.as_object_mut().map(|m| m.remove(k));
                    }
                    s
                };
                let bind = old["spec"]["nodeName"].is_null()
                    || old["spec"]["nodeName"] == new["spec"]["nodeName"];
                (strip(old) != strip(new) || !bind).then_some("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations`")
            }
            _ => None,
        };
        match field {
            Some(f) => Err(ApiError::invalid(t, name, &[f.to_string()])),
            None => Ok(()),
        }
    }

    /// Patches an object or its status; apply creates a missing object.
    pub fn patch(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        body: PatchBody,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = State::key(t, ns, name);
        let current = self.objects.get(&key).cloned();
        let Some(old) = current else {
            return match body {
                PatchBody::Apply(config) if sub.is_none() => {
                    let manager = opts.manager.clone().ok_or_else(|| {
                        ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                    })?;
                    check_apply_config(t, name, &config)?;
                    let created = self.create(t, ns, config.clone(), opts)?;
                    self.applied.insert((key, manager), config);
                    Ok(created)
                }
                _ => Err(ApiError::not_found(t, name)),
            };
        };
        let mut patched = old.clone();
        let mut applied = None;
        match body {
            PatchBody::Merge(p) => json_patch::merge(&mut patched, &p),
            PatchBody::Strategic(p) => patch::strategic(&mut patched, &p),
            PatchBody::Json(p) => {
                let ops: Vec<json_patch::PatchOperation> = serde_json::from_value(p)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
            }
            PatchBody::Apply(config) => {
                let manager = opts.manager.clone().ok_or_else(|| {
                    ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                })?;
                check_apply_config(t, name, &config)?;
                let mut mine = Vec::new();
                patch::leaves(&config, "", &mut mine);
                let mut conflicts = Vec::new();
                for ((k, m), other) in self.applied.iter() {
                    if k != &key || m == &manager {
                        continue;
                    }
                    for (path, value) in &mine {
                        if patch::at(other, path).is_some_and(|v| v != value)
                            && patch::at(&old, path) != Some(value)
                        {
                            conflicts.push((m.clone(), path.clone()));
                        }
                    }
                }
                if !conflicts.is_empty() && !opts.force {
                    let list: Vec<String> = conflicts
                        .iter()
                        .map(|(m, p)| format!("conflict with \"{m}\": {p}"))
                        .collect();
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Apply failed with {} conflict(s): {}",
                            list.len(),
                            list.join("; ")
                        ),
                    ));
                }
                let prev = self.applied.get(&(key.clone(), manager.clone())).cloned();
                patch::apply(&mut patched, prev.as_ref(), &config);
                applied = Some((manager, config));
            }
        }
        let result = self.update(t, ns, name, sub, patched, opts)?;
        if let Some((manager, config)) = applied {
            self.applied.insert((key, manager), config);
        }
        Ok(result)
    }

    /// Deletes an object with the API server's propagation and grace rules.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = State::key(t, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(t, name));
        };
        if opts
            .uid
            .as_ref()
            .is_some_and(|u| Some(u.as_str()) != old["metadata"]["uid"].as_str())
        {
            return Err(ApiError::conflict(t, name, "Precondition failed: UID in precondition does not match the UID in record. The object might have been deleted and then recreated"));
        }
        if opts
            .rv
            .as_ref()
            .is_some_and(|r| Some(r.as_str()) != old["metadata"]["resourceVersion"].as_str())
        {
            return Err(ApiError::conflict(t, name, "Precondition failed: ResourceVersion in precondition does not match the ResourceVersion in record. The object might have been modified"));
        }
        let mut object = old.clone();
        let terminating = old["metadata"]["deletionTimestamp"].is_string();
        if t.kind == "Pod" && opts.grace == Some(0) {
            // Force deletion: gone from the API now; the kubelet kills what runs.
            object["metadata"]["finalizers"] = json!([]);
            return Ok(self.remove(key, object));
        }
        if !terminating {
            object["metadata"]["deletionTimestamp"] = json!(now());
        }
        let propagation = opts
            .propagation
            .unwrap_or(if t.kind == "Job" && t.group == "batch" {
                Propagation::Orphan
            } else {
                Propagation::Background
            });
        match t.kind.as_str() {
            "Namespace" => {
                object["status"]["phase"] = json!("Terminating");
                return Ok(if terminating {
                    object
                } else {
                    self.commit(key, EventType::Modified, object, Some(old))
                });
            }
            "Pod" => {
                let phase = old["status"]["phase"].as_str().unwrap_or_default();
                let running =
                    old["spec"]["nodeName"].is_string() && !matches!(phase, "Succeeded" | "Failed");
                if running {
                    let grace = opts
                        .grace
                        .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
                        .unwrap_or(30);
                    object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    return Ok(if object == old {
                        object
                    } else {
                        self.commit(key, EventType::Modified, object, Some(old))
                    });
                }
            }
            _ => {}
        }
        match propagation {
            Propagation::Foreground => add_finalizer(&mut object, "foregroundDeletion"),
            Propagation::Orphan => add_finalizer(&mut object, "orphan"),
            Propagation::Background => {}
        }
        if object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            return Ok(if object == old {
                object
            } else {
                self.commit(key, EventType::Modified, object, Some(old))
            });
        }
        Ok(self.remove(key, object))
    }

    /// Removes an object from the store now (its finalizers are done).
    pub fn remove(&mut self, key: Key, object: Value) -> Value {
        let t = self.registry.by_id(&key.0).cloned();
        if let Some(t) = t.filter(|t| t.kind == "CustomResourceDefinition") {
            let _ = t;
            let group = object["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = object["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.registry.remove(&group, &plural);
        }
        self.commit(key, EventType::Deleted, object, None)
    }
}

fn check_apply_config(t: &ResourceType, name: &str, config: &Value) -> Result<(), ApiError> {
    if config["apiVersion"].as_str() != Some(&t.api_version())
        || config["kind"].as_str() != Some(&t.kind)
    {
        return Err(ApiError::bad_request(format!(
            "apply configuration must have apiVersion {} and kind {}",
            t.api_version(),
            t.kind
        )));
    }
    if config["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    Ok(())
}

/// Adds `finalizer` to the object's finalizers (once).
pub fn add_finalizer(o: &mut Value, finalizer: &str) {
    let list = &mut o["metadata"]["finalizers"];
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().unwrap();
    if !list.iter().any(|f| f == finalizer) {
        list.push(json!(finalizer));
    }
}

/// Removes `finalizer` from the object's finalizers.
pub fn remove_finalizer(o: &mut Value, finalizer: &str) {
    if let Some(list) = o["metadata"]["finalizers"].as_array_mut() {
        list.retain(|f| f != finalizer);
    }
}

fn pod_defaults(spec: &mut Value) {
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    for c in spec["containers"].as_array_mut().into_iter().flatten() {
        if c["terminationMessagePath"].is_null() {
            c["terminationMessagePath"] = json!("/dev/termination-log");
        }
        if c["terminationMessagePolicy"].is_null() {
            c["terminationMessagePolicy"] = json!("File");
        }
        if c["imagePullPolicy"].is_null() {
            c["imagePullPolicy"] = json!("IfNotPresent");
        }
    }
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(o: &Value) -> Value {
    let mut v = o.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn with_type(t: &ResourceType, o: &Value) -> Value {
    let mut o = o.clone();
    o["apiVersion"] = json!(t.api_version());
    o["kind"] = json!(t.kind);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let (tx, _) = tokio::sync::watch::channel(0);
        let mut s = State::new(100, tx);
        let ns = s.registry.get("", "v1", "namespaces").cloned().unwrap();
        s.create(
            &ns,
            None,
            json!({"metadata": {"name": "a"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        s
    }

    fn cm(s: &State) -> ResourceType {
        s.registry.get("", "v1", "configmaps").cloned().unwrap()
    }

    #[test]
    fn a_stale_resource_version_is_a_conflict_and_a_no_op_commits_nothing() {
        let mut s = state();
        let t = cm(&s);
        let o = s
            .create(
                &t,
                Some("a"),
                json!({"metadata": {"name": "c"}, "data": {"k": "1"}}),
                &WriteOptions::default(),
            )
            .unwrap();
        let mut newer = o.clone();
        newer["data"]["k"] = json!("2");
        s.update(&t, Some("a"), "c", None, newer, &WriteOptions::default())
            .unwrap();
        let e = s
            .update(
                &t,
                Some("a"),
                "c",
                None,
                o.clone(),
                &WriteOptions::default(),
            )
            .unwrap_err();
        assert_eq!(e.code, 409);
        let rv = s.rv;
        s.patch(
            &t,
            Some("a"),
            "c",
            None,
            PatchBody::Merge(json!({"data": {"k": "2"}})),
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(s.rv, rv);
    }

    #[test]
    fn generate_name_and_finalizers_and_deletion() {
        let mut s = state();
        let t = cm(&s);
        let o = s
            .create(
                &t,
                Some("a"),
                json!({"metadata": {"generateName": "x-", "finalizers": ["f"]}}),
                &WriteOptions::default(),
            )
            .unwrap();
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        assert!(name.starts_with("x-") && name.len() == 7);
        s.delete(&t, Some("a"), &name, &DeleteOptions::default())
            .unwrap();
        assert!(s.get(&t, Some("a"), &name).unwrap()["metadata"]["deletionTimestamp"].is_string());
        s.patch(
            &t,
            Some("a"),
            &name,
            None,
            PatchBody::Merge(json!({"metadata": {"finalizers": null}})),
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(s.get(&t, Some("a"), &name).unwrap_err().code, 404);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
