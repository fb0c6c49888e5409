//! `cairn backup`: back up paths into a new snapshot.

use crate::common::GlobalOpts;
use crate::output::size;
use anyhow::Result;
use cairn_core::backup::{backup, BackupOptions, ParentChoice};
use cairn_core::progress::Progress;
use cairn_core::SnapshotId;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Source name to record (default: the absolute paths).
    #[arg(long)]
    pub source: Option<String>,
    /// Compare against this snapshot instead of the latest of the same source.
    #[arg(long, conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, even unchanged ones.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &GlobalOpts, a: BackupArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let parent = if a.force {
        ParentChoice::None
    } else if let Some(p) = &a.parent {
        ParentChoice::Given(repo.find_snapshot(p, &Default::default())?.0)
    } else {
        ParentChoice::Auto
    };
    let progress = Arc::new(Progress::default());
    let opts = BackupOptions {
        paths: a.paths.clone(),
        host: a.host.clone(),
        source: a.source.clone(),
        tags: a.tags.clone(),
        parent,
        progress: Some(progress.clone()),
        ..Default::default()
    };
    let bar = (!a.json && !g.quiet && std::io::stderr().is_terminal())
        .then(|| crate::output::ProgressBar::start(progress.clone(), "backing up"));
    let result = backup(&repo, &opts);
    if let Some(bar) = bar {
        bar.finish();
    }
    let result = result?;
    print_summary(&result.id, &result.snapshot, a.json)?;
    Ok(if result.snapshot.summary.errors > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(id: &SnapshotId, snap: &cairn_core::Snapshot, json: bool) -> Result<()> {
    let s = &snap.summary;
    if json {
        let v = serde_json::json!({
            "snapshot_id": id.to_hex(),
            "time": snap.time,
            "host": snap.host,
            "source": snap.source,
            "tags": snap.tags,
            "parent": snap.parent.map(|p| p.to_hex()),
            "summary": s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("snapshot {} saved", id.short());
    println!(
        "files:    {} new, {} changed, {} unchanged",
        s.files_new, s.files_changed, s.files_unchanged
    );
    println!("dirs:     {}", s.dirs);
    println!(
        "read:     {} of {}",
        size(s.bytes_read),
        size(s.bytes_total)
    );
    println!(
        "added:    {} in {} blobs (after dedup and compression)",
        size(s.bytes_added),
        s.blobs_added
    );
    println!("duration: {:.2}s", s.duration_ms as f64 / 1000.0);
    if s.errors > 0 {
        println!(
            "warning:  {} entries could not be read (see the log above)",
            s.errors
        );
    }
    Ok(())
}
