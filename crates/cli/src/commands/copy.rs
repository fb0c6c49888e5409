//! `cairn copy --to LOCATION [SNAPSHOT...]`: copy snapshots to another
//! repository, deduplicated there (3-2-1: another copy in another place).

use super::FilterOpts;
use crate::common::{read_password, GlobalOpts};
use crate::output::size;
use anyhow::Result;
use cairn_core::Repository;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Destination repository location (it must exist: `cairn init` it first).
    #[arg(long)]
    pub to: String,
    /// Read the destination password from this file (else CAIRN_TO_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Snapshots to copy (ids or `latest`; default: every complete snapshot).
    pub snapshots: Vec<String>,
}

pub fn run(g: &GlobalOpts, a: CopyArgs) -> Result<ExitCode> {
    let src = g.open()?;
    let storage = cairn_storage::open_with(&a.to, &g.storage_options())?;
    let password = read_password(
        "CAIRN_TO_PASSWORD",
        a.to_password_file.as_ref(),
        "destination repository password: ",
    )?;
    let dst = Repository::open(storage, &password, &g.open_options())?;
    let filter = a.filter.filter();
    let ids = if a.snapshots.is_empty() {
        src.list_snapshots()?
            .into_iter()
            .filter(|(_, s)| s.complete && filter.matches(s))
            .map(|(id, _)| id)
            .collect()
    } else {
        a.snapshots
            .iter()
            .map(|s| src.find_snapshot(s, &filter).map(|(id, _)| id))
            .collect::<Result<Vec<_>, _>>()?
    };
    let report = cairn_core::copy::copy_snapshots(&src, &dst, &ids)?;
    if !g.quiet {
        for (from, to) in &report.copied {
            outln!("copied snapshot {} -> {}", from.short(), to.short());
        }
        for s in &report.skipped {
            outln!("snapshot {} already at the destination", s.short());
        }
        outln!(
            "added {} blob(s), {} at {}",
            report.blobs_added,
            size(report.bytes_added),
            dst.location()
        );
    }
    Ok(ExitCode::SUCCESS)
}
