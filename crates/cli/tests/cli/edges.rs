//! The `cairn` binary at its edges: a reader that closes the pipe, a
//! mistyped repository path, a repair killed while it holds the lock, a
//! lock conflict, a damaged key file and a damaged local cache. Local
//! filesystem repositories only: pids, FIFOs and cache files are local.

use crate::common::{text, xorshift_bytes};
use cairn_core::lock::{ExclusiveLock, LockOptions};
use cairn_golden::testkit;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "edges";

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    /// A repository with a small backup of a few files.
    fn new() -> Self {
        let f = Fixture {
            tmp: tempfile::tempdir().expect("tmp"),
        };
        testkit::init_at(
            f.repo().to_str().expect("utf-8"),
            PASSWORD,
            &testkit::init_options((4096, 4096)),
        )
        .expect("init");
        for (i, name) in ["a.bin", "dir/b.bin", "dir/sub/c.bin"].iter().enumerate() {
            let p = f.src().join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, xorshift_bytes(i as u64 + 1, 30_000)).expect("write");
        }
        f.run(0, &["backup", f.src().to_str().expect("utf-8")]);
        f
    }

    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn src(&self) -> PathBuf {
        self.tmp.path().join("src")
    }

    fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_REPOSITORY", self.repo())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.cache_dir())
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }

    /// Runs `cairn args`, asserts its exit code, returns stdout and stderr.
    fn run(&self, code: i32, args: &[&str]) -> (String, String) {
        let out = self.output(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?}: {}",
            text(&out)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Number of lock objects (read from the directory: opening the
    /// repository could block on a FIFO a test put there).
    fn locks(&self) -> usize {
        std::fs::read_dir(self.repo().join("locks")).map_or(0, |d| d.count())
    }

    /// Path of the one index segment.
    fn the_index_segment(&self) -> PathBuf {
        let segments: Vec<PathBuf> = std::fs::read_dir(self.repo().join("index"))
            .expect("index")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(segments.len(), 1, "{segments:?}");
        segments[0].clone()
    }

    /// The one cache file the runs so far made.
    fn cache_file(&self) -> PathBuf {
        let dirs: Vec<_> = std::fs::read_dir(self.cache_dir())
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].join("cache.sqlite")
    }
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let f = Fixture::new();
    for args in [
        &["snapshots"][..],
        &["check", "--read-data"],
        &["ls", "--recursive", "latest"],
        &["dump", "latest", "/a.bin"],
        &["key", "list"],
        &["stats"],
    ] {
        let mut child = f
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader is gone before the first line is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn read_only_commands_never_create_a_repository_directory() {
    let f = Fixture::new();
    let typo = f.tmp.path().join("no/such/repo");
    let typo_s = typo.to_str().expect("utf-8");
    for args in [
        &["snapshots"][..],
        &["ls", "latest"],
        &["check"],
        &["stats"],
        &["restore", "latest", "--target", "out"],
        &["key", "list"],
        &["unlock"],
    ] {
        let out = f
            .cmd(args)
            .env("CAIRN_REPOSITORY", typo_s)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(11), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not exist"),
            "{args:?}: {}",
            text(&out)
        );
        assert!(!f.tmp.path().join("no").exists(), "{args:?} created it");
    }
    let out = f
        .cmd(&["init"])
        .env("CAIRN_REPOSITORY", typo_s)
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", text(&out));
    assert!(typo.join("cairn.repository").is_file());
}

/// Polls `cond` for up to a minute.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_repair_leaves_a_lock_that_blocks_nothing() {
    let f = Fixture::new();
    // A FIFO in place of the index segment, which the warm cache has
    // already ingested: `repair index` opens the repository, takes the
    // exclusive lock, then blocks reading the segment until it is killed.
    f.run(0, &["snapshots"]);
    let segment = f.the_index_segment();
    let saved = std::fs::read(&segment).expect("segment");
    std::fs::remove_file(&segment).expect("rm");
    let fifo = Command::new("mkfifo")
        .arg(&segment)
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    for round in 0..2 {
        let mut child = f
            .cmd(&["repair", "index"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        wait_for("the repair's lock", || f.locks() == round + 1);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    assert_eq!(f.locks(), 2, "a killed holder cannot delete its lock");
    std::fs::remove_file(&segment).expect("rm fifo");
    std::fs::write(&segment, saved).expect("restore segment");
    // The holders' pids are gone on this host: their locks are stale at
    // once, not after the 5-minute heartbeat timeout.
    f.run(0, &["repair", "index"]);
    let (out, _) = f.run(0, &["unlock"]);
    assert_eq!(
        out.matches("removed lock: repair index").count(),
        2,
        "{out}"
    );
    assert_eq!(f.locks(), 0);
}

#[test]
fn a_lock_conflict_has_its_own_exit_code() {
    let f = Fixture::new();
    let repo = testkit::open_at(f.repo().to_str().expect("utf-8"), PASSWORD).expect("open");
    let hour = Duration::from_secs(3600);
    let held = ExclusiveLock::acquire(
        &repo,
        &LockOptions {
            operation: "live holder".into(),
            heartbeat: hour,
            stale_after: hour,
        },
    )
    .expect("lock");
    for args in [&["repair", "index"][..], &["key", "remove", "0000"]] {
        let (_, err) = f.run(13, args);
        assert!(
            err.contains("locked") && err.contains("live holder"),
            "{err}"
        );
    }
    // This process is alive: `unlock` keeps its lock.
    let (out, _) = f.run(0, &["unlock"]);
    assert!(out.contains("kept live lock"), "{out}");
    held.release().expect("release");
}

#[test]
fn a_damaged_key_file_is_reported_as_damaged() {
    let f = Fixture::new();
    let key = std::fs::read_dir(f.repo().join("keys"))
        .expect("keys")
        .next()
        .expect("a key")
        .expect("entry")
        .path();
    let mut bytes = std::fs::read(&key).expect("read");
    bytes[30] ^= 0x08;
    std::fs::write(&key, bytes).expect("write");
    let (_, err) = f.run(12, &["snapshots"]);
    assert!(err.contains("damaged") && err.contains("keys/"), "{err}");
    assert!(!err.contains("wrong password"), "{err}");
}

/// Overwrites a 4 KiB page at `fraction` of `file` with bytes that are no
/// valid SQLite page.
fn damage_page(file: &Path, fraction: f64) {
    let mut bytes = std::fs::read(file).expect("cache file");
    let at = (bytes.len() as f64 * fraction) as usize / 4096 * 4096;
    assert!(
        at >= 4096 && at + 4096 <= bytes.len(),
        "cache of {} bytes",
        bytes.len()
    );
    for (i, b) in bytes[at..at + 4096].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    std::fs::write(file, bytes).expect("write");
}

#[test]
fn a_cache_with_damaged_pages_is_discarded_and_rebuilt() {
    let f = Fixture::new();
    // Enough files for a cache of many pages.
    for i in 0..400u64 {
        let p = f.src().join(format!("many/{}/f{i}", i % 20));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, xorshift_bytes(i + 100, 1500)).expect("write");
    }
    let src = f.src();
    let src = src.to_str().expect("utf-8");
    f.run(0, &["backup", src]);
    f.run(0, &["snapshots"]);
    let cache = f.cache_file();
    // Checkpointed into the main file: the damage below is what SQLite reads.
    assert!(!Path::new(&format!("{}-wal", cache.display())).exists());
    let good = std::fs::read(&cache).expect("cache");
    let mut hits = 0;
    for fraction in [0.5, 0.75, 0.9] {
        for (i, args) in [
            &["check", "--read-data"][..],
            &["restore", "latest", "--target", "RESTORE"],
            &["backup", src],
            &[
                "maintenance",
                "run",
                "--full",
                "--safety-window",
                "0s",
                "--no-backup-running",
            ],
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(&cache, &good).expect("reset cache");
            damage_page(&cache, fraction);
            std::fs::write(
                f.src().join("a.bin"),
                xorshift_bytes(fraction.to_bits() + i as u64, 9000),
            )
            .expect("change a file");
            let target = f.tmp.path().join(format!("restore-{fraction}"));
            let args: Vec<&str> = args
                .iter()
                .map(|a| {
                    if *a == "RESTORE" {
                        target.to_str().expect("utf-8")
                    } else {
                        a
                    }
                })
                .collect();
            let (_, err) = f.run(0, &args);
            hits += err.matches("is damaged").count();
            assert!(
                err.matches("is damaged").count() <= 1 && !err.contains("malformed\n"),
                "{args:?} at {fraction}: {err}"
            );
            if args[0] == "restore" {
                let diff = Command::new("diff")
                    .args(["-r", "-q", "--exclude=a.bin"])
                    .arg(f.src())
                    .arg(&target)
                    .output()
                    .expect("diff");
                assert!(diff.status.success(), "{}", text(&diff));
            }
        }
    }
    assert!(hits >= 4, "the damage was met and discarded {hits} times");
    // A backup through a rebuilt cache restores exactly.
    f.run(0, &["backup", src]);
    let target = f.tmp.path().join("final");
    f.run(
        0,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().expect("utf-8"),
        ],
    );
    let diff = Command::new("diff")
        .arg("-r")
        .arg(f.src())
        .arg(&target)
        .output()
        .expect("diff");
    assert!(diff.status.success(), "{}", text(&diff));
}

#[test]
fn a_damaged_header_is_named_by_check_and_rewritten_by_repair_header() {
    let f = Fixture::new();
    let header = f.repo().join("cairn.repository");
    let good = std::fs::read(&header).expect("header");
    let mut bad = good.clone();
    bad[20] ^= 0x10;
    std::fs::write(&header, &bad).expect("damage the header");
    let (out, _) = f.run(12, &["check"]);
    assert!(out.contains("cairn.repository"), "{out}");
    let (out, _) = f.run(0, &["repair", "header", "--dry-run"]);
    assert!(out.contains("would rewrite"), "{out}");
    assert_eq!(std::fs::read(&header).expect("header"), bad);
    f.run(0, &["repair", "header"]);
    assert_eq!(std::fs::read(&header).expect("header"), good);
    f.run(0, &["check"]);
    let (out, _) = f.run(0, &["repair", "header"]);
    assert!(out.contains("intact"), "{out}");
}

/// Each cause is said once, and each failure class has its own exit code.
#[test]
fn failures_say_each_cause_once_with_the_exit_code_of_their_class() {
    let f = Fixture::new();
    let missing = f.tmp.path().join("no-such-source");
    let (_, err) = f.run(18, &["backup", missing.to_str().expect("utf-8")]);
    assert!(
        err.contains("no such file or directory to back up"),
        "{err}"
    );
    assert_eq!(err.matches("no-such-source").count(), 1, "{err}");

    // A regular file where a repository directory should be.
    let file = f.tmp.path().join("a-file");
    std::fs::write(&file, b"not a repository").expect("write");
    let out = f
        .cmd(&["snapshots"])
        .env("CAIRN_REPOSITORY", &file)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(!err.contains("atomic_write_dir"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `ls` prints one line per entry whatever the names hold (escaped as
/// `ls -b` does); `--json` carries the exact bytes.
#[test]
fn ls_escapes_names_and_json_keeps_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let f = Fixture::new();
    let odd = f.tmp.path().join("odd");
    std::fs::create_dir_all(&odd).expect("mkdir");
    let names: [&[u8]; 3] = [b"two\nlines", b"bad\xffutf8", b"with space"];
    for name in names {
        std::fs::write(odd.join(std::ffi::OsStr::from_bytes(name)), b"x").expect("write");
    }
    f.run(0, &["backup", odd.to_str().expect("utf-8")]);
    let (out, _) = f.run(0, &["ls", "latest"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for expected in ["two\\nlines", "bad\\377utf8", "with\\ space"] {
        assert!(
            lines.iter().any(|l| l.ends_with(&format!("/{expected}"))),
            "{expected}: {out}"
        );
    }
    let (json, _) = f.run(0, &["ls", "--json", "latest"]);
    let mut seen = Vec::new();
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        let path = match v.get("path_base64") {
            Some(b64) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().expect("string"))
                    .expect("base64")
            }
            None => v["path"].as_str().expect("path").as_bytes().to_vec(),
        };
        seen.push(path.rsplit(|b| *b == b'/').next().expect("name").to_vec());
    }
    seen.sort();
    let mut want: Vec<Vec<u8>> = names.iter().map(|n| n.to_vec()).collect();
    want.sort();
    assert_eq!(seen, want);
}

/// A window shorter than a backup's checkpoint interval would delete a
/// running backup's newest packs as orphans: refused unless the user says no
/// backup runs.
#[test]
fn a_safety_window_shorter_than_the_checkpoint_interval_is_refused() {
    let f = Fixture::new();
    let (_, err) = f.run(
        2,
        &["maintenance", "run", "--full", "--safety-window", "3s"],
    );
    assert!(
        err.contains("--safety-window 3s is shorter than 15m"),
        "{err}"
    );
    assert!(err.contains("--no-backup-running"), "{err}");
    let (_, err) = f.run(2, &["prune", "--safety-window", "10m"]);
    assert!(err.contains("shorter than"), "{err}");
    f.run(
        0,
        &[
            "maintenance",
            "run",
            "--full",
            "--safety-window",
            "3s",
            "--no-backup-running",
        ],
    );
    f.run(0, &["maintenance", "run", "--full", "--now"]);
    f.run(
        0,
        &["maintenance", "run", "--full", "--safety-window", "15m"],
    );
}

/// A maintenance loop told no backup runs (`--no-backup-running`, window
/// 0) while one does: the backup's newest packs vanish under it. It says
/// so, with its own exit code, instead of reporting a damaged repository;
/// the repository stays whole and a re-run completes.
#[test]
fn a_backup_whose_packs_vanish_under_it_says_so_and_a_rerun_completes() {
    let f = Fixture::new();
    let big = f.tmp.path().join("big");
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..20 {
        std::fs::write(
            big.join(format!("f{i}")),
            xorshift_bytes(1000 + i, 2_000_000),
        )
        .expect("write");
    }
    // About 5 s of upload: long enough for the loop below to hit it.
    let mut backup = f
        .cmd(&[
            "backup",
            "--limit-upload",
            "8MiB",
            big.to_str().expect("utf-8"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    while backup.try_wait().expect("wait").is_none() {
        let _ = f.output(&[
            "maintenance",
            "run",
            "--full",
            "--safety-window",
            "0s",
            "--no-backup-running",
        ]);
    }
    let out = backup.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(19), "{err}");
    assert!(err.contains("vanished from"), "{err}");
    assert!(err.contains("resumes from its last checkpoint"), "{err}");
    f.run(0, &["check", "--read-data"]);
    f.run(0, &["backup", big.to_str().expect("utf-8")]);
}

/// A file appended to while it is read is stored as neither version: the
/// backup names it and exits 3 (`warn`), saves nothing (`fail`), or says
/// nothing (`ignore`); `--json` counts and lists it.
#[test]
fn a_file_that_changes_while_it_is_read_is_named_with_exit_3() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = Fixture::new();
    let live = f.tmp.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    let log = live.join("db.log");
    std::fs::write(&log, xorshift_bytes(77, 48 << 20)).expect("write");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("open");
            let block = xorshift_bytes(78, 4096);
            while !stop.load(Ordering::Relaxed) {
                file.write_all(&block).expect("append");
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let dir = live.to_str().expect("utf-8");
    let (json, err) = f.run(3, &["backup", "--json", dir]);
    assert!(
        err.contains("db.log: changed while it was read (size"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["summary"]["files_changed_while_read"], 1, "{v}");
    assert!(
        v["summary"]["changed_while_read"][0]["path"]
            .as_str()
            .expect("path")
            .ends_with("db.log"),
        "{v}"
    );
    let snapshots = |f: &Fixture| {
        let (out, _) = f.run(0, &["snapshots", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .expect("list")
            .len()
    };
    let before = snapshots(&f);
    let (_, err) = f.run(1, &["backup", "--on-change", "fail", "--force", dir]);
    assert!(err.contains("no snapshot saved"), "{err}");
    assert_eq!(snapshots(&f), before, "--on-change fail saved a snapshot");
    let (_, err) = f.run(0, &["backup", "--on-change", "ignore", "--force", dir]);
    assert!(!err.contains("changed while"), "{err}");
    stop.store(true, Ordering::Relaxed);
    appender.join().expect("appender");
    // Quiet again: no warning, exit 0.
    f.run(0, &["backup", "--force", dir]);
}

/// `--checkpoint-interval` and `--limit-read` end to end: a backup of one
/// file read at 256 KiB/s is killed (-9) once a checkpoint holds part of
/// it; the re-run resumes within the file instead of reading it again, and
/// the repository checks clean down to the data.
#[test]
fn a_backup_killed_mid_file_resumes_within_it() {
    let f = Fixture::new();
    let big = f.tmp.path().join("big");
    std::fs::create_dir_all(&big).expect("mkdir");
    let len = 3u64 << 20;
    std::fs::write(big.join("disk.img"), xorshift_bytes(91, len as usize)).expect("write");
    let dir = big.to_str().expect("utf-8");
    let (_, err) = f.run(2, &["backup", "--checkpoint-interval", "0s", dir]);
    assert!(err.contains("--checkpoint-interval 0"), "{err}");
    let mut slow = f
        .cmd(&[
            "backup",
            "--limit-read",
            "256KiB",
            "--checkpoint-interval",
            "300ms",
            dir,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint within a minute"
        );
        assert!(
            slow.try_wait().expect("wait").is_none(),
            "the throttled backup ended before it was killed"
        );
        let (out, _) = f.run(0, &["snapshots"]);
        if out.contains("(incomplete)") && started.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    slow.kill().expect("kill -9");
    slow.wait().expect("reap");
    let (json, _) = f.run(0, &["backup", "--json", dir]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let read = v["summary"]["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read < len - (256 << 10),
        "the re-run read {read} of {len} bytes: it did not resume ({v})"
    );
    f.run(0, &["check", "--read-data"]);
    let out = f.tmp.path().join("out");
    f.run(
        0,
        &[
            "restore",
            "latest",
            "--target",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("disk.img")).expect("restored"),
        std::fs::read(big.join("disk.img")).expect("source")
    );
}
