//! Job mode end to end: the `cairn` binary run as the controller's Jobs run it (arguments,
//! environment, and Secrets/ConfigMap mounted as files, here files in a temp dir), against a
//! real repository (local, or S3 with `CAIRN_TEST_BACKEND=s3`), reporting to a mock API
//! server on 127.0.0.1 that a kubeconfig points at. Checks the restored tree, the progress
//! patches, the RepositorySnapshot mirror and the termination message.

use crate::common;

use cairn_storage::testing::{fresh_location, TestBackend};
use common::{kubeconfig, serve_api, text, ApiRequest};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "job-test-password";
/// What `cairn-config` would hold: entries for the volume's class and for another one.
const EXCLUDE_LIST: &str = "fast=cache/,*.tmp\nslow=data/\n";

/// One request the mock API server received.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// A Kubernetes API stand-in: records every request and answers with plausible objects.
struct MockApi {
    port: u16,
    log: Arc<Mutex<Vec<Recorded>>>,
    /// RepositorySnapshots the list call returns.
    existing: Arc<Mutex<Vec<Value>>>,
}

impl MockApi {
    fn start() -> MockApi {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let existing: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (l, e) = (log.clone(), existing.clone());
        let port = serve_api(move |request: ApiRequest| {
            let recorded = Recorded {
                method: request.method,
                path: request.path,
                content_type: request.content_type,
                body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
            };
            let reply = respond(&recorded, &e);
            l.lock().unwrap().push(recorded);
            ("200 OK", reply)
        });
        MockApi {
            port,
            log,
            existing,
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// A kubeconfig whose only cluster is this server, without credentials.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig(dir, self.port, None)
    }
}

fn respond(r: &Recorded, existing: &Mutex<Vec<Value>>) -> Value {
    if r.path.contains("/volumebackups/") {
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
               "metadata": {"name": "db-nightly", "namespace": "shop"},
               "spec": {"source": {"persistentVolumeClaim": "data-db-0"}, "repository": "main"}})
    } else if r.path.contains("/volumerestores/") {
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeRestore",
               "metadata": {"name": "db-restore", "namespace": "shop"},
               "spec": {"source": {"volumeBackup": "db-nightly"},
                        "target": {"persistentVolumeClaim": "data-db-restored"}}})
    } else if r.method == "GET" {
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "RepositorySnapshotList",
               "metadata": {}, "items": *existing.lock().unwrap()})
    } else if r.method == "DELETE" {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
    } else {
        // Server-side apply returns the object applied.
        r.body.clone()
    }
}

/// The files the controller mounts into a job pod, in a temp dir, and the repository.
struct Pod {
    dir: tempfile::TempDir,
    location: cairn_storage::testing::TestLocation,
    api: MockApi,
}

impl Pod {
    fn new(name: &str) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Secret volumes: one file per key, next to the `..data` machinery.
        std::fs::create_dir_all(root.join("password/..2026_01_01")).unwrap();
        std::fs::write(root.join("password/password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::create_dir_all(root.join("credentials/..2026_01_01")).unwrap();
        if let TestBackend::S3 { .. } = TestBackend::from_env().unwrap() {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                let value = std::env::var(key).expect("s3.sh exports AWS credentials");
                std::fs::write(root.join("credentials").join(key), value).unwrap();
            }
        }
        std::fs::create_dir_all(root.join("cache")).unwrap();
        let location = fresh_location(name).unwrap();
        let pod = Pod {
            dir,
            location,
            api: MockApi::start(),
        };
        let out = pod
            .cairn()
            .args(["init", "-r", pod.location.location()])
            .env("CAIRN_PASSWORD", PASSWORD)
            .envs(aws_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", text(&out));
        pod
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The binary with a clean environment: nothing a job pod would not have.
    fn cairn(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_LOG", "info");
        cmd
    }

    /// `cairn job <args> <repository args>` as objects.rs builds them, with the KDMP list in
    /// the environment and the kubeconfig of the mock API.
    fn job(&self, args: &[&str]) -> (Output, Value) {
        let termination = self.path("termination-log");
        let _ = std::fs::remove_file(&termination);
        let mut cmd = self.cairn();
        cmd.arg("job")
            .args(args)
            .args(["--namespace", "shop", "--repository", "main", "--location"])
            .arg(self.location.location())
            .arg("--password-file")
            .arg(self.path("password/password"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("--credentials-dir")
            .arg(self.path("credentials"))
            .arg("--termination-log")
            .arg(&termination)
            .args(["--progress-interval", "50ms"])
            .env("CAIRN_KDMP_EXCLUDE_FILE_LIST", EXCLUDE_LIST)
            .env("KUBECONFIG", self.api.kubeconfig(self.dir.path()))
            // S3 settings that are not credentials stay in the environment, as a pod's do.
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let out = cmd.output().unwrap();
        let outcome = std::fs::read_to_string(&termination)
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or(Value::Null);
        (out, outcome)
    }
}

/// The AWS variables `.ci/s3.sh start` exported, for commands outside job mode.
fn aws_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect()
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A small volume: nested files, an empty file, a symlink, odd modes, and entries the KDMP
/// list of class `fast` leaves out (`cache/`, `*.tmp`) and one only class `slow` would.
fn volume(root: &Path) -> u64 {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write(&root.join("db/base/16384/1259"), &big);
    write(&root.join("db/PG_VERSION"), b"16\n");
    write(&root.join("db/empty"), b"");
    write(&root.join("data/keep.bin"), &big[..1000]);
    write(&root.join("cache/blob"), b"excluded by class fast");
    write(&root.join("pgsql.tmp"), b"excluded by *.tmp");
    std::os::unix::fs::symlink("base/16384/1259", root.join("db/link")).unwrap();
    std::fs::set_permissions(
        root.join("db/PG_VERSION"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    (big.len() + 3 + 1000) as u64
}

/// Every entry below `root` except `skip` names: kind, mode, content or link target.
fn tree(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, skip, out);
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&path).unwrap();
                format!("file {mode:o} {} {}", data.len(), blake3_like(&data))
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

/// A cheap content fingerprint (FNV-1a 64); equality of trees is what matters here.
fn blake3_like(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn status_patches<'a>(log: &'a [Recorded], resource: &str) -> Vec<&'a Recorded> {
    log.iter()
        .filter(|r| r.path.ends_with(&format!("/{resource}/status")))
        .collect()
}

/// Progress patches are merge patches of status.progress that never go back, and the last
/// one carries the final numbers.
fn check_progress(patches: &[&Recorded], path: &str, done: u64, total: u64) {
    assert!(!patches.is_empty(), "no progress patch to {path}");
    let mut last = 0;
    for p in patches {
        assert_eq!(p.method, "PATCH");
        assert_eq!(p.path, path);
        assert_eq!(p.content_type, "application/merge-patch+json");
        let d = p.body["status"]["progress"]["bytesDone"].as_u64().unwrap();
        assert!(d >= last, "progress went back: {d} after {last}");
        last = d;
    }
    let final_progress = &patches.last().unwrap().body["status"]["progress"];
    assert_eq!(final_progress["bytesDone"], done, "{final_progress}");
    assert_eq!(final_progress["totalBytes"], total, "{final_progress}");
}

#[test]
fn backup_and_restore_jobs_round_trip_a_volume_and_report_to_the_api() {
    let pod = Pod::new("job-round-trip");
    let data = pod.path("data");
    let included = volume(&data);

    let (out, outcome) = pod.job(&[
        "backup",
        "--volume-backup",
        "db-nightly",
        "--source",
        data.to_str().unwrap(),
        "--source-name",
        "shop/data-db-0",
        "--storage-class",
        "fast",
        "--tag",
        "app=shop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcome["succeeded"], true, "{outcome}");
    assert_eq!(outcome["bytesDone"], included, "{outcome}");
    assert_eq!(outcome["totalBytes"], included, "{outcome}");
    let id = outcome["snapshotId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stdout, outcome, "stdout carries the outcome too");

    let log = pod.api.requests();
    check_progress(
        &status_patches(&log, "volumebackups/db-nightly"),
        "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups/db-nightly/status",
        included,
        included,
    );
    let mirror: Vec<&Recorded> = log
        .iter()
        .filter(|r| r.path.contains("/repositorysnapshots/"))
        .collect();
    assert_eq!(mirror.len(), 1, "{log:#?}");
    assert_eq!(mirror[0].method, "PATCH");
    assert_eq!(mirror[0].content_type, "application/apply-patch+yaml");
    assert_eq!(
        mirror[0].path,
        format!(
            "/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots/main-{}",
            &id[..16]
        )
    );
    let spec = &mirror[0].body["spec"];
    assert_eq!(spec["snapshotId"], id.as_str());
    assert_eq!(spec["source"]["namespace"], "shop");
    assert_eq!(spec["source"]["persistentVolumeClaim"], "data-db-0");
    assert_eq!(spec["sizeBytes"], included);
    assert_eq!(spec["tags"], json!({"app": "shop"}));

    // A fresh volume holds lost+found: the restore goes into it anyway.
    let target = pod.path("restored");
    std::fs::create_dir_all(target.join("lost+found")).unwrap();
    let (out, outcome) = pod.job(&[
        "restore",
        "--volume-restore",
        "db-restore",
        "--snapshot",
        &id[..12],
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcome["succeeded"], true, "{outcome}");
    assert_eq!(outcome["bytesDone"], included, "{outcome}");
    assert_eq!(
        tree(&target, &["lost+found"]),
        tree(&data, &["cache", "pgsql.tmp"]),
        "the restore is the volume minus the class's excludes"
    );
    let log = pod.api.requests();
    check_progress(
        &status_patches(&log, "volumerestores/db-restore"),
        "/apis/cairn.io/v1alpha1/namespaces/shop/volumerestores/db-restore/status",
        included,
        included,
    );
}

#[test]
fn second_backup_uses_the_first_as_parent_and_catalog_and_maintenance_refresh_the_mirror() {
    let pod = Pod::new("job-catalog");
    let data = pod.path("data");
    let included = volume(&data);
    let backup = |storage_class: &str| {
        let (out, outcome) = pod.job(&[
            "backup",
            "--volume-backup",
            "db-nightly",
            "--source",
            data.to_str().unwrap(),
            "--source-name",
            "shop/data-db-0",
            "--storage-class",
            storage_class,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        outcome
    };
    let first = backup("fast");
    let second = backup("fast");
    assert_ne!(first["snapshotId"], second["snapshotId"]);
    let message = second["message"].as_str().unwrap();
    assert!(
        message.contains("0 files new, 0 changed, 4 unchanged"),
        "the second backup found the first as its parent: {message}"
    );
    assert_eq!(second["bytesDone"], included);

    // The mirror holds a snapshot the repository no longer has: catalog removes it.
    pod.api.existing.lock().unwrap().push(json!({
        "apiVersion": "cairn.io/v1alpha1", "kind": "RepositorySnapshot",
        "metadata": {"name": "main-gone", "namespace": "shop"},
        "spec": {"repository": "main", "snapshotId": "gone", "source": {"path": "x"},
                 "time": "2025-01-01T00:00:00Z", "sizeBytes": 1}}));
    let before = pod.api.requests().len();
    let (out, outcome) = pod.job(&["catalog"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcome["message"], "2 snapshots", "{outcome}");
    let log = pod.api.requests()[before..].to_vec();
    let applied: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.body["spec"]["snapshotId"].as_str().unwrap())
        .collect();
    assert_eq!(applied.len(), 2, "{log:#?}");
    for id in [&first["snapshotId"], &second["snapshotId"]] {
        assert!(applied.contains(&id.as_str().unwrap()), "{applied:?}");
    }
    let deleted: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        deleted,
        ["/apis/cairn.io/v1alpha1/namespaces/shop/repositorysnapshots/main-gone"]
    );

    for kind in ["quick", "full"] {
        let (out, outcome) = pod.job(&["maintenance", "--kind", kind]);
        assert!(out.status.success(), "{kind}: {}", text(&out));
        assert_eq!(outcome["succeeded"], true, "{outcome}");
        let message = outcome["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{kind} maintenance")),
            "{message}"
        );
    }
}

#[test]
fn failures_end_in_a_failed_outcome_and_a_nonzero_exit() {
    let pod = Pod::new("job-failures");
    let data = pod.path("data");
    volume(&data);

    // A wrong password: not retryable, and said so.
    std::fs::write(pod.path("password/password"), "not the password").unwrap();
    let (out, outcome) = pod.job(&["backup", "--source", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(outcome["succeeded"], false, "{outcome}");
    assert_eq!(outcome["retryable"], false, "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("wrong password"),
        "{outcome}"
    );
    std::fs::write(pod.path("password/password"), PASSWORD).unwrap();

    // A snapshot that does not exist.
    let (out, outcome) = pod.job(&[
        "restore",
        "--snapshot",
        "abcdef12",
        "--target",
        pod.path("out").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("no snapshot abcdef12"),
        "{outcome}"
    );

    // Bad arguments never start the job.
    let (out, outcome) = pod.job(&["backup", "--sauce", "/data"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(outcome, Value::Null, "no outcome without a job");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag --sauce"));
}

#[test]
fn a_job_runs_without_any_cluster() {
    let pod = Pod::new("job-standalone");
    let data = pod.path("data");
    let included = volume(&data);
    let termination = pod.path("outcome.json");
    let mut cmd = pod.cairn();
    cmd.args(["job", "backup", "--source"])
        .arg(&data)
        .arg("--termination-log")
        .arg(&termination)
        .env("CAIRN_LOCATION", pod.location.location())
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_CACHE_DIR", pod.path("cache"))
        .envs(aws_env());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let outcome: Value =
        serde_json::from_str(&std::fs::read_to_string(&termination).unwrap()).unwrap();
    assert_eq!(outcome["succeeded"], true);
    // No storage class given: the KDMP entries do not apply, .tmp and cache/ are kept.
    assert!(outcome["totalBytes"].as_u64().unwrap() > included);
    assert!(pod.api.requests().is_empty());
}

#[test]
fn json_log_lines_name_the_resource_the_job_works_for() {
    let pod = Pod::new("job-json-log");
    let data = pod.path("data");
    volume(&data);
    let termination = pod.path("termination-log");
    let mut cmd = pod.cairn();
    // As the controller's Jobs get it: through the environment.
    cmd.args([
        "job",
        "backup",
        "--namespace",
        "shop",
        "--volume-backup",
        "db-nightly",
    ])
    .arg("--source")
    .arg(&data)
    .arg("--termination-log")
    .arg(&termination)
    .env("CAIRN_LOG_FORMAT", "json")
    .env("CAIRN_LOCATION", pod.location.location())
    .env("CAIRN_PASSWORD", PASSWORD)
    .env("CAIRN_CACHE_DIR", pod.path("cache"))
    .envs(aws_env());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    // Only the warning that the API is out of reach comes before the job starts.
    let job_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            !l["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("no Kubernetes API access")
        })
        .collect();
    assert!(
        job_lines
            .iter()
            .any(|l| l["fields"]["message"] == "backup done"),
        "{stderr}"
    );
    for line in job_lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
        assert_eq!(line["span"]["namespace"], "shop", "{line}");
        assert_eq!(line["span"]["resource"], "db-nightly", "{line}");
        assert_eq!(line["span"]["kind"], "VolumeBackup", "{line}");
    }
}

/// A live volume (Direct mode): a file appended to while the job reads it
/// is named in the outcome's message, which the VolumeBackup's status shows.
#[test]
fn a_file_changing_during_a_backup_job_is_named_in_its_outcome() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pod = Pod::new("job-live");
    let data = pod.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = data.join("wal.log");
    std::fs::write(&log, vec![7u8; 48 << 20]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(Ordering::Relaxed) {
                file.write_all(&[9u8; 4096]).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let (out, outcome) = pod.job(&["backup", "--source", data.to_str().unwrap()]);
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outcome["succeeded"], true, "{outcome}");
    let message = outcome["message"].as_str().unwrap();
    assert!(
        message.contains("1 files changed while they were read:") && message.contains("wal.log"),
        "{message}"
    );
}
