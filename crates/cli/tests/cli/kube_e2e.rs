//! The Kubernetes flow end to end: the real `cairn kube controller` binary against the
//! simulated cluster of `cairn-kube-sim` (API server, CSI snapshotter, provisioner, Job
//! controller, and a kubelet that runs each Job's pod as a process of the real `cairn`
//! binary), on the backend `CAIRN_TEST_BACKEND` names. Every wait is bounded.

use crate::common::text;
use cairn_kube_sim::{Image, Sim, SimOptions, SnapshotBehaviour};
use cairn_storage::testing::{fresh_location, TestBackend, TestLocation};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const IMAGE: &str = "cairn:sim";
pub(crate) const APP_IMAGE: &str = "app:sim";
pub(crate) const NS: &str = "shop";
pub(crate) const PASSWORD: &str = "e2e-password";
/// Bound on any single wait; generous for 2 busy cores.
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);
const DRIVER: &str = "sim.csi.cairn.io";

/// The cluster, the repository and the controller process of one test.
pub(crate) struct Cluster {
    pub(crate) sim: Sim,
    /// The repository; keeps a local repository directory alive for the test.
    pub(crate) location: TestLocation,
    controller: Child,
    dir: tempfile::TempDir,
}

/// ConfigMap `cairn-config` values for a test.
pub(crate) fn config(extra: &[(&str, &str)]) -> Value {
    let mut data: BTreeMap<&str, &str> = [("SNAPSHOT_TIMEOUT", "1m")].into();
    data.extend(extra.iter().copied());
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "cairn-config", "namespace": "cairn-system"}, "data": data})
}

fn s3() -> bool {
    matches!(TestBackend::from_env().unwrap(), TestBackend::S3 { .. })
}

/// Tests of the controller's own logic (job limits, timeouts, cancel, configuration) run
/// on the fs backend only: the repository's backend does not change what they check, and
/// CI's S3 pass stays short.
pub(crate) fn controller_logic_only() -> bool {
    if s3() {
        eprintln!("skipping on S3: controller logic, covered by the fs run");
    }
    s3()
}

impl Cluster {
    /// [`Cluster::start_with_maintenance`] with maintenance suspended.
    pub(crate) fn start(name: &str, config_map: Value) -> Cluster {
        Cluster::start_with_maintenance(name, config_map, json!({"suspend": true}))
    }

    /// A cluster with cairn's CRDs, namespace `shop` (ServiceAccount `cairn-job`, the
    /// repository Secrets, StorageClass `fast` with a VolumeSnapshotClass), an
    /// initialised repository `main`, and the controller running.
    fn start_with_maintenance(name: &str, config_map: Value, maintenance: Value) -> Cluster {
        Cluster::start_with_args(name, config_map, maintenance, &[])
    }

    /// [`Cluster::start_with_maintenance`], with `args` added to the controller's command.
    pub(crate) fn start_with_args(
        name: &str,
        config_map: Value,
        maintenance: Value,
        args: &[&str],
    ) -> Cluster {
        Cluster::start_with_job_env(name, config_map, maintenance, args, &[])
    }

    /// [`Cluster::start_with_args`], with `job_env` added to every Job pod's environment.
    pub(crate) fn start_with_job_env(
        name: &str,
        config_map: Value,
        maintenance: Value,
        args: &[&str],
        job_env: &[(&str, &str)],
    ) -> Cluster {
        // Checkpoints every 300 ms instead of every 5 minutes: a retry of a backup that
        // ran for seconds has something to resume from.
        let mut env = vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            ("CAIRN_CHECKPOINT_INTERVAL".to_string(), "300ms".to_string()),
        ];
        env.extend(job_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.extend(std::env::vars().filter(|(k, _)| {
            k.starts_with("AWS_") && k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY"
        }));
        let image = Image {
            entrypoint: PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
            env,
            termination_log_env: Some("CAIRN_TERMINATION_LOG".into()),
        };
        let sim = Sim::start(SimOptions {
            images: [
                (IMAGE.to_string(), image),
                // An application pod: a process that waits, for rules to exec into.
                (
                    APP_IMAGE.to_string(),
                    Image {
                        entrypoint: "/bin/sleep".into(),
                        ..Image::default()
                    },
                ),
            ]
            .into(),
            ..SimOptions::default()
        });
        for crd in cairn_kube::crd::crds() {
            sim.create(serde_json::to_value(crd).unwrap()).unwrap();
        }
        let location = fresh_location(name).unwrap();
        let mut credentials = json!({});
        if s3() {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                credentials[key] =
                    json!(std::env::var(key).expect("s3.sh exports AWS credentials"));
            }
        }
        let objects = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cairn-system"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cairn-job", "namespace": NS}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-password", "namespace": NS},
                   "stringData": {"password": format!("{PASSWORD}\n")}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-credentials", "namespace": NS},
                   "stringData": credentials}),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"},
                   "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                   "metadata": {"name": "fast-snap"}, "driver": DRIVER, "deletionPolicy": "Delete"}),
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
                   "metadata": {"name": "main", "namespace": NS},
                   "spec": {"location": location.location(),
                            "credentialsSecret": {"name": "repo-credentials"},
                            "passwordSecret": {"name": "repo-password", "key": "password"},
                            "maintenance": maintenance}}),
            config_map,
        ];
        for o in objects {
            sim.create(o).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["init", "-r", location.location()])
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", text(&out));
        let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
        let controller = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "kube",
                "controller",
                "--namespace",
                "cairn-system",
                "--job-image",
                IMAGE,
            ])
            .args(args)
            // Many clusters run at once: none takes the default metrics port unless asked.
            .args(if args.contains(&"--metrics-address") {
                &[][..]
            } else {
                &["--metrics-address", "0"][..]
            })
            .env("KUBECONFIG", sim.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Cluster {
            sim,
            location,
            controller,
            dir,
        }
    }

    /// Creates PVC `name` in `shop` (class `fast`), waits until it is bound, and fills it.
    pub(crate) fn volume(&self, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        self.sim
            .create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap();
        let dir = self
            .sim
            .wait_for(&format!("PVC {name} bound"), PATIENCE, |sim| {
                sim.volume_dir(NS, name)
            });
        for (path, data) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        dir
    }

    pub(crate) fn create(&self, object: Value) {
        self.sim.create(object).unwrap();
    }

    pub(crate) fn backup(&self, name: &str, pvc: &str, extra: Value) {
        let mut spec = json!({"source": {"persistentVolumeClaim": pvc}, "repository": "main"});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        self.create(
            json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}),
        );
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let api_version = match kind {
            "VolumeSnapshot" => "snapshot.storage.k8s.io/v1",
            "Job" => "batch/v1",
            "PersistentVolumeClaim" | "Pod" => "v1",
            _ => "cairn.io/v1alpha1",
        };
        self.sim.get(api_version, kind, Some(NS), name)
    }

    /// Waits for the resource's `status.phase` to be one of `phases`; returns the object.
    pub(crate) fn wait_phase(&self, kind: &str, name: &str, phases: &[&str]) -> Value {
        self.sim
            .wait_for(&format!("{kind} {name} in {phases:?}"), PATIENCE, |_| {
                let o = self.get(kind, name)?;
                let phase = o["status"]["phase"].as_str()?;
                if !phases.contains(&phase)
                    && matches!(
                        phase,
                        "Completed" | "PartiallyFailed" | "Failed" | "Canceled"
                    )
                {
                    panic!(
                        "{kind} {name} ended {phase}: {}\ncontroller log:\n{}",
                        o["status"],
                        self.controller_log()
                    );
                }
                phases.contains(&phase).then_some(o)
            })
    }

    pub(crate) fn controller_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// The controller (run with `--log-format json`) wrote only JSON lines, and logged from
    /// the reconcile of each of `resources` with its namespace and name; its Jobs were told
    /// to log JSON too.
    fn assert_json_log_names_resources(&self, resources: &[(&str, &str)]) {
        let log = self.controller_log();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
            .collect();
        for (kind, name) in resources {
            assert!(
                lines.iter().any(|l| l["span"]["kind"] == *kind
                    && l["span"]["namespace"] == NS
                    && l["span"]["resource"] == *name
                    && l["fields"]["message"].is_string()),
                "no log line of the reconcile of {kind} {NS}/{name}:\n{log}"
            );
        }
        let jobs = self.sim.list("batch/v1", "Job", Some(NS));
        assert!(!jobs.is_empty());
        for job in &jobs {
            let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
            let format = env
                .as_array()
                .and_then(|e| e.iter().find(|v| v["name"] == "CAIRN_LOG_FORMAT"));
            assert_eq!(format.map(|v| &v["value"]), Some(&json!("json")), "{job}");
        }
    }

    /// The backup Jobs the controller created, by name, in creation order.
    fn jobs_created(&self) -> Vec<String> {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.code == 201)
            .filter(|r| r.body["metadata"]["labels"]["cairn.io/job-kind"] == "backup")
            .map(|r| {
                r.body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Progress patches the job pods sent for VolumeBackup `name`.
    fn progress_patches(&self, name: &str) -> Vec<Value> {
        let path = format!("/apis/cairn.io/v1alpha1/namespaces/{NS}/volumebackups/{name}/status");
        self.sim
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == path && r.code == 200)
            .filter(|r| {
                r.body["status"]
                    .as_object()
                    .is_some_and(|s| s.len() == 1 && s.contains_key("progress"))
            })
            .map(|r| r.body["status"]["progress"].clone())
            .collect()
    }

    /// No unknown field was pruned from anything anyone wrote.
    pub(crate) fn assert_no_pruned_fields(&self) {
        assert_eq!(
            self.sim.warnings(),
            Vec::<String>::new(),
            "fields the API server dropped"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
        if std::thread::panicking() {
            eprintln!("controller log:\n{}", self.controller_log());
        }
    }
}

/// Deterministic, incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    crate::common::xorshift_bytes(seed, len)
}

/// Relative path -> content of every regular file under `root`.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let p = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Regression: logs written to a file (a pod's log, whose tail becomes the failure
/// reason of a crashed Job) carried terminal colour codes.
#[test]
fn job_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, source) = (dir.path().join("repo"), dir.path().join("src"));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a"), b"a").unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("init")
        .arg("-r")
        .arg(&repo)
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["job", "backup", "--location"])
        .arg(&repo)
        .arg("--source")
        .arg(&source)
        .arg("--termination-log")
        .arg(dir.path().join("termination-log"))
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("HOME", dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && log.contains("backup done"),
        "{}",
        text(&out)
    );
    assert!(!log.contains('\x1b'), "escape codes in a log file: {log:?}");
}

pub(crate) fn small_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("db/table.dat", noise(1, 300_000)),
        ("db/index/a.idx", noise(2, 20_000)),
        ("README", b"hello from the volume\n".to_vec()),
        ("empty", Vec::new()),
    ]
}

#[test]
fn snapshot_backup_completes_and_restores_into_a_new_pvc() {
    let c = Cluster::start_with_args(
        "e2e-snapshot",
        config(&[]),
        json!({"suspend": true}),
        &["--log-format", "json"],
    );
    let source = c.volume("data", &small_files());
    c.backup("nightly", "data", json!({}));
    let vb = c.wait_phase("VolumeBackup", "nightly", &["Completed"]);
    let status = &vb["status"];
    assert_eq!(status["mode"], "Snapshot", "{status}");
    assert_eq!(status["attempts"], 1);
    let id = status["snapshotId"]
        .as_str()
        .expect("snapshotId")
        .to_string();
    assert!(
        !c.progress_patches("nightly").is_empty(),
        "no progress patch from the job"
    );
    assert_eq!(c.jobs_created(), vec!["nightly-backup-1"]);
    // The mirror of the repository snapshot.
    let mirrored = c
        .sim
        .list("cairn.io/v1alpha1", "RepositorySnapshot", Some(NS));
    assert!(
        mirrored
            .iter()
            .any(|r| r["spec"]["snapshotId"] == id.as_str()),
        "{mirrored:?}"
    );
    // offload (default true): the VolumeSnapshot stays; the backupPVC goes.
    let vs_name = status["volumeSnapshotName"]
        .as_str()
        .expect("volumeSnapshotName");
    assert_eq!(
        c.get("VolumeSnapshot", vs_name).unwrap()["status"]["readyToUse"],
        true
    );
    let backup_pvc = status["backupPvcName"].as_str().unwrap().to_string();
    c.sim.wait_for("backupPVC deleted", PATIENCE, |_| {
        c.get("PersistentVolumeClaim", &backup_pvc)
            .is_none()
            .then_some(())
    });

    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": "back", "namespace": NS},
        "spec": {"source": {"volumeBackup": "nightly"},
                 "target": {"persistentVolumeClaim": "restored",
                            "create": {"storageClassName": "fast", "size": "1Gi"}}}}),
    );
    c.wait_phase("VolumeRestore", "back", &["Completed"]);
    let restored = c
        .sim
        .volume_dir(NS, "restored")
        .expect("restored PVC bound");
    assert_eq!(tree(&restored), tree(&source));
    c.assert_no_pruned_fields();
    c.assert_json_log_names_resources(&[("VolumeBackup", "nightly"), ("VolumeRestore", "back")]);
}

#[test]
fn direct_backup_and_offload_false_leave_no_volume_snapshot() {
    let c = Cluster::start("e2e-direct", config(&[]));
    c.volume("data", &small_files());
    c.backup("direct", "data", json!({"mode": "Direct"}));
    c.backup("local-gone", "data", json!({"offload": false}));
    let direct = c.wait_phase("VolumeBackup", "direct", &["Completed"]);
    assert_eq!(direct["status"]["mode"], "Direct");
    assert!(
        direct["status"]["volumeSnapshotName"].is_null(),
        "{}",
        direct["status"]
    );
    // The direct Job mounted the live PVC.
    let job = c
        .sim
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.body["metadata"]["name"] == "direct-backup-1")
        .unwrap();
    let volumes = &job.body["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "data"),
        "{volumes}"
    );
    let other = c.wait_phase("VolumeBackup", "local-gone", &["Completed"]);
    let created_vs = c
        .sim
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path.ends_with("/volumesnapshots"));
    assert!(created_vs, "offload: false still snapshots first");
    assert!(
        other["status"]["volumeSnapshotName"].is_null(),
        "{}",
        other["status"]
    );
    c.sim.wait_for("VolumeSnapshots deleted", PATIENCE, |sim| {
        sim.list("snapshot.storage.k8s.io/v1", "VolumeSnapshot", Some(NS))
            .is_empty()
            .then_some(())
    });
    c.assert_no_pruned_fields();
}

impl Cluster {
    /// The pod of Job `job` once its process runs.
    fn running_pod(&self, job: &str) -> String {
        self.sim
            .wait_for(&format!("pod of {job} running"), PATIENCE, |sim| {
                sim.list("v1", "Pod", Some(NS))
                    .into_iter()
                    .find(|p| {
                        p["metadata"]["labels"]["job-name"] == job
                            && p["status"]["phase"] == "Running"
                    })
                    .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            })
    }

    /// Backup Jobs without a Complete or Failed condition.
    fn running_jobs(&self) -> usize {
        self.sim
            .list("batch/v1", "Job", Some(NS))
            .iter()
            .filter(|j| j["metadata"]["labels"]["cairn.io/job-kind"] == "backup")
            .filter(|j| {
                !j["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                    })
                })
            })
            .count()
    }

    /// The termination message of the (last) pod of Job `job`.
    fn termination_message(&self, job: &str) -> Value {
        let pods = self.sim.list("v1", "Pod", Some(NS));
        let pod = pods
            .iter()
            .rfind(|p| p["metadata"]["labels"]["job-name"] == job)
            .unwrap_or_else(|| panic!("no pod of {job}"));
        let text = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or_default();
        serde_json::from_str(text).unwrap_or(Value::Null)
    }
}

/// A volume big enough that uploading it takes a few seconds here.
fn big_files() -> Vec<(&'static str, Vec<u8>)> {
    const NAMES: [&str; 12] = [
        "d/0", "d/1", "d/2", "d/3", "d/4", "d/5", "d/6", "d/7", "d/8", "d/9", "d/10", "d/11",
    ];
    NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, noise(100 + i as u64, 16 << 20)))
        .collect()
}

#[test]
fn ten_backups_never_run_more_than_three_jobs() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-limit", config(&[("KDMP_BACKUP_JOB_LIMIT", "3")]));
    c.volume("data", &small_files());
    let names: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    for n in &names {
        c.backup(n, "data", json!({"mode": "Direct"}));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(c.running_jobs());
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        for n in &names {
            c.wait_phase("VolumeBackup", n, &["Completed"]);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert!(most <= 3, "{most} backup Jobs ran at once; the limit is 3");
    assert_eq!(
        most, 3,
        "the limit was never reached: the test proves nothing"
    );
    assert_eq!(c.jobs_created().len(), 10, "{:?}", c.jobs_created());
    c.assert_no_pruned_fields();
}

#[test]
fn an_api_server_restart_mid_backup_still_completes_once() {
    let c = Cluster::start("e2e-restart", config(&[]));
    c.volume("data", &big_files());
    c.backup("steady", "data", json!({"mode": "Direct"}));
    c.running_pod("steady-backup-1");
    c.sim.restart_api_server(Duration::from_secs(2));
    let vb = c.wait_phase("VolumeBackup", "steady", &["Completed"]);
    assert_eq!(vb["status"]["attempts"], 1, "{}", vb["status"]);
    assert_eq!(c.jobs_created(), vec!["steady-backup-1"]);
    // The controller re-listed after its watches got 410 Gone.
    let relisted =
        c.sim.requests().iter().any(|r| {
            r.path.ends_with("/volumebackups") && !r.query.iter().any(|(k, _)| k == "watch")
        });
    assert!(relisted);
    c.assert_no_pruned_fields();
}

/// Bytes per directory of the resume test's volume.
const PER_DIR: u64 = 24 << 20;

/// Regression: job mode had no way to set the checkpoint interval, so a retry resumed
/// nothing unless the killed attempt had run for 5 minutes (`--checkpoint-interval`,
/// `CAIRN_CHECKPOINT_INTERVAL`).
#[test]
fn a_killed_job_pod_is_retried_and_the_retry_uploads_only_what_its_checkpoint_lacks() {
    // The first attempt reads at 24 MiB/s (`--limit-read` through the environment), so
    // it is still running when its first checkpoint is seen and the pod is killed.
    let c = Cluster::start_with_job_env(
        "e2e-resume",
        config(&[]),
        json!({"suspend": true}),
        &[],
        &[("CAIRN_LIMIT_READ", "24Mi")],
    );
    // 8 directories of 1 MiB and PER_DIR - 1 MiB of data (noise: zeros, sparse or not,
    // cost next to nothing). Checkpoints fall between entries and within files.
    let dir = c.volume("data", &[]);
    for i in 0..8u64 {
        let d = dir.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a"), noise(200 + i, 1 << 20)).unwrap();
        std::fs::write(d.join("b"), noise(300 + i, (PER_DIR - (1 << 20)) as usize)).unwrap();
    }
    c.backup("flaky", "data", json!({"mode": "Direct"}));
    let pod = c.running_pod("flaky-backup-1");
    // Kill it right after its first checkpoint, while it uploads the rest.
    let log = c.sim.shared().pod_dir(NS, &pod).join("log");
    c.sim.wait_for("a checkpoint", PATIENCE, |_| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.contains("checkpoint") && text.contains("written")).then_some(())
    });
    assert!(
        c.sim.kill_pod_process(NS, &pod),
        "the first attempt ended before it could be killed"
    );
    let vb = c.wait_phase("VolumeBackup", "flaky", &["Completed"]);
    assert_eq!(vb["status"]["attempts"], 2, "{}", vb["status"]);
    assert_eq!(c.jobs_created(), vec!["flaky-backup-1", "flaky-backup-2"]);
    let retrying = vb["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Retrying")
        .map(|c| c["message"].as_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        retrying.starts_with("attempt 1 of 3 failed"),
        "{}",
        vb["status"]
    );
    eprintln!("retrying: {retrying}");
    let second = c.termination_message("flaky-backup-2");
    // "snapshot <id>: <N> files new, <C> changed, <U> unchanged; read <R> of <T>, added <A>"
    let message = second["message"].as_str().unwrap_or_default().to_string();
    eprintln!("second attempt: {message}");
    let total = second["totalBytes"].as_u64().unwrap();
    assert_eq!(total, 8 * PER_DIR, "{second}");
    // What the checkpoint holds is neither read nor uploaded again: the retry takes the
    // killed attempt's checkpoint as its parent, so the files it holds whole are
    // unchanged and the one it holds in part is read from where it stopped.
    let unchanged: u64 = message
        .split(" unchanged")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no unchanged count in {message:?}"));
    let read = message
        .split(" read ")
        .nth(1)
        .and_then(parse_size)
        .unwrap_or_else(|| panic!("no read size in {message:?}"));
    assert!(
        unchanged >= 1 && read < total - (1 << 20),
        "the retry read {read} of {total} bytes, {unchanged} files unchanged: it did not \
         resume ({message})"
    );
    let added = message
        .rsplit("added ")
        .next()
        .and_then(parse_size)
        .unwrap_or_else(|| panic!("no added size in {message:?}"));
    assert!(
        added < total - (1 << 20),
        "the retry uploaded {added} bytes of {total}: nothing resumed ({message})"
    );
    assert!(!retrying.contains('\x1b'), "{retrying}");
}

/// Regression: a Job whose pod never started (here: the only node's kubelet is down) left
/// the VolumeBackup Uploading forever. Each attempt now fails after JOB_START_TIMEOUT with
/// the pod's reason, and the backup fails once the attempts are used up.
#[test]
fn a_job_whose_pod_never_starts_fails_the_backup_after_the_start_timeout() {
    let c = Cluster::start("e2e-nostart", config(&[("JOB_START_TIMEOUT", "2s")]));
    c.volume("data", &[("a", b"data".to_vec())]);
    c.sim.set_node_dead("sim-node-1", true);
    c.backup("stuck", "data", json!({"mode": "Direct"}));
    let vb = c.wait_phase("VolumeBackup", "stuck", &["Failed"]);
    let reason = vb["status"]["failureReason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("did not start within 2s") && reason.contains("after 3 attempts"),
        "{}",
        vb["status"]
    );
    assert_eq!(c.jobs_created().len(), 3, "{:?}", c.jobs_created());
    // The stuck pods were deleted with their Jobs, not left Pending.
    c.sim.set_node_dead("sim-node-1", false);
}

/// `12.3 MiB` -> bytes.
fn parse_size(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let unit = match words.next()?.trim_end_matches([',', ';']) {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * unit) as u64)
}

#[test]
fn snapshots_that_fail_or_never_become_ready_fail_the_backup_and_are_deleted() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-snaptimeout", config(&[("SNAPSHOT_TIMEOUT", "2s")]));
    c.volume("data", &small_files());
    c.sim
        .set_snapshot_behaviour("stuck-snapshot", SnapshotBehaviour::NeverReady);
    c.sim.set_snapshot_behaviour(
        "broken-snapshot",
        SnapshotBehaviour::FailAfter(Duration::from_millis(200), "disk on fire".into()),
    );
    c.backup("stuck", "data", json!({}));
    c.backup("broken", "data", json!({}));
    let broken = c.wait_phase("VolumeBackup", "broken", &["Failed"]);
    let reason = broken["status"]["failureReason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("failed: disk on fire"), "{reason}");
    let vb = c.wait_phase("VolumeBackup", "stuck", &["Failed"]);
    let reason = vb["status"]["failureReason"].as_str().unwrap_or_default();
    assert!(reason.contains("not ready to use after 2s"), "{reason}");
    c.sim.wait_for("VolumeSnapshots deleted", PATIENCE, |_| {
        (c.get("VolumeSnapshot", "stuck-snapshot").is_none()
            && c.get("VolumeSnapshot", "broken-snapshot").is_none())
        .then_some(())
    });
    assert!(c.jobs_created().is_empty());
}

#[test]
fn cancel_during_upload_removes_the_job_the_pvc_and_the_snapshot() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-cancel", config(&[]));
    c.volume("data", &big_files());
    c.backup("oops", "data", json!({}));
    c.running_pod("oops-backup-1");
    let vb = c.get("VolumeBackup", "oops").unwrap();
    let backup_pvc = vb["status"]["backupPvcName"].as_str().unwrap().to_string();
    let snapshot = vb["status"]["volumeSnapshotName"]
        .as_str()
        .unwrap()
        .to_string();
    c.sim
        .merge_patch(
            "cairn.io/v1alpha1",
            "VolumeBackup",
            Some(NS),
            "oops",
            None,
            json!({"spec": {"cancel": true}}),
        )
        .unwrap();
    c.wait_phase("VolumeBackup", "oops", &["Canceled"]);
    let left = || {
        let mut left = Vec::new();
        if c.get("Job", "oops-backup-1").is_some() {
            left.push("the Job".to_string());
        }
        for p in c
            .sim
            .list("v1", "Pod", Some(NS))
            .iter()
            .filter(|p| p["metadata"]["labels"]["job-name"] == "oops-backup-1")
        {
            left.push(format!(
                "pod {} ({})",
                p["metadata"]["name"], p["status"]["phase"]
            ));
        }
        if let Some(p) = c.get("PersistentVolumeClaim", &backup_pvc) {
            left.push(format!("the backupPVC {}", p["metadata"]));
        }
        if let Some(v) = c.get("VolumeSnapshot", &snapshot) {
            left.push(format!("the VolumeSnapshot {}", v["metadata"]));
        }
        left
    };
    let start = Instant::now();
    while !left().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still there after a cancel: {:?}",
            left()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_bad_config_map_value_blocks_backups_until_it_is_fixed() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start(
        "e2e-badconfig",
        config(&[("KDMP_BACKUP_JOB_LIMIT", "lots")]),
    );
    c.volume("data", &small_files());
    c.backup("waits", "data", json!({"mode": "Direct"}));
    let blocked = c.sim.wait_for("ConfigValid=False", PATIENCE, |_| {
        let vb = c.get("VolumeBackup", "waits")?;
        vb["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "ConfigValid" && c["status"] == "False")
            .map(|c| c["message"].as_str().unwrap_or_default().to_string())
    });
    assert!(
        blocked.contains("KDMP_BACKUP_JOB_LIMIT") && blocked.contains("lots"),
        "{blocked}"
    );
    assert!(c.jobs_created().is_empty());
    c.sim
        .merge_patch(
            "v1",
            "ConfigMap",
            Some("cairn-system"),
            "cairn-config",
            None,
            json!({"data": {"KDMP_BACKUP_JOB_LIMIT": "2"}}),
        )
        .unwrap();
    // The controller watches its ConfigMap: the fix is acted on at once, not at the
    // blocked backup's next poll (30 s).
    c.sim
        .wait_for("a Job after the fix", Duration::from_secs(15), |_| {
            (!c.jobs_created().is_empty()).then_some(())
        });
    let vb = c.wait_phase("VolumeBackup", "waits", &["Completed"]);
    let conditions = vb["status"]["conditions"].as_array().unwrap();
    assert!(
        !conditions.iter().any(|c| c["type"] == "ConfigValid"),
        "{conditions:?}"
    );
}

/// Regression: with a BackupRule, the VolumeSnapshot was created with an empty class
/// name (the controller listed VolumeSnapshotClasses only in the reconcile that chose
/// the mode, and the pre commands put the snapshot off to the next one).
#[test]
fn a_backup_with_a_rule_runs_it_around_a_snapshot_that_keeps_its_class() {
    if controller_logic_only() {
        return;
    }
    let c = Cluster::start("e2e-rule", config(&[]));
    let volume = c.volume("data", &small_files());
    c.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-0", "namespace": NS, "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": APP_IMAGE, "args": ["600"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/db"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}));
    c.sim.wait_for("db-0 running", PATIENCE, |_| {
        (c.get("Pod", "db-0")?["status"]["phase"] == "Running").then_some(())
    });
    // pre leaves a marker in the volume (the snapshot has it); post removes it.
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRule",
        "metadata": {"name": "quiesce", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "container": "db",
                 "pre": [{"command": ["touch", "/var/lib/db/frozen"]}],
                 "post": [{"command": ["rm", "/var/lib/db/frozen"]}]}}),
    );
    c.backup("quiet", "data", json!({"rule": {"name": "quiesce"}}));
    let vb = c.wait_phase("VolumeBackup", "quiet", &["Completed"]);
    let hooks = &vb["status"]["hooks"];
    assert_eq!(hooks["pre"]["succeeded"], true, "{hooks}");
    assert_eq!(hooks["post"]["succeeded"], true, "{hooks}");
    assert!(
        !volume.join("frozen").exists(),
        "post did not run in the pod"
    );
    // The snapshot was cut between pre and post.
    c.create(
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
        "metadata": {"name": "check", "namespace": NS},
        "spec": {"source": {"volumeBackup": "quiet"},
                 "target": {"persistentVolumeClaim": "checked",
                            "create": {"storageClassName": "fast", "size": "1Gi"}}}}),
    );
    c.wait_phase("VolumeRestore", "check", &["Completed"]);
    let restored = c.sim.volume_dir(NS, "checked").unwrap();
    assert!(
        restored.join("frozen").exists(),
        "the backup was not taken between pre and post"
    );
    let execs: Vec<String> = c
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/pods/db-0/exec"))
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
        vec!["touch /var/lib/db/frozen", "rm /var/lib/db/frozen"]
    );
    c.assert_no_pruned_fields();
}

#[test]
fn maintenance_and_catalog_jobs_run_on_their_intervals_one_at_a_time() {
    let c = Cluster::start_with_maintenance(
        "e2e-maintenance",
        config(&[]),
        json!({"quickInterval": "2s", "fullInterval": "6s"}),
    );
    c.volume("data", &small_files());
    c.backup("first", "data", json!({"mode": "Direct"}));
    c.wait_phase("VolumeBackup", "first", &["Completed"]);
    let kind = |j: &Value| {
        j["metadata"]["labels"]["cairn.io/job-kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let running = |j: &Value| {
        !j["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            })
        })
    };
    // Watch the repository's Jobs for a while: quick and full runs come and go.
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(15) {
        let jobs = c.sim.list("batch/v1", "Job", Some(NS));
        let maintenance = jobs
            .iter()
            .filter(|j| kind(j) == "maintenance" && running(j))
            .count();
        most = most.max(maintenance);
        std::thread::sleep(Duration::from_millis(50));
    }
    let repo = c.get("BackupRepository", "main").unwrap();
    let status = &repo["status"];
    assert!(most >= 1, "no maintenance Job ran: {status}");
    // A catalog Job and one maintenance Job may overlap; two maintenance runs never do.
    assert!(
        most <= 2,
        "{most} maintenance and catalog Jobs at once: {status}"
    );
    let created: Vec<String> = c
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.code == 201)
        .map(|r| {
            r.body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let quick = created.iter().filter(|n| n.contains("quick")).count();
    let full = created.iter().filter(|n| n.contains("full")).count();
    assert!(full >= 1 && quick >= 1, "{created:?}");
    for run in ["lastQuick", "lastFull"] {
        let r = &status["maintenance"][run];
        assert!(
            matches!(r["result"].as_str(), Some("Succeeded" | "Running")),
            "{run}: {status}"
        );
        // A succeeded run reports the repository it left: the backup's packs and blobs,
        // and no recorded damage.
        if r["result"] == "Succeeded" {
            let figure = |f: &str| {
                r[f].as_u64()
                    .unwrap_or_else(|| panic!("{run}.{f}: {status}"))
            };
            assert!(
                figure("repositoryBytes") > 0 && figure("blobCount") > 0,
                "{status}"
            );
            assert_eq!(figure("damageRecords"), 0, "{status}");
            figure("bytesReclaimed");
        }
    }
    assert!(status["lastCatalogRefresh"].is_string(), "{status}");
    let mirrored = c
        .sim
        .list("cairn.io/v1alpha1", "RepositorySnapshot", Some(NS));
    assert_eq!(mirrored.len(), 1, "{mirrored:?}");
    c.assert_no_pruned_fields();
}
