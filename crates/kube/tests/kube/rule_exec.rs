//! BackupRule commands through pods/exec, end to end on the wire: `run_rule` against a
//! loopback server that answers the API calls over HTTP/1.1 and the exec calls by upgrading
//! to a websocket speaking the Kubernetes channel protocol (byte 1 stdout, 2 stderr, 3 the
//! exit Status as JSON). Checks each request (method, path, query), a command that
//! succeeds, one that fails (the hook fails with the exit code and stderr), output larger
//! than the client's buffers, a stream cut without a status, a refused exec (403), and
//! servers that never answer (the per-command timeout ends the hook with a clear message
//! instead of hanging).

use cairn_kube::adapter::run_rule;
use cairn_kube::controller::HookSide;
use cairn_kube::crd::HookOutcome;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One request the server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// Decoded query pairs, in order.
    query: Vec<(String, String)>,
    /// The websocket subprotocols the client offered (exec calls only).
    protocols: String,
    body: Value,
}

impl Seen {
    /// The command of an exec request: its `command` query values, joined by spaces.
    fn command(&self) -> String {
        let words: Vec<&str> = self
            .query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        words.join(" ")
    }
}

/// What the "container" does with one exec'd command.
#[derive(Clone, Debug)]
enum Script {
    /// Writes `stdout` and exits 0.
    Succeed { stdout: Vec<u8> },
    /// Writes `stderr` and exits with `code`.
    Fail { code: u32, stderr: &'static str },
    /// Writes some stdout, then the connection drops without a status.
    Cut,
    /// Upgrades, then never sends anything.
    Silent,
    /// Never answers the upgrade request.
    NoAnswer,
    /// Refuses the upgrade with a 403 Status (RBAC without pods/exec).
    Forbidden,
}

/// The loopback API server: the BackupRule `quiesce` and its pods in namespace `shop`.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Seen>>>,
}

struct Setup {
    rule: Value,
    /// The subprotocol the server picks (`v4.channel.k8s.io` or `v5.channel.k8s.io`).
    protocol: &'static str,
    script: fn(&str) -> Script,
}

impl Server {
    async fn start(setup: Setup) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let setup = Arc::new(setup);
        let seen = log.clone();
        // The accept loop ends with the test's runtime.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, setup.clone(), seen.clone()));
            }
        });
        Server { port, log }
    }

    fn client(&self) -> kube::Client {
        let url = format!("http://127.0.0.1:{}", self.port).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.default_namespace = "shop".into();
        kube::Client::try_from(config).unwrap()
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The exec requests, as (pod, command) pairs.
    fn execs(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .filter(|s| s.path.ends_with("/exec"))
            .map(|s| {
                let pod = s.path.split('/').nth_back(1).unwrap().to_string();
                (pod, s.command())
            })
            .collect()
    }

    /// The `status.lastRun` the runner recorded on the BackupRule.
    fn last_run(&self) -> Value {
        let patches: Vec<Seen> = self
            .requests()
            .into_iter()
            .filter(|s| s.method == "PATCH")
            .collect();
        assert_eq!(patches.len(), 1, "one status patch per run: {patches:?}");
        assert_eq!(
            patches[0].path,
            "/apis/cairn.io/v1alpha1/namespaces/shop/backuprules/quiesce/status"
        );
        patches[0].body["status"]["lastRun"].clone()
    }
}

/// Serves requests on one connection until it closes or turns into a websocket.
async fn serve(stream: TcpStream, setup: Arc<Setup>, log: Arc<Mutex<Vec<Seen>>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or_default().to_string();
        let target = words.next().unwrap_or_default().to_string();
        let (mut length, mut key, mut protocols) = (0, String::new(), String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = header.trim_end().split_once(':') else {
                break;
            };
            let value = value.trim().to_string();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap(),
                "sec-websocket-key" => key = value,
                "sec-websocket-protocol" => protocols = value,
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let seen = Seen {
            method,
            path: path.to_string(),
            query: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            protocols,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        log.lock().unwrap().push(seen.clone());
        if seen.path.ends_with("/exec") {
            let script = (setup.script)(&seen.command());
            // The client sends nothing more before the 101, so nothing is left buffered.
            assert!(reader.buffer().is_empty());
            return exec(reader.into_inner(), &key, setup.protocol, script).await;
        }
        let reply = respond(&seen, &setup.rule).to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        let stream = reader.get_mut();
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(reply.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

fn respond(seen: &Seen, rule: &Value) -> Value {
    let pod = |name: &str, phase: &str| {
        json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": "db"}},
               "status": {"phase": phase}})
    };
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/apis/cairn.io/v1alpha1/namespaces/shop/backuprules/quiesce")
        | ("PATCH", "/apis/cairn.io/v1alpha1/namespaces/shop/backuprules/quiesce/status") => {
            rule.clone()
        }
        ("GET", "/api/v1/namespaces/shop/pods") => json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("db-0", "Running"), pod("db-new", "Pending"), pod("db-1", "Running")],
        }),
        other => panic!("unexpected request {other:?}"),
    }
}

/// Answers an exec upgrade and plays `script` on the websocket.
async fn exec(mut stream: TcpStream, key: &str, protocol: &str, script: Script) {
    match script {
        Script::NoAnswer => {
            // Hold the connection until the client gives up.
            let _ = stream.read_to_end(&mut Vec::new()).await;
            return;
        }
        Script::Forbidden => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "pods \"db-0\" is forbidden: User \"system:serviceaccount:cairn-system:cairn-controller\" cannot create resource \"pods/exec\""})
            .to_string();
            let head = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                status.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(status.as_bytes()).await;
            return;
        }
        _ => {}
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let frame = |channel: u8, data: &[u8]| {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(data);
        Message::binary(bytes)
    };
    // Ends quietly when the client has gone (after a timeout, for example).
    let _ = async {
        match script {
            Script::Succeed { stdout } => {
                for piece in stdout.chunks(4096) {
                    ws.send(frame(1, piece)).await?;
                }
                let status = json!({"metadata": {}, "status": "Success"});
                ws.send(frame(3, status.to_string().as_bytes())).await?;
                ws.close(None).await
            }
            Script::Fail { code, stderr } => {
                ws.send(frame(1, b"flushing memtables\n")).await?;
                ws.send(frame(2, stderr.as_bytes())).await?;
                let status = json!({
                    "metadata": {}, "status": "Failure",
                    "message": format!("command terminated with non-zero exit code: exit status {code}"),
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                });
                ws.send(frame(3, status.to_string().as_bytes())).await?;
                ws.close(None).await
            }
            Script::Cut => {
                ws.send(frame(1, b"half a line")).await?;
                // Dropping the socket without a close frame.
                Ok(())
            }
            Script::Silent => {
                while let Some(Ok(_)) = ws.next().await {}
                Ok(())
            }
            Script::NoAnswer | Script::Forbidden => unreachable!("handled before the upgrade"),
        }
    }
    .await;
}

fn rule(pre: Value, post: Value) -> Value {
    json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRule",
        "metadata": {"name": "quiesce", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "container": "cassandra",
                 "pre": pre, "post": post},
    })
}

fn by_command(command: &str) -> Script {
    match command {
        "nodetool flush" => Script::Fail {
            code: 3,
            stderr: "error: flush failed: disk full\n",
        },
        "sh -c cat /var/log/huge" => Script::Succeed {
            stdout: vec![b'x'; 256 << 10],
        },
        "sh -c cut" => Script::Cut,
        "sleep forever" => Script::Silent,
        "unanswered" => Script::NoAnswer,
        "forbidden" => Script::Forbidden,
        _ => Script::Succeed {
            stdout: b"ok\n".to_vec(),
        },
    }
}

/// Serves `rule` (answering exec with `protocol`) and runs one side of it for db-nightly.
async fn run(rule: Value, protocol: &'static str, side: HookSide) -> (Server, HookOutcome) {
    let server = Server::start(Setup {
        rule,
        protocol,
        script: by_command,
    })
    .await;
    let outcome = run_rule(&server.client(), "shop", "quiesce", side, "db-nightly")
        .await
        .unwrap();
    (server, outcome)
}

#[tokio::test]
async fn pre_commands_run_in_every_running_pod_through_exec() {
    let (server, outcome) = run(
        rule(
            json!([{"command": ["fsfreeze", "--freeze", "/data"]},
                   {"command": ["sh", "-c", "sync && echo done"]}]),
            json!([{"command": ["fsfreeze", "--unfreeze", "/data"]}]),
        ),
        "v5.channel.k8s.io",
        HookSide::Pre,
    )
    .await;
    assert!(outcome.succeeded, "{}", outcome.message);
    assert_eq!(outcome.message, "2 commands ran in 2 pods");

    let requests = server.requests();
    let calls: Vec<(&str, &str)> = requests
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "GET",
                "/apis/cairn.io/v1alpha1/namespaces/shop/backuprules/quiesce"
            ),
            ("GET", "/api/v1/namespaces/shop/pods"),
            ("GET", "/api/v1/namespaces/shop/pods/db-0/exec"),
            ("GET", "/api/v1/namespaces/shop/pods/db-0/exec"),
            ("GET", "/api/v1/namespaces/shop/pods/db-1/exec"),
            ("GET", "/api/v1/namespaces/shop/pods/db-1/exec"),
            (
                "PATCH",
                "/apis/cairn.io/v1alpha1/namespaces/shop/backuprules/quiesce/status"
            ),
        ],
        "the Pending pod is skipped, only pre commands run"
    );
    assert_eq!(
        requests[1].query,
        [("labelSelector".to_string(), "app=db".to_string())]
    );
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        requests[2].query,
        pairs(&[
            ("stdout", "true"),
            ("stderr", "true"),
            ("container", "cassandra"),
            ("command", "fsfreeze"),
            ("command", "--freeze"),
            ("command", "/data"),
        ]),
        "no stdin and no tty: nothing waits for input"
    );
    assert_eq!(
        requests[3].query[3..],
        pairs(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "sync && echo done")
        ])
    );
    assert_eq!(
        requests[2].protocols, "v5.channel.k8s.io, v4.channel.k8s.io",
        "the client offers both channel protocols"
    );
    let run = server.last_run();
    assert_eq!(
        (&run["side"], &run["result"], &run["volumeBackup"]),
        (&json!("pre"), &json!("Succeeded"), &json!("db-nightly"))
    );
}

#[tokio::test]
async fn post_commands_with_output_beyond_the_client_buffers_complete() {
    let (server, outcome) = run(
        rule(
            json!([{"command": ["nodetool", "flush"]}]),
            json!([{"command": ["sh", "-c", "cat /var/log/huge"], "timeoutSeconds": 30}]),
        ),
        "v4.channel.k8s.io",
        HookSide::Post,
    )
    .await;
    assert!(outcome.succeeded, "{}", outcome.message);
    assert_eq!(
        server.execs(),
        [
            ("db-0".to_string(), "sh -c cat /var/log/huge".to_string()),
            ("db-1".to_string(), "sh -c cat /var/log/huge".to_string()),
        ],
        "only post commands run on the post side"
    );
    assert_eq!(server.last_run()["side"], "post");
}

/// Runs a pre side whose first command fails: checks that the side failed at db-0 without
/// trying anything more, that the BackupRule records it, and returns the message.
async fn failing_pre(action: Value, protocol: &'static str) -> String {
    let command: Vec<&str> = action["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let command = command.join(" ");
    let (server, outcome) = run(
        rule(
            json!([action, {"command": ["never", "reached"]}]),
            json!([]),
        ),
        protocol,
        HookSide::Pre,
    )
    .await;
    assert!(!outcome.succeeded, "{command}: {}", outcome.message);
    assert_eq!(
        server.execs(),
        [("db-0".to_string(), command.clone())],
        "the first failure stops the side: no further command, no further pod"
    );
    let run = server.last_run();
    assert_eq!(run["result"], "Failed");
    assert_eq!(run["message"], json!(outcome.message));
    let prefix = format!("\"{command}\" in pod db-0: ");
    assert!(outcome.message.starts_with(&prefix), "{}", outcome.message);
    outcome.message[prefix.len()..].to_string()
}

#[tokio::test]
async fn a_failing_command_fails_the_hook_with_its_exit_code_and_stderr() {
    let message = failing_pre(
        json!({"command": ["nodetool", "flush"]}),
        "v4.channel.k8s.io",
    )
    .await;
    assert_eq!(
        message,
        "exit code 3: command terminated with non-zero exit code: exit status 3; stderr: \
         error: flush failed: disk full"
    );
}

#[tokio::test]
async fn a_stream_cut_before_the_exit_status_fails_the_hook() {
    let message = failing_pre(json!({"command": ["sh", "-c", "cut"]}), "v5.channel.k8s.io").await;
    assert!(
        message.starts_with("the exec stream ended before the command's exit status arrived")
            && message.ends_with("; stdout: half a line"),
        "{message}"
    );
}

#[tokio::test]
async fn a_silent_command_times_out_instead_of_hanging() {
    let action = json!({"command": ["sleep", "forever"], "timeoutSeconds": 1});
    assert_eq!(
        failing_pre(action, "v5.channel.k8s.io").await,
        "no exit status within 1s (timeoutSeconds); the command may still be running"
    );
}

#[tokio::test]
async fn an_unanswered_exec_request_times_out_instead_of_hanging() {
    // The request reached the server (failing_pre checks it), which never answered.
    let action = json!({"command": ["unanswered"], "timeoutSeconds": 1});
    assert_eq!(
        failing_pre(action, "v5.channel.k8s.io").await,
        "no exit status within 1s (timeoutSeconds); the command may still be running"
    );
}

#[tokio::test]
async fn a_refused_exec_fails_the_hook_with_the_api_message() {
    assert_eq!(
        failing_pre(json!({"command": ["forbidden"]}), "v5.channel.k8s.io").await,
        "could not start it: pods \"db-0\" is forbidden: User \
         \"system:serviceaccount:cairn-system:cairn-controller\" cannot create resource \
         \"pods/exec\" (Forbidden)"
    );
}
