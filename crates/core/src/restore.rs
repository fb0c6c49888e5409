//! Restore: plan by pack, read merged ranges, decrypt in parallel, create
//! each file with its first write at offsets (holes stay sparse), then
//! metadata, deepest directories last.
//!
//! A damaged or missing pack fails only the files that need it: every other
//! file is restored, and the failures are listed in [`RestoreStats::failed`].
//!
//! Three stages, each in its own module: [`plan`] (which entries go where,
//! which pack ranges fill which files; reads no pack), [`fetch`] (range
//! reads, parallel decryption, writes at offsets) and [`finalize`]
//! (metadata, links, special files, verification, directories last).

mod device;
mod fetch;
mod finalize;
mod plan;
mod target;

pub use fetch::{MAX_RANGE, MAX_REMOTE_RANGE, MERGE_GAP};

use crate::error::{Error, Result};
use crate::format::BlobId;
use crate::progress::Progress;
use crate::repo::Repository;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to restore and how.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into.
    pub target: PathBuf,
    /// Only these snapshot paths (and what is below them); empty = all.
    pub includes: Vec<PathBuf>,
    /// Allow a non-empty target and replace what is in the way.
    pub overwrite: bool,
    /// Restore owners (needs root).
    pub owners: bool,
    /// Re-read and re-hash every restored file.
    pub verify: bool,
    /// Decrypting threads (0 = number of CPUs).
    pub workers: usize,
    /// Live progress counters.
    pub progress: Option<Arc<Progress>>,
    /// Write the one file `includes` selects (or the snapshot's only file)
    /// onto this existing block device (or image file) instead of into
    /// `target`: refused when it is smaller than the file; not truncated,
    /// its metadata untouched. For disks backed up with
    /// [`crate::backup::BackupOptions::read_devices`].
    pub target_device: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Default, Clone)]
pub struct RestoreStats {
    /// Files restored (hard links count once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, hard links.
    pub others: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Packs read.
    pub packs_read: u64,
    /// Range reads issued.
    pub ranges_read: u64,
    /// Files verified (with `verify`).
    pub verified: u64,
    /// Entries that could not be restored, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Entries restored from a snapshot `repair snapshots` wrote that are
    /// not what was backed up (they carry [`crate::repair::DAMAGED_XATTR`]):
    /// files whose lost ranges are zeros, directories whose lost listing is
    /// empty; with what was lost.
    pub zero_filled: Vec<(PathBuf, String)>,
    /// Time spent in each stage.
    pub timings: RestoreTimings,
}

/// How long each stage of a restore took.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreTimings {
    /// Reading trees and list blobs, looking blobs up, planning the reads.
    pub plan: Duration,
    /// Creating directories and files, reading packs, writing content.
    pub fetch: Duration,
    /// Metadata, links, special files, verification.
    pub finalize: Duration,
}

/// Restores the tree `root` into `opts.target`.
pub fn restore(repo: &Repository, root: &BlobId, opts: &RestoreOptions) -> Result<RestoreStats> {
    if let Some(device) = &opts.target_device {
        return device::restore(repo, root, device, opts);
    }
    let started = Instant::now();
    let target = &opts.target;
    if target.exists() {
        let mut rd = std::fs::read_dir(target).map_err(|e| Error::io(target, e))?;
        if rd.next().is_some() && !opts.overwrite {
            return Err(Error::Usage(format!(
                "restore target {} is not empty; choose an empty directory or pass --overwrite",
                target.display()
            )));
        }
    } else {
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    // The plan reads one tree per directory, one after another: on an empty cache (a job
    // pod) each would be a round trip to the repository. A whole snapshot's trees are
    // fetched first, level by level in merged reads per pack; a partial restore plans
    // without them (it may need few of a large snapshot's trees). A root that cannot be
    // read is left to the plan, which reports it.
    if opts.includes.is_empty() {
        if let Ok(tree) = repo.load_tree(root) {
            crate::prefetch::prefetch_trees(repo, &tree)?;
        }
    }
    let mut plan = plan::Plan::new(repo, root, target, &opts.includes)?;
    let progress = opts.progress.clone().unwrap_or_default();
    progress
        .files_total
        .store(plan.files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(plan.bytes(), Ordering::Relaxed);
    progress.scan_done.store(true, Ordering::Relaxed);
    let mut stats = RestoreStats {
        failed: std::mem::take(&mut plan.lost),
        ..Default::default()
    };

    // Every directory (parents first), while the reads are planned on the
    // pool: the chunk lists and index lookups of every file. Files are
    // created as their content arrives (see `fetch`): creating tens of
    // thousands of them on the pool up front was a small-file restore's
    // longest step before its first read.
    let pool = pool(opts.workers)?;
    let (made, reads) = std::thread::scope(|scope| {
        let made = scope.spawn(|| -> Result<()> {
            for dir in &plan.ancestors {
                target::make_dir(dir, true)?;
            }
            for (dir, _) in &plan.dirs {
                target::make_dir(dir, opts.overwrite)?;
            }
            Ok(())
        });
        let reads = plan::reads(repo, &pool, &plan.files, &BTreeMap::new());
        let made = made
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (made, reads)
    });
    made?;
    let reads = reads?;
    stats.dirs = plan.dirs.len() as u64;
    let mut failed = reads.failed;
    stats.timings.plan = started.elapsed();

    let started = Instant::now();
    fetch::fetch(
        repo,
        &pool,
        &plan,
        &reads.packs,
        &progress,
        &mut failed,
        Some(opts.overwrite),
    )
    .record(&mut stats);
    stats.timings.fetch = started.elapsed();
    tracing::debug!(
        "restore: planned in {:?}, {} ranges fetched in {:?}",
        stats.timings.plan,
        stats.ranges_read,
        stats.timings.fetch
    );

    let started = Instant::now();
    finalize::finalize(repo, &pool, &plan, &failed, opts, &progress, &mut stats);
    repo.record_found_damage_or_warn();
    stats.timings.finalize = started.elapsed();
    tracing::debug!("restore: finalized in {:?}", stats.timings.finalize);
    Ok(stats)
}

/// The restore's thread pool: planning, creating files, decrypting and
/// writing, metadata.
fn pool(asked: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers(asked))
        .thread_name(|i| format!("cairn-restore-{i}"))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start restore threads: {e}")))
}

/// Decrypting threads for `asked` (0 = number of CPUs).
fn workers(asked: usize) -> usize {
    if asked == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        asked
    }
}
