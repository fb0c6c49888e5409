//! `cairn stats`: sizes before and after deduplication and compression.

use super::FilterOpts;
use crate::common::GlobalOpts;
use crate::output::size;
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only these snapshots (id prefixes or `latest`; default: all that match the filter).
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalOpts, a: StatsArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let snaps = a.filter.select(&repo, &a.snapshots)?;
    let st = cairn_core::stats::stats(&repo, &snaps)?;
    if a.json {
        let mut v = serde_json::to_value(&st)?;
        v["compression_ratio"] = serde_json::json!(st.compression_ratio());
        v["space_saving_ratio"] = serde_json::json!(st.space_saving_ratio());
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("snapshots:               {}", st.snapshots);
    outln!("files (all snapshots):   {}", st.files);
    outln!("restore size:            {}", size(st.restore_size));
    outln!(
        "unique blobs:            {} ({} plaintext, {} stored)",
        st.unique_blobs,
        size(st.unique_raw_size),
        size(st.unique_stored_size)
    );
    outln!("compression ratio:       {:.2}", st.compression_ratio());
    outln!(
        "restore size / stored:   {:.2} (deduplication and compression)",
        st.space_saving_ratio()
    );
    outln!(
        "repository:              {} packs, {}, {} blobs indexed",
        st.packs,
        size(st.pack_size),
        st.indexed_blobs
    );
    if st.missing_blobs > 0 {
        outln!(
            "warning: {} referenced blobs are not in the index; run `cairn check`",
            st.missing_blobs
        );
    }
    Ok(ExitCode::SUCCESS)
}
