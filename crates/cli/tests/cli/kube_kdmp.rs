//! The KDMP executor contract end to end: Jobs built exactly as Portworx's KDMP driver
//! builds them (`/bin/sh -x -c "/kopiaexecutor <op> ..."`, the credential Secret at
//! `/etc/cred-secret`, the volume at `/data`, the NFS location at `/mnt/nfs-target/`) run
//! in the simulated cluster, whose kubelet finds `/kopiaexecutor` as a link to the real
//! `cairn` binary, against KDMP's CRDs installed from `testdata/kdmp/crds.json`. No cairn
//! controller runs: KDMP's controller is played by the test. Every wait is bounded.

use crate::kube_e2e::{small_files, tree};
use cairn_kube_sim::{Image, Sim, SimOptions};
use cairn_storage::testing::TestBackend;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound on any single wait: the operations here take a second or two.
const PATIENCE: Duration = Duration::from_secs(60);

/// The image name KDMP builds: `<registry>/kopiaexecutor:<version>`.
const IMAGE: &str = "registry.example/portworx/kopiaexecutor:1.2.10";
const NS: &str = "shop";
const DRIVER: &str = "sim.csi.cairn.io";
const PASSWORD: &str = "kdmp-repo-password";
/// The BackupLocation's path inside the NFS export.
const BL_PATH: &str = "bl-nfs";
const KDMP_API: &str = "kdmp.portworx.com/v1alpha1";

/// The cluster with KDMP's CRDs and an NFS export (a host directory) as backup location.
struct Kdmp {
    sim: Sim,
    /// The NFS export, mounted at `/mnt/nfs-target/` in the Jobs.
    nfs: tempfile::TempDir,
    /// On the S3 pass, the test server the credential Secrets point to instead:
    /// (endpoint, `bucket/prefix`).
    s3: Option<(String, String)>,
    /// The link `kopiaexecutor` -> cairn and the cache.
    _work: tempfile::TempDir,
}

/// Tests of the executor's contract use an NFS location (a host directory): the S3 pass
/// adds nothing the fs pass does not check, and stays short.
fn fs_backend_only() -> bool {
    let s3 = matches!(TestBackend::from_env().unwrap(), TestBackend::S3 { .. });
    if s3 {
        eprintln!("skipping on S3: the KDMP tests use an NFS backup location");
    }
    s3
}

impl Kdmp {
    fn start() -> Kdmp {
        let work = tempfile::tempdir().unwrap();
        let link = work.path().join("bin").join("kopiaexecutor");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cairn"), &link).unwrap();
        // Nothing is mounted at KDMP's fixed paths here: the variables name them, and the
        // kubelet rewrites them to the pod's mounts like any container path.
        let env = vec![
            ("RUST_LOG".to_string(), "info,kube=warn".to_string()),
            (
                "CAIRN_KDMP_CRED_SECRET_DIR".to_string(),
                "/etc/cred-secret".to_string(),
            ),
            (
                "CAIRN_KDMP_NFS_TARGET_DIR".to_string(),
                "/mnt/nfs-target".to_string(),
            ),
            (
                "CAIRN_KDMP_PROGRESS_INTERVAL".to_string(),
                "0.2".to_string(),
            ),
            (
                "CAIRN_CACHE_DIR".to_string(),
                work.path().join("cache").to_string_lossy().into_owned(),
            ),
        ];
        // The S3 pass's server settings (region, no instance metadata); the keys come from
        // the credential Secret, as in KDMP.
        let mut env = env;
        env.extend(std::env::vars().filter(|(k, _)| {
            k.starts_with("AWS_") && k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY"
        }));
        let sim = Sim::start(SimOptions {
            images: [(
                IMAGE.to_string(),
                Image {
                    entrypoint: link.clone(),
                    env,
                    termination_log_env: None,
                },
            )]
            .into(),
            image_files: [("/kopiaexecutor".to_string(), link)].into(),
            ..SimOptions::default()
        });
        let crds: Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/kdmp/crds.json"),
            )
            .unwrap(),
        )
        .unwrap();
        for crd in crds["items"].as_array().unwrap() {
            sim.create(crd.clone()).unwrap();
        }
        for object in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop-dr"}}),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"},
                   "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
        ] {
            sim.create(object).unwrap();
        }
        let s3 = match TestBackend::from_env().unwrap() {
            TestBackend::S3 { endpoint, bucket } => {
                let unique = tempfile::Builder::new().prefix("kdmp-").tempdir().unwrap();
                let prefix = unique.path().file_name().unwrap().to_string_lossy();
                Some((endpoint, format!("{bucket}/{}", prefix.to_lowercase())))
            }
            TestBackend::Fs => None,
        };
        Kdmp {
            sim,
            nfs: tempfile::tempdir().unwrap(),
            s3,
            _work: work,
        }
    }

    /// Creates PVC `ns/name` (class `fast`), waits until it is bound, and fills it.
    fn volume(&self, ns: &str, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        self.sim
            .create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap();
        let dir = self
            .sim
            .wait_for(&format!("PVC {name} bound"), PATIENCE, |sim| {
                sim.volume_dir(ns, name)
            });
        for (path, data) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        dir
    }

    /// The credential Secret KDMP makes for a DataExport (`cred-secret-<export>`) from an
    /// NFS BackupLocation, or on the S3 pass from an S3 one naming the test server.
    fn cred_secret(&self, ns: &str, export: &str) -> String {
        let name = format!("cred-secret-{export}");
        let data = match &self.s3 {
            None => json!({"type": "nfs", "password": PASSWORD, "path": BL_PATH,
                           "serverAddr": "nfs.example", "subPath": "/exports/backups"}),
            Some((endpoint, path)) => {
                let key = |k: &str| std::env::var(k).expect("s3.sh exports AWS credentials");
                json!({"type": "s3", "password": PASSWORD, "path": path,
                       "accessKey": key("AWS_ACCESS_KEY_ID"),
                       "secretAccessKey": key("AWS_SECRET_ACCESS_KEY"),
                       "endpoint": endpoint.trim_start_matches("http://"),
                       "disablessl": "true", "region": "us-east-1"})
            }
        };
        self.sim
            .create(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns}, "stringData": data}))
            .unwrap();
        name
    }

    /// A Job as KDMP's drivers build it: `/bin/sh -x -c <cmd>` in container `kopiaexecutor`,
    /// the volume `vol` at `/data` when given, the credential Secret at `/etc/cred-secret`,
    /// the NFS location at `/mnt/nfs-target/`, its own ServiceAccount.
    fn job(&self, ns: &str, name: &str, cmd: &str, pvc: Option<&str>, secret: &str) {
        let labels = json!({"kdmp.portworx.com/driver-name": "kopiabackup"});
        let mut mounts = vec![];
        let mut volumes = vec![];
        if let Some(pvc) = pvc {
            mounts.push(json!({"name": "vol", "mountPath": "/data"}));
            volumes.push(json!({"name": "vol", "persistentVolumeClaim": {"claimName": pvc}}));
        }
        mounts.push(
            json!({"name": "cred-secret", "mountPath": "/etc/cred-secret", "readOnly": true}),
        );
        volumes.push(json!({"name": "cred-secret", "secret": {"secretName": secret}}));
        mounts.push(json!({"name": "nfs-target", "mountPath": "/mnt/nfs-target/"}));
        volumes.push(json!({"name": "nfs-target", "hostPath": {"path": self.nfs.path()}}));
        self.sim
            .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": name, "namespace": ns}}))
            .unwrap();
        self.sim
            .create(json!({"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                             "annotations": {"stork.libopenstorage.org/skip-resource": "true"}},
                "spec": {"backoffLimit": 10, "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "OnFailure", "serviceAccountName": name,
                        "containers": [{"name": "kopiaexecutor", "image": IMAGE,
                            "imagePullPolicy": "Always",
                            "command": ["/bin/sh", "-x", "-c", cmd],
                            "volumeMounts": mounts}],
                        "volumes": volumes}}}}))
            .unwrap();
    }

    /// Waits until Job `ns/name` completes; panics with its pods' logs if a pod fails.
    fn wait_complete(&self, ns: &str, name: &str) {
        self.sim
            .wait_for(&format!("Job {name} complete"), PATIENCE, |sim| {
                let job = sim.get("batch/v1", "Job", Some(ns), name)?;
                if job["status"]["failed"].as_i64().unwrap_or(0) > 0 {
                    panic!("Job {name} failed: {}\n{}", job["status"], self.logs(ns));
                }
                (job["status"]["succeeded"].as_i64() == Some(1)).then_some(())
            })
    }

    /// Waits until a pod of Job `ns/name` has failed.
    fn wait_failed(&self, ns: &str, name: &str) {
        self.sim
            .wait_for(&format!("Job {name} failed once"), PATIENCE, |sim| {
                let job = sim.get("batch/v1", "Job", Some(ns), name)?;
                if job["status"]["succeeded"].as_i64() == Some(1) {
                    panic!("Job {name} succeeded; it should have failed");
                }
                (job["status"]["failed"].as_i64().unwrap_or(0) > 0).then_some(())
            })
    }

    /// The logs of every pod in `ns` (pod directories hold them), for failure messages.
    fn logs(&self, ns: &str) -> String {
        let mut out = String::new();
        for pod in self.sim.list("v1", "Pod", Some(ns)) {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            out.push_str(&format!(
                "--- pod {name}: {}\n",
                pod["status"]["containerStatuses"][0]["state"]
            ));
            let dir = self.sim.shared().pod_dir(ns, name);
            out.push_str(&std::fs::read_to_string(dir.join("log")).unwrap_or_default());
        }
        out
    }

    fn kdmp(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.sim.get(KDMP_API, kind, Some(ns), name)
    }

    /// The repository directory KDMP's volume `<ns>-<pvc>` maps to on the NFS export.
    fn repository(&self, repo: &str) -> PathBuf {
        self.nfs
            .path()
            .join(BL_PATH)
            .join("generic-backup")
            .join(repo)
    }
}

fn backup_cmd(vb: &str, pvc: &str, export: &str, extra: &str) -> String {
    let mut cmd = [
        "/kopiaexecutor",
        "backup",
        "--volume-backup-name",
        vb,
        "--repository",
        &format!("{NS}-{pvc}"),
        "--credentials",
        export,
        "--backup-location",
        "bl-nfs",
        "--backup-location-namespace",
        "kube-system",
        "--backup-namespace",
        NS,
        "--source-path",
        "/data",
    ]
    .join(" ");
    if !extra.is_empty() {
        cmd.push(' ');
        cmd.push_str(extra);
    }
    cmd
}

fn delete_cmd(pvc: &str, secret: &str, id: &str, vbd: &str) -> String {
    [
        "/kopiaexecutor",
        "delete",
        "--repository",
        &format!("{NS}-{pvc}"),
        "--cred-secret-name",
        secret,
        "--cred-secret-namespace",
        NS,
        "--snapshot-id",
        id,
        "--volume-backup-delete-name",
        vbd,
        "--volume-backup-delete-namespace",
        NS,
    ]
    .join(" ")
}

/// Backs up PVC `pvc` with VolumeBackup `vb` through a KDMP Job and returns its status
/// once the Job completed.
fn backup(k: &Kdmp, vb: &str, pvc: &str, extra: &str) -> Value {
    let export = format!("export-{vb}");
    let secret = k.cred_secret(NS, &export);
    k.job(
        NS,
        vb,
        &backup_cmd(vb, pvc, &export, extra),
        Some(pvc),
        &secret,
    );
    k.wait_complete(NS, vb);
    k.kdmp("VolumeBackup", NS, vb)
        .expect("the executor creates the VolumeBackup")
}

/// Runs on both passes: an NFS location on the fs pass, an S3 one on the S3 pass.
#[test]
fn kdmp_backup_reaches_100_percent_and_its_restore_fills_a_new_pvc() {
    let k = Kdmp::start();
    let mut files = small_files();
    files.push(("cache/tmp.bin", vec![7; 50_000]));
    files.push(("logs/app.log", b"log line\n".to_vec()));
    let source = k.volume(NS, "data", &files);
    let vb = backup(
        &k,
        "data-backup",
        "data",
        "--compression s2-parallel-8 --exclude-file-list cache,logs/app.log",
    );
    assert_eq!(
        vb["spec"]["repository"], "generic-backup/shop-data/",
        "{vb}"
    );
    assert_eq!(
        vb["spec"]["backupLocation"],
        json!({"name": "bl-nfs", "namespace": "kube-system"})
    );
    let status = &vb["status"];
    assert_eq!(status["progressPercentage"], json!(100.0), "{status}");
    let id = status["snapshotID"]
        .as_str()
        .expect("snapshotID")
        .to_string();
    assert_eq!(id.len(), 64, "a full snapshot id: {id}");
    assert!(
        status["totalBytes"].as_u64().unwrap() >= 320_000,
        "{status}"
    );
    assert!(status.get("lastKnownError").is_none(), "{status}");
    assert_eq!(
        k.repository("shop-data").join("cairn.repository").is_file(),
        k.s3.is_none(),
        "the repository is on the NFS export exactly when the location is NFS"
    );
    // The whole object was replaced (no status subresource), and more than once.
    let puts = k
        .sim
        .requests()
        .iter()
        .filter(|r| {
            r.method == "PUT"
                && r.path == format!("/apis/{KDMP_API}/namespaces/{NS}/volumebackups/data-backup")
                && r.code == 200
        })
        .count();
    assert!(puts >= 1, "no VolumeBackup update");

    // The restore, as KDMP's restore driver runs it: into a new PVC in another namespace,
    // whose VolumeBackup receives the totals.
    let target = k.volume("shop-dr", "data-restored", &[]);
    k.sim
        .create(json!({"apiVersion": KDMP_API, "kind": "VolumeBackup",
            "metadata": {"name": "data-restore", "namespace": "shop-dr"},
            "spec": {"repository": "generic-backup/shop-data/",
                     "backupLocation": {"name": "bl-nfs", "namespace": "kube-system"}}}))
        .unwrap();
    let export = "export-restore";
    let secret = k.cred_secret("shop-dr", export);
    let cmd = [
        "/kopiaexecutor",
        "restore",
        "--volume-backup-name",
        "data-restore",
        "--backup-location",
        "bl-nfs",
        "--backup-location-namespace",
        "kube-system",
        "--repository",
        "generic-backup/shop-data/",
        "--restore-namespace",
        "shop-dr",
        "--credentials",
        export,
        "--target-path",
        "/data",
        "--snapshot-id",
        &id,
    ]
    .join(" ");
    k.job(
        "shop-dr",
        "data-restore",
        &cmd,
        Some("data-restored"),
        &secret,
    );
    k.wait_complete("shop-dr", "data-restore");
    let mut expected = tree(&source);
    expected.remove("cache/tmp.bin");
    expected.remove("logs/app.log");
    assert_eq!(
        tree(&target),
        expected,
        "restored files differ from the source"
    );
    let restored = k.kdmp("VolumeBackup", "shop-dr", "data-restore").unwrap();
    assert_eq!(restored["status"]["progressPercentage"], json!(100.0));
    assert!(restored["status"]["totalBytes"].as_u64().unwrap() >= 320_000);
    assert_eq!(
        k.sim.warnings(),
        Vec::<String>::new(),
        "fields the API server dropped"
    );
}

#[test]
fn kdmp_delete_and_maintenance_update_their_objects_and_a_kopia_location_is_refused() {
    if fs_backend_only() {
        return;
    }
    let k = Kdmp::start();
    k.volume(NS, "data", &small_files());
    let id = backup(&k, "b1", "data", "")["status"]["snapshotID"]
        .as_str()
        .unwrap()
        .to_string();

    // A volume KDMP backed up with kopia before the switch.
    k.volume(NS, "legacy", &[("a", b"a".to_vec())]);
    let legacy = k.repository("shop-legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("kopia.repository.f"), b"{}").unwrap();
    let export = "export-legacy";
    let secret = k.cred_secret(NS, export);
    k.job(
        NS,
        "legacy-backup",
        &backup_cmd("legacy-backup", "legacy", export, ""),
        Some("legacy"),
        &secret,
    );
    k.wait_failed(NS, "legacy-backup");
    let vb = k.kdmp("VolumeBackup", NS, "legacy-backup").unwrap();
    let error = vb["status"]["lastKnownError"].as_str().unwrap_or_default();
    assert!(
        error.contains("kopia repository") && error.contains("kopia executor image"),
        "{error:?}"
    );
    assert!(error.chars().count() <= 1000);
    assert_ne!(vb["status"]["progressPercentage"], json!(100.0));

    // Delete: the snapshot goes; a second delete finds it gone and still succeeds.
    for (round, vbd) in ["delete-1", "delete-2"].iter().enumerate() {
        k.sim
            .create(json!({"apiVersion": KDMP_API, "kind": "VolumeBackupDelete",
                "metadata": {"name": vbd, "namespace": NS},
                "spec": {"pvcName": "data", "snapshotID": id}}))
            .unwrap();
        let job = format!("{vbd}-job");
        let secret = k.cred_secret(NS, &format!("export-{vbd}"));
        k.job(
            NS,
            &job,
            &delete_cmd("data", &secret, &id, vbd),
            None,
            &secret,
        );
        k.wait_complete(NS, &job);
        let snapshots = std::fs::read_dir(k.repository("shop-data").join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(snapshots, 0, "round {round}: the snapshot is still there");
        let object = k.kdmp("VolumeBackupDelete", NS, vbd).unwrap();
        assert!(object.get("status").is_none() || object["status"]["status"] != "Failed");
    }
    // A delete in the kopia repository fails into its VolumeBackupDelete.
    k.sim
        .create(json!({"apiVersion": KDMP_API, "kind": "VolumeBackupDelete",
            "metadata": {"name": "delete-legacy", "namespace": NS},
            "spec": {"pvcName": "legacy", "snapshotID": "k0123"}}))
        .unwrap();
    let secret = k.cred_secret(NS, "export-delete-legacy");
    k.job(
        NS,
        "delete-legacy-job",
        &delete_cmd("legacy", &secret, "0123abcd", "delete-legacy"),
        None,
        &secret,
    );
    k.wait_failed(NS, "delete-legacy-job");
    let failed = k.sim.wait_for("VolumeBackupDelete Failed", PATIENCE, |_| {
        let o = k.kdmp("VolumeBackupDelete", NS, "delete-legacy")?;
        (o["status"]["status"] == "Failed").then_some(o)
    });
    assert!(
        failed["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("kopia repository"),
        "{failed}"
    );

    // Maintenance of the whole location: every cairn repository recorded, under the Go
    // field names; the kopia repository is not cairn's to maintain.
    k.sim
        .create(
            json!({"apiVersion": KDMP_API, "kind": "BackupLocationMaintenance",
            "metadata": {"name": "bl-nfs-maintenance", "namespace": "kube-system"},
            "spec": {"BackuplocationName": "bl-nfs", "CredSecret": "cred-secret-maint"}}),
        )
        .unwrap();
    let secret = k.cred_secret("kube-system", "maint");
    for kind in ["quick", "full"] {
        let job = format!("maintenance-{kind}");
        let cmd = [
            "/kopiaexecutor",
            "maintenance",
            "--cred-secret-name",
            &secret,
            "--cred-secret-namespace",
            "kube-system",
            "--maintenance-status-name",
            "bl-nfs-maintenance",
            "--maintenance-status-namespace",
            "kube-system",
            "--maintenance-type",
            kind,
        ]
        .join(" ");
        k.job("kube-system", &job, &cmd, None, &secret);
        k.wait_complete("kube-system", &job);
    }
    let blm = k
        .kdmp(
            "BackupLocationMaintenance",
            "kube-system",
            "bl-nfs-maintenance",
        )
        .unwrap();
    for field in ["QuickMaintenanceRepoStatus", "FullMaintenanceRepoStatus"] {
        let runs = blm["status"][field]
            .as_object()
            .unwrap_or_else(|| panic!("{blm}"));
        let keys: Vec<&String> = runs.keys().collect();
        assert_eq!(keys, ["generic-backup/shop-data/"], "{field}: {blm}");
        let run = &runs["generic-backup/shop-data/"];
        assert_eq!(run["status"], "Successful", "{run}");
        assert_eq!(run["reason"], "");
        assert!(
            run["lastRunTimestamp"].as_str().unwrap().ends_with('Z'),
            "{run}"
        );
    }
    assert_eq!(
        k.sim.warnings(),
        Vec::<String>::new(),
        "fields the API server dropped"
    );
}

/// The binary answers as the executor both as `cairn kopiaexecutor` and under the name
/// `kopiaexecutor`; a command line KDMP would not build exits 2 naming what is wrong.
#[test]
fn the_executor_is_reached_by_name_and_by_subcommand_and_refuses_bad_command_lines() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("kopiaexecutor");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cairn"), &link).unwrap();
    let by_name = std::process::Command::new(&link)
        .args(["backup", "--volume-backup-name", "vb"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let by_subcommand = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["kopiaexecutor", "backup", "--volume-backup-name", "vb"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    for out in [&by_name, &by_subcommand] {
        assert_eq!(out.status.code(), Some(2), "{}", crate::common::text(out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("backup needs --repository"), "{stderr}");
    }
    let unknown = std::process::Command::new(&link)
        .arg("snapshot")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown operation \"snapshot\""));
}
