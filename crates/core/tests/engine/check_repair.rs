//! Corruption, check, repair and exclusive locks against a real backend
//! (`CAIRN_TEST_BACKEND=fs|s3`): a flipped byte in a pack, a deleted pack,
//! a deleted or garbled index segment; check names the damage, the
//! snapshots and the files; repair recovers what can be recovered.

use cairn_core::backup::{backup, BackupOptions};
use cairn_core::browse::{resolve, Resolved};
use cairn_core::check::{check, CheckOptions, Damage, DataSubset};
use cairn_core::format::tree::{Node, Payload};
use cairn_core::lock::{self, ExclusiveLock, LockOptions};
use cairn_core::repair::{
    repair_index, repair_snapshots, RepairIndexOptions, RepairSnapshotsOptions, DAMAGED_XATTR,
    REPAIRED_TAG,
};
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::stats::{diff, stats, Change};
use cairn_core::{BlobId, Repository, SnapshotId};
use cairn_golden::testkit;
use cairn_storage::testing::{fresh_location, TestLocation};
use rand::{RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PASSWORD: &str = "check-repair";

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct Fixture {
    loc: TestLocation,
    repo: Repository,
    src: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let loc = fresh_location(name).expect("test location");
        // 4 KiB packs: every damaged pack holds few blobs.
        let opts = testkit::init_options((4096, 4096));
        let repo = testkit::init_at(loc.location(), PASSWORD, &opts).expect("init");
        let src = tempfile::tempdir().expect("tempdir");
        let f = Fixture { loc, repo, src };
        f.write("a.bin", &random(1, 20_000));
        f.write("dir/b.bin", &random(2, 20_000));
        f.write("dir/sub/c.txt", b"a small text file\n");
        // More than 64 chunks: its chunk list lives in list blobs.
        f.write("big.bin", &random(3, 200_000));
        f
    }

    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.src.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }

    fn backup(&self) -> SnapshotId {
        let opts = BackupOptions {
            paths: vec![self.src.path().to_path_buf()],
            ..Default::default()
        };
        backup(&self.repo, &opts).expect("backup").id
    }

    /// The repository opened again by a new client with an empty cache.
    fn reopen(&self) -> Repository {
        testkit::open_damaged_at(self.loc.location(), PASSWORD).expect("open")
    }
}

fn node(repo: &Repository, snap: &SnapshotId, path: &str) -> Node {
    let s = repo.load_snapshot(snap).expect("snapshot");
    match resolve(repo, &s.tree, Path::new(path)).expect("resolve") {
        Resolved::Node(n) => n,
        Resolved::Root(_) => panic!("{path} is the root"),
    }
}

/// The pack holding the first chunk of file `path`, and that chunk.
fn pack_of_first_chunk(repo: &Repository, snap: &SnapshotId, path: &str) -> (String, BlobId, u32) {
    let Payload::File(content) = node(repo, snap, path).payload else {
        panic!("{path} is not a file")
    };
    let chunk = repo.chunk_list(&content).expect("chunks")[0];
    let loc = repo.lookup(&chunk.id).expect("lookup").expect("indexed");
    (loc.pack.path(), chunk.id, loc.offset)
}

fn restore_to(repo: &Repository, snap: &SnapshotId) -> (tempfile::TempDir, Vec<PathBuf>) {
    let s = repo.load_snapshot(snap).expect("snapshot");
    let out = tempfile::tempdir().expect("tempdir");
    let opts = RestoreOptions {
        target: out.path().join("r"),
        ..Default::default()
    };
    let stats = restore(repo, &s.tree, &opts).expect("restore runs");
    let failed = stats
        .failed
        .into_iter()
        .map(|(p, _)| {
            p.strip_prefix(&opts.target)
                .map_or(p.clone(), Path::to_path_buf)
        })
        .collect();
    (out, failed)
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("read a") == std::fs::read(b).expect("read b")
}

fn affected_paths(report: &cairn_core::check::CheckReport, snap: &SnapshotId) -> Vec<String> {
    report
        .affected
        .iter()
        .find(|a| a.id == snap.to_hex())
        .map(|a| a.paths.iter().map(|p| p.path.clone()).collect())
        .unwrap_or_default()
}

fn read_all() -> CheckOptions {
    CheckOptions {
        read_data: Some(DataSubset::All),
    }
}

#[test]
fn a_clean_repository_checks_clean_with_and_without_reading_data() {
    let f = Fixture::new("clean");
    f.backup();
    let r = check(&f.repo, &CheckOptions::default()).expect("check");
    assert!(r.is_clean(), "{:?}", r.damage);
    assert!(r.unindexed_packs.is_empty());
    let r = check(&f.repo, &read_all()).expect("check");
    assert!(r.is_clean(), "{:?}", r.damage);
    assert_eq!(r.packs_read, r.packs);
    assert!(r.packs > 2);
}

#[test]
fn flipped_byte_in_a_pack_is_named_with_its_snapshot_and_file() {
    let f = Fixture::new("flipped-byte");
    let snap = f.backup();
    let (pack, chunk, offset) = pack_of_first_chunk(&f.repo, &snap, "a.bin");
    let storage = f.repo.storage();
    let mut bytes = storage.read(&pack).expect("read pack").to_vec();
    bytes[offset as usize + 20] ^= 0x01;
    storage.write(&pack, bytes.into()).expect("write pack");

    let repo = f.reopen();
    // Structure alone cannot see a flipped byte: sizes and names still agree.
    assert!(check(&repo, &CheckOptions::default())
        .expect("check")
        .is_clean());
    let r = check(&repo, &read_all()).expect("check --read-data");
    assert!(r.damage.contains(&Damage::PackHashMismatch {
        object: pack.clone()
    }));
    assert!(r.damage.iter().any(|d| matches!(d,
        Damage::BlobDamaged { object, blob, kind, .. }
            if *object == pack && *blob == chunk.to_hex() && kind == "data")));
    assert_eq!(affected_paths(&r, &snap), vec!["/a.bin".to_string()]);

    // Undamaged files still restore; the damaged one is reported failed.
    let (out, failed) = restore_to(&repo, &snap);
    assert_eq!(failed, vec![PathBuf::from("a.bin")]);
    let r = out.path().join("r");
    assert!(same_file(
        &r.join("dir/b.bin"),
        &f.src.path().join("dir/b.bin")
    ));
    assert!(same_file(&r.join("big.bin"), &f.src.path().join("big.bin")));

    // Repair rewrites the snapshot: the lost chunk becomes zeros, marked.
    let opts = RepairSnapshotsOptions {
        read_data: true,
        ..Default::default()
    };
    let rep = repair_snapshots(&repo, &opts).expect("repair snapshots");
    assert_eq!(rep.repaired.len(), 1);
    let new =
        SnapshotId::from_hex(rep.repaired[0].repaired.as_deref().expect("written")).expect("id");
    let (out, failed) = restore_to(&repo, &new);
    assert!(failed.is_empty(), "{failed:?}");
    let restored = std::fs::read(out.path().join("r/a.bin")).expect("read");
    let original = std::fs::read(f.src.path().join("a.bin")).expect("read");
    assert_eq!(restored.len(), original.len());
    assert!(restored != original);
    let a = node(&repo, &new, "a.bin");
    assert!(a.xattrs.iter().any(|(k, _)| k == DAMAGED_XATTR));
}

#[test]
fn deleted_pack_is_named_and_repair_marks_files_and_keeps_originals() {
    let f = Fixture::new("deleted-pack");
    let snap = f.backup();
    let (pack, _, _) = pack_of_first_chunk(&f.repo, &snap, "dir/b.bin");
    f.repo.storage().delete(&pack).expect("delete");

    let repo = f.reopen();
    let r = check(&repo, &CheckOptions::default()).expect("check");
    assert!(r.damage.iter().any(|d| matches!(d,
        Damage::PackMissing { object, .. } if *object == pack)));
    let affected = affected_paths(&r, &snap);
    assert!(affected.contains(&"/dir/b.bin".to_string()), "{affected:?}");
    assert!(
        !affected.contains(&"/dir/sub/c.txt".to_string()),
        "{affected:?}"
    );
    // check predicts exactly which files a restore cannot write whole.
    let (out, failed) = restore_to(&repo, &snap);
    let mut failed: Vec<String> = failed.iter().map(|p| format!("/{}", p.display())).collect();
    failed.sort();
    assert_eq!(failed, affected);
    for rel in ["a.bin", "big.bin", "dir/sub/c.txt"] {
        if !affected.contains(&format!("/{rel}")) {
            assert!(same_file(
                &out.path().join("r").join(rel),
                &f.src.path().join(rel)
            ));
        }
    }

    let rep = repair_snapshots(&repo, &RepairSnapshotsOptions::default()).expect("repair");
    assert_eq!(rep.repaired.len(), 1);
    assert!(!rep.repaired[0].original_forgotten);
    let new =
        SnapshotId::from_hex(rep.repaired[0].repaired.as_deref().expect("written")).expect("id");
    let snaps = repo.list_snapshots().expect("list");
    assert_eq!(snaps.len(), 2, "the original is kept until confirmed");
    let repaired = repo.load_snapshot(&new).expect("load");
    assert_eq!(repaired.parent, Some(snap));
    assert!(repaired.tags.iter().any(|t| t == REPAIRED_TAG));
    let b = node(&repo, &new, "dir/b.bin");
    assert!(b.xattrs.iter().any(|(k, _)| k == DAMAGED_XATTR));
    let (out, failed) = restore_to(&repo, &new);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        std::fs::metadata(out.path().join("r/dir/b.bin"))
            .expect("stat")
            .len(),
        20_000
    );
    assert!(same_file(
        &out.path().join("r/dir/sub/c.txt"),
        &f.src.path().join("dir/sub/c.txt")
    ));

    // Running again with the user's confirmation reuses the repaired snapshot
    // and forgets the original.
    let opts = RepairSnapshotsOptions {
        forget_originals: true,
        ..Default::default()
    };
    let rep = repair_snapshots(&repo, &opts).expect("repair again");
    assert_eq!(rep.repaired.len(), 1);
    assert!(rep.repaired[0].reused && rep.repaired[0].original_forgotten);
    let snaps = repo.list_snapshots().expect("list");
    assert_eq!(snaps.iter().map(|s| s.0).collect::<Vec<_>>(), vec![new]);

    // The index still names the lost pack until the index is rebuilt, but
    // the first check recorded it and no snapshot needs it any more: a
    // warning, not damage.
    let r = check(&repo, &CheckOptions::default()).expect("check");
    assert!(r.affected.is_empty());
    assert!(r.is_clean(), "{:?}", r.damage);
    assert!(
        r.contained
            .iter()
            .any(|d| matches!(d, cairn_core::check::Damage::PackMissing { .. })),
        "{:?}",
        r.contained
    );
    let ri = repair_index(&repo, &RepairIndexOptions::default()).expect("repair index");
    assert_eq!(ri.dropped_missing, 1);
    let r = check(&f.reopen(), &read_all()).expect("check");
    assert!(r.is_clean(), "{:?}", r.damage);
}

#[test]
fn deleted_index_segment_is_rebuilt_from_packs() {
    let f = Fixture::new("deleted-index");
    let first = f.backup();
    f.write("dir/new.bin", &random(4, 30_000));
    let second = f.backup();
    let segments = f.repo.storage().list("index/").expect("list");
    assert!(segments.len() >= 2);
    // The first backup's segment(s): the oldest object by listing order is
    // arbitrary, so delete every segment that names a pack of a.bin.
    let (pack, _, _) = pack_of_first_chunk(&f.repo, &first, "a.bin");
    let mut deleted = 0;
    for s in &segments {
        let id = cairn_core::IndexId::from_hex(s.path.trim_start_matches("index/")).expect("id");
        let seg = f.repo.load_segment(&id).expect("segment");
        if seg.packs.iter().any(|p| p.id.path() == pack) {
            f.repo.storage().delete(&s.path).expect("delete");
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1);

    let repo = f.reopen();
    let r = check(&repo, &CheckOptions::default()).expect("check");
    assert!(!r.is_clean());
    assert!(r.unindexed_packs.iter().any(|p| p.object == pack));
    assert!(r
        .damage
        .iter()
        .any(|d| matches!(d, Damage::BlobMissing { .. })));
    // The lost segment may describe trees as well as a.bin's data.
    assert!(!affected_paths(&r, &first).is_empty(), "{:#?}", r.affected);

    let ri = repair_index(&repo, &RepairIndexOptions::default()).expect("repair index");
    assert!(ri.newly_indexed > 0);
    assert!(ri.unreadable.is_empty());
    assert_eq!(
        repo.storage().list("index/").expect("list").len(),
        ri.segments_written.len()
    );
    let repo = f.reopen();
    let r = check(&repo, &read_all()).expect("check");
    assert!(r.is_clean(), "{:?}", r.damage);
    assert!(r.unindexed_packs.is_empty());
    for snap in [first, second] {
        let (out, failed) = restore_to(&repo, &snap);
        assert!(failed.is_empty(), "{failed:?}");
        assert!(same_file(
            &out.path().join("r/a.bin"),
            &f.src.path().join("a.bin")
        ));
    }
}

#[test]
fn garbled_index_segment_is_reported_and_superseded() {
    let f = Fixture::new("garbled-index");
    let snap = f.backup();
    let segments = f.repo.storage().list("index/").expect("list");
    let victim = &segments[0].path;
    f.repo
        .storage()
        .write(victim, b"not an index segment".to_vec().into())
        .expect("write");
    let repo = f.reopen();
    let r = check(&repo, &CheckOptions::default()).expect("check");
    assert!(r.damage.iter().any(|d| matches!(d,
        Damage::SegmentUnreadable { object, .. } if object == victim)));
    repair_index(&repo, &RepairIndexOptions::default()).expect("repair index");
    let repo = f.reopen();
    assert!(repo.damaged_segments().unwrap().is_empty());
    let r = check(&repo, &read_all()).expect("check");
    assert!(r.is_clean(), "{:?}", r.damage);
    let (_out, failed) = restore_to(&repo, &snap);
    assert!(failed.is_empty());
}

fn quick(op: &str, heartbeat: Duration, stale_after: Duration) -> LockOptions {
    LockOptions {
        operation: op.into(),
        heartbeat,
        stale_after,
    }
}

#[test]
fn a_second_exclusive_lock_fails_naming_the_holder() {
    let f = Fixture::new("lock-conflict");
    let hour = Duration::from_secs(3600);
    let held = ExclusiveLock::acquire(&f.repo, &quick("repair index", hour, hour)).expect("first");
    let err = ExclusiveLock::acquire(&f.repo, &quick("key remove", hour, hour))
        .expect_err("second must fail");
    let msg = err.to_string();
    assert!(msg.contains("repair index"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains(&held.info().id), "{msg}");
    // The loser removed its own lock; repair refuses to run meanwhile.
    assert_eq!(lock::list_locks(&f.repo).expect("list").len(), 1);
    assert!(repair_index(&f.repo, &RepairIndexOptions::default()).is_err());
    assert_eq!(
        lock::exclusive_holder(&f.repo)
            .expect("holder")
            .map(|l| l.id),
        Some(held.info().id.clone())
    );
    held.release().expect("release");
    assert!(lock::list_locks(&f.repo).expect("list").is_empty());
    assert!(lock::exclusive_holder(&f.repo).expect("holder").is_none());
    repair_index(&f.repo, &RepairIndexOptions::default()).expect("repair after release");
}

#[test]
fn a_stale_lock_is_ignored_and_removable() {
    let f = Fixture::new("lock-stale");
    let hour = Duration::from_secs(3600);
    // A holder that stopped beating: its lock goes stale after 1 ms.
    let dead = ExclusiveLock::acquire(&f.repo, &quick("dead", hour, Duration::from_millis(1)))
        .expect("first");
    std::thread::sleep(Duration::from_millis(20));
    assert!(lock::exclusive_holder(&f.repo).expect("holder").is_none());
    let live = ExclusiveLock::acquire(&f.repo, &quick("live", hour, hour)).expect("stale ignored");
    assert_eq!(lock::list_locks(&f.repo).expect("list").len(), 2);
    let removed = lock::remove_locks(&f.repo, false).expect("unlock");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].id, dead.info().id);
    assert_eq!(
        lock::exclusive_holder(&f.repo)
            .expect("holder")
            .map(|l| l.id),
        Some(live.info().id.clone())
    );
    drop(live);
    drop(dead);
    assert!(lock::list_locks(&f.repo).expect("list").is_empty());
}

#[test]
fn the_heartbeat_rewrites_the_lock() {
    let f = Fixture::new("lock-heartbeat");
    let held = ExclusiveLock::acquire(
        &f.repo,
        &quick(
            "beating",
            Duration::from_millis(5),
            Duration::from_secs(3600),
        ),
    )
    .expect("lock");
    let created = held.info().heartbeat;
    let mut beaten = false;
    for _ in 0..2000 {
        let locks = lock::list_locks(&f.repo).expect("list");
        if locks
            .iter()
            .any(|l| l.id == held.info().id && l.heartbeat > created)
        {
            beaten = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(beaten, "the heartbeat never rewrote the lock");
    held.check().expect("heartbeats succeed");
    held.release().expect("release");
    assert!(lock::list_locks(&f.repo).expect("list").is_empty());
}

#[test]
fn stats_and_diff_describe_the_snapshots() {
    let f = Fixture::new("stats-diff");
    let first = f.backup();
    f.write("dir/sub/c.txt", b"changed\n");
    f.write("added.txt", b"new file\n");
    std::fs::remove_file(f.src.path().join("a.bin")).expect("rm");
    let second = f.backup();
    let snaps = f.repo.list_snapshots().expect("list");
    let s = stats(&f.repo, &snaps).expect("stats");
    assert_eq!(s.snapshots, 2);
    assert_eq!(s.files, 4 + 4);
    let sizes = 20_000 + 20_000 + 18 + 200_000;
    assert_eq!(s.restore_size, sizes + (sizes - 20_000 - 18 + 8 + 9));
    assert_eq!(s.missing_blobs, 0);
    // Deduplicated: the unchanged files are stored once.
    assert!(s.unique_raw_size < s.restore_size);
    assert!(s.unique_stored_size <= s.pack_size);

    let (t1, t2) = (
        f.repo.load_snapshot(&first).expect("s1").tree,
        f.repo.load_snapshot(&second).expect("s2").tree,
    );
    let d = diff(&f.repo, &t1, &t2).expect("diff");
    let got: Vec<(Change, String)> = d
        .iter()
        .map(|e| (e.change, e.path.to_string_lossy().into_owned()))
        .collect();
    assert!(got.contains(&(Change::Removed, "/a.bin".into())), "{got:?}");
    assert!(
        got.contains(&(Change::Added, "/added.txt".into())),
        "{got:?}"
    );
    assert!(
        got.contains(&(Change::Modified, "/dir/sub/c.txt".into())),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|(_, p)| p == "/big.bin" || p == "/dir/b.bin"),
        "{got:?}"
    );
    assert!(diff(&f.repo, &t1, &t1).expect("diff").is_empty());
}
