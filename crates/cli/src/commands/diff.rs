//! `cairn diff SNAP1 SNAP2`: paths added, removed and modified between two snapshots.

use crate::common::GlobalOpts;
use anyhow::{Context, Result};
use cairn_core::stats::{diff, Change};
use cairn_core::SnapshotFilter;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (id prefix or `latest`).
    pub first: String,
    /// The newer snapshot (id prefix or `latest`).
    pub second: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalOpts, a: DiffArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let all = SnapshotFilter::default();
    let (id1, s1) = repo
        .find_snapshot(&a.first, &all)
        .with_context(|| format!("snapshot {}", a.first))?;
    let (id2, s2) = repo
        .find_snapshot(&a.second, &all)
        .with_context(|| format!("snapshot {}", a.second))?;
    let entries = diff(&repo, &s1.tree, &s2.tree)?;
    if a.json {
        let v = serde_json::json!({
            "first": id1.to_hex(), "second": id2.to_hex(), "changes": entries,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let count = |c: Change| entries.iter().filter(|e| e.change == c).count();
    for e in &entries {
        let slash = if e.dir { "/" } else { "" };
        outln!("{}  {}{slash}", e.change.symbol(), e.path.display());
    }
    outln!(
        "{} -> {}: {} added, {} removed, {} modified",
        id1.short(),
        id2.short(),
        count(Change::Added),
        count(Change::Removed),
        count(Change::Modified)
    );
    Ok(ExitCode::SUCCESS)
}
