//! Running BackupRule commands in pods through the pods/exec API (a websocket), and the
//! label selector they are matched with.

use super::{api_err, AdapterError};
use crate::controller::HookSide;
use crate::crd::{BackupRule, HookOutcome, RuleRun};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{AttachParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

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

async fn exec_one(
    pods: &Api<Pod>,
    pod: &Pod,
    container: Option<&str>,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let mut params = AttachParams::default()
        .stdin(false)
        .stdout(false)
        .stderr(false);
    if let Some(c) = container {
        params = params.container(c);
    }
    let run = async {
        let mut process = pods
            .exec(&pod.name_any(), command.to_vec(), &params)
            .await
            .map_err(|e| e.to_string())?;
        let status = match process.take_status() {
            Some(status) => status.await,
            None => None,
        };
        let _ = process.join().await;
        match status {
            Some(s) if s.status.as_deref() == Some("Failure") => {
                Err(s.message.unwrap_or_else(|| "command failed".into()))
            }
            _ => Ok(()),
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("timed out after {}s", timeout.as_secs()))?
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
}
