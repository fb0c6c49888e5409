//! The index view: where each blob is stored (the merged index in the
//! local cache, brought in line with `index/` on first use, not at open)
//! and the `gc/` plans whose packs writers treat as absent.
//!
//! Rules (docs/DESIGN.md, "Index view"):
//! - Nothing reads the index until something asks where a blob is or
//!   whether it exists: listing snapshots, reading cached trees and
//!   forgetting snapshots cost no index request.
//! - The first question ingests only what locates trees and chunk lists
//!   (every segment's packs and its tree and list rows: a few per cent of
//!   the rows), the level [`Level::Trees`]. Browsing commands stop there.
//!   Data rows are ingested for the blobs a caller names ([`IndexView::cover`]:
//!   a backup the chunks of its parent's files, a restore the chunks it
//!   reads), extracted from every segment of the view; a Bloom filter of
//!   the data blobs read proves new chunks and trees absent; a blob it may
//!   hold is covered to answer for it, a few times a handle, after which
//!   the rest is ingested ([`Level::Full`]). A backup's writer asks
//!   [`IndexView::presence`] instead, which never reads more: it stores
//!   such blobs unconfirmed and confirms them in batches (one cover pass
//!   each, `crate::packer`).
//! - A pass below [`Level::Full`] keeps small segments (up to
//!   [`HELD_SEGMENT_BYTES`]) for the handle's next pass, so that the cover
//!   pass following the tree level reads nothing again.
//! - The data rows a cover pass extracts are this handle's alone (no
//!   other handle takes a blob as covered): they are kept in memory
//!   ([`CoveredRows`], up to [`MAX_HELD_ROWS`]; past it, in the cache),
//!   not inserted into the cache, and every lookup below [`Level::Full`]
//!   reads them beside the cache's rows. Rows of a segment that leaves
//!   the listing are dropped with it; at [`Level::Full`] the cache holds
//!   every row and the memory ones are dropped.
//! - An answer is given only where the rows in the cache are all the rows
//!   the index has for that blob: at [`Level::Full`], for tree and list
//!   locations, for covered blobs, for blobs the filter proves have no
//!   data row, or "present" from a copy outside every
//!   plan and damage record (a real row of a listed segment). Anything
//!   else first covers the blob or ingests the index in full.
//! - Ingestion streams: segments are held as their opened envelopes
//!   (stored size, within a byte budget) and decoded as streams into the
//!   cache, several per transaction, so memory follows the segments in
//!   flight, never their row counts or the size of the index.
//! - A segment is recorded as ingested in the transaction holding its last
//!   row: a cache left by a killed ingestion holds whole segments only, and
//!   the next sync lists `index/` and ingests the rest. A cache is never
//!   taken as complete without a listing of `index/` by this handle.
//! - A segment that vanishes between the listing and its read was
//!   superseded by maintenance, whose replacement may be newer than the
//!   listing: `index/` is listed again until a pass sees nothing vanish.

use crate::cache::{BlobLocation, Cache, Record, SegmentRows, SegmentSink};
use crate::crypto::OpenedEnvelope;
use crate::damage::DamageSet;
use crate::error::{Error, Result};
use crate::format::codec::DecodeError;
use crate::format::index::{visit_segment, IndexSegment, SegmentItem};
use crate::format::kinds::{IndexSegments, ObjectKind};
use crate::format::pack::BlobEntry;
use crate::format::{BlobId, BlobKind, IndexId, PackId};
use crate::objects::Objects;
use crate::plans::PlanSet;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Segments loaded at once while ingesting, at most.
pub const INGEST_IN_FLIGHT: usize = 4;
/// Stored bytes of the segments loading at once, at most (as far as whole
/// segments allow: one larger segment, written by maintenance compacting
/// the index, loads alone).
pub const INGEST_IN_FLIGHT_BYTES: u64 = 32 << 20;
/// Blobs inserted per transaction while ingesting, at least when segments
/// are smaller (a larger segment is one transaction of its own).
pub const INGEST_BATCH_BLOBS: usize = 64 << 10;
/// Segments per transaction at most.
pub const INGEST_BATCH_SEGMENTS: usize = 256;
/// Listings of `index/` one sync makes at most while segments keep
/// vanishing under it; past them it goes on with what it has (blobs it
/// misses count as absent: written again, never lost).
const MAX_LISTINGS: u32 = 4;
/// Blobs one handle covers at most ([`IndexView::cover`]); past it the
/// index is ingested in full instead (memory stays bounded: ~80 bytes a
/// covered blob).
pub const MAX_COVERED: usize = 1 << 20;

/// Data rows of covered blobs one handle keeps in memory at most
/// ([`CoveredRows`], ~60 bytes each); a cover pass past it inserts the
/// rest into the cache.
pub const MAX_HELD_ROWS: usize = 1 << 17;

/// Opened bytes of index segments a handle keeps between passes below
/// [`Level::Full`] ([`HeldSegments`]), at most: the budget a prefetch
/// keeps for whole metadata packs' first levels is of the same order.
pub const HELD_SEGMENT_BYTES: u64 = 8 << 20;

/// Blobs the data-blob filter may hold that one handle covers one at a
/// time (each a read of every segment) before it ingests the index in
/// full instead.
pub const MAX_CONFIRMATIONS: u32 = 4;
/// Bits of the data-blob filter per data row expected (about 0.1% false
/// positives with [`FILTER_PROBES`] probes in blocks of 512 bits).
const FILTER_BITS_PER_ROW: u64 = 16;
/// Blobs the data-blob filter takes at once (see [`DataFilter::insert_all`]).
const FILTER_BATCH: usize = 32;
/// Probes per blob in the data-blob filter, all in one block.
const FILTER_PROBES: u32 = 8;
/// The data-blob filter's size at most, in bits (128 MiB: ~10.7 bits a
/// row at 100M rows, ~1% false positives; each costs a cover pass).
const MAX_FILTER_BITS: u64 = 1 << 30;
/// Stored bytes of a segment per index row, about (a row is 45 bytes
/// before compression, and random ids do not compress; more rows than
/// this estimate only raise the false positives).
const ROWS_PER_BYTE_DIVISOR: u64 = 40;

/// A blocked Bloom filter of the data blobs of the segments a handle
/// ingested partially: "not in it" proves a blob has no data row the
/// cache lacks. Every probe of a blob falls in one 64-byte block (one
/// cache miss per insert or query, where probes spread over the whole
/// filter cost one each: 60% of an empty-cache `ls -R` at 10M rows). Blob
/// ids are keyed BLAKE3 hashes, uniform already: the block and the probes
/// are taken from their bytes, not hashed again.
struct DataFilter {
    blocks: Vec<[u64; 8]>,
}

impl DataFilter {
    /// A filter sized for about `rows` data rows, at most `cap` bits.
    fn for_rows(rows: u64, cap: u64) -> Self {
        let cap = cap.clamp(512, MAX_FILTER_BITS);
        let bits = rows
            .saturating_mul(FILTER_BITS_PER_ROW)
            .clamp((1 << 16).min(cap), cap);
        Self {
            blocks: vec![[0; 8]; (bits / 512) as usize],
        }
    }

    /// The block of `id` and its probes' bit positions in it.
    fn probes(&self, id: &BlobId) -> (usize, impl Iterator<Item = (usize, u64)>) {
        let b = &id.0 .0;
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let block = ((u128::from(word(0)) * self.blocks.len() as u128) >> 64) as usize;
        let bits = (u128::from(word(8)) << 64) | u128::from(word(16));
        let probes = (0..FILTER_PROBES).map(move |i| {
            let at = ((bits >> (9 * i)) & 511) as usize;
            (at / 64, 1u64 << (at % 64))
        });
        (block, probes)
    }

    #[cfg(test)]
    fn insert(&mut self, id: &BlobId) {
        self.insert_all(std::slice::from_ref(id));
    }

    /// Inserts `ids` (up to [`FILTER_BATCH`] at a time is best): their
    /// blocks are found first, then set in a tight loop, so the cache
    /// misses of several blocks overlap instead of one per row between
    /// the reads of a segment.
    fn insert_all(&mut self, ids: &[BlobId]) {
        for ids in ids.chunks(FILTER_BATCH) {
            let mut at = [(0usize, [0u64; 8]); FILTER_BATCH];
            for (slot, id) in at.iter_mut().zip(ids) {
                let (block, probes) = self.probes(id);
                slot.0 = block;
                for (word, bit) in probes {
                    slot.1[word] |= bit;
                }
            }
            for (block, bits) in &at[..ids.len()] {
                let block = &mut self.blocks[*block];
                for (word, bit) in block.iter_mut().zip(bits) {
                    *word |= bit;
                }
            }
        }
    }

    fn may_contain(&self, id: &BlobId) -> bool {
        let (block, mut probes) = self.probes(id);
        let block = &self.blocks[block];
        probes.all(|(word, bit)| block[word] & bit != 0)
    }
}

/// An index segment loaded for ingestion: its opened envelope (the body
/// still compressed, decoded as a stream when inserted), its row count
/// from a first, checking read, and its share of the loading budget.
struct LoadedSegment<'b> {
    id: IndexId,
    opened: Arc<OpenedEnvelope>,
    rows: u64,
    permit: Permit<'b>,
}

impl<'b> LoadedSegment<'b> {
    /// Reads, checks and opens segment `id` and reads its body through
    /// once: a segment that does not decode is damaged before any of its
    /// rows is inserted.
    fn load(objects: &Objects<'_>, id: &IndexId, permit: Permit<'b>) -> Result<Self> {
        let opened = objects.read_opened::<IndexSegments>(id, permit.bytes)?;
        let corrupt = |e: &dyn std::fmt::Display| Error::corrupt(IndexSegments::path(id), e);
        let body = opened.body().map_err(|e| corrupt(&e))?;
        let summary =
            visit_segment(body, |_| Ok::<(), DecodeError>(())).map_err(|e| corrupt(&e))?;
        Ok(Self {
            id: *id,
            opened: Arc::new(opened),
            rows: summary.blobs,
            permit,
        })
    }
}

/// The data rows of covered blobs that cover passes of one handle
/// extracted, kept in memory instead of the cache: a backup's cover of
/// its parent's chunks (25k rows for a 30k-file tree) cost tens of
/// milliseconds of inserts before the walk could start, for rows only
/// this handle asks for. Each row is a real row of a segment of the
/// view and names that segment, so that it leaves with the segment.
/// Segments and packs are named by number: a row is 28 bytes beside its
/// blob's id.
#[derive(Default)]
struct CoveredRows {
    /// Each blob's first row.
    first: HashMap<BlobId, Row>,
    /// Further rows of a blob (stored in several packs: rare).
    more: HashMap<BlobId, Vec<Row>>,
    segments: Vec<IndexId>,
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    count: usize,
}

/// One row of [`CoveredRows`]: segment and pack by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    seg: u32,
    pack: u32,
    kind: BlobKind,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    /// Where a bundled blob starts in its bundle, else [`WHOLE`].
    inner: u32,
}

/// [`Row::inner`] of a blob stored on its own.
const WHOLE: u32 = u32::MAX;

impl CoveredRows {
    /// Rows that may be added before [`MAX_HELD_ROWS`].
    fn room(&self) -> usize {
        MAX_HELD_ROWS.saturating_sub(self.count)
    }

    /// Adds `rows` of segment `seg`, each with the index in `packs` of its
    /// pack (a row already held is not held twice: a segment is read
    /// again by a later cover pass, or by a transaction retried on a
    /// rebuilt cache).
    fn add(&mut self, seg: IndexId, packs: &[PackId], rows: Vec<(BlobEntry, u32)>) {
        let seg = match self.segments.iter().position(|s| *s == seg) {
            Some(n) => n as u32,
            None => {
                self.segments.push(seg);
                (self.segments.len() - 1) as u32
            }
        };
        let numbers: Vec<u32> = packs
            .iter()
            .map(|p| {
                *self.pack_numbers.entry(*p).or_insert_with(|| {
                    self.packs.push(*p);
                    (self.packs.len() - 1) as u32
                })
            })
            .collect();
        for (b, pack) in rows {
            let row = Row {
                seg,
                pack: numbers[pack as usize],
                kind: b.kind,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                inner: b.inner.unwrap_or(WHOLE),
            };
            self.insert(b.id, row);
        }
    }

    fn insert(&mut self, id: BlobId, row: Row) {
        match self.first.entry(id) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(row);
                self.count += 1;
            }
            std::collections::hash_map::Entry::Occupied(e) if *e.get() == row => {}
            std::collections::hash_map::Entry::Occupied(_) => {
                let more = self.more.entry(id).or_default();
                if !more.contains(&row) {
                    more.push(row);
                    self.count += 1;
                }
            }
        }
    }

    /// The locations held for `id`.
    fn locations(&self, id: &BlobId) -> impl Iterator<Item = BlobLocation> + '_ {
        let rows = self.first.get(id).into_iter();
        rows.chain(self.more.get(id).into_iter().flatten())
            .map(|r| BlobLocation {
                pack: self.packs[r.pack as usize],
                kind: r.kind,
                offset: r.offset,
                stored_len: r.stored_len,
                raw_len: r.raw_len,
                inner: Some(r.inner).filter(|i| *i != WHOLE),
            })
    }

    /// Drops the rows of segments not in `listed`.
    fn keep_segments(&mut self, listed: &HashSet<IndexId>) {
        let keep: Vec<bool> = self.segments.iter().map(|s| listed.contains(s)).collect();
        if keep.iter().all(|k| *k) {
            return;
        }
        let more = std::mem::take(&mut self.more)
            .into_iter()
            .flat_map(|(id, rows)| rows.into_iter().map(move |r| (id, r)));
        let rows: Vec<(BlobId, Row)> = std::mem::take(&mut self.first)
            .into_iter()
            .chain(more)
            .filter(|(_, r)| keep[r.seg as usize])
            .collect();
        self.count = 0;
        for (id, row) in rows {
            self.insert(id, row);
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Segments a pass below [`Level::Full`] read, kept as their opened
/// envelopes for the next pass (a backup's cover of its parent's chunks
/// follows the tree-level pass at once): on an object store each segment
/// is then read once, not twice. Up to [`HELD_SEGMENT_BYTES`].
#[derive(Default)]
struct HeldSegments {
    segments: HashMap<IndexId, (Arc<OpenedEnvelope>, u64)>,
    bytes: u64,
}

impl HeldSegments {
    /// Keeps `seg` if it fits.
    fn keep(&mut self, seg: &LoadedSegment<'_>) {
        let len = seg.opened.len() as u64;
        if self.bytes + len <= HELD_SEGMENT_BYTES && !self.segments.contains_key(&seg.id) {
            self.bytes += len;
            self.segments.insert(seg.id, (seg.opened.clone(), seg.rows));
        }
    }

    fn get(&self, id: &IndexId) -> Option<(Arc<OpenedEnvelope>, u64)> {
        self.segments.get(id).cloned()
    }

    fn drop_segment(&mut self, id: &IndexId) {
        if let Some((opened, _)) = self.segments.remove(id) {
            self.bytes -= opened.len() as u64;
        }
    }

    fn clear(&mut self) {
        self.segments.clear();
        self.bytes = 0;
    }
}

/// Why a streamed read of a segment stopped.
enum Visit {
    Decode(DecodeError),
    Sink(Error),
}

impl From<DecodeError> for Visit {
    fn from(e: DecodeError) -> Self {
        Visit::Decode(e)
    }
}

/// Stored bytes of the segments in memory while ingesting: those loading,
/// loaded, and waiting in the batch to be inserted. A load waits until its
/// segment fits, unless everything held is the batch of a consumer
/// waiting for more (then it would wait forever), so one segment larger
/// than the budget is loaded alone.
struct Budget {
    limit: u64,
    /// Bytes held, bytes of those in the consumer's batch, and whether the
    /// consumer is waiting for the next segment.
    state: Mutex<(u64, u64, bool)>,
    changed: std::sync::Condvar,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            state: Mutex::new((0, 0, true)),
            changed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self, bytes: u64) -> Permit<'_> {
        let mut state = crate::sync::lock(&self.state);
        while !self.fits(*state, bytes) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.0 += bytes;
        Permit {
            budget: self,
            bytes,
            in_batch: false,
        }
    }

    /// Whether a load of `bytes` may start in `state`.
    fn fits(&self, (held, batch, waiting): (u64, u64, bool), bytes: u64) -> bool {
        held + bytes <= self.limit || (waiting && held == batch)
    }

    /// The consumer took a segment and works on it (loads wait for room).
    fn working(&self) {
        crate::sync::lock(&self.state).2 = false;
    }

    /// The consumer waits for the next segment.
    fn waiting(&self) {
        crate::sync::lock(&self.state).2 = true;
        self.changed.notify_all();
    }
}

/// A share of a [`Budget`], given back when dropped.
struct Permit<'b> {
    budget: &'b Budget,
    bytes: u64,
    in_batch: bool,
}

impl Permit<'_> {
    /// Its segment waits in the consumer's batch.
    fn hold(&mut self) {
        if !self.in_batch {
            self.in_batch = true;
            crate::sync::lock(&self.budget.state).1 += self.bytes;
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = crate::sync::lock(&self.budget.state);
        state.0 -= self.bytes;
        if self.in_batch {
            state.1 -= self.bytes;
        }
        drop(state);
        self.budget.changed.notify_all();
    }
}

/// How much of the index a handle has brought into the cache, as of its
/// last listing of `index/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Nothing synced by this handle: no index question is answered.
    None = 0,
    /// Every segment's packs, tree and list rows, and the data rows of the
    /// covered blobs.
    Trees = 1,
    /// Every row.
    Full = 2,
}

impl Level {
    fn from_u8(v: u8) -> Self {
        match v {
            2 => Level::Full,
            1 => Level::Trees,
            _ => Level::None,
        }
    }
}

/// What a sync brings in: the level, and the blobs whose data rows are
/// extracted (at [`Level::Trees`]).
struct Goal<'a> {
    level: Level,
    cover: &'a HashSet<BlobId>,
    /// Whether to list `index/` first even when this handle listed it
    /// before (an explicit sync); otherwise a handle that already has a
    /// view goes on from its last listing (listing again only if a
    /// segment of it vanished), as a full sync's later lookups do.
    relist: bool,
    /// A refresh at the view's own level and cover: segments already read
    /// in part hold what that cover needs and are not read again.
    refresh: bool,
}

/// What one sync of the index did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Listings of `index/`.
    pub listings: u32,
    /// Segments ingested (in full, or for trees and lists only).
    pub ingested: u64,
    /// Segments already partially in the cache that were read again (to
    /// cover more blobs, or to ingest them in full).
    pub reread: u64,
    /// Blob rows inserted into the cache.
    pub rows: u64,
    /// Data rows of covered blobs kept in memory for this handle
    /// ([`CoveredRows`]) instead.
    pub held_rows: u64,
    /// Segments dropped from the cache (no longer in `index/`).
    pub removed: u64,
    /// Segments listed that vanished before they were read.
    pub vanished: u64,
    /// Transactions that inserted segments.
    pub batches: u64,
    /// Rows read (kept or not) in the largest of them.
    pub largest_batch_blobs: u64,
}

/// The index (in the cache) and the `gc/` plans, as one handle sees them.
pub struct IndexView {
    cache: Cache,
    /// The [`Level`] the last completed sync by this handle reached: until
    /// one completed, the cache's index is not trusted for any lookup.
    level: AtomicU8,
    /// Blobs whose data rows the syncs of this handle extracted from every
    /// segment (meaningful below [`Level::Full`]).
    covered: RwLock<HashSet<BlobId>>,
    /// The covered blobs' data rows that are not in the cache.
    covered_rows: RwLock<CoveredRows>,
    /// Held while syncing: concurrent first lookups wait for one sync.
    syncing: Mutex<()>,
    tolerate_damage: bool,
    damaged_segments: Mutex<Vec<(IndexId, String)>>,
    plans: RwLock<PlanSet>,
    /// Bumped each time the plans are replaced ([`IndexView::plans_epoch`]).
    plans_epoch: std::sync::atomic::AtomicU64,
    /// The segments of this handle's last listing of `index/`, with their
    /// stored sizes.
    listing: Mutex<Vec<(IndexId, u64)>>,
    /// The data blobs of the segments this handle read below
    /// [`Level::Full`], and which segments those were.
    filter: Mutex<Option<(DataFilter, HashSet<IndexId>)>>,
    /// Whether the filter holds every partial segment of the view: only
    /// then does "not in the filter" prove a blob absent.
    filter_whole: std::sync::atomic::AtomicBool,
    /// Blobs the filter may hold that were covered to answer for them
    /// ([`IndexView::confirm`]).
    confirmations: std::sync::atomic::AtomicU32,
    /// The data-blob filter's size at most, in bits ([`IndexView::limit_filter`]).
    filter_cap: std::sync::atomic::AtomicU64,
    /// Segments read below [`Level::Full`], kept for the next pass.
    held: Mutex<HeldSegments>,
    /// Whether passes keep segments ([`IndexView::hold_segments`]).
    hold: std::sync::atomic::AtomicBool,
    /// When the plans were last read ([`IndexView::refresh_plans`]).
    plans_read: Mutex<Option<std::time::Instant>>,
    /// Whether a backup took its first look at the plans from this
    /// handle's read ([`IndexView::refresh_plans_unless_opened_within`]).
    first_look_taken: std::sync::atomic::AtomicBool,
}

/// What the index view knows of a blob without reading more of the index
/// ([`IndexView::presence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// A copy outside every `gc/` plan and `damage/` record (a real row of
    /// a listed segment).
    Present,
    /// Every row the index has for the blob is in the cache, and none is
    /// such a copy (covered, proven absent by the filter, or the index is
    /// in full).
    Absent,
    /// The filter may hold it and it is not covered: only another read of
    /// the segments (a cover pass) or a full ingestion can tell.
    Unknown,
}

impl std::fmt::Debug for IndexView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexView({:?})", self.cache)
    }
}

impl IndexView {
    /// A view over `cache`, not synced yet. With `tolerate_damage`, damaged
    /// segments are skipped and reported instead of failing the sync.
    pub fn new(cache: Cache, tolerate_damage: bool) -> Self {
        Self {
            cache,
            level: AtomicU8::new(Level::None as u8),
            covered: RwLock::default(),
            covered_rows: RwLock::default(),
            plans_epoch: std::sync::atomic::AtomicU64::new(0),
            syncing: Mutex::new(()),
            tolerate_damage,
            damaged_segments: Mutex::new(Vec::new()),
            plans: RwLock::new(PlanSet::default()),
            listing: Mutex::default(),
            filter: Mutex::default(),
            filter_whole: std::sync::atomic::AtomicBool::new(false),
            confirmations: std::sync::atomic::AtomicU32::new(0),
            filter_cap: std::sync::atomic::AtomicU64::new(MAX_FILTER_BITS),
            held: Mutex::default(),
            hold: std::sync::atomic::AtomicBool::new(true),
            plans_read: Mutex::new(None),
            first_look_taken: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether passes below the full level keep the segments they read
    /// for the next pass (the default; tests turn it off to make a pass
    /// read the repository again).
    pub fn hold_segments(&self, hold: bool) {
        self.hold.store(hold, Ordering::Relaxed);
        if !hold {
            crate::sync::lock(&self.held).clear();
        }
    }

    /// Caps the data-blob filter at `bits` (at least 512, at most its own
    /// cap), from the next time it is built: tests and benchmarks make its
    /// false positives as common as an index far larger would.
    pub fn limit_filter(&self, bits: u64) {
        self.filter_cap.store(bits, Ordering::Relaxed);
    }

    /// Stored bytes of the segments of this handle's last listing of
    /// `index/` (what one cover pass reads at most).
    pub fn listed_bytes(&self) -> u64 {
        crate::sync::lock(&self.listing).iter().map(|l| l.1).sum()
    }

    /// Data rows of covered blobs this handle holds in memory, not in the
    /// cache ([`MAX_HELD_ROWS`] at most).
    pub fn held_rows(&self) -> usize {
        crate::sync::read(&self.covered_rows).count
    }

    /// The cache, whatever its index holds (trees, snapshots, or index
    /// queries by a caller that synced).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether a sync by this handle brought the whole index in.
    pub fn is_synced(&self) -> bool {
        self.level() == Level::Full
    }

    /// How much of the index this handle has brought into the cache.
    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    /// The cache, its index in line with `index/` in full (synced now if
    /// this handle never synced in full).
    pub fn synced_cache(&self, objects: &Objects<'_>) -> Result<&Cache> {
        self.reach(objects, Level::Full)
    }

    /// The cache with at least `level` of the index in line with `index/`.
    fn reach(&self, objects: &Objects<'_>, level: Level) -> Result<&Cache> {
        if self.level() < level {
            let _one = crate::sync::lock(&self.syncing);
            if self.level() < level {
                let cover = crate::sync::read(&self.covered).clone();
                let goal = Goal {
                    level,
                    cover: &cover,
                    relist: false,
                    refresh: false,
                };
                self.sync_locked(objects, self.tolerate_damage, goal)?;
            }
        }
        Ok(&self.cache)
    }

    /// Brings the data rows of the blobs `ids` into the cache, from every
    /// segment of the view (nothing to do once the index is in full), so
    /// that questions about them need no full ingestion. Past
    /// [`MAX_COVERED`] blobs the index is ingested in full instead.
    pub fn cover(&self, objects: &Objects<'_>, ids: &HashSet<BlobId>) -> Result<SyncReport> {
        let _one = crate::sync::lock(&self.syncing);
        if self.level() == Level::Full {
            return Ok(SyncReport::default());
        }
        let mut cover = crate::sync::read(&self.covered).clone();
        let before = cover.len();
        cover.extend(ids.iter().copied());
        if cover.len() == before && self.level() >= Level::Trees {
            return Ok(SyncReport::default());
        }
        let level = if cover.len() > MAX_COVERED {
            Level::Full
        } else {
            Level::Trees
        };
        let goal = Goal {
            level,
            cover: &cover,
            relist: false,
            refresh: false,
        };
        self.sync_locked(objects, self.tolerate_damage, goal)
    }

    /// Brings the cached index in line with `index/` in full: ingests new
    /// segments, completes partial ones, drops vanished ones.
    pub fn sync(&self, objects: &Objects<'_>, tolerate_damage: bool) -> Result<SyncReport> {
        let _one = crate::sync::lock(&self.syncing);
        let cover = HashSet::new();
        self.sync_locked(
            objects,
            tolerate_damage,
            Goal {
                level: Level::Full,
                cover: &cover,
                relist: true,
                refresh: false,
            },
        )
    }

    /// Brings this handle's view in line with `index/` at the level and
    /// cover it has reached (listing again, reading new segments, dropping
    /// vanished ones), without raising its level: a long-running writer's
    /// check that no pack it believes indexed was swept under it.
    pub fn refresh(&self, objects: &Objects<'_>) -> Result<SyncReport> {
        let _one = crate::sync::lock(&self.syncing);
        let level = self.level();
        if level == Level::None {
            // Nothing read yet: the first use lists `index/`.
            return Ok(SyncReport::default());
        }
        let cover = crate::sync::read(&self.covered).clone();
        self.sync_locked(
            objects,
            self.tolerate_damage,
            Goal {
                level,
                cover: &cover,
                relist: true,
                refresh: level < Level::Full,
            },
        )
    }

    fn sync_locked(
        &self,
        objects: &Objects<'_>,
        tolerate_damage: bool,
        goal: Goal<'_>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut damaged = Vec::new();
        let mut partial_left;
        let mut list = goal.relist || self.level() == Level::None;
        let mut done = HashSet::new();
        loop {
            let listed: Vec<(IndexId, u64)> = if list {
                report.listings += 1;
                let listed: Vec<(IndexId, u64)> = objects
                    .list::<IndexSegments>()?
                    .into_iter()
                    .map(|l| (l.id, l.size))
                    .collect();
                *crate::sync::lock(&self.listing) = listed.clone();
                listed
            } else {
                crate::sync::lock(&self.listing).clone()
            };
            list = true;
            let present: HashSet<IndexId> = listed.iter().map(|l| l.0).collect();
            crate::sync::write(&self.covered_rows).keep_segments(&present);
            let cached: HashMap<IndexId, bool> = self.cache.segment_levels()?.into_iter().collect();
            for gone in cached.keys().filter(|id| !present.contains(id)) {
                self.cache.remove_segment(gone)?;
                report.removed += 1;
            }
            {
                let mut held = crate::sync::lock(&self.held);
                let stale: Vec<IndexId> = held
                    .segments
                    .keys()
                    .filter(|id| !present.contains(id))
                    .copied()
                    .collect();
                for id in stale {
                    held.drop_segment(&id);
                }
            }
            // New segments, and partial ones this goal needs again.
            let mut todo: Vec<(IndexId, u64)> = listed
                .iter()
                .filter(|l| match cached.get(&l.0) {
                    None => true,
                    Some(true) => false,
                    Some(false) => {
                        !goal.refresh && (goal.level == Level::Full || !goal.cover.is_empty())
                    }
                })
                .copied()
                .collect();
            // Not twice in one sync (a pass after a segment vanished).
            todo.retain(|(id, _)| !done.contains(id));
            if goal.level < Level::Full {
                let mut filter = crate::sync::lock(&self.filter);
                if filter.is_none() {
                    let bytes: u64 = todo.iter().map(|t| t.1).sum();
                    *filter = Some((
                        DataFilter::for_rows(
                            bytes / ROWS_PER_BYTE_DIVISOR,
                            self.filter_cap.load(Ordering::Relaxed),
                        ),
                        HashSet::new(),
                    ));
                }
            }
            todo.sort_unstable();
            partial_left =
                goal.level < Level::Full && listed.iter().any(|l| cached.get(&l.0) != Some(&true));
            let vanished = self.ingest(
                objects,
                todo,
                &cached,
                &goal,
                tolerate_damage,
                &mut report,
                &mut damaged,
                &mut done,
            )?;
            report.vanished += vanished;
            if vanished == 0 {
                break;
            }
            if report.listings >= MAX_LISTINGS {
                tracing::warn!(
                    "index segments kept vanishing while this process read them (maintenance compacting the index); going on with the segments read: blobs they miss count as absent and are written again"
                );
                break;
            }
            tracing::debug!(
                "{vanished} index segment(s) vanished since the listing; listing index/ again"
            );
        }
        tracing::debug!(
            "index sync for {:?} level, {} blobs covered: {report:?}",
            goal.level,
            goal.cover.len()
        );
        *crate::sync::lock(&self.damaged_segments) = damaged;
        // A view whose every segment is in the cache in full is the whole
        // index, whatever was asked.
        let level = if partial_left {
            goal.level
        } else {
            Level::Full
        };
        if level == Level::Full {
            crate::sync::lock(&self.held).clear();
            crate::sync::write(&self.covered).clear();
            crate::sync::write(&self.covered_rows).clear();
            *crate::sync::lock(&self.filter) = None;
            self.filter_whole.store(false, Ordering::Release);
        } else {
            *crate::sync::write(&self.covered) = goal.cover.clone();
            let filter = crate::sync::lock(&self.filter);
            let whole = match &*filter {
                Some((_, filtered)) => self
                    .cache
                    .segment_levels()?
                    .iter()
                    .all(|(id, full)| *full || filtered.contains(id)),
                None => false,
            };
            self.filter_whole.store(whole, Ordering::Release);
        }
        self.level.store(level as u8, Ordering::Release);
        Ok(report)
    }

    /// Loads the segments `todo` (id and stored size; at most
    /// [`INGEST_IN_FLIGHT`] at once, and [`INGEST_IN_FLIGHT_BYTES`] of
    /// them in memory, counting those waiting to be inserted) and inserts
    /// what `goal` needs of them in batches as they arrive; returns how
    /// many vanished. A segment is held as its opened envelope and decoded
    /// as a stream, never whole. `cached` says which are already in the
    /// cache and whether in full; `done` gains the segments handled.
    #[allow(clippy::too_many_arguments)]
    fn ingest(
        &self,
        objects: &Objects<'_>,
        todo: Vec<(IndexId, u64)>,
        cached: &HashMap<IndexId, bool>,
        goal: &Goal<'_>,
        tolerate_damage: bool,
        report: &mut SyncReport,
        damaged: &mut Vec<(IndexId, String)>,
        done: &mut HashSet<IndexId>,
    ) -> Result<u64> {
        let budget = Budget::new(INGEST_IN_FLIGHT_BYTES);
        let mut batch: Vec<(IndexId, Record, LoadedSegment<'_>)> = Vec::new();
        let mut batch_blobs = 0u64;
        let flush = |batch: &mut Vec<(IndexId, Record, LoadedSegment<'_>)>,
                     blobs: &mut u64,
                     report: &mut SyncReport|
         -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let items: Vec<(IndexId, Record, (bool, &LoadedSegment<'_>))> = batch
                .iter()
                .map(|(id, record, seg)| (*id, *record, (cached.contains_key(id), seg)))
                .collect();
            let held = std::cell::Cell::new(0u64);
            let rows = self.cache.ingest_with(&items, |(known, seg), sink| {
                held.set(held.get() + self.fill(seg, *known, goal, sink)?);
                Ok(())
            })?;
            report.batches += 1;
            report.rows += rows;
            report.held_rows += held.get();
            report.largest_batch_blobs = report.largest_batch_blobs.max(*blobs);
            batch.clear();
            *blobs = 0;
            Ok(())
        };
        let largest = todo.iter().map(|(_, size)| *size).max().unwrap_or(0);
        let in_flight = (INGEST_IN_FLIGHT_BYTES / largest.max(1)).clamp(1, INGEST_IN_FLIGHT as u64);
        let sizes: HashMap<IndexId, u64> = todo.iter().copied().collect();
        let ids = todo.into_iter().map(|(id, _)| id).collect();
        let loaded = Objects::stream_each::<IndexSegments, LoadedSegment<'_>>(
            ids,
            in_flight as usize,
            |id| {
                let held = crate::sync::lock(&self.held).get(id);
                if let Some((opened, rows)) = held {
                    // In memory already (counted by the holding budget).
                    return Ok(LoadedSegment {
                        id: *id,
                        opened,
                        rows,
                        permit: budget.acquire(0),
                    });
                }
                let permit = budget.acquire(sizes.get(id).copied().unwrap_or(0));
                LoadedSegment::load(objects, id, permit)
            },
            |id, mut seg| {
                budget.working();
                let known = cached.contains_key(&id);
                done.insert(id);
                // Batches close by the rows read, kept or not: a killed
                // pass keeps its progress in whole segments either way.
                batch_blobs += seg.rows;
                let record = match (goal.level, known) {
                    (Level::Full, _) => Record::Full,
                    (_, true) => Record::Rows,
                    (_, false) => Record::Partial,
                };
                if known {
                    report.reread += 1;
                } else {
                    report.ingested += 1;
                }
                seg.permit.hold();
                if goal.level < Level::Full && self.hold.load(Ordering::Relaxed) {
                    crate::sync::lock(&self.held).keep(&seg);
                }
                batch.push((id, record, seg));
                if batch_blobs >= INGEST_BATCH_BLOBS as u64 || batch.len() >= INGEST_BATCH_SEGMENTS
                {
                    flush(&mut batch, &mut batch_blobs, report)?;
                }
                budget.waiting();
                Ok(())
            },
        )?;
        flush(&mut batch, &mut batch_blobs, report)?;
        for (id, e) in loaded.damaged {
            if !tolerate_damage {
                return Err(e);
            }
            tracing::warn!("{e}");
            damaged.push((id, e.to_string()));
        }
        Ok(loaded.vanished.len() as u64)
    }

    /// Feeds what `goal` needs of segment `seg` into `sink`, read as a
    /// stream: every row at [`Level::Full`]; below it the data blobs go
    /// into the filter, and the rows kept are the tree and list rows of a
    /// segment new to the cache (`known`: a partial one has them) and the
    /// data rows of covered blobs, which are held in memory
    /// ([`CoveredRows`]) while there is room. Returns the rows held.
    fn fill(
        &self,
        seg: &LoadedSegment<'_>,
        known: bool,
        goal: &Goal<'_>,
        sink: &mut SegmentSink<'_, '_>,
    ) -> Result<u64> {
        let corrupt = |e: &dyn std::fmt::Display| Error::corrupt(IndexSegments::path(&seg.id), e);
        let body = seg.opened.body().map_err(|e| corrupt(&e))?;
        // Covered rows to hold, each with its pack's index in `packs`.
        let mut held: Vec<(BlobEntry, u32)> = Vec::new();
        let mut packs: Vec<PackId> = Vec::new();
        let visited = if goal.level == Level::Full {
            if !sink.wants_rows() {
                return Ok(0);
            }
            visit_segment(body, |item| match item {
                SegmentItem::Pack { id, len, .. } => sink.pack(&id, len).map_err(Visit::Sink),
                SegmentItem::Blob(b) => sink.blob(&b).map_err(Visit::Sink),
            })
        } else {
            let mut filter = crate::sync::lock(&self.filter);
            // A segment's blobs go into the filter once (a cover pass
            // reads segments the first pass filtered).
            let filtered_before = filter.as_ref().is_some_and(|(_, f)| f.contains(&seg.id));
            let mut pending = Vec::with_capacity(FILTER_BATCH);
            // Passes run one at a time (under `syncing`): the room seen
            // here is this pass's.
            let room = match goal.cover.is_empty() {
                true => 0,
                false => crate::sync::read(&self.covered_rows).room(),
            };
            let visited = visit_segment(body, |item| match item {
                SegmentItem::Pack { id, len, .. } => {
                    packs.push(id);
                    sink.pack(&id, len).map_err(Visit::Sink)
                }
                SegmentItem::Blob(b) => {
                    let keep = if b.kind == BlobKind::Data {
                        if let Some((filter, _)) = filter.as_mut().filter(|_| !filtered_before) {
                            pending.push(b.id);
                            if pending.len() == FILTER_BATCH {
                                filter.insert_all(&pending);
                                pending.clear();
                            }
                        }
                        let covered = goal.cover.contains(&b.id);
                        match packs.len().checked_sub(1) {
                            Some(pack) if covered && held.len() < room => {
                                held.push((b, pack as u32));
                                false
                            }
                            _ => covered,
                        }
                    } else {
                        !known
                    };
                    if keep {
                        sink.blob(&b).map_err(Visit::Sink)?;
                    }
                    Ok(())
                }
            });
            if visited.is_ok() {
                if let Some((filter, filtered)) = &mut *filter {
                    filter.insert_all(&pending);
                    filtered.insert(seg.id);
                }
            }
            visited
        };
        match visited {
            Ok(_) => {
                let rows = held.len() as u64;
                if rows > 0 {
                    crate::sync::write(&self.covered_rows).add(seg.id, &packs, held);
                }
                Ok(rows)
            }
            Err(Visit::Sink(e)) => Err(e),
            Err(Visit::Decode(e)) => Err(corrupt(&e)),
        }
    }

    /// Index segments that failed to load in the last sync (only when
    /// damage is tolerated).
    pub fn damaged_segments(&self) -> Vec<(IndexId, String)> {
        crate::sync::lock(&self.damaged_segments).clone()
    }

    /// Adds a segment this process wrote.
    pub fn add_written(&self, id: &IndexId, seg: &IndexSegment) -> Result<()> {
        self.cache.add_segment(id, &segment_rows(seg.clone()))?;
        // Part of this handle's view from now on (a sync going on from the
        // last listing must not drop it as vanished).
        let mut listing = crate::sync::lock(&self.listing);
        if !listing.iter().any(|l| l.0 == *id) {
            listing.push((*id, 0));
        }
        Ok(())
    }

    /// Where a blob is stored, if indexed. Preferred, in order: a copy
    /// outside every `gc/` plan and every `damage/` record, a planned copy
    /// not recorded as damaged, then any copy.
    pub fn lookup(
        &self,
        objects: &Objects<'_>,
        damage: &DamageSet,
        id: &BlobId,
    ) -> Result<Option<BlobLocation>> {
        let cache = self.reach(objects, self.first_question())?;
        if self.level() < Level::Full
            && (self.is_covered(id) || self.surely_no_data_row(id) || self.confirm(objects, id)?)
        {
            return Ok(self.best(self.locations(cache, id)?, damage, id));
        }
        let cache = self.synced_cache(objects)?;
        let plans = crate::sync::read(&self.plans);
        if plans.is_empty() && damage.is_empty() {
            return cache.lookup(id);
        }
        drop(plans);
        Ok(self.best(cache.locations(id)?, damage, id))
    }

    /// [`IndexView::lookup`] of a blob stored as `kind`: a tree or a chunk
    /// list is located from the tree and list rows alone, without
    /// ingesting the index in full.
    pub fn lookup_kind(
        &self,
        objects: &Objects<'_>,
        damage: &DamageSet,
        kind: BlobKind,
        id: &BlobId,
    ) -> Result<Option<BlobLocation>> {
        if kind == BlobKind::Data {
            return self.lookup(objects, damage, id);
        }
        let cache = self.reach(objects, Level::Trees)?;
        if self.level() == Level::Full {
            return self.lookup(objects, damage, id);
        }
        let mut all = cache.locations(id)?;
        all.retain(|l| l.kind == kind);
        Ok(self.best(all, damage, id))
    }

    /// [`IndexView::lookup_kind`] of each of `ids`, in their order, from
    /// one cache transaction (a prefetch locates a level of trees at once).
    pub fn lookup_kind_all(
        &self,
        objects: &Objects<'_>,
        damage: &DamageSet,
        kind: BlobKind,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobLocation>>> {
        if kind == BlobKind::Data {
            return ids
                .iter()
                .map(|id| self.lookup(objects, damage, id))
                .collect();
        }
        let cache = self.reach(objects, Level::Trees)?;
        // In full, any copy answers, as `lookup` would; below, only tree
        // and list rows are complete.
        let full = self.level() == Level::Full;
        let found = cache.locations_of_all(ids)?;
        Ok(ids
            .iter()
            .zip(found)
            .map(|(id, mut all)| {
                if !full {
                    all.retain(|l| l.kind == kind);
                }
                self.best(all, damage, id)
            })
            .collect())
    }

    /// Brings the index to [`Level::Trees`] if this handle has not yet:
    /// the first thing any backup asks, started early so that its reads
    /// overlap others (a backup's listing of its snapshots).
    pub fn reach_trees(&self, objects: &Objects<'_>) -> Result<()> {
        self.reach(objects, Level::Trees).map(|_| ())
    }

    /// The preferred of `all` (see [`IndexView::lookup`]).
    fn best(
        &self,
        all: Vec<BlobLocation>,
        damage: &DamageSet,
        id: &BlobId,
    ) -> Option<BlobLocation> {
        let plans = crate::sync::read(&self.plans);
        let rank = |l: &BlobLocation| match (damage.is_bad(id, &l.pack), plans.contains(&l.pack)) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        };
        all.iter().min_by_key(|l| rank(l)).copied()
    }

    /// The level a question about a blob of any kind needs first: at
    /// least [`Level::Trees`], whose pass also fills the data-blob filter.
    /// A first backup on an empty cache then stores its new chunks (the
    /// filter proves them absent) without ingesting the index; a blob the
    /// filter may hold ingests the rest (one more pass, whose cost the
    /// inserts dominate).
    fn first_question(&self) -> Level {
        self.level().max(Level::Trees)
    }

    /// Whether blob `id` has no data row in any segment of the view that
    /// the cache holds partially (the filter holds them all and not it).
    fn surely_no_data_row(&self, id: &BlobId) -> bool {
        self.filter_whole.load(Ordering::Acquire)
            && crate::sync::lock(&self.filter)
                .as_ref()
                .is_some_and(|(f, _)| !f.may_contain(id))
    }

    /// Below [`Level::Full`], for a blob the data-blob filter may hold
    /// (a duplicate, or a false positive: about 0.05% at 16 bits a row,
    /// ~1% at the filter's cap): covers it, one more read of every
    /// segment, where ingesting the rest would insert every row (at 100M
    /// rows, minutes and gigabytes of cache). At most
    /// [`MAX_CONFIRMATIONS`] times a handle: a command meeting many
    /// duplicates (a first backup of data the repository holds) ingests
    /// the index in full instead. Returns whether the blob is covered now
    /// (false: the caller asks the whole index).
    fn confirm(&self, objects: &Objects<'_>, id: &BlobId) -> Result<bool> {
        if self.confirmations.fetch_add(1, Ordering::AcqRel) >= MAX_CONFIRMATIONS {
            return Ok(false);
        }
        self.cover(objects, &HashSet::from([*id]))?;
        Ok(self.level() < Level::Full && self.is_covered(id))
    }

    fn is_covered(&self, id: &BlobId) -> bool {
        crate::sync::read(&self.covered).contains(id)
    }

    /// Whether the index holds blob `id` in a pack no `gc/` plan lists and
    /// no `damage/` record names for it. Below [`Level::Full`]: "yes" from
    /// any such copy in the cache (a row of a segment listed by this
    /// handle), "no" only for a covered blob or one the data-blob filter
    /// proves absent; anything else covers the blob
    /// ([`IndexView::confirm`]) or ingests the index in full first.
    pub fn has_blob(&self, objects: &Objects<'_>, damage: &DamageSet, id: &BlobId) -> Result<bool> {
        let cache = self.reach(objects, self.first_question())?;
        let witness = || -> Result<bool> {
            let all = self.locations(cache, id)?;
            let plans = crate::sync::read(&self.plans);
            Ok(all.iter().any(|l| usable(&plans, damage, id, &l.pack)))
        };
        if self.level() < Level::Full {
            // Decided before the rows are read (see `presence`).
            let complete = self.is_covered(id) || self.surely_no_data_row(id);
            let found = witness()?;
            if found || complete {
                return Ok(found);
            }
            if self.confirm(objects, id)? {
                return witness();
            }
        }
        let cache = self.synced_cache(objects)?;
        let plans = crate::sync::read(&self.plans);
        if plans.is_empty() && damage.is_empty() {
            return cache.contains(id);
        }
        Ok(cache
            .locations(id)?
            .iter()
            .any(|l| usable(&plans, damage, id, &l.pack)))
    }

    /// What is known of blob `id` without reading the index beyond the
    /// tree level (reached first if this handle has not): never a cover
    /// pass or a full ingestion, so a writer can take
    /// [`Presence::Unknown`] as absent (storing the blob again is safe)
    /// and confirm many such blobs in one pass later. Copies in packs of
    /// `ignore` (a writer's own) do not count as present. Exact at
    /// [`Level::Full`] and for covered blobs; "present" only from a copy
    /// outside every plan and damage record, at any level.
    pub fn presence(
        &self,
        objects: &Objects<'_>,
        damage: &DamageSet,
        id: &BlobId,
        ignore: &HashSet<PackId>,
    ) -> Result<Presence> {
        let cache = self.reach(objects, self.first_question())?;
        let full = self.level() == Level::Full;
        // Whether the cache holds every row of the blob, decided before
        // its rows are read: a cover pass marks blobs covered only once
        // their rows are in.
        let complete = full || self.is_covered(id) || self.surely_no_data_row(id);
        let plans = crate::sync::read(&self.plans);
        if full && ignore.is_empty() && plans.is_empty() && damage.is_empty() {
            return Ok(match cache.contains(id)? {
                true => Presence::Present,
                false => Presence::Absent,
            });
        }
        let found = self
            .locations(cache, id)?
            .iter()
            .any(|l| usable(&plans, damage, id, &l.pack) && !ignore.contains(&l.pack));
        drop(plans);
        Ok(match (found, complete) {
            (true, _) => Presence::Present,
            (false, true) => Presence::Absent,
            (false, false) => Presence::Unknown,
        })
    }

    /// Re-reads the `gc/` plans (lists `gc/`, loads only plans not seen
    /// before); returns whether the set of plans changed.
    pub fn refresh_plans(&self, objects: &Objects<'_>) -> Result<bool> {
        let started = std::time::Instant::now();
        let listed = objects.list_ids::<crate::format::kinds::GcPlans>()?;
        self.refresh_plans_listed(objects, listed, started)
    }

    /// [`IndexView::refresh_plans`] from a listing of `gc/` (`listed`)
    /// started at `started` (the plans are as old as the listing).
    pub fn refresh_plans_listed(
        &self,
        objects: &Objects<'_>,
        listed: Vec<crate::format::Id>,
        started: std::time::Instant,
    ) -> Result<bool> {
        let current = crate::sync::read(&self.plans).clone();
        let fresh = crate::plans::load_listed(objects, &current, listed)?;
        *crate::sync::lock(&self.plans_read) = Some(started);
        let changed = fresh.plan_ids() != current.plan_ids();
        *crate::sync::write(&self.plans) = fresh;
        self.plans_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(changed)
    }

    /// Which of `ids` the index holds in a pack no `gc/` plan lists and no
    /// `damage/` record names for the blob: the "yes" answers of
    /// [`IndexView::has_blob`], from one cache transaction. A blob not
    /// returned may still be present (not covered yet): ask
    /// [`IndexView::has_blob`] for it.
    pub fn present_among(
        &self,
        objects: &Objects<'_>,
        damage: &DamageSet,
        ids: &[BlobId],
    ) -> Result<HashSet<BlobId>> {
        let cache = self.reach(objects, self.first_question())?;
        // Covered rows held in memory answer first; the cache is asked
        // only for the rest (none, for a backup's unchanged files).
        let mut present = HashSet::new();
        let mut rest = Vec::new();
        {
            // Locks in this order wherever both are held (`presence` too).
            let plans = crate::sync::read(&self.plans);
            let held = crate::sync::read(&self.covered_rows);
            for id in ids {
                if held
                    .locations(id)
                    .any(|l| usable(&plans, damage, id, &l.pack))
                {
                    present.insert(*id);
                } else {
                    rest.push(*id);
                }
            }
        }
        if rest.is_empty() {
            return Ok(present);
        }
        let packs = cache.packs_of_all(&rest)?;
        let plans = crate::sync::read(&self.plans);
        present.extend(
            rest.iter()
                .zip(packs)
                .filter(|(id, packs)| packs.iter().any(|p| usable(&plans, damage, id, p)))
                .map(|(id, _)| *id),
        );
        Ok(present)
    }

    /// Every location of `id` this handle knows: the cache's rows and the
    /// covered rows held in memory ([`CoveredRows`]).
    fn locations(&self, cache: &Cache, id: &BlobId) -> Result<Vec<BlobLocation>> {
        let mut all = cache.locations(id)?;
        all.extend(crate::sync::read(&self.covered_rows).locations(id));
        Ok(all)
    }

    /// Counts the times the plans were replaced: an answer from
    /// [`IndexView::present_among`] holds while this has not moved.
    pub fn plans_epoch(&self) -> u64 {
        self.plans_epoch.load(Ordering::Acquire)
    }

    /// [`IndexView::refresh_plans`], unless this is the handle's first
    /// call and it read the plans less than `age` ago: a backup starting
    /// right after the open that read them counts that read as its first
    /// look (one round trip less on an object store). A later backup on
    /// the same handle looks itself: the read the handle holds may be the
    /// last look of the backup before, and the safety window has to cover
    /// the time from one look to the next, not the time between backups.
    /// (Counting any read as the first look, a test with a 2 s window
    /// failed about one run in 12 with "interference": a second backup on
    /// a handle reused blobs of packs planned after the first backup's
    /// last look and swept before the second one's next look.)
    pub fn refresh_plans_unless_opened_within(
        &self,
        objects: &Objects<'_>,
        age: std::time::Duration,
    ) -> Result<()> {
        let read = *crate::sync::lock(&self.plans_read);
        let first = !self.first_look_taken.swap(true, Ordering::AcqRel);
        if first && read.is_some_and(|at| at.elapsed() < age) {
            return Ok(());
        }
        self.refresh_plans(objects).map(|_| ())
    }

    /// The plans seen by the last refresh.
    pub fn planned_packs(&self) -> PlanSet {
        crate::sync::read(&self.plans).clone()
    }
}

/// Ingests segment `id` in full into `cache` (one being rebuilt), decoded
/// as a stream: memory is its stored size, whatever its row count.
/// `size` is its stored size as listed (0: not known).
pub(crate) fn ingest_in_full(
    cache: &Cache,
    objects: &Objects<'_>,
    id: &IndexId,
    size: u64,
) -> Result<()> {
    let opened = objects.read_opened::<IndexSegments>(id, size)?;
    let corrupt = |e: &dyn std::fmt::Display| Error::corrupt(IndexSegments::path(id), e);
    cache.ingest_with(&[(*id, Record::Full, &opened)], |opened, sink| {
        let body = opened.body().map_err(|e| corrupt(&e))?;
        let visited = visit_segment(body, |item| match item {
            SegmentItem::Pack { id, len, .. } => sink.pack(&id, len).map_err(Visit::Sink),
            SegmentItem::Blob(b) => sink.blob(&b).map_err(Visit::Sink),
        });
        match visited {
            Ok(_) => Ok(()),
            Err(Visit::Sink(e)) => Err(e),
            Err(Visit::Decode(e)) => Err(corrupt(&e)),
        }
    })?;
    Ok(())
}

/// An index segment's packs as the cache ingests them.
pub(crate) fn segment_rows(seg: IndexSegment) -> Vec<SegmentRows> {
    seg.packs
        .into_iter()
        .map(|p| (p.id, p.len, p.blobs))
        .collect()
}

/// Whether a copy of blob `id` in `pack` makes it present: the pack is
/// outside every `gc/` plan and no `damage/` record names the blob in it.
fn usable(plans: &PlanSet, damage: &DamageSet, id: &BlobId, pack: &PackId) -> bool {
    !plans.contains(pack) && !damage.is_bad(id, pack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;

    #[test]
    fn the_loading_budget_holds_one_large_segment_at_a_time_and_never_deadlocks() {
        let budget = Budget::new(32);
        let state = |b: &Budget| *crate::sync::lock(&b.state);
        // Small segments load side by side up to the limit.
        let a = budget.acquire(10);
        let b = budget.acquire(10);
        assert!(budget.fits(state(&budget), 12));
        assert!(!budget.fits(state(&budget), 13));
        drop((a, b));
        // A segment larger than the limit loads when nothing is held...
        let mut large = budget.acquire(40);
        assert_eq!(state(&budget).0, 40);
        // ...and the next waits while the consumer works on it,
        budget.working();
        assert!(!budget.fits(state(&budget), 40));
        assert!(!budget.fits(state(&budget), 1));
        // and while it waits in the consumer's batch with the consumer
        // busy, but not once the consumer waits for more: everything held
        // is then its batch, which only a new segment can close.
        large.hold();
        assert!(!budget.fits(state(&budget), 40));
        budget.waiting();
        assert!(budget.fits(state(&budget), 40));
        drop(large);
        assert_eq!(state(&budget), (0, 0, true));
    }

    #[test]
    fn covered_rows_are_held_once_and_leave_with_their_segment() {
        let id = |i: u64| BlobId(Id::hash(format!("held {i}").as_bytes()));
        let seg = |i: u64| IndexId(Id::hash(format!("segment {i}").as_bytes()));
        let loc = |i: u64| BlobLocation {
            pack: PackId(Id::hash(format!("pack {i}").as_bytes())),
            kind: BlobKind::Data,
            offset: 0,
            stored_len: 10,
            raw_len: 10,
            inner: None,
        };
        let entry = |i: u64| BlobEntry {
            id: id(i),
            kind: BlobKind::Data,
            offset: 0,
            stored_len: 10,
            raw_len: 10,
            inner: None,
        };
        let mut rows = CoveredRows::default();
        let packs = |i: u64| [loc(0).pack, loc(i).pack];
        rows.add(seg(1), &packs(1), vec![(entry(1), 1), (entry(2), 1)]);
        // The same segment read again (a later cover pass), and the same
        // blob in a second segment's pack.
        rows.add(seg(1), &packs(1), vec![(entry(1), 1)]);
        rows.add(seg(2), &packs(2), vec![(entry(1), 1)]);
        assert_eq!(rows.count, 3);
        assert_eq!(rows.locations(&id(1)).count(), 2);
        assert_eq!(rows.room(), MAX_HELD_ROWS - 3);
        rows.keep_segments(&HashSet::from([seg(2)]));
        assert_eq!(rows.count, 1);
        assert_eq!(rows.locations(&id(1)).collect::<Vec<_>>(), vec![loc(2)]);
        assert_eq!(rows.locations(&id(2)).count(), 0);
    }

    #[test]
    fn the_data_filter_has_no_false_negatives_and_few_false_positives() {
        let id = |i: u64| BlobId(Id::hash(format!("filter {i}").as_bytes()));
        // Sized for the rows (16 bits each), then as full as the cap makes
        // it at 100M rows (10.7 bits each).
        for (n, sized_for, most) in [(100_000u64, 100_000u64, 200), (100_000, 67_000, 1500)] {
            let mut f = DataFilter::for_rows(sized_for, MAX_FILTER_BITS);
            for i in 0..n {
                f.insert(&id(i));
            }
            assert!((0..n).all(|i| f.may_contain(&id(i))));
            let false_positives = (n..2 * n).filter(|i| f.may_contain(&id(*i))).count();
            println!("{n} rows in a filter for {sized_for}: {false_positives} false positives");
            assert!(false_positives < most, "{false_positives} of {n}");
        }
    }
}
