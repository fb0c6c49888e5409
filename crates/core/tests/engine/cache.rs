//! The local cache is only a cache: deleting it loses nothing, and a cache
//! of another repository or a garbage file is detected and rebuilt.

use crate::support::*;
use cairn_core::cache::Cache;
use cairn_core::format::Id;
use cairn_core::Repository;
use cairn_golden::assert_same_tree;
use cairn_golden::fixture::{golden_tree, golden_update};
use std::path::PathBuf;

fn cache_file(t: &TestRepo, repo: &Repository) -> PathBuf {
    t.cache.path().join(repo.id().to_hex()).join("cache.sqlite")
}

#[test]
fn deleting_the_cache_loses_nothing() {
    let t = test_repo("cache-deleted");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    let first = backup_dir(&t.repo, &src);
    let file = cache_file(&t, &t.repo);
    assert!(file.exists());
    let TestRepo {
        loc, cache, repo, ..
    } = t;
    drop(repo);

    std::fs::remove_dir_all(cache.path()).unwrap();
    let repo = open_repo(&loc, cache.path());
    assert!(file.exists(), "the cache is rebuilt");
    let (_d, dst) = temp_sub("dst");
    restore_all(&repo, &first, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));

    // Backups still skip unchanged files: the parent's trees are fetched again.
    golden_update(&src).unwrap();
    let second = backup_dir(&repo, &src);
    assert!(
        second.snapshot.summary.files_unchanged > 0,
        "{:?}",
        second.snapshot.summary
    );
    let (_d2, dst2) = temp_sub("dst2");
    restore_all(&repo, &second, &dst2);
    assert_same_tree(&src, &dst2, &compare_opts(&src));
}

#[test]
fn a_cache_of_another_repository_is_rebuilt() {
    let a = test_repo("cache-a");
    let b = test_repo("cache-b");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    let snap_b = backup_dir(&b.repo, &src);
    let (_s2, other) = temp_sub("other");
    std::fs::write(other.join("only-in-a"), b"a").unwrap();
    backup_dir(&a.repo, &other);
    let a_file = cache_file(&a, &a.repo);
    let b_file = cache_file(&b, &b.repo);
    let TestRepo {
        loc, cache, repo, ..
    } = b;
    drop(repo);

    // B's cache file now holds A's index and trees.
    std::fs::copy(&a_file, &b_file).unwrap();
    drop(a);
    for suffix in ["-wal", "-shm"] {
        let mut p = b_file.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let repo = open_repo(&loc, cache.path());
    assert!(repo.index().unwrap().blob_count().unwrap() > 0);
    let (_d, dst) = temp_sub("dst");
    restore_all(&repo, &snap_b, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

#[test]
fn a_garbage_cache_file_is_rebuilt() {
    let t = test_repo("cache-garbage");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    let snap = backup_dir(&t.repo, &src);
    let file = cache_file(&t, &t.repo);
    let TestRepo {
        loc, cache, repo, ..
    } = t;
    drop(repo);
    for suffix in ["-wal", "-shm"] {
        let mut p = file.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::write(&file, vec![0xA5u8; 10_000]).unwrap();
    let repo = open_repo(&loc, cache.path());
    let (_d, dst) = temp_sub("dst");
    restore_all(&repo, &snap, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

#[test]
fn cache_open_discards_foreign_and_garbage_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x/cache.sqlite");
    let (a, b) = (Id([1; 32]), Id([2; 32]));
    {
        let c = Cache::open(Some(&path), &a, b"fp-a").unwrap();
        c.put_object(cairn_core::cache::CachedKind::Tree, &a, b"tree of a")
            .unwrap();
    }
    // Same repository and fingerprint: kept.
    let c = Cache::open(Some(&path), &a, b"fp-a").unwrap();
    assert!(c
        .get_object(cairn_core::cache::CachedKind::Tree, &a)
        .unwrap()
        .is_some());
    drop(c);
    // Same repository, other configuration: rebuilt empty.
    let c = Cache::open(Some(&path), &a, b"fp-other").unwrap();
    assert!(c
        .get_object(cairn_core::cache::CachedKind::Tree, &a)
        .unwrap()
        .is_none());
    c.put_object(cairn_core::cache::CachedKind::Tree, &a, b"tree")
        .unwrap();
    drop(c);
    // Another repository: rebuilt empty.
    let c = Cache::open(Some(&path), &b, b"fp-other").unwrap();
    assert!(c
        .get_object(cairn_core::cache::CachedKind::Tree, &a)
        .unwrap()
        .is_none());
    drop(c);
    // Garbage: rebuilt.
    for suffix in ["-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::write(&path, b"this is not an SQLite database, not at all, no").unwrap();
    let c = Cache::open(Some(&path), &b, b"fp").unwrap();
    assert!(c.segments().unwrap().is_empty());
}

#[test]
fn a_damaged_cached_tree_is_fetched_again() {
    let t = test_repo("cache-tree");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    let snap = backup_dir(&t.repo, &src);
    // Replace the cached root tree with other bytes: the hash check catches it.
    t.repo
        .cache()
        .put_object(
            cairn_core::cache::CachedKind::Tree,
            &snap.snapshot.tree.0,
            b"garbage tree",
        )
        .unwrap();
    let (_d, dst) = temp_sub("dst");
    restore_all(&t.repo, &snap, &dst);
    assert_same_tree(&src, &dst, &compare_opts(&src));
}

#[test]
fn a_vanished_index_segment_is_dropped_from_the_cache() {
    let t = test_repo("cache-stale");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    backup_dir(&t.repo, &src);
    let storage = t.storage().unwrap();
    let before = t.repo.index().unwrap().blob_count().unwrap();
    assert!(before > 0);
    for seg in names(&storage, "index/") {
        storage.delete(&seg).unwrap();
    }
    let repo = t.reopen().expect("reopen");
    assert_eq!(
        repo.index().unwrap().blob_count().unwrap(),
        0,
        "stale index rows survived"
    );
}

/// Overwrites the 4 KiB page at `fraction` of `file` with bytes that are
/// no valid SQLite page.
fn damage_page(file: &std::path::Path, fraction: f64) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = (bytes.len() as f64 * fraction) as usize / 4096 * 4096;
    assert!(at >= 4096 && at + 4096 <= bytes.len());
    for (i, b) in bytes[at..at + 4096].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_cache_with_damaged_pages_is_rebuilt_from_the_index() {
    let t = test_repo("cache-damaged-pages");
    let (_s, src) = temp_sub("src");
    golden_tree(&src).unwrap();
    let first = backup_dir(&t.repo, &src);
    let file = cache_file(&t, &t.repo);
    let TestRepo {
        loc, cache, repo, ..
    } = t;
    drop(repo);
    assert!(!PathBuf::from(format!("{}-wal", file.display())).exists());
    let good = std::fs::read(&file).unwrap();
    for fraction in [0.3, 0.5, 0.7, 0.9] {
        std::fs::write(&file, &good).unwrap();
        damage_page(&file, fraction);
        let repo = open_repo(&loc, cache.path());
        let blobs = repo.index().unwrap().blob_count().unwrap();
        assert!(blobs > 0, "the rebuilt index is whole");
        let (_d, dst) = temp_sub("dst");
        restore_all(&repo, &first, &dst);
        assert_same_tree(&src, &dst, &compare_opts(&src));
        let mut seen = 0;
        repo.cache()
            .for_each_location(|_, _, _| {
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert!(seen as u64 >= blobs);
        backup_dir(&repo, &src);
    }
}

#[test]
fn a_damaged_cache_without_a_repository_to_refill_it_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c/cache.sqlite");
    let id = Id([1; 32]);
    {
        let c = Cache::open(Some(&path), &id, b"fp").unwrap();
        let big = vec![7u8; 3000];
        for i in 0..200u8 {
            c.put_object(cairn_core::cache::CachedKind::Tree, &Id([i; 32]), &big)
                .unwrap();
        }
    }
    damage_page(&path, 0.5);
    let c = Cache::open(Some(&path), &id, b"fp").unwrap();
    let errors = (0..200u8)
        .filter(|i| {
            c.get_object(cairn_core::cache::CachedKind::Tree, &Id([*i; 32]))
                .is_err()
        })
        .count();
    assert!(errors > 0, "the damage is reported, not hidden");
}

#[test]
fn threads_that_meet_a_damaged_cache_at_once_share_one_rebuild() {
    use cairn_core::format::pack::BlobEntry;
    use cairn_core::format::{BlobId, BlobKind, IndexId, PackId};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let entries: Vec<BlobEntry> = (0..4000u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[4] = 0xB1;
            BlobEntry {
                id: BlobId(Id(id)),
                kind: BlobKind::Data,
                offset: i,
                stored_len: 100,
                raw_len: 72,
                inner: None,
            }
        })
        .collect();
    let segment = vec![(PackId(Id([3; 32])), 1 << 20, entries.clone())];
    let seg_id = IndexId(Id([4; 32]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c/cache.sqlite");
    let repo = Id([1; 32]);
    Cache::open(Some(&path), &repo, b"fp")
        .unwrap()
        .add_segment(&seg_id, &segment)
        .unwrap();
    damage_page(&path, 0.6);
    let cache = Arc::new(Cache::open(Some(&path), &repo, b"fp").unwrap());
    let refills = Arc::new(AtomicUsize::new(0));
    {
        let (refills, segment) = (refills.clone(), segment.clone());
        cache.set_refill(Box::new(move |fresh| {
            refills.fetch_add(1, Ordering::SeqCst);
            fresh.add_segment(&seg_id, &segment)
        }));
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let (cache, entries) = (&cache, &entries);
            s.spawn(move || {
                for e in entries.iter().skip(t).step_by(3) {
                    assert!(cache.contains(&e.id).unwrap(), "{t}");
                    let loc = cache.lookup(&e.id).unwrap().expect("indexed");
                    assert_eq!(loc.offset, e.offset);
                }
            });
        }
    });
    assert_eq!(refills.load(Ordering::SeqCst), 1, "one rebuild");
    assert_eq!(cache.blob_count().unwrap(), entries.len() as u64);
}

/// A segment streamed into the cache in several sorted runs (more rows
/// than [`SINK_RUN`]) whose reading fails past the first run leaves
/// nothing of itself, nor of the segments in the same transaction: a
/// killed ingestion holds whole segments only, however large.
#[test]
fn a_segment_failing_midway_through_a_streamed_ingestion_leaves_no_row() {
    use cairn_core::cache::{Record, SINK_RUN};
    use cairn_core::format::pack::BlobEntry;
    use cairn_core::{BlobId, BlobKind, IndexId, PackId};
    let (_d, dir) = temp_sub("cache-midway");
    let cache = Cache::open(Some(&dir.join("c.sqlite")), &Id([1; 32]), b"fp").unwrap();
    let entry = |n: u64| BlobEntry {
        id: BlobId(Id::hash(format!("midway {n}").as_bytes())),
        kind: BlobKind::Data,
        offset: n as u32,
        stored_len: 1,
        raw_len: 1,
        inner: None,
    };
    let rows = 2 * SINK_RUN as u64 + 7;
    let small = IndexId(Id([2; 32]));
    let large = IndexId(Id([3; 32]));
    let items = [(small, Record::Full, 10u64), (large, Record::Full, rows)];
    let failing = cache.ingest_with(&items, |&n, sink| {
        sink.pack(&PackId(Id([n as u8; 32])), n)?;
        for k in 0..n {
            if n == rows && k == SINK_RUN as u64 + 3 {
                return Err(cairn_core::Error::corrupt(
                    "index/large",
                    "cut short (injected)",
                ));
            }
            sink.blob(&entry(n * 1_000_000 + k))?;
        }
        Ok(())
    });
    let err = failing.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(cache.segments().unwrap().is_empty());
    assert_eq!(cache.blob_count().unwrap(), 0);
    assert!(cache.packs().unwrap().is_empty());
    // The same items read through are ingested whole, in runs.
    let inserted = cache
        .ingest_with(&items, |&n, sink| {
            sink.pack(&PackId(Id([n as u8; 32])), n)?;
            (0..n).try_for_each(|k| sink.blob(&entry(n * 1_000_000 + k)))
        })
        .unwrap();
    assert_eq!(inserted, rows + 10);
    assert_eq!(cache.blob_count().unwrap(), rows + 10);
    assert_eq!(cache.segment_levels().unwrap().len(), 2);
    assert!(cache
        .lookup(&entry(rows * 1_000_000 + rows - 1).id)
        .unwrap()
        .is_some());
}

#[test]
fn objects_read_together_come_back_in_order_with_the_missing_ones_named() {
    use cairn_core::cache::CachedKind;
    let (repo_id, a, b, missing) = (Id([1; 32]), Id([2; 32]), Id([3; 32]), Id([4; 32]));
    let c = Cache::open(None, &repo_id, b"fp").unwrap();
    c.put_objects(
        CachedKind::Tree,
        &[(a, b"tree a".to_vec()), (b, b"tree b".to_vec())],
    )
    .unwrap();
    c.put_object(CachedKind::Snapshot, &missing, b"a snapshot")
        .unwrap();
    assert_eq!(
        c.get_objects(CachedKind::Tree, &[b, missing, a]).unwrap(),
        vec![Some(b"tree b".to_vec()), None, Some(b"tree a".to_vec())],
        "in the order asked; another kind's object is not this kind's"
    );
    assert_eq!(
        c.get_objects(CachedKind::Tree, &[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
}
