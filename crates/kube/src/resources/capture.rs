//! What capture keeps and how it cleans it: types and objects that must not be restored are
//! skipped, and fields the API server sets are stripped so the manifest can be created
//! again in any cluster.

use super::ResourceType;
use crate::controller::{LABEL_JOB_KIND, LABEL_OWNER};
use serde_json::{Map, Value};

/// Annotation on a captured PVC: the repository snapshot holding its data.
pub const ANNOTATION_SNAPSHOT_ID: &str = "cairn.io/snapshot-id";
/// Annotation on a captured PVC: the VolumeSnapshot cut for it, when one was.
pub const ANNOTATION_VOLUME_SNAPSHOT: &str = "cairn.io/volume-snapshot";
/// kubectl's copy of the last applied manifest: stale after a restore, and large.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why every object of `t` is skipped, or None when its objects may be captured. Types
/// skipped here are not even listed.
pub fn skip_type(t: &ResourceType) -> Option<&'static str> {
    match (t.group.as_str(), t.kind.as_str()) {
        ("" | "events.k8s.io", "Event") => Some("events describe the past cluster"),
        ("", "Endpoints") | ("discovery.k8s.io", "EndpointSlice") => {
            Some("endpoints are derived from Services and pods")
        }
        ("coordination.k8s.io", "Lease") => Some("leases are held by running processes"),
        ("apps", "ControllerRevision") => Some("controller revisions are history of workloads"),
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => Some(
            "VolumeSnapshots belong to this cluster's storage; volume data is in the repository",
        ),
        ("metrics.k8s.io", _) => Some("metrics are not configuration"),
        ("cairn.io", kind) if kind != "BackupRule" => {
            Some("cairn's own backup and restore objects are not part of the application")
        }
        _ => None,
    }
}

/// Why `object` (of type `t`) is skipped, or None when it is captured.
pub fn skip_object(t: &ResourceType, object: &Value) -> Option<String> {
    if let Some(why) = skip_type(t) {
        return Some(why.into());
    }
    let labels = &object["metadata"]["labels"];
    if labels.get(LABEL_OWNER).is_some() || labels.get(LABEL_JOB_KIND).is_some() {
        return Some("created by cairn (Jobs, backupPVCs, snapshots)".into());
    }
    let controller = object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["controller"].as_bool() == Some(true));
    match (t.group.as_str(), t.kind.as_str(), controller) {
        ("", "Pod", Some(owner)) | ("apps", "ReplicaSet", Some(owner)) => {
            return Some(format!(
                "re-created by its controller {}/{}",
                owner["kind"].as_str().unwrap_or_default(),
                owner["name"].as_str().unwrap_or_default()
            ));
        }
        ("batch", "Job", Some(owner)) if owner["kind"] == "CronJob" => {
            return Some(format!(
                "run by CronJob {}",
                owner["name"].as_str().unwrap_or_default()
            ));
        }
        _ => {}
    }
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "ConfigMap") if super::name_of(object) == "kube-root-ca.crt" => {
            Some("published in every namespace by the cluster".into())
        }
        ("", "Secret") if object["type"] == "kubernetes.io/service-account-token" => {
            Some("service account tokens are issued by the cluster".into())
        }
        _ => None,
    }
}

/// The object as it is written into the snapshot: server-set fields removed.
///
/// - `status`; `metadata.uid`, `resourceVersion`, `generation`, `creationTimestamp`,
///   `managedFields`, `selfLink`, `deletionTimestamp`, `deletionGracePeriodSeconds`.
/// - `metadata.ownerReferences`, all of them: they name owners by uid, and a restored
///   owner gets a new uid, so a kept reference would point at nothing and the garbage
///   collector would delete the restored object. Objects whose owner re-creates them
///   (controlled Pods and ReplicaSets, a CronJob's Jobs) are skipped instead.
/// - the `kubectl.kubernetes.io/last-applied-configuration` annotation.
/// - Service: `clusterIP` / `clusterIPs` (unless headless, `None`), `healthCheckNodePort`
///   and each port's `nodePort`: allocated by the target cluster.
/// - PVC: `spec.volumeName` and the `pv.kubernetes.io/*`, `volume.kubernetes.io/*` and
///   `volume.beta.kubernetes.io/*` annotations: the binding belongs to the source cluster.
/// - ServiceAccount: `secrets` entries naming the auto-generated `<name>-token-*` Secrets.
/// - `creationTimestamp: null` in pod, job and claim templates, and claim templates' status.
/// - Pod: `spec.nodeName`. Job: the generated `spec.selector` and the
///   `controller-uid` / `job-name` labels of its template.
pub fn strip(t: &ResourceType, object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
        ] {
            meta.remove(key);
        }
        let is_pvc = t.group.is_empty() && t.kind == "PersistentVolumeClaim";
        retain_annotations(meta, |k| {
            k != LAST_APPLIED
                && !(is_pvc
                    && (k.starts_with("pv.kubernetes.io/")
                        || k.starts_with("volume.kubernetes.io/")
                        || k.starts_with("volume.beta.kubernetes.io/")))
        });
    }
    // Templates come back with `creationTimestamp: null` (and claim templates with a
    // status): noise that would differ from what the user wrote.
    remove_path(
        &mut o,
        &["spec", "template", "metadata", "creationTimestamp"],
    );
    remove_path(
        &mut o,
        &["spec", "jobTemplate", "metadata", "creationTimestamp"],
    );
    if let Some(templates) = o
        .pointer_mut("/spec/volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for tpl in templates {
            remove_path(tpl, &["metadata", "creationTimestamp"]);
            remove_path(tpl, &["status"]);
        }
    }
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "Service") => strip_service(&mut o),
        ("", "PersistentVolumeClaim") => {
            remove_path(&mut o, &["spec", "volumeName"]);
        }
        ("", "ServiceAccount") => {
            let prefix = format!("{}-token-", super::name_of(object));
            if let Some(secrets) = o.get_mut("secrets").and_then(Value::as_array_mut) {
                secrets.retain(|s| !s["name"].as_str().is_some_and(|n| n.starts_with(&prefix)));
                if secrets.is_empty() {
                    remove_path(&mut o, &["secrets"]);
                }
            }
        }
        ("", "Pod") => {
            remove_path(&mut o, &["spec", "nodeName"]);
        }
        ("batch", "Job") => strip_job(&mut o),
        _ => {}
    }
    o
}

fn strip_service(o: &mut Value) {
    let headless = o["spec"]["clusterIP"] == "None";
    if !headless {
        remove_path(o, &["spec", "clusterIP"]);
        remove_path(o, &["spec", "clusterIPs"]);
    }
    remove_path(o, &["spec", "healthCheckNodePort"]);
    if let Some(ports) = o
        .get_mut("spec")
        .and_then(|s| s.get_mut("ports"))
        .and_then(Value::as_array_mut)
    {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
}

const JOB_GENERATED_LABELS: [&str; 4] = [
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

fn strip_job(o: &mut Value) {
    let generated_selector = o["spec"]["selector"]["matchLabels"]
        .as_object()
        .is_some_and(|m| m.keys().any(|k| k.ends_with("controller-uid")));
    if generated_selector && o["spec"]["manualSelector"] != true {
        remove_path(o, &["spec", "selector"]);
    }
    if let Some(labels) = o
        .pointer_mut("/spec/template/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        for key in JOB_GENERATED_LABELS {
            labels.remove(key);
        }
    }
}

fn retain_annotations(meta: &mut Map<String, Value>, keep: impl Fn(&str) -> bool) {
    if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        annotations.retain(|k, _| keep(k));
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
}

/// Removes the field at `path`, if present.
pub(crate) fn remove_path(o: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = o;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(map) = cur.as_object_mut() {
        map.remove(*last);
    }
}

/// Records on a captured PVC where its data is, so a restore needs nothing but the
/// resource snapshot: the repository snapshot id and, when one was cut, the VolumeSnapshot.
pub fn annotate_pvc(pvc: &mut Value, snapshot_id: &str, volume_snapshot: Option<&str>) {
    let Some(meta) = pvc.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(ANNOTATION_SNAPSHOT_ID.into(), snapshot_id.into());
        if let Some(vs) = volume_snapshot {
            a.insert(ANNOTATION_VOLUME_SNAPSHOT.into(), vs.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(group: &str, kind: &str) -> ResourceType {
        ResourceType::new(
            group,
            "v1",
            kind,
            &format!("{}s", kind.to_lowercase()),
            true,
        )
    }

    #[test]
    fn skip_rules() {
        let owned = json!({"metadata": {"name": "x", "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": true}]}});
        let bare = json!({"metadata": {"name": "x"}});
        let cases = [
            (t("", "Event"), bare.clone(), true),
            (t("events.k8s.io", "Event"), bare.clone(), true),
            (t("", "Pod"), owned.clone(), true),
            (t("", "Pod"), bare.clone(), false),
            (t("apps", "ReplicaSet"), owned.clone(), true),
            (t("apps", "ReplicaSet"), bare.clone(), false),
            (t("apps", "Deployment"), owned.clone(), false),
            (
                t("batch", "Job"),
                json!({"metadata": {"name": "j", "ownerReferences": [{"kind": "CronJob", "name": "c", "controller": true}]}}),
                true,
            ),
            (
                t("", "ConfigMap"),
                json!({"metadata": {"name": "kube-root-ca.crt"}}),
                true,
            ),
            (
                t("", "ConfigMap"),
                json!({"metadata": {"name": "app", "labels": {"cairn.io/owner": "b"}}}),
                true,
            ),
            (
                t("", "Secret"),
                json!({"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"}),
                true,
            ),
            (
                t("", "Secret"),
                json!({"metadata": {"name": "t"}, "type": "Opaque"}),
                false,
            ),
            (t("cairn.io", "VolumeBackup"), bare.clone(), true),
            (t("cairn.io", "BackupRule"), bare.clone(), false),
            (t("", "Endpoints"), bare.clone(), true),
            (t("coordination.k8s.io", "Lease"), bare.clone(), true),
        ];
        for (ty, obj, skipped) in cases {
            assert_eq!(skip_object(&ty, &obj).is_some(), skipped, "{ty:?} {obj}");
        }
    }

    #[test]
    fn headless_services_keep_cluster_ip_none() {
        let svc = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        let out = strip(&t("", "Service"), &svc);
        assert_eq!(out["spec"]["clusterIP"], "None");
        let svc = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "10.0.0.3", "clusterIPs": ["10.0.0.3"]}});
        let out = strip(&t("", "Service"), &svc);
        assert_eq!(out["spec"], json!({}));
    }
}
