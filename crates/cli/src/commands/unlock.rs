//! `cairn unlock`: remove stale exclusive locks (or all with `--remove-all`).

use crate::common::GlobalOpts;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove live locks too (only when you know their holder is gone).
    #[arg(long)]
    pub remove_all: bool,
}

pub fn run(g: &GlobalOpts, a: UnlockArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let removed = cairn_core::lock::remove_locks(&repo, a.remove_all)?;
    for l in &removed {
        outln!("removed lock: {}", l.describe());
    }
    let left = cairn_core::lock::list_locks(&repo)?;
    for l in &left {
        outln!("kept live lock: {}", l.describe());
    }
    if removed.is_empty() && left.is_empty() {
        outln!("no locks");
    }
    Ok(ExitCode::SUCCESS)
}
