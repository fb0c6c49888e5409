//! `cairn restore`: restore a snapshot into a directory.

use super::FilterOpts;
use crate::common::GlobalOpts;
use crate::output::size;
use anyhow::Result;
use cairn_core::progress::Progress;
use cairn_core::restore::{restore, RestoreOptions};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite).
    #[arg(long, short = 't', required_unless_present = "target_device")]
    pub target: Option<PathBuf>,
    /// Write one file of the snapshot (a disk image, a device backed up with
    /// --read-devices; pick it with --include) onto this existing block device
    /// or image file, which must be at least as large. Its holes are zeroed.
    #[arg(long, value_name = "DEV", conflicts_with_all = ["target", "overwrite"])]
    pub target_device: Option<PathBuf>,
    /// Restore only this path of the snapshot (repeatable).
    #[arg(long = "include")]
    pub includes: Vec<PathBuf>,
    /// Restore into a non-empty directory, replacing what is in the way.
    #[arg(long)]
    pub overwrite: bool,
    /// Re-read every restored file and check it against the snapshot.
    #[arg(long)]
    pub verify: bool,
    /// Exit 0 even when files restored from a repaired snapshot have
    /// zero-filled ranges where data was lost (they are still listed).
    #[arg(long)]
    pub accept_zero_filled: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub filter: FilterOpts,
}

pub fn run(g: &GlobalOpts, a: RestoreArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let (id, snap) = repo.find_snapshot(&a.snapshot, &a.filter.filter())?;
    let progress = Arc::new(Progress::default());
    let target = a
        .target
        .clone()
        .or_else(|| a.target_device.clone())
        .unwrap_or_default();
    let opts = RestoreOptions {
        target: target.clone(),
        target_device: a.target_device.clone(),
        includes: a.includes.clone(),
        overwrite: a.overwrite,
        owners: nix_is_root(),
        verify: a.verify,
        workers: 0,
        progress: Some(progress.clone()),
    };
    let bar = (!a.json && !g.quiet && std::io::stderr().is_terminal())
        .then(|| crate::output::ProgressBar::start(progress, "restoring"));
    let stats = restore(&repo, &snap.tree, &opts);
    if let Some(bar) = bar {
        bar.finish();
    }
    let mut stats = stats?;
    if let (Some(lost), true) = (&snap.damaged_root, a.includes.is_empty()) {
        stats.zero_filled.insert(0, (target.clone(), lost.clone()));
    }
    if a.json {
        let failed: Vec<_> = stats
            .failed
            .iter()
            .map(|(p, r)| serde_json::json!({"path": p, "error": r}))
            .collect();
        let zero_filled: Vec<_> = stats
            .zero_filled
            .iter()
            .map(|(p, r)| serde_json::json!({"path": p, "lost": r}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot_id": id.to_hex(),
                "files": stats.files, "dirs": stats.dirs, "others": stats.others,
                "bytes": stats.bytes, "packs_read": stats.packs_read, "ranges_read": stats.ranges_read,
                "verified": stats.verified, "failed": failed,
                "zero_filled": zero_filled,
            }))?
        );
    } else {
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} other entries, {}",
            id.short(),
            target.display(),
            stats.files,
            stats.dirs,
            stats.others,
            size(stats.bytes)
        );
        if a.verify {
            outln!("verified {} files", stats.verified);
        }
        for (p, r) in &stats.failed {
            eprintln!("failed: {}: {r}", p.display());
        }
        for (p, r) in &stats.zero_filled {
            eprintln!("zero-filled: {}: {r}", p.display());
        }
    }
    if !stats.failed.is_empty() {
        eprintln!(
            "error: {} entries could not be restored",
            stats.failed.len()
        );
        return Ok(ExitCode::from(3));
    }
    if !stats.zero_filled.is_empty() {
        eprintln!(
            "{}: {} file(s) come from a repaired snapshot and hold zeros where data was lost{}",
            if a.accept_zero_filled {
                "warning"
            } else {
                "error"
            },
            stats.zero_filled.len(),
            if a.accept_zero_filled {
                ""
            } else {
                " (pass --accept-zero-filled to accept them)"
            }
        );
        if !a.accept_zero_filled {
            return Ok(ExitCode::from(3));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })
        .unwrap_or(false)
}
