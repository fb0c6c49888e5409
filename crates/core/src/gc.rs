//! Two-phase, lock-free garbage collection: `gc/` plan objects, the mark
//! phase (reachability, repack of sparse packs, orphan packs) and the sweep
//! phase (re-check, index rewrite, deletion). docs/MAINTENANCE.md argues why
//! no snapshot can end up referencing a deleted blob.
//!
//! Invariants:
//! - a pack is deleted only by a sweep, only when a plan listing it is at
//!   least one safety window old, and only when no snapshot present at the
//!   sweep references a blob that lives in it and in no unplanned pack;
//! - a sweep writes the index segment superseding the segments that list a
//!   doomed pack before deleting those segments, and deletes them before the
//!   pack, so a crash leaves at worst an unindexed (orphan) pack;
//! - the index is read as a stream of the segments in `index/`, never
//!   ingested into the cache: memory follows the packs and the blobs being
//!   decided, not the index;
//! - the set of referenced data blobs is a filter: it may hold blobs no
//!   snapshot references (which only keeps packs or rewrites blobs), never
//!   misses one; before a blob it holds decides anything that costs (a
//!   rewrite, or a pack kept), a second walk of the snapshots confirms it.

use crate::error::{Error, Result};
use crate::format::codec::DecodeError;
use crate::format::index::{visit_segment, IndexSegment, SegmentItem};
use crate::format::kinds::{GcPlans, IndexSegments, ObjectKind, Packs, Snapshots};
use crate::format::pack::BlobEntry;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ChunkRef, Content, Payload};
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId, SnapshotId};
use crate::packer::PackWriter;
use crate::repo::Repository;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub use crate::format::plan::{GcPlan, PLAN_AAD, PLAN_VERSION};

/// Default safety window: longer than any backup runs between checkpoints.
pub const DEFAULT_SAFETY_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// The shortest safety window the CLI accepts while backups may run: the
/// default checkpoint interval (5 min) plus a margin of 10 min for the
/// checkpoint itself and clock skew between machines (docs/MAINTENANCE.md,
/// condition A2). Shorter windows need the user to say no backup runs.
pub const MIN_SAFETY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Default repack threshold: packs whose live bytes are under this fraction
/// of their stored bytes are rewritten.
pub const DEFAULT_REPACK_THRESHOLD: f64 = 0.5;

pub use crate::plans::PlanSet;

/// Lists `gc/` and returns its plans (see [`crate::plans::load`]).
pub fn load_plan_set(repo: &Repository, known: &PlanSet) -> Result<PlanSet> {
    crate::plans::load(&repo.objects(), known)
}

/// Writes a plan; returns its id.
pub fn save_plan(repo: &Repository, plan: &GcPlan) -> Result<Id> {
    Ok(repo.objects().save::<GcPlans>(plan)?.0)
}

/// How garbage collection decides and what it may do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// How old a plan must be before its packs may be deleted, and how old
    /// an incomplete (checkpoint) snapshot must be before it counts as dead.
    pub safety_window: Duration,
    /// Packs whose live stored bytes fall under this fraction are repacked
    /// (0 disables repacking).
    pub repack_threshold: f64,
    /// The current time (tests move it forward).
    pub now: DateTime<Utc>,
    /// Compute and report, change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            safety_window: DEFAULT_SAFETY_WINDOW,
            repack_threshold: DEFAULT_REPACK_THRESHOLD,
            now: Utc::now(),
            dry_run: false,
        }
    }
}

impl GcOptions {
    fn window_secs(&self) -> i64 {
        self.safety_window.as_secs() as i64
    }
}

/// What a mark did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MarkReport {
    /// Snapshots whose references were followed.
    pub snapshots: u64,
    /// Distinct blobs they reference (data blobs counted through a filter:
    /// about 0.1% may be missed).
    pub referenced_blobs: u64,
    /// Indexed packs with no referenced blob, newly planned.
    pub unused_packs: u64,
    /// Packs repacked (their live blobs rewritten), newly planned.
    pub repacked_packs: u64,
    /// Live blobs rewritten by the repack.
    pub repacked_blobs: u64,
    /// Stored bytes the repack wrote.
    pub repacked_bytes: u64,
    /// Packs in `packs/` that no index segment lists, newly planned.
    pub orphan_packs: u64,
    /// Packs holding copies recorded as damaged (or missing), repacked
    /// without those copies and newly planned.
    pub damaged_packs: u64,
    /// Live blobs no intact copy of which could be found by the repack.
    pub lost_blobs: u64,
    /// Trees or chunk lists the snapshots reference that could not be
    /// read: while any remain, no pack is planned for being unused.
    pub unreadable_trees: u64,
    /// Bytes of every newly planned pack: reclaimed by a sweep after the window.
    pub planned_bytes: u64,
    /// The plan written, if any.
    pub plan: Option<Id>,
}

/// What a sweep did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Plans old enough to act on.
    pub plans_due: u64,
    /// Plans not yet a safety window old.
    pub plans_waiting: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Planned packs kept because a snapshot written since the mark uses them.
    pub packs_kept: u64,
    /// Index segments superseded (rewritten without the deleted packs).
    pub segments_rewritten: u64,
    /// Bytes reclaimed.
    pub bytes_reclaimed: u64,
}

/// Index segments the reachable-blob filter is sized by, per stored byte:
/// a row is 45 bytes before compression and random ids do not compress,
/// so this overestimates the rows a little (fewer false positives).
const FILTER_ROWS_PER_BYTE_DIVISOR: u64 = 40;
/// Bits of the data-blob filter per index row (about 0.1% false positives
/// with [`FILTER_PROBES`] probes in blocks of 512 bits).
const FILTER_BITS_PER_ROW: u64 = 16;
/// The data-blob filter's size at most, in bits (256 MiB: 21 bits a row at
/// 100M rows).
const MAX_FILTER_BITS: u64 = 1 << 31;
/// The data-blob filter's size at least, in bits.
const MIN_FILTER_BITS: u64 = 1 << 16;
/// Probes per blob in the data-blob filter, all in one 64-byte block.
const FILTER_PROBES: u32 = 8;
/// Listings of `index/` one scan makes at most while segments vanish
/// under it (superseded by another maintenance or repair).
const MAX_SCAN_LISTINGS: u32 = 4;
/// Blobs one segment written by [`supersede_segments`] holds, about: the
/// old segments are merged in groups of this size, so memory follows one
/// group, not the index.
pub const REWRITE_SEGMENT_BLOBS: usize = 1 << 20;

/// A blocked Bloom filter of blob ids: "not in it" proves a blob is not
/// referenced. All probes of a blob fall in one 64-byte block (one
/// cache miss a query). Blob ids are keyed BLAKE3 hashes, uniform already:
/// the block and the probes are taken from their bytes.
struct DataFilter {
    blocks: Vec<[u64; 8]>,
}

impl DataFilter {
    fn with_bits(bits: u64) -> Self {
        let bits = bits.clamp(MIN_FILTER_BITS, MAX_FILTER_BITS);
        Self {
            blocks: vec![[0; 8]; (bits / 512) as usize],
        }
    }

    /// A filter that holds every blob.
    fn saturated() -> Self {
        Self {
            blocks: vec![[u64::MAX; 8]],
        }
    }

    fn probes(&self, id: &BlobId) -> (usize, [u64; 8]) {
        let b = &id.0 .0;
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let block = ((u128::from(word(0)) * self.blocks.len() as u128) >> 64) as usize;
        let bits = (u128::from(word(8)) << 64) | u128::from(word(16));
        let mut mask = [0u64; 8];
        for i in 0..FILTER_PROBES {
            let at = ((bits >> (9 * i)) & 511) as usize;
            mask[at / 64] |= 1u64 << (at % 64);
        }
        (block, mask)
    }

    /// Inserts `id`; returns whether it was (as far as the filter can
    /// tell) new.
    fn insert(&mut self, id: &BlobId) -> bool {
        let (block, mask) = self.probes(id);
        let block = &mut self.blocks[block];
        let mut new = false;
        for (word, bits) in block.iter_mut().zip(mask) {
            new |= *word & bits != bits;
            *word |= bits;
        }
        new
    }

    fn may_contain(&self, id: &BlobId) -> bool {
        let (block, mask) = self.probes(id);
        let block = &self.blocks[block];
        block
            .iter()
            .zip(mask)
            .all(|(word, bits)| word & bits == bits)
    }
}

/// Follows the trees of `roots` once each: every tree and chunk list
/// reached goes into `meta` (exactly: a tree skipped by mistake would hide
/// what lies below it), every data chunk to `data`. Returns how many
/// trees and chunk lists could not be read (what lies below them is
/// unknown).
fn walk(
    repo: &Repository,
    roots: &[BlobId],
    meta: &mut HashSet<BlobId>,
    data: &mut dyn FnMut(&[ChunkRef]),
) -> Result<u64> {
    let mut unreadable = 0u64;
    let mut stack: Vec<BlobId> = Vec::new();
    for tree in roots {
        if meta.insert(*tree) {
            stack.push(*tree);
        }
    }
    while let Some(tree_id) = stack.pop() {
        let tree = match repo.load_tree(&tree_id) {
            Ok(t) => t,
            Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                tracing::warn!("{e}; what lies below tree {} is unknown", tree_id.short());
                unreadable += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        for node in &tree.nodes {
            match &node.payload {
                Payload::Dir(sub) => {
                    if meta.insert(*sub) {
                        stack.push(*sub);
                    }
                }
                Payload::File(content) => {
                    unreadable += walk_content(repo, content, meta, data)?;
                }
                Payload::Symlink(_) | Payload::None => {}
            }
        }
    }
    Ok(unreadable)
}

fn walk_content(
    repo: &Repository,
    content: &Content,
    meta: &mut HashSet<BlobId>,
    data: &mut dyn FnMut(&[ChunkRef]),
) -> Result<u64> {
    match content {
        Content::Inline(chunks) => data(chunks),
        Content::Lists(lists) => {
            for l in lists {
                if meta.insert(l.id) {
                    match repo.chunk_list(&Content::Lists(vec![*l])) {
                        Ok(chunks) => data(&chunks),
                        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                            tracing::warn!("{e}; the chunks it lists are unknown");
                            return Ok(1);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Every readable snapshot present, oldest first, by
/// [`Repository::list_snapshots`]'s policy: one deleted between the listing
/// and the read is skipped, one that is damaged is skipped with a warning
/// (its references cannot be known; `repair snapshots` removes it).
pub fn list_snapshots(repo: &Repository) -> Result<Vec<(SnapshotId, Snapshot)>> {
    repo.list_snapshots()
}

/// When an incomplete (checkpoint) snapshot was written.
pub fn written_at(s: &Snapshot) -> DateTime<Utc> {
    s.time + chrono::Duration::milliseconds(s.summary.duration_ms as i64)
}

/// Deletes incomplete snapshots written more than a safety window ago:
/// checkpoints of backups that died (a running backup replaces its
/// checkpoint far more often). Returns how many it deleted.
pub fn remove_stale_checkpoints(repo: &Repository, opts: &GcOptions) -> Result<u64> {
    let mut n = 0;
    for (id, s) in list_snapshots(repo)? {
        let age = (opts.now - written_at(&s)).num_seconds();
        if !s.complete && age >= opts.window_secs() {
            if !opts.dry_run {
                repo.delete_snapshot(&id)?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes what killed writers left in a local repository's staging folder
/// (packs a backup was writing, objects OpenDAL was writing; see
/// `Storage::sweep_abandoned`): files last modified more than a safety
/// window ago. A live backup appends to its staging files as data arrives
/// and closes them at every checkpoint, far more often than that. Returns
/// how many files it deleted (or would delete) and their bytes; nothing for
/// an object store, whose writes are atomic uploads.
pub fn remove_stale_staging(repo: &Repository, opts: &GcOptions) -> Result<(u64, u64)> {
    let cutoff = opts.now - chrono::Duration::seconds(opts.window_secs());
    let swept = repo
        .storage()
        .sweep_abandoned(cutoff.into(), opts.dry_run)
        .map_err(|source| Error::Storage {
            location: repo.location().to_string(),
            source,
        })?;
    Ok((swept.files, swept.bytes))
}

/// The snapshots present now and what they reference: their trees and
/// chunk lists exactly, their data blobs as a filter (see the module's
/// invariants).
pub struct Roots {
    ids: Vec<SnapshotId>,
    /// The snapshots' root trees, to walk again ([`Roots::confirm`]).
    trees: Vec<BlobId>,
    /// Every tree and chunk list referenced.
    meta: HashSet<BlobId>,
    /// Every blob referenced (data, trees and lists), and possibly a few more.
    data: DataFilter,
    /// Distinct data blobs referenced, about (filter insertions that were new).
    data_count: u64,
    /// Trees and chunk lists that could not be read: while there are any,
    /// no pack is deleted for being unused, only damaged packs are dropped.
    pub unreadable: u64,
}

impl Roots {
    /// Lists the snapshots (complete and incomplete) and follows them.
    /// The index is read after the listing: a writer stores a snapshot's
    /// segments before the snapshot, so every blob a listed snapshot
    /// references is then indexed.
    pub fn load(repo: &Repository) -> Result<Self> {
        Self::load_with(repo, false)
    }

    /// [`Roots::load`] with a data-blob filter that holds every blob: each
    /// data blob no snapshot references is a false positive. For tests of
    /// what false positives may and may not decide.
    pub fn load_saturated(repo: &Repository) -> Result<Self> {
        Self::load_with(repo, true)
    }

    fn load_with(repo: &Repository, saturated: bool) -> Result<Self> {
        let snaps = list_snapshots(repo)?;
        // Trees and lists are located through this handle's view: bring it
        // in line with `index/` as of now, after the listing.
        repo.refresh_index()?;
        let mut data = if saturated {
            DataFilter::saturated()
        } else {
            let stored: u64 = repo
                .objects()
                .list::<IndexSegments>()?
                .iter()
                .map(|l| l.size)
                .sum();
            DataFilter::with_bits(
                (stored / FILTER_ROWS_PER_BYTE_DIVISOR).saturating_mul(FILTER_BITS_PER_ROW),
            )
        };
        let mut data_count = 0u64;
        let mut trees: Vec<BlobId> = snaps.iter().map(|(_, s)| s.tree).collect();
        trees.sort();
        trees.dedup();
        let mut meta = HashSet::new();
        let unreadable = walk(repo, &trees, &mut meta, &mut |chunks| {
            for c in chunks.iter().filter(|c| !c.is_hole()) {
                data_count += u64::from(data.insert(&c.id));
            }
        })?;
        for id in &meta {
            data.insert(id);
        }
        let mut ids: Vec<SnapshotId> = snaps.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        Ok(Self {
            ids,
            trees,
            meta,
            data,
            data_count,
            unreadable,
        })
    }

    /// The same roots if the snapshot list has not changed, else fresh ones.
    pub fn reload(self, repo: &Repository) -> Result<Self> {
        let ids = repo.objects().list_ids::<Snapshots>()?;
        if ids == self.ids {
            Ok(self)
        } else {
            Self::load(repo)
        }
    }

    /// No snapshots (for a sweep that has nothing due).
    pub fn empty() -> Self {
        Self {
            ids: Vec::new(),
            trees: Vec::new(),
            meta: HashSet::new(),
            data: DataFilter::with_bits(0),
            data_count: 0,
            unreadable: 0,
        }
    }

    /// Number of snapshots.
    pub fn snapshot_count(&self) -> u64 {
        self.ids.len() as u64
    }

    /// Distinct blobs referenced (data blobs about: see
    /// [`MarkReport::referenced_blobs`]).
    pub fn referenced_count(&self) -> u64 {
        self.meta.len() as u64 + self.data_count
    }

    /// Whether a snapshot may reference blob `id`: always true when one
    /// does; for a data blob, sometimes true when none does.
    pub fn may_reference(&self, id: &BlobId) -> bool {
        // The filter holds the trees and lists too: one probe, no hashing.
        self.data.may_contain(id)
    }

    /// Every blob the snapshots reference, exactly (a second walk; memory
    /// grows with the blobs: for tests and small repositories).
    pub fn all_referenced(&self, repo: &Repository) -> Result<HashSet<BlobId>> {
        let mut all = HashSet::new();
        walk(repo, &self.trees, &mut all.clone(), &mut |chunks| {
            all.extend(chunks.iter().filter(|c| !c.is_hole()).map(|c| c.id));
        })?;
        all.extend(self.meta.iter().copied());
        Ok(all)
    }

    /// The blobs of `ids` a snapshot does reference, exactly: trees and
    /// lists from the set, data blobs by walking the snapshots again (the
    /// trees from the cache, the lists read again). If the walk now meets
    /// an unreadable tree or list it cannot tell, and returns every id.
    pub fn confirm(&self, repo: &Repository, ids: &HashSet<BlobId>) -> Result<HashSet<BlobId>> {
        let mut found: HashSet<BlobId> = ids
            .iter()
            .filter(|id| self.meta.contains(id))
            .copied()
            .collect();
        if found.len() == ids.len() {
            return Ok(found);
        }
        let mut meta = HashSet::new();
        let unreadable = walk(repo, &self.trees, &mut meta, &mut |chunks| {
            for c in chunks {
                if ids.contains(&c.id) {
                    found.insert(c.id);
                }
            }
        })?;
        if unreadable > 0 {
            return Ok(ids.clone());
        }
        Ok(found)
    }
}

/// One pack header met by [`scan_index`].
struct PackSeen<'a> {
    segment: &'a IndexId,
    pack: PackId,
    len: u64,
}

/// Why a streamed read of a segment stopped.
enum ScanStop {
    Decode(DecodeError),
    Caller(Error),
}

impl From<DecodeError> for ScanStop {
    fn from(e: DecodeError) -> Self {
        ScanStop::Decode(e)
    }
}

/// Reads every index segment in `index/` as a stream (one loading while
/// the previous one is decoded), never ingesting it into the cache:
/// `on_pack` sees every pack header of every segment, `on_blobs` the blobs
/// of every pack once, all together (a pack listed by two segments, as after a crash
/// between a rewrite and the deletion of what it superseded, is handed out
/// from the first). A segment that vanishes while the scan runs was
/// superseded: `index/` is listed again and what is new read, until a pass
/// sees nothing vanish. Returns the segments read.
fn scan_index(
    repo: &Repository,
    mut on_pack: impl FnMut(PackSeen<'_>),
    mut on_blobs: impl FnMut(PackId, u64, &[BlobEntry]) -> Result<()>,
) -> Result<Vec<IndexId>> {
    let mut done: HashSet<IndexId> = HashSet::new();
    let mut packs: HashSet<PackId> = HashSet::new();
    for _ in 0..MAX_SCAN_LISTINGS {
        let todo: Vec<(IndexId, u64)> = repo
            .objects()
            .list::<IndexSegments>()?
            .into_iter()
            .filter(|l| !done.contains(&l.id))
            .map(|l| (l.id, l.size))
            .collect();
        let mut vanished = false;
        let objects = repo.objects();
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let loader = todo.clone();
            let read_ahead = std::thread::Builder::new().name("cairn-gc-index".into());
            read_ahead
                .spawn_scoped(s, move || {
                    for (id, size) in loader {
                        let loaded = match objects.read_opened::<IndexSegments>(&id, size) {
                            Ok(opened) => Ok(Some(opened)),
                            Err(e) if crate::objects::is_vanished(&e) => Ok(None),
                            Err(e) => Err(e),
                        };
                        if tx.send((id, loaded)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(Error::spawn("the index reader of maintenance"))?;
            for (id, loaded) in rx {
                let Some(opened) = loaded? else {
                    vanished = true;
                    continue;
                };
                let corrupt =
                    |e: &dyn std::fmt::Display| Error::corrupt(IndexSegments::path(&id), e);
                let body = opened.body().map_err(|e| corrupt(&e))?;
                // The pack being read, its length and blob count, unless
                // an earlier segment listed it; its blobs so far.
                let mut current: Option<(PackId, u64, usize)> = None;
                let mut blobs: Vec<BlobEntry> = Vec::new();
                let read = visit_segment(body, |item| -> std::result::Result<(), ScanStop> {
                    match item {
                        SegmentItem::Pack {
                            id: pack,
                            len,
                            blobs: count,
                        } => {
                            let repeat = !packs.insert(pack);
                            on_pack(PackSeen {
                                segment: &id,
                                pack,
                                len,
                            });
                            current = (!repeat && count > 0).then_some((pack, len, count as usize));
                            blobs.clear();
                        }
                        SegmentItem::Blob(e) => {
                            if let Some((pack, len, count)) = current {
                                blobs.push(e);
                                if blobs.len() == count {
                                    on_blobs(pack, len, &blobs).map_err(ScanStop::Caller)?;
                                    blobs.clear();
                                }
                            }
                        }
                    }
                    Ok(())
                });
                match read {
                    Ok(_) => {}
                    Err(ScanStop::Decode(e)) => return Err(corrupt(&e)),
                    Err(ScanStop::Caller(e)) => return Err(e),
                }
                done.insert(id);
            }
            Ok(())
        })?;
        if !vanished {
            let mut read: Vec<IndexId> = done.into_iter().collect();
            read.sort();
            return Ok(read);
        }
    }
    Err(Error::Usage(format!(
        "{}: index segments kept vanishing while maintenance read them ({MAX_SCAN_LISTINGS} listings): \
         another maintenance, prune or repair is rewriting the index. Let it finish, then run this again",
        repo.location()
    )))
}

/// What the segments in `index/` describe, read as a stream: the stored
/// bytes of every pack they list and the blob entries of those packs (a
/// blob stored in two packs counts twice).
pub fn index_totals(repo: &Repository) -> Result<(u64, u64)> {
    let totals = index_pack_totals(repo)?;
    Ok((totals.bytes, totals.blobs))
}

/// The packs the segments in `index/` list, their stored bytes and their
/// blob entries (a blob in two packs counts twice), read as a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexTotals {
    pub packs: u64,
    pub bytes: u64,
    pub blobs: u64,
}

/// [`IndexTotals`] of the repository, without ingesting the index.
pub fn index_pack_totals(repo: &Repository) -> Result<IndexTotals> {
    let mut totals = IndexTotals::default();
    let mut packs = HashSet::new();
    scan_index(
        repo,
        |seen| {
            if packs.insert(seen.pack) {
                totals.bytes += seen.len;
            }
        },
        |_, _, entries| {
            totals.blobs += entries.len() as u64;
            Ok(())
        },
    )?;
    totals.packs = packs.len() as u64;
    Ok(totals)
}

/// Every pack the segments in `index/` list.
pub fn indexed_packs(repo: &Repository) -> Result<HashSet<PackId>> {
    let mut packs = HashSet::new();
    scan_index(
        repo,
        |seen| {
            packs.insert(seen.pack);
        },
        |_, _, _| Ok(()),
    )?;
    Ok(packs)
}

/// The copies of one blob to rewrite: pack, entry, and whether the copy
/// is recorded as damaged.
type Copies = Vec<(PackId, BlobEntry, bool)>;

#[derive(Default, Clone, Copy)]
struct PackUse {
    len: u64,
    stored: u64,
    live: u64,
}

/// Phase 1: plans the deletion of unused packs, repacks sparse ones and
/// plans them too, plans orphan packs, and drops damaged copies: a pack
/// holding a copy recorded in `damage/` (or indexed but missing) is
/// repacked, its intact live blobs salvaged into a new pack and its
/// damaged ones left behind. `roots` must be computed after stale
/// checkpoints were removed and before this call.
pub fn mark(repo: &Repository, roots: &Roots, opts: &GcOptions) -> Result<MarkReport> {
    repo.refresh_plans()?;
    let planned = repo.planned_packs();
    let mut report = MarkReport {
        snapshots: roots.snapshot_count(),
        referenced_blobs: roots.referenced_count(),
        unreadable_trees: roots.unreadable,
        ..Default::default()
    };
    let mut usage: HashMap<PackId, PackUse> = HashMap::new();
    scan_index(
        repo,
        |_| {},
        |pack, len, entries| {
            let u = usage.entry(pack).or_default();
            u.len = len;
            let (stored, live) =
                crate::format::pack::bundle_shares(entries, |e| roots.may_reference(&e.id));
            u.stored += stored;
            u.live += live;
            Ok(())
        },
    )?;
    // Indexed packs the storage no longer holds are damage like any other.
    let listed = repo.objects().list::<Packs>()?;
    let stored: HashSet<PackId> = listed.iter().map(|o| o.id).collect();
    for pack in usage.keys() {
        if !stored.contains(pack) && !planned.contains(pack) {
            repo.note_damage(crate::damage::whole_pack(
                *pack,
                crate::format::damage::DamageReason::PackMissing,
            ));
        }
    }
    if !opts.dry_run {
        repo.record_found_damage()?;
    }
    repo.refresh_damage()?;
    let damage = repo.damage_set();
    let damaged_packs = damage.packs();
    // With trees unread, "unused" cannot be known: only damaged packs go.
    let complete = roots.unreadable == 0;
    let mut doomed: HashSet<PackId> = HashSet::new();
    let mut repack: HashSet<PackId> = HashSet::new();
    for (pack, u) in &usage {
        if planned.contains(pack) {
            continue;
        }
        if damaged_packs.contains(pack) {
            repack.insert(*pack);
            report.damaged_packs += 1;
        } else if !complete {
            continue;
        } else if u.live == 0 {
            doomed.insert(*pack);
            report.unused_packs += 1;
            report.planned_bytes += u.len;
        } else if (u.live as f64) < opts.repack_threshold * u.stored as f64 {
            repack.insert(*pack);
        }
    }
    let (candidates, unused) = if repack.is_empty() {
        (Vec::new(), 0)
    } else {
        repack_candidates(repo, roots, &planned, &damage, &repack)?
    };
    report.unused_packs += unused;
    report.repacked_packs = repack.len() as u64 - report.damaged_packs - unused;
    for p in &repack {
        report.planned_bytes += usage.get(p).map_or(0, |u| u.len);
    }
    if opts.dry_run {
        report.repacked_blobs = candidates.len() as u64;
        report.repacked_bytes = candidates.iter().map(|c| c[0].1.stored_share()).sum();
    } else if !candidates.is_empty() {
        let (rewritten, bytes, lost) = rewrite_blobs(repo, &candidates)?;
        report.repacked_blobs = rewritten;
        report.repacked_bytes = bytes;
        report.lost_blobs = lost;
    }
    doomed.extend(repack);
    // Orphans: packs nobody indexed (interrupted uploads). A running
    // backup indexes its packs within one checkpoint interval, far less
    // than the window, so an orphan still unindexed at the sweep is dead.
    if complete {
        for obj in &listed {
            let pack = obj.id;
            if !usage.contains_key(&pack) && !planned.contains(&pack) && doomed.insert(pack) {
                report.orphan_packs += 1;
                report.planned_bytes += obj.size;
            }
        }
    }
    if !doomed.is_empty() && !opts.dry_run {
        let mut packs: Vec<PackId> = doomed.into_iter().collect();
        packs.sort();
        let plan = GcPlan {
            created: opts.now.timestamp(),
            packs,
        };
        report.plan = Some(save_plan(repo, &plan)?);
        repo.refresh_plans()?;
    }
    Ok(report)
}

/// The blobs `wanted` names (among those the roots may reference) that
/// the index holds an intact copy of in a pack `skipped` does not name:
/// one more pass over `index/`.
fn intact_copies_outside(
    repo: &Repository,
    roots: &Roots,
    damage: &crate::damage::DamageSet,
    wanted: impl Fn(&BlobId) -> bool,
    skipped: impl Fn(&PackId) -> bool,
) -> Result<HashSet<BlobId>> {
    let mut found = HashSet::new();
    scan_index(
        repo,
        |_| {},
        |pack, _, entries| {
            if skipped(&pack) {
                return Ok(());
            }
            for e in entries {
                if roots.may_reference(&e.id) && wanted(&e.id) && !damage.is_bad(&e.id, &pack) {
                    found.insert(e.id);
                }
            }
            Ok(())
        },
    )?;
    Ok(found)
}

/// The live blobs of the packs to `repack` that have no kept, intact copy
/// elsewhere, each with its copies to rewrite (intact ones first), in
/// pack order. Two more reads of the index and a second walk: the blobs
/// the filter holds in those packs are confirmed first, and a pack
/// (not damaged) none of whose blobs a snapshot references turns out to
/// be unused, not sparse (it is planned all the same, with nothing to
/// rewrite): returns how many such packs there are.
fn repack_candidates(
    repo: &Repository,
    roots: &Roots,
    planned: &PlanSet,
    damage: &crate::damage::DamageSet,
    repack: &HashSet<PackId>,
) -> Result<(Vec<Copies>, u64)> {
    let mut candidates: HashMap<BlobId, Copies> = HashMap::new();
    scan_index(
        repo,
        |_| {},
        |pack, _, entries| {
            if repack.contains(&pack) {
                for e in entries.iter().filter(|e| roots.may_reference(&e.id)) {
                    let bad = damage.is_bad(&e.id, &pack);
                    candidates.entry(e.id).or_default().push((pack, *e, bad));
                }
            }
            Ok(())
        },
    )?;
    let ids: HashSet<BlobId> = candidates.keys().copied().collect();
    let live = roots.confirm(repo, &ids)?;
    drop(ids);
    candidates.retain(|id, _| live.contains(id));
    drop(live);
    let damaged_packs = damage.packs();
    let with_live: HashSet<PackId> = candidates
        .values()
        .flat_map(|copies| copies.iter().map(|(p, _, _)| *p))
        .collect();
    let unused = repack
        .iter()
        .filter(|p| !damaged_packs.contains(p) && !with_live.contains(p))
        .count() as u64;
    // A live blob must stay readable from a kept, intact copy: drop those
    // that have one outside the packs being repacked (and every plan).
    if !candidates.is_empty() {
        let covered = intact_copies_outside(
            repo,
            roots,
            damage,
            |id| candidates.contains_key(id),
            |pack| repack.contains(pack) || planned.contains(pack),
        )?;
        candidates.retain(|id, _| !covered.contains(id));
    }
    let mut candidates: Vec<Copies> = candidates
        .into_values()
        .map(|mut copies| {
            copies.sort_by_key(|(p, e, bad)| (*bad, *p, e.offset));
            copies
        })
        .collect();
    candidates.sort_by_key(|c| (c[0].0, c[0].1.offset));
    Ok((candidates, unused))
}

/// Copies the sealed bytes of each blob's first readable copy into new
/// packs (sealed blobs do not depend on their pack, so no re-encryption is
/// needed) and indexes them. A copy recorded as damaged is verified first
/// and skipped if it does not open; a blob none of whose copies can be read
/// is lost. Returns the blobs rewritten, their stored bytes, and the blobs
/// lost.
fn rewrite_blobs(
    repo: &Repository,
    blobs: &[Vec<(PackId, BlobEntry, bool)>],
) -> Result<(u64, u64, u64)> {
    let writer = PackWriter::new(repo, 2)?;
    let (mut rewritten, mut bytes, mut lost) = (0, 0, 0);
    // The bundle last opened (copies come in pack and offset order, so a
    // bundle's live members follow each other): its pack and offset, and
    // its plaintext.
    let mut bundle: Option<((PackId, u32), Vec<u8>)> = None;
    for copies in blobs {
        let mut done = false;
        for (pack, e, bad) in copies {
            if let Some(inner) = e.inner {
                // A bundled blob is re-stored from its plaintext (into a
                // new bundle with the other live members): the bundle's
                // dead members are left behind.
                let key = (*pack, e.offset);
                if bundle.as_ref().map(|(k, _)| *k) != Some(key) {
                    bundle = None;
                    let stored = match repo.read_pack_range(pack, e.offset as u64..e.end()) {
                        Ok(b) => b,
                        Err(err) if *bad && err.kind() == crate::ErrorKind::Corrupt => continue,
                        Err(err) => return Err(err),
                    };
                    match repo
                        .sealer()
                        .with_open_bundle(&stored, &pack.path(), <[u8]>::to_vec)
                    {
                        Ok(plain) => bundle = Some((key, plain)),
                        // Another copy may be intact; this one is recorded.
                        Err(_) => {
                            repo.note_damage(crate::damage::one_copy(e.id, *pack));
                            continue;
                        }
                    }
                }
                let Some((_, plain)) = &bundle else { continue };
                match repo
                    .sealer()
                    .member(plain, &e.id, inner, e.raw_len, &pack.path())
                {
                    Ok(member) => writer.store(BlobKind::Data, e.id, member)?,
                    Err(_) => {
                        repo.note_damage(crate::damage::one_copy(e.id, *pack));
                        continue;
                    }
                }
                rewritten += 1;
                bytes += e.stored_share();
                done = true;
                break;
            }
            let range = e.offset as u64..e.end();
            let stored = match repo.read_pack_range(pack, range) {
                Ok(b) => b,
                Err(err) if *bad && err.kind() == crate::ErrorKind::Corrupt => continue,
                Err(err) => return Err(err),
            };
            if *bad
                && repo
                    .open_blob(e.kind, &e.id, &stored, &pack.path())
                    .is_err()
            {
                continue;
            }
            writer.add_sealed(e.kind, e.id, &stored, e.raw_len)?;
            rewritten += 1;
            bytes += e.stored_len as u64;
            done = true;
            break;
        }
        if !done {
            tracing::warn!(
                "{} blob {} has no intact copy left: it is lost",
                copies[0].1.kind,
                copies[0].1.id.short()
            );
            lost += 1;
        }
    }
    writer.finish()?;
    Ok((rewritten, bytes, lost))
}

/// Re-stores one blob whose only indexed copies sit in planned packs, so a
/// writer that reused it keeps a copy the sweep will not delete.
pub fn rewrite_blob(repo: &Repository, writer: &PackWriter, id: &BlobId) -> Result<()> {
    let (loc, stored) = repo.read_stored(BlobKind::Data, id)?;
    match loc.inner {
        None => writer.add_sealed(loc.kind, *id, &stored, loc.raw_len),
        // A bundle holds other blobs too: this one goes into a new bundle.
        Some(_) => {
            let plain = repo.open_copy(&loc, id, &stored, &loc.pack.path())?;
            writer.store(loc.kind, *id, &plain)
        }
    }
}

/// Phase 2: for every plan at least a safety window old, re-checks its
/// packs against the snapshots present now and deletes those still
/// unused: new index segment first, then the superseded segments, then
/// the packs, then the plan.
pub fn sweep(repo: &Repository, roots: &Roots, opts: &GcOptions) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let plans = load_plan_set(repo, &repo.planned_packs())?;
    let mut due_plans = Vec::new();
    let mut doomed: HashSet<PackId> = HashSet::new();
    for (id, plan) in plans.plans() {
        if opts.now.timestamp() - plan.created >= opts.window_secs() {
            due_plans.push(*id);
            doomed.extend(plan.packs.iter().copied());
        } else {
            report.plans_waiting += 1;
        }
    }
    report.plans_due = due_plans.len() as u64;
    if due_plans.is_empty() {
        return Ok(report);
    }
    repo.refresh_damage()?;
    let damage = repo.damage_set();
    // A referenced blob in a doomed pack is safe only if a pack outside
    // every plan also holds an intact copy; otherwise its doomed pack is
    // kept. A copy recorded as damaged protects nothing and needs no
    // protection. While some tree cannot be read, every doomed pack not
    // recorded as damaged is kept. The blobs the roots' filter holds are
    // confirmed before they keep a pack.
    let mut at_risk: Vec<(PackId, BlobId)> = Vec::new();
    let mut sizes: HashMap<PackId, u64> = HashMap::new();
    let mut listing: HashMap<PackId, Vec<IndexId>> = HashMap::new();
    scan_index(
        repo,
        |seen| {
            if doomed.contains(&seen.pack) {
                sizes.insert(seen.pack, seen.len);
                listing.entry(seen.pack).or_default().push(*seen.segment);
            }
        },
        |pack, _, entries| {
            if doomed.contains(&pack) {
                for e in entries {
                    if roots.may_reference(&e.id) && !damage.is_bad(&e.id, &pack) {
                        at_risk.push((pack, e.id));
                    }
                }
            }
            Ok(())
        },
    )?;
    let mut unsafe_ids: HashSet<BlobId> = at_risk.iter().map(|(_, b)| *b).collect();
    if !unsafe_ids.is_empty() {
        let safe = intact_copies_outside(
            repo,
            roots,
            &damage,
            |id| unsafe_ids.contains(id),
            |pack| plans.contains(pack),
        )?;
        unsafe_ids.retain(|id| !safe.contains(id));
    }
    let live = if unsafe_ids.is_empty() {
        unsafe_ids
    } else {
        roots.confirm(repo, &unsafe_ids)?
    };
    let damaged_packs = damage.packs();
    let mut keep: HashSet<PackId> = at_risk
        .iter()
        .filter(|(_, b)| live.contains(b))
        .map(|(p, _)| *p)
        .collect();
    if roots.unreadable > 0 {
        keep.extend(doomed.iter().filter(|p| !damaged_packs.contains(p)));
    }
    report.packs_kept = keep.len() as u64;
    let delete: Vec<PackId> = doomed.difference(&keep).copied().collect();
    // Unindexed (orphan) packs: their size comes from the listing.
    let mut unindexed: HashMap<PackId, u64> = HashMap::new();
    if delete.iter().any(|p| !sizes.contains_key(p)) {
        for obj in repo.objects().list::<Packs>()? {
            unindexed.insert(obj.id, obj.size);
        }
    }
    let mut present = Vec::new();
    for p in &delete {
        // Absent from both: an earlier sweep crashed after deleting it.
        if let Some(len) = sizes.get(p).or(unindexed.get(p)) {
            report.bytes_reclaimed += len;
            present.push(*p);
        }
    }
    report.packs_deleted = present.len() as u64;
    let delete_set: HashSet<PackId> = delete.iter().copied().collect();
    let mut segments: Vec<IndexId> = Vec::new();
    for p in &delete {
        segments.extend(listing.get(p).into_iter().flatten());
    }
    segments.sort();
    segments.dedup();
    report.segments_rewritten = segments.len() as u64;
    if opts.dry_run {
        return Ok(report);
    }
    supersede_segments(repo, &segments, |p| !delete_set.contains(p))?;
    for p in &present {
        repo.objects().delete::<Packs>(p)?;
    }
    for id in due_plans {
        repo.objects().delete::<GcPlans>(&id)?;
    }
    repo.refresh_index()?;
    repo.refresh_plans()?;
    Ok(report)
}

/// Writes segments holding the packs of `old` that `keep` accepts, each
/// superseding the old segments it merged, then deletes those. Crash-safe
/// in this order: until the old segments are gone both describe the same
/// (kept) packs. The old segments are taken in groups of about
/// [`REWRITE_SEGMENT_BLOBS`] kept blobs (one segment in memory at a time,
/// whatever the number of old ones). The new segments are not added to the
/// cache: the caller refreshes the view. Returns the segments written.
pub fn supersede_segments(
    repo: &Repository,
    old: &[IndexId],
    keep: impl Fn(&PackId) -> bool,
) -> Result<Vec<IndexId>> {
    supersede_segments_in_groups(repo, old, keep, REWRITE_SEGMENT_BLOBS)
}

/// [`supersede_segments`] with groups of about `group_blobs` kept blobs.
pub fn supersede_segments_in_groups(
    repo: &Repository,
    old: &[IndexId],
    keep: impl Fn(&PackId) -> bool,
    group_blobs: usize,
) -> Result<Vec<IndexId>> {
    let mut written = Vec::new();
    let mut group = IndexSegment {
        supersedes: Vec::new(),
        packs: Vec::new(),
    };
    let mut blobs = 0usize;
    let mut seen: HashSet<PackId> = HashSet::new();
    for (i, id) in old.iter().enumerate() {
        group.supersedes.push(*id);
        match repo.load_segment(id) {
            Ok(seg) => {
                for p in seg.packs {
                    if keep(&p.id) && seen.insert(p.id) {
                        blobs += p.blobs.len();
                        group.packs.push(p);
                    }
                }
            }
            Err(e) if crate::objects::is_vanished(&e) => {}
            Err(e) => return Err(e),
        }
        if blobs >= group_blobs || i + 1 == old.len() {
            let seg = std::mem::replace(
                &mut group,
                IndexSegment {
                    supersedes: Vec::new(),
                    packs: Vec::new(),
                },
            );
            blobs = 0;
            let new_id = if seg.packs.is_empty() {
                None
            } else {
                Some(repo.objects().save::<IndexSegments>(&seg)?.0)
            };
            for id in &seg.supersedes {
                if Some(*id) != new_id {
                    repo.objects().delete::<IndexSegments>(id)?;
                }
            }
            written.extend(new_id);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> BlobId {
        BlobId(Id::hash(format!("blob {n}").as_bytes()))
    }

    #[test]
    fn the_reference_filter_misses_nothing_and_has_few_false_positives() {
        let rows = 100_000u64;
        let mut f = DataFilter::with_bits(rows * FILTER_BITS_PER_ROW);
        let new = (0..rows).filter(|n| f.insert(&id(*n))).count() as u64;
        assert!(new > rows - rows / 500, "{new} of {rows} counted as new");
        assert!((0..rows).all(|n| f.may_contain(&id(n))), "a false negative");
        let false_positives = (rows..2 * rows).filter(|n| f.may_contain(&id(*n))).count();
        // About 0.1% at 16 bits a row; well under 0.5%.
        assert!(false_positives < 500, "{false_positives} false positives");
        assert!(!DataFilter::with_bits(0).may_contain(&id(1)));
        assert!(DataFilter::saturated().may_contain(&id(1)));
    }
}
