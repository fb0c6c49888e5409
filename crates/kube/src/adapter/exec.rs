//! Running BackupRule commands in pods through the pods/exec API (a websocket), and the
//! label selector they are matched with.

use super::{api_err, describe, AdapterError};
use crate::controller::{HookRun, HookSide};
use crate::crd::{BackupRule, HookOutcome, RuleRun};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{AttachParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, ReadHalf, SimplexStream};

/// Default seconds a rule command may run per pod.
const DEFAULT_TIMEOUT: u32 = 60;

/// A LabelSelector in the `labelSelector` query syntax.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Runs one side of `rule` in every running pod it selects, stopping at the first failure.
/// A missing rule or no matching pod is a failure: the application would not be quiesced.
pub async fn run_rule(
    client: &kube::Client,
    namespace: &str,
    rule: &str,
    side: HookSide,
    volume_backup: &str,
) -> Result<HookOutcome, AdapterError> {
    let rules: Api<BackupRule> = Api::namespaced(client.clone(), namespace);
    let Some(found) = rules
        .get_opt(rule)
        .await
        .map_err(api_err(format!("reading BackupRule {namespace}/{rule}")))?
    else {
        return Ok(HookOutcome {
            succeeded: false,
            message: format!("BackupRule {rule:?} not found"),
        });
    };
    let actions = match side {
        HookSide::Pre => &found.spec.pre,
        HookSide::Post => &found.spec.post,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = selector_string(&found.spec.pod_selector);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err(format!(
            "listing pods for BackupRule {namespace}/{rule}"
        )))?;
    let running: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    let outcome = if running.is_empty() {
        HookOutcome {
            succeeded: false,
            message: format!("no running pod matches {selector:?}"),
        }
    } else {
        let mut failure = None;
        'pods: for pod in &running {
            for action in actions {
                let timeout = Duration::from_secs(u64::from(
                    action.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT),
                ));
                if let Err(why) = exec_one(
                    &pods,
                    pod,
                    found.spec.container.as_deref(),
                    &action.command,
                    timeout,
                )
                .await
                {
                    failure = Some(format!(
                        "{:?} in pod {}: {why}",
                        action.command.join(" "),
                        pod.name_any()
                    ));
                    break 'pods;
                }
            }
        }
        match failure {
            Some(message) => HookOutcome {
                succeeded: false,
                message,
            },
            None => HookOutcome {
                succeeded: true,
                message: format!("{} commands ran in {} pods", actions.len(), running.len()),
            },
        }
    };
    let run = RuleRun {
        time: Time(jiff::Timestamp::now()),
        side: side.as_str().into(),
        volume_backup: volume_backup.into(),
        result: if outcome.succeeded {
            "Succeeded"
        } else {
            "Failed"
        }
        .into(),
        message: outcome.message.clone(),
    };
    // The rule's own status is informational; the VolumeBackup records what matters.
    if let Err(e) = rules
        .patch_status(
            rule,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "lastRun": run } })),
        )
        .await
    {
        tracing::warn!(error = %e, rule, "could not record the rule run on the BackupRule");
    }
    Ok(outcome)
}

/// Runs the commands of `runs` in pod `namespace/pod`, in order, stopping at the first
/// failure (a group hook of an ApplicationBackup).
pub async fn run_in_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    runs: &[HookRun],
) -> HookOutcome {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let target = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut ran = 0;
    for run in runs {
        for action in &run.commands {
            let timeout =
                Duration::from_secs(u64::from(action.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT)));
            let result = exec_one(
                &pods,
                &target,
                run.container.as_deref(),
                &action.command,
                timeout,
            )
            .await;
            if let Err(why) = result {
                return HookOutcome {
                    succeeded: false,
                    message: format!(
                        "{:?} (BackupRule {}) failed: {why}",
                        action.command.join(" "),
                        run.rule
                    ),
                };
            }
            ran += 1;
        }
    }
    HookOutcome {
        succeeded: true,
        message: format!("{ran} commands ran"),
    }
}

/// Bytes kept of each output stream (its end) for a failure message.
const OUTPUT_TAIL: usize = 2048;

/// Runs `command` in `pod` and waits for its exit status, at most `timeout`.
///
/// Invariant: stdout and stderr are drained while the command runs. The client buffers
/// only about a kilobyte per stream; a full buffer would stall its message loop before the
/// exit status arrives.
async fn exec_one(
    pods: &Api<Pod>,
    pod: &Pod,
    container: Option<&str>,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let mut params = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        params = params.container(c);
    }
    let run = async {
        let mut process = pods
            .exec(&pod.name_any(), command.to_vec(), &params)
            .await
            .map_err(|e| format!("could not start it: {}", describe(&e)))?;
        let mut stdout = Tail::new(process.stdout());
        let mut stderr = Tail::new(process.stderr());
        let Some(status) = process.take_status() else {
            return Err("the exec client gave no exit status".into());
        };
        tokio::pin!(status);
        let status = loop {
            tokio::select! {
                status = &mut status => break status,
                () = stdout.read_some(), if stdout.is_open() => {}
                () = stderr.read_some(), if stderr.is_open() => {}
            }
        };
        // The status comes after all output, so what is left is already buffered.
        stdout.read_buffered();
        stderr.read_buffered();
        let ended = process.join().await;
        verdict(
            status.as_ref(),
            ended.err().map(|e| e.to_string()),
            &stdout.text(),
            &stderr.text(),
        )
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| {
        format!(
            "no exit status within {}s (timeoutSeconds); the command may still be running",
            timeout.as_secs()
        )
    })?
}

/// The end of one output stream of an exec'd command.
struct Tail {
    reader: Option<ReadHalf<SimplexStream>>,
    kept: Vec<u8>,
}

impl Tail {
    fn new(reader: Option<ReadHalf<SimplexStream>>) -> Tail {
        Tail {
            reader,
            kept: Vec::new(),
        }
    }

    fn is_open(&self) -> bool {
        self.reader.is_some()
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        let excess = self.kept.len().saturating_sub(OUTPUT_TAIL);
        self.kept.drain(..excess);
    }

    /// Reads what arrives next; closes the stream at its end or on an error.
    async fn read_some(&mut self) {
        let mut buf = [0; 1024];
        let read = match self.reader.as_mut() {
            Some(r) => r.read(&mut buf).await,
            None => return,
        };
        match read {
            Ok(n) if n > 0 => self.keep(&buf[..n]),
            _ => self.reader = None,
        }
    }

    /// Reads what is buffered without waiting for more.
    fn read_buffered(&mut self) {
        while self.is_open() {
            if self.read_some().now_or_never().is_none() {
                break;
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).trim().to_string()
    }
}

/// Judges one exec from its exit status (None: the stream ended without one), the client's
/// error if its message loop failed, and the end of the command's output.
fn verdict(
    status: Option<&Status>,
    client_error: Option<String>,
    stdout: &str,
    stderr: &str,
) -> Result<(), String> {
    let output = if !stderr.is_empty() {
        format!("; stderr: {stderr}")
    } else if !stdout.is_empty() {
        format!("; stdout: {stdout}")
    } else {
        String::new()
    };
    let Some(status) = status else {
        let why = client_error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(format!(
            "the exec stream ended before the command's exit status arrived{why}{output}"
        ));
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(());
    }
    let exit_code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.clone());
    let message = status
        .message
        .clone()
        .unwrap_or_else(|| "the command failed".into());
    Err(match exit_code {
        Some(code) => format!("exit code {code}: {message}{output}"),
        None => format!("{message}{output}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_in_query_syntax() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "cassandra"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["db", "cache"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "Exists"},
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_string(&selector),
            "app=cassandra,tier in (db,cache),!canary,zone"
        );
    }

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn success_is_ok_whatever_the_output() {
        let ok = status(json!({"metadata": {}, "status": "Success"}));
        assert_eq!(verdict(Some(&ok), None, "flushed", "a warning"), Ok(()));
    }

    #[test]
    fn failure_names_the_exit_code_and_the_end_of_stderr() {
        let failed = status(json!({
            "metadata": {}, "status": "Failure",
            "message": "command terminated with non-zero exit code: exit status 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }));
        assert_eq!(
            verdict(Some(&failed), None, "progress", "flush failed"),
            Err(
                "exit code 3: command terminated with non-zero exit code: exit status 3; \
                 stderr: flush failed"
                    .into()
            )
        );
        // Without stderr, stdout is the best clue.
        assert_eq!(
            verdict(Some(&failed), None, "progress", ""),
            Err(
                "exit code 3: command terminated with non-zero exit code: exit status 3; \
                 stdout: progress"
                    .into()
            )
        );
        // A failure to start (no exit code) keeps the server's message.
        let not_found = status(json!({"metadata": {}, "status": "Failure",
            "message": "executable file not found in $PATH"}));
        assert_eq!(
            verdict(Some(&not_found), None, "", ""),
            Err("executable file not found in $PATH".into())
        );
    }

    #[test]
    fn a_stream_without_exit_status_is_a_failure() {
        let Err(message) = verdict(None, Some("connection reset".into()), "", "half") else {
            panic!("no status must not pass");
        };
        assert_eq!(
            message,
            "the exec stream ended before the command's exit status arrived: connection reset; \
             stderr: half"
        );
    }

    #[test]
    fn tails_keep_the_end_of_long_output() {
        let mut tail = Tail::new(None);
        tail.keep(&[b'a'; OUTPUT_TAIL]);
        tail.keep(b"the end");
        assert_eq!(tail.kept.len(), OUTPUT_TAIL);
        assert!(tail.text().ends_with("aaathe end"));
    }
}
