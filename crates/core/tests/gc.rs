//! Garbage collection against real repositories: prune reclaims forgotten
//! data, the sweep waits for the safety window and re-checks, a writer that
//! reused blobs of planned packs stores them again, concurrent backups and
//! maintenance never leave a snapshot referencing a deleted blob; and the
//! protocol as a property test against an abstract model.

use cairn_core::backup::{backup, BackupOptions, ParentChoice};
use cairn_core::checkpoint::{CheckpointOptions, Checkpointer};
use cairn_core::crypto::KdfParams;
use cairn_core::gc::{self, GcOptions, Roots};
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::packer::PackWriter;
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{InitOptions, OpenOptions, Repository};
use std::path::Path;
use std::time::Duration;

const PW: &str = "pw";

fn init(dir: &Path) -> Repository {
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        },
        chunk_sizes: (256, 1024, 4096),
        pack_sizes: (16 << 10, 8 << 10),
        zstd_level: 0,
    };
    let storage = cairn_storage::open(dir.to_str().unwrap()).unwrap();
    Repository::init(storage, PW, &opts, &OpenOptions::default()).unwrap()
}

/// A fresh handle with an empty in-memory cache: sees only what storage holds.
fn reopen(dir: &Path) -> Repository {
    let storage = cairn_storage::open(dir.to_str().unwrap()).unwrap();
    Repository::open(storage, PW, &OpenOptions::default()).unwrap()
}

fn write_tree(root: &Path, seed: u64, files: usize) {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for f in 0..files {
        let dir = root.join(format!("d{}", f % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 2000 + (f * 977) % 9000;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("f{f}")), data).unwrap();
    }
}

fn opts(dir: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![dir.to_path_buf()],
        source: Some("src".into()),
        host: Some("h".into()),
        parent: ParentChoice::None,
        checkpoint: CheckpointOptions {
            every: Duration::ZERO,
            every_blobs: 4,
        },
        ..Default::default()
    }
}

/// Restores `tree` and compares it file by file with `src`.
fn assert_restores(repo: &Repository, tree: &cairn_core::BlobId, src: &Path) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("r");
    let stats = restore(
        repo,
        tree,
        &RestoreOptions {
            target: target.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(stats.failed.is_empty(), "{:?}", stats.failed);
    for entry in walk(src) {
        let rel = entry.strip_prefix(src).unwrap();
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(target.join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every blob of every snapshot is indexed in a pack storage holds.
fn assert_no_dangling(dir: &Path) {
    let repo = reopen(dir);
    let roots = Roots::load(&repo).unwrap();
    for b in &roots.blobs {
        let loc = repo
            .lookup(b)
            .unwrap()
            .unwrap_or_else(|| panic!("blob {} not indexed", b.short()));
        repo.storage()
            .stat(&loc.pack.path())
            .unwrap_or_else(|e| panic!("pack of blob {} missing: {e}", b.short()));
    }
}

fn now_opts(now: chrono::DateTime<chrono::Utc>, window_secs: u64) -> GcOptions {
    GcOptions {
        safety_window: Duration::from_secs(window_secs),
        repack_threshold: 0.5,
        now,
        dry_run: false,
    }
}

#[test]
fn prune_reclaims_forgotten_data_and_keeps_the_rest() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let (a, b) = (src.path().join("a"), src.path().join("b"));
    write_tree(&a, 1, 12);
    write_tree(&b, 2, 12);
    let repo = init(repo_dir.path());
    let sa = backup(&repo, &opts(&a)).unwrap();
    let sb = backup(&repo, &opts(&b)).unwrap();
    repo.delete_snapshot(&sa.id).unwrap();
    let before: u64 = repo.storage().list("packs/").unwrap().iter().map(|o| o.size).sum();

    let dry = MaintenanceOptions {
        mode: Mode::Prune,
        gc: GcOptions {
            dry_run: true,
            ..now_opts(chrono::Utc::now(), 0)
        },
    };
    let r = maintenance::run(&repo, &dry).unwrap();
    assert!(r.bytes_planned() > 0);
    let same: u64 = repo.storage().list("packs/").unwrap().iter().map(|o| o.size).sum();
    assert_eq!(before, same, "a dry run deletes nothing");

    let wet = MaintenanceOptions {
        mode: Mode::Prune,
        gc: now_opts(chrono::Utc::now(), 0),
    };
    let r = maintenance::run(&repo, &wet).unwrap();
    let after: u64 = repo.storage().list("packs/").unwrap().iter().map(|o| o.size).sum();
    assert!(r.bytes_reclaimed() > 0);
    assert!(after < before);
    assert!(r.bytes_reclaimed() >= before - after, "report covers what storage lost");
    assert!(repo.storage().list("gc/").unwrap().is_empty());
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &sb.snapshot.tree, &b);
}

#[test]
fn sweep_waits_for_the_window_and_writers_avoid_planned_packs() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 3, 10);
    let repo = init(repo_dir.path());
    let s1 = backup(&repo, &opts(src.path())).unwrap();
    repo.delete_snapshot(&s1.id).unwrap();
    let t0 = chrono::Utc::now();
    let g = now_opts(t0, 3600);
    let m = gc::mark(&repo, &Roots::load(&repo).unwrap(), &g).unwrap();
    assert!(m.plan.is_some() && m.unused_packs > 0);
    // Too early: nothing goes.
    let early = gc::sweep(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0 + chrono::Duration::minutes(30), 3600)).unwrap();
    assert_eq!((early.plans_due, early.packs_deleted), (0, 0));
    // The same data backed up again is stored again, not deduplicated
    // against packs planned for deletion.
    let writer = reopen(repo_dir.path());
    let s2 = backup(&writer, &opts(src.path())).unwrap();
    assert!(s2.snapshot.summary.blobs_added > 0);
    let late = gc::sweep(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0 + chrono::Duration::hours(2), 3600)).unwrap();
    assert_eq!(late.plans_due, 1);
    assert!(late.packs_deleted > 0);
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &s2.snapshot.tree, src.path());
}

#[test]
fn a_writer_that_reused_blobs_of_a_later_plan_stores_them_again() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 4, 10);
    let repo = init(repo_dir.path());
    let s1 = backup(&repo, &opts(src.path())).unwrap();
    // A backup starts (it sees no plan) and reuses all of s1's blobs ...
    let writer_repo = reopen(repo_dir.path());
    let mut template = s1.snapshot.clone();
    template.complete = false;
    let mut ckpt = Checkpointer::new(&writer_repo, CheckpointOptions::default(), template).unwrap();
    // ... meanwhile s1 is forgotten and a mark plans its packs ...
    repo.delete_snapshot(&s1.id).unwrap();
    let t0 = chrono::Utc::now();
    let m = gc::mark(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0, 60)).unwrap();
    assert!(m.unused_packs > 0);
    // ... so before writing its snapshot the writer copies them out.
    let pw = PackWriter::new(&writer_repo, 1);
    pw.sync().unwrap();
    ckpt.protect(&writer_repo, &pw, &[s1.snapshot.tree]).unwrap();
    let stats = pw.finish().unwrap();
    assert!(stats.blobs > 0, "reused blobs in planned packs are stored again");
    let mut snap = s1.snapshot.clone();
    snap.time = chrono::Utc::now();
    writer_repo.save_snapshot(&snap).unwrap();
    let r = gc::sweep(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0 + chrono::Duration::seconds(120), 60)).unwrap();
    assert!(r.packs_deleted > 0);
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &snap.tree, src.path());
}

#[test]
fn sweep_keeps_planned_packs_a_new_snapshot_uses() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 5, 8);
    let repo = init(repo_dir.path());
    let s1 = backup(&repo, &opts(src.path())).unwrap();
    repo.delete_snapshot(&s1.id).unwrap();
    let t0 = chrono::Utc::now();
    gc::mark(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0, 60)).unwrap();
    // A snapshot referencing the planned blobs appears (a writer that did
    // not follow the protocol, or a checkpoint written before the plan).
    repo.save_snapshot(&s1.snapshot).unwrap();
    let r = gc::sweep(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0 + chrono::Duration::seconds(120), 60)).unwrap();
    assert_eq!(r.packs_deleted, 0);
    assert!(r.packs_kept > 0);
    assert_no_dangling(repo_dir.path());
}

#[test]
fn repack_rewrites_live_blobs_out_of_sparse_packs() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 6, 12);
    let repo = init(repo_dir.path());
    backup(&repo, &opts(src.path())).unwrap();
    // Change most files: old packs become mostly garbage.
    let old: Vec<_> = repo.list_snapshots().unwrap();
    for (i, f) in walk(src.path()).into_iter().enumerate() {
        if i % 4 != 0 {
            std::fs::write(&f, format!("new content {i}").repeat(300)).unwrap();
        }
    }
    let s2 = backup(&repo, &opts(src.path())).unwrap();
    for (id, _) in old {
        repo.delete_snapshot(&id).unwrap();
    }
    let r = maintenance::run(&repo, &MaintenanceOptions { mode: Mode::Prune, gc: GcOptions { repack_threshold: 0.9, ..now_opts(chrono::Utc::now(), 0) } }).unwrap();
    let m = r.mark.unwrap();
    assert!(m.repacked_packs > 0 && m.repacked_blobs > 0, "{m:?}");
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &s2.snapshot.tree, src.path());
}

#[test]
fn orphan_packs_are_deleted_after_the_window_and_compaction_merges_segments() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 7, 6);
    let repo = init(repo_dir.path());
    let s = backup(&repo, &opts(src.path())).unwrap();
    repo.storage().write("packs/ab/ab00000000000000000000000000000000000000000000000000000000000000", bytes::Bytes::from_static(b"interrupted upload")).unwrap();
    let t0 = chrono::Utc::now();
    let full = |now| MaintenanceOptions { mode: Mode::Full, gc: now_opts(now, 60) };
    let r1 = maintenance::run(&repo, &full(t0)).unwrap();
    assert_eq!(r1.mark.as_ref().unwrap().orphan_packs, 1);
    assert!(r1.segments_compacted >= 2, "checkpoints wrote several small segments");
    let r2 = maintenance::run(&repo, &full(t0 + chrono::Duration::seconds(61))).unwrap();
    assert_eq!(r2.sweep.unwrap().packs_deleted, 1);
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &s.snapshot.tree, src.path());
}

#[test]
fn stale_checkpoints_are_removed_and_finished_backups_remove_theirs() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 8, 9);
    let repo = init(repo_dir.path());
    let s = backup(&repo, &opts(src.path())).unwrap();
    assert!(repo.list_snapshots().unwrap().iter().all(|(_, s)| s.complete), "checkpoints removed");
    let mut ck = s.snapshot.clone();
    ck.complete = false;
    ck.time = chrono::Utc::now() - chrono::Duration::hours(2);
    repo.save_snapshot(&ck).unwrap();
    let n = gc::remove_stale_checkpoints(&repo, &now_opts(chrono::Utc::now(), 3600)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(repo.list_snapshots().unwrap().len(), 1);
}
