//! The controller's decisions: pure functions from observed objects to [`Action`]s.
//!
//! Nothing here talks to the API server. The adapter ([`crate::adapter`]) observes, calls a
//! `decide_*` function, and executes what it returns. Every step that changes the world also
//! patches the owner's status, so the next reconcile sees where the previous one left off.

mod access;
mod app_restore;
mod application;
mod backup;
mod objects;
mod repository;
mod restore;
mod schedule;
mod velero;

pub use access::{repository_for_job, repository_refusal, secret_copy_name};
pub use app_restore::{decide_application_restore, ApplicationRestoreObserved, LABEL_APP_RESTORE};
pub use application::{
    decide_application_backup, label_value, parent_of, short_name, ApplicationBackupObserved,
    RuleTarget, ANNOTATION_PARENT, FINALIZER_CHILDREN, LABEL_APP_BACKUP,
};
pub use backup::{decide_backup, record_hook, BackupObserved, SnapshotClassInfo, SnapshotInfo};
pub use objects::{
    is_block, job_name, short_hash, volume_snapshot, JobKind, LABEL_JOB_KIND, LABEL_OWNER,
    LABEL_REPOSITORY,
};
pub use repository::{decide_repository, RepositoryObserved, DEFAULT_FULL, DEFAULT_QUICK};
pub use restore::{decide_restore, RestoreObserved};
pub use schedule::{
    decide_schedule, keep_flags, retention_policy, run_name, RunKind, RunOutcome, ScheduleObserved,
    ScheduleRun, ScheduledRun, ANNOTATION_SCHEDULED_TIME, LABEL_SCHEDULE, TAG_SCHEDULE,
};
pub use velero::{
    decide_data_download, decide_data_upload, secret_key_id, secret_sources, DataDownloadObserved,
    DataUploadObserved, SecretSync, SnapshotContentInfo, VeleroAction, VeleroContext,
    ANNOTATION_RECLAIM, FINALIZER_FORGET, LABEL_DOWNLOAD, LABEL_VELERO, TAG_DATA_UPLOAD,
};

use crate::config::Config;
use crate::crd::{
    set_condition, ApplicationBackupStatus, ApplicationRestoreStatus, BackupRepositoryStatus,
    BackupScheduleStatus, Condition, RuleAction, VolumeBackup, VolumeBackupStatus, VolumeRestore,
    VolumeRestoreStatus,
};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use std::time::Duration;

/// What the controller needs besides the ConfigMap to build Jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSettings {
    /// The cairn image; Jobs run it in job mode.
    pub image: String,
    /// ServiceAccount (in each namespace that has backups) the Jobs run as.
    pub service_account: String,
    /// Jobs created per backup or restore before it is marked Failed (1 = no retry).
    pub max_attempts: u32,
    /// Seconds a finished Job (and its pod logs) stay around.
    pub ttl_seconds_after_finished: i32,
    /// The controller's log format (`text` or `json`), passed to the Jobs as
    /// `CAIRN_LOG_FORMAT` so their pod logs read like the controller's.
    pub log_format: String,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            image: "ghcr.io/cairn/cairn:latest".into(),
            service_account: "cairn-job".into(),
            max_attempts: 3,
            ttl_seconds_after_finished: 86_400,
            log_format: "text".into(),
        }
    }
}

/// Everything a decision depends on besides the observed objects.
#[derive(Clone, Debug)]
pub struct DecideContext {
    /// Parsed ConfigMap.
    pub config: Config,
    /// Job image and identity.
    pub jobs: JobSettings,
    /// The current time.
    pub now: Timestamp,
}

/// A Job as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JobInfo {
    /// Job name.
    pub name: String,
    /// Whether it ended with success.
    pub succeeded: bool,
    /// Whether it ended with failure (backoff exhausted, deadline, ...).
    pub failed: bool,
    /// The pod's termination message, when a pod terminated.
    pub termination_message: Option<String>,
    /// Reason/message from the Job's Failed condition.
    pub failure_message: Option<String>,
    /// Set while no pod of the Job has started running: since when, and why.
    pub waiting: Option<JobWaiting>,
}

/// A Job whose pod has not started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobWaiting {
    /// When the Job was created.
    pub since: Timestamp,
    /// What holds the pod back, in Kubernetes' words (`Unschedulable: 0/3 nodes are
    /// available...`, `ImagePullBackOff`), or that no pod exists yet.
    pub reason: String,
}

impl JobInfo {
    /// Whether the Job is still running or waiting to run.
    pub fn is_running(&self) -> bool {
        !self.succeeded && !self.failed
    }

    /// The Job as decisions see it: one whose pod has waited longer than `timeout` to
    /// start counts as failed, so the attempt is retried or the owner fails with the reason
    /// instead of staying in progress forever.
    pub fn judged(mut self, timeout: Duration, now: Timestamp) -> Self {
        let Some(waiting) = self.waiting.as_ref().filter(|_| self.is_running()) else {
            return self;
        };
        let waited = now.duration_since(waiting.since).as_secs_f64();
        if waited >= timeout.as_secs_f64() {
            self.failed = true;
            self.failure_message = Some(format!(
                "its pod did not start within {} ({}); see `kubectl describe pod -l job-name={}` \
                 (node capacity, image pull, volume attach), or raise JOB_START_TIMEOUT",
                human(timeout),
                waiting.reason,
                self.name
            ));
        }
        self
    }
}

/// Requeue delay while a Job runs: its end is watched, but nothing changes while its pod
/// waits to start, so a waiting Job is looked at again soon to meet its start timeout.
pub(crate) fn running_poll(job: &JobInfo) -> Duration {
    if job.waiting.is_some() {
        POLL
    } else {
        Duration::from_secs(60)
    }
}

/// `job` judged against the ConfigMap's start timeout at `ctx.now`.
pub(crate) fn judged(job: &Option<JobInfo>, ctx: &DecideContext) -> Option<JobInfo> {
    job.clone()
        .map(|j| j.judged(ctx.config.job_start_timeout, ctx.now))
}

/// Which side of a BackupRule runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSide {
    /// Before the snapshot.
    Pre,
    /// After the snapshot.
    Post,
}

impl HookSide {
    /// `pre` or `post`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookSide::Pre => "pre",
            HookSide::Post => "post",
        }
    }
}

/// One thing the adapter does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create a `snapshot.storage.k8s.io/v1` VolumeSnapshot (the whole object).
    CreateVolumeSnapshot(serde_json::Value),
    /// Delete a VolumeSnapshot.
    DeleteVolumeSnapshot {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create a PVC: a backupPVC or a restore target.
    CreatePvc(Box<PersistentVolumeClaim>),
    /// Delete a PVC the controller created.
    DeletePvc {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create a Job, counting against the limit of its kind.
    CreateJob(Box<Job>),
    /// Delete a Job and its pods.
    DeleteJob {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Run one side of a BackupRule for a VolumeBackup, then record the outcome in
    /// `status.hooks` of that VolumeBackup.
    RunRule {
        /// Namespace of the rule, the pods and the VolumeBackup.
        namespace: String,
        /// BackupRule name.
        rule: String,
        /// Pre or post.
        side: HookSide,
        /// VolumeBackup name.
        volume_backup: String,
    },
    /// Replace the status of a VolumeBackup.
    PatchBackupStatus(Box<VolumeBackupStatus>),
    /// Replace the status of a VolumeRestore.
    PatchRestoreStatus(Box<VolumeRestoreStatus>),
    /// Replace the status of a BackupRepository.
    PatchRepositoryStatus(Box<BackupRepositoryStatus>),
    /// Reconcile again after this long even if nothing changes.
    RequeueAfter(Duration),
    /// Copy Secret `from_namespace/from_name` to `namespace/name`, owned by `owner` (a
    /// repository's Secret next to a Job in another namespace).
    CopySecret {
        /// Namespace of the original.
        from_namespace: String,
        /// Name of the original.
        from_name: String,
        /// Namespace of the copy.
        namespace: String,
        /// Name of the copy.
        name: String,
        /// Owner of the copy (in `namespace`).
        owner: OwnerReference,
    },
    /// Create a child VolumeBackup (in its own namespace).
    CreateVolumeBackup(Box<VolumeBackup>),
    /// Set `spec.cancel` on a VolumeBackup.
    CancelVolumeBackup {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create the backup object of a BackupSchedule run (AlreadyExists counts as created).
    CreateScheduledRun(Box<ScheduledRun>),
    /// Delete a BackupSchedule run that retention does not keep.
    DeleteScheduledRun {
        /// ApplicationBackup or VolumeBackup.
        kind: RunKind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Replace the status of a BackupSchedule.
    PatchScheduleStatus(Box<BackupScheduleStatus>),
    /// Delete a VolumeBackup.
    DeleteVolumeBackup {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Create a child VolumeRestore (in its own namespace).
    CreateVolumeRestore(Box<VolumeRestore>),
    /// Set `spec.cancel` on a VolumeRestore.
    CancelVolumeRestore {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Run one side of an ApplicationBackup's rules in these pods, all pods in parallel,
    /// then record the outcome per pod in `status.hooks` of the target ApplicationBackup.
    RunGroupHooks {
        /// Pre or post.
        side: HookSide,
        /// Where and what.
        pods: Vec<HookPod>,
    },
    /// Replace the status of the target ApplicationBackup.
    PatchApplicationBackupStatus(Box<ApplicationBackupStatus>),
    /// Replace the status of the target ApplicationRestore (only changed fields are sent:
    /// its Jobs patch counts and volumes themselves).
    PatchApplicationRestoreStatus(Box<ApplicationRestoreStatus>),
    /// Add (true) or remove (false) the `cairn.io/children` finalizer of the target
    /// ApplicationBackup.
    SetApplicationBackupFinalizer(bool),
}

/// One pod a group hook runs in, with the commands of every rule that selects it.
#[derive(Clone, Debug, PartialEq)]
pub struct HookPod {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The rules' commands, run in this order; the first failure stops the pod's run.
    pub runs: Vec<HookRun>,
}

impl HookPod {
    /// `namespace/pod`, the key of its entry in `status.hooks`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// The commands of one rule for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct HookRun {
    /// BackupRule name (for messages).
    pub rule: String,
    /// Container to exec in; the pod's first when absent.
    pub container: Option<String>,
    /// Commands of the side being run.
    pub commands: Vec<RuleAction>,
}

/// A status with a phase, conditions and an end: what each resource's decisions share to
/// record a step and to finish.
pub(crate) trait Lifecycle: Clone + PartialEq {
    /// The resource's phase.
    type Phase: Copy + PartialEq + std::fmt::Debug;
    /// The phase that means success.
    const COMPLETED: Self::Phase;
    /// The Ready condition's message on success.
    const DONE: &'static str;
    /// The conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// Sets the final phase, the completion time and the failure reason.
    fn end(&mut self, phase: Self::Phase, at: Time, reason: Option<String>);
    /// The action that writes this status.
    fn patch(self) -> Action;
}

/// One decision's changes: the status as observed and as decided, and the actions.
pub(crate) struct Plan<S> {
    pub before: S,
    pub status: S,
    pub actions: Vec<Action>,
    pub now: Timestamp,
}

impl<S: Lifecycle> Plan<S> {
    /// A plan starting from the observed status.
    pub fn new(before: S, now: Timestamp) -> Self {
        Plan {
            status: before.clone(),
            before,
            actions: Vec::new(),
            now,
        }
    }

    /// Sets a condition, stamped now.
    pub fn condition(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        set_condition(
            self.status.conditions_mut(),
            Condition::new(type_, ok, reason, message, time(self.now)),
        );
    }

    /// Ends the resource in `phase`; `reason` says why it did not complete.
    pub fn terminal(&mut self, phase: S::Phase, reason: Option<String>) {
        self.status.end(phase, time(self.now), reason.clone());
        let message = reason.unwrap_or_else(|| S::DONE.into());
        self.condition(
            "Ready",
            phase == S::COMPLETED,
            &format!("{phase:?}"),
            message,
        );
    }

    /// The actions, led by the status patch when the status changed.
    pub fn finish(mut self) -> Vec<Action> {
        if self.status != self.before {
            self.actions.insert(0, self.status.patch());
        }
        self.actions
    }
}

macro_rules! lifecycle {
    ($status:ty, $phase:ty, $action:ident, $done:literal) => {
        impl Lifecycle for $status {
            type Phase = $phase;
            const COMPLETED: $phase = <$phase>::Completed;
            const DONE: &'static str = $done;
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
            fn end(&mut self, phase: $phase, at: Time, reason: Option<String>) {
                self.phase = phase;
                self.completion_time = Some(at);
                self.failure_reason = reason;
            }
            fn patch(self) -> Action {
                Action::$action(Box::new(self))
            }
        }
    };
}

lifecycle!(
    VolumeBackupStatus,
    crate::crd::VolumeBackupPhase,
    PatchBackupStatus,
    "backup complete"
);
lifecycle!(
    ApplicationBackupStatus,
    crate::crd::ApplicationBackupPhase,
    PatchApplicationBackupStatus,
    "backup complete"
);
lifecycle!(
    ApplicationRestoreStatus,
    crate::crd::ApplicationRestorePhase,
    PatchApplicationRestoreStatus,
    "restore complete"
);

/// Requeue delay while waiting on something that is not watched (VolumeSnapshots, job slots).
pub const POLL: Duration = Duration::from_secs(5);
/// Requeue delay while blocked on configuration or a missing object a user must create.
pub const BLOCKED_POLL: Duration = Duration::from_secs(30);

/// Shortens `d` to what a human reads in a message (`5m`, `1h30m`).
pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `t` as a Kubernetes timestamp.
pub(crate) fn time(t: Timestamp) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)
}
