//! `cairn dump`: write one file of a snapshot to standard output.

use super::FilterOpts;
use crate::common::GlobalOpts;
use anyhow::{anyhow, Result};
use cairn_core::browse::{dump, resolve, Resolved};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// File inside the snapshot.
    pub path: PathBuf,
    #[command(flatten)]
    pub filter: FilterOpts,
}

pub fn run(g: &GlobalOpts, a: DumpArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let (_, snap) = repo.find_snapshot(&a.snapshot, &a.filter.filter())?;
    let Resolved::Node(node) = resolve(&repo, &snap.tree, &a.path)? else {
        return Err(anyhow!(cairn_core::Error::Usage(format!(
            "{} is the snapshot's root directory; dump prints regular files: name one \
             (`cairn ls {}` lists them)",
            a.path.display(),
            a.snapshot
        ))));
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let dumped = dump(&repo, &node, &mut out);
    repo.record_found_damage_or_warn();
    dumped?;
    Ok(ExitCode::SUCCESS)
}
