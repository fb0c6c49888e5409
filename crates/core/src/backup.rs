//! Backup: walk, skip unchanged files, chunk, deduplicate, seal in parallel,
//! pack and upload, then write the trees and the snapshot.
//!
//! Stages, each on its own threads and joined by bounded channels, so they
//! overlap and memory does not grow with file size, file count or tree
//! size:
//! - the scanner ([`walk`]) walks in name order, skips unchanged files and
//!   queues the others, running ahead of
//! - the reader pool ([`read`]): read, chunk, hash and claim new chunks,
//!   one result slot per file;
//! - sealing workers: compress and encrypt new chunks into packs, which
//!   upload threads store ([`crate::packer`]);
//! - the assembler (the calling thread): takes the scanner's events in
//!   order, waits for each file's slot and stores each directory's tree
//!   after its entries, then the snapshot.

mod read;
mod walk;

use crate::bufpool::BufferPool;
use crate::error::{Error, Result};
use crate::format::snapshot::{RawPath, Snapshot, Summary, SNAPSHOT_VERSION};
use crate::format::tree::{Node, NodeType, Payload, Tree};
use crate::format::{BlobId, BlobKind, SnapshotId};
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::{hostname, Repository, SnapshotFilter};
use crossbeam_channel::bounded;
use std::collections::HashMap;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Decides which entries a backup leaves out.
pub trait Exclude: Send + Sync {
    /// Whether `path` (absolute, below a backup root) is left out; `meta` is its lstat.
    fn is_excluded(&self, path: &Path, meta: &Metadata) -> bool;
}

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
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The snapshot written.
    pub snapshot: Snapshot,
}

/// Chunk buffers larger than this are freed rather than kept for reuse
/// (chunks average `chunk_avg`, 1 MiB by default; few exceed 4 MiB), so
/// the spare buffers do not ratchet up to the largest chunk seen. It
/// leaves room for zstd's bound on a 4 MiB chunk: at 2 MiB every sealed
/// buffer of a chunk near 2 MiB was freed, and each fresh one cost a page
/// fault per 4 KiB (4-5% of a binary backup's CPU).
const CHUNK_BUFFER_KEEP_MAX: usize = (4 << 20) + (64 << 10);

struct SealJob {
    id: BlobId,
    data: Vec<u8>,
}

/// A directory entry whose node is complete, or a file still being read.
enum Pending {
    Ready(Node),
    /// A file read by the scanner itself (hard links): bytes to count.
    Read {
        node: Node,
        was_file: bool,
        read: u64,
    },
    Reading {
        node: Node,
        path: PathBuf,
        was_file: bool,
        slot: crossbeam_channel::Receiver<read::ReadOutcome>,
    },
}

/// The assembling side of a backup: takes the scanner's events in order,
/// waits for each file's chunks, and stores every directory's tree once its
/// last entry is in (children before parents, so a checkpoint between
/// directories covers every finished one).
struct Assembler<'a> {
    repo: &'a Repository,
    writer: Arc<PackWriter>,
    worker_error: Arc<Mutex<Option<Error>>>,
    progress: Arc<Progress>,
    /// What the assembler counts: dirs, new and changed files, bytes read.
    summary: Summary,
    ckpt: crate::checkpoint::Checkpointer,
    /// Whether the root is a directory (else a synthetic root of the paths).
    root_is_dir: bool,
}

/// A directory being assembled: its node (`None` for the root) and the
/// nodes of the entries in so far.
struct Frame {
    node: Option<Node>,
    nodes: Vec<Node>,
}

/// Backs up `opts.paths` into `repo` and writes a snapshot.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
    let snapshot = backup_unsaved(repo, opts)?;
    let id = repo.save_snapshot(&snapshot)?;
    repo.record_found_damage_or_warn();
    crate::checkpoint::remove_checkpoints(repo, &snapshot)?;
    Ok(BackupResult { id, snapshot })
}

/// Backs up like [`backup`] but returns the snapshot without writing it, for callers that
/// record what happens after the data is stored (a post-exec hook's outcome) before saving
/// it with [`Repository::save_snapshot`]. Data, trees and index segments are already in the
/// repository when this returns; until the snapshot is saved only the backup's last
/// checkpoint references them: save it promptly (well within the GC safety window), then
/// call [`crate::checkpoint::remove_checkpoints`].
pub fn backup_unsaved(repo: &Repository, opts: &BackupOptions) -> Result<Snapshot> {
    let started = Instant::now();
    let time = chrono::Utc::now();
    if opts.paths.is_empty() {
        return Err(Error::Usage(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut paths = Vec::new();
    let mut all_dirs = true;
    for p in &opts.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        all_dirs &= std::fs::symlink_metadata(&abs)
            .map_err(|e| Error::io(&abs, e))?
            .is_dir();
        paths.push(abs);
    }
    // One directory is the snapshot's root itself; anything else becomes
    // the entries of a synthetic root.
    let root_is_dir = paths.len() == 1 && all_dirs;
    let host = opts.host.clone().unwrap_or_else(hostname);
    let source = opts.source.clone().unwrap_or_else(|| {
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    });
    let filter = SnapshotFilter {
        source: Some(source.clone()),
        host: Some(host.clone()),
        tags: Vec::new(),
    };
    let earlier = match &opts.parent {
        ParentChoice::None => Vec::new(),
        _ => repo.list_snapshots()?,
    };
    let parent_id = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Given(id) => Some(*id),
        ParentChoice::Auto => earlier
            .iter()
            .rev()
            .find(|(_, s)| s.complete && filter.matches(s))
            .map(|(id, _)| *id),
    };
    // A run that was killed left a checkpoint: the tree as far as it got.
    // It is matched first, so the files it holds are not read again.
    let resumed = earlier
        .iter()
        .rev()
        .find(|(_, s)| !s.complete && filter.matches(s))
        .map(|(id, _)| *id);
    let mut parents = Vec::new();
    if let Some(id) = resumed {
        if let Some(tree) = parent_root(repo, &id, "checkpoint")? {
            tracing::info!("resuming from checkpoint {}", id.short());
            parents.push(tree);
        }
    }
    if let Some(id) = parent_id {
        parents.extend(parent_root(repo, &id, "parent snapshot")?);
    }

    let template = Snapshot {
        version: SNAPSHOT_VERSION,
        time,
        host: host.clone(),
        source: source.clone(),
        paths: paths.iter().cloned().map(RawPath).collect(),
        tags: opts.tags.clone(),
        tree: BlobId::default(),
        parent: parent_id,
        complete: false,
        summary: Summary::default(),
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        excludes: opts.exclude_rules.clone(),
        hooks: Vec::new(),
        damaged_root: None,
    };
    let ckpt = crate::checkpoint::Checkpointer::new(repo, opts.checkpoint, template)?;

    // Totals are counted only for someone watching progress: the count
    // stats every entry a second time.
    let scan = opts
        .progress
        .as_ref()
        .map(|p| spawn_scan(paths.clone(), opts.exclude.clone(), p.clone()))
        .transpose()?;
    let progress = opts.progress.clone().unwrap_or_default();

    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let writer = Arc::new(PackWriter::new(repo, opts.uploaders)?);
    let (seal_tx, seal_rx) = bounded::<SealJob>(workers);
    // Chunk and sealed-blob buffers in flight: the queue, one being sealed
    // (plain and sealed) per worker, one being sent per reader.
    let bufs = Arc::new(BufferPool::new(workers * 4, CHUNK_BUFFER_KEEP_MAX));
    let worker_error: Arc<Mutex<Option<Error>>> = Arc::default();
    let seal_threads: Vec<_> = (0..workers)
        .map(|i| {
            let rx = seal_rx.clone();
            let repo = repo.clone();
            let writer = writer.clone();
            let err = worker_error.clone();
            let bufs = bufs.clone();
            std::thread::Builder::new()
                .name(format!("cairn-seal-{i}"))
                .spawn(move || {
                    for job in rx {
                        if let Err(e) = seal_chunk(&repo, &writer, &bufs, job.id, &job.data) {
                            crate::sync::lock(&err).get_or_insert(e);
                        }
                        bufs.give(job.data);
                    }
                })
                .map_err(Error::spawn("sealing"))
        })
        .collect::<Result<_>>()?;

    let reader = read::ReadCtx {
        repo: repo.clone(),
        bufs,
        writer: writer.clone(),
        seal_tx,
        worker_error: worker_error.clone(),
        progress: progress.clone(),
    };
    let pool = read::ReaderPool::new(&reader, workers)?;
    let (events, events_rx) = bounded(walk::EVENTS_AHEAD);
    let scanner = walk::Scanner {
        repo,
        writer: writer.clone(),
        worker_error: worker_error.clone(),
        exclude: opts.exclude.clone(),
        progress: progress.clone(),
        reader,
        pool,
        events,
        summary: Summary::default(),
        hardlinks: HashMap::new(),
    };
    let mut assembler = Assembler {
        repo,
        writer: writer.clone(),
        worker_error: worker_error.clone(),
        progress: progress.clone(),
        summary: Summary::default(),
        ckpt,
        root_is_dir,
    };
    let (walked, scanned) = std::thread::scope(|s| {
        let scan = std::thread::Builder::new()
            .name("cairn-walk".into())
            .spawn_scoped(s, || scanner.run(&paths, &parents, root_is_dir))
            .map_err(Error::spawn("walk"))?;
        let walked = assembler.run(events_rx);
        Ok::<_, Error>((walked, scan.join()))
    })?;
    let scanned = scanned.map_err(|_| Error::Internal("the walk thread panicked".into()))?;
    let Assembler {
        mut summary,
        writer: assembler_writer,
        mut ckpt,
        ..
    } = assembler;
    summary.files_unchanged += scanned.files_unchanged;
    summary.others += scanned.others;
    summary.bytes_total += scanned.bytes_total;
    drop(assembler_writer);
    for t in seal_threads {
        let _ = t.join();
    }
    if let Some(scan) = scan {
        let _ = scan.join();
    }
    // A worker's error is the cause; the walk only saw that workers stopped.
    if let Some(e) = crate::sync::lock(&worker_error).take() {
        return Err(e);
    }
    let root = walked?;
    let writer =
        Arc::try_unwrap(writer).map_err(|_| Error::Internal("pack writer still shared".into()))?;
    // Every blob the snapshot references must sit in an unplanned pack.
    writer.sync()?;
    ckpt.protect(repo, &writer, &[root])?;
    let stats = writer.finish()?;
    summary.blobs_added = stats.blobs;
    summary.bytes_added = stats.stored_bytes;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    summary.errors = progress.errors.load(Ordering::Relaxed);
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time,
        host,
        source,
        paths: paths.into_iter().map(RawPath).collect(),
        tags: opts.tags.clone(),
        tree: root,
        parent: parent_id,
        complete: true,
        summary,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        excludes: opts.exclude_rules.clone(),
        hooks: opts.hooks.clone(),
        damaged_root: None,
    };
    Ok(snapshot)
}

/// The root tree of snapshot `id`, to match entries against. One that
/// cannot be read only costs speed: every file is read again, and what the
/// backup meets is recorded as damage.
fn parent_root(repo: &Repository, id: &SnapshotId, what: &str) -> Result<Option<Tree>> {
    match repo
        .load_snapshot(id)
        .and_then(|snap| repo.load_tree(&snap.tree))
    {
        Ok(tree) => {
            // Its trees arrive in a few parallel reads instead of one
            // round trip per directory during the walk.
            crate::prefetch::prefetch_subtrees(repo, &tree)?;
            Ok(Some(tree))
        }
        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
            tracing::warn!(
                "{what} {} cannot be read ({e}); reading its files again",
                id.short()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Seals a claimed data chunk into a pooled buffer and adds it to a pack:
/// the work of a sealing thread, and of a reader for a small chunk.
fn seal_chunk(
    repo: &Repository,
    writer: &PackWriter,
    bufs: &BufferPool,
    id: BlobId,
    data: &[u8],
) -> Result<()> {
    // Room for the envelope's compression byte, nonce and tag, should the
    // chunk not compress.
    let mut stored = bufs.take(data.len() + 64);
    repo.seal_blob_into(BlobKind::Data, id, data, &mut stored);
    let added = writer.add_sealed(BlobKind::Data, id, &stored, data.len() as u32);
    bufs.give(stored);
    added
}

/// Fails once a sealing worker has failed. The error stays in the slot:
/// the backup reports it at the end, whichever thread noticed first.
fn workers_ok(worker_error: &Mutex<Option<Error>>) -> Result<()> {
    if crate::sync::lock(worker_error).is_some() {
        return Err(Error::Internal("sealing workers stopped".into()));
    }
    Ok(())
}

/// Logs and counts an entry the backup leaves out because it cannot be read.
fn skip(progress: &Progress, path: &Path, err: &std::io::Error) {
    tracing::warn!("skipping {}: {err}", path.display());
    progress.errors.fetch_add(1, Ordering::Relaxed);
}

/// Counts files and bytes to back up, for progress totals.
fn spawn_scan(
    paths: Vec<PathBuf>,
    exclude: Option<Arc<dyn Exclude>>,
    progress: Arc<Progress>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cairn-scan".into())
        .spawn(move || {
            let mut stack = paths;
            while let Some(p) = stack.pop() {
                let Ok(meta) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if meta.is_dir() {
                    if let Ok(rd) = std::fs::read_dir(&p) {
                        for e in rd.flatten() {
                            let path = e.path();
                            let Ok(m) = std::fs::symlink_metadata(&path) else {
                                continue;
                            };
                            if exclude.as_ref().is_some_and(|x| x.is_excluded(&path, &m)) {
                                continue;
                            }
                            if m.is_dir() {
                                stack.push(path);
                            } else if m.is_file() {
                                progress.files_total.fetch_add(1, Ordering::Relaxed);
                                progress.bytes_total.fetch_add(m.len(), Ordering::Relaxed);
                            }
                        }
                    }
                } else if meta.is_file() {
                    progress.files_total.fetch_add(1, Ordering::Relaxed);
                    progress
                        .bytes_total
                        .fetch_add(meta.len(), Ordering::Relaxed);
                }
            }
            progress.scan_done.store(true, Ordering::Relaxed);
        })
        .map_err(Error::spawn("scan"))
}

/// Whether a file may keep its parent entry's content: same size, times
/// and inode, and the entry is not one `repair snapshots` filled with holes
/// (those are read again, so damage is never inherited).
fn file_unchanged(node: &Node, old: &Node) -> bool {
    old.kind == NodeType::File
        && !old
            .xattrs
            .iter()
            .any(|(k, _)| k == crate::repair::DAMAGED_XATTR)
        && old.size == node.size
        && old.mtime_ns == node.mtime_ns
        && old.ctime_ns == node.ctime_ns
        && old.inode == node.inode
}

impl Assembler<'_> {
    fn check_workers(&self) -> Result<()> {
        workers_ok(&self.worker_error)
    }

    /// Consumes the walk up to the root's `Leave`; returns the root tree.
    fn run(&mut self, events: crossbeam_channel::Receiver<walk::Event>) -> Result<BlobId> {
        let mut stack = vec![Frame {
            node: None,
            nodes: Vec::new(),
        }];
        loop {
            let event = events
                .recv()
                .map_err(|_| Error::Internal("the walk ended early".into()))?;
            let top = stack
                .last_mut()
                .expect("the root frame stays until its Leave");
            match event {
                walk::Event::Enter(node) => {
                    self.check_workers()?;
                    stack.push(Frame {
                        node: Some(node),
                        nodes: Vec::new(),
                    });
                }
                walk::Event::Entry(pending) => {
                    if let Some(node) = self.resolve(pending)? {
                        top.nodes.push(node);
                    }
                }
                walk::Event::Leave => {
                    let frame = stack.pop().expect("a frame per Enter");
                    if !stack.is_empty() || self.root_is_dir {
                        self.summary.dirs += 1;
                    }
                    let id = self.store_tree(frame.nodes, stack.is_empty())?;
                    match (stack.last_mut(), frame.node) {
                        (Some(parent), Some(mut node)) => {
                            node.payload = Payload::Dir(id);
                            parent.nodes.push(node);
                        }
                        _ => return Ok(id),
                    }
                    self.maybe_checkpoint(&stack)?;
                }
                walk::Event::Failed(e) => return Err(e),
            }
        }
    }

    /// Stores one directory's tree (the synthetic root of several paths is
    /// sorted here: its entries come in the order the paths were given).
    fn store_tree(&self, mut nodes: Vec<Node>, is_root: bool) -> Result<BlobId> {
        if is_root && !self.root_is_dir {
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let (id, _) = self
            .writer
            .add_plain(BlobKind::Tree, &Tree { nodes }.encode())?;
        Ok(id)
    }

    /// Writes a checkpoint when one is due (between directories). Its tree
    /// is the open directories with the entries they have so far, so a
    /// re-run after a crash reuses every finished file and directory.
    fn maybe_checkpoint(&mut self, stack: &[Frame]) -> Result<()> {
        if !self.ckpt.due(self.writer.stats().blobs) {
            return Ok(());
        }
        self.writer.drain_claims(|| self.check_workers())?;
        let mut partial = None;
        let mut below: Option<Node> = None;
        for (depth, frame) in stack.iter().enumerate().rev() {
            let mut nodes = frame.nodes.clone();
            // The open directory below sorts after every finished entry.
            nodes.extend(below.take());
            let id = self.store_tree(nodes, depth == 0)?;
            match &frame.node {
                Some(node) => {
                    let mut node = node.clone();
                    node.payload = Payload::Dir(id);
                    below = Some(node);
                }
                None => partial = Some(id),
            }
        }
        let Some(partial) = partial else {
            return Ok(());
        };
        self.ckpt
            .write(self.repo, &self.writer, partial, &self.summary)?;
        Ok(())
    }

    /// A finished entry's node: waits for a file being read; `None` when
    /// the file could not be read and is skipped.
    fn resolve(&mut self, pending: Pending) -> Result<Option<Node>> {
        let (mut node, path, was_file, slot) = match pending {
            Pending::Ready(node) => return Ok(Some(node)),
            Pending::Read {
                node,
                was_file,
                read,
            } => {
                self.count_read(was_file, read);
                self.progress.file_done();
                return Ok(Some(node));
            }
            Pending::Reading {
                node,
                path,
                was_file,
                slot,
            } => (node, path, was_file, slot),
        };
        let outcome = read::wait(&slot);
        if matches!(outcome, read::ReadOutcome::Stopped) {
            self.check_workers()?;
        }
        let Some((chunks, read)) = read::into_result(outcome, |e| self.skip(&path, e))? else {
            return Ok(None);
        };
        self.count_read(was_file, read);
        node.size = read;
        node.payload = Payload::File(walk::content_from_chunks(&self.writer, chunks)?);
        self.progress.file_done();
        Ok(Some(node))
    }

    fn count_read(&mut self, was_file: bool, read: u64) {
        self.summary.bytes_read += read;
        if was_file {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
    }

    fn skip(&self, path: &Path, err: &std::io::Error) {
        skip(&self.progress, path, err);
    }
}

/// Whether every byte is zero. Checks 4 KiB blocks word-wise and stops at
/// the first block with data, so non-zero chunks cost little.
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096).all(|block| {
        let mut words = block.chunks_exact(16);
        let mut acc = 0u128;
        for w in &mut words {
            acc |= u128::from_ne_bytes(w.try_into().expect("16 bytes"));
        }
        acc == 0 && words.remainder().iter().all(|&b| b == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 10_000]));
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert!(!is_zero(&v));
        v[9_999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
