//! `cairn init`: create a repository.

use crate::common::{read_password, GlobalOpts};
use anyhow::Result;
use cairn_core::{InitOptions, Repository};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// zstd level for new data (0 disables compression).
    #[arg(long, default_value_t = cairn_core::format::config::DEFAULT_ZSTD_LEVEL)]
    pub compression: i32,
}

pub fn run(g: &GlobalOpts, a: InitArgs) -> Result<ExitCode> {
    let storage = g.storage()?;
    let password = read_password(
        "CAIRN_PASSWORD",
        g.password_file.as_ref(),
        "new repository password: ",
    )?;
    let opts = InitOptions {
        zstd_level: a.compression,
        ..InitOptions::default()
    };
    let repo = Repository::init(storage, &password, &opts, &g.open_options())?;
    outln!(
        "created cairn repository {} at {}",
        repo.id().short(),
        repo.location()
    );
    outln!("keep the password safe: without it the data cannot be read back");
    Ok(ExitCode::SUCCESS)
}
