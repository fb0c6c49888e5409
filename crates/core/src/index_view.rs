//! The index view: where each blob is stored (the merged index in the
//! local cache, brought in line with `index/` on first use, not at open)
//! and the `gc/` plans whose packs writers treat as absent.
//!
//! Rules (docs/DESIGN.md, "Index view"):
//! - Nothing reads the index until something asks where a blob is or
//!   whether it exists: listing snapshots, reading cached trees and
//!   forgetting snapshots cost no index request.
//! - Ingestion streams: a fixed number of segments are loaded at once and
//!   inserted as they arrive, several per transaction, so memory follows
//!   the number in flight, never the size of the index.
//! - A segment is recorded as ingested in the transaction holding its last
//!   row: a cache left by a killed ingestion holds whole segments only, and
//!   the next sync lists `index/` and ingests the rest. A cache is never
//!   taken as complete without a listing of `index/` by this handle.
//! - A segment that vanishes between the listing and its read was
//!   superseded by maintenance, whose replacement may be newer than the
//!   listing: `index/` is listed again until a pass sees nothing vanish.

use crate::cache::{BlobLocation, Cache, SegmentRows};
use crate::damage::DamageSet;
use crate::error::Result;
use crate::format::index::IndexSegment;
use crate::format::kinds::IndexSegments;
use crate::format::{BlobId, IndexId};
use crate::objects::Objects;
use crate::plans::PlanSet;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

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

/// What one sync of the index did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Listings of `index/`.
    pub listings: u32,
    /// Segments ingested.
    pub ingested: u64,
    /// Segments dropped from the cache (no longer in `index/`).
    pub removed: u64,
    /// Segments listed that vanished before they were read.
    pub vanished: u64,
    /// Transactions that inserted segments.
    pub batches: u64,
    /// Blobs in the largest of them.
    pub largest_batch_blobs: u64,
}

/// The index (in the cache) and the `gc/` plans, as one handle sees them.
pub struct IndexView {
    cache: Cache,
    /// Set once a sync by this handle completed: until then the cache's
    /// index is not trusted for any lookup.
    synced: AtomicBool,
    /// Held while syncing: concurrent first lookups wait for one sync.
    syncing: Mutex<()>,
    tolerate_damage: bool,
    damaged_segments: Mutex<Vec<(IndexId, String)>>,
    plans: RwLock<PlanSet>,
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
            synced: AtomicBool::new(false),
            syncing: Mutex::new(()),
            tolerate_damage,
            damaged_segments: Mutex::new(Vec::new()),
            plans: RwLock::new(PlanSet::default()),
        }
    }

    /// The cache, whatever its index holds (trees, snapshots, or index
    /// queries by a caller that synced).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether a sync by this handle completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The cache, its index in line with `index/` (synced now if this
    /// handle never synced).
    pub fn synced_cache(&self, objects: &Objects<'_>) -> Result<&Cache> {
        if !self.is_synced() {
            let _one = crate::sync::lock(&self.syncing);
            if !self.is_synced() {
                self.sync_locked(objects, self.tolerate_damage)?;
            }
        }
        Ok(&self.cache)
    }

    /// Brings the cached index in line with `index/`: ingests new segments,
    /// drops vanished ones.
    pub fn sync(&self, objects: &Objects<'_>, tolerate_damage: bool) -> Result<SyncReport> {
        let _one = crate::sync::lock(&self.syncing);
        self.sync_locked(objects, tolerate_damage)
    }

    fn sync_locked(&self, objects: &Objects<'_>, tolerate_damage: bool) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut damaged = Vec::new();
        loop {
            report.listings += 1;
            let listed = objects.list::<IndexSegments>()?;
            let present: HashSet<IndexId> = listed.iter().map(|l| l.id).collect();
            let cached: HashSet<IndexId> = self.cache.segments()?.into_iter().collect();
            for gone in cached.difference(&present) {
                self.cache.remove_segment(gone)?;
                report.removed += 1;
            }
            let mut new: Vec<(IndexId, u64)> = listed
                .iter()
                .filter(|l| !cached.contains(&l.id))
                .map(|l| (l.id, l.size))
                .collect();
            new.sort_unstable();
            let vanished = self.ingest(objects, new, tolerate_damage, &mut report, &mut damaged)?;
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
        *crate::sync::lock(&self.damaged_segments) = damaged;
        self.synced.store(true, Ordering::Release);
        Ok(report)
    }

    /// Loads the segments `new` (id and stored size; at most
    /// [`INGEST_IN_FLIGHT`] and about [`INGEST_IN_FLIGHT_BYTES`] at once)
    /// and inserts them in batches as they arrive; returns how many
    /// vanished.
    fn ingest(
        &self,
        objects: &Objects<'_>,
        new: Vec<(IndexId, u64)>,
        tolerate_damage: bool,
        report: &mut SyncReport,
        damaged: &mut Vec<(IndexId, String)>,
    ) -> Result<u64> {
        let mut batch: Vec<(IndexId, Vec<SegmentRows>)> = Vec::new();
        let mut batch_blobs = 0usize;
        let flush = |batch: &mut Vec<(IndexId, Vec<SegmentRows>)>,
                     blobs: &mut usize,
                     report: &mut SyncReport|
         -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let rows: Vec<(IndexId, &[SegmentRows])> =
                batch.iter().map(|(id, p)| (*id, p.as_slice())).collect();
            self.cache.add_segments(&rows)?;
            report.batches += 1;
            report.ingested += batch.len() as u64;
            report.largest_batch_blobs = report.largest_batch_blobs.max(*blobs as u64);
            batch.clear();
            *blobs = 0;
            Ok(())
        };
        let largest = new.iter().map(|(_, size)| *size).max().unwrap_or(0);
        let in_flight = (INGEST_IN_FLIGHT_BYTES / largest.max(1)).clamp(1, INGEST_IN_FLIGHT as u64);
        let ids = new.into_iter().map(|(id, _)| id).collect();
        let loaded = Objects::stream_each::<IndexSegments>(
            ids,
            in_flight as usize,
            |id| objects.load::<IndexSegments>(id),
            |id, seg| {
                let rows = segment_rows(seg);
                batch_blobs += rows.iter().map(|p| p.2.len()).sum::<usize>();
                batch.push((id, rows));
                if batch_blobs >= INGEST_BATCH_BLOBS || batch.len() >= INGEST_BATCH_SEGMENTS {
                    flush(&mut batch, &mut batch_blobs, report)?;
                }
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

    /// Index segments that failed to load in the last sync (only when
    /// damage is tolerated).
    pub fn damaged_segments(&self) -> Vec<(IndexId, String)> {
        crate::sync::lock(&self.damaged_segments).clone()
    }

    /// Adds a segment this process wrote.
    pub fn add_written(&self, id: &IndexId, seg: &IndexSegment) -> Result<()> {
        self.cache.add_segment(id, &segment_rows(seg.clone()))
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
        let cache = self.synced_cache(objects)?;
        let plans = crate::sync::read(&self.plans);
        if plans.is_empty() && damage.is_empty() {
            return cache.lookup(id);
        }
        let all = cache.locations(id)?;
        let rank = |l: &BlobLocation| match (damage.is_bad(id, &l.pack), plans.contains(&l.pack)) {
            (false, false) => 0,
            (false, true) => 1,
            (true, _) => 2,
        };
        Ok(all.iter().min_by_key(|l| rank(l)).copied())
    }

    /// Whether the index holds blob `id` in a pack no `gc/` plan lists and
    /// no `damage/` record names for it.
    pub fn has_blob(&self, objects: &Objects<'_>, damage: &DamageSet, id: &BlobId) -> Result<bool> {
        let cache = self.synced_cache(objects)?;
        let plans = crate::sync::read(&self.plans);
        if plans.is_empty() && damage.is_empty() {
            return cache.contains(id);
        }
        Ok(cache
            .locations(id)?
            .iter()
            .any(|l| !plans.contains(&l.pack) && !damage.is_bad(id, &l.pack)))
    }

    /// Re-reads the `gc/` plans (lists `gc/`, loads only plans not seen
    /// before); returns whether the set of plans changed.
    pub fn refresh_plans(&self, objects: &Objects<'_>) -> Result<bool> {
        let current = crate::sync::read(&self.plans).clone();
        let fresh = crate::plans::load(objects, &current)?;
        let changed = fresh.plan_ids() != current.plan_ids();
        *crate::sync::write(&self.plans) = fresh;
        Ok(changed)
    }

    /// The plans seen by the last refresh.
    pub fn planned_packs(&self) -> PlanSet {
        crate::sync::read(&self.plans).clone()
    }
}

/// An index segment's packs as the cache ingests them.
pub(crate) fn segment_rows(seg: IndexSegment) -> Vec<SegmentRows> {
    seg.packs
        .into_iter()
        .map(|p| (p.id, p.len, p.blobs))
        .collect()
}
