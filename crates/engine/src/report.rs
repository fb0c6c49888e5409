//! The renderings of cairn-core's maintenance report: the lines `cairn maintenance run`
//! prints and a maintenance Job joins into its summary, the JSON of `--json`, and the
//! one-line account of `cairn forget --prune`. One place, so the CLI and job mode say the
//! same thing about the same run.

use cairn_core::maintenance::MaintenanceReport;

/// Bytes as `1.2 MiB`.
pub fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string_as(true)
}

/// What a maintenance run did (`dry_run`: would do), one line per step that did something,
/// then the bytes reclaimed and, when the mark planned any, the bytes planned.
pub fn maintenance_lines(r: &MaintenanceReport, dry_run: bool) -> Vec<String> {
    let would = if dry_run { "would be " } else { "" };
    let mut lines = Vec::new();
    if r.stale_checkpoints > 0 {
        lines.push(format!(
            "checkpoints of dead backups {would}removed: {}",
            r.stale_checkpoints
        ));
    }
    if r.stale_staging.0 > 0 {
        lines.push(format!(
            "staging files of dead writers {would}removed: {} ({})",
            r.stale_staging.0,
            size(r.stale_staging.1)
        ));
    }
    if let Some(s) = &r.sweep {
        lines.push(format!(
            "sweep: {} plan(s) due, {} waiting; {} pack(s) {would}deleted, {} kept (used again since the mark)",
            s.plans_due, s.plans_waiting, s.packs_deleted, s.packs_kept
        ));
    }
    if let Some(m) = &r.mark {
        lines.push(format!(
            "mark: {} snapshot(s), {} blob(s) referenced; planned {} unused, {} repacked ({} blob(s), {}), {} orphan pack(s)",
            m.snapshots,
            m.referenced_blobs,
            m.unused_packs,
            m.repacked_packs,
            m.repacked_blobs,
            size(m.repacked_bytes),
            m.orphan_packs
        ));
        if m.damaged_packs > 0 {
            lines.push(format!(
                "damage: {} pack(s) holding damaged copies {would}repacked without them and planned; {} live blob(s) had no intact copy left",
                m.damaged_packs, m.lost_blobs
            ));
        }
        if m.unreadable_trees > 0 {
            lines.push(format!(
                "warning: {} tree(s) or chunk list(s) the snapshots reference cannot be read, so no pack was planned for being unused; run `cairn check`, then `cairn repair snapshots`",
                m.unreadable_trees
            ));
        }
    }
    if r.damage_records_removed > 0 {
        lines.push(format!(
            "damage records {would}removed (their damaged copies are gone): {}",
            r.damage_records_removed
        ));
    }
    if r.segments_compacted > 0 {
        lines.push(format!(
            "index: {} segment(s) {would}merged",
            r.segments_compacted
        ));
    }
    lines.push(format!(
        "reclaimed: {}{}",
        size(r.bytes_reclaimed()),
        if dry_run { " (dry run)" } else { "" }
    ));
    if r.bytes_planned() > 0 {
        lines.push(format!(
            "planned for deletion after the safety window: {}",
            size(r.bytes_planned())
        ));
    }
    lines
}

/// The JSON of `cairn maintenance run --json`: flat counters, then `sweep` and `mark`
/// objects for the steps that ran.
pub fn maintenance_json(r: &MaintenanceReport, dry_run: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "dry_run": dry_run,
        "stale_checkpoints": r.stale_checkpoints,
        "stale_staging_files": r.stale_staging.0,
        "stale_staging_bytes": r.stale_staging.1,
        "segments_compacted": r.segments_compacted,
        "bytes_reclaimed": r.bytes_reclaimed(),
        "bytes_planned": r.bytes_planned(),
        "damage_records_removed": r.damage_records_removed,
    });
    if let Some(s) = &r.sweep {
        v["sweep"] = serde_json::json!({
            "plans_due": s.plans_due,
            "plans_waiting": s.plans_waiting,
            "packs_deleted": s.packs_deleted,
            "packs_kept": s.packs_kept,
            "segments_rewritten": s.segments_rewritten,
            "bytes_reclaimed": s.bytes_reclaimed,
        });
    }
    if let Some(m) = &r.mark {
        v["mark"] = serde_json::json!({
            "snapshots": m.snapshots,
            "referenced_blobs": m.referenced_blobs,
            "unused_packs": m.unused_packs,
            "repacked_packs": m.repacked_packs,
            "repacked_blobs": m.repacked_blobs,
            "repacked_bytes": m.repacked_bytes,
            "orphan_packs": m.orphan_packs,
            "damaged_packs": m.damaged_packs,
            "lost_blobs": m.lost_blobs,
            "unreadable_trees": m.unreadable_trees,
            "planned_bytes": m.planned_bytes,
            "plan": m.plan.map(|p| p.to_hex()),
        });
    }
    v
}

/// The account of the prune step of `cairn forget --prune`: what it reclaimed now and
/// what it planned for a later run.
pub fn prune_line(r: &MaintenanceReport) -> String {
    format!(
        "prune: reclaimed {}; planned {} for deletion after the safety window (a later \
         `cairn prune` deletes it)",
        size(r.bytes_reclaimed()),
        size(r.bytes_planned())
    )
}

/// The JSON of `cairn forget --prune --json`'s prune step.
pub fn prune_json(r: &MaintenanceReport) -> serde_json::Value {
    serde_json::json!({
        "stale_checkpoints": r.stale_checkpoints,
        "stale_staging_files": r.stale_staging.0,
        "bytes_reclaimed": r.bytes_reclaimed(),
        "bytes_planned": r.bytes_planned(),
        "packs_deleted": r.sweep.as_ref().map_or(0, |s| s.packs_deleted),
        "packs_planned": r.mark.as_ref().map_or(0, |m| m.unused_packs + m.repacked_packs + m.orphan_packs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::gc::SweepReport;

    #[test]
    fn an_idle_run_reports_only_what_it_reclaimed() {
        let lines = maintenance_lines(&MaintenanceReport::default(), false);
        assert_eq!(lines, ["reclaimed: 0 B"]);
        let dry = maintenance_lines(&MaintenanceReport::default(), true);
        assert_eq!(dry, ["reclaimed: 0 B (dry run)"]);
    }

    #[test]
    fn each_step_that_did_something_gets_a_line() {
        let r = MaintenanceReport {
            stale_checkpoints: 2,
            sweep: Some(SweepReport {
                plans_due: 1,
                packs_deleted: 3,
                bytes_reclaimed: 3 << 20,
                ..Default::default()
            }),
            segments_compacted: 4,
            ..Default::default()
        };
        let lines = maintenance_lines(&r, true);
        assert_eq!(
            lines,
            [
                "checkpoints of dead backups would be removed: 2",
                "sweep: 1 plan(s) due, 0 waiting; 3 pack(s) would be deleted, 0 kept (used again since the mark)",
                "index: 4 segment(s) would be merged",
                "reclaimed: 3.0 MiB (dry run)",
            ]
        );
        assert_eq!(maintenance_json(&r, true)["sweep"]["packs_deleted"], 3);
        assert_eq!(prune_json(&r)["packs_deleted"], 3);
        assert!(prune_line(&r).starts_with("prune: reclaimed 3.0 MiB; planned 0 B"));
    }
}
