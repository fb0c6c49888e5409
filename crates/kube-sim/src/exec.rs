//! pods/exec over a websocket with the Kubernetes channel protocol (v5 or v4): byte 1
//! stdout, 2 stderr, 3 the exit Status as JSON. The command runs as a local process
//! with the pod's volume paths mapped, like the pod's own process.

use crate::server::{json_response, Body};
use crate::store::ApiError;
use crate::Shared;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Answers an exec request: checks the pod, upgrades, runs the command.
pub fn upgrade(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    segments: Vec<String>,
    query: Vec<(String, String)>,
) -> Response<Body> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (ns, pod) = match s.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", pod, "exec"] => (ns.to_string(), pod.to_string()),
        _ => return json_response(404, &ApiError::bad_request("not an exec path").status()),
    };
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let container = query
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let prepared =
        match shared
            .kubelet
            .prepare_exec(&shared, &ns, &pod, container.as_deref(), &command)
        {
            Ok(p) => p,
            Err(e) => return json_response(e.code, &e.status()),
        };
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let offered = header("sec-websocket-protocol");
    let protocol = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| offered.split(',').any(|o| o.trim() == *p));
    let Some(protocol) = protocol else {
        return json_response(
            400,
            &ApiError::bad_request(
                "exec needs the v4.channel.k8s.io or v5.channel.k8s.io subprotocol",
            )
            .status(),
        );
    };
    let accept = derive_accept_key(header("sec-websocket-key").as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let frame = |channel: u8, data: &[u8]| {
            let mut bytes = vec![channel];
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        };
        let mut cmd = prepared;
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null());
        let status = match cmd.spawn() {
            Err(e) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("failed to exec in container: {e}")}),
            Ok(mut child) => {
                let mut out = child.stdout.take().unwrap();
                let mut err = child.stderr.take().unwrap();
                let (mut ob, mut eb) = (vec![0u8; 8192], vec![0u8; 8192]);
                let (mut out_open, mut err_open) = (true, true);
                while out_open || err_open {
                    tokio::select! {
                        n = out.read(&mut ob), if out_open => match n {
                            Ok(0) | Err(_) => out_open = false,
                            Ok(n) => if ws.send(frame(1, &ob[..n])).await.is_err() { let _ = child.kill().await; return; },
                        },
                        n = err.read(&mut eb), if err_open => match n {
                            Ok(0) | Err(_) => err_open = false,
                            Ok(n) => if ws.send(frame(2, &eb[..n])).await.is_err() { let _ = child.kill().await; return; },
                        },
                    }
                }
                let code = child
                    .wait()
                    .await
                    .ok()
                    .and_then(|s| s.code())
                    .unwrap_or(137);
                if code == 0 {
                    json!({"metadata": {}, "status": "Success"})
                } else {
                    json!({"metadata": {}, "status": "Failure",
                        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
                        "reason": "NonZeroExitCode",
                        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
                }
            }
        };
        let _ = ws.send(frame(3, status.to_string().as_bytes())).await;
        let _ = ws.close(None).await;
        // Drain until the client closes.
        while let Some(Ok(_)) = ws.next().await {}
    });
    Response::builder()
        .status(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", protocol)
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap()
}
