//! `cairn forget`: removes the snapshots a retention policy does not keep (the decision is
//! `cairn_policy::retention::apply`, see docs/RETENTION.md), then, with `--prune`, runs the
//! garbage collection of `cairn prune` to free the data only they referenced.

use super::FilterOpts;
use crate::common::GlobalOpts;
use anyhow::{anyhow, Result};
use cairn_core::gc::GcOptions;
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::{Snapshot, SnapshotId};
use cairn_engine::report;
use cairn_policy::retention::{apply, GroupDecision, RetentionPolicy, SnapshotInfo};
use clap::Args;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Only consider snapshots matching these filters; the policy applies per host and source.
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours that have one (UTC).
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days that have one (UTC).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one (UTC).
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months that have one (UTC).
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years that have one (UTC).
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than DURATION before the group's newest (e.g. 7d, "2w 3d").
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<Duration>,
    /// Keep snapshots carrying all of these tags (repeatable: any of the sets).
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    pub keep_tags: Vec<String>,
    /// Only list what would be removed and why each survivor is kept.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
    /// Afterwards, run the garbage collection of `cairn prune` (default safety window: the
    /// data is planned now and deleted by a later prune once the window has passed).
    #[arg(long)]
    pub prune: bool,
}

impl ForgetArgs {
    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
            keep_tags: self.keep_tags.clone(),
        }
    }
}

pub fn run(g: &GlobalOpts, a: ForgetArgs) -> Result<ExitCode> {
    let policy = a.policy();
    if policy.is_empty() {
        // Refused before opening the repository: nothing is read, nothing removed.
        return Err(usage(cairn_policy::PolicyError::EmptyRetentionPolicy));
    }
    let repo = g.open()?;
    let filter = a.filter.filter();
    // Checkpoints of running or dead backups are not backups: GC manages them.
    let snapshots: HashMap<String, (SnapshotId, Snapshot)> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| s.complete && filter.matches(s))
        .map(|(id, s)| (id.to_hex(), (id, s)))
        .collect();
    let infos: Vec<SnapshotInfo> = snapshots
        .iter()
        .map(|(hex, (_, s))| SnapshotInfo {
            id: hex.clone(),
            time: s.time,
            host: s.host.clone(),
            source: s.source.clone(),
            tags: s.tags.clone(),
        })
        .collect();
    let decisions = apply(&policy, &infos, chrono::Utc::now()).map_err(usage)?;

    let mut removed = 0u64;
    if !a.dry_run {
        for id in decisions.iter().flat_map(|d| &d.remove) {
            let (sid, _) = &snapshots[id];
            repo.delete_snapshot(sid)?;
            removed += 1;
        }
    }
    let to_remove: usize = decisions.iter().map(|d| d.remove.len()).sum();

    let pruned = if a.prune && !a.dry_run {
        let opts = MaintenanceOptions {
            mode: Mode::Prune,
            gc: GcOptions::default(),
        };
        Some(maintenance::run(&repo, &opts)?)
    } else {
        None
    };

    if a.json {
        let mut v = serde_json::json!({
            "dry_run": a.dry_run,
            "groups": decisions,
            "removed": removed,
        });
        if let Some(r) = &pruned {
            v["prune"] = report::prune_json(r);
        }
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !g.quiet {
        for d in &decisions {
            print_group(d, &snapshots, a.dry_run);
        }
        if a.dry_run {
            outln!("would remove {to_remove} snapshot(s) (dry run: nothing removed)");
            if a.prune {
                outln!("prune skipped in a dry run");
            }
        } else {
            outln!("removed {removed} snapshot(s)");
        }
        if let Some(r) = &pruned {
            outln!("{}", report::prune_line(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A policy error is the user's to fix: exit code 2.
fn usage(e: cairn_policy::PolicyError) -> anyhow::Error {
    anyhow!(cairn_core::Error::Usage(e.to_string()))
}

fn print_group(d: &GroupDecision, snapshots: &HashMap<String, (SnapshotId, Snapshot)>, dry: bool) {
    outln!(
        "host {}, source {}: keep {}, {} {}",
        d.host,
        d.source,
        d.keep.len(),
        if dry { "would remove" } else { "remove" },
        d.remove.len()
    );
    let line = |verb: &str, id: &str, reasons: &str| {
        let (sid, s) = &snapshots[id];
        let time = s.time.format("%Y-%m-%d %H:%M:%S UTC");
        let text = format!("  {verb:<7} {}  {time}  {reasons}", sid.short());
        outln!("{}", text.trim_end());
    };
    for k in &d.keep {
        let reasons: Vec<String> = k.reasons.iter().map(ToString::to_string).collect();
        line("keep", &k.id, &reasons.join(", "));
    }
    for id in &d.remove {
        line("remove", id, "");
    }
}
