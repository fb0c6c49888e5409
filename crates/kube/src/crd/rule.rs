//! `BackupRule`: commands run through pods/exec in matching pods around a snapshot, for
//! application-consistent backups (for example `nodetool flush` before, nothing after, or
//! `fsfreeze --freeze` before and `fsfreeze --unfreeze` after).

use super::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pre and post snapshot commands for the pods a selector matches.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.io",
    version = "v1alpha1",
    kind = "BackupRule",
    namespaced,
    status = "BackupRuleStatus",
    shortname = "brule",
    category = "cairn",
    printcolumn(name = "Last Run", type_ = "date", json_path = ".status.lastRun.time"),
    printcolumn(
        name = "Result",
        type_ = "string",
        json_path = ".status.lastRun.result"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRuleSpec {
    /// Pods (in this namespace) the commands run in.
    pub pod_selector: LabelSelector,
    /// Container to exec in; the pod's first container when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Run before the VolumeSnapshot is created. A failure fails the backup (post still runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre: Vec<RuleAction>,
    /// Run once the VolumeSnapshot is created, and always after pre commands ran, even
    /// when they or the snapshot failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<RuleAction>,
}

/// One command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleAction {
    /// Program and arguments, exec'd without a shell (`["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
    /// Seconds the command may run in each pod. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

/// Observed state of a BackupRule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRuleStatus {
    /// The last time the rule ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RuleRun>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One run of one side of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleRun {
    /// When it ran.
    pub time: Time,
    /// `pre` or `post`.
    pub side: String,
    /// For which VolumeBackup.
    pub volume_backup: String,
    /// `Succeeded` or `Failed`.
    pub result: String,
    /// Details of the first failure.
    #[serde(default)]
    pub message: String,
}
