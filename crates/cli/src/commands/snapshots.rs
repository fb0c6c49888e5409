//! `cairn snapshots`: list snapshots.

use super::FilterOpts;
use crate::common::GlobalOpts;
use crate::output::{size, time};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalOpts, a: SnapshotsArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let filter = a.filter.filter();
    let snaps: Vec<_> = repo
        .list_snapshots()?
        .into_iter()
        .filter(|(_, s)| filter.matches(s))
        .collect();
    if a.json {
        let list: Vec<serde_json::Value> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).expect("snapshot serializes");
                v["id"] = serde_json::Value::String(id.to_hex());
                v["short_id"] = serde_json::Value::String(id.short());
                v
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = snaps
        .iter()
        .map(|(id, s)| {
            [
                if s.complete {
                    id.short()
                } else {
                    format!("{} (incomplete)", id.short())
                },
                time(&s.time),
                s.host.clone(),
                s.source.clone(),
                s.tags.join(","),
                size(s.summary.bytes_total),
            ]
        })
        .collect();
    let header = ["ID", "TIME", "HOST", "SOURCE", "TAGS", "SIZE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", line.join("  ").trim_end());
    }
    outln!("{} snapshots", rows.len());
    Ok(ExitCode::SUCCESS)
}
