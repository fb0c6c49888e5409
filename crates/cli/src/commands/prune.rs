//! `cairn prune`: garbage collection (mark, then sweep of plans older than
//! the safety window), independent of `forget`.

use super::maintenance::{execute, GcArgs};
use crate::common::GlobalOpts;
use anyhow::Result;
use cairn_core::maintenance::Mode;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub gc: GcArgs,
}

pub fn run(g: &GlobalOpts, a: PruneArgs) -> Result<ExitCode> {
    execute(g, Mode::Prune, &a.gc)
}
