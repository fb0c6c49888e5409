//! The controller's Prometheus metrics: counters and histograms of the transitions the
//! controller's own status patches make (counted once, on the patch that makes them), and
//! gauges recomputed from the observed objects on every scrape (restart-safe: the time of
//! the last successful backup comes from CR status, never from memory).
//!
//! Label cardinality is bounded by the sources, repositories and schedules users declare:
//! no label carries a snapshot id, a run's generated name, or a file.

mod serve;
mod state;

pub use serve::{parse_address, MetricsError, MetricsServer};
pub use state::{encode_state, Observed};

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use std::sync::LazyLock;

/// Label of a VolumeBackup created by an ApplicationBackup (counted through its parent).
const LABEL_APP_BACKUP: &str = crate::controller::LABEL_APP_BACKUP;
/// Label of a VolumeRestore created by an ApplicationRestore.
const LABEL_APP_RESTORE: &str = crate::controller::LABEL_APP_RESTORE;

/// What was backed up or restored, and where: the labels of every backup and restore series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `VolumeBackup`, `ApplicationBackup`, `VolumeRestore` or `ApplicationRestore`.
    pub kind: String,
    /// Namespace of the resource.
    pub namespace: String,
    /// The PVC (volume kinds), the schedule or ApplicationBackup name (applications), the
    /// ApplicationRestore name.
    pub source: String,
    /// `<namespace>/<name>` of the BackupRepository; empty when a restore names none.
    pub repository: String,
    /// The BackupSchedule that created the run; empty for backups created by hand.
    pub schedule: String,
}

/// [`SourceLabels`] and why a backup or restore failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    #[prometheus(flatten)]
    source: SourceLabels,
    /// See [`failure_class`].
    class: String,
}

/// [`SourceLabels`] and how a backup or restore ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    #[prometheus(flatten)]
    source: SourceLabels,
    /// `succeeded`, `partially_failed`, `failed` or `canceled`.
    result: String,
}

/// A repository's maintenance of one kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RepositoryLabels {
    /// Namespace of the BackupRepository.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) repository: String,
    /// `quick` or `full`.
    pub(crate) kind: String,
}

/// A repository's maintenance runs of one kind and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceLabels {
    /// Namespace of the BackupRepository.
    namespace: String,
    /// Its name.
    repository: String,
    /// `quick` or `full`.
    kind: String,
    /// `Succeeded` or `Failed`.
    result: String,
}

fn duration_histogram() -> Histogram {
    // 1 s to ~16.5 h.
    Histogram::new(exponential_buckets(1.0, 2.5, 13))
}

/// Counters and histograms of one direction (backups or restores).
struct Direction {
    started: Family<SourceLabels, Counter>,
    succeeded: Family<SourceLabels, Counter>,
    partially_failed: Family<SourceLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    bytes_read: Family<SourceLabels, Counter>,
    /// Bytes added to the repository (backups only: restores add nothing).
    bytes_added: Family<SourceLabels, Counter>,
    duration: Family<ResultLabels, Histogram, fn() -> Histogram>,
}

impl Direction {
    fn new() -> Self {
        Direction {
            started: Family::default(),
            succeeded: Family::default(),
            partially_failed: Family::default(),
            failed: Family::default(),
            bytes_read: Family::default(),
            bytes_added: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }

    fn register(&self, registry: &mut Registry, noun: &str) {
        let r = registry;
        r.register(
            format!("{noun}_started"),
            format!("{noun}s that left phase New"),
            self.started.clone(),
        );
        r.register(
            format!("{noun}_succeeded"),
            format!("{noun}s that Completed"),
            self.succeeded.clone(),
        );
        r.register(
            format!("{noun}_partially_failed"),
            format!("{noun}s that ended PartiallyFailed"),
            self.partially_failed.clone(),
        );
        r.register(
            format!("{noun}_failed"),
            format!("{noun}s that Failed or were Canceled, by class"),
            self.failed.clone(),
        );
        r.register_with_unit(
            format!("{noun}_read"),
            format!("Bytes read by completed {noun}s"),
            Unit::Bytes,
            self.bytes_read.clone(),
        );
        if noun == "backup" {
            r.register_with_unit(
                format!("{noun}_added"),
                format!(
                    "Bytes completed {noun}s added to the repository (after deduplication and compression)"
                ),
                Unit::Bytes,
                self.bytes_added.clone(),
            );
        }
        r.register_with_unit(
            format!("{noun}_duration"),
            format!("Time from the start of a {noun} to its end, by result"),
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

/// The counters and histograms the controller's status patches feed.
pub struct Metrics {
    registry: Registry,
    backups: Direction,
    restores: Direction,
    maintenance_runs: Family<MaintenanceLabels, Counter>,
    maintenance_duration: Family<MaintenanceLabels, Histogram, fn() -> Histogram>,
    maintenance_reclaimed: Family<RepositoryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty counters, registered under the `cairn_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let backups = Direction::new();
        let restores = Direction::new();
        backups.register(&mut registry, "backup");
        restores.register(&mut registry, "restore");
        let maintenance_runs = Family::<MaintenanceLabels, Counter>::default();
        let maintenance_duration: Family<MaintenanceLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "maintenance_runs",
            "Maintenance runs that finished, by kind and result",
            maintenance_runs.clone(),
        );
        registry.register_with_unit(
            "maintenance_duration",
            "Time a maintenance run took, by kind and result",
            Unit::Seconds,
            maintenance_duration.clone(),
        );
        let maintenance_reclaimed = Family::<RepositoryLabels, Counter>::default();
        registry.register_with_unit(
            "maintenance_reclaimed",
            "Bytes of packs deleted by maintenance runs, by kind",
            Unit::Bytes,
            maintenance_reclaimed.clone(),
        );
        Metrics {
            registry,
            backups,
            restores,
            maintenance_runs,
            maintenance_duration,
            maintenance_reclaimed,
        }
    }

    /// Counts what the status patch from `old` to `new` of `object` (a resource of `kind`,
    /// as JSON) did. Called once per successful patch, so each transition counts once.
    pub fn record(&self, kind: &str, object: &Value, old: &Value, new: &Value) {
        match kind {
            "VolumeBackup" | "ApplicationBackup" => {
                if let Some(labels) = source_labels(kind, object, new) {
                    record_lifecycle(&self.backups, labels, old, new);
                }
            }
            "VolumeRestore" | "ApplicationRestore" => {
                if let Some(labels) = source_labels(kind, object, new) {
                    record_lifecycle(&self.restores, labels, old, new);
                }
            }
            "BackupRepository" => self.record_maintenance(object, old, new),
            _ => {}
        }
    }

    fn record_maintenance(&self, object: &Value, old: &Value, new: &Value) {
        for (slot, kind) in [("lastQuick", "quick"), ("lastFull", "full")] {
            let (before, after) = (&old["maintenance"][slot], &new["maintenance"][slot]);
            let Some(result) = after["result"].as_str().filter(|r| *r != "Running") else {
                continue;
            };
            let unchanged =
                before["jobName"] == after["jobName"] && before["result"] == after["result"];
            if unchanged {
                continue;
            }
            let labels = MaintenanceLabels {
                namespace: str_at(object, &["metadata", "namespace"]).into(),
                repository: str_at(object, &["metadata", "name"]).into(),
                kind: kind.into(),
                result: result.into(),
            };
            self.maintenance_runs.get_or_create(&labels).inc();
            if let Some(reclaimed) = after["bytesReclaimed"].as_u64() {
                let repository = RepositoryLabels {
                    namespace: labels.namespace.clone(),
                    repository: labels.repository.clone(),
                    kind: labels.kind.clone(),
                };
                self.maintenance_reclaimed
                    .get_or_create(&repository)
                    .inc_by(reclaimed);
            }
            if let Some(seconds) = seconds_between(&after["startTime"], &after["completionTime"]) {
                self.maintenance_duration
                    .get_or_create(&labels)
                    .observe(seconds);
            }
        }
    }

    /// The counters in the Prometheus text format, without the closing `# EOF`.
    pub fn encode(&self, out: &mut String) -> std::fmt::Result {
        text::encode_registry(out, &self.registry)
    }
}

/// The process's metrics, fed by the adapter and served by [`MetricsServer`].
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Seconds from one RFC 3339 timestamp to another, when both parse.
pub(crate) fn seconds_between(from: &Value, to: &Value) -> Option<f64> {
    let parse = |v: &Value| v.as_str()?.parse::<jiff::Timestamp>().ok();
    let (from, to) = (parse(from)?, parse(to)?);
    Some(to.duration_since(from).as_secs_f64().max(0.0))
}

/// The labels of a backup or restore; None for the children of an ApplicationBackup or
/// ApplicationRestore, which their parent stands for.
pub fn source_labels(kind: &str, object: &Value, status: &Value) -> Option<SourceLabels> {
    let labels = &object["metadata"]["labels"];
    if labels.get(LABEL_APP_BACKUP).is_some() || labels.get(LABEL_APP_RESTORE).is_some() {
        return None;
    }
    let namespace = str_at(object, &["metadata", "namespace"]).to_string();
    let name = str_at(object, &["metadata", "name"]);
    let schedule = str_at(labels, &[crate::controller::LABEL_SCHEDULE]).to_string();
    let spec = &object["spec"];
    let repository_in = |name: &str, ns: &str| match (name, ns) {
        ("", _) => String::new(),
        (name, "") => format!("{namespace}/{name}"),
        (name, ns) => format!("{ns}/{name}"),
    };
    let (source, repository) = match kind {
        "VolumeBackup" => (
            str_at(spec, &["source", "persistentVolumeClaim"]).to_string(),
            repository_in(
                str_at(spec, &["repository"]),
                str_at(spec, &["repositoryNamespace"]),
            ),
        ),
        "ApplicationBackup" => (
            if schedule.is_empty() { name } else { &schedule }.to_string(),
            repository_in(str_at(spec, &["repository"]), ""),
        ),
        "VolumeRestore" => (
            str_at(spec, &["target", "persistentVolumeClaim"]).to_string(),
            repository_in(
                str_at(spec, &["source", "repository"]),
                str_at(spec, &["source", "repositoryNamespace"]),
            ),
        ),
        _ => (
            name.to_string(),
            repository_in(str_at(status, &["repository"]), ""),
        ),
    };
    Some(SourceLabels {
        kind: kind.into(),
        namespace,
        source,
        repository,
        schedule,
    })
}

fn record_lifecycle(m: &Direction, labels: SourceLabels, old: &Value, new: &Value) {
    let from = old.get("phase").and_then(Value::as_str);
    let Some(to) = new.get("phase").and_then(Value::as_str) else {
        return;
    };
    if from == Some(to) {
        return;
    }
    if matches!(from, None | Some("New")) && to != "New" {
        m.started.get_or_create(&labels).inc();
    }
    let terminal = |p: Option<&str>| {
        matches!(
            p,
            Some("Completed" | "PartiallyFailed" | "Failed" | "Canceled")
        )
    };
    if !terminal(Some(to)) || terminal(from) {
        return;
    }
    let result = match to {
        "Completed" => {
            m.succeeded.get_or_create(&labels).inc();
            let read = new["progress"]["bytesDone"].as_u64().unwrap_or(0);
            m.bytes_read.get_or_create(&labels).inc_by(read);
            if let Some(added) = new["bytesAdded"].as_u64() {
                m.bytes_added.get_or_create(&labels).inc_by(added);
            }
            "succeeded"
        }
        "PartiallyFailed" => {
            m.partially_failed.get_or_create(&labels).inc();
            "partially_failed"
        }
        _ => {
            let reason = new["failureReason"].as_str().unwrap_or_default();
            let class = failure_class(to, reason);
            let failure = FailureLabels {
                source: labels.clone(),
                class: class.into(),
            };
            m.failed.get_or_create(&failure).inc();
            if to == "Canceled" {
                "canceled"
            } else {
                "failed"
            }
        }
    };
    if let Some(seconds) = seconds_between(&new["startTime"], &new["completionTime"]) {
        let labels = ResultLabels {
            source: labels,
            result: result.into(),
        };
        m.duration.get_or_create(&labels).observe(seconds);
    }
}

/// The class of a failure, from the phase and the failure reason the controller wrote:
/// `canceled` (spec.cancel), `timeout` (a snapshot or a Job pod that never got ready),
/// `snapshot` (the CSI snapshot failed or vanished), `source` (the PVC, rule, repository
/// reference or application the backup reads was missing or refused), and `storage`
/// (the Job failed reading or writing the repository: everything else).
pub fn failure_class(phase: &str, reason: &str) -> &'static str {
    let has = |s: &str| reason.contains(s);
    if phase == "Canceled" {
        "canceled"
    } else if has("not ready to use after")
        || has("timed out")
        || has("did not start")
        || has("DeadlineExceeded")
    {
        "timeout"
    } else if has("VolumeSnapshot") {
        "snapshot"
    } else if has("PersistentVolumeClaim")
        || has("rule failed")
        || has("BackupRule")
        || has("not allowed")
        || has("BackupRepository")
        || has("not found")
        || has("no VolumeSnapshotClass")
    {
        "source"
    } else {
        "storage"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vb(labels: Value) -> Value {
        json!({"metadata": {"name": "nightly-1", "namespace": "shop", "labels": labels},
               "spec": {"source": {"persistentVolumeClaim": "data"}, "repository": "main"}})
    }

    fn scrape(m: &Metrics) -> String {
        let mut out = String::new();
        m.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn each_transition_counts_once_with_bounded_labels() {
        let m = Metrics::new();
        let object = vb(json!({"cairn.io/schedule": "nightly"}));
        let new = json!({"phase": "New"});
        let uploading = json!({"phase": "Uploading", "startTime": "2026-01-01T00:00:00Z"});
        let done = json!({"phase": "Completed", "startTime": "2026-01-01T00:00:00Z",
                          "completionTime": "2026-01-01T00:00:30Z", "progress": {"bytesDone": 1000},
                          "bytesAdded": 400});
        m.record("VolumeBackup", &object, &json!({}), &new);
        m.record("VolumeBackup", &object, &new, &uploading);
        m.record("VolumeBackup", &object, &uploading, &uploading);
        m.record("VolumeBackup", &object, &uploading, &done);
        m.record("VolumeBackup", &object, &done, &done);
        let text = scrape(&m);
        let labels = r#"kind="VolumeBackup",namespace="shop",source="data",repository="shop/main",schedule="nightly""#;
        assert!(
            text.contains(&format!("cairn_backup_started_total{{{labels}}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("cairn_backup_succeeded_total{{{labels}}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("cairn_backup_read_bytes_total{{{labels}}} 1000\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("cairn_backup_added_bytes_total{{{labels}}} 400\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "cairn_backup_duration_seconds_sum{{{labels},result=\"succeeded\"}} 30.0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cairn_backup_duration_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("nightly-1"), "no label names a run: {text}");
    }

    #[test]
    fn failures_count_by_class_and_children_of_applications_not_at_all() {
        let m = Metrics::new();
        let object = vb(json!({}));
        let snapshot = json!({"phase": "Failed", "failureReason": "VolumeSnapshot \"x\" failed: disk on fire"});
        m.record(
            "VolumeBackup",
            &object,
            &json!({"phase": "SnapshotInProgress"}),
            &snapshot,
        );
        m.record(
            "VolumeBackup",
            &object,
            &json!({"phase": "Uploading"}),
            &json!({"phase": "Canceled"}),
        );
        let text = scrape(&m);
        let labels = r#"kind="VolumeBackup",namespace="shop",source="data",repository="shop/main",schedule="""#;
        assert!(
            text.contains(&format!(
                "cairn_backup_failed_total{{{labels},class=\"snapshot\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "cairn_backup_failed_total{{{labels},class=\"canceled\"}} 1\n"
            )),
            "{text}"
        );
        assert!(!text.contains("cairn_backup_started_total{"), "{text}");
    }

    #[test]
    fn children_of_an_application_backup_are_counted_through_their_parent() {
        let child = vb(json!({LABEL_APP_BACKUP: "shop.app"}));
        assert_eq!(source_labels("VolumeBackup", &child, &json!({})), None);
        let app = json!({"metadata": {"name": "app-20260101", "namespace": "shop",
                                      "labels": {"cairn.io/schedule": "app"}},
                         "spec": {"repository": "main"}});
        let labels = source_labels("ApplicationBackup", &app, &json!({})).unwrap();
        assert_eq!(
            (labels.source.as_str(), labels.schedule.as_str()),
            ("app", "app")
        );
    }

    #[test]
    fn failure_classes_follow_the_controllers_reasons() {
        let cases = [
            ("Canceled", "", "canceled"),
            (
                "Failed",
                "VolumeSnapshot \"s\" not ready to use after 2s: check the CSI snapshotter",
                "timeout",
            ),
            (
                "Failed",
                "VolumeSnapshot \"s\" failed: disk on fire",
                "snapshot",
            ),
            (
                "Failed",
                "VolumeSnapshot \"s\" disappeared before it was ready",
                "snapshot",
            ),
            (
                "Failed",
                "PersistentVolumeClaim \"data\" not found in namespace \"shop\"",
                "source",
            ),
            ("Failed", "pre rule failed: exit 1", "source"),
            (
                "Failed",
                "opening the repository: wrong password (after 3 attempts)",
                "storage",
            ),
        ];
        for (phase, reason, class) in cases {
            assert_eq!(failure_class(phase, reason), class, "{reason}");
        }
    }

    #[test]
    fn maintenance_results_count_once() {
        let m = Metrics::new();
        let repo = json!({"metadata": {"name": "main", "namespace": "shop"}});
        let running = json!({"maintenance": {"lastFull": {"jobName": "m-1", "result": "Running",
                             "startTime": "2026-01-01T00:00:00Z"}}});
        let failed = json!({"maintenance": {"lastFull": {"jobName": "m-1", "result": "Failed",
                            "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z"}}});
        m.record("BackupRepository", &repo, &json!({}), &running);
        m.record("BackupRepository", &repo, &running, &failed);
        m.record("BackupRepository", &repo, &failed, &failed);
        let text = scrape(&m);
        assert!(text.contains(
            "cairn_maintenance_runs_total{namespace=\"shop\",repository=\"main\",kind=\"full\",result=\"Failed\"} 1\n"
        ), "{text}");
        assert!(text.contains("cairn_maintenance_duration_seconds_sum{namespace=\"shop\",repository=\"main\",kind=\"full\",result=\"Failed\"} 60.0\n"), "{text}");
        assert!(
            !text.contains("cairn_maintenance_reclaimed_bytes_total{"),
            "{text}"
        );

        // A succeeded run's reclaimed bytes count once, on the patch that ends it.
        let running = json!({"maintenance": {"lastFull": {"jobName": "m-2", "result": "Running"}}});
        let succeeded = json!({"maintenance": {"lastFull": {"jobName": "m-2", "result": "Succeeded",
                               "bytesReclaimed": 300, "repositoryBytes": 5000}}});
        m.record("BackupRepository", &repo, &failed, &running);
        m.record("BackupRepository", &repo, &running, &succeeded);
        m.record("BackupRepository", &repo, &succeeded, &succeeded);
        let text = scrape(&m);
        assert!(text.contains(
            "cairn_maintenance_reclaimed_bytes_total{namespace=\"shop\",repository=\"main\",kind=\"full\"} 300\n"
        ), "{text}");
    }
}
