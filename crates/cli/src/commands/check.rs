//! `cairn check`: verify the repository's structure (and with `--read-data`
//! its data); report damaged objects and the snapshots and files they affect.

use crate::common::GlobalOpts;
use crate::output::{size, time};
use anyhow::Result;
use cairn_core::check::{check, CheckOptions, CheckReport, DataSubset};
use cairn_core::Repository;
use clap::Args;
use std::process::ExitCode;

/// Exit code when damage is found (the same as for a corrupt object).
pub const EXIT_DAMAGED: u8 = 12;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every pack and verify every blob's hash.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read only some packs: `N%` (random) or `n/m` (slice n of m by pack id;
    /// running 1/m .. m/m over time reads everything once).
    #[arg(long, value_name = "N%|n/m", value_parser = parse_subset)]
    pub read_data_subset: Option<DataSubset>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_subset(s: &str) -> Result<DataSubset, String> {
    s.parse()
}

/// Opens the repository even when index segments are damaged.
pub fn open_tolerant(g: &GlobalOpts) -> Result<Repository> {
    let storage = g.storage()?;
    let password = g.password()?;
    let mut opts = g.open_options();
    opts.tolerate_damage = true;
    Ok(Repository::open(storage, &password, &opts)?)
}

pub fn run(g: &GlobalOpts, a: CheckArgs) -> Result<ExitCode> {
    let repo = open_tolerant(g)?;
    let opts = CheckOptions {
        read_data: if a.read_data {
            Some(DataSubset::All)
        } else {
            a.read_data_subset
        },
    };
    let report = check(&repo, &opts)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["clean"] = serde_json::Value::Bool(report.is_clean());
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&report, g.quiet);
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DAMAGED)
    })
}

fn print_report(r: &CheckReport, quiet: bool) {
    if !quiet {
        outln!(
            "checked {} snapshots, {} trees, {} index segments, {} packs ({} indexed)",
            r.snapshots,
            r.trees,
            r.segments,
            r.packs,
            r.indexed_packs
        );
        if r.packs_read > 0 {
            outln!(
                "read and verified {} packs ({})",
                r.packs_read,
                size(r.bytes_read)
            );
        }
    }
    if !r.unindexed_packs.is_empty() {
        outln!(
            "warning: {} packs are not in the index (a backup still running, or a lost index segment: `cairn repair index` indexes them):",
            r.unindexed_packs.len()
        );
        for p in &r.unindexed_packs {
            outln!("  {}  {}", p.object, size(p.size));
        }
    }
    if !r.contained.is_empty() {
        outln!(
            "warning: {} damaged object(s) no snapshot needs any more (recorded in damage/, never reused; `cairn maintenance run` drops them):",
            r.contained.len()
        );
        for d in &r.contained {
            outln!("  {d}");
        }
    }
    if r.recorded > 0 {
        outln!(
            "recorded {} damaged copies in damage/: backups store those blobs again instead of reusing them",
            r.recorded
        );
    }
    if r.is_clean() {
        outln!("no damage found");
        return;
    }
    outln!("damage ({}):", r.damage.len());
    for d in &r.damage {
        outln!("  {d}");
    }
    if !r.affected.is_empty() {
        outln!("affected snapshots ({}):", r.affected.len());
        for s in &r.affected {
            outln!(
                "  {}  {}  {}  {}  ({} paths)",
                s.short_id,
                time(&s.time),
                s.host,
                s.source,
                s.paths.len()
            );
            for p in &s.paths {
                outln!("    {}: {}", p.path, p.reason);
            }
        }
    }
    outln!(
        "the repository is damaged: back up the affected sources again (the lost blobs are stored again and heal every snapshot that uses them), or `cairn repair index` then `cairn repair snapshots` to make what remains restorable (see docs/MAINTENANCE.md)"
    );
}
