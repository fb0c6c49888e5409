//! `cairn kube mount` end to end: a real local repository with a backup, the VolumeBackup,
//! BackupRepository and password Secret that describe it served by a mock Kubernetes API on
//! 127.0.0.1 (a kubeconfig points the binary at it), the binary resolving them and
//! FUSE-mounting the snapshot, files read through the mount compared with the source, and
//! `fusermount3 -u` ending it cleanly. Needs /dev/fuse and fusermount3 (`.ci/run` installs
//! fuse3); without them the mounting test prints why and passes. The failure cases mount
//! nothing and always run. Every mount is undone in its guard's Drop.

use crate::common;

use common::{
    fuse_available, kubeconfig, mount_source, serve_api, text, xorshift_bytes, ApiRequest, Mounted,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "kube-mount-password";
/// base64("kube-mount-password\n"): `kubectl create secret --from-file` keeps the newline.
const PASSWORD_B64: &str = "a3ViZS1tb3VudC1wYXNzd29yZAo=";
/// base64("not-the-password\n").
const WRONG_PASSWORD_B64: &str = "bm90LXRoZS1wYXNzd29yZAo=";

/// A Kubernetes API stand-in serving fixed objects by path (404 for anything else) and
/// recording every request as (method, path).
struct MockApi {
    port: u16,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl MockApi {
    fn start(objects: BTreeMap<String, Value>) -> MockApi {
        let log: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = log.clone();
        let port = serve_api(move |request: ApiRequest| {
            let reply = match objects
                .get(&request.path)
                .filter(|_| request.method == "GET")
            {
                Some(object) => ("200 OK", object.clone()),
                None => (
                    "404 Not Found",
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "reason": "NotFound", "code": 404,
                           "message": format!("{} not found", request.path)}),
                ),
            };
            seen.lock().unwrap().push((request.method, request.path));
            reply
        });
        MockApi { port, log }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap().clone()
    }

    /// A kubeconfig whose only cluster is this server, without credentials, with a default
    /// namespace other than the one the tests name (so a namespace must come from the args).
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig(dir, self.port, Some("elsewhere"))
    }
}

const VB: &str = "/apis/cairn.io/v1alpha1/namespaces/shop/volumebackups";
const REPO: &str = "/apis/cairn.io/v1alpha1/namespaces/shop/backuprepositories";
const SECRET: &str = "/api/v1/namespaces/shop/secrets";

fn volume_backup(name: &str, repository: &str, status: Value) -> (String, Value) {
    (
        format!("{VB}/{name}"),
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "VolumeBackup",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"source": {"persistentVolumeClaim": "data-db-0"}, "repository": repository},
               "status": status}),
    )
}

fn backup_repository(name: &str, location: &str, password_secret: &str) -> (String, Value) {
    (
        format!("{REPO}/{name}"),
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "BackupRepository",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"location": location,
                        "passwordSecret": {"name": password_secret, "key": "password"}}}),
    )
}

fn secret(name: &str, password_b64: &str) -> (String, Value) {
    (
        format!("{SECRET}/{name}"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"},
               "type": "Opaque", "data": {"password": password_b64}}),
    )
}

/// A scratch area: source tree, repository with one backup of it, cache, kubeconfig.
struct Env {
    tmp: tempfile::TempDir,
    snapshot_id: String,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut env = Env {
            tmp,
            snapshot_id: String::new(),
        };
        fill_source(&env.path("src"));
        let src = env.path("src");
        env.cairn_ok(&["init"]);
        env.cairn_ok(&["backup", src.to_str().unwrap()]);
        let list: Value = serde_json::from_str(&env.cairn_ok(&["snapshots", "--json"])).unwrap();
        env.snapshot_id = list[0]["id"].as_str().unwrap().to_string();
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// `file:///...` URL of the repository, as a BackupRepository would name it.
    fn location(&self) -> String {
        format!("file://{}", self.path("repo").display())
    }

    /// The binary with a clean environment: no repository or password but what the cluster
    /// gives it.
    fn cairn(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .args(args);
        cmd
    }

    /// Runs a repository command directly (setting up the backup the cluster describes).
    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self
            .cairn(args)
            .env("CAIRN_REPOSITORY", self.path("repo"))
            .env("CAIRN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "cairn {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn kube mount` against `api`, with `args` after `kube mount`.
    fn kube_mount(&self, api: &MockApi, args: &[&str]) -> Command {
        let mut full = vec!["kube", "mount"];
        full.extend(args);
        let mut cmd = self.cairn(&full);
        cmd.env("KUBECONFIG", api.kubeconfig(self.tmp.path()));
        cmd
    }

    /// A fresh empty mountpoint.
    fn mountpoint(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir(&dir).unwrap();
        dir.canonicalize().unwrap()
    }
}

/// A deterministic byte stream (xorshift), so failures reproduce.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    xorshift_bytes(seed | 1, len)
}

/// A small volume: text, a multi-chunk file, nesting, an empty file and a symlink.
fn fill_source(src: &Path) {
    fs::create_dir_all(src.join("db/sstables")).unwrap();
    fs::write(src.join("README"), b"volume data-db-0\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("db/commitlog"), pseudo_random(3, 5 << 20 | 777)).unwrap();
    for i in 0..5 {
        fs::write(
            src.join(format!("db/sstables/part-{i}.db")),
            pseudo_random(10 + i, 4000 * i as usize + 1),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("db/commitlog", src.join("current")).unwrap();
}

/// Every entry below `root` by relative path: file contents, symlink targets, directories.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                "dir".to_string()
            } else {
                let bytes = fs::read(&path).unwrap();
                format!("{} bytes, {:x}", bytes.len(), checksum(&bytes))
            };
            out.insert(rel, what);
        }
    }
    out
}

/// FNV-1a, enough to tell contents apart in a comparison.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn a_volume_backup_mounts_its_snapshot_and_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let api = MockApi::start(BTreeMap::from([
        volume_backup(
            "db-nightly",
            "main",
            json!({"phase": "Completed", "snapshotId": env.snapshot_id}),
        ),
        backup_repository("main", &env.location(), "repo-password"),
        secret("repo-password", PASSWORD_B64),
    ]));
    let dir = env.mountpoint("mnt");
    let mut m = Mounted::spawn(
        env.kube_mount(&api, &["shop/db-nightly", dir.to_str().unwrap()]),
        &dir,
    );
    assert_eq!(
        mount_source(&dir).as_deref(),
        Some("cairn:shop/db-nightly"),
        "the mount is named after the VolumeBackup"
    );

    // The snapshot's root is the mount's root: the volume as it was backed up.
    let src = env.path("src");
    let mounted = tree(&dir);
    assert_eq!(mounted, tree(&src));
    assert_eq!(mounted.len(), 11, "{mounted:?}");
    assert_eq!(
        fs::read(dir.join("db/commitlog")).unwrap(),
        fs::read(src.join("db/commitlog")).unwrap()
    );
    assert_eq!(
        fs::read(dir.join("current")).unwrap(),
        fs::read(src.join("db/commitlog")).unwrap(),
        "symlinks resolve inside the mount"
    );
    assert!(fs::write(dir.join("README"), b"x").is_err(), "read-only");

    assert_eq!(
        api.requests(),
        [
            ("GET".to_string(), format!("{VB}/db-nightly")),
            ("GET".to_string(), format!("{REPO}/main")),
            ("GET".to_string(), format!("{SECRET}/repo-password")),
        ],
        "reads only the three objects, in the namespace from NAMESPACE/NAME"
    );

    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "fusermount3 -u");
    let (status, stderr) = m.wait_exit();
    assert!(status.success(), "cairn kube mount: {status}: {stderr}");
    let short = &env.snapshot_id[..8];
    assert!(
        stderr.contains(&format!(
            "snapshot {short} of VolumeBackup shop/db-nightly mounted at {}",
            dir.display()
        )),
        "{stderr}"
    );
    assert_eq!(mount_source(&dir), None);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "the empty mountpoint is back"
    );
}

#[test]
fn backups_that_cannot_be_mounted_fail_with_clear_messages_and_mount_nothing() {
    let env = Env::new();
    let api = MockApi::start(BTreeMap::from([
        volume_backup(
            "db-running",
            "main",
            json!({"phase": "Uploading", "progress": {"bytesDone": 1, "totalBytes": 9}}),
        ),
        volume_backup(
            "db-wrong-password",
            "stale",
            json!({"phase": "Completed", "snapshotId": env.snapshot_id}),
        ),
        volume_backup(
            "db-lost-snapshot",
            "main",
            json!({"phase": "Completed", "snapshotId": "00000000deadbeef"}),
        ),
        backup_repository("main", &env.location(), "repo-password"),
        backup_repository("stale", &env.location(), "old-password"),
        secret("repo-password", PASSWORD_B64),
        secret("old-password", WRONG_PASSWORD_B64),
    ]));
    let dir = env.mountpoint("mnt");
    let d = dir.to_str().unwrap();
    for (args, code, message) in [
        (
            vec!["shop/db-running", d],
            1,
            "VolumeBackup shop/db-running is Uploading: only a Completed VolumeBackup has a \
             snapshot to mount",
        ),
        (
            vec!["db-weekly", d, "-n", "shop"],
            1,
            "VolumeBackup shop/db-weekly not found; check the name and the namespace",
        ),
        (
            vec!["shop/db-wrong-password", d],
            10,
            "for VolumeBackup shop/db-wrong-password",
        ),
        (
            // Exit 2, as for any snapshot id the repository does not hold.
            vec!["shop/db-lost-snapshot", d],
            2,
            "finding snapshot 00000000deadbeef of VolumeBackup shop/db-lost-snapshot",
        ),
        (
            vec!["shop/db-running", d, "-n", "prod"],
            2,
            "\"shop/db-running\" is in namespace \"shop\" but -n says \"prod\"",
        ),
    ] {
        let out = env.kube_mount(&api, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(mount_source(&dir), None, "{args:?}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
    // The namespace clash is caught before any request.
    let requested = api.requests();
    assert!(
        requested
            .iter()
            .all(|(method, path)| method == "GET" && path.contains("/namespaces/shop/")),
        "{requested:?}"
    );
    assert_eq!(
        requested
            .iter()
            .filter(|(_, p)| p.ends_with("/db-running"))
            .count(),
        1
    );

    // A directory that is not an empty mountpoint is refused before the cluster is asked.
    fs::write(dir.join("stray"), b"x").unwrap();
    let before = api.requests().len();
    let out = env
        .kube_mount(&api, &["shop/db-running", d])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(api.requests().len(), before);
}

const ABK: &str = "/apis/cairn.io/v1alpha1/namespaces/shop/applicationbackups";

fn application_backup(name: &str, status: Value) -> (String, Value) {
    (
        format!("{ABK}/{name}"),
        json!({"apiVersion": "cairn.io/v1alpha1", "kind": "ApplicationBackup",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"includedNamespaces": ["shop"], "repository": "main"},
               "status": status}),
    )
}

impl Env {
    /// Backs up `dir` (below the scratch area) and returns the new snapshot's id.
    fn backup_dir(&self, dir: &str) -> String {
        let before: Value = serde_json::from_str(&self.cairn_ok(&["snapshots", "--json"])).unwrap();
        self.cairn_ok(&["backup", self.path(dir).to_str().unwrap()]);
        let after: Value = serde_json::from_str(&self.cairn_ok(&["snapshots", "--json"])).unwrap();
        let old: Vec<&Value> = before
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["id"])
            .collect();
        after
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["id"])
            .find(|id| !old.contains(id))
            .and_then(|id| id.as_str())
            .unwrap()
            .to_string()
    }
}

#[test]
fn an_application_backup_mounts_its_volumes_and_resources_in_one_tree() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    fs::create_dir_all(env.path("logs/2025")).unwrap();
    fs::write(env.path("logs/2025/app.log"), b"started\n").unwrap();
    let logs_id = env.backup_dir("logs");
    let captured = env.path("capture/resources/namespaces/shop/apps/deployments");
    fs::create_dir_all(&captured).unwrap();
    fs::write(captured.join("web.json"), br#"{"kind":"Deployment"}"#).unwrap();
    fs::write(env.path("capture/manifest.json"), b"{}").unwrap();
    let resources_id = env.backup_dir("capture");
    let api = MockApi::start(BTreeMap::from([
        application_backup(
            "shop-app",
            json!({"phase": "PartiallyFailed", "resourceSnapshotId": resources_id,
                   "volumes": [
                       {"namespace": "shop", "persistentVolumeClaim": "data-db-0",
                        "phase": "Completed", "snapshotId": env.snapshot_id},
                       {"namespace": "shop", "persistentVolumeClaim": "logs",
                        "phase": "Completed", "snapshotId": logs_id},
                       {"namespace": "shop", "persistentVolumeClaim": "cache",
                        "phase": "Failed", "failureReason": "snapshot failed"}]}),
        ),
        backup_repository("main", &env.location(), "repo-password"),
        secret("repo-password", PASSWORD_B64),
    ]));
    let dir = env.mountpoint("mnt");
    let mut m = Mounted::spawn(
        env.kube_mount(&api, &["abk/shop-app", dir.to_str().unwrap(), "-n", "shop"]),
        &dir,
    );
    assert_eq!(mount_source(&dir).as_deref(), Some("cairn:shop/shop-app"));
    let names = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&dir), ["resources", "volumes"]);
    assert_eq!(names(&dir.join("volumes")), ["shop"]);
    // The failed volume has no snapshot and no directory.
    assert_eq!(names(&dir.join("volumes/shop")), ["data-db-0", "logs"]);
    assert_eq!(
        tree(&dir.join("volumes/shop/data-db-0")),
        tree(&env.path("src"))
    );
    assert_eq!(
        tree(&dir.join("volumes/shop/logs")),
        tree(&env.path("logs"))
    );
    // `resources/` is the resource snapshot's resources/ directory, not its root.
    assert_eq!(
        tree(&dir.join("resources")),
        tree(&env.path("capture/resources"))
    );
    assert_eq!(
        fs::read(dir.join("resources/namespaces/shop/apps/deployments/web.json")).unwrap(),
        br#"{"kind":"Deployment"}"#
    );
    assert!(
        fs::write(dir.join("volumes/shop/logs/x"), b"x").is_err(),
        "read-only"
    );

    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "fusermount3 -u");
    let (status, stderr) = m.wait_exit();
    assert!(status.success(), "cairn kube mount: {status}: {stderr}");
    assert!(
        stderr.contains("ApplicationBackup shop/shop-app (2 volume(s) and its resources) mounted"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn application_backups_that_cannot_be_mounted_say_why() {
    let env = Env::new();
    let api = MockApi::start(BTreeMap::from([
        application_backup("running", json!({"phase": "Uploading"})),
        application_backup(
            "failed",
            json!({"phase": "Failed", "failureReason": "no volume reached the repository"}),
        ),
        application_backup(
            "lost",
            json!({"phase": "Completed", "resourceSnapshotId": "00000000deadbeef"}),
        ),
        backup_repository("main", &env.location(), "repo-password"),
        secret("repo-password", PASSWORD_B64),
    ]));
    let dir = env.mountpoint("mnt");
    let d = dir.to_str().unwrap();
    for (args, code, message) in [
        (
            vec!["applicationbackup/running", d, "-n", "shop"],
            1,
            "ApplicationBackup shop/running is Uploading: only a Completed or PartiallyFailed \
             ApplicationBackup has snapshots to mount",
        ),
        (
            vec!["abk/failed", d, "-n", "shop"],
            1,
            "ApplicationBackup shop/failed is Failed: no volume reached the repository",
        ),
        (
            vec!["abk/missing", d, "-n", "shop"],
            1,
            "ApplicationBackup shop/missing not found",
        ),
        (
            vec!["abk/lost", d, "-n", "shop"],
            2,
            "finding snapshot 00000000deadbeef of ApplicationBackup shop/lost",
        ),
        (
            vec!["abk/shop/lost", d],
            2,
            "use applicationbackup/NAME, with -n NAMESPACE",
        ),
    ] {
        let out = env.kube_mount(&api, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(mount_source(&dir), None, "{args:?}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
}
