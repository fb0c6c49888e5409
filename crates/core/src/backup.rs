//! Backup: walk, skip unchanged files, chunk, deduplicate, seal in parallel,
//! pack and upload, then write the trees and the snapshot.
//!
//! The walk runs on one thread in name order so trees come out sorted; file
//! content is chunked and hashed there, and new chunks go through a bounded
//! channel to sealing workers, so memory does not grow with file size or
//! tree size.

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
use crossbeam_channel::{bounded, Sender};
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
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupResult {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The snapshot written.
    pub snapshot: Snapshot,
}

struct SealJob {
    id: BlobId,
    data: Vec<u8>,
}

struct Walker<'a> {
    repo: &'a Repository,
    writer: Arc<PackWriter>,
    seal_tx: Sender<SealJob>,
    worker_error: Arc<Mutex<Option<Error>>>,
    exclude: Option<Arc<dyn Exclude>>,
    progress: Arc<Progress>,
    summary: Summary,
    hardlinks: HashMap<(u64, u64), Content>,
}

/// Backs up `opts.paths` into `repo` and writes a snapshot.
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
    let snapshot = backup_unsaved(repo, opts)?;
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupResult { id, snapshot })
}

/// Backs up like [`backup`] but returns the snapshot without writing it, for callers that
/// record what happens after the data is stored (a post-exec hook's outcome) before saving
/// it with [`Repository::save_snapshot`]. Data, trees and index segments are already in the
/// repository when this returns; until the snapshot is saved nothing references them.
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

    let progress = opts.progress.clone().unwrap_or_default();
    let scan = spawn_scan(paths.clone(), opts.exclude.clone(), progress.clone());

    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let uploaders = if opts.uploaders == 0 {
        2
    } else {
        opts.uploaders
    };
    let writer = Arc::new(PackWriter::new(repo, uploaders));
    let (seal_tx, seal_rx) = bounded::<SealJob>(workers * 2);
    let worker_error: Arc<Mutex<Option<Error>>> = Arc::default();
    let seal_threads: Vec<_> = (0..workers)
        .map(|i| {
            let rx = seal_rx.clone();
            let repo = repo.clone();
            let writer = writer.clone();
            let err = worker_error.clone();
            std::thread::Builder::new()
                .name(format!("cairn-seal-{i}"))
                .spawn(move || {
                    for job in rx {
                        let stored = repo.seal_blob_with_id(BlobKind::Data, job.id, &job.data);
                        if let Err(e) = writer.add_sealed(
                            BlobKind::Data,
                            job.id,
                            &stored,
                            job.data.len() as u32,
                        ) {
                            err.lock().expect("lock").get_or_insert(e);
                        }
                    }
                })
                .expect("spawn seal thread")
        })
        .collect();

    let mut walker = Walker {
        repo,
        writer: writer.clone(),
        seal_tx,
        worker_error: worker_error.clone(),
        exclude: opts.exclude.clone(),
        progress: progress.clone(),
        summary: Summary::default(),
        hardlinks: HashMap::new(),
    };
    let walked = walker.root_tree(&paths, parent_tree.as_ref());
    let Walker {
        seal_tx,
        mut summary,
        writer: walker_writer,
        ..
    } = walker;
    drop(seal_tx);
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
        let mut nodes: Vec<Node> = Vec::new();
        for p in paths {
            let name = p
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| OsString::from("root"));
            if nodes.iter().any(|n| n.name == name.as_bytes()) {
                return Err(Error::Usage(format!(
                    "two paths end in {:?}; back them up separately or from a common parent",
                    name
                )));
            }
            let meta = std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
            let old = parent.and_then(|t| t.get(name.as_bytes()));
            if let Some(node) = self.entry(p, &name, &meta, old)? {
                nodes.push(node);
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.store_tree(&Tree { nodes })
    }

    fn store_tree(&mut self, tree: &Tree) -> Result<BlobId> {
        let (id, _) = self.writer.add_plain(BlobKind::Tree, &tree.encode())?;
        Ok(id)
    }

    fn dir(&mut self, path: &Path, parent: Option<&Tree>) -> Result<BlobId> {
        self.check_workers()?;
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
        let mut nodes = Vec::with_capacity(entries.len());
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
                nodes.push(node);
            }
        }
        self.summary.dirs += 1;
        self.store_tree(&Tree { nodes })
    }

    fn skip(&self, path: &Path, err: &std::io::Error) {
        tracing::warn!("skipping {}: {err}", path.display());
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Builds the node of one entry; `None` when it vanished or cannot be read.
    fn entry(
        &mut self,
        path: &Path,
        name: &std::ffi::OsStr,
        meta: &Metadata,
        old: Option<&Node>,
    ) -> Result<Option<Node>> {
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
                let Some((content, size)) = self.file(path, meta, &node, old)? else {
                    return Ok(None);
                };
                node.size = size;
                node.payload = Payload::File(content);
                self.progress.file_done();
            }
            _ => self.summary.others += 1,
        }
        Ok(Some(node))
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

    fn file(
        &mut self,
        path: &Path,
        meta: &Metadata,
        node: &Node,
        old: Option<&Node>,
    ) -> Result<Option<(Content, u64)>> {
        let size = meta.size();
        self.summary.bytes_total += size;
        if meta.nlink() > 1 {
            if let Some(content) = self.hardlinks.get(&(meta.dev(), meta.ino())) {
                self.summary.files_unchanged += 1;
                return Ok(Some((content.clone(), size)));
            }
        }
        if let Some(old) = old {
            if let Payload::File(content) = &old.payload {
                if file_unchanged(node, old) && self.content_known(content)? {
                    self.summary.files_unchanged += 1;
                    self.progress.add_bytes(size);
                    self.remember_link(meta, content);
                    return Ok(Some((content.clone(), size)));
                }
            }
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.skip(path, &e);
                return Ok(None);
            }
        };
        let (chunks, read) = match self.chunk_file(file) {
            Ok(r) => r,
            Err(ChunkError::Read(e)) => {
                self.skip(path, &e);
                return Ok(None);
            }
            Err(ChunkError::Repo(e)) => return Err(e),
        };
        if old.is_some_and(|o| o.kind == NodeType::File) {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        let content = self.content_from_chunks(chunks)?;
        self.remember_link(meta, &content);
        Ok(Some((content, read)))
    }

    fn remember_link(&mut self, meta: &Metadata, content: &Content) {
        if meta.nlink() > 1 {
            self.hardlinks
                .insert((meta.dev(), meta.ino()), content.clone());
        }
    }

    fn chunk_file(
        &mut self,
        file: std::fs::File,
    ) -> std::result::Result<(Vec<ChunkRef>, u64), ChunkError> {
        let cfg = self.repo.config();
        let chunker =
            fastcdc::v2020::StreamCDC::new(file, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max);
        let mut chunks = Vec::new();
        let mut total = 0u64;
        for chunk in chunker {
            let chunk = chunk.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => ChunkError::Read(io),
                other => ChunkError::Read(std::io::Error::other(other.to_string())),
            })?;
            let len = chunk.length as u32;
            total += chunk.length as u64;
            self.summary.bytes_read += chunk.length as u64;
            self.progress.add_bytes(chunk.length as u64);
            if is_zero(&chunk.data) {
                chunks.push(ChunkRef::hole(len));
                continue;
            }
            let id = self.repo.blob_id(&chunk.data);
            chunks.push(ChunkRef { id, len });
            if self.writer.claim(&id).map_err(ChunkError::Repo)? {
                self.check_workers().map_err(ChunkError::Repo)?;
                self.seal_tx
                    .send(SealJob {
                        id,
                        data: chunk.data,
                    })
                    .map_err(|_| {
                        ChunkError::Repo(Error::Usage("sealing workers stopped".into()))
                    })?;
            }
        }
        Ok((chunks, total))
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

enum ChunkError {
    Read(std::io::Error),
    Repo(Error),
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
