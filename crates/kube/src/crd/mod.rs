//! The custom resources of group `cairn.io/v1alpha1` and the pieces their statuses share.
//!
//! Every resource is namespaced and has a status subresource with conditions. The CRD
//! documents are generated from these types (`crds_yaml`), never written by hand.

// kube's `printcolumn(...)` repeats keys such as `type_` across columns, which clippy
// mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
mod application;
#[allow(clippy::duplicated_attributes)]
mod backup;
#[allow(clippy::duplicated_attributes)]
mod repository;
#[allow(clippy::duplicated_attributes)]
mod restore;
#[allow(clippy::duplicated_attributes)]
mod rule;
#[allow(clippy::duplicated_attributes)]
mod snapshot;

pub use application::{
    ApplicationBackup, ApplicationBackupPhase, ApplicationBackupSpec, ApplicationBackupStatus,
    ApplicationRestore, ApplicationRestorePhase, ApplicationRestoreSource, ApplicationRestoreSpec,
    ApplicationRestoreStatus, ApplicationRuleRef, ApplicationVolume, BackupSchedule,
    BackupScheduleSpec, BackupScheduleStatus, ExistingResourcePolicy, GroupHookResults,
    ResourceOutcome, RestoreVolume, ScheduleRetention, ScheduleTemplate,
};
pub use backup::{
    BackupMode, HookOutcome, HookResults, Progress, RuleRef, SourceVolume, VolumeBackup,
    VolumeBackupPhase, VolumeBackupSpec, VolumeBackupStatus,
};
pub use repository::{
    BackupRepository, BackupRepositorySpec, BackupRepositoryStatus, MaintenanceKind,
    MaintenanceRun, MaintenanceSchedule, MaintenanceStatus, SecretKeyRef, SecretRef,
};
pub use restore::{
    NewVolumeClaim, RestoreSource, RestoreTarget, VolumeMode, VolumeRestore, VolumeRestorePhase,
    VolumeRestoreSpec, VolumeRestoreStatus,
};
pub use rule::{BackupRule, BackupRuleSpec, BackupRuleStatus, RuleAction, RuleRun};
pub use snapshot::{
    RepositorySnapshot, RepositorySnapshotSpec, RepositorySnapshotStatus, SnapshotSource,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every cairn resource.
pub const GROUP: &str = "cairn.io";
/// API version of every cairn resource.
pub const VERSION: &str = "v1alpha1";

/// One observation about a resource, in the shape `kubectl describe` and `kubectl wait` expect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition name, CamelCase: `Ready`, `ConfigValid`, `WaitingForJobSlot`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    pub reason: String,
    /// What happened and what to do about it.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl Condition {
    /// A condition with status `True` or `False`, stamped `now`.
    pub fn new(
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        now: Time,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: Some(now),
        }
    }
}

/// Replaces the condition of the same type in `conditions`, keeping the old transition time
/// when only the message or reason changed (the invariant `kubectl wait` relies on).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let keep_time = old.status == new.status;
            let time = if keep_time {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time: time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// The CRDs of every cairn resource, in a stable order.
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        BackupRepository::crd(),
        VolumeBackup::crd(),
        VolumeRestore::crd(),
        RepositorySnapshot::crd(),
        BackupRule::crd(),
        ApplicationBackup::crd(),
        ApplicationRestore::crd(),
        BackupSchedule::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `cairn kube crds` prints and
/// `deploy/crds.yaml` holds.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        // A CRD is plain maps, strings and numbers: serializing it cannot fail.
        let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
        out.push_str(&yaml);
    }
    out
}
