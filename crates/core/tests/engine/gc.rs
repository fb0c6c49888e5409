//! Garbage collection against real repositories: prune reclaims forgotten
//! data, the sweep waits for the safety window and re-checks, a writer that
//! reused blobs of planned packs stores them again, concurrent backups and
//! maintenance never leave a snapshot referencing a deleted blob; and the
//! protocol as a property test against an abstract model.

use cairn_core::backup::{backup, BackupOptions, ParentChoice};
use cairn_core::checkpoint::{CheckpointOptions, Checkpointer};
use cairn_core::format::kinds::{IndexSegments, ObjectKind};
use cairn_core::gc::{self, GcOptions, Roots};
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::packer::PackWriter;
use cairn_core::Repository;
use cairn_golden::testkit;
use std::path::Path;
use std::time::Duration;

const PW: &str = "pw";

/// Small packs and no compression: a few files make several packs.
fn init(dir: &Path) -> Repository {
    testkit::init_uncompressed_at(dir, PW, (16 << 10, 8 << 10)).unwrap()
}

/// A fresh handle with an empty in-memory cache: sees only what storage holds.
fn reopen(dir: &Path) -> Repository {
    testkit::open_at(dir.to_str().unwrap(), PW).unwrap()
}

fn write_tree(root: &Path, seed: u64, files: usize) {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for f in 0..files {
        let dir = root.join(format!("d{}", f % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let data = testkit::noise(&mut x, 2000 + (f * 977) % 9000);
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
    testkit::restores_to(repo, tree, src).unwrap();
}

/// Every blob of every snapshot is indexed in a pack storage holds.
fn assert_no_dangling(dir: &Path) {
    let repo = reopen(dir);
    let roots = Roots::load(&repo).unwrap();
    for b in &roots.all_referenced(&repo).unwrap() {
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
    let before: u64 = repo
        .storage()
        .list("packs/")
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();

    let dry = MaintenanceOptions {
        mode: Mode::Prune,
        gc: GcOptions {
            dry_run: true,
            ..now_opts(chrono::Utc::now(), 0)
        },
    };
    let r = maintenance::run(&repo, &dry).unwrap();
    assert!(r.bytes_planned() > 0);
    let same: u64 = repo
        .storage()
        .list("packs/")
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    assert_eq!(before, same, "a dry run deletes nothing");

    let wet = MaintenanceOptions {
        mode: Mode::Prune,
        gc: now_opts(chrono::Utc::now(), 0),
    };
    let r = maintenance::run(&repo, &wet).unwrap();
    let after: u64 = repo
        .storage()
        .list("packs/")
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    assert!(r.bytes_reclaimed() > 0);
    assert!(after < before);
    assert!(
        r.bytes_reclaimed() >= before - after,
        "report covers what storage lost"
    );
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
    let early = gc::sweep(
        &repo,
        &Roots::load(&repo).unwrap(),
        &now_opts(t0 + chrono::Duration::minutes(30), 3600),
    )
    .unwrap();
    assert_eq!((early.plans_due, early.packs_deleted), (0, 0));
    // The same data backed up again is stored again, not deduplicated
    // against packs planned for deletion.
    let writer = reopen(repo_dir.path());
    let s2 = backup(&writer, &opts(src.path())).unwrap();
    assert!(s2.snapshot.summary.blobs_added > 0);
    let late = gc::sweep(
        &repo,
        &Roots::load(&repo).unwrap(),
        &now_opts(t0 + chrono::Duration::hours(2), 3600),
    )
    .unwrap();
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
    let pw = PackWriter::new(&writer_repo, 1).unwrap();
    pw.sync().unwrap();
    ckpt.protect(&writer_repo, &pw, &[s1.snapshot.tree])
        .unwrap();
    let stats = pw.finish().unwrap();
    assert!(
        stats.blobs > 0,
        "reused blobs in planned packs are stored again"
    );
    let mut snap = s1.snapshot.clone();
    snap.time = chrono::Utc::now();
    writer_repo.save_snapshot(&snap).unwrap();
    let r = gc::sweep(
        &repo,
        &Roots::load(&repo).unwrap(),
        &now_opts(t0 + chrono::Duration::seconds(120), 60),
    )
    .unwrap();
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
    // No checkpoints: their partial trees are blobs the snapshot does not
    // reference, whose packs the sweep rightly deletes.
    let mut o = opts(src.path());
    o.checkpoint.every_blobs = 0;
    let s1 = backup(&repo, &o).unwrap();
    repo.delete_snapshot(&s1.id).unwrap();
    let t0 = chrono::Utc::now();
    gc::mark(&repo, &Roots::load(&repo).unwrap(), &now_opts(t0, 60)).unwrap();
    // A snapshot referencing the planned blobs appears (a writer that did
    // not follow the protocol, or a checkpoint written before the plan).
    repo.save_snapshot(&s1.snapshot).unwrap();
    let r = gc::sweep(
        &repo,
        &Roots::load(&repo).unwrap(),
        &now_opts(t0 + chrono::Duration::seconds(120), 60),
    )
    .unwrap();
    assert_eq!(r.packs_deleted, 0);
    assert!(r.packs_kept > 0);
    assert_no_dangling(repo_dir.path());
}

/// Backs up a tree of `src` (noise from `seed`), changes three files in
/// four and backs up again, so the first version's packs become mostly
/// garbage once it is forgotten; returns the first version's snapshots and
/// the second backup.
fn two_versions(
    repo: &Repository,
    src: &Path,
    seed: u64,
) -> (
    Vec<cairn_core::SnapshotId>,
    cairn_core::backup::BackupResult,
) {
    write_tree(src, seed, 12);
    backup(repo, &opts(src)).unwrap();
    let old = repo
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for (i, f) in crate::support::files_below(src).into_iter().enumerate() {
        if !i.is_multiple_of(4) {
            std::fs::write(&f, format!("new content {i}").repeat(300)).unwrap();
        }
    }
    (old, backup(repo, &opts(src)).unwrap())
}

/// Runs a prune that deletes at once and repacks packs under 90% live.
fn repack_now(repo: &Repository) -> cairn_core::gc::MarkReport {
    maintenance::run(
        repo,
        &MaintenanceOptions {
            mode: Mode::Prune,
            gc: GcOptions {
                repack_threshold: 0.9,
                ..now_opts(chrono::Utc::now(), 0)
            },
        },
    )
    .unwrap()
    .mark
    .unwrap()
}

#[test]
fn repack_rewrites_live_blobs_out_of_sparse_packs() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    let (old, s2) = two_versions(&repo, src.path(), 6);
    for id in old {
        repo.delete_snapshot(&id).unwrap();
    }
    let m = repack_now(&repo);
    assert!(m.repacked_packs > 0 && m.repacked_blobs > 0, "{m:?}");
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &s2.snapshot.tree, src.path());
}

/// The packs listed in `gc/` plans, sorted.
fn planned(repo: &Repository) -> Vec<cairn_core::PackId> {
    let mut packs: Vec<_> = gc::load_plan_set(repo, &Default::default())
        .unwrap()
        .plans()
        .flat_map(|(_, p)| p.packs.clone())
        .collect();
    packs.sort();
    packs
}

/// Every data blob the mark and the sweep meet is a false positive of the
/// reachability filter (a saturated one): the second walk that confirms
/// them must make them plan, rewrite and delete exactly what exact
/// reachability does, and never keep a dead pack for them. (A saturated
/// filter makes every pack look wholly live, so the repack threshold is
/// set above 1: every pack goes through the confirmed path. A real filter
/// inflates a pack's live bytes by its false-positive rate, ~0.1%.)
#[test]
fn reachability_filter_false_positives_change_no_decision() {
    let exact_dir = tempfile::tempdir().unwrap();
    let filtered_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let exact = init(exact_dir.path());
    let (old, s2) = two_versions(&exact, src.path(), 11);
    for id in old {
        exact.delete_snapshot(&id).unwrap();
    }
    // The same repository, copied before any maintenance.
    cairn_golden::repos::copy_dir(exact_dir.path(), filtered_dir.path()).unwrap();
    let filtered = reopen(filtered_dir.path());
    let t0 = chrono::Utc::now();
    let g = |now| GcOptions {
        repack_threshold: 1.01,
        ..now_opts(now, 60)
    };
    let m_exact = gc::mark(&exact, &Roots::load(&exact).unwrap(), &g(t0)).unwrap();
    let roots = Roots::load_saturated(&filtered).unwrap();
    let m_filtered = gc::mark(&filtered, &roots, &g(t0)).unwrap();
    assert!(
        m_exact.unused_packs + m_exact.repacked_packs > 0 && m_exact.repacked_blobs > 0,
        "{m_exact:?}"
    );
    let mut same = m_filtered.clone();
    same.plan = m_exact.plan;
    same.referenced_blobs = m_exact.referenced_blobs;
    assert_eq!(same, m_exact, "the same decisions");
    assert_eq!(planned(&filtered), planned(&exact));
    let later = t0 + chrono::Duration::seconds(61);
    let w_exact = gc::sweep(&exact, &Roots::load(&exact).unwrap(), &g(later)).unwrap();
    let w_filtered = gc::sweep(&filtered, &roots, &g(later)).unwrap();
    assert!(w_exact.packs_deleted > 0, "{w_exact:?}");
    assert_eq!(w_filtered, w_exact, "the same packs deleted, none kept");
    assert!(planned(&filtered).is_empty());
    assert_no_dangling(filtered_dir.path());
    assert_restores(&reopen(filtered_dir.path()), &s2.snapshot.tree, src.path());
}

/// A sweep's index rewrite merges the old segments in groups, one new
/// segment each: with groups of one blob every segment listing a kept pack
/// becomes one of its own, each superseding exactly its old one, and the
/// index describes the same packs.
#[test]
fn segments_are_rewritten_in_groups_of_bounded_size() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    let mut last = None;
    for seed in [21, 22, 23] {
        write_tree(src.path(), seed, 6);
        let mut o = opts(src.path());
        o.checkpoint.every_blobs = 0;
        last = Some(backup(&repo, &o).unwrap());
    }
    let last = last.unwrap();
    let mut old = repo.objects().list_ids::<IndexSegments>().unwrap();
    old.sort();
    assert!(old.len() >= 3, "{old:?}");
    let before = gc::indexed_packs(&repo).unwrap();
    let written = gc::supersede_segments_in_groups(&repo, &old, |_| true, 1).unwrap();
    assert_eq!(written.len(), old.len());
    for (new, old) in written.iter().zip(&old) {
        assert_eq!(repo.load_segment(new).unwrap().supersedes, vec![*old]);
    }
    let mut now = repo.objects().list_ids::<IndexSegments>().unwrap();
    now.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(now, expected, "the old segments are gone");
    assert_eq!(gc::indexed_packs(&repo).unwrap(), before);
    assert_no_dangling(repo_dir.path());
    assert_restores(&reopen(repo_dir.path()), &last.snapshot.tree, src.path());
}

#[test]
fn orphan_packs_are_deleted_after_the_window_and_compaction_merges_segments() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    // Three backups without checkpoints (whose superseded trees would be
    // garbage too): three small index segments, no pack but the orphan
    // to delete.
    let mut s = None;
    for seed in [7, 8, 9] {
        write_tree(src.path(), seed, 6);
        let mut o = opts(src.path());
        o.checkpoint.every_blobs = 0;
        o.parent = ParentChoice::Auto;
        s = Some(backup(&repo, &o).unwrap());
    }
    let s = s.unwrap();
    repo.storage()
        .write(
            "packs/ab/ab00000000000000000000000000000000000000000000000000000000000000",
            bytes::Bytes::from_static(b"interrupted upload"),
        )
        .unwrap();
    let t0 = chrono::Utc::now();
    let full = |now| MaintenanceOptions {
        mode: Mode::Full,
        gc: now_opts(now, 60),
    };
    let r1 = maintenance::run(&repo, &full(t0)).unwrap();
    assert_eq!(r1.mark.as_ref().unwrap().orphan_packs, 1);
    assert!(
        r1.segments_compacted >= 2,
        "three backups wrote three small segments"
    );
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
    assert!(
        repo.list_snapshots()
            .unwrap()
            .iter()
            .all(|(_, s)| s.complete),
        "checkpoints removed"
    );
    let mut ck = s.snapshot.clone();
    ck.complete = false;
    ck.time = chrono::Utc::now() - chrono::Duration::hours(2);
    repo.save_snapshot(&ck).unwrap();
    let n = gc::remove_stale_checkpoints(&repo, &now_opts(chrono::Utc::now(), 3600)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(repo.list_snapshots().unwrap().len(), 1);
}

#[test]
fn staging_files_of_dead_writers_are_removed_after_the_window() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 11, 12);
    let repo = init(repo_dir.path());
    let snap = backup(&repo, &opts(src.path())).unwrap();
    let staging = cairn_storage::staging_dir(repo_dir.path());
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(
        left.is_empty(),
        "a finished backup leaves no staging file: {left:?}"
    );

    // What a backup killed mid-pack leaves behind.
    std::fs::write(staging.join("pack-dead.tmp"), vec![7u8; 5000]).unwrap();
    let now = chrono::Utc::now();
    let run = |now, dry_run| {
        let opts = MaintenanceOptions {
            mode: Mode::Full,
            gc: GcOptions {
                dry_run,
                ..now_opts(now, 3600)
            },
        };
        maintenance::run(&repo, &opts).unwrap().stale_staging
    };
    assert_eq!(run(now, false), (0, 0), "younger than the window: kept");
    let later = now + chrono::Duration::seconds(3601);
    assert_eq!(run(later, true), (1, 5000), "a dry run counts it");
    assert!(staging.join("pack-dead.tmp").exists(), "and keeps it");
    assert_eq!(run(later, false), (1, 5000));
    assert!(!staging.join("pack-dead.tmp").exists());
    assert_restores(&reopen(repo_dir.path()), &snap.snapshot.tree, src.path());
}

/// Backs up with `o`, again if the backup failed with "interference": the
/// loud failure the protocol gives a backup that went longer than the
/// safety window between two looks at `gc/` (here 2 s, which a loaded
/// machine's scheduler can exceed; the CLI does not accept under 15 min
/// while backups run). Such a backup wrote no snapshot; counted in
/// `stalls`. Any other failure fails the test.
fn backup_despite_stalls(
    repo: &Repository,
    o: &BackupOptions,
    stalls: &std::sync::atomic::AtomicU32,
) {
    for _ in 0..3 {
        match backup(repo, o) {
            Ok(_) => return,
            Err(cairn_core::Error::Interference { .. }) => {
                stalls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => panic!("backup failed: {e}"),
        }
    }
    panic!("three backups in a row stalled past the safety window");
}

#[test]
fn concurrent_backups_and_maintenance_never_lose_a_referenced_blob() {
    concurrent_backups_and_maintenance(false);
}

/// The same with compression on: the files the backups rewrite are text,
/// so they go into bundles, which maintenance repacks member by member
/// while backups deduplicate against them.
#[test]
fn concurrent_backups_and_maintenance_never_lose_a_bundled_blob() {
    concurrent_backups_and_maintenance(true);
}

fn concurrent_backups_and_maintenance(compressed: bool) {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let srcs: Vec<_> = (0..2).map(|i| src.path().join(format!("s{i}"))).collect();
    for (i, s) in srcs.iter().enumerate() {
        write_tree(s, 10 + i as u64, 9);
    }
    if compressed {
        testkit::init_at(
            &repo_dir.path().to_string_lossy(),
            PW,
            &testkit::init_options((16 << 10, 8 << 10)),
        )
        .unwrap();
    } else {
        init(repo_dir.path());
    }
    let path = repo_dir.path().to_path_buf();
    let stalls = std::sync::atomic::AtomicU32::new(0);
    let stalls = &stalls;
    for round in 0..8u64 {
        std::thread::scope(|scope| {
            for (i, s) in srcs.iter().enumerate() {
                let path = path.clone();
                scope.spawn(move || {
                    let repo = reopen(&path);
                    for k in 0..3u64 {
                        // Change a third of the files, back up, forget all
                        // but the newest snapshot of this source.
                        for (j, f) in crate::support::files_below(s).into_iter().enumerate() {
                            if (j as u64 + k + round).is_multiple_of(3) {
                                std::fs::write(&f, format!("{i}/{round}/{k}/{j}").repeat(200 + j))
                                    .unwrap();
                            }
                        }
                        let mut o = opts(s);
                        o.source = Some(format!("src{i}"));
                        backup_despite_stalls(&repo, &o, stalls);
                        let mine: Vec<_> = gc::list_snapshots(&repo)
                            .unwrap()
                            .into_iter()
                            .filter(|(_, sn)| sn.source == format!("src{i}") && sn.complete)
                            .collect();
                        for (id, _) in &mine[..mine.len() - 1] {
                            repo.delete_snapshot(id).unwrap();
                        }
                    }
                });
            }
            let path = path.clone();
            scope.spawn(move || {
                let repo = reopen(&path);
                for _ in 0..4 {
                    let m = MaintenanceOptions {
                        mode: Mode::Full,
                        gc: GcOptions {
                            // Shortened window: plans from earlier rounds are swept
                            // while backups run.
                            safety_window: Duration::from_secs(2),
                            repack_threshold: 0.7,
                            now: chrono::Utc::now(),
                            dry_run: false,
                        },
                    };
                    maintenance::run(&repo, &m).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                }
            });
        });
        assert_no_dangling(&path);
    }
    // 48 backups: a stall past the window is rare even on a loaded machine.
    let stalls = stalls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(stalls <= 4, "{stalls} backups stalled past a 2 s window");
    let repo = reopen(&path);
    for (i, s) in srcs.iter().enumerate() {
        let (_, snap) = repo
            .list_snapshots()
            .unwrap()
            .into_iter()
            .rev()
            .find(|(_, sn)| sn.source == format!("src{i}") && sn.complete)
            .unwrap();
        assert_restores(&repo, &snap.tree, s);
    }
}

/// The protocol as an abstract model: packs, plans, snapshots, backups
/// that reuse or write blobs and checkpoint, marks split in two (listing
/// and plan write) so backups interleave, sweeps and a clock.
mod model {
    use proptest::prelude::*;
    use std::collections::HashSet;

    const W: u64 = 10; // safety window
    const C: u64 = 4; // every live backup checkpoints at least this often
    const BLOBS: u32 = 12;

    #[derive(Debug, Clone)]
    pub enum Op {
        Start,
        Use(usize, u32),
        Checkpoint(usize),
        Finish(usize),
        Kill(usize),
        Forget(usize),
        MarkBegin,
        MarkEnd,
        Sweep,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Start),
            6 => (0..4usize, 0..BLOBS).prop_map(|(b, x)| Op::Use(b, x)),
            2 => (0..4usize).prop_map(Op::Checkpoint),
            2 => (0..4usize).prop_map(Op::Finish),
            1 => (0..4usize).prop_map(Op::Kill),
            2 => (0..6usize).prop_map(Op::Forget),
            2 => Just(Op::MarkBegin),
            2 => Just(Op::MarkEnd),
            2 => Just(Op::Sweep),
            3 => (1..4u64).prop_map(Op::Advance),
        ]
    }

    struct Pack {
        blobs: Vec<u32>,
        indexed: bool,
        deleted: bool,
    }
    struct Plan {
        created: u64,
        packs: Vec<usize>,
        live: bool,
    }
    struct Snap {
        refs: HashSet<u32>,
        complete: bool,
        written: u64,
        present: bool,
    }
    struct Backup {
        alive: bool,
        refs: HashSet<u32>,
        pending: Vec<usize>,
        seen: HashSet<usize>,
        last: u64,
        ckpt: Option<usize>,
    }

    #[derive(Default)]
    struct World {
        clock: u64,
        packs: Vec<Pack>,
        plans: Vec<Plan>,
        snaps: Vec<Snap>,
        backups: Vec<Backup>,
        mark: Option<(HashSet<u32>, Vec<usize>)>,
    }

    impl World {
        fn live_plans(&self) -> HashSet<usize> {
            (0..self.plans.len())
                .filter(|&p| self.plans[p].live)
                .collect()
        }
        fn planned(&self, plans: &HashSet<usize>) -> HashSet<usize> {
            plans
                .iter()
                .flat_map(|&p| self.plans[p].packs.iter().copied())
                .collect()
        }
        fn readable(&self, b: u32) -> bool {
            self.packs
                .iter()
                .any(|p| p.indexed && !p.deleted && p.blobs.contains(&b))
        }
        fn has_blob(&self, b: u32, plans: &HashSet<usize>) -> bool {
            let planned = self.planned(plans);
            self.packs.iter().enumerate().any(|(i, p)| {
                p.indexed && !p.deleted && !planned.contains(&i) && p.blobs.contains(&b)
            })
        }
        fn new_pack(&mut self, blobs: Vec<u32>, indexed: bool) -> usize {
            self.packs.push(Pack {
                blobs,
                indexed,
                deleted: false,
            });
            self.packs.len() - 1
        }
        fn roots(&self) -> HashSet<u32> {
            self.snaps
                .iter()
                .filter(|s| s.present)
                .flat_map(|s| s.refs.iter().copied())
                .collect()
        }
        fn remove_stale(&mut self) {
            let clock = self.clock;
            for s in &mut self.snaps {
                if s.present && !s.complete && s.written + W <= clock {
                    s.present = false;
                }
            }
        }

        /// Writer side: index pending packs, refresh plans, store again
        /// reused blobs that only planned packs hold, write a snapshot.
        fn checkpoint(&mut self, b: usize, complete: bool) {
            for p in std::mem::take(&mut self.backups[b].pending) {
                self.packs[p].indexed = true;
            }
            let plans = self.live_plans();
            if !plans.is_subset(&self.backups[b].seen) {
                let refs: Vec<u32> = self.backups[b].refs.iter().copied().collect();
                for x in refs {
                    if !self.has_blob(x, &plans) {
                        if !self.readable(x) {
                            // The backup fails (safe): it writes no snapshot.
                            self.backups[b].alive = false;
                            return;
                        }
                        self.new_pack(vec![x], true);
                    }
                }
            }
            self.backups[b].seen = plans;
            let snap = Snap {
                refs: self.backups[b].refs.clone(),
                complete,
                written: self.clock,
                present: true,
            };
            self.snaps.push(snap);
            if let Some(old) = self.backups[b].ckpt.take() {
                self.snaps[old].present = false;
            }
            if complete {
                self.backups[b].alive = false;
            } else {
                self.backups[b].ckpt = Some(self.snaps.len() - 1);
            }
            self.backups[b].last = self.clock;
        }

        fn apply(&mut self, op: &Op) {
            let alive = |w: &World, b: usize| w.backups.get(b).is_some_and(|x| x.alive);
            match *op {
                Op::Start => {
                    let seen = self.live_plans();
                    self.backups.push(Backup {
                        alive: true,
                        refs: HashSet::new(),
                        pending: vec![],
                        seen,
                        last: self.clock,
                        ckpt: None,
                    });
                }
                Op::Use(b, x) if alive(self, b) => {
                    let seen = self.backups[b].seen.clone();
                    if !self.has_blob(x, &seen) && !self.backups[b].refs.contains(&x) {
                        let p = self.new_pack(vec![x], false);
                        self.backups[b].pending.push(p);
                    }
                    self.backups[b].refs.insert(x);
                }
                Op::Checkpoint(b) if alive(self, b) => self.checkpoint(b, false),
                Op::Finish(b) if alive(self, b) => self.checkpoint(b, true),
                Op::Kill(b) if alive(self, b) => self.backups[b].alive = false,
                Op::Forget(i) => {
                    if let Some(s) = self
                        .snaps
                        .iter_mut()
                        .filter(|s| s.present && s.complete)
                        .nth(i)
                    {
                        s.present = false;
                    }
                }
                Op::MarkBegin => {
                    self.remove_stale();
                    let roots = self.roots();
                    let planned = self.planned(&self.live_plans());
                    let mut doomed = Vec::new();
                    for (i, p) in self.packs.iter().enumerate() {
                        if p.deleted || planned.contains(&i) {
                            continue;
                        }
                        let live = p.blobs.iter().any(|b| roots.contains(b));
                        if !p.indexed || !live {
                            doomed.push(i);
                        }
                    }
                    self.mark = Some((roots, doomed));
                }
                Op::MarkEnd => {
                    if let Some((_, doomed)) = self.mark.take() {
                        if !doomed.is_empty() {
                            self.plans.push(Plan {
                                created: self.clock,
                                packs: doomed,
                                live: true,
                            });
                        }
                    }
                }
                Op::Sweep => {
                    self.remove_stale();
                    let roots = self.roots();
                    let all = self.planned(&self.live_plans());
                    for pi in 0..self.plans.len() {
                        if !self.plans[pi].live || self.clock < self.plans[pi].created + W {
                            continue;
                        }
                        for &p in &self.plans[pi].packs.clone() {
                            let keep = self.packs[p].blobs.iter().any(|b| {
                                roots.contains(b)
                                    && !self.packs.iter().enumerate().any(|(j, q)| {
                                        j != p
                                            && q.indexed
                                            && !q.deleted
                                            && !all.contains(&j)
                                            && q.blobs.contains(b)
                                    })
                            });
                            if !keep {
                                self.packs[p].deleted = true;
                            }
                        }
                        self.plans[pi].live = false;
                    }
                }
                Op::Advance(d) => {
                    // Environment assumption: live backups checkpoint at least every C.
                    for b in 0..self.backups.len() {
                        if self.backups[b].alive && self.clock + d > self.backups[b].last + C {
                            self.checkpoint(b, false);
                        }
                    }
                    self.clock += d;
                }
                _ => {}
            }
        }

        fn check(&self) -> Result<(), String> {
            for (i, s) in self.snaps.iter().enumerate() {
                if !s.present {
                    continue;
                }
                for b in &s.refs {
                    if !self.readable(*b) {
                        return Err(format!("snapshot {i} references deleted blob {b}"));
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn no_snapshot_ever_references_a_deleted_blob(ops in proptest::collection::vec(op(), 1..80)) {
            let mut w = World::default();
            for o in &ops {
                w.apply(o);
                prop_assert!(w.check().is_ok(), "after {:?}: {}", o, w.check().unwrap_err());
            }
        }
    }
}

#[test]
fn copy_rewrites_ids_for_the_destination_and_a_second_copy_adds_nothing() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path(), 9, 10);
    // A big file: its chunk list goes to list blobs.
    std::fs::write(
        src.path().join("big"),
        (0..400_000u32)
            .flat_map(|i: u32| i.wrapping_mul(2654435761).to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let a = init(a_dir.path());
    let b = init(b_dir.path());
    let s = backup(&a, &opts(src.path())).unwrap();
    let first = cairn_core::copy::copy_snapshots(&a, &b, &[s.id]).unwrap();
    assert_eq!(first.copied.len(), 1);
    assert!(first.blobs_added > 0);
    let second = cairn_core::copy::copy_snapshots(&a, &reopen(b_dir.path()), &[s.id]).unwrap();
    assert_eq!(
        (
            second.blobs_added,
            second.copied.len(),
            second.skipped.len()
        ),
        (0, 0, 1)
    );
    let b = reopen(b_dir.path());
    let snaps = b.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_ne!(
        snaps[0].1.tree, s.snapshot.tree,
        "ids are keyed per repository"
    );
    assert_eq!(
        (&snaps[0].1.host, snaps[0].1.time),
        (&s.snapshot.host, s.snapshot.time)
    );
    assert_restores(&b, &snaps[0].1.tree, src.path());
    assert!(cairn_core::check::check(&b, &Default::default())
        .unwrap()
        .is_clean());
}

/// A handle opened before a maintenance run repacked and swept packs (a
/// FUSE mount, a long browse) holds a stale index: a blob whose pack is
/// gone is looked up again in the refreshed index and read from its new
/// pack, and nothing is recorded as damage.
#[test]
fn a_handle_older_than_a_repack_reads_blobs_from_their_new_packs() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    let (old, s2) = two_versions(&repo, src.path(), 9);
    // The long-lived reader: its index is read now.
    let reader = reopen(repo_dir.path());
    reader.load_tree(&s2.snapshot.tree).unwrap();
    for id in old {
        repo.delete_snapshot(&id).unwrap();
    }
    let m = repack_now(&repo);
    assert!(m.repacked_packs > 0, "{m:?}");
    // Every blob of the new snapshot, read through the stale handle.
    let mut read = 0;
    repo.index()
        .unwrap()
        .for_each_location(|_, _, e| {
            reader.read_blob(e.kind, &e.id).unwrap();
            read += 1;
            Ok(())
        })
        .unwrap();
    assert!(read > 0);
    assert_eq!(reader.record_found_damage().unwrap(), 0, "no damage noted");
    assert_restores(&reopen(repo_dir.path()), &s2.snapshot.tree, src.path());
}

/// Mark reads the index from `index/`, not from the cache: a segment
/// superseded (its replacement written, then it deleted) between the
/// listing and its read is followed to its replacement, and the mark
/// decides what it would have decided without the race.
#[test]
fn a_segment_superseded_while_the_mark_reads_the_index_is_followed() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    let mut first = None;
    for seed in [31, 32, 33] {
        write_tree(src.path(), seed, 6);
        let mut o = opts(src.path());
        o.checkpoint.every_blobs = 0;
        let s = backup(&repo, &o).unwrap();
        first.get_or_insert(s.id);
    }
    repo.delete_snapshot(&first.unwrap()).unwrap();
    let dry = GcOptions {
        dry_run: true,
        ..now_opts(chrono::Utc::now(), 60)
    };
    let expected = gc::mark(&repo, &Roots::load(&repo).unwrap(), &dry).unwrap();
    assert!(expected.unused_packs > 0, "{expected:?}");
    let victim = repo.objects().list_ids::<IndexSegments>().unwrap()[0];
    let maintenance = reopen(repo_dir.path());
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = fired.clone();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = armed.clone();
    let victim_path = IndexSegments::path(&victim);
    // Runs once, before the first read of the victim after it is armed.
    let hooked = std::sync::Arc::new(crate::support::ReadHooked {
        inner: repo.storage().clone(),
        on_read: Box::new(move |path| {
            if path == victim_path && trigger.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let mut seg = maintenance.load_segment(&victim).expect("victim");
                seg.supersedes = vec![victim];
                maintenance
                    .objects()
                    .save::<IndexSegments>(&seg)
                    .expect("replacement");
                maintenance.storage().delete(path).expect("delete");
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }),
    });
    let handle = Repository::open(hooked.clone(), PW, &cairn_core::OpenOptions::default()).unwrap();
    let roots = Roots::load(&handle).unwrap();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = gc::mark(&handle, &roots, &dry).unwrap();
    assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(got, expected);
    assert!(!repo
        .objects()
        .list_ids::<IndexSegments>()
        .unwrap()
        .contains(&victim));
}
