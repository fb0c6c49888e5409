//! Gauges recomputed from the observed objects on every scrape: the time of the last
//! successful backup of each source and schedule, the state of each repository's
//! maintenance, and the Jobs running and waiting against each job limit. Nothing here is
//! remembered by the process, so a restarted controller reports the same values.

use super::{source_labels, RepositoryLabels, SourceLabels};
use crate::config::{parse_duration, Config};
use crate::controller::{JobKind, LABEL_JOB_KIND};
use crate::crd::{
    ApplicationBackup, ApplicationRestore, BackupRepository, BackupSchedule, Condition,
    VolumeBackup, VolumeRestore,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What the gauges are computed from: the objects as the controller's watches see them.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// VolumeBackups, all namespaces.
    pub volume_backups: Vec<Arc<VolumeBackup>>,
    /// ApplicationBackups.
    pub application_backups: Vec<Arc<ApplicationBackup>>,
    /// VolumeRestores.
    pub volume_restores: Vec<Arc<VolumeRestore>>,
    /// ApplicationRestores.
    pub application_restores: Vec<Arc<ApplicationRestore>>,
    /// BackupRepositories.
    pub repositories: Vec<Arc<BackupRepository>>,
    /// BackupSchedules.
    pub schedules: Vec<Arc<BackupSchedule>>,
    /// Jobs carrying the `cairn.io/job-kind` label.
    pub jobs: Vec<Arc<Job>>,
    /// The controller's settings (job limits).
    pub config: Config,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    namespace: String,
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepositoryOnlyLabels {
    namespace: String,
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn seconds(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

fn waiting(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "WaitingForJobSlot" && c.status == "True")
}

fn job_finished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
    })
}

/// Sets `family[labels]` to `value` unless it holds a larger value already.
fn set_max<L>(family: &Family<L, FloatGauge>, labels: &L, value: f64)
where
    L: Clone + std::hash::Hash + Eq,
{
    let gauge = family.get_or_create(labels);
    if gauge.get() < value {
        gauge.set(value);
    }
}

/// The gauges for `observed`, in the Prometheus text format (without `# EOF`).
pub fn encode_state(observed: &Observed, out: &mut String) -> std::fmt::Result {
    let mut registry = Registry::with_prefix("cairn");
    let last_success = Family::<SourceLabels, FloatGauge>::default();
    let schedule_success = Family::<ScheduleLabels, FloatGauge>::default();
    let schedule_interval = Family::<ScheduleLabels, FloatGauge>::default();
    let maintenance_time = Family::<RepositoryLabels, FloatGauge>::default();
    let maintenance_ok = Family::<RepositoryLabels, Gauge>::default();
    let maintenance_interval = Family::<RepositoryLabels, FloatGauge>::default();
    let repository_bytes = Family::<RepositoryOnlyLabels, Gauge>::default();
    let repository_blobs = Family::<RepositoryOnlyLabels, Gauge>::default();
    let repository_damaged = Family::<RepositoryOnlyLabels, Gauge>::default();
    let jobs_running = Family::<JobLabels, Gauge>::default();
    let jobs_waiting = Family::<JobLabels, Gauge>::default();
    let job_limit = Family::<JobLabels, Gauge>::default();

    for vb in &observed.volume_backups {
        let Some(status) = &vb.status else { continue };
        let Some(done) = status
            .completion_time
            .as_ref()
            .filter(|_| status.phase == crate::crd::VolumeBackupPhase::Completed)
        else {
            continue;
        };
        let object = serde_json::to_value(vb.as_ref()).unwrap_or_default();
        if let Some(labels) = source_labels("VolumeBackup", &object, &object["status"]) {
            set_max(&last_success, &labels, seconds(done));
        }
    }
    for ab in &observed.application_backups {
        let Some(status) = &ab.status else { continue };
        let Some(done) = status
            .completion_time
            .as_ref()
            .filter(|_| status.phase == crate::crd::ApplicationBackupPhase::Completed)
        else {
            continue;
        };
        let object = serde_json::to_value(ab.as_ref()).unwrap_or_default();
        if let Some(labels) = source_labels("ApplicationBackup", &object, &object["status"]) {
            set_max(&last_success, &labels, seconds(done));
        }
    }
    for schedule in &observed.schedules {
        if schedule.spec.suspend {
            continue;
        }
        let labels = ScheduleLabels {
            namespace: schedule.metadata.namespace.clone().unwrap_or_default(),
            schedule: schedule.metadata.name.clone().unwrap_or_default(),
        };
        let status = schedule.status.clone().unwrap_or_default();
        // A schedule that never succeeded counts from its creation, so it is overdue too.
        let since = status
            .last_successful_time
            .as_ref()
            .or(schedule.metadata.creation_timestamp.as_ref());
        if let Some(t) = since {
            schedule_success.get_or_create(&labels).set(seconds(t));
        }
        let interval = match (
            &schedule.spec.every,
            &status.last_schedule_time,
            &status.next_schedule_time,
        ) {
            (Some(every), _, _) => parse_duration(every).ok().map(|d| d.as_secs_f64()),
            (None, Some(last), Some(next)) => Some(seconds(next) - seconds(last)),
            _ => None,
        };
        if let Some(interval) = interval.filter(|i| *i > 0.0) {
            schedule_interval.get_or_create(&labels).set(interval);
        }
    }
    for repo in &observed.repositories {
        let spec = &repo.spec.maintenance;
        let status = repo.status.clone().unwrap_or_default();
        let runs = [
            (
                "quick",
                &spec.quick_interval,
                crate::controller::DEFAULT_QUICK,
                &status.maintenance.last_quick,
            ),
            (
                "full",
                &spec.full_interval,
                crate::controller::DEFAULT_FULL,
                &status.maintenance.last_full,
            ),
        ];
        // Size and blob count: from the newest finished run of either kind that counted them.
        let newest = [
            &status.maintenance.last_quick,
            &status.maintenance.last_full,
        ]
        .into_iter()
        .flatten()
        .filter(|r| r.result == "Succeeded" && r.repository_bytes.is_some())
        .max_by_key(|r| r.completion_time.as_ref().map(|t| t.0));
        if let Some(run) = newest {
            let labels = RepositoryOnlyLabels {
                namespace: repo.metadata.namespace.clone().unwrap_or_default(),
                repository: repo.metadata.name.clone().unwrap_or_default(),
            };
            let gauge = |v: Option<u64>| i64::try_from(v.unwrap_or_default()).unwrap_or(i64::MAX);
            repository_bytes
                .get_or_create(&labels)
                .set(gauge(run.repository_bytes));
            if run.blob_count.is_some() {
                repository_blobs
                    .get_or_create(&labels)
                    .set(gauge(run.blob_count));
            }
        }
        let newest_damage = [
            &status.maintenance.last_quick,
            &status.maintenance.last_full,
        ]
        .into_iter()
        .flatten()
        .filter(|r| r.result == "Succeeded")
        .filter_map(|r| Some((r.completion_time.as_ref().map(|t| t.0), r.damage_records?)))
        .max_by_key(|(at, _)| *at);
        if let Some((_, records)) = newest_damage {
            let labels = RepositoryOnlyLabels {
                namespace: repo.metadata.namespace.clone().unwrap_or_default(),
                repository: repo.metadata.name.clone().unwrap_or_default(),
            };
            repository_damaged
                .get_or_create(&labels)
                .set(i64::from(records > 0));
        }
        for (kind, interval, default, last) in runs {
            let labels = RepositoryLabels {
                namespace: repo.metadata.namespace.clone().unwrap_or_default(),
                repository: repo.metadata.name.clone().unwrap_or_default(),
                kind: kind.into(),
            };
            if !spec.suspend {
                let every = interval
                    .as_deref()
                    .map_or(Ok(default), parse_duration)
                    .unwrap_or(default);
                maintenance_interval
                    .get_or_create(&labels)
                    .set(every.as_secs_f64());
            }
            let finished = last.as_ref().filter(|r| r.result != "Running");
            let at = finished
                .and_then(|r| r.completion_time.as_ref())
                .or(repo.metadata.creation_timestamp.as_ref());
            if let Some(at) = at {
                maintenance_time.get_or_create(&labels).set(seconds(at));
            }
            if let Some(run) = finished {
                maintenance_ok
                    .get_or_create(&labels)
                    .set(i64::from(run.result == "Succeeded"));
            }
        }
    }

    let kinds = [JobKind::Backup, JobKind::Restore, JobKind::Maintenance];
    for kind in kinds {
        let labels = JobLabels {
            kind: kind.as_str().into(),
        };
        job_limit
            .get_or_create(&labels)
            .set(i64::from(kind.limit(&observed.config)));
        jobs_running.get_or_create(&labels).set(0);
        jobs_waiting.get_or_create(&labels).set(0);
    }
    for job in &observed.jobs {
        let kind = job
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_JOB_KIND));
        let Some(kind) = kind.filter(|k| kinds.iter().any(|j| j.as_str() == k.as_str())) else {
            continue;
        };
        if !job_finished(job) {
            jobs_running
                .get_or_create(&JobLabels { kind: kind.clone() })
                .inc();
        }
    }
    let mut waits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut wait = |kind: JobKind, conditions: Option<&Vec<Condition>>| {
        if conditions.is_some_and(|c| waiting(c)) {
            *waits.entry(kind.as_str()).or_default() += 1;
        }
    };
    for vb in &observed.volume_backups {
        wait(JobKind::Backup, vb.status.as_ref().map(|s| &s.conditions));
    }
    for ab in &observed.application_backups {
        wait(JobKind::Backup, ab.status.as_ref().map(|s| &s.conditions));
    }
    for vr in &observed.volume_restores {
        wait(JobKind::Restore, vr.status.as_ref().map(|s| &s.conditions));
    }
    for ar in &observed.application_restores {
        wait(JobKind::Restore, ar.status.as_ref().map(|s| &s.conditions));
    }
    for repo in &observed.repositories {
        wait(
            JobKind::Maintenance,
            repo.status.as_ref().map(|s| &s.conditions),
        );
    }
    for schedule in &observed.schedules {
        wait(
            JobKind::Maintenance,
            schedule.status.as_ref().map(|s| &s.conditions),
        );
    }
    for (kind, n) in waits {
        jobs_waiting
            .get_or_create(&JobLabels { kind: kind.into() })
            .set(n);
    }

    let r = &mut registry;
    r.register_with_unit(
        "backup_last_success_timestamp",
        "Completion time of the last successful backup of each source still held as a CR",
        Unit::Seconds,
        last_success,
    );
    r.register_with_unit(
        "schedule_last_success_timestamp",
        "Completion time of a schedule's last successful run (its creation time until one succeeds)",
        Unit::Seconds,
        schedule_success,
    );
    r.register_with_unit(
        "schedule_interval",
        "Time between two runs of a schedule",
        Unit::Seconds,
        schedule_interval,
    );
    r.register_with_unit(
        "maintenance_last_run_timestamp",
        "End of a repository's last maintenance run of each kind (its creation time before any)",
        Unit::Seconds,
        maintenance_time,
    );
    r.register(
        "maintenance_last_run_succeeded",
        "1 when a repository's last maintenance run of each kind succeeded, 0 when it failed",
        maintenance_ok,
    );
    r.register_with_unit(
        "maintenance_interval",
        "How often a repository's maintenance of each kind is due (absent while suspended)",
        Unit::Seconds,
        maintenance_interval,
    );
    r.register_with_unit(
        "repository_size",
        "Bytes of the packs a repository's index lists, after its last maintenance run",
        Unit::Bytes,
        repository_bytes,
    );
    r.register(
        "repository_blobs",
        "Distinct blobs a repository's index lists, after its last maintenance run",
        repository_blobs,
    );
    r.register(
        "repository_damaged",
        "1 when a repository's last maintenance run left damage records naming indexed packs, else 0",
        repository_damaged,
    );
    r.register(
        "jobs_running",
        "Jobs of each kind running now",
        jobs_running,
    );
    r.register(
        "jobs_waiting",
        "Resources waiting for a free Job slot of each kind",
        jobs_waiting,
    );
    r.register(
        "job_limit",
        "The limit on running Jobs of each kind",
        job_limit,
    );
    text::encode_registry(out, &registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn scrape(observed: &Observed) -> String {
        let mut out = String::new();
        encode_state(observed, &mut out).unwrap();
        out
    }

    #[test]
    fn the_last_success_of_each_source_comes_from_cr_status() {
        let vb = |name: &str, phase: &str, done: &str| {
            object::<VolumeBackup>(json!({
                "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"source": {"persistentVolumeClaim": "data"}, "repository": "main"},
                "status": {"phase": phase, "completionTime": done}}))
        };
        let observed = Observed {
            volume_backups: vec![
                vb("a", "Completed", "2026-01-01T00:00:10Z"),
                vb("b", "Completed", "2026-01-02T00:00:00Z"),
                vb("c", "Failed", "2026-01-03T00:00:00Z"),
            ],
            ..Observed::default()
        };
        let text = scrape(&observed);
        assert!(text.contains(
            "cairn_backup_last_success_timestamp_seconds{kind=\"VolumeBackup\",namespace=\"shop\",source=\"data\",repository=\"shop/main\",schedule=\"\"} 1767312000.0\n"
        ), "{text}");
        assert_eq!(
            text.matches("cairn_backup_last_success_timestamp_seconds{")
                .count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn jobs_running_and_waiting_are_counted_against_their_limits() {
        let job = |name: &str, kind: &str, done: bool| {
            let conditions = if done {
                json!([{"type": "Complete", "status": "True"}])
            } else {
                json!([])
            };
            object::<Job>(json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": "shop", "labels": {LABEL_JOB_KIND: kind}},
                "status": {"conditions": conditions}}))
        };
        let waiting = object::<VolumeBackup>(json!({
            "apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": "w", "namespace": "shop"},
            "spec": {"source": {"persistentVolumeClaim": "data"}, "repository": "main"},
            "status": {"phase": "Uploading", "conditions": [{"type": "WaitingForJobSlot", "status": "True", "reason": "JobLimitReached", "message": ""}]}}));
        let config = Config {
            backup_job_limit: 2,
            ..Config::default()
        };
        let observed = Observed {
            jobs: vec![
                job("a", "backup", false),
                job("b", "backup", true),
                job("c", "maintenance", false),
            ],
            volume_backups: vec![waiting],
            config,
            ..Observed::default()
        };
        let text = scrape(&observed);
        for line in [
            "cairn_jobs_running{kind=\"backup\"} 1\n",
            "cairn_jobs_running{kind=\"maintenance\"} 1\n",
            "cairn_jobs_running{kind=\"restore\"} 0\n",
            "cairn_jobs_waiting{kind=\"backup\"} 1\n",
            "cairn_job_limit{kind=\"backup\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn schedules_report_their_interval_and_last_success_and_repositories_their_maintenance() {
        let schedule = object::<BackupSchedule>(json!({
            "apiVersion": "cairn.io/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"schedule": "0 2 * * *", "template": {"volumeBackup": {"source": {"persistentVolumeClaim": "data"}, "repository": "main"}}},
            "status": {"lastScheduleTime": "2026-01-02T02:00:00Z", "nextScheduleTime": "2026-01-03T02:00:00Z"}}));
        let repo = object::<BackupRepository>(json!({
            "apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "main", "namespace": "shop"},
            "spec": {"location": "/r", "passwordSecret": {"name": "p", "key": "k"}, "maintenance": {"quickInterval": "2h"}},
            "status": {"maintenance": {"lastQuick": {"jobName": "m", "result": "Failed", "message": "x",
                       "completionTime": "2026-01-01T00:00:00Z"},
                     "lastFull": {"jobName": "f", "result": "Succeeded", "message": "ok",
                       "completionTime": "2025-12-31T00:00:00Z", "bytesReclaimed": 300,
                       "repositoryBytes": 5000, "blobCount": 42, "damageRecords": 3}}}}));
        let observed = Observed {
            schedules: vec![schedule],
            repositories: vec![repo],
            ..Observed::default()
        };
        let text = scrape(&observed);
        for line in [
            "cairn_schedule_interval_seconds{namespace=\"shop\",schedule=\"nightly\"} 86400.0\n",
            "cairn_schedule_last_success_timestamp_seconds{namespace=\"shop\",schedule=\"nightly\"} 1767225600.0\n",
            "cairn_maintenance_interval_seconds{namespace=\"shop\",repository=\"main\",kind=\"quick\"} 7200.0\n",
            "cairn_maintenance_interval_seconds{namespace=\"shop\",repository=\"main\",kind=\"full\"} 86400.0\n",
            "cairn_maintenance_last_run_succeeded{namespace=\"shop\",repository=\"main\",kind=\"quick\"} 0\n",
            "cairn_maintenance_last_run_timestamp_seconds{namespace=\"shop\",repository=\"main\",kind=\"quick\"} 1767225600.0\n",
            // The failed quick run is newer but counted nothing: the full run's figures stand.
            "cairn_repository_size_bytes{namespace=\"shop\",repository=\"main\"} 5000\n",
            "cairn_repository_blobs{namespace=\"shop\",repository=\"main\"} 42\n",
            "cairn_repository_damaged{namespace=\"shop\",repository=\"main\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
