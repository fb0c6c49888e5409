//! capture-resources and restore-resources against the simulated cluster: namespace `shop`
//! (a Deployment, a StatefulSet with 3 PVCs, ConfigMaps, Secrets, Services) is captured,
//! then restored into `shop-copy` by namespaceMapping, stage by stage, and every restored
//! object equals its original after stripping and mapping. The engine stores snapshots as
//! directories, so only the Kubernetes side is under test.

use cairn_kube::crd::{ApplicationRestore, ApplicationRestoreStatus};
use cairn_kube::job::{
    run_job, BackupJobRequest, BackupJobResult, Engine, EngineError, EngineProgress,
    ForgetJobRequest, JobCommand, JobParams, MaintenanceJobRequest, MaintenanceJobResult,
    RepositoryAccess, RestoreJobRequest, RestoreJobResult, SnapshotSummary,
};
use cairn_kube::protocol::JobOutcome;
use cairn_kube::resources::capture::strip;
use cairn_kube::resources::layout::{read_manifest, read_tree};
use cairn_kube::resources::{group_of, ResourceType};
use cairn_kube_sim::{Sim, SimOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Source name and tags of a stored snapshot.
type Recorded = (String, BTreeMap<String, String>);

/// Snapshots are copies of the source directory under `root/<id>`.
struct DirEngine {
    root: PathBuf,
    tags: Mutex<BTreeMap<String, Recorded>>,
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            bytes += copy_tree(&entry.path(), &target)?;
        } else {
            bytes += std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(bytes)
}

fn engine_error(e: std::io::Error) -> EngineError {
    EngineError {
        message: e.to_string(),
        retryable: false,
    }
}

impl Engine for DirEngine {
    fn backup(
        &self,
        req: &BackupJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError> {
        let mut tags = self.tags.lock().unwrap();
        let id = format!("{:016x}", 0x5eed_0000 + tags.len());
        let bytes = copy_tree(&req.source, &self.root.join(&id)).map_err(engine_error)?;
        tags.insert(id.clone(), (req.source_name.clone(), req.tags.clone()));
        Ok(BackupJobResult {
            snapshot_id: id,
            time: jiff::Timestamp::now(),
            bytes_done: bytes,
            total_bytes: bytes,
            bytes_added: None,
            summary: String::new(),
        })
    }
    fn restore(
        &self,
        req: &RestoreJobRequest,
        _: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError> {
        let from = self.root.join(&req.snapshot);
        if !from.is_dir() {
            return Err(EngineError {
                message: format!("no snapshot {}", req.snapshot),
                retryable: false,
            });
        }
        let bytes = copy_tree(&from, &req.target).map_err(engine_error)?;
        Ok(RestoreJobResult {
            bytes_done: bytes,
            total_bytes: bytes,
            summary: String::new(),
        })
    }
    fn maintenance(&self, _: &MaintenanceJobRequest) -> Result<MaintenanceJobResult, EngineError> {
        unreachable!("not used by resource jobs")
    }
    fn forget(&self, _: &ForgetJobRequest) -> Result<String, EngineError> {
        unreachable!("not used by resource jobs")
    }
    fn list_snapshots(&self, _: &RepositoryAccess) -> Result<Vec<SnapshotSummary>, EngineError> {
        Ok(Vec::new())
    }
}

fn shop_objects() -> Vec<Value> {
    let ns = "shop";
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "checkout"}}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": ns,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "checkout"}},
            "data": {"LOG_LEVEL": "info"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "db-config", "namespace": ns}, "data": {"cassandra.yaml": "num_tokens: 16\n"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns}, "data": {"ca.crt": "x"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-credentials", "namespace": ns}, "type": "Opaque", "data": {"password": "czNjcjN0"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-tls", "namespace": ns}, "type": "kubernetes.io/tls", "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.17", "clusterIPs": ["10.96.0.17"], "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": ns},
            "spec": {"selector": {"app": "db"}, "clusterIP": "None", "ports": [{"port": 9042}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"serviceAccountName": "web",
                    "containers": [{"name": "web", "image": "shop/web:1", "envFrom": [{"configMapRef": {"name": "web-config"}}]}]}}}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": ns, "labels": {"app": "db"}},
            "spec": {"replicas": 0, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "cassandra:4.1"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": ns}, "reason": "Scaled", "involvedObject": {"kind": "Deployment", "name": "web"}}),
    ]
    .into_iter()
    .chain((0..3).map(|i| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("data-db-{i}"), "namespace": ns, "labels": {"app": "db"}},
            "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    }))
    .collect()
}

fn job(kind: JobCommand, args: &[&str], dir: &Path) -> JobParams {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--location".into(),
        "fs:///unused".into(),
        "--termination-log".into(),
        dir.join("termination").display().to_string(),
        "--staging-dir".into(),
        dir.display().to_string(),
    ]);
    let env = |name: &str| (name == "CAIRN_PASSWORD").then(|| "pw".to_string());
    JobParams::parse(kind, &all, &env).unwrap()
}

fn type_of(o: &Value) -> ResourceType {
    let av = o["apiVersion"].as_str().unwrap();
    ResourceType::new(
        group_of(av),
        av.rsplit('/').next().unwrap(),
        o["kind"].as_str().unwrap(),
        "",
        true,
    )
}

#[test]
fn shop_is_captured_and_restored_into_shop_copy() {
    let sim = Sim::start(SimOptions::default());
    for crd in cairn_kube::crd::crds() {
        sim.create(serde_json::to_value(crd).unwrap()).unwrap();
    }
    sim.create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"},
        "provisioner": "csi.sim", "volumeBindingMode": "Immediate"})).unwrap();
    for o in shop_objects() {
        sim.create(o).unwrap();
    }
    // An owned pod of the StatefulSet: its controller re-creates it, capture skips it.
    sim.create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "x", "controller": true}]},
        "spec": {"nodeName": "nowhere", "containers": [{"name": "db", "image": "cassandra:4.1"}]}})).unwrap();
    for i in 0..3 {
        sim.wait_for("PVCs bound", Duration::from_secs(10), |s| {
            s.get(
                "v1",
                "PersistentVolumeClaim",
                Some("shop"),
                &format!("data-db-{i}"),
            )?["spec"]["volumeName"]
                .as_str()
                .map(drop)
        });
    }
    sim.create(json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationBackup", "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"includedNamespaces": ["shop"], "repository": "main", "tags": {"env": "prod"}}})).unwrap();
    let volumes: Vec<Value> = (0..3)
        .map(|i| json!({"namespace": "shop", "persistentVolumeClaim": format!("data-db-{i}"), "snapshotId": format!("vol{i}"), "volumeSnapshotName": format!("nightly-data-db-{i}")}))
        .collect();
    sim.merge_patch(
        "cairn.io/v1alpha1",
        "ApplicationBackup",
        Some("shop"),
        "nightly",
        Some("status"),
        json!({"status": {"namespaces": ["shop"], "volumes": volumes}}),
    )
    .unwrap();

    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let engine = Arc::new(DirEngine {
        root: store.path().to_path_buf(),
        tags: Mutex::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = || {
        let _runtime = rt.enter();
        let mut config = kube::Config::new(sim.url().parse().unwrap());
        config.default_namespace = "shop".into();
        kube::Client::try_from(config).unwrap()
    };
    let run = |params: JobParams| -> JobOutcome {
        rt.block_on(run_job(params, engine.clone(), Some(client())))
            .unwrap()
    };

    // Capture.
    let outcome = run(job(
        JobCommand::CaptureResources,
        &["--namespace", "shop", "--application-backup", "nightly"],
        work.path(),
    ));
    assert!(outcome.succeeded, "{outcome:?}");
    let id = outcome.snapshot_id.clone().unwrap();
    let snapshot = store.path().join(&id);
    let tree = read_tree(&snapshot).unwrap();
    let paths: Vec<String> = tree.iter().map(|c| c.path.display().to_string()).collect();
    let want = [
        "resources/shop/apps/Deployment/web.yaml",
        "resources/shop/apps/StatefulSet/db.yaml",
        "resources/shop/core/ConfigMap/db-config.yaml",
        "resources/shop/core/ConfigMap/web-config.yaml",
        "resources/shop/core/Namespace/shop.yaml",
        "resources/shop/core/PersistentVolumeClaim/data-db-0.yaml",
        "resources/shop/core/PersistentVolumeClaim/data-db-1.yaml",
        "resources/shop/core/PersistentVolumeClaim/data-db-2.yaml",
        "resources/shop/core/Secret/db-credentials.yaml",
        "resources/shop/core/Secret/web-tls.yaml",
        "resources/shop/core/Service/db.yaml",
        "resources/shop/core/Service/web.yaml",
        "resources/shop/core/ServiceAccount/web.yaml",
    ];
    assert_eq!(paths, want);
    assert_eq!(outcome.resource_count, Some(want.len() as u32));
    assert!(
        !snapshot.join("resources/shop/cairn.io").exists(),
        "the ApplicationBackup itself is not captured"
    );
    let pvc = &tree
        .iter()
        .find(|c| c.path.ends_with("data-db-1.yaml"))
        .unwrap()
        .object;
    assert_eq!(
        pvc["metadata"]["annotations"],
        json!({"cairn.io/snapshot-id": "vol1", "cairn.io/volume-snapshot": "nightly-data-db-1"})
    );
    assert!(
        pvc["spec"].get("volumeName").is_none() && pvc.get("status").is_none(),
        "{pvc}"
    );
    let manifest = read_manifest(&snapshot).unwrap();
    assert_eq!(
        (
            manifest.name.as_str(),
            manifest.namespaces.clone(),
            manifest.resource_count
        ),
        ("nightly", vec!["shop".to_string()], 13)
    );
    assert_eq!(manifest.volumes[2].snapshot_id.as_deref(), Some("vol2"));
    assert_eq!(manifest.volumes[2].size.as_deref(), Some("1Gi"));
    assert_eq!(
        manifest.volumes[2].storage_class_name.as_deref(),
        Some("fast")
    );
    let (source, tags) = engine.tags.lock().unwrap()[&id].clone();
    assert_eq!(source, "resources:shop/nightly");
    assert_eq!(
        tags,
        BTreeMap::from([
            ("env".into(), "prod".into()),
            ("cairn.io/application-backup".into(), "nightly".into()),
            ("cairn.io/content".into(), "resources".into())
        ])
    );

    // Restore into shop-copy, configuration first.
    sim.create(json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationRestore", "metadata": {"name": "to-copy", "namespace": "shop"},
        "spec": {"source": {"snapshotId": id, "repository": "main"}, "namespaceMapping": {"shop": "shop-copy"},
                 "storageClassMapping": {"fast": "premium"}}})).unwrap();
    let restore_args = |stage: &'static str| -> Vec<&'static str> {
        vec![
            "--namespace",
            "shop",
            "--application-restore",
            "to-copy",
            "--stage",
            stage,
        ]
    };
    let status = || -> ApplicationRestoreStatus {
        let v = sim
            .get(
                "cairn.io/v1alpha1",
                "ApplicationRestore",
                Some("shop"),
                "to-copy",
            )
            .unwrap();
        serde_json::from_value::<ApplicationRestore>(v)
            .unwrap()
            .status
            .unwrap_or_default()
    };
    let outcome = run(job(
        JobCommand::RestoreResources,
        &restore_args("configuration"),
        work.path(),
    ));
    assert!(outcome.succeeded, "{outcome:?}");
    // Namespace, ServiceAccount, 2 ConfigMaps, 2 Secrets; the PVCs are volumes to fill.
    assert_eq!(outcome.resource_count, Some(6), "{outcome:?}");
    let s = status();
    assert_eq!(
        (s.created, s.updated, s.skipped, s.failed),
        (6, 0, 0, 0),
        "{:?}",
        s.failures
    );
    let vols: Vec<(String, String, String, Option<String>, String)> = s
        .volumes
        .iter()
        .map(|v| {
            (
                v.namespace.clone(),
                v.persistent_volume_claim.clone(),
                v.snapshot_id.clone(),
                v.storage_class_name.clone(),
                v.size.clone(),
            )
        })
        .collect();
    assert_eq!(
        vols,
        (0..3)
            .map(|i| (
                "shop-copy".into(),
                format!("data-db-{i}"),
                format!("vol{i}"),
                Some("premium".into()),
                "1Gi".into()
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        sim.get(
            "v1",
            "PersistentVolumeClaim",
            Some("shop-copy"),
            "data-db-0"
        )
        .is_none(),
        "VolumeRestores create the PVCs"
    );
    assert!(
        sim.get("apps/v1", "Deployment", Some("shop-copy"), "web")
            .is_none(),
        "workloads wait for their stage"
    );

    let outcome = run(job(
        JobCommand::RestoreResources,
        &restore_args("workloads"),
        work.path(),
    ));
    assert!(outcome.succeeded, "{outcome:?}");
    assert_eq!(outcome.resource_count, Some(4), "{outcome:?}");
    let s = status();
    assert_eq!(
        (s.created, s.skipped, s.failed),
        (10, 0, 0),
        "{:?}",
        s.failures
    );

    // Every restored object equals the captured one, mapped.
    for c in tree
        .iter()
        .filter(|c| c.object["kind"] != "PersistentVolumeClaim")
    {
        let o = &c.object;
        let t = type_of(o);
        let name = o["metadata"]["name"].as_str().unwrap();
        let (ns, name) = if t.kind == "Namespace" {
            (None, "shop-copy")
        } else {
            (Some("shop-copy"), name)
        };
        let live = sim
            .get(o["apiVersion"].as_str().unwrap(), &t.kind, ns, name)
            .unwrap_or_else(|| panic!("{} {name} was not restored", t.kind));
        let mut expected = o.clone();
        expected["metadata"]["labels"]["cairn.io/application-restore"] = json!("shop.to-copy");
        match ns {
            Some(ns) => expected["metadata"]["namespace"] = json!(ns),
            None => {
                expected["metadata"]["name"] = json!("shop-copy");
                expected["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!("shop-copy");
            }
        }
        if t.kind == "StatefulSet" {
            expected["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] =
                json!("premium");
        }
        assert_eq!(strip(&t, &live), expected, "{}", c.path.display());
    }

    // A retry of the configuration stage finds everything there: skipped, and counted.
    let outcome = run(job(
        JobCommand::RestoreResources,
        &restore_args("configuration"),
        work.path(),
    ));
    assert!(outcome.succeeded, "{outcome:?}");
    let s = status();
    assert_eq!((s.created, s.skipped, s.failed), (10, 6, 0));
    assert!(
        s.failures
            .iter()
            .all(|f| f.outcome == "Skipped" && f.message.contains("already exists")),
        "{:?}",
        s.failures
    );
    assert_eq!(s.volumes.len(), 3);

    // Policy update: a ConfigMap changed since is put back as captured.
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("shop-copy"),
        "web-config",
        None,
        json!({"data": {"LOG_LEVEL": "debug"}}),
    )
    .unwrap();
    sim.merge_patch(
        "cairn.io/v1alpha1",
        "ApplicationRestore",
        Some("shop"),
        "to-copy",
        None,
        json!({"spec": {"existingResourcePolicy": "update"}}),
    )
    .unwrap();
    let outcome = run(job(
        JobCommand::RestoreResources,
        &restore_args("configuration"),
        work.path(),
    ));
    assert!(outcome.succeeded, "{outcome:?}");
    let s = status();
    assert_eq!(
        (s.created, s.updated, s.skipped, s.failed),
        (10, 6, 6, 0),
        "{:?}",
        s.failures
    );
    let cm = sim
        .get("v1", "ConfigMap", Some("shop-copy"), "web-config")
        .unwrap();
    assert_eq!(cm["data"], json!({"LOG_LEVEL": "info"}));
}

#[test]
fn resource_job_arguments_are_checked() {
    let env = |name: &str| (name == "CAIRN_PASSWORD").then(|| "pw".to_string());
    let parse = |kind: JobCommand, args: &[&str]| {
        let mut all: Vec<String> = vec!["--location".into(), "fs:///r".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        JobParams::parse(kind, &all, &env).map_err(|e| e.to_string())
    };
    let p = parse(
        JobCommand::RestoreResources,
        &[
            "--namespace",
            "shop",
            "--application-restore",
            "r",
            "--stage",
            "workloads",
        ],
    )
    .unwrap();
    assert_eq!(p.stage, Some(cairn_kube::resources::plan::Stage::Workloads));
    assert_eq!(p.staging_dir, None);
    let p = parse(
        JobCommand::CaptureResources,
        &[
            "--namespace",
            "shop",
            "--application-backup",
            "b",
            "--staging-dir",
            "/x",
        ],
    )
    .unwrap();
    assert_eq!(
        (p.application_backup.as_deref(), p.staging_dir.as_deref()),
        (Some("b"), Some(Path::new("/x")))
    );
    let errors = [
        (
            JobCommand::CaptureResources,
            vec!["--namespace", "shop"],
            "--application-backup",
        ),
        (
            JobCommand::RestoreResources,
            vec!["--namespace", "shop", "--application-restore", "r"],
            "--stage",
        ),
        (
            JobCommand::RestoreResources,
            vec![
                "--namespace",
                "shop",
                "--application-restore",
                "r",
                "--stage",
                "volumes",
            ],
            "expected configuration or workloads",
        ),
    ];
    for (kind, args, want) in errors {
        let e = parse(kind, &args).unwrap_err();
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(
        "capture-resources".parse::<JobCommand>().unwrap(),
        JobCommand::CaptureResources
    );
    assert_eq!(
        "restore-resources".parse::<JobCommand>().unwrap(),
        JobCommand::RestoreResources
    );
}
