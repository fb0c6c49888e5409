//! Repository maintenance: `prune` (mark and sweep), `maintenance run
//! --quick` (index compaction, sweep of due plans) and `--full` (stale
//! checkpoints and staging files, sweep, mark with repack and orphans,
//! compaction). Runs
//! beside backups without locks; see docs/MAINTENANCE.md.

use crate::error::Result;
use crate::format::kinds::{DamageRecords, IndexSegments};
use crate::format::{IndexId, PackId};
use crate::gc::{self, GcOptions, MarkReport, Roots, SweepReport};
use crate::repo::Repository;
use std::collections::HashSet;

/// Segments holding fewer blobs than this are merged by compaction.
pub const SMALL_SEGMENT_BLOBS: usize = 50_000;

/// Which maintenance to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Index compaction and the sweep of due plans: cheap, no tree walk
    /// unless a plan is due.
    Quick,
    /// Stale checkpoints, sweep, mark (with repack and orphans), compaction.
    #[default]
    Full,
    /// Garbage collection only: stale checkpoints, mark, sweep.
    Prune,
}

/// Options of a maintenance run.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceOptions {
    /// What to run.
    pub mode: Mode,
    /// Safety window, repack threshold, clock and dry run.
    pub gc: GcOptions,
}

/// What a maintenance run did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceReport {
    /// Dead checkpoints removed.
    pub stale_checkpoints: u64,
    /// Files of killed writers removed from a local repository's staging
    /// folder, and their bytes.
    pub stale_staging: (u64, u64),
    /// The sweep, when one ran.
    pub sweep: Option<SweepReport>,
    /// The mark, when one ran.
    pub mark: Option<MarkReport>,
    /// Index segments merged by compaction.
    pub segments_compacted: u64,
    /// `damage/` records deleted because none of their packs is indexed
    /// any more (their damaged copies are gone).
    pub damage_records_removed: u64,
}

impl MaintenanceReport {
    /// Bytes deleted by this run.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.sweep.as_ref().map_or(0, |s| s.bytes_reclaimed)
    }
    /// Bytes planned by this run, reclaimed by a run after the window.
    pub fn bytes_planned(&self) -> u64 {
        self.mark.as_ref().map_or(0, |m| m.planned_bytes)
    }
}

/// Runs maintenance. Every step is safe to interrupt at any point: a
/// re-run finishes what a killed run started.
pub fn run(repo: &Repository, opts: &MaintenanceOptions) -> Result<MaintenanceReport> {
    let g = &opts.gc;
    let mut report = MaintenanceReport::default();
    match opts.mode {
        Mode::Quick => {
            report.sweep = Some(sweep_due(repo, g)?);
            report.segments_compacted = compact_index(repo, g.dry_run)?;
        }
        Mode::Full => {
            report.stale_checkpoints = gc::remove_stale_checkpoints(repo, g)?;
            report.stale_staging = gc::remove_stale_staging(repo, g)?;
            let roots = Roots::load(repo)?;
            report.sweep = Some(gc::sweep(repo, &roots, g)?);
            let roots = roots.reload(repo)?;
            report.mark = Some(gc::mark(repo, &roots, g)?);
            report.segments_compacted = compact_index(repo, g.dry_run)?;
        }
        Mode::Prune => {
            report.stale_checkpoints = gc::remove_stale_checkpoints(repo, g)?;
            report.stale_staging = gc::remove_stale_staging(repo, g)?;
            let roots = Roots::load(repo)?;
            report.mark = Some(gc::mark(repo, &roots, g)?);
            // With a zero window the plan just written is due at once.
            let roots = roots.reload(repo)?;
            report.sweep = Some(gc::sweep(repo, &roots, g)?);
        }
    }
    report.damage_records_removed = forget_damage_resolved(repo, g.dry_run)?;
    Ok(report)
}

/// Deletes the records none of whose packs the (synced) index still names:
/// their damaged copies are gone, so they can mislead nobody. Returns how
/// many it deleted (or would delete).
fn forget_damage_resolved(repo: &Repository, dry_run: bool) -> Result<u64> {
    let set = crate::damage::load_damage_set(&repo.objects(), &repo.damage_set())?;
    if set.record_count() == 0 {
        return Ok(0);
    }
    let indexed: HashSet<PackId> = gc::indexed_packs(repo)?;
    let mut n = 0;
    for (id, rec) in set.records() {
        if rec.entries.iter().any(|e| indexed.contains(&e.pack)) {
            continue;
        }
        if !dry_run {
            match repo.objects().delete::<DamageRecords>(id) {
                Ok(()) => {}
                Err(e) if crate::objects::is_vanished(&e) => {}
                Err(e) => return Err(e),
            }
        }
        n += 1;
    }
    if !dry_run && n > 0 {
        repo.refresh_damage()?;
    }
    Ok(n)
}

/// Sweeps due plans, walking the snapshots only when some plan is due.
fn sweep_due(repo: &Repository, g: &GcOptions) -> Result<SweepReport> {
    let plans = gc::load_plan_set(repo, &repo.planned_packs())?;
    let any_due = plans
        .plans()
        .any(|(_, p)| g.now.timestamp() - p.created >= g.safety_window.as_secs() as i64);
    if !any_due {
        return gc::sweep(repo, &Roots::empty(), g);
    }
    let roots = Roots::load(repo)?;
    gc::sweep(repo, &roots, g)
}

/// Stored size past which a segment is not read by compaction: one
/// holding fewer than [`SMALL_SEGMENT_BLOBS`] blobs, each in a pack of its
/// own, takes under half of it (45 bytes an entry, 44 a pack header,
/// random ids do not compress); a larger one is not small, or lists so
/// many superseded segments that merging it is not worth a read.
pub const SMALL_SEGMENT_MAX_STORED: u64 = SMALL_SEGMENT_BLOBS as u64 * 200;

/// Merges index segments holding fewer than [`SMALL_SEGMENT_BLOBS`] blobs
/// into one (when there are at least two). Segments listing a planned pack
/// are left for the sweep to rewrite, so a compaction never re-lists a pack
/// a concurrent sweep deletes. Only segments stored in under
/// [`SMALL_SEGMENT_MAX_STORED`] bytes are read. Returns how many segments
/// were merged.
pub fn compact_index(repo: &Repository, dry_run: bool) -> Result<u64> {
    repo.refresh_plans()?;
    let planned = repo.planned_packs();
    let mut small: Vec<IndexId> = Vec::new();
    let mut blobs = 0usize;
    let mut listed = repo.objects().list::<IndexSegments>()?;
    listed.sort_by_key(|l| l.id);
    for listed in listed {
        if listed.size > SMALL_SEGMENT_MAX_STORED {
            continue;
        }
        let seg = match repo.load_segment(&listed.id) {
            Ok(s) => s,
            Err(e) if crate::objects::is_vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        if seg.blob_count() >= SMALL_SEGMENT_BLOBS
            || seg.packs.iter().any(|p| planned.contains(&p.id))
        {
            continue;
        }
        if blobs + seg.blob_count() > SMALL_SEGMENT_BLOBS * 4 {
            break;
        }
        blobs += seg.blob_count();
        small.push(listed.id);
    }
    if small.len() < 2 {
        return Ok(0);
    }
    if !dry_run {
        gc::supersede_segments(repo, &small, |_| true)?;
        repo.refresh_index()?;
    }
    Ok(small.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;

    #[test]
    fn a_maintenance_report_serializes_with_ids_in_hex() {
        let report = MaintenanceReport {
            stale_staging: (2, 300),
            mark: Some(MarkReport {
                unused_packs: 3,
                plan: Some(Id([0xab; 32])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["stale_staging"], serde_json::json!([2, 300]));
        assert_eq!(json["mark"]["unused_packs"], 3);
        assert_eq!(json["mark"]["plan"], "ab".repeat(32));
        assert_eq!(json["sweep"], serde_json::Value::Null);
    }
}
