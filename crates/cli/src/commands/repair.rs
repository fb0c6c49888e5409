//! `cairn repair index|snapshots`: rebuild the index from the packs, and
//! rewrite snapshots whose blobs are lost (originals kept until confirmed).

use super::check::open_tolerant;
use crate::common::GlobalOpts;
use anyhow::{Context, Result};
use cairn_core::repair::{
    repair_index, repair_snapshots, RepairIndexOptions, RepairSnapshotsOptions,
};
use cairn_core::SnapshotFilter;
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the trailers of the packs present.
    Index(IndexArgs),
    /// Rewrite snapshots whose blobs are lost; damaged files are marked.
    Snapshots(SnapshotsArgs),
    /// Rewrite a damaged or missing `cairn.repository` from the config
    /// (which a password authenticates).
    Header(HeaderArgs),
}

#[derive(Args, Debug)]
pub struct HeaderArgs {
    /// Say whether the header is damaged; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Show what would change; write and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Snapshots to repair (id prefixes; default: every damaged snapshot).
    pub snapshots: Vec<String>,
    /// Also read every pack to find damaged blobs, not only missing ones.
    #[arg(long)]
    pub read_data: bool,
    /// Delete each original once its repaired snapshot exists (your confirmation).
    #[arg(long)]
    pub forget_originals: bool,
    /// Show what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalOpts, c: RepairCommand) -> Result<ExitCode> {
    let repo = open_tolerant(g)?;
    match c {
        RepairCommand::Header(a) => match repo.header_damage() {
            None => outln!("cairn.repository is intact: nothing to repair"),
            Some(why) if a.dry_run => outln!("would rewrite cairn.repository: {why}"),
            Some(why) => {
                let why = why.to_string();
                repo.repair_header()?;
                outln!("rewrote cairn.repository from the config (it was: {why})");
            }
        },
        RepairCommand::Index(a) => {
            let opts = RepairIndexOptions {
                dry_run: a.dry_run,
                ..Default::default()
            };
            let r = repair_index(&repo, &opts)?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            let verb = if a.dry_run { "would index" } else { "indexed" };
            outln!(
                "{verb} {} packs ({} blobs): {} not indexed before, {} missing packs dropped",
                r.packs,
                r.blobs,
                r.newly_indexed,
                r.dropped_missing
            );
            for p in &r.unreadable {
                outln!(
                    "unreadable pack {}: {}{}",
                    p.object,
                    p.reason,
                    if p.kept_old_entry {
                        " (kept its old index entry)"
                    } else {
                        ""
                    }
                );
            }
            if r.damage_recorded > 0 {
                outln!(
                    "recorded {} unreadable pack(s) in damage/: backups store their blobs again, maintenance salvages the intact ones and drops the packs",
                    r.damage_recorded
                );
            }
            if a.dry_run {
                outln!("would replace {} index segments", r.segments_removed.len());
            } else {
                outln!(
                    "wrote {} index segments, removed {}",
                    r.segments_written.len(),
                    r.segments_removed.len()
                );
            }
        }
        RepairCommand::Snapshots(a) => {
            let mut ids = Vec::new();
            for s in &a.snapshots {
                let (id, _) = repo
                    .find_snapshot(s, &SnapshotFilter::default())
                    .with_context(|| format!("snapshot {s}"))?;
                ids.push(id);
            }
            let opts = RepairSnapshotsOptions {
                snapshots: ids,
                read_data: a.read_data,
                forget_originals: a.forget_originals,
                dry_run: a.dry_run,
                ..Default::default()
            };
            let r = repair_snapshots(&repo, &opts)?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            for d in &r.unreadable {
                if r.unreadable_removed {
                    outln!("removed: {d} (nothing can ever read it)");
                } else {
                    outln!("would remove: {d} (nothing can ever read it)");
                }
            }
            if r.damage_recorded > 0 {
                outln!(
                    "recorded {} damaged copies in damage/: backups store those blobs again",
                    r.damage_recorded
                );
            }
            if r.repaired.is_empty() && r.unreadable.is_empty() {
                outln!("examined {} snapshots: none needs repair", r.examined);
            }
            for s in &r.repaired {
                let orig = &s.original[..8];
                match &s.repaired {
                    None => outln!(
                        "would repair snapshot {orig} ({} damaged paths)",
                        s.paths.len()
                    ),
                    Some(new) if s.reused => {
                        outln!("snapshot {orig} was already repaired as {}", &new[..8])
                    }
                    Some(new) => outln!(
                        "repaired snapshot {orig} as {} (tag `repaired`, {} damaged paths marked)",
                        &new[..8],
                        s.paths.len()
                    ),
                }
                for p in &s.paths {
                    outln!("  {}: {}", p.path, p.reason);
                }
                if s.original_forgotten {
                    outln!("  forgot the original {orig}");
                } else if s.repaired.is_some() {
                    outln!(
                        "  the original {orig} is kept; run again with --forget-originals to delete it"
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
