//! The `cairn` binary's check, repair, unlock, stats, diff and find on a
//! real backend (`CAIRN_TEST_BACKEND=fs|s3`): damage is named with its
//! snapshots and files, exit codes say clean (0) or damaged (12), repairs
//! recover what is recoverable, and the exclusive lock keeps repairs and
//! key removal apart.

use crate::common;

use cairn_core::browse::{resolve, Resolved};
use cairn_core::format::tree::Payload;
use cairn_core::lock::{ExclusiveLock, LockOptions};
use cairn_core::Repository;
use cairn_golden::testkit;
use cairn_storage::testing::{fresh_location, TestLocation};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const PASSWORD: &str = "maintenance-a";

/// Deterministic incompressible bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    common::xorshift_bytes(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, len)
}

struct Fixture {
    loc: TestLocation,
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let loc = fresh_location(name).expect("location");
        // 4 KiB packs: every damaged pack holds few blobs.
        let opts = testkit::init_options((4096, 4096));
        testkit::init_at(loc.location(), PASSWORD, &opts).expect("init");
        let f = Fixture {
            loc,
            tmp: tempfile::tempdir().expect("tmp"),
        };
        f.write("a.bin", &noise(1, 20_000));
        f.write("dir/b.bin", &noise(2, 20_000));
        f.write("dir/sub/c.txt", b"a small text file\n");
        f
    }

    fn src(&self) -> PathBuf {
        self.tmp.path().join("src")
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.src().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }

    fn cairn(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(args)
            .env("CAIRN_REPOSITORY", self.loc.location())
            .env("CAIRN_PASSWORD", PASSWORD)
            .env("CAIRN_CACHE_DIR", self.tmp.path().join("cache"))
            .env_remove("RUST_LOG")
            .current_dir(self.tmp.path())
            .output()
            .expect("run cairn")
    }

    /// Runs `cairn args`, asserts its exit code, returns stdout.
    fn run(&self, code: i32, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "cairn {args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn backup(&self) -> String {
        let src = self.src();
        self.run(0, &["backup", src.to_str().expect("utf-8")]);
        self.latest_id()
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.run(0, &["snapshots", "--json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("json")
    }

    fn latest_id(&self) -> String {
        let snaps = self.snapshots();
        snaps.last().expect("a snapshot")["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    fn open(&self) -> Repository {
        testkit::open_damaged_at(self.loc.location(), PASSWORD).expect("open")
    }

    /// The id of the one snapshot tagged `repaired` whose parent is `original`.
    fn repaired_copy_of(&self, original: &str) -> String {
        let copies: Vec<String> = self
            .snapshots()
            .iter()
            .filter(|s| s["parent"] == original && s["tags"].to_string().contains("\"repaired\""))
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(copies.len(), 1, "repaired copies of {original}: {copies:?}");
        copies[0].clone()
    }

    /// Object path of the pack holding the first chunk of `path` in the latest snapshot.
    fn pack_of(&self, path: &str) -> (String, u32) {
        let repo = self.open();
        let (_, snap) = repo
            .find_snapshot("latest", &Default::default())
            .expect("latest");
        let Resolved::Node(node) = resolve(&repo, &snap.tree, Path::new(path)).expect("resolve")
        else {
            panic!("{path} is the root")
        };
        let Payload::File(content) = node.payload else {
            panic!("{path} is not a file")
        };
        let chunk = repo.chunk_list(&content).expect("chunks")[0];
        let loc = repo.lookup(&chunk.id).expect("lookup").expect("indexed");
        (loc.pack.path(), loc.offset)
    }

    /// Which of `files` have a chunk in `pack` (in the latest snapshot).
    fn files_in_pack<'a>(&self, pack: &str, files: &[&'a str]) -> Vec<&'a str> {
        let repo = self.open();
        let (_, snap) = repo
            .find_snapshot("latest", &Default::default())
            .expect("latest");
        files
            .iter()
            .copied()
            .filter(|path| {
                let Ok(Resolved::Node(node)) = resolve(&repo, &snap.tree, Path::new(path)) else {
                    panic!("{path} is not in the snapshot")
                };
                let Payload::File(content) = node.payload else {
                    panic!("{path} is not a file")
                };
                repo.chunk_list(&content).expect("chunks").iter().any(|c| {
                    repo.lookup(&c.id)
                        .expect("lookup")
                        .expect("indexed")
                        .pack
                        .path()
                        == pack
                })
            })
            .collect()
    }

    fn restore(&self, snap: &str, code: i32) -> PathBuf {
        let target = self
            .tmp
            .path()
            .join(format!("restore-{}", &snap[..8.min(snap.len())]));
        let _ = std::fs::remove_dir_all(&target);
        self.run(
            code,
            &["restore", snap, "-t", target.to_str().expect("utf-8")],
        );
        target
    }

    fn same(&self, restored: &Path, rel: &str) -> bool {
        std::fs::read(restored.join(rel)).ok() == std::fs::read(self.src().join(rel)).ok()
    }
}

#[test]
fn deleted_pack_check_names_files_and_repair_recovers() {
    let f = Fixture::new("cli-deleted-pack");
    let snap = f.backup();
    assert!(f.run(0, &["check"]).contains("no damage found"));
    let (pack, _) = f.pack_of("dir/b.bin");
    let files = ["a.bin", "dir/b.bin", "dir/sub/c.txt"];
    let hit = f.files_in_pack(&pack, &files);
    assert!(hit.contains(&"dir/b.bin"));
    f.open().storage().delete(&pack).expect("delete pack");

    let out = f.run(12, &["check"]);
    assert!(out.contains(&pack), "{out}");
    assert!(out.contains("is missing"), "{out}");
    assert!(out.contains(&snap[..8]), "{out}");
    for file in files {
        let line = format!("    /{file}: ");
        assert_eq!(out.contains(&line), hit.contains(&file), "{file}: {out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&f.run(12, &["check", "--json"])).expect("json");
    assert_eq!(json["clean"], false);
    assert_eq!(json["affected"][0]["id"], snap.as_str());

    // Undamaged files restore; the damaged ones fail (exit 3).
    let restored = f.restore(&snap, 3);
    for file in files.iter().filter(|f| !hit.contains(f)) {
        assert!(f.same(&restored, file), "{file}");
    }

    let out = f.run(0, &["repair", "snapshots", "--dry-run"]);
    assert!(out.contains("would repair snapshot"), "{out}");
    assert_eq!(f.snapshots().len(), 1);
    let out = f.run(0, &["repair", "snapshots"]);
    assert!(out.contains("repaired snapshot"), "{out}");
    assert!(out.contains("--forget-originals"), "{out}");
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 2, "original kept");
    let repaired = snaps
        .iter()
        .find(|s| {
            s["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .any(|t| t == "repaired")
        })
        .expect("a repaired snapshot");
    assert_eq!(repaired["parent"], snap.as_str());
    let new = repaired["id"].as_str().expect("id").to_string();
    // Restored whole, but the zero-filled file is named: exit 3.
    let restored = f.restore(&new, 3);
    for file in files.iter().filter(|f| !hit.contains(f)) {
        assert!(f.same(&restored, file), "{file}");
    }
    assert_eq!(
        std::fs::metadata(restored.join("dir/b.bin"))
            .expect("b")
            .len(),
        20_000
    );

    f.run(0, &["repair", "snapshots", "--forget-originals"]);
    let snaps = f.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], new.as_str());
    assert!(f
        .run(0, &["repair", "index"])
        .contains("1 missing packs dropped"));
    assert!(f
        .run(0, &["check", "--read-data"])
        .contains("no damage found"));
}

#[test]
fn flipped_byte_is_found_only_by_reading_data() {
    let f = Fixture::new("cli-flipped-byte");
    let snap = f.backup();
    let (pack, offset) = f.pack_of("a.bin");
    let repo = f.open();
    let mut bytes = repo.storage().read(&pack).expect("read").to_vec();
    bytes[offset as usize + 30] ^= 0x40;
    repo.storage().write(&pack, bytes.into()).expect("write");

    f.run(0, &["check"]);
    for args in [
        &["check", "--read-data"][..],
        &["check", "--read-data-subset=100%"][..],
        &["check", "--read-data-subset", "1/1"][..],
    ] {
        let out = f.run(12, args);
        assert!(out.contains(&format!("pack {pack} does not hash")), "{out}");
        assert!(out.contains("data blob"), "{out}");
        assert!(out.contains("/a.bin"), "{out}");
        assert!(out.contains(&snap[..8]), "{out}");
    }
    let out = f.cairn(&["check", "--read-data-subset=0%"]);
    assert_eq!(out.status.code(), Some(2), "bad subset is a usage error");

    let restored = f.restore(&snap, 3);
    assert!(f.same(&restored, "dir/b.bin"));
    f.run(0, &["repair", "snapshots", "--read-data"]);
    // The repaired copy keeps the original's time, so "latest" cannot tell them apart.
    let new = f.repaired_copy_of(&snap);
    assert_ne!(new, snap);
    // a.bin is zero-filled where its damaged chunk was: named, exit 3.
    let restored = f.restore(&new, 3);
    assert!(f.same(&restored, "dir/b.bin"));
}

#[test]
fn deleted_index_is_rebuilt_by_repair_index() {
    let f = Fixture::new("cli-deleted-index");
    let first = f.backup();
    f.write("dir/new.txt", b"second backup\n");
    let second = f.backup();
    let repo = f.open();
    for seg in repo.storage().list("index/").expect("list") {
        repo.storage().delete(&seg.path).expect("delete");
    }
    let out = f.run(12, &["check"]);
    assert!(out.contains("packs are not in the index"), "{out}");
    // Every segment is gone, the root tree's location with them.
    assert!(out.contains("directory listing lost"), "{out}");
    assert!(
        out.contains(&first[..8]) && out.contains(&second[..8]),
        "{out}"
    );

    let out = f.run(0, &["repair", "index", "--dry-run"]);
    assert!(out.contains("would index"), "{out}");
    let out = f.run(0, &["repair", "index"]);
    assert!(out.contains("wrote 1 index segments"), "{out}");
    assert!(f
        .run(0, &["check", "--read-data"])
        .contains("no damage found"));
    for snap in [first, second] {
        let restored = f.restore(&snap, 0);
        assert!(f.same(&restored, "a.bin"));
        assert!(f.same(&restored, "dir/b.bin"));
    }
}

#[test]
fn exclusive_lock_blocks_repair_and_key_removal_until_released_or_stale() {
    let f = Fixture::new("cli-locks");
    f.backup();
    let repo = f.open();
    let hour = Duration::from_secs(3600);
    let held = ExclusiveLock::acquire(
        &repo,
        &LockOptions {
            operation: "test holder".into(),
            heartbeat: hour,
            stale_after: hour,
        },
    )
    .expect("lock");
    for args in [
        &["repair", "index"][..],
        &["repair", "snapshots"][..],
        &["key", "remove", "0000"][..],
    ] {
        let out = f.cairn(args);
        assert!(!out.status.success(), "{args:?} ran under a foreign lock");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("locked") && err.contains("test holder"),
            "{err}"
        );
    }
    // Lock-free operations run beside it.
    f.run(0, &["check"]);
    f.run(0, &["stats"]);
    assert!(f.run(0, &["unlock"]).contains("kept live lock"));
    held.release().expect("release");
    f.run(0, &["repair", "index"]);

    let _dead = ExclusiveLock::acquire(
        &repo,
        &LockOptions {
            operation: "dead holder".into(),
            heartbeat: hour,
            stale_after: Duration::from_millis(1),
        },
    )
    .expect("lock");
    std::thread::sleep(Duration::from_millis(20));
    f.run(0, &["repair", "index"]);
    let out = f.run(0, &["unlock"]);
    assert!(out.contains("removed lock: dead holder"), "{out}");
    assert!(f.run(0, &["unlock"]).contains("no locks"));
}

#[test]
fn stats_diff_and_find_describe_snapshots() {
    let f = Fixture::new("cli-stats-diff-find");
    let first = f.backup();
    f.write("dir/sub/c.txt", b"changed\n");
    f.write("notes.txt", b"added\n");
    std::fs::remove_file(f.src().join("a.bin")).expect("rm");
    let second = f.backup();

    let st: serde_json::Value =
        serde_json::from_str(&f.run(0, &["stats", "--json"])).expect("json");
    assert_eq!(st["snapshots"], 2);
    assert_eq!(st["files"], 6);
    assert_eq!(st["restore_size"], 40_018 + 20_000 + 8 + 6);
    assert!(st["unique_stored_size"].as_u64().expect("n") < 60_000);
    assert!(st["compression_ratio"].as_f64().expect("ratio") > 0.0);
    let one: serde_json::Value =
        serde_json::from_str(&f.run(0, &["stats", "--json", &first[..8]])).expect("json");
    assert_eq!(one["snapshots"], 1);

    let out = f.run(0, &["diff", &first[..8], &second[..8]]);
    assert!(out.contains("-  /a.bin\n"), "{out}");
    assert!(out.contains("+  /notes.txt\n"), "{out}");
    assert!(out.contains("M  /dir/sub/c.txt\n"), "{out}");
    assert!(!out.contains("/dir/b.bin"), "{out}");
    assert!(out.contains("1 added, 1 removed"), "{out}");

    let out = f.run(0, &["find", "*.txt"]);
    assert!(out.contains(&format!("{}  ", &first[..8])), "{out}");
    assert!(out.contains("/dir/sub/c.txt"), "{out}");
    assert!(out.contains("/notes.txt"), "{out}");
    assert!(out.contains("3 matches in 2 snapshots"), "{out}");
    let out = f.run(0, &["find", "/dir/*"]);
    assert!(
        out.contains("/dir/b.bin") && out.contains("/dir/sub\n"),
        "{out}"
    );
    assert!(!out.contains("/dir/sub/c.txt"), "{out}");
    let found: Vec<serde_json::Value> =
        serde_json::from_str(&f.run(0, &["find", "--json", "a.bin"])).expect("json");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["snapshot_id"], first.as_str());
}
