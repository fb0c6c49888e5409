//! The HTTP front of the simulated API server: routing of the Kubernetes REST paths,
//! discovery, list (with limit/continue), watch (a chunked stream of JSON lines with
//! bookmarks, selector transitions and `410 Gone`), writes, pod logs and pods/exec.

use crate::exec;
use crate::resources::ResourceType;
use crate::schema::FieldValidation;
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, DeleteOptions, EventType, PatchBody, Propagation, WriteOptions};
use crate::{RequestRecord, Shared};
use base64::Engine;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Response body: a whole JSON document or a stream of watch lines.
pub type Body = BoxBody<Bytes, Infallible>;

/// A parsed request.
pub struct Call {
    /// Method.
    pub method: String,
    /// Path segments.
    pub segments: Vec<String>,
    /// Query (repeated keys keep every value).
    pub query: Vec<(String, String)>,
    /// Content-Type.
    pub content_type: String,
    /// Accept.
    pub accept: String,
    /// Body.
    pub body: Bytes,
}

impl Call {
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.q(name), Some("true" | "1"))
    }
}

/// A JSON response.
pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query_text = req.uri().query().unwrap_or_default().to_string();
    let query: Vec<(String, String)> = form_urlencoded::parse(query_text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let content_type = header("content-type");
    let accept = header("accept");
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if header("upgrade").eq_ignore_ascii_case("websocket")
        && segments.last().map(String::as_str) == Some("exec")
    {
        shared.record(RequestRecord {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: Value::Null,
            code: 101,
        });
        return Ok(exec::upgrade(shared, req, segments, query));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let call = Call {
        method: method.clone(),
        segments,
        query: query.clone(),
        content_type: content_type.clone(),
        accept,
        body,
    };
    let body_value = parse_body(&call).unwrap_or(Value::Null);
    let response = route(&shared, &call).await;
    shared.record(RequestRecord {
        method,
        path,
        query,
        content_type,
        body: body_value,
        code: response.status().as_u16(),
    });
    Ok(response)
}

fn parse_body(call: &Call) -> Option<Value> {
    if call.body.is_empty() {
        return None;
    }
    if call.content_type.contains("yaml") {
        let text = std::str::from_utf8(&call.body).ok()?;
        return serde_yaml::from_str(text).ok();
    }
    serde_json::from_slice(&call.body).ok()
}

async fn route(shared: &Arc<Shared>, call: &Call) -> Response<Body> {
    let s: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let address = shared.address();
    let state = || shared.state.lock().unwrap();
    match s.as_slice() {
        ["version"] => json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-cairn-sim",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ["healthz"] | ["livez"] | ["readyz"] => Response::builder()
            .status(200)
            .body(Full::new(Bytes::from("ok")).boxed())
            .unwrap(),
        // kubectl before 1.27 validates with OpenAPI v2, fetched as protobuf: an empty
        // document (no definitions) makes it leave every type unchecked.
        ["openapi", "v2"] if call.accept.contains("protobuf") => Response::builder()
            .status(200)
            .header(
                "Content-Type",
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            )
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        ["openapi", "v2"] => json_response(
            200,
            &json!({"swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
        ),
        ["openapi", "v3"] => json_response(200, &state().registry.openapi_v3_root()),
        ["openapi", "v3", "api", "v1"] => match state().registry.openapi_v3("", "v1") {
            Some(doc) => json_response(200, &doc),
            None => not_found_path(),
        },
        ["openapi", "v3", "apis", g, v] => match state().registry.openapi_v3(g, v) {
            Some(doc) => json_response(200, &doc),
            None => not_found_path(),
        },
        ["api"] => json_response(200, &state().registry.api_versions(&address)),
        ["apis"] => json_response(200, &state().registry.api_groups()),
        ["api", "v1"] => json_response(200, &state().registry.resource_list("", "v1").unwrap()),
        ["apis", g] => match state().registry.api_group(g) {
            Some(doc) => json_response(200, &doc),
            None => not_found_path(),
        },
        ["apis", g, v] => match state().registry.resource_list(g, v) {
            Some(doc) => json_response(200, &doc),
            None => not_found_path(),
        },
        ["api", "v1", rest @ ..] => resource(shared, call, "", "v1", rest).await,
        ["apis", g, v, rest @ ..] => resource(shared, call, g, v, rest).await,
        _ => not_found_path(),
    }
}

fn not_found_path() -> Response<Body> {
    error(&ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
    })
}

/// A resource path: (namespace, plural, name, subresource).
type ResourcePath = (Option<String>, String, Option<String>, Option<String>);

/// Splits a resource path.
fn split(rest: &[&str]) -> Option<ResourcePath> {
    let own = |s: Option<&&str>| s.map(|s| s.to_string());
    match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            if tail.len() > 2 {
                return None;
            }
            Some((
                Some(ns.to_string()),
                plural.to_string(),
                own(tail.first()),
                own(tail.get(1)),
            ))
        }
        [plural, tail @ ..] => {
            if tail.len() > 2 {
                return None;
            }
            Some((
                None,
                plural.to_string(),
                own(tail.first()),
                own(tail.get(1)),
            ))
        }
        [] => None,
    }
}

fn write_options(call: &Call) -> WriteOptions {
    WriteOptions {
        validation: FieldValidation::parse(call.q("fieldValidation")),
        manager: call.q("fieldManager").map(str::to_string),
        force: call.flag("force"),
    }
}

async fn resource(
    shared: &Arc<Shared>,
    call: &Call,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Response<Body> {
    let Some((ns, plural, name, sub)) = split(rest) else {
        return not_found_path();
    };
    let Some(t) = shared
        .state
        .lock()
        .unwrap()
        .registry
        .get(group, version, &plural)
        .cloned()
    else {
        return not_found_path();
    };
    if ns.is_some() && !t.namespaced {
        return not_found_path();
    }
    if t.namespaced && ns.is_none() && name.is_some() {
        return not_found_path();
    }
    let ns = ns.as_deref();
    let body = parse_body(call);
    let result: Result<Value, ApiError> = match (call.method.as_str(), name.as_deref(), sub.as_deref()) {
        ("GET", None, None) if call.flag("watch") => return watch(shared, call, t, ns).await,
        ("GET", None, None) => list(shared, call, &t, ns),
        ("GET", Some(n), None | Some("status")) => shared.state.lock().unwrap().get(&t, ns, n),
        ("GET", Some(n), Some("log")) if t.kind == "Pod" => return pod_log(shared, &t, ns, n, call),
        ("POST", None, None) => match body {
            Some(b) => {
                let r = shared.state.lock().unwrap().create(&t, ns, b, &write_options(call));
                return match r {
                    Ok(o) => json_response(201, &o),
                    Err(e) => error(&e),
                };
            }
            None if call.content_type.contains("protobuf") => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {})", call.content_type),
            }),
            None => Err(ApiError::bad_request("a body is required")),
        },
        ("PUT", Some(n), sub) => match body {
            Some(b) => shared.state.lock().unwrap().update(&t, ns, n, sub, b, &write_options(call)),
            None => Err(ApiError::bad_request("a body is required")),
        },
        ("PATCH", Some(n), sub) => match (patch_body(call, body), sub) {
            (Err(e), _) => Err(e),
            (Ok(p), None | Some("status")) => {
                shared.state.lock().unwrap().patch(&t, ns, n, sub, p, &write_options(call))
            }
            (Ok(_), Some(other)) => Err(ApiError::not_allowed(format!("cannot patch subresource {other}"))),
        },
        ("DELETE", Some(n), None) => {
            let opts = delete_options(call, body.as_ref());
            shared.state.lock().unwrap().delete(&t, ns, n, &opts)
        }
        ("DELETE", None, None) => {
            let opts = delete_options(call, body.as_ref());
            delete_collection(shared, call, &t, ns, &opts)
        }
        _ => Err(ApiError::not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            call.method,
            t.qualified()
        ))),
    };
    match result {
        Ok(v) => json_response(200, &v),
        Err(e) => error(&e),
    }
}

fn patch_body(call: &Call, body: Option<Value>) -> Result<PatchBody, ApiError> {
    let body = body.ok_or_else(|| ApiError::bad_request("a patch body is required"))?;
    let ct = call
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    match ct {
        "application/merge-patch+json" => Ok(PatchBody::Merge(body)),
        "application/json-patch+json" => Ok(PatchBody::Json(body)),
        "application/strategic-merge-patch+json" => Ok(PatchBody::Strategic(body)),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchBody::Apply(body)),
        other => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"),
        }),
    }
}

fn delete_options(call: &Call, body: Option<&Value>) -> DeleteOptions {
    let from_text = |s: &str| match s {
        "Foreground" => Some(Propagation::Foreground),
        "Background" => Some(Propagation::Background),
        "Orphan" => Some(Propagation::Orphan),
        _ => None,
    };
    let mut opts = DeleteOptions {
        propagation: call.q("propagationPolicy").and_then(from_text),
        grace: call.q("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        ..DeleteOptions::default()
    };
    if let Some(b) = body {
        if let Some(p) = b["propagationPolicy"].as_str().and_then(from_text) {
            opts.propagation = Some(p);
        }
        if let Some(o) = b["orphanDependents"].as_bool() {
            opts.propagation = Some(if o {
                Propagation::Orphan
            } else {
                Propagation::Background
            });
        }
        if let Some(g) = b["gracePeriodSeconds"].as_i64() {
            opts.grace = Some(g);
        }
        opts.uid = b["preconditions"]["uid"].as_str().map(str::to_string);
        opts.rv = b["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
    }
    opts
}

fn selectors(call: &Call, t: &ResourceType) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(call.q("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(call.q("fieldSelector").unwrap_or_default(), &t.kind)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list_kind(t: &ResourceType) -> String {
    format!("{}List", t.kind)
}

fn list(
    shared: &Arc<Shared>,
    call: &Call,
    t: &ResourceType,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(call, t)?;
    let state = shared.state.lock().unwrap();
    let mut items = state.list(t, ns, &labels, &fields);
    let rv = state.rv;
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some(token) = call.q("continue").filter(|c| !c.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
        let (token_rv, after) = decoded
            .split_once(' ')
            .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
        let token_rv: u64 = token_rv
            .parse()
            .map_err(|_| ApiError::bad_request("invalid continue token"))?;
        if token_rv < state.compacted {
            return Err(ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        items.retain(|o| item_key(o).as_str() > after);
        meta["resourceVersion"] = json!(token_rv.to_string());
    }
    let limit: usize = call.q("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    // resourceVersion=0 lists are served from the watch cache, which ignores limit.
    if limit > 0 && items.len() > limit && call.q("resourceVersion") != Some("0") {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let last = item_key(items.last().unwrap());
        let token_rv = meta["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        meta["continue"] =
            json!(base64::engine::general_purpose::STANDARD.encode(format!("{token_rv} {last}")));
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok(
        json!({ "kind": list_kind(t), "apiVersion": t.api_version(), "metadata": meta, "items": items }),
    )
}

fn item_key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

fn delete_collection(
    shared: &Arc<Shared>,
    call: &Call,
    t: &ResourceType,
    ns: Option<&str>,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let (labels, fields) = selectors(call, t)?;
    let mut state = shared.state.lock().unwrap();
    let items = state.list(t, ns, &labels, &fields);
    let mut deleted = Vec::new();
    for o in items {
        let n = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ons = o["metadata"]["namespace"].as_str().map(str::to_string);
        if let Ok(d) = state.delete(t, ons.as_deref(), &n, opts) {
            deleted.push(d);
        }
    }
    Ok(
        json!({ "kind": list_kind(t), "apiVersion": t.api_version(), "metadata": {"resourceVersion": state.rv.to_string()}, "items": deleted }),
    )
}

fn pod_log(
    shared: &Arc<Shared>,
    t: &ResourceType,
    ns: Option<&str>,
    name: &str,
    call: &Call,
) -> Response<Body> {
    if let Err(e) = shared.state.lock().unwrap().get(t, ns, name) {
        return error(&e);
    }
    let path = shared.pod_dir(ns.unwrap_or_default(), name).join("log");
    let text = std::fs::read(&path).unwrap_or_default();
    let text = match call.q("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let s = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .join("\n")
                .into_bytes()
        }
        None => text,
    };
    Response::builder()
        .status(200)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap()
}

/// What a watcher sees of an event, given its selectors: the type (after selector
/// transitions) and the object, or nothing.
fn visible(
    e: &crate::store::Event,
    id: &str,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    if e.res != id || ns.is_some_and(|n| n != e.ns) {
        return None;
    }
    let now = labels.matches(&e.object) && fields.matches(&e.object);
    let before = e
        .old
        .as_ref()
        .is_some_and(|o| labels.matches(o) && fields.matches(o));
    let kind = match (e.kind, before, now) {
        (EventType::Added, _, true) => "ADDED",
        (EventType::Deleted, _, true) => "DELETED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, false) => "DELETED",
        _ => return None,
    };
    Some((kind, e.object.clone()))
}

fn line(kind: &str, object: &Value) -> Result<Frame<Bytes>, Infallible> {
    let mut text = json!({ "type": kind, "object": object }).to_string();
    text.push('\n');
    Ok(Frame::data(Bytes::from(text)))
}

async fn watch(
    shared: &Arc<Shared>,
    call: &Call,
    t: ResourceType,
    ns: Option<&str>,
) -> Response<Body> {
    let (labels, fields) = match selectors(call, &t) {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    let bookmarks = call.flag("allowWatchBookmarks");
    let initial = call.flag("sendInitialEvents");
    let timeout = call
        .q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from = call.q("resourceVersion").unwrap_or_default().to_string();
    let ns = ns.map(str::to_string);
    let (mut tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let shared = shared.clone();
    let bookmark_every = shared.options.bookmark_interval;
    let id = t.id();
    let mut changed = shared.notify.subscribe();
    let mut epoch = shared.epoch.subscribe();
    let task = async move {
        let with_type = |mut o: Value| {
            o["apiVersion"] = json!(t.api_version());
            o["kind"] = json!(t.kind);
            o
        };
        enum Start {
            Items(Vec<Value>, u64),
            From(u64),
            Fail(Value),
        }
        let start = {
            let state = shared.state.lock().unwrap();
            if from.is_empty() || from == "0" || initial {
                Start::Items(state.list(&t, ns.as_deref(), &labels, &fields), state.rv)
            } else {
                match from.parse::<u64>() {
                    Err(_) => Start::Fail(
                        ApiError::bad_request(format!("invalid resource version {from:?}"))
                            .status(),
                    ),
                    Ok(rv) if rv < state.compacted => Start::Fail(
                        ApiError::gone(format!(
                            "too old resource version: {rv} ({})",
                            state.compacted
                        ))
                        .status(),
                    ),
                    Ok(rv) => Start::From(rv),
                }
            }
        };
        let mut cursor = match start {
            Start::Fail(status) => {
                let _ = tx.send(line("ERROR", &status)).await;
                return;
            }
            Start::From(rv) => rv,
            Start::Items(items, rv) => {
                for o in items {
                    if tx.send(line("ADDED", &o)).await.is_err() {
                        return;
                    }
                }
                if initial {
                    let mark = with_type(json!({"metadata": {"resourceVersion": rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}));
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                rv
            }
        };
        loop {
            let batch: Result<Vec<(&'static str, Value)>, u64> = {
                let state = shared.state.lock().unwrap();
                if cursor < state.compacted {
                    Err(state.compacted)
                } else {
                    let out = state
                        .events
                        .iter()
                        .filter(|e| e.rv > cursor)
                        .filter_map(|e| visible(e, &id, ns.as_deref(), &labels, &fields))
                        .map(|(k, o)| (k, with_type(o)))
                        .collect();
                    cursor = state.rv;
                    Ok(out)
                }
            };
            match batch {
                Ok(events) => {
                    for (kind, object) in events {
                        if tx.send(line(kind, &object)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(compacted) => {
                    let status =
                        ApiError::gone(format!("too old resource version: {cursor} ({compacted})"))
                            .status();
                    let _ = tx.send(line("ERROR", &status)).await;
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(bookmark_every) => {
                    if bookmarks {
                        let mark = with_type(json!({"metadata": {"resourceVersion": cursor.to_string()}}));
                        if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = epoch.changed() => return,
            }
        }
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, task).await;
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .unwrap()
}

/// Query pairs as a map of last values (for exec).
pub fn last_values(query: &[(String, String)]) -> BTreeMap<String, String> {
    query.iter().cloned().collect()
}
