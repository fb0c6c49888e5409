//! `cairn upgrade`: move a version 1 repository to the current format.

use crate::common::GlobalOpts;
use anyhow::Result;
use cairn_core::format::FORMAT_VERSION;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Say what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(g: &GlobalOpts, a: UpgradeArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let from = repo.format_version();
    if from >= FORMAT_VERSION {
        outln!("the repository is at format version {from}, the current one: nothing to upgrade");
        return Ok(ExitCode::SUCCESS);
    }
    if a.dry_run {
        outln!(
            "would upgrade the repository from format version {from} to {FORMAT_VERSION}: \
             later backups store small files in bundles, and a cairn that reads only \
             version {from} can no longer open it"
        );
        return Ok(ExitCode::SUCCESS);
    }
    repo.upgrade_format()?;
    outln!(
        "upgraded the repository from format version {from} to {FORMAT_VERSION}: later \
         backups store small files in bundles; what is stored already is read as it is"
    );
    Ok(ExitCode::SUCCESS)
}
