//! API access shared by the resource jobs: discovery into [`ResourceType`]s, paged lists of
//! any type as JSON, and errors split into "this object" and "the API is unreachable".

use crate::resources::ResourceType;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::Api;
use serde_json::{json, Value};

/// A job failure: what went wrong and whether running again can help.
#[derive(Debug)]
pub(super) struct Failure {
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn api(what: &str, e: kube::Error) -> Failure {
        let retryable =
            !matches!(&e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429);
        Failure {
            message: format!("{what}: {e}"),
            retryable,
        }
    }

    pub fn fatal(message: String) -> Failure {
        Failure {
            message,
            retryable: false,
        }
    }
}

/// Every resource type discovery lists (the preferred version of each group), with its
/// ability to be listed.
pub(super) async fn discover(client: &kube::Client) -> Result<Vec<(ResourceType, bool)>, Failure> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| Failure::api("API discovery", e))?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let t = ResourceType::new(
                &ar.group,
                &ar.version,
                &ar.kind,
                &ar.plural,
                caps.scope == Scope::Namespaced,
            );
            out.push((t, caps.supports_operation(verbs::LIST)));
        }
    }
    out.sort();
    Ok(out)
}

/// The kube-rs resource of `t`.
pub(super) fn api_resource(t: &ResourceType) -> ApiResource {
    ApiResource {
        group: t.group.clone(),
        version: t.version.clone(),
        api_version: t.api_version(),
        kind: t.kind.clone(),
        plural: t.plural.clone(),
    }
}

/// The API of `t` in `namespace` (or cluster-wide for a cluster-scoped type).
pub(super) fn dynamic_api(
    client: &kube::Client,
    t: &ResourceType,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = api_resource(t);
    match namespace {
        Some(ns) if t.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// Every object of `t` in `namespace`, as JSON carrying `apiVersion` and `kind` (list items
/// omit them on a real API server).
pub(super) async fn list_objects(
    client: &kube::Client,
    t: &ResourceType,
    namespace: &str,
) -> Result<Vec<Value>, kube::Error> {
    let api = dynamic_api(client, t, Some(namespace));
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let page = api.list(&lp).await?;
        for item in page.items {
            let mut v = serde_json::to_value(&item).unwrap_or(Value::Null);
            if v.is_object() {
                v["apiVersion"] = json!(t.api_version());
                v["kind"] = json!(t.kind);
                out.push(v);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Whether an API error concerns the object (bad request, conflict, forbidden, invalid)
/// rather than the connection to the API server.
pub(super) fn object_error(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if s.code != 429 && s.code < 500 => {
            Some(format!("{} ({}): {}", s.reason, s.code, s.message))
        }
        kube::Error::SerdeError(e) => Some(format!("not a valid object: {e}")),
        _ => None,
    }
}
