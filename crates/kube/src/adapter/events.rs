//! Kubernetes Events for what a status patch changed: each phase change and failure of a
//! cairn resource, each retry, each maintenance run's start and result, and each run of a
//! BackupSchedule, so `kubectl describe` tells the story.
//!
//! Which Events a patch makes is a pure function of the status before and after it
//! ([`status_events`]); recording them is best effort: a refused Event is logged, never an
//! error of the reconcile.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Resource};
use serde_json::Value;

/// The component named in every Event the controller records.
pub const REPORTING_COMPONENT: &str = "cairn-controller";

/// One Event to record about a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// `Warning` for failures, cancellations and retries; `Normal` otherwise.
    pub warning: bool,
    /// CamelCase reason: the new phase, or what happened (`Retrying`, `MaintenanceFailed`).
    pub reason: String,
    /// The failure reason, or a one-line summary.
    pub message: String,
}

impl EventSpec {
    fn new(warning: bool, reason: &str, message: impl Into<String>) -> Self {
        EventSpec {
            warning,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

/// The Events a status patch from `old` to `new` makes on a resource of `kind`.
pub fn status_events(kind: &str, old: &Value, new: &Value) -> Vec<EventSpec> {
    let mut events = Vec::new();
    phase_event(old, new, &mut events);
    let retry = condition(new, "Retrying").and_then(|c| c["message"].as_str());
    if let Some(message) = retry
        .filter(|m| condition(old, "Retrying").map(|c| &c["message"]) != Some(&Value::from(*m)))
    {
        events.push(EventSpec::new(true, "Retrying", message));
    }
    match kind {
        "BackupRepository" => maintenance_events(old, new, &mut events),
        "BackupSchedule" => schedule_events(old, new, &mut events),
        _ => {}
    }
    events
}

fn phase_event(old: &Value, new: &Value, events: &mut Vec<EventSpec>) {
    let Some(to) = str_at(new, &["phase"]) else {
        return;
    };
    let from = str_at(old, &["phase"]);
    if from == Some(to) || (from.is_none() && to == "New") {
        return;
    }
    let warning = matches!(to, "Failed" | "PartiallyFailed" | "Canceled");
    let message = match (str_at(new, &["failureReason"]), to) {
        (Some(reason), _) if !reason.is_empty() => reason.to_string(),
        (_, "Completed") => match str_at(new, &["snapshotId"]) {
            Some(id) => format!(
                "completed: snapshot {id}, {} bytes read",
                u64_at(new, &["progress", "bytesDone"])
            ),
            None => "completed".into(),
        },
        (_, "Canceled") => "canceled by spec.cancel".into(),
        _ => format!("phase {} -> {to}", from.unwrap_or("New")),
    };
    events.push(EventSpec::new(warning, to, message));
}

fn maintenance_events(old: &Value, new: &Value, events: &mut Vec<EventSpec>) {
    for slot in ["lastQuick", "lastFull"] {
        let kind = if slot == "lastQuick" { "quick" } else { "full" };
        let (before, after) = (&old["maintenance"][slot], &new["maintenance"][slot]);
        let Some(result) = after["result"].as_str() else {
            continue;
        };
        if before["jobName"] == after["jobName"] && before["result"] == after["result"] {
            continue;
        }
        let job = after["jobName"].as_str().unwrap_or_default();
        let message = after["message"].as_str().unwrap_or_default();
        events.push(match result {
            "Running" => EventSpec::new(
                false,
                "MaintenanceStarted",
                format!("{kind} maintenance started (Job {job})"),
            ),
            "Succeeded" => EventSpec::new(
                false,
                "MaintenanceSucceeded",
                format!("{kind} maintenance succeeded: {message}"),
            ),
            _ => EventSpec::new(
                true,
                "MaintenanceFailed",
                format!("{kind} maintenance {result}: {message}"),
            ),
        });
        let damage = after["damageRecords"].as_u64().unwrap_or(0);
        if result == "Succeeded" && damage > 0 {
            events.push(EventSpec::new(
                true,
                "DamageFound",
                format!("{damage} damage records name packs still indexed after {kind} maintenance: run `cairn check` on the repository, then `cairn repair`"),
            ));
        }
    }
}

fn schedule_events(old: &Value, new: &Value, events: &mut Vec<EventSpec>) {
    let grew = |field: &str| u64_at(new, &[field]) > u64_at(old, &[field]);
    if grew("runs") {
        let run = str_at(new, &["active"]).unwrap_or("(unknown)");
        events.push(EventSpec::new(
            false,
            "RunCreated",
            format!("created run {run}"),
        ));
    }
    if grew("succeeded") {
        let run = str_at(new, &["lastSuccessfulBackup"]).unwrap_or("(unknown)");
        events.push(EventSpec::new(
            false,
            "RunSucceeded",
            format!("run {run} completed"),
        ));
    }
    if grew("failed") {
        events.push(EventSpec::new(
            true,
            "RunFailed",
            format!(
                "a run failed or partially failed ({} failed so far)",
                u64_at(new, &["failed"])
            ),
        ));
    }
    if grew("skipped") {
        events.push(EventSpec::new(
            true,
            "RunSkipped",
            "a run was skipped: the previous one was still going",
        ));
    }
}

/// The core/v1 Event recording `spec` about `object` (as the API server returned it) in
/// `namespace` (the object's), named `<resource>.<hex of now in nanoseconds>` like the
/// Events of Kubernetes' own controllers.
pub fn event_object<K: Resource<DynamicType = ()>>(
    object: &K,
    namespace: &str,
    spec: &EventSpec,
    now: jiff::Timestamp,
) -> Event {
    let meta = object.meta();
    let name = meta.name.clone().unwrap_or_default();
    let nanos = u128::try_from(now.as_nanosecond()).unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{nanos:x}")),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(name),
            namespace: Some(namespace.into()),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some(spec.reason.clone()),
        message: Some(spec.message.clone()),
        type_: Some(if spec.warning { "Warning" } else { "Normal" }.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(spec.reason.clone()),
        reporting_component: Some(REPORTING_COMPONENT.into()),
        reporting_instance: Some(
            std::env::var("POD_NAME").unwrap_or_else(|_| REPORTING_COMPONENT.into()),
        ),
        source: Some(EventSource {
            component: Some(REPORTING_COMPONENT.into()),
            host: None,
        }),
        ..Event::default()
    }
}

/// Records the Events of a status patch from `old` to `new` on `object`, in namespace
/// `ns`; failures are logged only.
pub(crate) async fn record<K: Resource<DynamicType = ()>>(
    client: kube::Client,
    object: &K,
    ns: &str,
    old: &Value,
    new: &Value,
) {
    let specs = status_events(&K::kind(&()), old, new);
    if specs.is_empty() {
        return;
    }
    let api: Api<Event> = Api::namespaced(client, ns);
    for spec in &specs {
        let event = event_object(object, ns, spec, jiff::Timestamp::now());
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(
                reason = %spec.reason,
                error = %super::describe(&e),
                "could not record an Event (check the controller's RBAC for events)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reasons(events: &[EventSpec]) -> Vec<(&str, bool)> {
        events
            .iter()
            .map(|e| (e.reason.as_str(), e.warning))
            .collect()
    }

    #[test]
    fn phase_changes_make_one_event_and_failures_are_warnings() {
        let none = json!({});
        assert_eq!(
            status_events("VolumeBackup", &none, &json!({"phase": "New"})),
            []
        );
        let e = status_events(
            "VolumeBackup",
            &json!({"phase": "New"}),
            &json!({"phase": "SnapshotInProgress"}),
        );
        assert_eq!(reasons(&e), [("SnapshotInProgress", false)]);
        assert_eq!(e[0].message, "phase New -> SnapshotInProgress");
        let e = status_events(
            "VolumeBackup",
            &json!({"phase": "Uploading"}),
            &json!({"phase": "Completed", "snapshotId": "ab12", "progress": {"bytesDone": 7}}),
        );
        assert_eq!(reasons(&e), [("Completed", false)]);
        assert_eq!(e[0].message, "completed: snapshot ab12, 7 bytes read");
        let e = status_events(
            "ApplicationBackup",
            &json!({"phase": "Uploading"}),
            &json!({"phase": "PartiallyFailed", "failureReason": "1 of 2 volumes failed"}),
        );
        assert_eq!(reasons(&e), [("PartiallyFailed", true)]);
        assert_eq!(e[0].message, "1 of 2 volumes failed");
        let same = json!({"phase": "Uploading", "progress": {"bytesDone": 1}});
        assert_eq!(
            status_events("VolumeBackup", &same, &json!({"phase": "Uploading"})),
            []
        );
        let e = status_events(
            "VolumeRestore",
            &json!({"phase": "Running"}),
            &json!({"phase": "Canceled"}),
        );
        assert_eq!(reasons(&e), [("Canceled", true)]);
    }

    #[test]
    fn a_new_retry_message_is_a_warning_once() {
        let retrying = |m: &str| {
            json!({"phase": "Uploading", "conditions": [
                {"type": "Retrying", "status": "True", "reason": "JobFailed", "message": m}]})
        };
        let e = status_events(
            "VolumeBackup",
            &json!({"phase": "Uploading"}),
            &retrying("attempt 1 of 3 failed"),
        );
        assert_eq!(reasons(&e), [("Retrying", true)]);
        assert_eq!(e[0].message, "attempt 1 of 3 failed");
        let again = retrying("attempt 1 of 3 failed");
        assert_eq!(status_events("VolumeBackup", &again, &again), []);
        let e = status_events("VolumeBackup", &again, &retrying("attempt 2 of 3 failed"));
        assert_eq!(reasons(&e), [("Retrying", true)]);
    }

    #[test]
    fn maintenance_runs_and_schedule_runs_make_events() {
        let run = |job: &str, result: &str| json!({"maintenance": {"lastQuick": {"jobName": job, "result": result, "message": "3 packs removed"}}});
        let e = status_events("BackupRepository", &json!({}), &run("m-1", "Running"));
        assert_eq!(reasons(&e), [("MaintenanceStarted", false)]);
        let e = status_events(
            "BackupRepository",
            &run("m-1", "Running"),
            &run("m-1", "Succeeded"),
        );
        assert_eq!(reasons(&e), [("MaintenanceSucceeded", false)]);
        assert_eq!(e[0].message, "quick maintenance succeeded: 3 packs removed");
        let e = status_events(
            "BackupRepository",
            &run("m-1", "Running"),
            &run("m-1", "Failed"),
        );
        assert_eq!(reasons(&e), [("MaintenanceFailed", true)]);
        let mut damaged = run("m-2", "Succeeded");
        damaged["maintenance"]["lastQuick"]["damageRecords"] = json!(2);
        let e = status_events("BackupRepository", &run("m-2", "Running"), &damaged);
        assert_eq!(
            reasons(&e),
            [("MaintenanceSucceeded", false), ("DamageFound", true)]
        );
        assert_eq!(
            status_events(
                "BackupRepository",
                &run("m-1", "Failed"),
                &run("m-1", "Failed")
            ),
            []
        );

        let old = json!({"runs": 1, "succeeded": 0, "failed": 0, "skipped": 0});
        let new = json!({"runs": 2, "succeeded": 1, "failed": 0, "skipped": 1, "active": "s-2", "lastSuccessfulBackup": "s-1"});
        let e = status_events("BackupSchedule", &old, &new);
        assert_eq!(
            reasons(&e),
            [
                ("RunCreated", false),
                ("RunSucceeded", false),
                ("RunSkipped", true)
            ]
        );
        assert_eq!(e[0].message, "created run s-2");
        let e = status_events("BackupSchedule", &old, &json!({"runs": 1, "failed": 1}));
        assert_eq!(reasons(&e), [("RunFailed", true)]);
    }
}
