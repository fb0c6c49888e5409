//! A mock Kubernetes API on tower-test: records every request (method, path and query,
//! content type, JSON body) and answers with what the test's responder returns.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// One request the client sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

/// Requests seen so far.
pub type Log = Arc<Mutex<Vec<Recorded>>>;

/// A client whose every request goes to `respond`, which returns (status, JSON body).
pub fn mock_client(
    respond: impl Fn(&Recorded) -> (u16, Value) + Send + 'static,
) -> (kube::Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let recorded = Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                },
            };
            let (status, reply) = respond(&recorded);
            seen.lock().unwrap().push(recorded);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), log)
}

/// A Kubernetes 404 Status.
pub fn not_found() -> (u16, Value) {
    (
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}
