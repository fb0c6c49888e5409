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
//!   pack, so a crash leaves at worst an unindexed (orphan) pack.

use crate::error::{Error, Result};
use crate::format::index::IndexSegment;
use crate::format::kinds::{GcPlans, Packs, Snapshots};
use crate::format::pack::BlobEntry;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Content, Payload};
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
    /// Distinct blobs they reference.
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

/// Every blob the given snapshots reference (trees, lists and data),
/// following each tree once, and how many trees and chunk lists could not
/// be read (what lies below them is unknown).
pub fn referenced_blobs<'a>(
    repo: &Repository,
    snapshots: impl IntoIterator<Item = &'a Snapshot>,
) -> Result<(HashSet<BlobId>, u64)> {
    let mut seen: HashSet<BlobId> = HashSet::new();
    let mut unreadable = 0u64;
    let mut stack: Vec<BlobId> = Vec::new();
    for s in snapshots {
        if seen.insert(s.tree) {
            stack.push(s.tree);
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
                    if seen.insert(*sub) {
                        stack.push(*sub);
                    }
                }
                Payload::File(content) => {
                    unreadable += add_content(repo, content, &mut seen)?;
                }
                Payload::Symlink(_) | Payload::None => {}
            }
        }
    }
    Ok((seen, unreadable))
}

fn add_content(repo: &Repository, content: &Content, seen: &mut HashSet<BlobId>) -> Result<u64> {
    match content {
        Content::Inline(chunks) => {
            seen.extend(chunks.iter().filter(|c| !c.is_hole()).map(|c| c.id));
        }
        Content::Lists(lists) => {
            for l in lists {
                if seen.insert(l.id) {
                    match repo.chunk_list(&Content::Lists(vec![*l])) {
                        Ok(chunks) => {
                            seen.extend(chunks.iter().filter(|c| !c.is_hole()).map(|c| c.id))
                        }
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

/// The snapshots present now and what they reference.
pub struct Roots {
    ids: Vec<SnapshotId>,
    /// Every referenced blob.
    pub blobs: HashSet<BlobId>,
    /// Trees and chunk lists that could not be read: while there are any,
    /// no pack is deleted for being unused, only damaged packs are dropped.
    pub unreadable: u64,
}

impl Roots {
    /// Lists the snapshots (complete and incomplete) and follows them.
    /// The index is synced after the listing: a writer stores a
    /// snapshot's segments before the snapshot, so every blob a listed
    /// snapshot references is then indexed.
    pub fn load(repo: &Repository) -> Result<Self> {
        let snaps = list_snapshots(repo)?;
        repo.sync_index(false)?;
        let (blobs, unreadable) = referenced_blobs(repo, snaps.iter().map(|(_, s)| s))?;
        let mut ids: Vec<SnapshotId> = snaps.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        Ok(Self {
            ids,
            blobs,
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
            blobs: HashSet::new(),
            unreadable: 0,
        }
    }

    /// Number of snapshots.
    pub fn snapshot_count(&self) -> u64 {
        self.ids.len() as u64
    }
}

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
    repo.sync_index(false)?;
    repo.refresh_plans()?;
    let planned = repo.planned_packs();
    let live = &roots.blobs;
    let mut report = MarkReport {
        snapshots: roots.snapshot_count(),
        referenced_blobs: live.len() as u64,
        unreadable_trees: roots.unreadable,
        ..Default::default()
    };
    let mut usage: HashMap<PackId, PackUse> = HashMap::new();
    repo.index()?.for_each_location(|pack, len, e| {
        let u = usage.entry(pack).or_default();
        u.len = len;
        u.stored += e.stored_len as u64;
        if live.contains(&e.id) {
            u.live += e.stored_len as u64;
        }
        Ok(())
    })?;
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
    // A live blob must stay readable from a kept, intact copy: find those
    // whose every such copy is in a pack being repacked (or already
    // planned), with the copies to rewrite, intact ones first.
    let mut covered: HashSet<BlobId> = HashSet::new();
    let mut candidates: HashMap<BlobId, Vec<(PackId, BlobEntry, bool)>> = HashMap::new();
    repo.index()?.for_each_location(|pack, _, e| {
        if !live.contains(&e.id) {
            return Ok(());
        }
        let bad = damage.is_bad(&e.id, &pack);
        if repack.contains(&pack) {
            candidates.entry(e.id).or_default().push((pack, e, bad));
        } else if !planned.contains(&pack) && !bad {
            covered.insert(e.id);
        }
        Ok(())
    })?;
    candidates.retain(|id, _| !covered.contains(id));
    drop(covered);
    report.repacked_packs = repack.len() as u64 - report.damaged_packs;
    for p in &repack {
        report.planned_bytes += usage.get(p).map_or(0, |u| u.len);
    }
    let mut candidates: Vec<Vec<(PackId, BlobEntry, bool)>> = candidates
        .into_values()
        .map(|mut copies| {
            copies.sort_by_key(|(p, e, bad)| (*bad, *p, e.offset));
            copies
        })
        .collect();
    candidates.sort_by_key(|c| (c[0].0, c[0].1.offset));
    if opts.dry_run {
        report.repacked_blobs = candidates.len() as u64;
        report.repacked_bytes = candidates.iter().map(|c| c[0].1.stored_len as u64).sum();
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
    for copies in blobs {
        let mut done = false;
        for (pack, e, bad) in copies {
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
    writer.add_sealed(loc.kind, *id, &stored, loc.raw_len)
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
    repo.sync_index(false)?;
    repo.refresh_damage()?;
    let damage = repo.damage_set();
    // A referenced blob in a doomed pack is safe only if a pack outside
    // every plan also holds an intact copy; otherwise its doomed pack is
    // kept. A copy recorded as damaged protects nothing and needs no
    // protection. While some tree cannot be read, every doomed pack not
    // recorded as damaged is kept.
    let live = &roots.blobs;
    let mut safe: HashSet<BlobId> = HashSet::new();
    let mut at_risk: Vec<(PackId, BlobId)> = Vec::new();
    let mut sizes: HashMap<PackId, u64> = HashMap::new();
    repo.index()?.for_each_location(|pack, len, e| {
        let bad = damage.is_bad(&e.id, &pack);
        if doomed.contains(&pack) {
            sizes.insert(pack, len);
            if live.contains(&e.id) && !bad {
                at_risk.push((pack, e.id));
            }
        } else if !plans.contains(&pack) && live.contains(&e.id) && !bad {
            safe.insert(e.id);
        }
        Ok(())
    })?;
    let damaged_packs = damage.packs();
    let mut keep: HashSet<PackId> = at_risk
        .iter()
        .filter(|(_, b)| !safe.contains(b))
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
        segments.extend(repo.index()?.segments_listing(p)?);
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
    repo.sync_index(false)?;
    repo.refresh_plans()?;
    Ok(report)
}

/// Writes one segment holding the packs of `old` that `keep` accepts and
/// superseding `old`, then deletes `old`. Crash-safe in this order: until
/// the old segments are gone both describe the same (kept) packs.
pub fn supersede_segments(
    repo: &Repository,
    old: &[IndexId],
    keep: impl Fn(&PackId) -> bool,
) -> Result<Option<IndexId>> {
    if old.is_empty() {
        return Ok(None);
    }
    let mut merged = IndexSegment {
        supersedes: old.to_vec(),
        packs: Vec::new(),
    };
    let mut seen: HashSet<PackId> = HashSet::new();
    for id in old {
        let seg = match repo.load_segment(id) {
            Ok(s) => s,
            Err(e) if crate::objects::is_vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        for p in seg.packs {
            if keep(&p.id) && seen.insert(p.id) {
                merged.packs.push(p);
            }
        }
    }
    let new_id = if merged.packs.is_empty() {
        None
    } else {
        Some(repo.save_segment(&merged)?)
    };
    for id in old {
        if Some(*id) != new_id {
            repo.objects()
                .delete::<crate::format::kinds::IndexSegments>(id)?;
        }
    }
    Ok(new_id)
}
