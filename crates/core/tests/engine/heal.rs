//! Damage is healed, never inherited: after a lost or damaged pack, the
//! next backup of the intact source stores the real bytes again (whether or
//! not `repair` ran), every snapshot that shared those blobs restores
//! exactly again, and maintenance drops the bad copies and their records.

use crate::support::*;
use bytes::Bytes;
use cairn_core::backup::BackupResult;
use cairn_core::check::{check, CheckOptions, DataSubset};
use cairn_core::gc::GcOptions;
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::repair::{
    repair_index, repair_snapshots, RepairIndexOptions, RepairSnapshotsOptions,
};
use cairn_core::restore::restore;
use cairn_core::Repository;
use cairn_golden::testkit::{noise, restores_to};
use std::path::Path;

/// A source of small files in two directories and one file of many chunks.
fn source(dir: &Path) {
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        for i in 0..6 {
            std::fs::write(dir.join(d).join(format!("f{i}.txt")), format!("{d} {i}\n")).unwrap();
        }
    }
    let mut state = 7;
    std::fs::write(dir.join("big.bin"), noise(&mut state, 600 << 10)).unwrap();
}

fn cold(t: &TestRepo) -> (Repository, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    (open_repo(&t.loc, cache.path()), cache)
}

fn read_data() -> CheckOptions {
    CheckOptions {
        read_data: Some(DataSubset::All),
    }
}

/// `maintenance run --full --now`, twice: the first plans the bad packs,
/// the second deletes them.
fn maintain(repo: &Repository) {
    let opts = MaintenanceOptions {
        mode: Mode::Full,
        gc: GcOptions {
            safety_window: std::time::Duration::ZERO,
            ..Default::default()
        },
    };
    for _ in 0..2 {
        maintenance::run(repo, &opts).expect("maintenance");
    }
}

/// The data pack holding most of big.bin's chunks.
fn big_pack(repo: &Repository, r: &BackupResult) -> String {
    let node =
        match cairn_core::browse::resolve(repo, &r.snapshot.tree, Path::new("big.bin")).unwrap() {
            cairn_core::browse::Resolved::Node(n) => n,
            _ => panic!("root"),
        };
    let cairn_core::format::tree::Payload::File(content) = &node.payload else {
        panic!("not a file")
    };
    let mut counts = std::collections::BTreeMap::new();
    for c in repo.chunk_list(content).unwrap() {
        if !c.is_hole() {
            *counts
                .entry(repo.lookup(&c.id).unwrap().unwrap().pack.path())
                .or_insert(0) += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0
}

fn assert_clean(repo: &Repository) {
    let report = check(repo, &read_data()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.damage);
}

/// The sequence of issue 26: one data pack lost, `repair index`, `repair
/// snapshots --forget-originals`, one backup of the intact source. The new
/// snapshot must hold the source's real bytes, not the repaired parent's
/// holes.
#[test]
fn backup_after_repair_stores_real_bytes() {
    let t = test_repo("heal-after-repair");
    let (_s, src) = temp_sub("src");
    source(&src);
    let first = backup_dir(&t.repo, &src);
    let pack = big_pack(&t.repo, &first);
    t.storage().unwrap().delete(&pack).unwrap();

    let (repo, _c) = cold(&t);
    repair_index(&repo, &RepairIndexOptions::default()).unwrap();
    let repaired = repair_snapshots(
        &repo,
        &RepairSnapshotsOptions {
            forget_originals: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(repaired.repaired.len(), 1);
    let second = backup_dir(&repo, &src);
    restores_to(&repo, &second.snapshot.tree, &src).expect("the new snapshot is whole");
    assert_clean(&repo);
    maintain(&repo);
    assert_clean(&repo);
    let (fresh, _c2) = cold(&t);
    restores_to(&fresh, &second.snapshot.tree, &src).expect("whole after maintenance");
}

/// A byte flipped in a data blob: `check --read-data` records it, the next
/// plain backup (all files unchanged) stores the blob again instead of
/// deduplicating against the bad copy, and the ORIGINAL snapshot restores
/// exactly again from the new copy. Maintenance then drops the bad copy and
/// the record.
#[test]
fn flipped_blob_is_recorded_and_stored_again() {
    let t = test_repo("heal-flip");
    let (_s, src) = temp_sub("src");
    source(&src);
    let first = backup_dir(&t.repo, &src);
    let pack = big_pack(&t.repo, &first);
    let storage = t.storage().unwrap();
    let mut bytes = storage.read(&pack).unwrap().to_vec();
    bytes[100] ^= 0x20;
    storage.write(&pack, Bytes::from(bytes)).unwrap();

    let (repo, _c) = cold(&t);
    let report = check(&repo, &read_data()).unwrap();
    assert!(!report.is_clean());
    assert!(report.recorded > 0, "{report:#?}");
    assert_eq!(count(&storage, "damage/"), 1);

    let second = backup_dir(&repo, &src);
    assert!(
        second.snapshot.summary.blobs_added > 0,
        "the damaged blob must be stored again"
    );
    restores_to(&repo, &second.snapshot.tree, &src).expect("new snapshot");
    restores_to(&repo, &first.snapshot.tree, &src).expect("the original is healed too");
    // Recorded damage no snapshot needs is a warning, not damage.
    let report = check(&repo, &read_data()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.damage);
    assert!(!report.contained.is_empty());

    maintain(&repo);
    let report = check(&repo, &read_data()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.damage);
    assert!(report.contained.is_empty(), "{:#?}", report.contained);
    assert!(!names(&storage, "packs/").contains(&pack));
    assert_eq!(count(&storage, "damage/"), 0);
    let (fresh, _c2) = cold(&t);
    restores_to(&fresh, &first.snapshot.tree, &src).expect("original after maintenance");
}

/// A pack lost before any repair: the restore that meets it records it, so
/// the next backup uploads the blobs again rather than deduplicating
/// against a pack that no longer exists.
#[test]
fn missing_pack_met_by_restore_is_uploaded_again() {
    let t = test_repo("heal-missing");
    let (_s, src) = temp_sub("src");
    source(&src);
    let first = backup_dir(&t.repo, &src);
    let pack = big_pack(&t.repo, &first);
    t.storage().unwrap().delete(&pack).unwrap();

    let (repo, _c) = cold(&t);
    let (_d, dst) = temp_sub("dst");
    let stats = restore(&repo, &first.snapshot.tree, &restore_opts(&dst)).unwrap();
    assert!(!stats.failed.is_empty());
    assert_eq!(count(&t.storage().unwrap(), "damage/"), 1);

    let second = backup_dir(&repo, &src);
    restores_to(&repo, &second.snapshot.tree, &src).expect("new snapshot");
    restores_to(&repo, &first.snapshot.tree, &src).expect("the original is healed");
    maintain(&repo);
    assert_clean(&repo);
    assert_eq!(count(&t.storage().unwrap(), "damage/"), 0);
}

/// A damaged directory listing fails only what is below it.
#[test]
fn damaged_subtree_fails_only_its_directory() {
    let t = test_repo("heal-subtree");
    let (_s, src) = temp_sub("src");
    source(&src);
    let first = backup_dir(&t.repo, &src);
    let node =
        match cairn_core::browse::resolve(&t.repo, &first.snapshot.tree, Path::new("a")).unwrap() {
            cairn_core::browse::Resolved::Node(n) => n,
            _ => panic!("root"),
        };
    let cairn_core::format::tree::Payload::Dir(sub) = node.payload else {
        panic!("not a dir")
    };
    let loc = t.repo.lookup(&sub).unwrap().unwrap();
    let storage = t.storage().unwrap();
    let mut bytes = storage.read(&loc.pack.path()).unwrap().to_vec();
    bytes[loc.offset as usize + 20] ^= 0x01;
    storage.write(&loc.pack.path(), Bytes::from(bytes)).unwrap();

    let (repo, _c) = cold(&t);
    let (_d, dst) = temp_sub("dst");
    let stats = restore(&repo, &first.snapshot.tree, &restore_opts(&dst)).unwrap();
    assert_eq!(stats.failed.len(), 1, "{:#?}", stats.failed);
    assert!(stats.failed[0].0.ends_with("a"), "{:#?}", stats.failed);
    assert_eq!(
        std::fs::read(dst.join("b/f1.txt")).unwrap(),
        std::fs::read(src.join("b/f1.txt")).unwrap()
    );
    assert_eq!(
        std::fs::read(dst.join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
    // The next backup stores the listing again; both snapshots restore.
    let second = backup_dir(&repo, &src);
    restores_to(&repo, &second.snapshot.tree, &src).expect("new snapshot");
    restores_to(&repo, &first.snapshot.tree, &src).expect("original healed");
}

/// A restore of a repaired snapshot names every zero-filled file.
#[test]
fn restore_of_a_repaired_snapshot_names_zero_filled_files() {
    let t = test_repo("heal-zero-filled");
    let (_s, src) = temp_sub("src");
    source(&src);
    let first = backup_dir(&t.repo, &src);
    let pack = big_pack(&t.repo, &first);
    t.storage().unwrap().delete(&pack).unwrap();
    let (repo, _c) = cold(&t);
    repair_index(&repo, &RepairIndexOptions::default()).unwrap();
    let report = repair_snapshots(&repo, &RepairSnapshotsOptions::default()).unwrap();
    let repaired = report.repaired[0].repaired.clone().unwrap();
    let (id, snap) = repo
        .find_snapshot(&repaired[..8], &Default::default())
        .unwrap();
    assert_eq!(id.to_hex(), repaired);
    let (_d, dst) = temp_sub("dst");
    let stats = restore(&repo, &snap.tree, &restore_opts(&dst)).unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    assert_eq!(stats.zero_filled.len(), 1, "{:#?}", stats.zero_filled);
    assert!(stats.zero_filled[0].0.ends_with("big.bin"));
    assert!(stats.zero_filled[0].1.contains("lost"));
}
