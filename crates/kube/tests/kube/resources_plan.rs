//! The pure halves of application resources as tables: the podSelector closure, restore
//! ordering, namespace and storage-class rewriting, the status patch of a restore stage.

use cairn_kube::crd::{ApplicationRestoreStatus, ResourceOutcome, RestoreVolume};
use cairn_kube::job::{replacement, status_patch, StageCounts, MAX_FAILURES};
use cairn_kube::resources::closure::{pod_closure, ObjectKey};
use cairn_kube::resources::layout::CapturedObject;
use cairn_kube::resources::plan::{plan, Rank, RestoreOptions, Stage};
use cairn_kube::resources::{KindFilter, ResourceType};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn t(group: &str, kind: &str, plural: &str) -> ResourceType {
    ResourceType::new(group, "v1", kind, plural, kind != "Namespace")
}

fn types() -> Vec<ResourceType> {
    vec![
        t("", "Namespace", "namespaces"),
        t("", "Pod", "pods"),
        t("", "ConfigMap", "configmaps"),
        t("", "Secret", "secrets"),
        t("", "ServiceAccount", "serviceaccounts"),
        t("", "Service", "services"),
        t("", "PersistentVolumeClaim", "persistentvolumeclaims"),
        t("apps", "Deployment", "deployments"),
        t("apps", "ReplicaSet", "replicasets"),
        t("apps", "StatefulSet", "statefulsets"),
        t("batch", "Job", "jobs"),
        t("batch", "CronJob", "cronjobs"),
        t("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
        t("example.com", "Widget", "widgets"),
    ]
}

fn obj(api_version: &str, kind: &str, name: &str, rest: Value) -> Value {
    let mut o = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "shop"}});
    if let (Some(o), Some(rest)) = (o.as_object_mut(), rest.as_object()) {
        for (k, v) in rest {
            if k == "metadata" {
                for (mk, mv) in v.as_object().unwrap() {
                    o["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .insert(mk.clone(), mv.clone());
                }
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    o
}

fn typed(objects: Vec<Value>) -> Vec<(ResourceType, Value)> {
    let all = types();
    objects
        .into_iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap();
            (all.iter().find(|t| t.kind == kind).unwrap().clone(), o)
        })
        .collect()
}

fn owner(api_version: &str, kind: &str, name: &str) -> Value {
    json!({"metadata": {"ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": name, "uid": "u", "controller": true}]}})
}

/// Namespace `shop`: web (Deployment -> ReplicaSet -> Pod), report (CronJob -> Job -> Pod),
/// and objects nobody selected.
fn namespace() -> Vec<(ResourceType, Value)> {
    let mut web_pod = owner("apps/v1", "ReplicaSet", "web-1");
    web_pod["metadata"]["labels"] = json!({"app": "web"});
    web_pod["spec"] = json!({
        "serviceAccountName": "web",
        "imagePullSecrets": [{"name": "pull"}],
        "volumes": [
            {"name": "a", "configMap": {"name": "web-files"}},
            {"name": "b", "secret": {"secretName": "tls"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "uploads"}},
            {"name": "d", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-secret"}}]}}
        ],
        "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
        "containers": [{"name": "web",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "x"}}}],
            "envFrom": [{"configMapRef": {"name": "envfrom-cm"}}]}]
    });
    let mut report_pod = owner("batch/v1", "Job", "report-29");
    report_pod["metadata"]["labels"] = json!({"app": "report"});
    report_pod["spec"] = json!({"containers": [{"name": "r"}]});
    typed(vec![
        obj("v1", "Pod", "web-1-abc", web_pod),
        obj(
            "apps/v1",
            "ReplicaSet",
            "web-1",
            owner("apps/v1", "Deployment", "web"),
        ),
        obj("apps/v1", "Deployment", "web", json!({})),
        obj("v1", "Pod", "report-29-x", report_pod),
        obj(
            "batch/v1",
            "Job",
            "report-29",
            owner("batch/v1", "CronJob", "report"),
        ),
        obj("batch/v1", "CronJob", "report", json!({})),
        obj(
            "v1",
            "Service",
            "web",
            json!({"spec": {"selector": {"app": "web"}}}),
        ),
        obj(
            "v1",
            "Service",
            "external",
            json!({"spec": {"type": "ExternalName", "externalName": "x.example"}}),
        ),
        obj(
            "v1",
            "Service",
            "report",
            json!({"spec": {"selector": {"app": "report", "tier": "batch"}}}),
        ),
        obj("v1", "ConfigMap", "web-files", json!({})),
        obj("v1", "ConfigMap", "unrelated", json!({})),
        obj("v1", "Secret", "tls", json!({})),
        obj("v1", "ServiceAccount", "web", json!({})),
        obj("v1", "ServiceAccount", "default", json!({})),
        obj("v1", "PersistentVolumeClaim", "uploads", json!({})),
        obj("v1", "PersistentVolumeClaim", "other", json!({})),
    ])
}

fn keys(list: &[(&str, &str, &str)]) -> BTreeSet<ObjectKey> {
    list.iter()
        .map(|(g, k, n)| ObjectKey::new(g, k, n))
        .collect()
}

#[test]
fn pod_selector_reaches_owners_references_and_services() {
    let web = [
        ("", "Pod", "web-1-abc"),
        ("apps", "ReplicaSet", "web-1"),
        ("apps", "Deployment", "web"),
        ("", "ServiceAccount", "web"),
        ("", "Secret", "pull"),
        ("", "ConfigMap", "web-files"),
        ("", "Secret", "tls"),
        ("", "PersistentVolumeClaim", "uploads"),
        ("", "ConfigMap", "proj-cm"),
        ("", "Secret", "proj-secret"),
        ("", "Secret", "init-env"),
        ("", "ConfigMap", "env-cm"),
        ("", "ConfigMap", "envfrom-cm"),
        ("", "Service", "web"),
    ];
    let report = [
        ("", "Pod", "report-29-x"),
        ("batch", "Job", "report-29"),
        ("batch", "CronJob", "report"),
        ("", "ServiceAccount", "default"),
    ];
    let cases: Vec<(Value, BTreeSet<ObjectKey>)> = vec![
        (json!({"matchLabels": {"app": "web"}}), keys(&web)),
        // The `report` Service wants tier=batch too, which the pod lacks.
        (json!({"matchLabels": {"app": "report"}}), keys(&report)),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "report"]}]}),
            keys(&web).union(&keys(&report)).cloned().collect(),
        ),
        (json!({"matchLabels": {"app": "none"}}), BTreeSet::new()),
    ];
    let ns = namespace();
    for (selector, want) in cases {
        let sel: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
        let got = pod_closure(&sel, &ns);
        assert_eq!(got, want, "selector {selector}");
    }
}

fn captured(objects: Vec<Value>) -> Vec<CapturedObject> {
    objects
        .into_iter()
        .map(|object| CapturedObject {
            path: "x".into(),
            object,
        })
        .collect()
}

fn ns_obj(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "team": "a"}}})
}

fn tree() -> Vec<CapturedObject> {
    captured(vec![
        obj("apps/v1", "Deployment", "web", json!({})),
        obj("v1", "Pod", "bare", json!({})),
        obj("batch/v1", "CronJob", "report", json!({})),
        obj(
            "apps/v1",
            "StatefulSet",
            "db",
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "fast"}}]}}),
        ),
        obj("example.com/v1", "Widget", "w", json!({})),
        obj("v1", "Service", "web", json!({})),
        obj(
            "v1",
            "PersistentVolumeClaim",
            "data-db-0",
            json!({
            "metadata": {"annotations": {"cairn.io/snapshot-id": "abc123"}},
            "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                     "resources": {"requests": {"storage": "10Gi"}}}}),
        ),
        obj(
            "v1",
            "PersistentVolumeClaim",
            "scratch",
            json!({"spec": {"storageClassName": "slow", "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        obj(
            "v1",
            "PersistentVolumeClaim",
            "nosize",
            json!({"metadata": {"annotations": {"cairn.io/snapshot-id": "def"}}}),
        ),
        obj(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rb",
            json!({"subjects": [
            {"kind": "ServiceAccount", "name": "web", "namespace": "shop"},
            {"kind": "ServiceAccount", "name": "mon", "namespace": "monitoring"},
            {"kind": "User", "name": "alice"}]}),
        ),
        obj("v1", "Secret", "db", json!({})),
        obj("v1", "ConfigMap", "cfg", json!({})),
        obj("v1", "ServiceAccount", "web", json!({})),
        obj("unknown.io/v1", "Gadget", "g", json!({})),
        ns_obj("shop"),
    ])
}

fn opts(inc: &[&str], exc: &[&str]) -> RestoreOptions {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    RestoreOptions {
        namespace_mapping: [("shop".to_string(), "shop-copy".to_string())].into(),
        storage_class_mapping: [("fast".to_string(), "premium".to_string())].into(),
        filter: KindFilter::new(&v(inc), &v(exc)),
    }
}

#[test]
fn restore_order_is_namespaces_configuration_volumes_others_workloads() {
    let p = plan(&tree(), &types(), &opts(&[], &[]));
    let order: Vec<String> = p
        .objects
        .iter()
        .map(|o| format!("{}/{}", o.resource.kind, o.name))
        .collect();
    assert_eq!(
        order,
        [
            "Namespace/shop-copy",
            "ServiceAccount/web",
            "ConfigMap/cfg",
            "Secret/db",
            "RoleBinding/rb",
            "PersistentVolumeClaim/data-db-0",
            "PersistentVolumeClaim/scratch",
            "Service/web",
            "Widget/w",
            "Deployment/web",
            "StatefulSet/db",
            "CronJob/report",
            "Pod/bare",
        ]
    );
    let ranks: Vec<Rank> = p.objects.iter().map(|o| o.rank).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]));
    let stage = |s: Stage| p.stage(s).map(|o| o.name.clone()).collect::<Vec<_>>();
    assert_eq!(stage(Stage::Configuration).len(), 7);
    assert_eq!(
        stage(Stage::Workloads),
        ["web", "w", "web", "db", "report", "bare"]
    );
    let failures: Vec<(String, String)> = p
        .failures
        .iter()
        .map(|f| (f.kind.clone(), f.name.clone()))
        .collect();
    assert_eq!(
        failures,
        [
            (
                "core/PersistentVolumeClaim".to_string(),
                "nosize".to_string()
            ),
            ("unknown.io/Gadget".to_string(), "g".to_string())
        ]
    );
    assert!(
        p.failures[1].message.contains("not served by this cluster"),
        "{}",
        p.failures[1].message
    );
}

#[test]
fn namespaces_storage_classes_and_subjects_are_rewritten() {
    let p = plan(&tree(), &types(), &opts(&[], &[]));
    let find = |kind: &str, name: &str| {
        p.objects
            .iter()
            .find(|o| o.resource.kind == kind && o.name == name)
            .unwrap()
    };
    let ns = find("Namespace", "shop-copy");
    assert_eq!(ns.object["metadata"]["name"], "shop-copy");
    assert_eq!(
        ns.object["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "shop-copy", "team": "a"})
    );
    for o in p.objects.iter().filter(|o| o.rank != Rank::Namespace) {
        assert_eq!(o.namespace.as_deref(), Some("shop-copy"), "{}", o.name);
        assert_eq!(o.object["metadata"]["namespace"], "shop-copy", "{}", o.name);
    }
    let rb = find("RoleBinding", "rb");
    assert_eq!(
        rb.object["subjects"],
        json!([{"kind": "ServiceAccount", "name": "web", "namespace": "shop-copy"},
               {"kind": "ServiceAccount", "name": "mon", "namespace": "monitoring"},
               {"kind": "User", "name": "alice"}])
    );
    assert_eq!(
        find("StatefulSet", "db").object["spec"]["volumeClaimTemplates"][0]["spec"]
            ["storageClassName"],
        "premium"
    );
    assert_eq!(
        find("PersistentVolumeClaim", "scratch").object["spec"]["storageClassName"],
        "slow"
    );
    assert_eq!(find("PersistentVolumeClaim", "scratch").volume, None);
    assert_eq!(
        find("PersistentVolumeClaim", "data-db-0").volume,
        Some(RestoreVolume {
            namespace: "shop-copy".into(),
            persistent_volume_claim: "data-db-0".into(),
            snapshot_id: "abc123".into(),
            storage_class_name: Some("premium".into()),
            size: "10Gi".into(),
            access_modes: vec!["ReadWriteOnce".into()],
            volume_mode: Some(cairn_kube::crd::VolumeMode::Block),
            ..Default::default()
        })
    );
}

#[test]
fn filters_choose_kinds_and_namespaces_are_created_anyway() {
    let cases: Vec<(&[&str], &[&str], Vec<&str>)> = vec![
        (
            &["secrets", "configmaps"],
            &[],
            vec!["Namespace/shop-copy", "ConfigMap/cfg", "Secret/db"],
        ),
        (
            &["deployments.apps"],
            &["namespaces"],
            vec!["Namespace/shop-copy", "Deployment/web"],
        ),
        (
            &["Widget.example.com"],
            &[],
            vec!["Namespace/shop-copy", "Widget/w"],
        ),
        (
            &[],
            &[
                "persistentvolumeclaims",
                "pods",
                "statefulsets.apps",
                "widgets",
                "cronjobs",
                "services",
                "rolebindings",
            ],
            vec![
                "Namespace/shop-copy",
                "ServiceAccount/web",
                "ConfigMap/cfg",
                "Secret/db",
                "Deployment/web",
            ],
        ),
    ];
    for (inc, exc, want) in cases {
        let p = plan(&tree(), &types(), &opts(inc, exc));
        let got: Vec<String> = p
            .objects
            .iter()
            .map(|o| format!("{}/{}", o.resource.kind, o.name))
            .collect();
        assert_eq!(got, want, "{inc:?} {exc:?}");
    }
    // Without a mapping, names and namespaces are kept.
    let p = plan(&tree(), &types(), &RestoreOptions::default());
    assert!(p
        .objects
        .iter()
        .all(|o| o.name != "shop-copy" && o.namespace.as_deref() != Some("shop-copy")));
}

#[test]
fn stage_status_adds_counts_caps_failures_and_keeps_known_volumes() {
    let failure = |i: usize| ResourceOutcome {
        kind: "core/Secret".into(),
        namespace: Some("shop".into()),
        name: format!("s{i}"),
        outcome: "Failed".into(),
        message: "x".into(),
    };
    let known = RestoreVolume {
        namespace: "shop-copy".into(),
        persistent_volume_claim: "a".into(),
        snapshot_id: "1".into(),
        size: "1Gi".into(),
        volume_restore: Some("vr-a".into()),
        ..Default::default()
    };
    let existing = ApplicationRestoreStatus {
        created: 5,
        skipped: 1,
        failed: 98,
        failures: (0..98).map(failure).collect(),
        volumes: vec![known.clone()],
        ..Default::default()
    };
    let counts = StageCounts {
        created: 2,
        updated: 1,
        skipped: 0,
        failed: 5,
        outcomes: (100..105).map(failure).collect(),
    };
    let fresh_a = RestoreVolume {
        volume_restore: None,
        ..known.clone()
    };
    let b = RestoreVolume {
        persistent_volume_claim: "b".into(),
        ..fresh_a.clone()
    };
    let patch = status_patch(&existing, &counts, Some(&[fresh_a, b.clone()]));
    let s = &patch["status"];
    assert_eq!(
        (
            s["created"].clone(),
            s["updated"].clone(),
            s["skipped"].clone(),
            s["failed"].clone()
        ),
        (json!(7), json!(1), json!(1), json!(103))
    );
    assert_eq!(s["failures"].as_array().unwrap().len(), MAX_FAILURES);
    assert_eq!(s["volumes"], json!([known, b]));
    let patch = status_patch(&existing, &counts, None);
    assert!(
        patch["status"].get("volumes").is_none(),
        "the workloads stage leaves volumes alone"
    );
}

#[test]
fn update_keeps_the_live_version_and_allocated_fields() {
    let captured = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
    let live = json!({"metadata": {"name": "web", "resourceVersion": "42"}, "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 81}]}});
    assert_eq!(
        replacement(&captured, &live),
        json!({"metadata": {"name": "web", "resourceVersion": "42"}, "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]}})
    );
}
