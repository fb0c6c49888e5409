//! Backup: walk, skip unchanged files, chunk, deduplicate, seal in parallel,
//! pack and upload, then write the trees and the snapshot.
//!
//! The walk runs on one thread in name order so trees come out sorted; file
//! content is read, chunked and hashed on a pool of reader threads (see
//! [`read`]) with one result slot per file, and new chunks go through a
//! bounded channel to sealing workers, so memory does not grow with file
//! size or tree size.

mod read;

use crate::bufpool::BufferPool;
use crate::error::{Error, Result};
use crate::format::snapshot::{RawPath, Snapshot, Summary, SNAPSHOT_VERSION};
use crate::format::tree::{
    encode_list, ChunkRef, Content, ListRef, Node, NodeType, Payload, Tree, INLINE_CHUNKS_MAX,
    LIST_CHUNKS_MAX,
};
use crate::format::{BlobId, BlobKind, SnapshotId};
use crate::fsmeta::{node_from_meta, read_xattrs};
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::{hostname, Repository, SnapshotFilter};
use crossbeam_channel::bounded;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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
/// (chunks average `chunk_avg`, 1 MiB by default; few exceed 2 MiB), so
/// the spare buffers do not ratchet up to the largest chunk seen.
const CHUNK_BUFFER_KEEP_MAX: usize = 2 << 20;

struct SealJob {
    id: BlobId,
    data: Vec<u8>,
}

/// A directory entry whose node is complete, or a file still being read.
enum Pending {
    Ready(Node),
    Reading {
        node: Node,
        path: PathBuf,
        was_file: bool,
        slot: crossbeam_channel::Receiver<read::ReadOutcome>,
    },
}

struct Walker<'a> {
    repo: &'a Repository,
    writer: Arc<PackWriter>,
    worker_error: Arc<Mutex<Option<Error>>>,
    exclude: Option<Arc<dyn Exclude>>,
    progress: Arc<Progress>,
    summary: Summary,
    ckpt: crate::checkpoint::Checkpointer,
    refs: crate::checkpoint::Refs,
    hardlinks: HashMap<(u64, u64), Content>,
    reader: read::ReadCtx,
    pool: read::ReaderPool,
}

/// Backs up `opts.paths` into `repo` and writes a snapshot.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
    let snapshot = backup_unsaved(repo, opts)?;
    let id = repo.save_snapshot(&snapshot)?;
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
    for p in &opts.paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        std::fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        paths.push(abs);
    }
    let host = opts.host.clone().unwrap_or_else(hostname);
    let source = opts.source.clone().unwrap_or_else(|| {
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    });
    let parent_id = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Given(id) => Some(*id),
        ParentChoice::Auto => {
            let filter = SnapshotFilter {
                source: Some(source.clone()),
                host: Some(host.clone()),
                tags: Vec::new(),
            };
            repo.list_snapshots()?
                .into_iter()
                .rev()
                .find(|(_, s)| s.complete && filter.matches(s))
                .map(|(id, _)| id)
        }
    };
    let parent_tree = match parent_id {
        Some(id) => {
            let snap = repo.load_snapshot(&id)?;
            Some(repo.load_tree(&snap.tree)?)
        }
        None => None,
    };

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
    };
    let ckpt = crate::checkpoint::Checkpointer::new(repo, opts.checkpoint, template)?;

    let progress = opts.progress.clone().unwrap_or_default();
    let scan = spawn_scan(paths.clone(), opts.exclude.clone(), progress.clone());

    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    // A local file system stores a pack in milliseconds: one uploader keeps
    // up and holds one pack buffer. Object stores get two PUTs in flight.
    let uploaders = if opts.uploaders == 0 {
        let location = repo.location();
        if !location.contains("://") || location.starts_with("file://") {
            1
        } else {
            2
        }
    } else {
        opts.uploaders
    };
    let writer = Arc::new(PackWriter::new(repo, uploaders));
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
                        let mut stored = bufs.take(job.data.len() + 64);
                        repo.seal_blob_into(BlobKind::Data, job.id, &job.data, &mut stored);
                        if let Err(e) = writer.add_sealed(
                            BlobKind::Data,
                            job.id,
                            &stored,
                            job.data.len() as u32,
                        ) {
                            err.lock().expect("lock").get_or_insert(e);
                        }
                        bufs.give(stored);
                        bufs.give(job.data);
                    }
                })
                .expect("spawn seal thread")
        })
        .collect();

    let reader = read::ReadCtx {
        repo: repo.clone(),
        bufs,
        writer: writer.clone(),
        seal_tx,
        worker_error: worker_error.clone(),
        progress: progress.clone(),
    };
    let pool = read::ReaderPool::new(&reader, workers);
    let mut walker = Walker {
        repo,
        writer: writer.clone(),
        worker_error: worker_error.clone(),
        exclude: opts.exclude.clone(),
        progress: progress.clone(),
        summary: Summary::default(),
        hardlinks: HashMap::new(),
        reader,
        pool,
        ckpt,
        refs: Default::default(),
    };
    let walked = walker.root_tree(&paths, parent_tree.as_ref());
    let Walker {
        mut summary,
        writer: walker_writer,
        reader,
        pool,
        mut ckpt,
        ..
    } = walker;
    // Readers hold the only senders to the sealing workers.
    pool.finish();
    drop(reader);
    drop(walker_writer);
    for t in seal_threads {
        let _ = t.join();
    }
    let _ = scan.join();
    let root = walked?;
    if let Some(e) = worker_error.lock().expect("lock").take() {
        return Err(e);
    }
    let writer =
        Arc::try_unwrap(writer).map_err(|_| Error::Usage("pack writer still shared".into()))?;
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
    };
    Ok(snapshot)
}

/// Counts files and bytes to back up, for progress totals.
fn spawn_scan(
    paths: Vec<PathBuf>,
    exclude: Option<Arc<dyn Exclude>>,
    progress: Arc<Progress>,
) -> std::thread::JoinHandle<()> {
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
        .expect("spawn scan thread")
}

fn file_unchanged(node: &Node, old: &Node) -> bool {
    old.kind == NodeType::File
        && old.size == node.size
        && old.mtime_ns == node.mtime_ns
        && old.ctime_ns == node.ctime_ns
        && old.inode == node.inode
}

impl Walker<'_> {
    fn check_workers(&self) -> Result<()> {
        match self.worker_error.lock().expect("lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn root_tree(&mut self, paths: &[PathBuf], parent: Option<&Tree>) -> Result<BlobId> {
        if let [only] = paths {
            let meta = std::fs::symlink_metadata(only).map_err(|e| Error::io(only, e))?;
            if meta.is_dir() {
                return self.dir(only, parent);
            }
        }
        let mut pending = Vec::new();
        let mut names: Vec<OsString> = Vec::new();
        for p in paths {
            let name = p
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| OsString::from("root"));
            if names.contains(&name) {
                return Err(Error::Usage(format!(
                    "two paths end in {:?}; back them up separately or from a common parent",
                    name
                )));
            }
            names.push(name.clone());
            let meta = std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
            let old = parent.and_then(|t| t.get(name.as_bytes()));
            if let Some(node) = self.entry(p, &name, &meta, old)? {
                pending.push(node);
            }
        }
        let mut nodes = self.resolve(pending)?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.store_tree(&Tree { nodes })
    }

    fn store_tree(&mut self, tree: &Tree) -> Result<BlobId> {
        let (id, _) = self.writer.add_plain(BlobKind::Tree, &tree.encode())?;
        Ok(id)
    }

    fn dir(&mut self, path: &Path, parent: Option<&Tree>) -> Result<BlobId> {
        self.check_workers()?;
        let mark = self.refs.enter();
        let mut entries: Vec<(OsString, PathBuf)> = match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(|e| match e {
                    Ok(e) => Some((e.file_name(), e.path())),
                    Err(err) => {
                        self.skip(path, &err);
                        None
                    }
                })
                .collect(),
            Err(err) => {
                self.skip(path, &err);
                Vec::new()
            }
        };
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut pending = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(err) => {
                    self.skip(&child, &err);
                    continue;
                }
            };
            if self
                .exclude
                .as_ref()
                .is_some_and(|x| x.is_excluded(&child, &meta))
            {
                continue;
            }
            let old = parent.and_then(|t| t.get(name.as_bytes()));
            if let Some(node) = self.entry(&child, &name, &meta, old)? {
                pending.push(node);
            }
        }
        let nodes = self.resolve(pending)?;
        self.summary.dirs += 1;
        let id = self.store_tree(&Tree { nodes })?;
        self.refs.leave(mark, id);
        self.maybe_checkpoint()?;
        Ok(id)
    }

    /// Writes a checkpoint when one is due (between directories: every
    /// finished directory is then covered by it).
    fn maybe_checkpoint(&mut self) -> Result<()> {
        if !self.ckpt.due(self.writer.stats().blobs) {
            return Ok(());
        }
        self.writer.drain_claims(|| self.check_workers())?;
        self.ckpt
            .write(self.repo, &self.writer, &self.refs, &self.summary)?;
        Ok(())
    }

    /// Waits for the files of one directory still being read, in order.
    fn resolve(&mut self, pending: Vec<Pending>) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(pending.len());
        for p in pending {
            let (mut node, path, was_file, slot) = match p {
                Pending::Ready(node) => {
                    nodes.push(node);
                    continue;
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
                continue;
            };
            self.count_read(was_file, read);
            node.size = read;
            node.payload = Payload::File(self.content_from_chunks(chunks)?);
            self.progress.file_done();
            nodes.push(node);
        }
        Ok(nodes)
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
        tracing::warn!("skipping {}: {err}", path.display());
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Builds the node of one entry (a file maybe still being read); `None`
    /// when it vanished or cannot be read.
    fn entry(
        &mut self,
        path: &Path,
        name: &std::ffi::OsStr,
        meta: &Metadata,
        old: Option<&Node>,
    ) -> Result<Option<Pending>> {
        let mut node = node_from_meta(name, meta);
        node.xattrs = read_xattrs(path);
        match node.kind {
            NodeType::Dir => {
                let old_tree = match old.map(|o| &o.payload) {
                    Some(Payload::Dir(id)) => self.repo.load_tree(id).ok(),
                    _ => None,
                };
                node.payload = Payload::Dir(self.dir(path, old_tree.as_ref())?);
            }
            NodeType::Symlink => match std::fs::read_link(path) {
                Ok(t) => {
                    node.payload = Payload::Symlink(t.as_os_str().as_bytes().to_vec());
                    self.summary.others += 1;
                }
                Err(e) => {
                    self.skip(path, &e);
                    return Ok(None);
                }
            },
            NodeType::File => {
                return self.file(path, meta, node, old);
            }
            _ => self.summary.others += 1,
        }
        Ok(Some(Pending::Ready(node)))
    }

    fn content_known(&self, content: &Content) -> Result<bool> {
        match content {
            Content::Inline(chunks) => {
                for c in chunks {
                    if !c.is_hole() && !self.writer.contains(&c.id)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Content::Lists(lists) => {
                for l in lists {
                    if !self.writer.contains(&l.id)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// A file's node: reused from the parent when unchanged, else read on
    /// the pool (hard-linked files inline, so later links find their content).
    fn file(
        &mut self,
        path: &Path,
        meta: &Metadata,
        mut node: Node,
        old: Option<&Node>,
    ) -> Result<Option<Pending>> {
        let size = meta.size();
        self.summary.bytes_total += size;
        let reuse = |node: &mut Node, content: &Content| {
            node.size = size;
            node.payload = Payload::File(content.clone());
        };
        if meta.nlink() > 1 {
            if let Some(content) = self.hardlinks.get(&(meta.dev(), meta.ino())) {
                self.summary.files_unchanged += 1;
                reuse(&mut node, content);
                self.progress.file_done();
                return Ok(Some(Pending::Ready(node)));
            }
        }
        if let Some(old) = old {
            if let Payload::File(content) = &old.payload {
                if file_unchanged(&node, old) && self.content_known(content)? {
                    self.summary.files_unchanged += 1;
                    self.progress.add_bytes(size);
                    self.remember_link(meta, content);
                    reuse(&mut node, content);
                    self.progress.file_done();
                    return Ok(Some(Pending::Ready(node)));
                }
            }
        }
        let was_file = old.is_some_and(|o| o.kind == NodeType::File);
        if meta.nlink() <= 1 {
            let slot = self.pool.submit(path.to_path_buf());
            return Ok(Some(Pending::Reading {
                node,
                path: path.to_path_buf(),
                was_file,
                slot,
            }));
        }
        self.check_workers()?;
        let outcome = read::read_file(&self.reader, path);
        if matches!(outcome, read::ReadOutcome::Stopped) {
            self.check_workers()?;
        }
        let Some((chunks, read)) = read::into_result(outcome, |e| self.skip(path, e))? else {
            return Ok(None);
        };
        self.count_read(was_file, read);
        let content = self.content_from_chunks(chunks)?;
        self.remember_link(meta, &content);
        node.size = read;
        node.payload = Payload::File(content);
        self.progress.file_done();
        Ok(Some(Pending::Ready(node)))
    }

    fn remember_link(&mut self, meta: &Metadata, content: &Content) {
        if meta.nlink() > 1 {
            self.hardlinks
                .insert((meta.dev(), meta.ino()), content.clone());
        }
    }

    fn content_from_chunks(&mut self, chunks: Vec<ChunkRef>) -> Result<Content> {
        if chunks.len() <= INLINE_CHUNKS_MAX {
            return Ok(Content::Inline(chunks));
        }
        let mut lists = Vec::new();
        for part in chunks.chunks(LIST_CHUNKS_MAX) {
            let (id, _) = self.writer.add_plain(BlobKind::List, &encode_list(part))?;
            lists.push(ListRef {
                id,
                chunks: part.len() as u64,
                bytes: part.iter().map(|c| c.len as u64).sum(),
            });
        }
        Ok(Content::Lists(lists))
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
