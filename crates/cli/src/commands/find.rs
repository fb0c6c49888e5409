//! `cairn find PATTERN...`: which snapshots hold paths matching glob patterns.

use super::FilterOpts;
use crate::common::GlobalOpts;
use crate::output::time;
use anyhow::{Context, Result};
use cairn_core::stats::walk;
use clap::Args;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob patterns. A pattern without `/` matches file names (`*.log`);
    /// one with `/` matches whole paths from the snapshot root
    /// (`/var/**/*.log`), where `*` stays within one directory.
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// Only these snapshots (id prefixes or `latest`; default: all that match the filter).
    #[arg(long = "snapshot")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterOpts,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Name patterns and path patterns.
struct Matcher {
    names: GlobSet,
    paths: GlobSet,
}

fn matcher(patterns: &[String]) -> Result<Matcher> {
    let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
    for p in patterns {
        if p.contains('/') {
            let rooted = if p.starts_with('/') {
                p.clone()
            } else {
                format!("/{p}")
            };
            paths.add(
                GlobBuilder::new(&rooted)
                    .literal_separator(true)
                    .build()
                    .with_context(|| format!("pattern {p:?}"))?,
            );
        } else {
            names.add(
                GlobBuilder::new(p)
                    .build()
                    .with_context(|| format!("pattern {p:?}"))?,
            );
        }
    }
    Ok(Matcher {
        names: names.build()?,
        paths: paths.build()?,
    })
}

pub fn run(g: &GlobalOpts, a: FindArgs) -> Result<ExitCode> {
    let m = matcher(&a.patterns)?;
    let repo = g.open()?;
    let snaps = a.filter.select(&repo, &a.snapshots)?;
    let mut found = Vec::new();
    for (id, snap) in &snaps {
        // Its trees in a few merged reads; a root that does not load is
        // reported by the walk.
        if let Ok(root) = repo.load_tree(&snap.tree) {
            cairn_core::prefetch::prefetch_trees(&repo, &root)?;
        }
        walk(&repo, &snap.tree, &mut |path, node| {
            let name =
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(node.name.as_slice());
            if m.names.is_match(name) || m.paths.is_match(path) {
                found.push((id, snap, path.to_path_buf(), node.size));
            }
            true
        })?;
    }
    if a.json {
        let v: Vec<_> = found
            .iter()
            .map(|(id, s, p, size)| {
                serde_json::json!({
                    "snapshot_id": id.to_hex(), "time": s.time, "source": s.source,
                    "path": p.to_string_lossy(), "size": size,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (id, s, p, _) in &found {
            outln!("{}  {}  {}", id.short(), time(&s.time), p.display());
        }
        outln!("{} matches in {} snapshots", found.len(), snaps.len());
    }
    Ok(ExitCode::SUCCESS)
}
