//! Requests per repository operation: the proportions docs/STORAGE.md
//! ("Requests per operation") promises, held with `CountingStorage`.
//!
//! Each repository sits on the backend `CAIRN_TEST_BACKEND` names (fs or
//! s3) with `CountingStorage` (and a recorder of object names) between the
//! backend and the production retry and concurrency layers, so retries
//! would be counted too. The measured counts are printed (`--nocapture`)
//! so the table can be checked against them.

use bytes::Bytes;
use cairn_core::backup::BackupResult;
use cairn_core::check::{check, CheckOptions, DataSubset};
use cairn_core::format::tree::{Content, Payload};
use cairn_core::index_view::Level;
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{BlobId, InitOptions, OpenOptions, PackId, Repository};
use cairn_golden::fixture::Rng;
use cairn_golden::testkit::{self, backup_dir};
use cairn_storage::testing::{fresh_location, fresh_location_on, TestBackend, TestLocation};
use cairn_storage::{
    open_backend, wrap, CountingStorage, DynStorage, ObjectInfo, ObjectWriter, OpCounts, OpKind,
    RequestCounts, Storage, StorageOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "count me";

/// Records the kind and object of every request, for "which packs were read".
#[derive(Debug)]
struct Recorder {
    inner: DynStorage,
    log: Mutex<Vec<(OpKind, String)>>,
}

impl Recorder {
    fn note(&self, kind: OpKind, path: &str) {
        self.log
            .lock()
            .expect("log lock")
            .push((kind, path.to_string()));
    }

    /// Takes the requests recorded since the last call.
    fn take(&self) -> Vec<(OpKind, String)> {
        std::mem::take(&mut *self.log.lock().expect("log lock"))
    }
}

/// A writer of the storage below whose close is recorded as a write.
struct RecordingWriter {
    inner: Box<dyn ObjectWriter>,
    recorder: Arc<Recorder>,
}

impl ObjectWriter for RecordingWriter {
    fn write(&mut self, bytes: &[u8]) -> cairn_storage::Result<()> {
        self.inner.write(bytes)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn close(&mut self, path: &str) -> cairn_storage::Result<()> {
        self.recorder.note(OpKind::Write, path);
        self.inner.close(path)
    }
}

impl Storage for Recorder {
    fn read(&self, path: &str) -> cairn_storage::Result<Bytes> {
        self.note(OpKind::Read, path);
        self.inner.read(path)
    }
    fn read_range(&self, path: &str, range: Range<u64>) -> cairn_storage::Result<Bytes> {
        self.note(OpKind::ReadRange, path);
        self.inner.read_range(path, range)
    }
    fn write(&self, path: &str, data: Bytes) -> cairn_storage::Result<()> {
        self.note(OpKind::Write, path);
        self.inner.write(path, data)
    }
    // Packs stream through the layers below (on fs, into staging files),
    // as in production: the counts hold for that path too.
    fn writer(self: Arc<Self>, size_hint: usize) -> cairn_storage::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(RecordingWriter {
            inner: self.inner.clone().writer(size_hint)?,
            recorder: self,
        }))
    }
    fn list(&self, prefix: &str) -> cairn_storage::Result<Vec<ObjectInfo>> {
        self.note(OpKind::List, prefix);
        self.inner.list(prefix)
    }
    fn stat(&self, path: &str) -> cairn_storage::Result<ObjectInfo> {
        self.note(OpKind::Stat, path);
        self.inner.stat(path)
    }
    fn delete(&self, path: &str) -> cairn_storage::Result<()> {
        self.note(OpKind::Delete, path);
        self.inner.delete(path)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// A repository whose every request is counted and recorded.
struct Counted {
    _loc: TestLocation,
    cache: tempfile::TempDir,
    counting: Arc<CountingStorage>,
    recorder: Arc<Recorder>,
    stack: DynStorage,
}

fn init_options() -> InitOptions {
    InitOptions {
        zstd_level: 1,
        ..testkit::init_options((128 << 10, 32 << 10))
    }
}

impl Counted {
    /// A fresh location, not yet a repository.
    fn new(name: &str) -> Self {
        Self::at(fresh_location(name).expect("test location"))
    }

    fn at(loc: TestLocation) -> Self {
        let opts = StorageOptions::default();
        let counting = Arc::new(CountingStorage::new(
            open_backend(loc.location(), &opts).expect("backend"),
        ));
        let recorder = Arc::new(Recorder {
            inner: counting.clone(),
            log: Mutex::default(),
        });
        let stack = wrap(recorder.clone(), &opts);
        Self {
            _loc: loc,
            cache: tempfile::tempdir().expect("cache dir"),
            counting,
            recorder,
            stack,
        }
    }

    fn init(&self) -> Repository {
        Repository::init(
            self.stack.clone(),
            PASSWORD,
            &init_options(),
            &testkit::cached(self.cache.path()),
        )
        .expect("init")
    }

    /// Opens with the repository's cache directory (`warm`) or with an
    /// empty in-memory cache.
    fn open(&self, warm: bool) -> Repository {
        let opts = if warm {
            testkit::cached(self.cache.path())
        } else {
            OpenOptions::default()
        };
        Repository::open(self.stack.clone(), PASSWORD, &opts).expect("open")
    }

    /// Counts and recorded requests since the last call; resets both.
    fn take(&self) -> (RequestCounts, Vec<(OpKind, String)>) {
        let counts = self.counting.snapshot();
        self.counting.reset();
        (counts, self.recorder.take())
    }

    /// Objects under `prefix`, listed without being counted.
    fn listed(&self, prefix: &str) -> BTreeSet<String> {
        let listing = self.stack.list(prefix).expect("list");
        self.take();
        listing.into_iter().map(|o| o.path).collect()
    }
}

fn show(what: &str, c: &RequestCounts) {
    let fmt = |o: &OpCounts| {
        OpKind::ALL
            .iter()
            .filter(|k| o.get(**k) > 0)
            .map(|k| format!("{} {}", o.get(*k), k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("{what}: {} requests ({})", c.all.total(), fmt(&c.all));
    for (prefix, o) in &c.by_prefix {
        eprintln!("    {prefix}: {}", fmt(o));
    }
}

/// `dirs` directories of `files` pseudo-random files each, `min..max` bytes.
fn write_tree(root: &Path, seed: u64, dirs: usize, files: usize, sizes: Range<u64>) {
    let mut rng = Rng::new(seed);
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..files {
            let len = sizes.start + rng.below(sizes.end - sizes.start);
            std::fs::write(dir.join(format!("f{f:04}")), rng.bytes(len as usize)).expect("write");
        }
    }
}

fn backup_of(repo: &Repository, src: &Path) -> BackupResult {
    backup_dir(repo, src).expect("backup")
}

#[test]
fn init_and_open_cost_a_fixed_number_of_requests_and_the_first_lookup_lists_the_index_once() {
    let c = Counted::new("requests-open");
    let repo = c.init();
    let (init, _) = c.take();
    show("init", &init);
    assert_eq!(
        init.prefix("cairn.repository").stat,
        2,
        "refuse an existing repository, before and after taking the init claim"
    );
    let claims = init.prefix("init");
    assert_eq!(
        (claims.write, claims.list, claims.delete),
        (1, 1, 1),
        "one init claim: written, the claims listed, withdrawn"
    );
    assert_eq!(
        init.prefix("keys").list,
        1,
        "leftovers of an interrupted init"
    );
    assert_eq!(init.all.write, 4, "claim, config, key, header");
    assert_eq!(init.all.reads(), 0);

    // Three backups of different content: three index segments at least.
    let src = tempfile::tempdir().expect("src");
    for seed in 0..3 {
        write_tree(src.path(), seed, 2, 10, 500..3000);
        backup_of(&repo, src.path());
    }
    drop(repo);
    let segments = c.listed("index/").len() as u64;
    assert!(segments >= 3, "{segments} segments");

    for warm in [false, true] {
        let repo = c.open(warm);
        let (open, log) = c.take();
        show(
            &format!(
                "open ({} cache, {segments} segments)",
                if warm { "warm" } else { "cold" }
            ),
            &open,
        );
        assert_eq!(
            open.prefix("index").total(),
            0,
            "opening reads no index: {log:?}"
        );
        assert_eq!(open.prefix("cairn.repository").read, 1);
        assert_eq!(open.prefix("keys").list, 1);
        assert_eq!(open.prefix("keys").read, 1, "the first key opens");
        assert_eq!(open.prefix("config").read, 1);
        assert_eq!(open.prefix("gc").list, 1, "maintenance plans");
        assert_eq!(open.prefix("damage").list, 1, "damage records");
        assert_eq!(open.all.total(), 6, "nothing else: {log:?}");
        assert_eq!(open.all.write + open.all.delete + open.all.read_range, 0);

        // The first question about blobs syncs the index: one listing,
        // one read per segment not in the cache (a blob the data-blob
        // filter proves absent needs no more); later ones cost nothing.
        assert!(!repo
            .has_blob(&BlobId(cairn_core::format::Id([7; 32])))
            .expect("has_blob"));
        let (first, log) = c.take();
        show(&format!("first question ({segments} segments)"), &first);
        let segment_reads = if warm { 0 } else { segments };
        assert_eq!(first.prefix("index").list, 1, "{log:?}");
        assert_eq!(first.prefix("index").read, segment_reads);
        assert_eq!(
            first.all.total(),
            1 + segment_reads,
            "nothing else: {log:?}"
        );
        // The whole index, asked for next, comes from the segments the
        // first question read in part and kept (small ones), without
        // listing `index/` or reading them again.
        repo.index().expect("index");
        let (sync, log) = c.take();
        show(&format!("index sync ({segments} segments)"), &sync);
        let index_lists = log
            .iter()
            .filter(|(k, p)| *k == OpKind::List && p == "index/")
            .count();
        assert_eq!(index_lists, 0, "the index is listed once in all: {log:?}");
        assert_eq!(sync.prefix("index").read, 0, "kept: {log:?}");
        assert_eq!(sync.all.total(), 0, "nothing else: {log:?}");
    }
}

#[test]
fn backup_writes_in_proportion_to_packs_not_files() {
    const DIRS: usize = 20;
    const FILES: usize = 100;
    let c = Counted::new("requests-backup");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    write_tree(src.path(), 7, DIRS, FILES, 100..600);
    c.take();

    backup_of(&repo, src.path());
    let (first, log) = c.take();
    show(&format!("first backup of {} files", DIRS * FILES), &first);
    let packs = c.listed("packs/").len() as u64;
    let segments = c.listed("index/").len() as u64;
    let snapshots = c.listed("snapshots/").len() as u64;
    eprintln!("    -> {packs} packs, {segments} segments, {snapshots} snapshots");
    assert_eq!(snapshots, 1);
    // One write per pack, per index segment and per snapshot; nothing else.
    assert_eq!(first.prefix("packs").write, packs, "one PUT per pack");
    assert_eq!(first.prefix("index").write, segments, "one PUT per segment");
    assert_eq!(first.prefix("snapshots").write, 1);
    assert_eq!(first.all.write, packs + segments + snapshots, "{log:?}");
    assert!(
        first.all.write * 20 < (DIRS * FILES) as u64,
        "{} writes for {} files",
        first.all.write,
        DIRS * FILES
    );
    // A first backup reads no pack, and makes no request per file.
    assert_eq!(first.prefix("packs").reads(), 0, "{log:?}");
    assert!(
        first.all.total() < packs + segments + 20,
        "{} requests: {log:?}",
        first.all.total()
    );

    // Nothing changed: no pack, no segment, one snapshot, and no tree
    // read: the trees the first backup wrote are in the local cache.
    let (again, log) = unchanged_backup(&c, &repo, src.path(), "warm", DIRS * FILES);
    assert_eq!(again.prefix("snapshots").write, 1);
    assert_eq!(again.prefix("packs").reads(), 0, "{log:?}");

    // The same from another machine (an empty cache): the parent's trees
    // prefetched in one merged read per pack holding them, the root with
    // its pack (not one read per tree, nor the root alone first), and one
    // read per snapshot manifest to find it.
    let cold = c.open(false);
    c.take();
    let (elsewhere, log) = unchanged_backup(&c, &cold, src.path(), "cold", DIRS * FILES);
    let tree_packs: BTreeSet<&String> = log
        .iter()
        .filter(|(k, _)| *k == OpKind::ReadRange)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        elsewhere.prefix("packs").read_range,
        tree_packs.len() as u64,
        "one read per pack of trees, the root's included: {log:?}"
    );
    assert!(
        elsewhere.prefix("packs").read_range < (DIRS + 1) as u64 / 2,
        "not one read per parent tree: {log:?}"
    );
    assert_eq!(elsewhere.prefix("packs").read, 0);
    assert_eq!(elsewhere.prefix("snapshots").read, 2, "{log:?}");
    // Each index segment read once: the tree level keeps small segments
    // for the cover of the parent's chunks that follows.
    let segments = c.listed("index/").len() as u64;
    assert_eq!(elsewhere.prefix("index").read, segments, "{log:?}");
    // `gc/` listed once, before the snapshot: the open read the plans
    // moments before the backup started.
    assert_eq!(elsewhere.prefix("gc").list, 1, "{log:?}");
}

/// Backs up `src` again, unchanged since the last backup, and returns the
/// requests it made, having asserted every one of its `files` was skipped
/// as unchanged and that it wrote nothing but the snapshot.
fn unchanged_backup(
    c: &Counted,
    repo: &Repository,
    src: &Path,
    cache: &str,
    files: usize,
) -> (RequestCounts, Vec<(OpKind, String)>) {
    let result = backup_of(repo, src);
    let (counts, log) = c.take();
    show(&format!("unchanged backup, {cache} cache"), &counts);
    assert_eq!(result.snapshot.summary.files_unchanged, files as u64);
    assert_eq!(counts.all.write, 1, "only the snapshot: {log:?}");
    (counts, log)
}

/// Packs holding the blobs a restore of `include` (a top-level directory)
/// needs: metadata (its ancestors' and its own trees, list blobs) and data.
struct Needed {
    meta_blobs: BTreeSet<BlobId>,
    /// The list blobs among `meta_blobs`.
    list_blobs: BTreeSet<BlobId>,
    meta_packs: BTreeSet<PackId>,
    data_packs: BTreeSet<PackId>,
}

fn needed(repo: &Repository, root: &BlobId, include: Option<&str>) -> Needed {
    let mut n = Needed {
        meta_blobs: BTreeSet::new(),
        list_blobs: BTreeSet::new(),
        meta_packs: BTreeSet::new(),
        data_packs: BTreeSet::new(),
    };
    let pack_of = |id: &BlobId| repo.lookup(id).expect("lookup").expect("indexed").pack;
    let mut stack = vec![*root];
    let mut top = true;
    while let Some(t) = stack.pop() {
        n.meta_blobs.insert(t);
        n.meta_packs.insert(pack_of(&t));
        let tree = repo.load_tree(&t).expect("tree");
        for node in &tree.nodes {
            if top && include.is_some_and(|i| node.name != i.as_bytes()) {
                continue;
            }
            match &node.payload {
                Payload::Dir(sub) => stack.push(*sub),
                Payload::File(content) => {
                    if let Content::Lists(lists) = content {
                        for l in lists {
                            n.meta_blobs.insert(l.id);
                            n.list_blobs.insert(l.id);
                            n.meta_packs.insert(pack_of(&l.id));
                        }
                    }
                    for chunk in repo.chunk_list(content).expect("chunk list") {
                        if !chunk.is_hole() {
                            n.data_packs.insert(pack_of(&chunk.id));
                        }
                    }
                }
                _ => {}
            }
        }
        top = false;
    }
    n
}

/// Distinct packs range-read, and range reads per pack, in a request log.
fn packs_read(log: &[(OpKind, String)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (kind, path) in log {
        if path.starts_with("packs/") {
            assert_eq!(
                *kind,
                OpKind::ReadRange,
                "restore reads packs by range: {path}"
            );
            *out.entry(path.clone()).or_default() += 1;
        }
    }
    out
}

#[test]
fn restore_reads_only_the_packs_it_needs_about_once_each() {
    const DIRS: usize = 8;
    let c = Counted::new("requests-restore");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    // 8 directories of 40 files of 2-6 KiB: each directory fills one or
    // two 128 KiB data packs; a 300 KiB file in d05 needs list blobs.
    write_tree(src.path(), 3, DIRS, 40, 2048..6144);
    std::fs::write(src.path().join("d05/big"), Rng::new(99).bytes(300 << 10)).expect("big file");
    let result = backup_of(&repo, src.path());
    let root = result.snapshot.tree;
    let all_packs = c.listed("packs/");

    for include in [Some("d03"), Some("d05"), None] {
        // A cold cache: trees and list blobs are fetched too.
        let cold = c.open(false);
        let need = needed(&repo, &root, include);
        c.take();
        let out = tempfile::tempdir().expect("restore dir");
        let stats = restore(
            &cold,
            &root,
            &RestoreOptions {
                target: out.path().join("dst"),
                includes: include.map(PathBuf::from).into_iter().collect(),
                ..RestoreOptions::default()
            },
        )
        .expect("restore");
        assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
        let (counts, log) = c.take();
        let what = format!("restore of {}", include.unwrap_or("everything"));
        show(&what, &counts);
        let read = packs_read(&log);
        let expected: BTreeSet<String> = need
            .meta_packs
            .iter()
            .chain(&need.data_packs)
            .map(|p| p.path())
            .collect();
        eprintln!(
            "    -> {} of {} packs read ({} data, {} metadata packs needed), {} range reads, {} metadata blobs",
            read.len(),
            all_packs.len(),
            need.data_packs.len(),
            need.meta_packs.len(),
            counts.all.read_range,
            need.meta_blobs.len(),
        );
        let read_set: BTreeSet<String> = read.keys().cloned().collect();
        assert_eq!(read_set, expected, "{what}: packs read vs packs needed");
        if include.is_some() {
            assert!(read.len() < all_packs.len(), "{what} reads a subset");
        }
        // Data packs: one merged range read each. Metadata: below.
        let data_reads: u64 = need
            .data_packs
            .iter()
            .map(|p| read.get(&p.path()).copied().unwrap_or(0))
            .sum::<u64>();
        assert!(
            need.meta_packs.is_disjoint(&need.data_packs),
            "data and metadata never share a pack"
        );
        assert_eq!(data_reads, stats.ranges_read, "{what}: {log:?}");
        assert_eq!(
            stats.ranges_read,
            need.data_packs.len() as u64,
            "{what}: one range per data pack"
        );
        let meta_reads = counts.prefix("packs").read_range - stats.ranges_read;
        let lists = need.list_blobs.len() as u64;
        if include.is_some() {
            assert_eq!(
                meta_reads,
                need.meta_blobs.len() as u64,
                "{what}: plus one per tree or list blob"
            );
        } else {
            // A whole snapshot's trees are prefetched: the root, then its level (the 8
            // directories) in one merged read per metadata pack holding them, instead of
            // one read per directory; list blobs one by one.
            assert!(
                meta_reads <= 1 + need.meta_packs.len() as u64 + lists
                    && meta_reads < need.meta_blobs.len() as u64,
                "{what}: {meta_reads} metadata reads for {} trees in {} packs and {lists} list blobs: {log:?}",
                need.meta_blobs.len() as u64 - lists,
                need.meta_packs.len(),
            );
        }
        // Nothing but pack range reads, and the index: one listing, each
        // segment read once (tree and list rows to plan, then, from the
        // segments kept in memory, the rows of the chunks restored),
        // never ingested whole.
        let segments = c.listed("index/").len() as u64;
        assert_eq!(counts.prefix("index").list, 1, "{log:?}");
        assert_eq!(counts.prefix("index").read, segments, "{log:?}");
        assert_eq!(cold.index_view().level(), Level::Trees);
        assert_eq!(
            counts.all.total(),
            counts.prefix("packs").read_range + counts.prefix("index").total(),
            "{log:?}"
        );
    }
}

#[test]
fn browsing_a_snapshot_on_an_empty_cache_reads_the_index_once_and_no_data_pack() {
    let c = Counted::new("requests-browse");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    write_tree(src.path(), 5, 6, 20, 2048..6144);
    let result = backup_of(&repo, src.path());
    let need = needed(&repo, &result.snapshot.tree, None);
    let segments = c.listed("index/").len() as u64;
    // `ls -R` of the snapshot on an empty cache: every tree, no content.
    let cold = c.open(false);
    c.take();
    let mut stack = vec![result.snapshot.tree];
    let mut trees = 0;
    while let Some(id) = stack.pop() {
        trees += 1;
        for node in cold.load_tree(&id).expect("tree").nodes {
            if let Payload::Dir(sub) = node.payload {
                stack.push(sub);
            }
        }
    }
    let (counts, log) = c.take();
    show(
        &format!("ls -R of {trees} directories, empty cache"),
        &counts,
    );
    assert_eq!(counts.prefix("index").list, 1, "{log:?}");
    assert_eq!(
        counts.prefix("index").read,
        segments,
        "each segment once: {log:?}"
    );
    let read = packs_read(&log);
    for pack in read.keys() {
        assert!(
            need.meta_packs.iter().any(|p| p.path() == *pack),
            "only tree packs are read: {pack}"
        );
    }
    assert_eq!(
        counts.prefix("packs").read_range,
        trees,
        "one read per tree"
    );
    assert_eq!(
        counts.all.total(),
        1 + segments + trees,
        "nothing else: {log:?}"
    );
    assert_eq!(
        cold.index_view().level(),
        Level::Trees,
        "no data row ingested"
    );

    // `ls -R` and `find` prefetch the trees first: reads merged per pack
    // and level, not one per directory.
    let cold = c.open(false);
    c.take();
    let root = cold.load_tree(&result.snapshot.tree).expect("root");
    let stats = cairn_core::prefetch::prefetch_trees(&cold, &root).expect("prefetch");
    assert_eq!(stats.fetched, trees - 1, "{stats:?}");
    assert_eq!(stats.covered, 0, "no chunk rows for a listing");
    let (counts, log) = c.take();
    show(&format!("prefetch of {trees} trees, empty cache"), &counts);
    assert_eq!(
        counts.prefix("packs").read_range,
        1 + stats.reads,
        "{log:?}"
    );
    assert!(stats.reads < trees - 1, "{stats:?}");
    assert_eq!(cold.index_view().level(), Level::Trees);
}

/// Regression (S3 with a 20 ms round trip, benches/latency.sh): a parent of
/// 13 levels whose trees were all in one metadata pack cost 22 sequential
/// range reads of that pack on an empty cache, one or more per level.
#[test]
fn prefetching_a_deep_tree_reads_each_metadata_pack_once_not_once_per_level() {
    const DEPTH: usize = 12;
    let c = Counted::new("requests-deep");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    // A chain of 12 directories, each with 3 small files and an empty sibling.
    let mut dir = src.path().to_path_buf();
    let mut rng = Rng::new(12);
    for level in 0..DEPTH {
        dir = dir.join(format!("l{level:02}"));
        std::fs::create_dir_all(dir.join("side")).expect("mkdir");
        for f in 0..3 {
            std::fs::write(dir.join(format!("f{f}")), rng.bytes(300)).expect("write");
        }
    }
    let result = backup_of(&repo, src.path());
    let need = needed(&repo, &result.snapshot.tree, None);

    let cold = c.open(false);
    c.take();
    let root = cold.load_tree(&result.snapshot.tree).expect("root");
    let stats = cairn_core::prefetch::prefetch_trees(&cold, &root).expect("prefetch");
    let (counts, log) = c.take();
    show("prefetch of a 12-level tree, empty cache", &counts);
    assert!(stats.levels as usize >= DEPTH, "{stats:?}");
    assert_eq!(
        stats.fetched as usize,
        need.meta_blobs.len() - 1,
        "{stats:?}"
    );
    assert_eq!(stats.skipped, 0, "{stats:?}");
    assert_eq!(
        counts.prefix("packs").read_range,
        1 + stats.reads,
        "the root, then the prefetch's reads: {log:?}"
    );
    // Each metadata pack holding the trees is read (whole) once at most,
    // however many levels it serves.
    let read = packs_read(&log);
    assert!(
        read.values().all(|n| *n <= 2),
        "the root's read, then once: {read:?}"
    );
    assert!(
        stats.reads <= need.meta_packs.len() as u64 && stats.reads < stats.levels as u64,
        "{} reads for {} levels in {} metadata packs: {log:?}",
        stats.reads,
        stats.levels,
        need.meta_packs.len()
    );
    // The trees landed in the cache: walking them costs nothing more.
    let mut stack = vec![result.snapshot.tree];
    while let Some(id) = stack.pop() {
        for node in cold.load_tree(&id).expect("tree").nodes {
            if let Payload::Dir(sub) = node.payload {
                stack.push(sub);
            }
        }
    }
    let (counts, log) = c.take();
    assert_eq!(counts.all.total(), 0, "{log:?}");
}

/// A backup's prefetch of its parent keeps the trees decoded for the walk
/// that follows: the walk neither reads them back from the cache nor asks
/// the repository, and takes each once.
#[test]
fn a_parents_prefetch_keeps_its_trees_for_the_walk_which_takes_each_once() {
    let c = Counted::new("requests-kept");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    write_tree(src.path(), 9, 4, 5, 100..400);
    let result = backup_of(&repo, src.path());
    let need = needed(&repo, &result.snapshot.tree, None);
    let cold = c.open(false);
    c.take();
    let stats =
        cairn_core::prefetch::prefetch_parent(&cold, &result.snapshot.tree).expect("prefetch");
    assert_eq!(stats.fetched as usize, need.meta_blobs.len(), "{stats:?}");
    assert_eq!(stats.levels, 1, "the level below the root: {stats:?}");
    assert_eq!(stats.covered, 20, "the parent's chunks: {stats:?}");
    let (counts, log) = c.take();
    assert_eq!(
        counts.prefix("packs").read_range,
        need.meta_packs.len() as u64,
        "the root with its pack: {log:?}"
    );
    // Dropped from the cache: the trees kept answer without it.
    for id in &need.meta_blobs {
        cold.cache().remove_object(&id.0).expect("remove");
    }
    for id in &need.meta_blobs {
        assert!(cold.load_tree(id).is_ok());
    }
    let (counts, log) = c.take();
    assert_eq!(counts.all.total(), 0, "kept trees: {log:?}");
    // Taken once: the next load asks the repository.
    cold.load_tree(&result.snapshot.tree).expect("root again");
    let (counts, log) = c.take();
    assert_eq!(counts.prefix("packs").read_range, 1, "{log:?}");
    // What no walk took is dropped.
    cairn_core::prefetch::prefetch_parent(&cold, &result.snapshot.tree).expect("again");
    cold.forget_prefetched();
    c.take();
    cold.cache()
        .remove_object(&result.snapshot.tree.0)
        .expect("remove");
    cold.load_tree(&result.snapshot.tree).expect("root");
    let (counts, log) = c.take();
    assert_eq!(counts.prefix("packs").read_range, 1, "forgotten: {log:?}");
}

#[test]
fn listing_snapshots_costs_one_list_and_one_read_per_snapshot() {
    let c = Counted::new("requests-snapshots");
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    for seed in 0..4 {
        write_tree(src.path(), seed, 1, 5, 100..1000);
        backup_of(&repo, src.path());
    }
    drop(repo);
    for warm in [false, true] {
        let repo = c.open(warm);
        c.take();
        let snapshots = repo.list_snapshots().expect("list snapshots");
        let (counts, log) = c.take();
        show(
            &format!("snapshots ({} cache)", if warm { "warm" } else { "cold" }),
            &counts,
        );
        assert_eq!(snapshots.len(), 4);
        assert_eq!(counts.prefix("snapshots").list, 1);
        let reads = if warm { 0 } else { 4 };
        assert_eq!(
            counts.prefix("snapshots").read,
            reads,
            "cached manifests are not read again"
        );
        assert_eq!(counts.all.total(), 1 + reads, "{log:?}");
    }

    // check: one listing of packs/; with --read-data one read per pack.
    let repo = c.open(true);
    c.take();
    let packs = c.listed("packs/").len() as u64;
    for read_data in [None, Some(DataSubset::All)] {
        let report = check(&repo, &CheckOptions { read_data }).expect("check");
        assert!(report.is_clean(), "{:?}", report.damage);
        let (counts, log) = c.take();
        show(
            &format!("check (read_data {read_data:?}, {packs} packs)"),
            &counts,
        );
        assert_eq!(counts.prefix("packs").list, 1, "{log:?}");
        let expected = if read_data.is_some() { packs } else { 0 };
        assert_eq!(counts.prefix("packs").read, expected, "{log:?}");
    }
}

/// Counting sees the packs of a local repository, which the fs backend
/// streams into staging files: one write per pack on disk, carrying exactly
/// its bytes, whatever `CAIRN_TEST_BACKEND` says.
#[test]
fn counting_sees_every_pack_written_to_a_local_repository() {
    let loc = fresh_location_on(&TestBackend::Fs, "requests-local").expect("test location");
    let root = loc.local_root().expect("local").to_path_buf();
    let c = Counted::at(loc);
    let repo = c.init();
    let src = tempfile::tempdir().expect("src");
    write_tree(src.path(), 3, 4, 30, 2000..40_000);
    c.take();
    backup_of(&repo, src.path());
    let (counts, log) = c.take();
    let packs = c.listed("packs/");
    assert!(packs.len() > 2, "several packs: {packs:?}");
    let written: BTreeSet<String> = log
        .iter()
        .filter(|(k, p)| *k == OpKind::Write && p.starts_with("packs/"))
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(written, packs, "every pack on disk was seen written");
    assert_eq!(counts.prefix("packs").write, packs.len() as u64);
    let on_disk: u64 = packs
        .iter()
        .map(|p| std::fs::metadata(root.join(p)).expect("pack file").len())
        .sum();
    let index_and_snapshots: u64 = ["index/", "snapshots/"]
        .iter()
        .flat_map(|prefix| c.stack.list(prefix).expect("list"))
        .map(|o| o.size)
        .sum();
    c.take();
    assert_eq!(
        counts.bytes_up,
        on_disk + index_and_snapshots,
        "the counted bytes are the packs', segments' and snapshot's"
    );
}

/// Storage whose request for `held` (a read of that object, or a listing
/// of that prefix) waits until a request under `until` has started, or
/// [`Gate::PATIENCE`] has passed: whether the two were in flight at once.
#[derive(Debug)]
struct Gate {
    inner: DynStorage,
    held: String,
    until: String,
    /// Whether a request under `until` started; whether `held` met it.
    state: Mutex<(bool, Option<bool>)>,
    started: std::sync::Condvar,
}

impl Gate {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

    fn new(inner: DynStorage, held: &str, until: &str) -> Arc<Self> {
        Arc::new(Self {
            inner,
            held: held.to_string(),
            until: until.to_string(),
            state: Mutex::default(),
            started: std::sync::Condvar::new(),
        })
    }

    fn note(&self, path: &str) {
        if path.starts_with(&self.until) {
            self.state.lock().expect("gate").0 = true;
            self.started.notify_all();
        }
        if path == self.held {
            let state = self.state.lock().expect("gate");
            let (mut state, _) = self
                .started
                .wait_timeout_while(state, Self::PATIENCE, |s| !s.0)
                .expect("gate");
            state.1 = Some(state.0);
        }
    }

    /// Whether the held request was in flight with one under `until`
    /// (`None`: it was never made).
    fn overlapped(&self) -> Option<bool> {
        self.state.lock().expect("gate").1
    }
}

impl Storage for Gate {
    fn read(&self, path: &str) -> cairn_storage::Result<Bytes> {
        self.note(path);
        self.inner.read(path)
    }
    fn read_range(&self, path: &str, range: Range<u64>) -> cairn_storage::Result<Bytes> {
        self.note(path);
        self.inner.read_range(path, range)
    }
    fn write(&self, path: &str, data: Bytes) -> cairn_storage::Result<()> {
        self.inner.write(path, data)
    }
    fn writer(self: Arc<Self>, size_hint: usize) -> cairn_storage::Result<Box<dyn ObjectWriter>> {
        self.inner.clone().writer(size_hint)
    }
    fn list(&self, prefix: &str) -> cairn_storage::Result<Vec<ObjectInfo>> {
        self.note(prefix);
        self.inner.list(prefix)
    }
    fn stat(&self, path: &str) -> cairn_storage::Result<ObjectInfo> {
        self.inner.stat(path)
    }
    fn delete(&self, path: &str) -> cairn_storage::Result<()> {
        self.inner.delete(path)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// On an object store every request an empty-cache backup makes before
/// its walk is a round trip; those that do not depend on each other are
/// made at once: an open lists `gc/` and `damage/` while it reads the
/// config and derives the key, and a backup lists `index/` (the tree
/// level its parent's trees need) while it reads its snapshots.
#[test]
fn an_empty_cache_backup_makes_its_independent_requests_at_once() {
    let loc = fresh_location("requests-overlap").expect("test location");
    let opts = StorageOptions::default();
    let backend = open_backend(loc.location(), &opts).expect("backend");
    let cache = tempfile::tempdir().expect("cache dir");
    let repo = Repository::init(
        wrap(backend.clone(), &opts),
        PASSWORD,
        &init_options(),
        &testkit::cached(cache.path()),
    )
    .expect("init");
    let src = tempfile::tempdir().expect("src");
    write_tree(src.path(), 3, 2, 5, 100..400);
    let parent = backup_of(&repo, src.path());
    drop(repo);

    let gate = Gate::new(backend.clone(), "config", "gc/");
    let repo = Repository::open(wrap(gate.clone(), &opts), PASSWORD, &OpenOptions::default())
        .expect("open");
    assert_eq!(gate.overlapped(), Some(true), "config read beside gc/");
    drop(repo);

    let snapshot = format!("snapshots/{}", parent.id.to_hex());
    let gate = Gate::new(backend, &snapshot, "index/");
    let repo = Repository::open(wrap(gate.clone(), &opts), PASSWORD, &OpenOptions::default())
        .expect("open");
    let again = backup_of(&repo, src.path());
    assert_eq!(again.snapshot.parent, Some(parent.id));
    assert_eq!(
        gate.overlapped(),
        Some(true),
        "the parent snapshot read beside the index listing"
    );
}
