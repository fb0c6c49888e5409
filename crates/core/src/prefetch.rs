//! Fetching a snapshot's trees into the cache before a walk asks for them
//! one by one: on an empty cache (a job pod) each directory of the parent
//! snapshot would otherwise cost one sequential round trip.
//!
//! Level by level from the root: the trees of a level not cached yet are
//! looked up, grouped by pack, and the reads issued [`IN_FLIGHT`] at a time.
//! A metadata pack of at most [`WHOLE_PACK`] bytes is read whole the first
//! time a level needs it and kept (up to [`HELD_BYTES`] in all) for the
//! levels below, which then cost no request: a backup writes a snapshot's
//! trees into few metadata packs, so a deep tree costs a round trip per
//! pack instead of one per level (on S3 with a 20 ms round trip, a parent of
//! 13 levels in one pack took 22 sequential reads). Larger packs, or packs
//! past that budget, are read in ranges, neighbours merged into one read.
//! Prefetching only warms the cache: a tree it cannot fetch or open is left
//! for the walk, whose own read reports it. A backup's prefetch of its
//! parent ([`prefetch_parent`]) starts from the root's id, so that the
//! root arrives with the pack holding it, and keeps the trees for its walk
//! ([`Repository::load_tree`] takes them), which then neither reads them
//! back from the cache nor hashes them again.

use crate::cache::CachedKind;
use crate::error::Result;
use crate::format::tree::{Content, Payload, Tree};
use crate::format::{BlobId, BlobKind, Id, PackId};
use crate::index_view::MAX_COVERED;
use crate::repo::Repository;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

/// Range reads in flight at once.
pub const IN_FLIGHT: usize = 8;
/// Neighbouring ranges of a pack closer than this are read as one (reading
/// the gap costs less than another round trip).
pub const MERGE_GAP: u64 = 256 << 10;
/// One merged read spans at most this many bytes.
pub const MAX_READ: u64 = 8 << 20;
/// A metadata pack up to this size is read whole when a level first needs
/// one of its trees.
pub const WHOLE_PACK: u64 = 8 << 20;
/// Bytes of whole packs one prefetch keeps for its later levels; packs past
/// it are read in ranges.
pub const HELD_BYTES: u64 = 32 << 20;

/// What one prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Levels of the tree below the root walked.
    pub levels: u32,
    /// Trees fetched from the repository.
    pub fetched: u64,
    /// Range reads issued.
    pub reads: u64,
    /// Trees that could not be fetched or opened (left to the walk).
    pub skipped: u64,
    /// Chunks of the parent's files whose index rows were brought in (0
    /// when the index was already in the cache in full, or past
    /// [`crate::index_view::MAX_COVERED`]).
    pub covered: u64,
}

/// One merged read: a range of a pack and the trees inside it.
struct Read {
    pack: PackId,
    range: Range<u64>,
    /// (tree id, offset in the pack, stored length)
    trees: Vec<(BlobId, u64, u64)>,
    /// The whole pack, read for an earlier level: no request.
    held: Option<Bytes>,
    /// The range is the whole pack: keep it for the levels below.
    keep: bool,
}

/// Whole metadata packs read by one prefetch, for its later levels.
#[derive(Default)]
struct Held {
    packs: HashMap<PackId, Bytes>,
    /// Bytes of the packs kept and of the whole reads under way.
    bytes: u64,
}

impl Held {
    /// Whether `pack` is to be read whole now: small enough, and within the
    /// budget (then counted against it).
    fn take_whole(&mut self, repo: &Repository, pack: &PackId) -> Result<Option<u64>> {
        if self.bytes >= HELD_BYTES {
            return Ok(None);
        }
        Ok(match repo.cache().pack_len(pack)? {
            Some(len) if len <= WHOLE_PACK && self.bytes + len <= HELD_BYTES => {
                self.bytes += len;
                Some(len)
            }
            _ => None,
        })
    }
}

/// Fetches the tree `root` and every tree below it that the cache lacks,
/// then brings in the index rows of its files' chunks: a backup's parent,
/// whose walk follows at once and takes the trees kept for it
/// ([`Repository::load_tree`]). The root's level is not counted in
/// [`PrefetchStats::levels`].
pub fn prefetch_parent(repo: &Repository, root: &BlobId) -> Result<PrefetchStats> {
    prefetch(repo, Start::Parent(*root))
}

/// Fetches every tree below `root` that the cache lacks, for a command
/// that reads trees and no content (`ls -R`, `find`).
pub fn prefetch_trees(repo: &Repository, root: &Tree) -> Result<PrefetchStats> {
    prefetch(repo, Start::Below(root))
}

/// Where a prefetch starts, and what it is for.
enum Start<'a> {
    /// Below a tree the caller holds, for its trees only.
    Below(&'a Tree),
    /// At a backup's parent root, known by id: fetched with the first
    /// level's reads and kept, with the trees below it, for the walk; the
    /// index rows of its files' chunks brought in.
    Parent(BlobId),
}

fn prefetch(repo: &Repository, start: Start<'_>) -> Result<PrefetchStats> {
    let mut stats = PrefetchStats::default();
    let mut seen = HashSet::new();
    let mut chunks = HashSet::new();
    let mut held = Held::default();
    // A backup's parent: its trees kept for the walk, its chunks covered.
    let keep = matches!(start, Start::Parent(_));
    let mut collect = |tree: &Tree| {
        if keep && chunks.len() <= MAX_COVERED {
            chunks.extend(file_chunks(tree));
        }
    };
    let mut level = match start {
        Start::Below(root) => subtrees(root),
        Start::Parent(root) => vec![root],
    };
    while !level.is_empty() {
        stats.levels += 1;
        level.retain(|id| seen.insert(*id));
        let mut next = Vec::new();
        let mut wanted = Vec::new();
        for (id, tree) in cached_trees(repo, level)? {
            match tree {
                Some((tree, data)) => {
                    collect(&tree);
                    next.extend(subtrees(&tree));
                    if keep {
                        repo.keep_prefetched(id, data);
                    }
                }
                None => wanted.push(id),
            }
        }
        let reads = plan_reads(repo, wanted, &mut held, &mut stats)?;
        stats.reads += reads.iter().filter(|r| r.held.is_none()).count() as u64;
        let (fetched, whole) = fetch(repo, reads, &mut stats)?;
        held.packs.extend(whole);
        let rows: Vec<(Id, Vec<u8>)> = fetched
            .into_iter()
            .map(|(id, data, tree)| {
                collect(&tree);
                next.extend(subtrees(&tree));
                (id.0, data)
            })
            .collect();
        stats.fetched += rows.len() as u64;
        repo.cache().put_objects(CachedKind::Tree, &rows)?;
        if keep {
            for (id, data) in rows {
                repo.keep_prefetched(BlobId(id), data);
            }
        }
        level = next;
    }
    if keep {
        // The root's own level.
        stats.levels = stats.levels.saturating_sub(1);
    }
    if !chunks.is_empty() && chunks.len() <= MAX_COVERED && !repo.index_view().is_synced() {
        let report = repo.cover_blobs(&chunks)?;
        if !repo.index_view().is_synced() {
            stats.covered = chunks.len() as u64;
        }
        tracing::debug!("index rows of the parent's chunks: {report:?}");
    }
    Ok(stats)
}

/// The stored chunks of a tree's files kept inline (a long file's chunk
/// lists are tree-like blobs, located without covering).
fn file_chunks(tree: &Tree) -> impl Iterator<Item = BlobId> + '_ {
    tree.nodes.iter().flat_map(|n| match &n.payload {
        Payload::File(Content::Inline(chunks)) => chunks
            .iter()
            .filter(|c| !c.is_hole())
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

fn subtrees(tree: &Tree) -> Vec<BlobId> {
    tree.nodes
        .iter()
        .filter_map(|n| match &n.payload {
            Payload::Dir(id) => Some(*id),
            _ => None,
        })
        .collect()
}

/// Each of `ids` with its cached tree, if its bytes hash to its id and
/// decode (with those bytes), read in one cache transaction.
type Cached = Vec<(BlobId, Option<(Tree, Vec<u8>)>)>;

fn cached_trees(repo: &Repository, ids: Vec<BlobId>) -> Result<Cached> {
    let keys: Vec<Id> = ids.iter().map(|id| id.0).collect();
    let found = repo.cache().get_objects(CachedKind::Tree, &keys)?;
    Ok(ids
        .into_iter()
        .zip(found)
        .map(|(id, data)| {
            let tree = data
                .filter(|data| repo.blob_id(data) == id)
                .and_then(|data| Tree::decode(&data).ok().map(|t| (t, data)));
            (id, tree)
        })
        .collect())
}

/// Groups `wanted` by pack: a pack held already or to be read whole is one
/// read; in any other, neighbouring ranges are merged into reads.
fn plan_reads(
    repo: &Repository,
    wanted: Vec<BlobId>,
    held: &mut Held,
    stats: &mut PrefetchStats,
) -> Result<Vec<Read>> {
    let mut by_pack: BTreeMap<PackId, Vec<(BlobId, u64, u64)>> = BTreeMap::new();
    let found = match wanted.is_empty() {
        true => Vec::new(),
        false => repo.lookup_kind_all(BlobKind::Tree, &wanted)?,
    };
    for (id, loc) in wanted.into_iter().zip(found) {
        match loc {
            Some(loc) if loc.kind == BlobKind::Tree => by_pack.entry(loc.pack).or_default().push((
                id,
                loc.offset as u64,
                loc.stored_len as u64,
            )),
            // Not indexed, or not a tree: the walk reports it.
            _ => stats.skipped += 1,
        }
    }
    let mut reads = Vec::new();
    for (pack, mut trees) in by_pack {
        if let Some(data) = held.packs.get(&pack) {
            reads.push(Read {
                pack,
                range: 0..data.len() as u64,
                trees,
                held: Some(data.clone()),
                keep: false,
            });
            continue;
        }
        if let Some(len) = held.take_whole(repo, &pack)? {
            reads.push(Read {
                pack,
                range: 0..len,
                trees,
                held: None,
                keep: true,
            });
            continue;
        }
        trees.sort_unstable_by_key(|t| t.1);
        let mut current: Option<Read> = None;
        for t in trees {
            let (start, end) = (t.1, t.1 + t.2);
            match &mut current {
                Some(r)
                    if start <= r.range.end + MERGE_GAP
                        && end.max(r.range.end) - r.range.start <= MAX_READ =>
                {
                    r.range.end = r.range.end.max(end);
                    r.trees.push(t);
                }
                _ => {
                    reads.extend(current.take());
                    current = Some(Read {
                        pack,
                        range: start..end,
                        trees: vec![t],
                        held: None,
                        keep: false,
                    });
                }
            }
        }
        reads.extend(current);
    }
    Ok(reads)
}

/// Opened trees: (id, plaintext, decoded).
type Opened = Vec<(BlobId, Vec<u8>, Tree)>;

/// Issues `reads` [`IN_FLIGHT`] at a time; returns the trees that opened
/// and the packs read whole to keep.
fn fetch(
    repo: &Repository,
    reads: Vec<Read>,
    stats: &mut PrefetchStats,
) -> Result<(Opened, Vec<(PackId, Bytes)>)> {
    let wanted: u64 = reads.iter().map(|r| r.trees.len() as u64).sum();
    let queue = std::sync::Mutex::new(reads.into_iter());
    let out = std::sync::Mutex::new(Vec::new());
    let whole = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| -> Result<()> {
        for n in 0..IN_FLIGHT {
            let (queue, out, whole) = (&queue, &out, &whole);
            std::thread::Builder::new()
                .name(format!("prefetch-{n}"))
                .spawn_scoped(s, move || loop {
                    let Some(read) = crate::sync::lock(queue).next() else {
                        break;
                    };
                    let (opened, bytes) = fetch_one(repo, &read);
                    crate::sync::lock(out).extend(opened);
                    if let Some(bytes) = bytes.filter(|_| read.keep) {
                        crate::sync::lock(whole).push((read.pack, bytes));
                    }
                })
                .map_err(crate::Error::spawn("a tree prefetcher"))?;
        }
        Ok(())
    })?;
    let out = crate::sync::into_inner(out);
    stats.skipped += wanted - out.len() as u64;
    Ok((out, crate::sync::into_inner(whole)))
}

/// One read (none for a held pack), the trees in it that open and decode,
/// and the bytes read.
fn fetch_one(repo: &Repository, read: &Read) -> (Opened, Option<Bytes>) {
    let bytes = match &read.held {
        Some(b) => b.clone(),
        None => match repo.read_pack_range(&read.pack, read.range.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!("prefetching trees from pack {}: {e}", read.pack.short());
                return (Vec::new(), None);
            }
        },
    };
    let object = read.pack.path();
    let opened = read
        .trees
        .iter()
        .filter_map(|(id, offset, len)| {
            let at = (offset - read.range.start) as usize;
            let stored = bytes.get(at..at + *len as usize)?;
            let data = repo.open_blob(BlobKind::Tree, id, stored, &object).ok()?;
            let tree = Tree::decode(&data).ok()?;
            Some((*id, data, tree))
        })
        .collect();
    (opened, Some(bytes))
}
