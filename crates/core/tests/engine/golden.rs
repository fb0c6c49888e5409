//! The golden repositories in testdata/repos (written once by
//! `cargo run -p cairn-golden -- testdata/repos`): today's code reads `v1`
//! and diagnoses each broken variant.

use crate::support::*;
use cairn_core::browse::{dump, resolve, Resolved};
use cairn_core::format::tree::{Content, Payload};
use cairn_core::format::Id;
use cairn_core::restore::{restore, RestoreStats};
use cairn_core::{Repository, Snapshot, SnapshotFilter};
use cairn_golden::fixture::{golden_tree, golden_update};
use cairn_golden::repos::{self, DAMAGED_FILE, FIRST_TAG, SECOND_TAG};
use cairn_golden::{assert_same_tree, CompareOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/repos")
        .join(name)
}

/// A private copy of a golden repository (tests must not touch testdata)
/// opened with a cache in a temporary directory.
struct Golden {
    dir: tempfile::TempDir,
    _cache: tempfile::TempDir,
    repo: Repository,
}

impl Golden {
    fn open(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        repos::copy_dir(&testdata(name), &dir.path().join("repo")).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let storage = cairn_storage::open(dir.path().join("repo").to_str().unwrap()).unwrap();
        let repo = Repository::open(storage, repos::PASSWORD, &open_opts(cache.path())).unwrap();
        Self {
            dir,
            _cache: cache,
            repo,
        }
    }

    fn snapshot(&self, tag: &str) -> Snapshot {
        let filter = SnapshotFilter {
            tags: vec![tag.into()],
            ..Default::default()
        };
        self.repo.find_snapshot("latest", &filter).unwrap().1
    }

    fn restore(&self, tag: &str) -> (tempfile::TempDir, PathBuf, cairn_core::Result<RestoreStats>) {
        let (d, dst) = temp_sub("restored");
        let stats = restore(&self.repo, &self.snapshot(tag).tree, &restore_opts(&dst));
        (d, dst, stats)
    }
}

/// The source trees the golden snapshots were made from, regenerated.
fn expected(tag: &str) -> (tempfile::TempDir, PathBuf) {
    let (d, tree) = temp_sub("tree");
    golden_tree(&tree).unwrap();
    if tag == SECOND_TAG {
        golden_update(&tree).unwrap();
    }
    (d, tree)
}

/// Owners are those of whoever generated the repository; xattrs of the
/// host's file system are not part of the golden tree.
fn golden_compare() -> CompareOptions {
    CompareOptions {
        owners: false,
        xattrs: false,
        sparse: true,
    }
}

/// Object paths (relative) of every file below `root`.
fn objects(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn v1_opens_lists_and_restores_both_snapshots() {
    opens_lists_and_restores_both_snapshots(repos::V1);
    // Version 1: packs without bundles.
    let packs = pack_magics(&testdata(repos::V1));
    assert!(!packs.is_empty());
    assert!(packs.iter().all(|m| m == b"CAIRNPK1"), "{packs:?}");
}

#[test]
fn v2_opens_lists_and_restores_both_snapshots_from_bundles() {
    opens_lists_and_restores_both_snapshots(repos::V2);
    assert_eq!(Golden::open(repos::V2).repo.format_version(), 2);
    let packs = pack_magics(&testdata(repos::V2));
    assert!(packs.iter().all(|m| m == b"CAIRNPK2"), "{packs:?}");
    // Its small files are in bundles, and each bundle holds several.
    let g = Golden::open(repos::V2);
    let mut bundles = std::collections::HashMap::new();
    g.repo.index().unwrap();
    g.repo
        .cache()
        .for_each_location(|pack, _, e: cairn_core::format::pack::BlobEntry| {
            if e.inner.is_some() {
                *bundles.entry((pack, e.offset)).or_insert(0) += 1;
            }
            Ok(())
        })
        .unwrap();
    assert!(!bundles.is_empty());
    assert!(bundles.values().any(|n| *n > 1), "{bundles:?}");
}

/// A backup into a version 1 repository keeps it version 1: version 1
/// packs and segments, no bundles, so the cairn that wrote it still reads
/// everything; every snapshot, old and new, restores and checks clean.
#[test]
fn a_backup_into_a_v1_repository_keeps_it_version_1() {
    let g = Golden::open(repos::V1);
    assert_eq!(g.repo.format_version(), 1);
    let (_e, tree) = expected(SECOND_TAG);
    std::fs::write(tree.join("added-now.txt"), b"a new small file\n".repeat(50)).unwrap();
    let snap = backup_dir(&g.repo, &tree).snapshot;
    let repo_dir = g.dir.path().join("repo");
    let magics = pack_magics(&repo_dir);
    assert!(magics.len() > pack_magics(&testdata(repos::V1)).len());
    assert!(magics.iter().all(|m| m == b"CAIRNPK1"), "{magics:?}");
    assert_eq!(
        std::fs::read(repo_dir.join("cairn.repository")).unwrap(),
        std::fs::read(testdata(repos::V1).join("cairn.repository")).unwrap()
    );
    // Every segment, the new ones too, reads as version 1.
    for seg in objects(&repo_dir)
        .iter()
        .filter(|o| o.starts_with("index/"))
    {
        let stored = std::fs::read(repo_dir.join(seg)).unwrap();
        let body = g
            .repo
            .keyring()
            .seal_key()
            .open_envelope(cairn_core::format::index::INDEX_AAD, &stored)
            .unwrap();
        assert_eq!(&body[..4], &1u32.to_le_bytes(), "{seg}");
    }
    let report = cairn_core::check::check(
        &g.repo,
        &cairn_core::check::CheckOptions {
            read_data: Some(cairn_core::check::DataSubset::All),
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{report:#?}");
    for tag in [FIRST_TAG, SECOND_TAG] {
        let (_d, dst, stats) = g.restore(tag);
        assert!(stats.unwrap().failed.is_empty());
        let (_e, expected_tree) = expected(tag);
        assert_same_tree(&expected_tree, &dst, &golden_compare());
    }
    let (_d, dst) = temp_sub("new");
    let stats = restore(&g.repo, &snap.tree, &restore_opts(&dst)).unwrap();
    assert!(stats.failed.is_empty());
    assert_same_tree(&tree, &dst, &golden_compare());
}

/// The start magic of every pack below `repo`.
fn pack_magics(repo: &Path) -> Vec<Vec<u8>> {
    objects(repo)
        .into_iter()
        .filter(|o| o.starts_with("packs/"))
        .map(|o| std::fs::read(repo.join(o)).unwrap()[..8].to_vec())
        .collect()
}

fn opens_lists_and_restores_both_snapshots(name: &str) {
    let g = Golden::open(name);
    let snaps = g.repo.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    let tags: Vec<_> = snaps.iter().map(|(_, s)| s.tags.clone()).collect();
    assert_eq!(
        tags,
        [vec![FIRST_TAG.to_string()], vec![SECOND_TAG.to_string()]]
    );
    for (_, s) in &snaps {
        assert!(s.complete);
        assert_eq!(
            (s.host.as_str(), s.source.as_str()),
            (repos::SOURCE, repos::SOURCE)
        );
    }
    assert_eq!(snaps[1].1.parent, Some(snaps[0].0));
    let c = g.repo.config();
    assert_eq!(
        (c.chunk_min, c.chunk_avg, c.chunk_max),
        repos::init_options().chunk_sizes
    );

    for tag in [FIRST_TAG, SECOND_TAG] {
        let (_d, dst, stats) = g.restore(tag);
        let stats = stats.unwrap();
        assert!(stats.failed.is_empty(), "{tag}: {:#?}", stats.failed);
        let (_e, tree) = expected(tag);
        assert_same_tree(&tree, &dst, &golden_compare());
    }

    // The 200 KiB file uses list blobs; dump streams it back.
    let snap = g.snapshot(SECOND_TAG);
    let Resolved::Node(node) = resolve(&g.repo, &snap.tree, Path::new(DAMAGED_FILE)).unwrap()
    else {
        panic!("root")
    };
    assert!(matches!(node.payload, Payload::File(Content::Lists(_))));
    let mut out = Vec::new();
    dump(&g.repo, &node, &mut out).unwrap();
    let (_e, tree) = expected(SECOND_TAG);
    assert_eq!(out, std::fs::read(tree.join(DAMAGED_FILE)).unwrap());
}

#[test]
fn v1_missing_pack_fails_the_files_in_that_pack_and_names_it() {
    let g = Golden::open(repos::V1_MISSING_PACK);
    let gone: Vec<_> = objects(&testdata(repos::V1))
        .difference(&objects(&g.dir.path().join("repo")))
        .cloned()
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    let pack = &gone[0];
    assert!(pack.starts_with("packs/"), "{pack}");
    let (_d, dst, stats) = g.restore(FIRST_TAG);
    let stats = stats.unwrap();
    assert!(
        stats.failed.iter().any(|(p, _)| p.ends_with(DAMAGED_FILE)),
        "{:#?}",
        stats.failed
    );
    for (path, why) in &stats.failed {
        assert!(why.contains(pack.as_str()), "{}: {why}", path.display());
    }
    let (_e, tree) = expected(FIRST_TAG);
    assert_eq!(
        std::fs::read(dst.join("hello.txt")).unwrap(),
        std::fs::read(tree.join("hello.txt")).unwrap()
    );
}

#[test]
fn v1_missing_index_keeps_the_first_snapshot_and_diagnoses_the_second() {
    let g = Golden::open(repos::V1_MISSING_INDEX);
    let gone: Vec<_> = objects(&testdata(repos::V1))
        .difference(&objects(&g.dir.path().join("repo")))
        .cloned()
        .collect();
    assert!(
        !gone.is_empty() && gone.iter().all(|o| o.starts_with("index/")),
        "{gone:?}"
    );
    let (_d, dst, stats) = g.restore(FIRST_TAG);
    let stats = stats.unwrap();
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    let (_e, tree) = expected(FIRST_TAG);
    assert_same_tree(&tree, &dst, &golden_compare());

    // The second snapshot's root tree is not indexed: nothing of it
    // restores, and the restore names it instead of failing outright.
    let (_d2, _dst2, second) = g.restore(SECOND_TAG);
    let second = second.unwrap();
    assert_eq!(second.files, 0);
    assert!(
        second
            .failed
            .iter()
            .any(|(_, why)| why.contains("not in the index")),
        "{:#?}",
        second.failed
    );
}

#[test]
fn v1_flipped_byte_is_caught_by_name_and_by_key() {
    let g = Golden::open(repos::V1_FLIPPED_BYTE);
    let ours = g.dir.path().join("repo");
    let changed: Vec<_> = objects(&ours)
        .into_iter()
        .filter(|o| {
            std::fs::read(ours.join(o)).unwrap()
                != std::fs::read(testdata(repos::V1).join(o)).unwrap()
        })
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let pack = &changed[0];
    // Without the key: the pack no longer hashes to its name.
    let name = pack.rsplit('/').next().unwrap();
    assert_ne!(
        Id::hash(&std::fs::read(ours.join(pack)).unwrap()).to_hex(),
        name
    );
    // With the key: the blob fails authentication and the error names the pack.
    let (_d, _dst, stats) = g.restore(FIRST_TAG);
    let stats = stats.unwrap();
    assert_eq!(stats.failed.len(), 1, "{:#?}", stats.failed);
    let (path, why) = &stats.failed[0];
    assert!(path.ends_with(DAMAGED_FILE), "{}", path.display());
    assert!(
        why.contains(pack.as_str()) && why.contains("data blob"),
        "{why}"
    );
}

#[test]
fn v1_damage_recorded_is_honoured_and_healed_by_a_backup() {
    let g = Golden::open(repos::V1_DAMAGE_RECORDED);
    let records = objects(&g.dir.path().join("repo"))
        .into_iter()
        .filter(|o| o.starts_with("damage/"))
        .count();
    assert_eq!(records, 1);
    assert_eq!(g.repo.damage_set().record_count(), 1);
    // The damaged copy is not deduplicated against: a backup of the same
    // tree stores it again, and the first snapshot restores whole again.
    let (_e, tree) = expected(FIRST_TAG);
    let (_d, dst, before) = g.restore(FIRST_TAG);
    assert_eq!(before.unwrap().failed.len(), 1);
    drop((_d, dst));
    let r = backup_dir(&g.repo, &tree);
    assert!(r.snapshot.summary.blobs_added > 0);
    let (_d, dst, after) = g.restore(FIRST_TAG);
    let after = after.unwrap();
    assert!(after.failed.is_empty(), "{:#?}", after.failed);
    assert_same_tree(&tree, &dst, &golden_compare());
    let report = cairn_core::check::check(
        &g.repo,
        &cairn_core::check::CheckOptions {
            read_data: Some(cairn_core::check::DataSubset::All),
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:#?}", report.damage);
    assert!(!report.contained.is_empty());
}
