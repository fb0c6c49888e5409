//! `cairn maintenance run`: index compaction, sweep of due GC plans and,
//! with `--full`, the mark (repack, orphans) as well.

use crate::common::GlobalOpts;
use anyhow::{bail, Result};
use cairn_core::checkpoint::CheckpointOptions;
use cairn_core::gc::{GcOptions, DEFAULT_REPACK_THRESHOLD, MIN_SAFETY_WINDOW};
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_engine::report;
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
            serde_json::to_string_pretty(&report::maintenance_json(&report, a.dry_run))?
        );
    } else if !g.quiet {
        for line in report::maintenance_lines(&report, a.dry_run) {
            outln!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
