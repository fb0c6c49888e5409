//! `cairn mount` end to end: a repository made with the CLI, mounted by a
//! spawned `cairn mount`, checked with ordinary tools (diff, tar,
//! sha256sum) and reads (pread at random offsets, 8 threads), then
//! unmounted by SIGTERM or `fusermount3 -u`. Needs /dev/fuse and
//! fusermount3 (`.ci/run` installs fuse3); without them the mounting tests
//! print why and pass. Every test unmounts in its guard's Drop.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common;

use common::{fuse_available, is_mounted, Mounted, PATIENCE};

const PASSWORD: &str = "mount-test-password";

/// A scratch area: a source tree, a repository, a cache and mountpoints.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        fs::create_dir(env.src()).expect("src");
        env.cairn_ok(&["init"]);
        env
    }
    /// A repository with one backup of a source holding the file `name`.
    fn backed_up(name: &str, data: impl AsRef<[u8]>) -> Self {
        let env = Env::new();
        fs::write(env.src().join(name), data).expect("write");
        env.backup(&[]);
        env
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn src(&self) -> PathBuf {
        self.path("src")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_REPOSITORY", self.path("repo"))
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .env_remove("RUST_LOG")
            .args(args);
        c
    }
    fn cairn(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }
    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn backup(&self, tags: &[&str]) {
        let src = self.src();
        let mut args = vec!["backup", src.to_str().expect("utf-8 path")];
        for t in tags {
            args.extend(["--tag", t]);
        }
        self.cairn_ok(&args);
    }
    /// Spawns `cairn mount` on a fresh empty directory and waits for it.
    fn mount(&self, name: &str, extra: &[&str]) -> Mounted {
        let dir = self.path(name);
        fs::create_dir(&dir).expect("mountpoint");
        self.mount_on(&dir, extra)
    }
    /// Spawns `cairn mount` on the existing directory `dir` and waits for it.
    fn mount_on(&self, dir: &Path, extra: &[&str]) -> Mounted {
        let mut args = vec!["mount", dir.to_str().expect("utf-8 path")];
        args.extend(extra);
        Mounted::spawn(self.cmd(&args), &dir.canonicalize().expect("canonical"))
    }
}

/// A deterministic byte stream (xorshift), so failures reproduce.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    common::xorshift_bytes(seed | 1, len)
}

/// Files of every kind the mount must show.
fn fill_source(src: &Path) {
    fs::create_dir_all(src.join("dir/sub/deeper")).expect("dirs");
    fs::write(src.join("empty"), b"").expect("write");
    fs::write(src.join("small.txt"), b"hello, mount\n").expect("write");
    fs::write(src.join("dir/sub/deeper/leaf"), b"leaf").expect("write");
    // Several chunks of incompressible data (1 MiB average chunks).
    fs::write(src.join("big.bin"), pseudo_random(7, 6 << 20 | 12345)).expect("write");
    // Zeros between data: holes in the repository.
    // (All-zero chunks become holes; zeros longer than the 8 MiB maximum
    // chunk guarantee at least one.)
    let sparse = fs::File::create(src.join("dir/sparse.img")).expect("create");
    sparse
        .write_all_at(&pseudo_random(9, 300_000), 0)
        .expect("write");
    sparse
        .write_all_at(&pseudo_random(11, 100_000), 300_000 + (20 << 20))
        .expect("write");
    for i in 0..40 {
        fs::write(
            src.join(format!("dir/f{i:02}")),
            pseudo_random(i, 1000 * i as usize),
        )
        .expect("write");
    }
    std::os::unix::fs::symlink("small.txt", src.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", src.join("dangling")).expect("symlink");
    let mut p = fs::metadata(src.join("small.txt"))
        .expect("meta")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    p.set_mode(0o640);
    fs::set_permissions(src.join("small.txt"), p).expect("chmod");
    let _ = xattr::set(src.join("small.txt"), "user.cairn", b"value");
    let status = Command::new("mkfifo")
        .arg(src.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

/// sha256 of every regular file below `root`, by relative path.
fn sha256_tree(root: &Path) -> BTreeMap<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(root)
        .output()
        .expect("sha256sum");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| (p.to_string(), h.to_string()))
        .collect()
}

fn only_entry(dir: &Path) -> PathBuf {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        1,
        "expected one entry in {}: {names:?}",
        dir.display()
    );
    names.remove(0)
}

#[test]
fn mounted_snapshot_matches_the_source() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    fill_source(&env.src());
    env.backup(&["nightly"]);
    let m = env.mount("mnt", &[]);
    let top: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(&m.dir)
            .expect("root")
            .map(|e| e.expect("e").file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(top, ["hosts", "snapshots", "sources", "tags"]);
    let snap = only_entry(&m.dir.join("snapshots"));
    let src = env.src();

    // diff -r, not following symlinks and leaving the fifo alone.
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=fifo"])
        .arg(&src)
        .arg(&snap)
        .output()
        .expect("diff");
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // The same snapshot under sources/ (with latest), tags/ and hosts/.
    let source_dir = m.dir.join("sources").join(
        src.to_str()
            .expect("utf-8")
            .replace('%', "%25")
            .replace('/', "%2F"),
    );
    let latest = fs::read_link(source_dir.join("latest")).expect("latest link");
    assert!(source_dir.join(&latest).join("small.txt").is_file());
    assert_eq!(
        fs::read(source_dir.join("latest/small.txt")).expect("read"),
        b"hello, mount\n"
    );
    assert!(only_entry(&m.dir.join("tags/nightly"))
        .join("big.bin")
        .is_file());
    let host = only_entry(&m.dir.join("hosts"));
    assert!(only_entry(&host).join("dir/sub/deeper/leaf").is_file());

    // sha256 of every file.
    assert_eq!(sha256_tree(&snap), sha256_tree(&src));

    // Attributes.
    for rel in [
        "small.txt",
        "big.bin",
        "dir",
        "dir/sparse.img",
        "link",
        "fifo",
        "empty",
    ] {
        let a = fs::symlink_metadata(src.join(rel)).expect("src meta");
        let b = fs::symlink_metadata(snap.join(rel)).expect("mount meta");
        assert_eq!(a.mode(), b.mode(), "{rel} mode");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{rel} owner");
        assert_eq!(a.mtime(), b.mtime(), "{rel} mtime");
        assert_eq!(a.mtime_nsec(), b.mtime_nsec(), "{rel} mtime ns");
        if !a.is_dir() {
            assert_eq!(a.size(), b.size(), "{rel} size");
            assert_eq!(a.nlink(), b.nlink(), "{rel} nlink");
        }
    }
    let big = fs::metadata(snap.join("big.bin")).expect("meta");
    assert!(big.blocks() * 512 >= big.size(), "blocks cover the data");
    let sparse = fs::metadata(snap.join("dir/sparse.img")).expect("meta");
    assert!(
        sparse.blocks() * 512 < sparse.size(),
        "holes take no blocks"
    );
    assert!(fs::symlink_metadata(snap.join("fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::read_link(snap.join("dangling")).expect("readlink"),
        Path::new("/nowhere/at/all")
    );
    if xattr::get(src.join("small.txt"), "user.cairn")
        .ok()
        .flatten()
        .is_some()
    {
        assert_eq!(
            xattr::get(snap.join("small.txt"), "user.cairn").expect("getxattr"),
            Some(b"value".to_vec())
        );
        let names: Vec<_> = xattr::list(snap.join("small.txt"))
            .expect("listxattr")
            .collect();
        assert_eq!(names, ["user.cairn"]);
    }
    assert!(
        fs::write(snap.join("small.txt"), b"x").is_err(),
        "read-only"
    );
    let statfs = Command::new("stat")
        .arg("-f")
        .arg(&m.dir)
        .output()
        .expect("stat -f");
    assert!(statfs.status.success());

    // tar c through the mount: same bytes as tar of the source.
    let tar = |dir: &Path| {
        let out = Command::new("tar")
            .args([
                "c",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-C",
            ])
            .arg(dir)
            .args(["--exclude=./fifo", "."])
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert!(
        tar(&snap) == tar(&src),
        "tar of the mount differs from tar of the source"
    );

    // pread at pseudo-random offsets and lengths.
    let want = fs::read(src.join("big.bin")).expect("read");
    let f = fs::File::open(snap.join("big.bin")).expect("open");
    let mut x = 12345u64;
    for _ in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (want.len() as u64 + 100);
        let len = ((x >> 8) % (3 << 20)) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read_at(&mut buf[got..], off + got as u64).expect("pread");
            if n == 0 {
                break;
            }
            got += n;
        }
        let lo = (off as usize).min(want.len());
        let hi = (lo + len).min(want.len());
        assert_eq!(&buf[..got], &want[lo..hi], "pread at {off} len {len}");
    }

    // 8 concurrent readers over every file.
    let files: Vec<String> = sha256_tree(&src).into_keys().collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let (files, src, snap) = (&files, &src, &snap);
            s.spawn(move || {
                for (i, rel) in files
                    .iter()
                    .enumerate()
                    .cycle()
                    .skip(t * 5)
                    .take(files.len())
                {
                    let _ = i;
                    assert_eq!(
                        fs::read(snap.join(rel)).expect("read through mount"),
                        fs::read(src.join(rel)).expect("read source"),
                        "{rel} (reader {t})"
                    );
                }
            });
        }
    });
}

#[test]
fn new_snapshot_appears_and_fusermount_unmounts() {
    if !fuse_available() {
        return;
    }
    let env = Env::backed_up("first", b"1");
    let mut m = env.mount("mnt", &[]);
    let snaps = m.dir.join("snapshots");
    let first = only_entry(&snaps);
    fs::write(env.src().join("second"), b"2").expect("write");
    env.backup(&[]);
    // The mount re-reads the snapshot list every ~2 s.
    let start = Instant::now();
    while fs::read_dir(&snaps).expect("list").count() < 2 {
        assert!(
            start.elapsed() < PATIENCE,
            "the new snapshot never appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Both backups may fall in one second: names then order by id, so the
    // new one is whichever is not the first.
    let new = fs::read_dir(&snaps)
        .expect("list")
        .map(|e| e.expect("e").path())
        .find(|p| *p != first)
        .expect("the new snapshot");
    assert_eq!(fs::read(new.join("second")).expect("new file"), b"2");
    assert!(!first.join("second").exists());

    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.dir)
        .status()
        .expect("fusermount3");
    assert!(status.success());
    let (status, err) = m.wait_exit();
    assert!(status.success(), "mount exited with {status}: {err}");
    assert!(!is_mounted(&m.dir), "mount left behind");
}

#[test]
fn sigterm_unmounts_and_single_snapshot_mounts_at_the_root() {
    if !fuse_available() {
        return;
    }
    let env = Env::backed_up("only", b"root file");
    let mut m = env.mount("mnt", &["--snapshot", "latest"]);
    assert_eq!(fs::read(m.dir.join("only")).expect("read"), b"root file");
    let status = Command::new("kill")
        .args(["-TERM", &m.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (status, err) = m.wait_exit();
    assert!(status.success(), "mount exited with {status}: {err}");
    assert!(!is_mounted(&m.dir), "mount left behind");
}

#[test]
fn daemon_detaches_once_mounted() {
    if !fuse_available() {
        return;
    }
    let env = Env::backed_up("file", b"daemon");
    let dir = env.path("mnt");
    fs::create_dir(&dir).expect("mkdir");
    let dir = dir.canonicalize().expect("canonical");
    // The guard unmounts even if an assertion below fails.
    let _guard = Mounted {
        dir: dir.clone(),
        child: None,
    };
    let out = env.cairn(&["mount", "--daemon", dir.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Ready when the command returned: no waiting.
    assert!(is_mounted(&dir));
    let snap = only_entry(&dir.join("snapshots"));
    assert_eq!(fs::read(snap.join("file")).expect("read"), b"daemon");
    let pid: u32 = err
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {err:?}"));
    assert!(Command::new("fusermount3")
        .arg("-u")
        .arg(&dir)
        .status()
        .expect("fusermount3")
        .success());
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") Z ") {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the daemon did not exit after unmount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&dir));
}

#[test]
fn deleted_pack_gives_eio_for_its_file_only() {
    if !fuse_available() {
        return;
    }
    let env = Env::backed_up("kept", pseudo_random(1, 200_000));
    let packs_before = list_files(&env.path("repo/packs"));
    fs::write(env.src().join("lost"), pseudo_random(2, 2 << 20)).expect("write");
    env.backup(&[]);
    let m = env.mount("mnt", &["--cache-size", "1MiB"]);
    // The second snapshot is the one holding `lost` (both backups may fall
    // in one second, so names need not sort by time).
    let snap = fs::read_dir(m.dir.join("snapshots"))
        .expect("list")
        .map(|e| e.expect("e").path())
        .find(|p| p.join("lost").exists())
        .expect("the second snapshot");
    // Walk first: the trees are loaded while everything is there.
    assert!(snap.join("lost").is_file() && snap.join("kept").is_file());
    // The second backup's data pack holds only `lost`: the largest new pack.
    let new_pack = list_files(&env.path("repo/packs"))
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a new pack");
    fs::remove_file(&new_pack).expect("delete pack");

    let err = fs::read(snap.join("lost")).expect_err("reading a file whose pack is gone");
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    // The mount survives: other files still read, listings still work.
    assert_eq!(
        fs::read(snap.join("kept")).expect("kept"),
        pseudo_random(1, 200_000)
    );
    assert!(fs::read_dir(m.dir.join("snapshots")).expect("list").count() == 2);
    let err = fs::read(snap.join("lost")).expect_err("still gone");
    assert_eq!(err.raw_os_error(), Some(libc_eio()));
}

fn libc_eio() -> i32 {
    5
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn bad_mountpoints_are_refused_clearly() {
    // No FUSE needed: the mountpoint is checked before anything is mounted.
    let env = Env::new();
    let missing = env.path("missing");
    let out = env.cairn(&["mount", missing.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");

    let full = env.path("full");
    fs::create_dir(&full).expect("mkdir");
    fs::write(full.join("x"), b"x").expect("write");
    let out = env.cairn(&["mount", full.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not empty"), "{err}");

    let file = env.path("file");
    fs::write(&file, b"x").expect("write");
    let out = env.cairn(&["mount", "--daemon", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

/// Waits (a liveness bound, not a timing assertion) until `dir` is no
/// longer a mount point; false if it still is after [`PATIENCE`].
fn wait_unmounted(dir: &Path) -> bool {
    let start = Instant::now();
    while is_mounted(dir) {
        if start.elapsed() > PATIENCE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The pid of the `fusermount3` watching the mount at `dir` (canonical)
/// in auto-unmount mode, if there is one.
fn auto_unmount_helper(dir: &Path) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let mut args = cmdline.split(|&b| b == 0);
        let exe = args.next()?;
        let names_dir = |a: &[u8]| {
            Path::new(std::ffi::OsStr::from_bytes(a))
                .canonicalize()
                .is_ok_and(|p| p == dir)
        };
        (exe.ends_with(b"fusermount3") && args.any(names_dir)).then_some(pid)
    })
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

#[test]
fn kill_9_as_root_leaves_no_mount_behind() {
    if !fuse_available() {
        return;
    }
    // Without root there is no auto_unmount helper (docs/MOUNT.md): a
    // killed mount stays behind until `fusermount3 -u`, which the next
    // test covers.
    if !is_root() {
        eprintln!("skipping: auto-unmount after kill -9 needs root");
        return;
    }
    let env = Env::backed_up("file", b"killed");
    let mut m = env.mount("mnt", &[]);
    let snap = only_entry(&m.dir.join("snapshots"));
    assert_eq!(fs::read(snap.join("file")).expect("read"), b"killed");
    let helper = auto_unmount_helper(&m.dir);
    assert!(helper.is_some(), "no auto-unmount helper for a root mount");
    kill9(m.pid());
    let (status, _) = m.wait_exit();
    assert!(!status.success());
    assert!(
        wait_unmounted(&m.dir),
        "{} is still mounted after kill -9; helper {helper:?} state: {:?}",
        m.dir.display(),
        helper.and_then(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
    );
    // The directory is usable again: empty, and mountable.
    assert_eq!(fs::read_dir(&m.dir).expect("list").count(), 0);
    let again = env.mount_on(&m.dir, &[]);
    assert_eq!(
        fs::read(only_entry(&again.dir.join("snapshots")).join("file")).expect("read"),
        b"killed"
    );
}

#[test]
fn a_dead_mount_is_reported_with_the_fusermount3_command() {
    if !fuse_available() {
        return;
    }
    let env = Env::backed_up("file", b"dead");
    let mut m = env.mount("mnt", &[]);
    // Kill the auto-unmount helper first (as root there is one), then the
    // mount: what a non-root mount killed with -9 leaves behind.
    if let Some(helper) = auto_unmount_helper(&m.dir) {
        kill9(helper);
    }
    kill9(m.pid());
    let _ = m.wait_exit();
    assert!(is_mounted(&m.dir), "expected a dead mount");
    let err = fs::read_dir(&m.dir).expect_err("a dead mount cannot be listed");
    assert_eq!(err.raw_os_error(), Some(107), "{err}"); // ENOTCONN
    let dir = m.dir.to_str().expect("utf-8").to_string();
    for extra in [&[][..], &["--daemon"][..]] {
        let mut args = vec!["mount"];
        args.extend(extra);
        args.push(&dir);
        let out = env.cairn(&args);
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("dead mount"), "{text}");
        assert!(text.contains(&format!("fusermount3 -u {dir}")), "{text}");
    }
    // Following the advice makes the directory usable again.
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.dir)
        .status()
        .expect("fusermount3");
    assert!(status.success());
    assert!(!is_mounted(&m.dir));
    let again = env.mount_on(&m.dir, &[]);
    assert_eq!(
        fs::read(only_entry(&again.dir.join("snapshots")).join("file")).expect("read"),
        b"dead"
    );
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
