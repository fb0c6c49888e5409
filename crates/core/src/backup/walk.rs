//! The scanner: walks the source tree on its own thread, ahead of the
//! assembler, and describes it as a stream of [`Event`]s.
//!
//! It does everything that needs no finished tree: list and sort each
//! directory, lstat, exclude, read xattrs and symlinks, match entries
//! against the parent snapshot, skip unchanged files and queue the others
//! on the reader pool. Because it never waits for a file to be read, the
//! readers always have work queued while the assembler waits for results
//! in tree order. The event channel is bounded, so the scanner runs at most
//! that many entries ahead.
//!
//! Invariant: events come in depth-first name order; every `Enter` is
//! matched by one `Leave`, and the walk ends with the `Leave` of the root
//! (or a `Failed`).

use super::list::{list_dir, Lister};
use super::partial::{partial_of, InFlight, Partial};
use super::read::{self, ReadCtx, ReadJob, ReaderPool};
use super::seal::content_from_chunks;
use super::seal::WorkerError;
use crate::error::{Error, Result};
use crate::format::snapshot::Summary;
use crate::format::tree::{Content, Node, NodeType, Payload, Tree};
use crate::fsmeta::{node_from_meta, read_xattrs};
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Decides which entries a backup leaves out.
pub trait Exclude: Send + Sync {
    /// Whether `path` (absolute, below a backup root) is left out; `meta` is its lstat.
    fn is_excluded(&self, path: &Path, meta: &Metadata) -> bool;

    /// Told, before its entries are judged, the names directory `dir`
    /// holds (`has(name)`), so that rules reading files inside it (a
    /// per-directory ignore file) need not look for ones it does not hold.
    fn listed(&self, _dir: &Path, _has: &dyn Fn(&OsStr) -> bool) {}
}

/// Entries the scanner may run ahead of the assembler.
pub(super) const EVENTS_AHEAD: usize = 1024;

/// One step of the walk.
pub(super) enum Event {
    /// A directory (its node, payload still unset); its entries follow up
    /// to the matching `Leave`.
    Enter(Node),
    /// An entry of the current directory.
    Entry(Pending),
    /// The current directory has no more entries.
    Leave,
    /// The walk failed; nothing follows.
    Failed(Error),
}

/// An entry as the scanner hands it on: complete, or a file still being read.
pub(super) enum Pending {
    Ready(Node),
    /// An unchanged file whose content is reused; `keep` registers that
    /// content in flight until the file's directory is stored.
    Reused {
        node: Node,
        keep: Arc<Partial>,
    },
    /// A file read by the scanner itself (hard links): bytes to count.
    /// `chunks` keeps its chunks in flight until its directory is stored.
    Read {
        node: Node,
        was_file: bool,
        read: u64,
        chunks: Arc<Partial>,
    },
    /// A file queued on the reader pool; its outcome arrives on `slot`, its
    /// chunks in `chunks`. `resumed` bytes of it were stored by a killed
    /// run (`chunks` starts with them) and are not read again.
    Reading {
        node: Node,
        path: PathBuf,
        was_file: bool,
        slot: crossbeam_channel::Receiver<read::ReadOutcome>,
        chunks: Arc<Partial>,
        resumed: u64,
    },
}

/// The walking side of a backup.
pub(super) struct Scanner<'a> {
    pub repo: &'a Repository,
    pub writer: Arc<PackWriter>,
    pub errors: WorkerError,
    pub exclude: Option<Arc<dyn Exclude>>,
    pub progress: Arc<Progress>,
    pub reader: ReadCtx,
    pub pool: ReaderPool,
    pub events: Sender<Event>,
    /// What the scanner counts: unchanged files, others, bytes_total.
    pub summary: Summary,
    pub hardlinks: HashMap<(u64, u64), Content>,
    /// Files submitted for reading whose nodes are not yet stored.
    pub in_flight: Arc<InFlight>,
    /// Block devices are read as files of their size (else recorded as
    /// device nodes).
    pub read_devices: bool,
    /// The stored chunks of the current directory's unchanged files.
    pub known: Arc<Known>,
    /// Lists directories ahead (`None`: listed here).
    pub lister: Option<Lister>,
}

/// Blobs found stored together, for a directory's unchanged files: one
/// cache transaction for the directory instead of one per file (each
/// costing two file-lock system calls, more than the lookup itself).
#[derive(Debug, Default)]
pub(super) struct Known {
    /// [`Repository::decisions_epoch`] when they were looked up: the
    /// answer is not used once the plans or the damage records changed.
    epoch: u64,
    present: std::collections::HashSet<crate::format::BlobId>,
}

impl Scanner<'_> {
    /// Walks `paths` (one directory is the root itself; anything else
    /// becomes the entries of a synthetic root) and ends the stream.
    /// `parents` are the root trees entries are matched against, first
    /// match first: the checkpoint a killed run left, then the parent
    /// snapshot.
    pub fn run(mut self, paths: &[PathBuf], parents: &[Tree], root_is_dir: bool) -> Summary {
        let walked = if root_is_dir {
            self.dir(&paths[0], parents)
        } else {
            self.roots(paths, parents)
        };
        if let Err(e) = walked {
            let _ = self.events.send(Event::Failed(e));
        }
        // Readers hold the only senders to the sealing workers: finish them
        // before the caller joins those.
        let Scanner {
            pool,
            reader,
            summary,
            ..
        } = self;
        pool.finish();
        drop(reader);
        summary
    }

    fn emit(&mut self, event: Event) -> Result<()> {
        // The assembler stopped (it failed); its error is the one reported.
        let stopped = |_| Error::Internal("backup stopped".into());
        match self.events.try_send(event) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(event)) => {
                // The assembler is a full channel behind and may be waiting
                // for a file still in the unsent batch: send it before waiting.
                self.pool.flush();
                self.events.send(event).map_err(|e| stopped(e.0))
            }
            Err(TrySendError::Disconnected(event)) => Err(stopped(event)),
        }
    }

    fn check_workers(&self) -> Result<()> {
        self.errors.check()
    }

    fn skip(&self, path: &Path, err: &std::io::Error) {
        self.progress.skip(path, err);
    }

    fn roots(&mut self, paths: &[PathBuf], parents: &[Tree]) -> Result<()> {
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
            let mut meta = std::fs::symlink_metadata(p).map_err(|e| Error::io(p, e))?;
            if self.read_devices && meta.file_type().is_symlink() {
                // `/dev/vg/lv` and `/dev/disk/by-id/...` are links to the device.
                if let Ok(target) = std::fs::metadata(p) {
                    if target.file_type().is_block_device() {
                        meta = target;
                    }
                }
            }
            let olds = matches(parents, &name);
            self.entry(p, &name, &meta, &olds)?;
        }
        self.emit(Event::Leave)
    }

    fn dir(&mut self, path: &Path, parents: &[Tree]) -> Result<()> {
        self.check_workers()?;
        let listed = match self.lister.as_mut().and_then(|l| l.take(path)) {
            Some(listed) => listed,
            None => {
                self.lister = None;
                list_dir(path, self.exclude.as_deref())
            }
        };
        for (path, err) in &listed.skipped {
            self.skip(path, err);
        }
        let listed = listed.entries;
        let known = Arc::new(self.known_content(&listed, parents)?);
        for (name, child, meta) in listed {
            self.known = known.clone();
            let olds = matches(parents, &name);
            self.entry(&child, &name, &meta, &olds)?;
        }
        self.emit(Event::Leave)
    }

    /// The blobs of the files in `listed` unchanged from a parent entry
    /// that are stored, looked up together.
    fn known_content(
        &self,
        listed: &[(OsString, PathBuf, Metadata)],
        parents: &[Tree],
    ) -> Result<Known> {
        let mut ids = Vec::new();
        for (name, _, meta) in listed {
            if !meta.is_file() {
                continue;
            }
            let node = node_from_meta(name, meta);
            for old in matches(parents, name) {
                match &old.payload {
                    Payload::File(Content::Inline(chunks)) if file_unchanged(&node, old) => {
                        ids.extend(chunks.iter().filter(|c| !c.is_hole()).map(|c| c.id));
                    }
                    Payload::File(Content::Lists(lists)) if file_unchanged(&node, old) => {
                        ids.extend(lists.iter().map(|l| l.id));
                    }
                    _ => {}
                }
            }
        }
        if ids.is_empty() {
            return Ok(Known::default());
        }
        let epoch = self.repo.decisions_epoch();
        Ok(Known {
            epoch,
            present: self.repo.present_blobs(&ids)?,
        })
    }

    /// Whether blob `id` is stored: from the directory's lookup while it
    /// holds, else asked alone.
    fn blob_known(&self, id: &crate::format::BlobId) -> Result<bool> {
        if self.known.present.contains(id) && self.known.epoch == self.repo.decisions_epoch() {
            return Ok(true);
        }
        self.writer.contains(id)
    }

    /// Emits one entry: a directory with everything below it, or a node
    /// (a file maybe still being read). Entries that vanished or cannot be
    /// read are skipped.
    fn entry(&mut self, path: &Path, name: &OsStr, meta: &Metadata, olds: &[&Node]) -> Result<()> {
        let mut node = node_from_meta(name, meta);
        // A regular file's changed xattrs are read where its content is,
        // from the open file, when it is read; `file` reads them by path
        // otherwise.
        let mut xattrs_later = false;
        node.xattrs = match olds.iter().find(|old| xattrs_unchanged(&node, old)) {
            Some(old) => old.xattrs.clone(),
            None if node.kind == NodeType::File => {
                xattrs_later = true;
                Vec::new()
            }
            None => read_xattrs(path),
        };
        match node.kind {
            NodeType::Dir => {
                let old_trees: Vec<Tree> = olds
                    .iter()
                    .filter_map(|o| match &o.payload {
                        Payload::Dir(id) => self.repo.load_tree(id).ok(),
                        _ => None,
                    })
                    .collect();
                self.emit(Event::Enter(node))?;
                return self.dir(path, &old_trees);
            }
            NodeType::Symlink => match std::fs::read_link(path) {
                Ok(t) => {
                    node.payload = Payload::Symlink(t.as_os_str().as_bytes().to_vec());
                    self.summary.others += 1;
                }
                Err(e) => {
                    self.skip(path, &e);
                    return Ok(());
                }
            },
            NodeType::File => {
                return match self.file(path, meta, node, olds, xattrs_later)? {
                    Some(pending) => self.emit(Event::Entry(pending)),
                    None => Ok(()),
                };
            }
            NodeType::BlockDev if self.read_devices => {
                return match self.device(path, node, olds) {
                    Some(pending) => self.emit(Event::Entry(pending)),
                    None => Ok(()),
                };
            }
            _ => self.summary.others += 1,
        }
        self.emit(Event::Entry(Pending::Ready(node)))
    }

    fn content_known(&self, content: &Content) -> Result<bool> {
        match content {
            Content::Inline(chunks) => {
                for c in chunks {
                    if !c.is_hole() && !self.blob_known(&c.id)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Content::Lists(lists) => {
                for l in lists {
                    if !self.blob_known(&l.id)? {
                        return Ok(false);
                    }
                }
                // The chunks behind the lists are checked only where damage
                // is recorded: it costs reading the list blobs.
                if !self.repo.has_recorded_damage() {
                    return Ok(true);
                }
                let chunks = match self.repo.chunk_list(content) {
                    Ok(c) => c,
                    Err(e) if e.kind() == crate::ErrorKind::Corrupt => return Ok(false),
                    Err(e) => return Err(e),
                };
                for c in &chunks {
                    if !c.is_hole() && !self.writer.contains(&c.id)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }

    /// A file's node: reused from the first parent entry it is unchanged
    /// from, else queued on the pool (hard-linked files are read here, so
    /// later links find their content).
    fn file(
        &mut self,
        path: &Path,
        meta: &Metadata,
        mut node: Node,
        olds: &[&Node],
        xattrs_later: bool,
    ) -> Result<Option<Pending>> {
        let size = meta.size();
        let nlink = meta.nlink();
        // Read by path unless the file goes to a reader, which reads them
        // from the file it opens.
        if xattrs_later && nlink > 1 {
            node.xattrs = read_xattrs(path);
        }
        self.summary.bytes_total += size;
        let reuse = |mut node: Node, content: &Content, keep: Arc<Partial>| {
            node.size = size;
            node.payload = Payload::File(content.clone());
            Pending::Reused { node, keep }
        };
        if nlink > 1 {
            if let Some(content) = self.hardlinks.get(&(meta.dev(), meta.ino())) {
                self.summary.files_unchanged += 1;
                self.progress.file_done();
                let keep = self.in_flight.register(Partial::reused(content));
                return Ok(Some(reuse(node, content, keep)));
            }
        }
        if let Some((content, keep)) = self.unchanged_content(&node, olds)? {
            if xattrs_later && nlink <= 1 {
                node.xattrs = read_xattrs(path);
            }
            self.summary.files_unchanged += 1;
            self.progress.add_bytes(size);
            self.remember_link(meta, &content);
            self.progress.file_done();
            return Ok(Some(reuse(node, &content, keep)));
        }
        let was_file = olds.iter().any(|o| o.kind == NodeType::File);
        if nlink <= 1 {
            let (chunks, resumed) = self.resumable_prefix(path, &node, olds)?;
            let walked = Some(meta.clone());
            return Ok(Some(self.queue(
                path,
                node,
                was_file,
                chunks,
                (resumed, walked),
                xattrs_later,
            )));
        }
        self.check_workers()?;
        let chunks = self.in_flight.register(Partial::default());
        let job = ReadJob {
            path: path.to_path_buf(),
            chunks: chunks.clone(),
            start: 0,
            walked: Some(meta.clone()),
            xattrs: false,
        };
        let outcome = read::read_file(&self.reader, &job);
        if matches!(outcome, read::ReadOutcome::Stopped) {
            self.check_workers()?;
        }
        let Some(read) = read::into_result(outcome, |e| self.skip(path, e))? else {
            return Ok(None);
        };
        // Copied, not taken: `chunks` keeps them in flight, so checkpoints
        // (on the assembler's thread) protect them until the directory's
        // tree references them.
        let content = content_from_chunks(&self.writer, chunks.snapshot())?;
        self.remember_link(meta, &content);
        node.size = read;
        node.payload = Payload::File(content);
        Ok(Some(Pending::Read {
            node,
            was_file,
            read,
            chunks,
        }))
    }

    /// The content of the first parent entry the file is unchanged from,
    /// if all of it is stored, registered in flight (decided and registered
    /// under the in-flight gate).
    fn unchanged_content(
        &self,
        node: &Node,
        olds: &[&Node],
    ) -> Result<Option<(Content, Arc<Partial>)>> {
        let _deciding = self.in_flight.deciding();
        for old in olds {
            if let Payload::File(content) = &old.payload {
                if file_unchanged(node, old) && self.content_known(content)? {
                    let keep = self.in_flight.register(Partial::reused(content));
                    return Ok(Some((content.clone(), keep)));
                }
            }
        }
        Ok(None)
    }

    /// The file's chunks to start from, registered in flight, and the
    /// offset to read from: where a killed run's checkpoint left the file
    /// half read, when the checkpoint's partial entry was read from the
    /// file as it is now (same size, times and inode) and everything it
    /// holds is still stored; else nothing: read it all. Decided and
    /// registered under the in-flight gate.
    fn resumable_prefix(
        &self,
        path: &Path,
        node: &Node,
        olds: &[&Node],
    ) -> Result<(Arc<Partial>, u64)> {
        let _deciding = self.in_flight.deciding();
        for old in olds {
            let (Some(size_then), Payload::File(content)) = (partial_of(old), &old.payload) else {
                continue;
            };
            let same_file = old.kind == NodeType::File
                && size_then == node.size
                && old.size <= node.size
                && same_times_and_inode(node, old);
            if !same_file || !self.content_known(content)? {
                continue;
            }
            let prefix = match self.repo.chunk_list(content) {
                Ok(c) => c,
                Err(e) if e.kind() == crate::ErrorKind::Corrupt => continue,
                Err(e) => return Err(e),
            };
            let len: u64 = prefix.iter().map(|c| u64::from(c.len)).sum();
            if len != old.size {
                continue;
            }
            tracing::info!(
                "{}: resuming after the {len} bytes a killed run stored",
                path.display()
            );
            return Ok((self.in_flight.register(Partial::starting_with(prefix)), len));
        }
        Ok((self.in_flight.register(Partial::default()), 0))
    }

    /// A block device read as a file of its size. It is always read: a
    /// device's node has no times that follow its content. Its unchanged
    /// blocks deduplicate, so an unchanged device adds nothing.
    fn device(&mut self, path: &Path, mut node: Node, olds: &[&Node]) -> Option<Pending> {
        let size = match device_size(path) {
            Ok(size) => size,
            Err(e) => {
                self.skip(path, &e);
                return None;
            }
        };
        self.summary.bytes_total += size;
        node.kind = NodeType::File;
        node.rdev = 0;
        node.size = size;
        let was_file = olds.iter().any(|o| o.kind == NodeType::File);
        // Never resumed from a checkpoint's prefix either: the node's times
        // do not say whether the blocks before it changed.
        let chunks = self.in_flight.register(Partial::default());
        Some(self.queue(path, node, was_file, chunks, (0, None), false))
    }

    /// Queues the file at `path` on the reader pool, its chunks going to
    /// `chunks` (registered in flight) from byte `resumed` on; its node
    /// waits in the returned entry. `walked` is its lstat, if a file's.
    fn queue(
        &mut self,
        path: &Path,
        node: Node,
        was_file: bool,
        chunks: Arc<Partial>,
        (resumed, walked): (u64, Option<Metadata>),
        xattrs: bool,
    ) -> Pending {
        let job = ReadJob {
            path: path.to_path_buf(),
            chunks: chunks.clone(),
            start: resumed,
            walked,
            xattrs,
        };
        let slot = self.pool.submit(job, node.size.saturating_sub(resumed));
        Pending::Reading {
            node,
            path: path.to_path_buf(),
            was_file,
            slot,
            chunks,
            resumed,
        }
    }

    fn remember_link(&mut self, meta: &Metadata, content: &Content) {
        if meta.nlink() > 1 {
            self.hardlinks
                .insert((meta.dev(), meta.ino()), content.clone());
        }
    }
}

/// The entries named `name` in `parents`, in their order.
fn matches<'t>(parents: &'t [Tree], name: &OsStr) -> Vec<&'t Node> {
    parents
        .iter()
        .filter_map(|t| t.get(name.as_bytes()))
        .collect()
}

/// Whether a file may keep its parent entry's content: same size, times
/// and inode, and the entry is not one `repair snapshots` filled with holes
/// (those are read again, so damage is never inherited).
fn file_unchanged(node: &Node, old: &Node) -> bool {
    old.kind == NodeType::File
        && !carries_marker(old)
        && old.size == node.size
        && same_times_and_inode(node, old)
}

/// Whether `old`'s xattrs are still `node`'s, without reading them (a
/// system call walking the whole path, for every entry of an unchanged
/// tree): the same kind of entry, inode and times. Setting or removing an
/// xattr changes the change time. An entry carrying one of cairn's own
/// markers (a file `repair snapshots` filled with holes, a checkpoint's
/// partial file) has them read again, so a marker is never inherited.
fn xattrs_unchanged(node: &Node, old: &Node) -> bool {
    old.kind == node.kind && same_times_and_inode(node, old) && !carries_marker(old)
}

/// Whether `old` carries one of cairn's own xattrs: filled with holes by
/// `repair snapshots`, or a checkpoint's partial file.
fn carries_marker(old: &Node) -> bool {
    old.xattrs
        .iter()
        .any(|(k, _)| k == crate::repair::DAMAGED_XATTR || k == super::partial::PARTIAL_XATTR)
}

/// Whether `node` and `old` name the same file, untouched since `old` was
/// recorded: the same inode, modification and change times.
fn same_times_and_inode(node: &Node, old: &Node) -> bool {
    old.mtime_ns == node.mtime_ns && old.ctime_ns == node.ctime_ns && old.inode == node.inode
}

/// The size of a block device (or of any file): where a seek to its end lands.
pub(crate) fn device_size(path: &Path) -> std::io::Result<u64> {
    use std::io::Seek;
    std::fs::File::open(path)?.seek(std::io::SeekFrom::End(0))
}

/// Counts files and bytes to back up, for progress totals, on a thread of
/// its own (it stats every entry a second time); block devices count at
/// their size when `read_devices`.
pub(super) fn spawn_totals(
    paths: Vec<PathBuf>,
    exclude: Option<Arc<dyn Exclude>>,
    progress: Arc<Progress>,
    read_devices: bool,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cairn-scan".into())
        .spawn(move || {
            let device = |path: &Path, m: &Metadata| {
                if read_devices && m.file_type().is_block_device() {
                    progress.files_total.fetch_add(1, Ordering::Relaxed);
                    let size = device_size(path).unwrap_or(0);
                    progress.bytes_total.fetch_add(size, Ordering::Relaxed);
                }
            };
            let mut stack = Vec::new();
            for p in paths {
                // A path given that links to a device is read as the device.
                match std::fs::metadata(&p) {
                    Ok(m) if read_devices && m.file_type().is_block_device() => device(&p, &m),
                    _ => stack.push(p),
                }
            }
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
                            } else {
                                device(&path, &m);
                            }
                        }
                    }
                } else if meta.is_file() {
                    progress.files_total.fetch_add(1, Ordering::Relaxed);
                    progress
                        .bytes_total
                        .fetch_add(meta.len(), Ordering::Relaxed);
                } else {
                    device(&p, &meta);
                }
            }
            progress.scan_done.store(true, Ordering::Relaxed);
        })
        .map_err(Error::spawn("scan"))
}
