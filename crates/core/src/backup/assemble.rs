//! Tree assembly: takes the scanner's events in order, waits for each
//! file's chunks, turns them into the file's content (inline, or list blobs
//! when long) and stores every directory's tree once its last entry is in
//! (children before parents, so a checkpoint covers every finished one).
//!
//! Checkpoints are written between entries, and while the assembler waits
//! (for the scanner, or for a file still being read): a file whose read
//! outlives the checkpoint interval goes into the checkpoint as the prefix
//! read so far ([`super::partial`]).

use super::partial::{InFlight, Partial};
use super::read;
use super::seal::{content_from_chunks, WorkerError};
use super::walk::{self, Pending};
use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::format::snapshot::Summary;
use crate::format::tree::{Node, Payload, Tree};
use crate::format::{BlobId, BlobKind};
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crossbeam_channel::RecvTimeoutError;
use std::path::Path;
use std::sync::Arc;

/// The assembling side of a backup (it runs on the calling thread).
pub(super) struct Assembler<'a> {
    repo: &'a Repository,
    writer: Arc<PackWriter>,
    errors: WorkerError,
    progress: Arc<Progress>,
    /// What the assembler counts: dirs, new and changed files, bytes read.
    summary: Summary,
    ckpt: Checkpointer,
    /// Whether the root is a directory (else a synthetic root of the paths).
    root_is_dir: bool,
    /// Files being read ahead of this assembler.
    in_flight: Arc<InFlight>,
}

/// A directory being assembled: its node (`None` for the root) and the
/// nodes of the entries in so far.
struct Frame {
    node: Option<Node>,
    nodes: Vec<Node>,
}

impl<'a> Assembler<'a> {
    pub fn new(
        repo: &'a Repository,
        writer: Arc<PackWriter>,
        errors: WorkerError,
        progress: Arc<Progress>,
        ckpt: Checkpointer,
        root_is_dir: bool,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            repo,
            writer,
            errors,
            progress,
            summary: Summary::default(),
            ckpt,
            root_is_dir,
            in_flight,
        }
    }

    /// What the assembler counted, and its checkpointer for the final
    /// plan check; drops its hold on the pack writer.
    pub fn finish(self) -> (Summary, Checkpointer) {
        (self.summary, self.ckpt)
    }
}

impl Assembler<'_> {
    fn check_workers(&self) -> Result<()> {
        self.errors.check()
    }

    /// Consumes the walk up to the root's `Leave`; returns the root tree.
    pub fn run(&mut self, events: crossbeam_channel::Receiver<walk::Event>) -> Result<BlobId> {
        let mut stack = vec![Frame {
            node: None,
            nodes: Vec::new(),
        }];
        loop {
            let event = match events.recv_timeout(self.ckpt.next_due()) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint(&stack, None)?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("the walk ended early".into()))
                }
            };
            match event {
                walk::Event::Enter(node) => {
                    self.check_workers()?;
                    stack.push(Frame {
                        node: Some(node),
                        nodes: Vec::new(),
                    });
                }
                walk::Event::Entry(pending) => {
                    let node = self.resolve(pending, &stack)?;
                    // The root frame stays until its Leave, which returns.
                    let top = stack
                        .last_mut()
                        .ok_or_else(|| Error::Internal("the walk left the root twice".into()))?;
                    top.nodes.extend(node);
                    self.maybe_checkpoint(&stack, None)?;
                }
                walk::Event::Leave => {
                    let frame = stack.pop().ok_or_else(|| {
                        Error::Internal("the walk left more directories than it entered".into())
                    })?;
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
                    self.maybe_checkpoint(&stack, None)?;
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

    /// Writes a checkpoint when one is due. Its tree is the open
    /// directories with the entries they have so far and, when the
    /// assembler is waiting for a file (`reading`: its node as walked, and
    /// its chunks), that file's prefix read so far; so a re-run after a
    /// crash reuses every finished file and directory and resumes within
    /// the file. The chunks of files read ahead are protected too.
    fn maybe_checkpoint(
        &mut self,
        stack: &[Frame],
        reading: Option<(&Node, &Partial)>,
    ) -> Result<()> {
        if !self.ckpt.due(self.writer.stats().blobs) {
            return Ok(());
        }
        let settled =
            self.in_flight
                .settle(&self.ckpt, self.repo, &self.writer, reading, || {
                    self.check_workers()
                })?;
        let mut prefix_node = settled.reading;
        let mut partial = None;
        let mut below: Option<Node> = None;
        for (depth, frame) in stack.iter().enumerate().rev() {
            let mut nodes = frame.nodes.clone();
            // The file being read, then the open directory below, sort
            // after every finished entry.
            nodes.extend(prefix_node.take());
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
        self.ckpt.write(
            self.repo,
            &self.writer,
            partial,
            &self.summary,
            &settled.ahead,
            settled.plans,
        )?;
        Ok(())
    }

    /// A finished entry's node: waits for a file being read, writing the
    /// checkpoints that fall due meanwhile; `None` when the file could not
    /// be read and is skipped.
    fn resolve(&mut self, pending: Pending, stack: &[Frame]) -> Result<Option<Node>> {
        let (mut node, path, was_file, slot, chunks, resumed) = match pending {
            Pending::Ready(node) => return Ok(Some(node)),
            Pending::Reused { node, keep } => {
                // Its content is in `node` now.
                drop(keep);
                return Ok(Some(node));
            }
            Pending::Read {
                node,
                was_file,
                read,
                chunks,
            } => {
                // Its chunks are in `node` now.
                drop(chunks);
                self.count_read(was_file, read);
                self.progress.file_done();
                return Ok(Some(node));
            }
            Pending::Reading {
                node,
                path,
                was_file,
                slot,
                chunks,
                resumed,
            } => (node, path, was_file, slot, chunks, resumed),
        };
        let mut outcome = loop {
            match slot.recv_timeout(self.ckpt.next_due()) {
                Ok(outcome) => break outcome,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_checkpoint(stack, Some((&node, &chunks)))?
                }
                Err(RecvTimeoutError::Disconnected) => break read::ReadOutcome::Stopped,
            }
        };
        if matches!(outcome, read::ReadOutcome::Stopped) {
            self.check_workers()?;
        }
        if let read::ReadOutcome::Done {
            xattrs: Some(xattrs),
            ..
        } = &mut outcome
        {
            node.xattrs = std::mem::take(xattrs);
        }
        let Some(read) = read::into_result(outcome, |e| self.skip(&path, e))? else {
            return Ok(None);
        };
        self.count_read(was_file, read);
        node.size = resumed + read;
        // Taken: checkpoints run on this thread, and the node is in the
        // directory's frame before the next one.
        node.payload = Payload::File(content_from_chunks(&self.writer, chunks.take())?);
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
        self.progress.skip(path, err);
    }
}
