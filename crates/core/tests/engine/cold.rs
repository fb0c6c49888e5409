//! Cold starts (an empty cache, every job pod's case): the index is synced
//! on first use, streamed in bounded batches, a partial ingestion is
//! completed and never taken as whole, and a segment superseded while a
//! sync reads the index is followed to its replacement.

use crate::support::*;
use cairn_core::format::index::{IndexSegment, IndexedPack};
use cairn_core::format::pack::BlobEntry;
use cairn_core::format::Id;
use cairn_core::index_view::{
    Level, INGEST_BATCH_BLOBS, INGEST_BATCH_SEGMENTS, MAX_CONFIRMATIONS, MAX_HELD_ROWS,
};
use cairn_core::{BlobId, BlobKind, OpenOptions, PackId, Repository};
use cairn_storage::{DynStorage, StorageError, StorageErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn fake_blob(n: u64) -> BlobId {
    BlobId(Id::hash(format!("cold fake blob {n}").as_bytes()))
}

/// A segment naming blobs `first..first + count` in one fake pack (never
/// read: syncing the index reads segments only).
fn fake_segment(first: u64, count: u64) -> IndexSegment {
    IndexSegment {
        supersedes: Vec::new(),
        packs: vec![IndexedPack {
            id: PackId(Id::hash(format!("cold fake pack {first}").as_bytes())),
            len: count * 100,
            blobs: (0..count)
                .map(|k| BlobEntry {
                    id: fake_blob(first + k),
                    kind: BlobKind::Data,
                    offset: (k * 100) as u32,
                    stored_len: 100,
                    raw_len: 100,
                    inner: None,
                })
                .collect(),
        }],
    }
}

/// Writes `segments` fake segments of `per` blobs each.
fn write_fake_index(repo: &Repository, segments: u64, per: u64) {
    for s in 0..segments {
        repo.save_segment(&fake_segment(s * per, per))
            .expect("save segment");
    }
}

fn open_on(storage: DynStorage, cache: &std::path::Path) -> cairn_core::Result<Repository> {
    Repository::open(storage, PASSWORD, &open_opts(cache))
}

/// `inner` with `on_index_read` called before each read of an `index/`
/// object (which it may fail).
fn hooked(
    inner: DynStorage,
    on_index_read: impl Fn(&str) -> cairn_storage::Result<()> + Send + Sync + 'static,
) -> DynStorage {
    Arc::new(ReadHooked {
        inner,
        on_read: Box::new(move |path| match path.starts_with("index/") {
            true => on_index_read(path),
            false => Ok(()),
        }),
    })
}

#[test]
fn opening_and_listing_snapshots_ingest_no_index_until_a_lookup_needs_it() {
    let t = test_repo("cold-lazy");
    let (_s, src) = temp_sub("src");
    std::fs::write(src.join("a"), b"some content").unwrap();
    let first = backup_dir(&t.repo, &src);
    write_fake_index(&t.repo, 3, 10);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    assert!(
        !repo.index_view().is_synced(),
        "open does not read the index"
    );
    assert_eq!(repo.list_snapshots().unwrap().len(), 1);
    assert!(repo.cache().segments().unwrap().is_empty());
    assert!(!repo.index_view().is_synced());
    // The first blob question reads the index at the tree level; a blob
    // the data-blob filter may hold is confirmed by covering it.
    assert!(repo.has_blob(&fake_blob(0)).unwrap());
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert!(!repo.has_blob(&fake_blob(1 << 40)).unwrap());
    repo.index().unwrap();
    assert!(repo.index_view().is_synced());
    assert_eq!(
        repo.cache().segments().unwrap().len(),
        count(&t.storage().unwrap(), "index/")
    );
    assert!(repo.lookup(&first.snapshot.tree).unwrap().is_some());
}

#[test]
fn a_cold_sync_inserts_in_bounded_batches() {
    let t = test_repo("cold-batches");
    // Segments of 1,000 blobs: a batch closes at INGEST_BATCH_BLOBS blobs.
    let per = 1000u64;
    let segments = 3 * (INGEST_BATCH_BLOBS as u64 / per) + 5;
    write_fake_index(&t.repo, segments, per);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let report = repo.sync_index_report(false).unwrap();
    assert_eq!(report.ingested, segments);
    assert_eq!(report.listings, 1);
    assert!(report.batches >= 4, "{report:?}");
    assert!(
        report.largest_batch_blobs < INGEST_BATCH_BLOBS as u64 + per,
        "a batch holds at most one segment past the limit: {report:?}"
    );
    assert!(INGEST_BATCH_SEGMENTS as u64 * per > INGEST_BATCH_BLOBS as u64);
    assert_eq!(repo.index().unwrap().blob_count().unwrap(), segments * per);
    // Many small segments close a batch at INGEST_BATCH_SEGMENTS.
    let small = test_repo("cold-batches-small");
    write_fake_index(&small.repo, INGEST_BATCH_SEGMENTS as u64 + 1, 2);
    let (_c2, cache2) = temp_sub("cache2");
    let report = open_repo(&small.loc, &cache2)
        .sync_index_report(false)
        .unwrap();
    assert_eq!(report.batches, 2, "{report:?}");
}

#[test]
fn a_cache_left_by_a_killed_ingestion_holds_whole_segments_and_is_completed() {
    let t = test_repo("cold-partial");
    let per = 20_000u64;
    let segments = 12u64;
    write_fake_index(&t.repo, segments, per);
    let (_c, cache) = temp_sub("cache");
    // Reads of index/ fail from the 10th on, as if the pod were killed
    // while ingesting: the transactions committed before stay.
    let failing = failing_from_read(&t.loc, 10);
    let repo = open_on(failing, &cache).unwrap();
    let err = repo.index().unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let partial = repo.cache().segments().unwrap().len() as u64;
    assert!(partial > 0 && partial < segments, "{partial} segments");
    assert_eq!(
        repo.cache().blob_count().unwrap(),
        partial * per,
        "only whole segments are recorded"
    );
    // The failed sync is not taken as done: the handle syncs again.
    assert!(!repo.index_view().is_synced());
    drop(repo);

    let repo = open_repo(&t.loc, &cache);
    let report = repo.sync_index_report(false).unwrap();
    assert_eq!(report.ingested, segments - partial, "{report:?}");
    assert_eq!(repo.index().unwrap().blob_count().unwrap(), segments * per);
    for s in 0..segments {
        assert!(repo.has_blob(&fake_blob(s * per + per - 1)).unwrap());
    }
}

#[test]
fn a_segment_superseded_while_a_cold_sync_reads_the_index_is_followed() {
    let t = test_repo("cold-superseded");
    write_fake_index(&t.repo, 4, 50);
    // A fifth segment, which maintenance compacts while the sync runs.
    let victim = t.repo.save_segment(&fake_segment(1000, 50)).unwrap();
    let victim_path = format!("index/{}", victim.to_hex());
    let (_c, cache) = temp_sub("cache");
    let maintenance = t.reopen().unwrap();
    let done = Arc::new(Mutex::new(false));
    let hooked: DynStorage = hooked(storage(&t.loc), move |path| {
        let mut done = done.lock().unwrap();
        if path == victim_path && !*done {
            *done = true;
            // Between the listing and this read: the replacement is
            // written, then the segment it supersedes deleted.
            let mut seg = fake_segment(1000, 50);
            seg.supersedes = vec![victim];
            maintenance.save_segment(&seg).expect("replacement");
            maintenance.storage().delete(path).expect("delete");
        }
        Ok(())
    });
    let repo = open_on(hooked, &cache).unwrap();
    let report = repo.sync_index_report(false).unwrap();
    assert_eq!(report.vanished, 1, "{report:?}");
    assert_eq!(report.listings, 2, "index/ listed again: {report:?}");
    for n in [1000, 1049] {
        assert!(
            repo.has_blob(&fake_blob(n)).unwrap(),
            "blob {n} of the superseded segment is found in its replacement"
        );
    }
    assert_eq!(repo.index().unwrap().blob_count().unwrap(), 250);
}

#[test]
fn an_in_memory_cache_opens_cold_too() {
    let t = test_repo("cold-memory");
    write_fake_index(&t.repo, 2, 10);
    let repo = Repository::open(storage(&t.loc), PASSWORD, &OpenOptions::default()).unwrap();
    assert!(!repo.index_view().is_synced());
    assert!(repo.has_blob(&fake_blob(19)).unwrap());
    assert!(!repo.has_blob(&fake_blob(20)).unwrap());
}

/// A small source: `dirs` directories of three files each, a file at the
/// top.
fn write_source(root: &std::path::Path, dirs: usize, tag: &str) {
    std::fs::write(root.join("top"), format!("top {tag}")).unwrap();
    for d in 0..dirs {
        let dir = root.join(format!("d{d}")).join("inner");
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..3 {
            std::fs::write(
                dir.join(format!("f{f}")),
                format!("{tag} {d} {f} ").repeat(50),
            )
            .unwrap();
        }
    }
}

/// Every tree of the snapshot below `root`, read as `ls -R` would.
fn browse(repo: &Repository, root: &BlobId) -> usize {
    let tree = repo.load_tree(root).unwrap();
    let mut n = 1;
    for node in &tree.nodes {
        if let cairn_core::format::tree::Payload::Dir(id) = &node.payload {
            n += browse(repo, id);
        }
    }
    n
}

#[test]
fn browsing_on_an_empty_cache_ingests_tree_rows_not_data_rows() {
    let t = test_repo("cold-browse");
    let (_s, src) = temp_sub("src");
    write_source(&src, 4, "a");
    let first = backup_dir(&t.repo, &src);
    write_fake_index(&t.repo, 3, 2000);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let trees = browse(&repo, &first.snapshot.tree);
    assert_eq!(trees, 1 + 4 * 2);
    assert_eq!(repo.index_view().level(), Level::Trees);
    let segments = count(&t.storage().unwrap(), "index/");
    assert_eq!(repo.cache().segments().unwrap().len(), segments);
    let rows = repo.cache().blob_count().unwrap();
    assert!(
        rows < 100,
        "only tree and list rows are ingested, not the 6,000 data rows: {rows}"
    );
    // A question about a data blob the filter may hold covers it (one
    // more read of every segment); past MAX_CONFIRMATIONS of them, the
    // rest is ingested, once.
    assert!(repo.has_blob(&fake_blob(5999)).unwrap());
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert!(repo.cache().blob_count().unwrap() < rows + 5);
    for n in 0..u64::from(MAX_CONFIRMATIONS) - 1 {
        assert!(repo.has_blob(&fake_blob(n)).unwrap());
        assert_eq!(repo.index_view().level(), Level::Trees);
    }
    assert!(repo.has_blob(&fake_blob(4000)).unwrap());
    assert_eq!(repo.index_view().level(), Level::Full);
    assert!(repo.cache().blob_count().unwrap() > 6000);
    // A cache left at the tree level is completed by the next handle.
    let (_c2, cache2) = temp_sub("cache2");
    let browsed = open_repo(&t.loc, &cache2);
    browse(&browsed, &first.snapshot.tree);
    drop(browsed);
    let again = open_repo(&t.loc, &cache2);
    let report = again.sync_index_report(false).unwrap();
    assert_eq!(
        (report.ingested, report.reread),
        (0, segments as u64),
        "{report:?}"
    );
    assert!(again.has_blob(&fake_blob(0)).unwrap());
    assert_eq!(
        again.index().unwrap().blob_count().unwrap(),
        repo.cache().blob_count().unwrap()
    );
}

#[test]
fn an_unchanged_backup_on_an_empty_cache_ingests_its_parents_rows_only() {
    let t = test_repo("cold-unchanged");
    let (_s, src) = temp_sub("src");
    write_source(&src, 3, "b");
    let first = backup_dir(&t.repo, &src);
    write_fake_index(&t.repo, 4, 2000);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let second = backup_dir(&repo, &src);
    assert_eq!(second.snapshot.tree, first.snapshot.tree);
    let summary = &second.snapshot.summary;
    assert_eq!(summary.files_unchanged, 1 + 3 * 3, "{summary:?}");
    assert_eq!(
        summary.files_new + summary.files_changed + summary.blobs_added,
        0
    );
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "no ingestion of the whole index"
    );
    let rows = repo.cache().blob_count().unwrap();
    assert!(rows < 100, "{rows} rows");
    // Its covered answers are exact: a parent chunk is present, a blob
    // of the fake index not covered is covered to answer for it.
    assert!(repo.has_blob(&fake_blob(7)).unwrap());
    assert_eq!(repo.index_view().level(), Level::Trees);
    let loc = repo.lookup(&fake_blob(7)).unwrap().expect("located");
    assert_eq!(loc.stored_len, 100);
    let target = tempfile::tempdir().unwrap();
    restore_all(&open_repo(&t.loc, &cache), &second, target.path());
}

/// The data rows in the cache (not those a handle holds in memory).
fn cached_data_rows(repo: &Repository) -> u64 {
    let mut n = 0;
    repo.cache()
        .for_each_location(|_, _, e| {
            n += u64::from(e.kind == BlobKind::Data);
            Ok(())
        })
        .unwrap();
    n
}

/// The stored chunks of every file below tree `root`.
fn chunks_below(repo: &Repository, root: &BlobId) -> Vec<BlobId> {
    use cairn_core::format::tree::Payload;
    let mut out = Vec::new();
    for node in repo.load_tree(root).unwrap().nodes {
        match &node.payload {
            Payload::Dir(id) => out.extend(chunks_below(repo, id)),
            Payload::File(content) => out.extend(
                repo.chunk_list(content)
                    .unwrap()
                    .iter()
                    .filter(|c| !c.is_hole())
                    .map(|c| c.id),
            ),
            _ => {}
        }
    }
    out
}

/// Regression (issue 19): the cover pass of an unchanged backup on an
/// empty cache inserted the parent's chunk rows into the cache, the
/// largest serial step before the walk. They are held in memory for the
/// handle (only it takes them as covered), and answer as the cache's rows
/// did: present, located, read by a restore, without another pass.
#[test]
fn the_cover_pass_of_an_unchanged_backup_writes_no_data_rows_into_the_cache() {
    let t = test_repo("cold-cover-held");
    let (_s, src) = temp_sub("src");
    write_source(&src, 3, "h");
    let first = backup_dir(&t.repo, &src);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let second = backup_dir(&repo, &src);
    assert_eq!(second.snapshot.tree, first.snapshot.tree);
    assert_eq!(second.snapshot.summary.blobs_added, 0);
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert_eq!(cached_data_rows(&repo), 0, "no chunk rows in the cache");
    let chunks = chunks_below(&repo, &first.snapshot.tree);
    assert_eq!(chunks.len(), 1 + 3 * 3);
    assert_eq!(repo.index_view().held_rows(), chunks.len());
    assert_eq!(repo.present_blobs(&chunks).unwrap().len(), chunks.len());
    for c in &chunks {
        assert!(repo.has_blob(c).unwrap());
        assert!(repo.lookup(c).unwrap().is_some());
    }
    let target = tempfile::tempdir().unwrap();
    restore_all(&repo, &second, target.path());
    assert_eq!(
        (repo.index_view().level(), cached_data_rows(&repo)),
        (Level::Trees, 0),
        "answered from the rows held"
    );
}

/// Past [`MAX_HELD_ROWS`] a cover pass puts the rest of its rows into
/// the cache, and answers from both.
#[test]
fn a_cover_pass_past_the_rows_held_in_memory_puts_the_rest_into_the_cache() {
    let t = test_repo("cold-cover-overflow");
    let (per, segments) = (50_000u64, 3u64);
    let all = per * segments;
    assert!(all > MAX_HELD_ROWS as u64);
    write_fake_index(&t.repo, segments, per);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let ids: Vec<BlobId> = (0..all).map(fake_blob).collect();
    let report = repo.cover_blobs(&ids.iter().copied().collect()).unwrap();
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert_eq!(report.held_rows, MAX_HELD_ROWS as u64, "{report:?}");
    assert_eq!(report.rows, all - MAX_HELD_ROWS as u64, "{report:?}");
    assert_eq!(repo.index_view().held_rows(), MAX_HELD_ROWS);
    assert_eq!(cached_data_rows(&repo), all - MAX_HELD_ROWS as u64);
    assert_eq!(repo.present_blobs(&ids).unwrap().len() as u64, all);
    for n in [0, per - 1, per, 2 * per + 7, all - 1] {
        assert!(repo.has_blob(&fake_blob(n)).unwrap(), "blob {n}");
        let loc = repo.lookup(&fake_blob(n)).unwrap().expect("located");
        assert_eq!(loc.offset, ((n % per) * 100) as u32);
    }
    assert_eq!(repo.index_view().level(), Level::Trees);
}

#[test]
fn a_changed_file_on_an_empty_cache_is_deduplicated_exactly() {
    let t = test_repo("cold-changed");
    let (_s, src) = temp_sub("src");
    write_source(&src, 2, "c");
    // Content the parent does not hold but another snapshot does.
    let (_o, other) = temp_sub("other");
    std::fs::write(other.join("x"), "elsewhere ".repeat(300)).unwrap();
    backup_dir(&t.repo, &other);
    backup_dir(&t.repo, &src);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    std::fs::write(src.join("new"), "elsewhere ".repeat(300)).unwrap();
    let result = backup_dir(&repo, &src);
    let summary = &result.snapshot.summary;
    assert_eq!(summary.files_new, 1, "{summary:?}");
    assert_eq!(
        summary.blobs_added, 1,
        "the root tree only: the new file's chunk is found in the other snapshot: {summary:?}"
    );
}

/// Backs up `src/doomed`, forgets its snapshot and marks: the packs
/// holding its chunks are planned for deletion. Returns the backup and the
/// chunks.
fn a_file_planned_for_deletion(
    t: &TestRepo,
    src: &std::path::Path,
) -> (
    cairn_core::backup::BackupResult,
    Vec<cairn_core::format::tree::ChunkRef>,
) {
    use cairn_core::gc::{self, GcOptions, Roots};
    std::fs::write(src.join("doomed"), "doomed content ".repeat(200)).unwrap();
    let s1 = backup_dir(&t.repo, src);
    let chunks = match &t.repo.load_tree(&s1.snapshot.tree).unwrap().nodes[0].payload {
        cairn_core::format::tree::Payload::File(c) => t.repo.chunk_list(c).unwrap(),
        other => panic!("{other:?}"),
    };
    t.repo.delete_snapshot(&s1.id).unwrap();
    let m = gc::mark(
        &t.repo,
        &Roots::load(&t.repo).unwrap(),
        &GcOptions {
            safety_window: std::time::Duration::from_secs(3600),
            repack_threshold: 0.5,
            now: chrono::Utc::now(),
            dry_run: false,
        },
    )
    .unwrap();
    assert!(m.unused_packs > 0);
    (s1, chunks)
}

#[test]
fn a_covered_blob_whose_copies_maintenance_planned_to_delete_counts_as_absent() {
    let t = test_repo("cold-planned");
    let (_s, src) = temp_sub("src");
    let (s1, chunks) = a_file_planned_for_deletion(&t, &src);
    let chunk = chunks[0].id;
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    repo.lookup_kind(BlobKind::Tree, &s1.snapshot.tree).unwrap();
    assert_eq!(repo.index_view().level(), Level::Trees);
    repo.cover_blobs(&[chunk].into_iter().collect()).unwrap();
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert!(
        !repo.has_blob(&chunk).unwrap(),
        "a blob whose only copy is planned for deletion is absent"
    );
    let loc = repo
        .lookup(&chunk)
        .unwrap()
        .expect("still located for reading");
    assert!(repo.planned_packs().contains(&loc.pack));
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "answered from covered rows"
    );
}

#[test]
fn a_segment_superseded_while_a_cover_pass_reads_it_is_followed() {
    let t = test_repo("cold-cover-superseded");
    write_fake_index(&t.repo, 3, 50);
    let victim = t.repo.save_segment(&fake_segment(1000, 50)).unwrap();
    let victim_path = format!("index/{}", victim.to_hex());
    let (_c, cache) = temp_sub("cache");
    let maintenance = t.reopen().unwrap();
    let reads = Arc::new(AtomicU64::new(0));
    let seen = reads.clone();
    let hooked: DynStorage = hooked(storage(&t.loc), move |path| {
        // The second read of the victim is the cover pass's: before
        // it, maintenance writes its replacement and deletes it.
        if path == victim_path && seen.fetch_add(1, Ordering::SeqCst) == 1 {
            let mut seg = fake_segment(1000, 50);
            seg.supersedes = vec![victim];
            maintenance.save_segment(&seg).expect("replacement");
            maintenance.storage().delete(path).expect("delete");
        }
        Ok(())
    });
    let repo = open_on(hooked, &cache).unwrap();
    // The cover pass reads the segments again (not the ones the tree
    // level kept).
    repo.index_view().hold_segments(false);
    assert!(repo
        .lookup_kind(BlobKind::Tree, &fake_blob(1))
        .unwrap()
        .is_none());
    assert_eq!(repo.index_view().level(), Level::Trees);
    let wanted = [fake_blob(1010), fake_blob(20)].into_iter().collect();
    let report = repo.cover_blobs(&wanted).unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert_eq!(
        (report.vanished, report.listings, report.ingested, report.reread),
        (1, 1, 1, 3),
        "the pass goes on from the handle's listing, lists index/ again when a segment vanished, reads each other segment once: {report:?}"
    );
    assert_eq!(repo.index_view().level(), Level::Trees);
    for id in &wanted {
        assert!(repo.has_blob(id).unwrap(), "found in the replacement");
    }
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert_eq!(
        repo.cache().blob_count().unwrap() + repo.index_view().held_rows() as u64,
        2,
        "the vanished segment's rows are gone"
    );
}

#[test]
fn a_tree_level_cache_left_by_a_killed_ingestion_is_completed_and_never_taken_as_whole() {
    let t = test_repo("cold-partial-trees");
    let (_s, src) = temp_sub("src");
    write_source(&src, 2, "d");
    let first = backup_dir(&t.repo, &src);
    let per = 20_000u64;
    let segments = 12u64;
    write_fake_index(&t.repo, segments, per);
    let all = count(&t.storage().unwrap(), "index/") as u64;
    let (_c, cache) = temp_sub("cache");
    let failing = failing_from_read(&t.loc, 10);
    let repo = open_on(failing, &cache).unwrap();
    let err = repo.load_tree(&first.snapshot.tree).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(
        repo.index_view().level(),
        Level::None,
        "not taken as synced"
    );
    let partial = repo.cache().segments().unwrap().len() as u64;
    assert!(partial > 0 && partial < all, "{partial} segments");
    drop(repo);

    let repo = open_repo(&t.loc, &cache);
    let wanted = (0..segments).map(|s| fake_blob(s * per + 3)).collect();
    let report = repo.cover_blobs(&wanted).unwrap();
    assert_eq!(report.ingested, all - partial, "{report:?}");
    assert_eq!(report.reread, partial, "{report:?}");
    for id in &wanted {
        assert!(repo.has_blob(id).unwrap());
    }
    assert_eq!(repo.index_view().level(), Level::Trees);
    assert_eq!(browse(&repo, &first.snapshot.tree), 1 + 2 * 2);
    repo.sync_index(false).unwrap();
    assert!(repo.index().unwrap().blob_count().unwrap() > segments * per);
}

#[test]
fn a_new_file_on_an_empty_cache_is_stored_without_ingesting_the_index() {
    let t = test_repo("cold-new-file");
    let (_s, src) = temp_sub("src");
    write_source(&src, 2, "e");
    backup_dir(&t.repo, &src);
    write_fake_index(&t.repo, 3, 2000);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    std::fs::write(src.join("fresh"), "never seen before ".repeat(100)).unwrap();
    let result = backup_dir(&repo, &src);
    let summary = &result.snapshot.summary;
    assert_eq!(summary.files_new, 1, "{summary:?}");
    assert!(
        summary.blobs_added >= 2,
        "the new chunk and the root tree: {summary:?}"
    );
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "the data-blob filter proves the new chunk absent"
    );
    let target = tempfile::tempdir().unwrap();
    restore_all(&open_repo(&t.loc, &cache), &result, target.path());
}

/// `files` files of 4 KiB each, unique to `tag` (several chunks each at
/// the test repositories' 1 KiB average).
fn write_files(root: &std::path::Path, files: usize, tag: &str) {
    for f in 0..files {
        let text: String = (0..512).map(|k| format!("{tag}{f:05}{k:05}\n")).collect();
        std::fs::write(root.join(format!("f{f:04}")), &text[..4096]).unwrap();
    }
}

/// A storage whose reads of `index/` objects fail from the `nth` on, as if
/// the pod were killed while ingesting.
fn failing_from_read(loc: &cairn_storage::testing::TestLocation, nth: u64) -> DynStorage {
    let reads = AtomicU64::new(0);
    hooked(storage(loc), move |path| {
        if reads.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                format!("read {path}"),
                "connection reset (injected)",
            ));
        }
        Ok(())
    })
}

/// A storage counting its reads of `index/` objects, and that count.
fn counting(loc: &cairn_storage::testing::TestLocation) -> (DynStorage, Arc<AtomicU64>) {
    let reads = Arc::new(AtomicU64::new(0));
    let seen = reads.clone();
    let hooked: DynStorage = hooked(storage(loc), move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    (hooked, reads)
}

/// The snapshot of `result` restores to exactly `src`, and the repository
/// checks clean down to the data.
fn restores_and_checks_clean(
    loc: &cairn_storage::testing::TestLocation,
    result: &cairn_core::backup::BackupResult,
    src: &std::path::Path,
) {
    use cairn_core::check::{check, CheckOptions, DataSubset};
    let (_c, cache) = temp_sub("verify-cache");
    let repo = open_repo(loc, &cache);
    let target = tempfile::tempdir().unwrap();
    restore_all(&repo, result, target.path());
    cairn_golden::assert_same_tree(src, target.path(), &compare_opts(src));
    let report = check(
        &repo,
        &CheckOptions {
            read_data: Some(DataSubset::All),
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
}

#[test]
fn a_first_backup_meeting_many_filter_hits_stores_them_unconfirmed_in_one_pass_over_the_index() {
    let t = test_repo("cold-hits-within-budget");
    write_fake_index(&t.repo, 4, 2000);
    let segments = count(&t.storage().unwrap(), "index/") as u64;
    let (_s, src) = temp_sub("src");
    let files = 40;
    write_files(&src, files, "new");
    let (_c, cache) = temp_sub("cache");
    let (hooked, reads) = counting(&t.loc);
    let repo = open_on(hooked, &cache).unwrap();
    // One block: every data blob is a filter hit, as a false positive or
    // a duplicate would be, far more than MAX_CONFIRMATIONS.
    repo.index_view().limit_filter(512);
    let result = backup_dir(&repo, &src);
    let summary = &result.snapshot.summary;
    assert_eq!(summary.files_new, files as u64, "{summary:?}");
    assert!(
        summary.blobs_added > files as u64 + MAX_CONFIRMATIONS as u64,
        "{summary:?}"
    );
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "no ingestion of the whole index"
    );
    assert_eq!(
        reads.load(Ordering::SeqCst),
        segments,
        "one read of each segment (the tree level); the hits are stored unconfirmed, within the budget"
    );
    restores_and_checks_clean(&t.loc, &result, &src);
}

#[test]
fn filter_hits_past_the_budget_are_confirmed_in_a_few_batched_passes_never_in_full() {
    let t = test_repo("cold-hits-past-budget");
    write_fake_index(&t.repo, 2, 300);
    let segments = count(&t.storage().unwrap(), "index/") as u64;
    let listed: u64 = t
        .storage()
        .unwrap()
        .list("index/")
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    let (_s, src) = temp_sub("src");
    let files = 100;
    write_files(&src, files, "fresh");
    assert!(
        (files as u64 * 4096) > 4 * listed,
        "past the first budget ({listed} bytes) more than twice"
    );
    let (_c, cache) = temp_sub("cache");
    let (hooked, reads) = counting(&t.loc);
    let repo = open_on(hooked, &cache).unwrap();
    repo.index_view().limit_filter(512);
    // Each pass reads the segments (counted here), none kept in memory.
    repo.index_view().hold_segments(false);
    let result = backup_dir(&repo, &src);
    assert_eq!(result.snapshot.summary.files_new, files as u64);
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "the hits were false positives: confirmed by cover passes, not a full ingestion"
    );
    let read = reads.load(Ordering::SeqCst);
    assert_eq!(
        read % segments,
        0,
        "whole passes: {read} reads of {segments} segments"
    );
    let passes = read / segments - 1;
    // The budget doubles after each pass: log2(400 KiB / budget) + 1.
    assert!(
        (1..=6).contains(&passes),
        "{passes} cover passes for {} hits",
        result.snapshot.summary.blobs_added
    );
    restores_and_checks_clean(&t.loc, &result, &src);
}

#[test]
fn a_backup_of_data_the_repository_holds_reads_the_index_in_full_after_one_pass() {
    let t = test_repo("cold-hits-duplicates");
    let (_a, first) = temp_sub("first");
    let files = 100;
    write_files(&first, files, "held");
    let original = backup_dir(&t.repo, &first);
    write_fake_index(&t.repo, 2, 300);
    // The same files at another path: no parent, every chunk a duplicate.
    let (_b, clone) = temp_sub("clone");
    write_files(&clone, files, "held");
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let result = cairn_core::backup::backup(
        &repo,
        &cairn_core::backup::BackupOptions {
            paths: vec![clone.clone()],
            source: Some("a clone".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(result.snapshot.parent.is_none());
    assert_eq!(
        repo.index_view().level(),
        Level::Full,
        "duplicates keep coming: the index is read in full, where answers are exact"
    );
    // Until the pass's answer is in, the other readers go on storing
    // unconfirmed chunks within the (doubled) budget: one to three
    // budgets' worth are stored again here (34 to 103 of 389 in ten
    // runs), never the whole clone.
    let stored_again = result.snapshot.summary.blobs_added;
    assert!(
        stored_again < original.snapshot.summary.blobs_added / 2,
        "{stored_again} blobs stored again of {}",
        original.snapshot.summary.blobs_added
    );
    restores_and_checks_clean(&t.loc, &result, &clone);
}

#[test]
fn a_blob_whose_copies_maintenance_planned_to_delete_is_never_taken_as_present_by_a_backup() {
    use cairn_core::index_view::Presence;
    let t = test_repo("cold-hits-planned");
    let (_s, src) = temp_sub("src");
    let (_s1, chunks) = a_file_planned_for_deletion(&t, &src);
    write_fake_index(&t.repo, 2, 300);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    repo.index_view().limit_filter(512);
    let none = std::collections::HashSet::new();
    for c in &chunks {
        assert_ne!(repo.presence(&c.id, &none).unwrap(), Presence::Present);
    }
    assert_eq!(repo.index_view().level(), Level::Trees);
    // The same content at another path: stored again, unconfirmed or
    // confirmed absent, never deduplicated against the planned copies.
    let (_o, other) = temp_sub("other");
    std::fs::copy(src.join("doomed"), other.join("doomed")).unwrap();
    let result = backup_dir(&repo, &other);
    assert!(
        result.snapshot.summary.blobs_added > chunks.len() as u64,
        "{:?}",
        result.snapshot.summary
    );
    let (_v, fresh) = temp_sub("fresh");
    let check_repo = open_repo(&t.loc, &fresh);
    check_repo.sync_index(false).unwrap();
    for c in &chunks {
        let loc = check_repo.lookup(&c.id).unwrap().expect("located");
        assert!(
            !check_repo.planned_packs().contains(&loc.pack),
            "a copy outside the plan"
        );
    }
    restores_and_checks_clean(&t.loc, &result, &other);
}

/// `stats` of a snapshot on an empty cache locates the snapshot's blobs
/// in one pass and sums the repository's packs from the segments as they
/// stream past: it stays at the tree level, and says what a handle with
/// the whole index says.
#[test]
fn stats_on_an_empty_cache_does_not_ingest_the_index() {
    let t = test_repo("cold-stats");
    let (_s, src) = temp_sub("src");
    write_source(&src, 3, "s");
    let first = backup_dir(&t.repo, &src);
    write_fake_index(&t.repo, 4, 2000);
    let (_c, cache) = temp_sub("cache");
    let repo = open_repo(&t.loc, &cache);
    let snap = repo.load_snapshot(&first.id).unwrap();
    let cold = cairn_core::stats::stats(&repo, &[(first.id, snap.clone())]).unwrap();
    assert_eq!(
        repo.index_view().level(),
        Level::Trees,
        "no ingestion of the whole index"
    );
    assert!(repo.cache().blob_count().unwrap() < 100);

    let (_w, whole) = temp_sub("whole");
    let full = open_repo(&t.loc, &whole);
    full.index().unwrap();
    let warm = cairn_core::stats::stats(&full, &[(first.id, snap)]).unwrap();
    assert_eq!(cold.unique_blobs, warm.unique_blobs);
    assert_eq!(cold.unique_stored_size, warm.unique_stored_size);
    assert_eq!(cold.missing_blobs, 0);
    assert_eq!((cold.packs, cold.pack_size), (warm.packs, warm.pack_size));
    // The first backup's blobs and the 4 x 2000 fake ones.
    assert_eq!(cold.indexed_blobs, full.cache().blob_count().unwrap());
    assert!(cold.indexed_blobs >= 8000);
}
