//! ApplicationBackup end to end: the real controller against the simulated cluster, a
//! namespace with a Deployment and a StatefulSet whose pods mount three PVCs, one rule
//! quiescing all of them around one group of snapshots.

use crate::kube_e2e::{
    config, controller_logic_only, small_files, tree, Cluster, APP_IMAGE, NS, PATIENCE,
};
use serde_json::{json, Value};

/// Pod `name` (labels `app=shop`, `tier=<tier>`) mounting PVC `claim` at /data.
fn app_pod(name: &str, tier: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "shop", "tier": tier}},
        "spec": {"containers": [{"name": "app", "image": APP_IMAGE, "args": ["600"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
}

#[test]
fn an_application_backup_quiesces_every_pod_around_one_group_of_snapshots() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-app", config(&[]));
    let claims = ["web-data", "data-db-0", "data-db-1"];
    let volumes: Vec<_> = claims.iter().map(|n| c.volume(n, &small_files())).collect();
    // The simulated cluster runs no workload controllers: the Deployment and the
    // StatefulSet are created for the record, their pods by the test.
    c.create(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"tier": "web"}},
                 "template": {"metadata": {"labels": {"app": "shop", "tier": "web"}},
                              "spec": {"containers": [{"name": "app", "image": APP_IMAGE}]}}}}));
    c.create(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"tier": "db"}},
                 "template": {"metadata": {"labels": {"app": "shop", "tier": "db"}},
                              "spec": {"containers": [{"name": "app", "image": APP_IMAGE}]}}}}));
    let pods = ["web-5d9f7-abcde", "db-0", "db-1"];
    for (pod, (tier, claim)) in
        pods.iter()
            .zip([("web", claims[0]), ("db", claims[1]), ("db", claims[2])])
    {
        c.create(app_pod(pod, tier, claim));
    }
    for pod in pods {
        c.sim.wait_for(&format!("{pod} running"), PATIENCE, |_| {
            (c.get("Pod", pod)?["status"]["phase"] == "Running").then_some(())
        });
    }
    // Configuration captured beside the volumes.
    c.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shop-settings", "namespace": NS, "labels": {"app": "shop"}},
        "data": {"currency": "EUR", "threads": "8"}}));
    c.create(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"selector": {"tier": "db"}, "ports": [{"port": 9042}]}}));
    // pre leaves a marker in each volume; post removes it.
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRule",
        "metadata": {"name": "quiesce", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app": "shop"}}, "container": "app",
                 "pre": [{"command": ["touch", "/data/frozen"]}],
                 "post": [{"command": ["rm", "/data/frozen"]}]}}),
    );
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationBackup",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {"includedNamespaces": [NS], "repository": "main",
                 "rules": [{"name": "quiesce"}], "tags": {"env": "e2e"}}}),
    );

    let ab = c
        .sim
        .wait_for("every volume of nightly Completed", PATIENCE, |_| {
            let ab = c.get("ApplicationBackup", "nightly")?;
            let volumes = ab["status"]["volumes"].as_array()?;
            let failed = volumes.iter().find(|v| v["phase"] == "Failed");
            assert!(
                failed.is_none(),
                "a volume failed: {}\ncontroller log:\n{}",
                ab["status"],
                c.controller_log()
            );
            (volumes.len() == 3 && volumes.iter().all(|v| v["phase"] == "Completed")).then_some(ab)
        });
    let status = &ab["status"];
    assert_eq!(status["namespaces"], json!([NS]));
    assert_eq!(status["volumesTotal"], 3);
    for v in status["volumes"].as_array().unwrap() {
        assert!(
            v["snapshotId"].as_str().is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        assert_eq!(v["volumeSnapshotClassName"], "fast-snap", "{v}");
        let child = c
            .get("VolumeBackup", v["volumeBackup"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            child["metadata"]["labels"]["cairn.io/application-backup"],
            "shop.nightly"
        );
        assert_eq!(
            child["spec"]["source"]["volumeSnapshot"],
            v["volumeSnapshotName"]
        );
        assert_eq!(child["spec"]["tags"]["env"], "e2e");
    }
    // Every pod ran pre, then post, once.
    let hooks = &status["hooks"];
    for side in ["pre", "post"] {
        let ran = hooks[side].as_object().unwrap();
        assert_eq!(ran.len(), 3, "{side}: {hooks}");
        assert!(
            ran.values().all(|o| o["succeeded"] == true),
            "{side}: {hooks}"
        );
        for pod in pods {
            assert!(
                ran.contains_key(&format!("{NS}/{pod}")),
                "{side} {pod}: {hooks}"
            );
        }
    }
    for pod in pods {
        let execs: Vec<String> = c
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(&format!("/pods/{pod}/exec")))
            .map(|r| {
                r.query
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            execs,
            vec!["touch /data/frozen", "rm /data/frozen"],
            "{pod}"
        );
    }
    for v in &volumes {
        assert!(!v.join("frozen").exists(), "post did not run in {v:?}");
    }
    let spread = status["snapshotSpreadSeconds"].as_f64();
    assert!(spread.is_some_and(|s| (0.0..30.0).contains(&s)), "{status}");
    // Once every volume is in, the configuration is captured.
    c.sim.wait_for("the capture Job", PATIENCE, |_| {
        c.get("Job", "nightly-capture-1")
    });
    let ab = c.wait_phase("ApplicationBackup", "nightly", &["Completed"]);
    assert!(
        ab["status"]["resourceSnapshotId"].as_str().is_some(),
        "{}",
        ab["status"]
    );
    let captured = ab["status"]["resourceCount"].as_u64().unwrap_or(0);
    assert!(captured >= 6, "{}", ab["status"]);

    // Bring it back as `shop-dr`: configuration first, then the volumes filled from the
    // repository, then the workloads.
    c.sim
        .merge_patch(
            "cairn.io/v1alpha1",
            "BackupRepository",
            Some(NS),
            "main",
            None,
            json!({"spec": {"allowedNamespaces": ["shop-dr"]}}),
        )
        .unwrap();
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationRestore",
        "metadata": {"name": "to-dr", "namespace": NS},
        "spec": {"source": {"applicationBackup": "nightly"},
                 "namespaceMapping": {NS: "shop-dr"}}}),
    );
    let ar = c.wait_phase("ApplicationRestore", "to-dr", &["Completed"]);
    assert_eq!(ar["status"]["failed"], 0, "{}", ar["status"]);
    assert!(
        ar["status"]["created"].as_u64().unwrap_or(0) >= 6,
        "{}",
        ar["status"]
    );
    // Each volume holds what the group snapshot held: the source's files, and the marker
    // the pre command left (post removed it from the live volume after the cut).
    for (claim, source) in claims.iter().zip(&volumes) {
        let restored = c
            .sim
            .volume_dir("shop-dr", claim)
            .unwrap_or_else(|| panic!("{claim} not restored in shop-dr"));
        let mut got = tree(&restored);
        assert!(
            got.remove("frozen").is_some(),
            "{claim}: the snapshot was not cut between pre and post"
        );
        assert_eq!(got, tree(source), "{claim}");
    }
    // The configuration, in the new namespace.
    let settings = c
        .sim
        .get("v1", "ConfigMap", Some("shop-dr"), "shop-settings")
        .expect("ConfigMap restored");
    assert_eq!(settings["data"], json!({"currency": "EUR", "threads": "8"}));
    assert_eq!(settings["metadata"]["labels"]["app"], "shop");
    for (api, kind, name) in [
        ("v1", "Service", "db"),
        ("apps/v1", "Deployment", "web"),
        ("apps/v1", "StatefulSet", "db"),
    ] {
        let o = c
            .sim
            .get(api, kind, Some("shop-dr"), name)
            .unwrap_or_else(|| panic!("{kind} {name} not restored"));
        let original = c.sim.get(api, kind, Some(NS), name).unwrap();
        assert_eq!(
            o["spec"]["selector"], original["spec"]["selector"],
            "{kind}"
        );
    }

    // As in another cluster that has only the repository: the ApplicationBackup object is
    // gone, and the restore names the resource snapshot; the snapshot itself says which
    // repository snapshot holds each volume.
    let resource_snapshot = ab["status"]["resourceSnapshotId"].as_str().unwrap();
    c.sim
        .delete(
            "cairn.io/v1alpha1",
            "ApplicationBackup",
            Some(NS),
            "nightly",
        )
        .unwrap();
    c.sim.wait_for("nightly deleted", PATIENCE, |_| {
        c.get("ApplicationBackup", "nightly")
            .is_none()
            .then_some(())
    });
    c.sim
        .merge_patch(
            "cairn.io/v1alpha1",
            "BackupRepository",
            Some(NS),
            "main",
            None,
            json!({"spec": {"allowedNamespaces": ["shop-dr", "shop-far"]}}),
        )
        .unwrap();
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationRestore",
        "metadata": {"name": "from-repository", "namespace": NS},
        "spec": {"source": {"repository": "main", "snapshotId": &resource_snapshot[..8]},
                 "namespaceMapping": {NS: "shop-far"},
                 "excludedResources": ["pods"]}}),
    );
    c.wait_phase("ApplicationRestore", "from-repository", &["Completed"]);
    for (claim, source) in claims.iter().zip(&volumes) {
        let restored = c
            .sim
            .volume_dir("shop-far", claim)
            .unwrap_or_else(|| panic!("{claim} not restored in shop-far"));
        let mut got = tree(&restored);
        got.remove("frozen");
        assert_eq!(got, tree(source), "{claim}");
    }
    assert!(c.sim.get("v1", "Pod", Some("shop-far"), "db-0").is_none());
    assert!(c
        .sim
        .get("v1", "ConfigMap", Some("shop-far"), "shop-settings")
        .is_some());
    c.assert_no_pruned_fields();
}

/// A volume in another namespace than the ApplicationBackup and its repository: the child
/// VolumeBackup runs there with copies of the repository's Secrets, once allowed.
#[test]
fn a_volume_in_another_namespace_is_backed_up_through_copied_repository_secrets() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-app-xns", config(&[]));
    let web = "web";
    for object in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": web}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cairn-job", "namespace": web}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "assets", "namespace": web},
               "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        c.create(object);
    }
    let dir = c.sim.wait_for("PVC web/assets bound", PATIENCE, |sim| {
        sim.volume_dir(web, "assets")
    });
    std::fs::write(dir.join("logo.svg"), b"<svg/>").unwrap();
    let backup = |name: &str| {
        c.create(
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationBackup",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"includedNamespaces": [web], "repository": "main"}}),
        );
    };
    // Not allowed yet: refused with the field to set.
    backup("refused");
    let ab = c.sim.wait_for("refused fails", PATIENCE, |_| {
        let ab = c.get("ApplicationBackup", "refused")?;
        (ab["status"]["phase"] == "Failed").then_some(ab)
    });
    let why = ab["status"]["failureReason"].as_str().unwrap();
    assert!(why.contains("spec.allowedNamespaces"), "{why}");

    c.sim
        .merge_patch(
            "cairn.io/v1alpha1",
            "BackupRepository",
            Some(NS),
            "main",
            None,
            json!({"spec": {"allowedNamespaces": [web]}}),
        )
        .unwrap();
    backup("allowed");
    let ab = c.sim.wait_for("the web volume Completed", PATIENCE, |_| {
        let ab = c.get("ApplicationBackup", "allowed")?;
        let v = &ab["status"]["volumes"][0];
        assert_ne!(
            v["phase"],
            "Failed",
            "{}\n{}",
            ab["status"],
            c.controller_log()
        );
        (v["phase"] == "Completed").then_some(ab)
    });
    let v = &ab["status"]["volumes"][0];
    assert_eq!(
        (v["namespace"].as_str(), v["persistentVolumeClaim"].as_str()),
        (Some(web), Some("assets"))
    );
    assert!(v["snapshotId"].as_str().is_some_and(|s| !s.is_empty()));
    let child = c
        .sim
        .get(
            "cairn.io/v1alpha1",
            "VolumeBackup",
            Some(web),
            "allowed-assets",
        )
        .unwrap();
    assert_eq!(child["spec"]["repositoryNamespace"], NS);
    // The Job in `web` mounted copies, owned by the child.
    let job = c
        .sim
        .get("batch/v1", "Job", Some(web), "allowed-assets-backup-1")
        .unwrap();
    let volumes = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    for volume in ["password", "credentials"] {
        let secret = volumes.iter().find(|v| v["name"] == volume).unwrap()["secret"]["secretName"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(secret.starts_with("cairn-repo-main-"), "{secret}");
        let copy = c.sim.get("v1", "Secret", Some(web), &secret).unwrap();
        assert_eq!(
            copy["metadata"]["ownerReferences"][0]["name"],
            "allowed-assets"
        );
    }
    c.assert_no_pruned_fields();
}
