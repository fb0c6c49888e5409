//! Backup: walk, skip unchanged files, chunk, deduplicate, seal in parallel,
//! pack and upload, then write the trees and the snapshot.
//!
//! Stages, each on its own threads and joined by bounded channels, so they
//! overlap and memory does not grow with file size, file count or tree
//! size:
//! - the plan ([`plan`]): the paths, host, source and parents, decided
//!   before anything is read; it writes the snapshots out;
//! - the scanner ([`walk`]) walks in name order, skips unchanged files and
//!   queues the others, running ahead of
//! - the reader pool ([`read`]): read, chunk, hash and claim new chunks,
//!   one result slot per file;
//! - sealing ([`seal`]): compress and encrypt new chunks, on a pool of
//!   threads or in a reader for a small chunk;
//! - packing and indexing: the pack writer fills packs, which upload
//!   threads store, and writes index segments ([`crate::packer`]);
//! - tree assembly ([`assemble`], the calling thread): takes the scanner's
//!   events in order, waits for each file's slot and stores each
//!   directory's tree after its entries; checkpoints between directories.

mod assemble;
mod list;
mod partial;
mod plan;
mod read;
mod seal;
mod sparse;
pub mod stream;
mod walk;

pub use partial::PARTIAL_XATTR;
pub use walk::Exclude;

use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::{BlobId, SnapshotId};
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crossbeam_channel::bounded;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Which snapshot a backup compares against to skip unchanged files.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The latest complete snapshot of the same host and source.
    #[default]
    Auto,
    /// Read every file.
    None,
    /// This snapshot.
    Given(SnapshotId),
}

/// What to back up and how.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Paths to back up.
    pub paths: Vec<PathBuf>,
    /// Host name recorded (default: this machine's).
    pub host: Option<String>,
    /// Source name recorded (default: the absolute paths).
    pub source: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent selection.
    pub parent: ParentChoice,
    /// Exclusion rules.
    pub exclude: Option<Arc<dyn Exclude>>,
    /// Human-readable rules, recorded in the snapshot.
    pub exclude_rules: Vec<String>,
    /// Hook outcomes, recorded in the snapshot.
    pub hooks: Vec<serde_json::Value>,
    /// Sealing threads (0 = number of CPUs).
    pub workers: usize,
    /// Upload threads (0 = default).
    pub uploaders: usize,
    /// Live progress counters.
    pub progress: Option<Arc<Progress>>,
    /// When to write checkpoints (index segment + incomplete snapshot).
    pub checkpoint: crate::checkpoint::CheckpointOptions,
    /// Read the source at most this many bytes per second (all readers
    /// together), to spare a live application's disk.
    pub limit_read: Option<u64>,
    /// The source's directories, listed from before the repository was
    /// opened ([`Prelisted::start`]); the backup lists them itself when
    /// this is empty or was started for other paths.
    pub prelisted: Prelisted,
    /// Read block devices (given as paths, links to them, or met in the
    /// walk) as files of their size, instead of recording device nodes.
    /// The snapshot holds each as a regular file: restore it into a file
    /// or onto a device ([`crate::restore::RestoreOptions::target_device`]).
    pub read_devices: bool,
}

/// A listing of a backup's source started early: while the repository
/// opens (the key derivation alone takes ~80 ms of one core), the source's
/// directories are listed and lstat'ed on the other. Start it only once
/// nothing will change the source before the backup reads it (after any
/// pre-backup hook), with the exclusion rules the backup gets.
#[derive(Clone, Default)]
pub struct Prelisted(Arc<std::sync::Mutex<Option<Early>>>);

/// What a [`Prelisted`] was started for, and its lister.
struct Early {
    roots: Vec<PathBuf>,
    exclude: Option<Arc<dyn Exclude>>,
    lister: list::Lister,
}

impl Prelisted {
    /// Starts listing `paths` with `exclude`, as a backup of them would.
    /// Paths that do not resolve start nothing (the backup reports them).
    pub fn start(paths: &[PathBuf], exclude: Option<Arc<dyn Exclude>>) -> Self {
        let Ok(sources) = plan::Sources::of(paths) else {
            return Self::default();
        };
        let roots = sources.first_dirs();
        let lister = list::Lister::start(roots.clone(), exclude.clone());
        Self(Arc::new(std::sync::Mutex::new(Some(Early {
            roots,
            exclude,
            lister,
        }))))
    }

    /// The listing, if it was started for `roots` and the very rules
    /// `exclude` (and not taken yet).
    fn take(&self, roots: &[PathBuf], exclude: &Option<Arc<dyn Exclude>>) -> Option<list::Lister> {
        let early = crate::sync::lock(&self.0).take()?;
        let same_rules = match (&early.exclude, exclude) {
            (None, None) => true,
            (Some(a), Some(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            _ => false,
        };
        (early.roots == roots && same_rules).then_some(early.lister)
    }
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The snapshot written.
    pub snapshot: Snapshot,
}

/// Backs up `opts.paths` into `repo` and writes a snapshot.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
    let snapshot = backup_unsaved(repo, opts)?;
    let id = save_backup(repo, &snapshot)?;
    Ok(BackupResult { id, snapshot })
}

/// Finishes a backup whose snapshot [`backup_unsaved`] returned: writes the snapshot,
/// records the damage the backup found, then drops the checkpoints the snapshot supersedes.
pub fn save_backup(repo: &Repository, snapshot: &Snapshot) -> Result<SnapshotId> {
    let id = repo.save_snapshot(snapshot)?;
    repo.record_found_damage_or_warn();
    crate::checkpoint::remove_checkpoints(repo, snapshot)?;
    Ok(id)
}

/// Backs up like [`backup`] but returns the snapshot without writing it, for callers that
/// record what happens after the data is stored (a post-exec hook's outcome) before saving
/// it with [`save_backup`]. Data, trees and index segments are already in the
/// repository when this returns; until the snapshot is saved only the backup's last
/// checkpoint references them: save it promptly (well within the GC safety window).
pub fn backup_unsaved(repo: &Repository, opts: &BackupOptions) -> Result<Snapshot> {
    stages_unsaved(repo, opts).map_err(vanished_under_backup)
}

/// A repository object missing during a backup was written or chosen by
/// this backup moments before: something removed it while the backup ran,
/// which the GC protocol allows only to a maintenance whose safety window
/// is shorter than the backup's checkpoint interval (or to a person). Said
/// so, instead of reporting a damaged repository.
fn vanished_under_backup(e: Error) -> Error {
    match e {
        Error::Storage { location, source } if source.is_not_found() => Error::Interference {
            location,
            object: source.op.clone(),
            cause: source.message,
        },
        other => other,
    }
}

fn stages_unsaved(repo: &Repository, opts: &BackupOptions) -> Result<Snapshot> {
    let started = Instant::now();
    let sources = plan::Sources::resolve(opts)?;
    let roots = sources.first_dirs();
    let lister = opts
        .prelisted
        .take(&roots, &opts.exclude)
        .unwrap_or_else(|| list::Lister::start(roots, opts.exclude.clone()));
    let plan = plan::BackupPlan::new(repo, opts, sources)?;
    let template = plan.snapshot(BlobId::default(), false, Summary::default(), Vec::new());
    let ckpt = Checkpointer::new(repo, opts.checkpoint, template)?;
    // Totals are counted only for someone watching progress: the count
    // stats every entry a second time.
    let totals = opts
        .progress
        .as_ref()
        .map(|p| {
            walk::spawn_totals(
                plan.paths.clone(),
                opts.exclude.clone(),
                p.clone(),
                opts.read_devices,
            )
        })
        .transpose()?;
    let progress = opts.progress.clone().unwrap_or_default();
    let stored = run_stages(repo, opts, &plan, ckpt, &progress, lister);
    // Trees of the parent no walk took (directories gone since).
    repo.forget_prefetched();
    if let Some(totals) = totals {
        let _ = totals.join();
    }
    let Stored {
        root,
        mut summary,
        writer,
        mut ckpt,
    } = stored?;
    // Every blob the snapshot references must sit in an unplanned pack.
    writer.sync()?;
    ckpt.protect(repo, &writer, &[root])?;
    let stats = writer.finish()?;
    summary.blobs_added = stats.blobs;
    summary.bytes_added = stats.stored_bytes;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.errors = progress.errors.load(Ordering::Relaxed);
    summary.files_changed_while_read = progress.changed.load(Ordering::Relaxed);
    summary.changed_while_read = crate::sync::lock(&progress.changed_paths)
        .drain(..)
        .map(|(path, what)| crate::format::snapshot::ChangedFile {
            path: crate::format::snapshot::RawPath(path),
            what,
        })
        .collect();
    Ok(plan.snapshot(root, true, summary, opts.hooks.clone()))
}

/// What the stages leave once every thread has ended.
struct Stored {
    /// The root tree.
    root: BlobId,
    /// What the walk and the assembler counted (blobs and bytes added,
    /// duration and errors still to fill in).
    summary: Summary,
    /// The pack writer, no longer shared: packs still open, index unsynced.
    writer: PackWriter,
    ckpt: Checkpointer,
}

/// Runs the stages, each on its own threads, joined by bounded channels:
/// the scanner on a thread of its own, readers and sealers in pools, tree
/// assembly on this thread.
fn run_stages(
    repo: &Repository,
    opts: &BackupOptions,
    plan: &plan::BackupPlan,
    ckpt: Checkpointer,
    progress: &Arc<Progress>,
    lister: list::Lister,
) -> Result<Stored> {
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let writer = Arc::new(PackWriter::for_backup(repo, opts.uploaders)?);
    let errors = seal::WorkerError::default();
    let (sealer, seals) = seal::SealPool::start(repo, &writer, workers, &errors)?;
    let in_flight = Arc::new(partial::InFlight::default());
    let reader = read::ReadCtx {
        repo: repo.clone(),
        writer: writer.clone(),
        sealer,
        progress: progress.clone(),
        limit: opts.limit_read.map(|rate| {
            Arc::new(cairn_storage::TokenBucket::new(
                rate,
                std::time::Instant::now(),
            ))
        }),
        in_flight: in_flight.clone(),
    };
    let pool = read::ReaderPool::new(&reader, workers)?;
    let (events, events_rx) = bounded(walk::EVENTS_AHEAD);
    let scanner = walk::Scanner {
        repo,
        writer: writer.clone(),
        errors: errors.clone(),
        exclude: opts.exclude.clone(),
        progress: progress.clone(),
        reader,
        pool,
        events,
        summary: Summary::default(),
        hardlinks: HashMap::new(),
        in_flight: in_flight.clone(),
        read_devices: opts.read_devices,
        known: Arc::default(),
        lister: Some(lister),
    };
    let mut assembler = assemble::Assembler::new(
        repo,
        writer.clone(),
        errors.clone(),
        progress.clone(),
        ckpt,
        plan.root_is_dir,
        in_flight,
    );
    let (walked, scanned) = std::thread::scope(|s| {
        let scan = std::thread::Builder::new()
            .name("cairn-walk".into())
            .spawn_scoped(s, || {
                scanner.run(&plan.paths, &plan.parents, plan.root_is_dir)
            })
            .map_err(Error::spawn("walk"))?;
        let walked = assembler.run(events_rx);
        Ok::<_, Error>((walked, scan.join()))
    })?;
    let scanned = scanned.map_err(|_| Error::Internal("the walk thread panicked".into()))?;
    let (mut summary, ckpt) = assembler.finish();
    summary.files_unchanged += scanned.files_unchanged;
    summary.others += scanned.others;
    summary.bytes_total += scanned.bytes_total;
    // The scanner dropped the readers, which held the only senders to
    // the sealing threads.
    seals.join();
    // A worker's error is the cause; the walk only saw that workers stopped.
    if let Some(e) = errors.take() {
        return Err(e);
    }
    let root = walked?;
    let writer =
        Arc::try_unwrap(writer).map_err(|_| Error::Internal("pack writer still shared".into()))?;
    Ok(Stored {
        root,
        summary,
        writer,
        ckpt,
    })
}

#[cfg(test)]
mod vanished_tests {
    use super::vanished_under_backup;
    use crate::{Error, ErrorKind};
    use cairn_storage::{StorageError, StorageErrorKind};

    /// A staging file or pack removed under a running backup used to be
    /// reported as a damaged repository (exit 12).
    #[test]
    fn an_object_missing_during_a_backup_is_interference_not_damage() {
        let gone = Error::Storage {
            location: "/repo".into(),
            source: StorageError::new(
                StorageErrorKind::NotFound,
                "write packs/a5/a5f0",
                "No such file or directory (os error 2)",
            ),
        };
        assert_eq!(gone.kind(), ErrorKind::Corrupt);
        let e = vanished_under_backup(gone);
        assert_eq!(e.kind(), ErrorKind::Interference);
        assert!(e.is_retryable());
        let text = e.to_string();
        assert!(text.contains("write packs/a5/a5f0"), "{text}");
        assert!(text.contains("safety window"), "{text}");
        let other = vanished_under_backup(Error::Usage("x".into()));
        assert_eq!(other.kind(), ErrorKind::Usage);
        let slow = vanished_under_backup(Error::Storage {
            location: "/repo".into(),
            source: StorageError::new(StorageErrorKind::Temporary, "write x", "timeout"),
        });
        assert_eq!(slow.kind(), ErrorKind::Storage);
    }
}
