//! `cairn maintenance run`: index compaction, sweep of due GC plans and,
//! with `--full`, the mark (repack, orphans) as well.

use crate::common::GlobalOpts;
use crate::output::size;
use anyhow::{bail, Result};
use cairn_core::checkpoint::CheckpointOptions;
use cairn_core::gc::{GcOptions, DEFAULT_REPACK_THRESHOLD, MIN_SAFETY_WINDOW};
use cairn_core::maintenance::{self, MaintenanceOptions, MaintenanceReport, Mode};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Run maintenance now (default: --full).
    Run(RunArgs),
}

/// Garbage-collection settings shared by `prune` and `maintenance run`.
#[derive(Args, Debug, Clone)]
pub struct GcArgs {
    /// How long a GC plan waits before its packs are deleted, and how old a
    /// checkpoint of a dead backup must be before it is removed. Must exceed
    /// the checkpoint interval of every backup (e.g. 6h, 30m, 0s).
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub safety_window: std::time::Duration,
    /// Same as --safety-window 0s: delete at once. Only safe when no backup
    /// runs at the same time: a running backup's newest packs look unused
    /// until its next checkpoint, and would be deleted under it.
    #[arg(long)]
    pub now: bool,
    /// Accept a --safety-window shorter than the checkpoint interval plus a
    /// margin: you state that no backup runs while this does.
    #[arg(long)]
    pub no_backup_running: bool,
    /// Repack packs whose live bytes are under this fraction (0 disables).
    #[arg(long, default_value_t = DEFAULT_REPACK_THRESHOLD)]
    pub repack_threshold: f64,
    /// Compute and report, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl GcArgs {
    pub fn options(&self) -> Result<GcOptions> {
        if !(0.0..=1.0).contains(&self.repack_threshold) {
            bail!("--repack-threshold must be between 0 and 1");
        }
        if !self.now && !self.no_backup_running && self.safety_window < MIN_SAFETY_WINDOW {
            return Err(cairn_core::Error::Usage(format!(
                "--safety-window {} is shorter than {}, a backup's checkpoint interval ({}) plus a \
                 margin: a backup running now could have the packs it wrote since its last checkpoint \
                 deleted under it. Use a longer window, or, only if no backup runs at the same time, \
                 --now or --no-backup-running (docs/MAINTENANCE.md, \"The safety window\")",
                humantime::format_duration(self.safety_window),
                humantime::format_duration(MIN_SAFETY_WINDOW),
                humantime::format_duration(CheckpointOptions::default().every),
            ))
            .into());
        }
        Ok(GcOptions {
            safety_window: if self.now {
                std::time::Duration::ZERO
            } else {
                self.safety_window
            },
            repack_threshold: self.repack_threshold,
            now: chrono::Utc::now(),
            dry_run: self.dry_run,
        })
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Only index compaction and the sweep of due plans.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Everything: stale checkpoints, sweep, mark with repack, orphan packs,
    /// index compaction (the default).
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub gc: GcArgs,
}

pub fn run(g: &GlobalOpts, c: MaintenanceCommand) -> Result<ExitCode> {
    let MaintenanceCommand::Run(a) = c;
    let mode = if a.quick { Mode::Quick } else { Mode::Full };
    execute(g, mode, &a.gc)
}

/// Opens the repository, runs `mode` and prints the report.
pub fn execute(g: &GlobalOpts, mode: Mode, a: &GcArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let opts = MaintenanceOptions {
        mode,
        gc: a.options()?,
    };
    let report = maintenance::run(&repo, &opts)?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report_json(&report, a.dry_run))?
        );
    } else if !g.quiet {
        print_report(&report, a.dry_run);
    }
    Ok(ExitCode::SUCCESS)
}

fn report_json(r: &MaintenanceReport, dry_run: bool) -> serde_json::Value {
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

fn print_report(r: &MaintenanceReport, dry_run: bool) {
    let would = if dry_run { "would be " } else { "" };
    if r.stale_checkpoints > 0 {
        outln!(
            "checkpoints of dead backups {would}removed: {}",
            r.stale_checkpoints
        );
    }
    if r.stale_staging.0 > 0 {
        outln!(
            "staging files of dead writers {would}removed: {} ({})",
            r.stale_staging.0,
            size(r.stale_staging.1)
        );
    }
    if let Some(s) = &r.sweep {
        outln!(
            "sweep: {} plan(s) due, {} waiting; {} pack(s) {would}deleted, {} kept (used again since the mark)",
            s.plans_due, s.plans_waiting, s.packs_deleted, s.packs_kept
        );
    }
    if let Some(m) = &r.mark {
        outln!(
            "mark: {} snapshot(s), {} blob(s) referenced; planned {} unused, {} repacked ({} blob(s), {}), {} orphan pack(s)",
            m.snapshots,
            m.referenced_blobs,
            m.unused_packs,
            m.repacked_packs,
            m.repacked_blobs,
            size(m.repacked_bytes),
            m.orphan_packs
        );
        if m.damaged_packs > 0 {
            outln!(
                "damage: {} pack(s) holding damaged copies {would}repacked without them and planned; {} live blob(s) had no intact copy left",
                m.damaged_packs, m.lost_blobs
            );
        }
        if m.unreadable_trees > 0 {
            outln!(
                "warning: {} tree(s) or chunk list(s) the snapshots reference cannot be read, so no pack was planned for being unused; run `cairn check`, then `cairn repair snapshots`",
                m.unreadable_trees
            );
        }
    }
    if r.damage_records_removed > 0 {
        outln!(
            "damage records {would}removed (their damaged copies are gone): {}",
            r.damage_records_removed
        );
    }
    if r.segments_compacted > 0 {
        outln!("index: {} segment(s) {would}merged", r.segments_compacted);
    }
    outln!(
        "reclaimed: {}{}",
        size(r.bytes_reclaimed()),
        if dry_run { " (dry run)" } else { "" }
    );
    if r.bytes_planned() > 0 {
        outln!(
            "planned for deletion after the safety window: {}",
            size(r.bytes_planned())
        );
    }
}
