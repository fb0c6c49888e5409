//! Files still being read, as a checkpoint sees them.
//!
//! A reader publishes each chunk of a file into the file's [`Partial`] once
//! the chunk is claimed (so a checkpoint that drains the claims finds it
//! stored). A checkpoint written while the assembler waits for a file puts
//! that file's chunks so far into its tree, marked with [`PARTIAL_XATTR`],
//! so a multi-TiB file is referenced (kept by garbage collection)
//! throughout its read and a re-run resumes within it. Files read ahead of
//! the assembler, finished or not, and unchanged files whose content is
//! reused from the parent, are registered in [`InFlight`]; a checkpoint
//! protects their blobs too (copies them out of packs a maintenance plans
//! to delete), though its tree cannot name them yet. (Without that, a plan
//! seen by a checkpoint would never be checked against them again, and a
//! sweep could delete them before the tree referencing them is written.)

use super::seal::content_from_chunks;
use crate::checkpoint::{Checkpointer, Loose};
use crate::error::Result;
use crate::format::tree::{ChunkRef, Content, ListRef, Node, Payload};
use crate::format::Id;
use crate::packer::PackWriter;
use crate::repo::Repository;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// The extended attribute that marks a checkpoint's entry for a file whose
/// read had not finished: its content is a prefix of the file (its size is
/// the prefix's length); the value is the file's size, in decimal, when the
/// read began. An entry carrying it never counts as unchanged: a re-run
/// resumes after the prefix when the file's size, times and inode still
/// match, else reads the file again.
pub const PARTIAL_XATTR: &[u8] = b"user.cairn.partial";

/// The chunks of one file read so far, in order (or the content reused
/// for an unchanged file).
#[derive(Debug, Default)]
pub(crate) struct Partial {
    chunks: Mutex<Vec<ChunkRef>>,
    /// List blobs of reused content, each standing for its chunks.
    lists: Vec<ListRef>,
}

impl Partial {
    /// The content of an unchanged file, reused from the parent snapshot.
    pub fn reused(content: &Content) -> Self {
        match content {
            Content::Inline(chunks) => Self::starting_with(chunks.clone()),
            Content::Lists(lists) => Self {
                chunks: Mutex::default(),
                lists: lists.clone(),
            },
        }
    }

    /// A file whose first chunks (a killed run's prefix) are known.
    pub fn starting_with(chunks: Vec<ChunkRef>) -> Self {
        Self {
            chunks: Mutex::new(chunks),
            lists: Vec::new(),
        }
    }

    /// Appends a chunk that is stored or claimed.
    pub fn push(&self, chunk: ChunkRef) {
        crate::sync::lock(&self.chunks).push(chunk);
    }

    /// The chunks so far.
    pub fn snapshot(&self) -> Vec<ChunkRef> {
        crate::sync::lock(&self.chunks).clone()
    }

    /// Every chunk, once the read is over.
    pub fn take(&self) -> Vec<ChunkRef> {
        std::mem::take(&mut *crate::sync::lock(&self.chunks))
    }
}

/// The files submitted for reading whose nodes the assembler has not yet
/// taken. The scanner registers each; an entry lives while a reader or the
/// assembler still holds its [`Partial`].
///
/// The gate orders deduplication against a checkpoint's look at the `gc/`
/// plans: a reader holds it (shared) from deciding about a chunk (stored
/// already, or claimed) until the chunk is published; the scanner holds it
/// from deciding that an unchanged file's content is stored until the
/// content is registered; a checkpoint holds it alone while it loads the
/// plans. So every blob used on a decision made before that look is in
/// [`InFlight::loose`] afterwards, and every later decision knew the plans.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    files: Mutex<Registry>,
    gate: RwLock<()>,
}

#[derive(Debug, Default)]
struct Registry {
    files: Vec<Arc<Partial>>,
    /// Length at which the next registration drops finished entries.
    prune_at: usize,
}

/// Entries kept before the registry first drops finished ones.
const PRUNE_FIRST_AT: usize = 4096;

impl InFlight {
    /// Held while deciding about a blob and publishing it.
    pub fn deciding(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `look` (loading the plans) with no decision under way.
    pub fn alone<T>(&self, look: impl FnOnce() -> T) -> T {
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        look()
    }

    /// The first half of a checkpoint of a running backup, in the order the
    /// gate relies on: the plans, loaded with no deduplication decision
    /// under way (every blob used on an older decision is in flight by
    /// then); what is in flight, and the chunks of the file being read
    /// (`reading`: its node as walked, and its chunks), collected before the
    /// claims are drained (every chunk published by then is claimed or
    /// stored, so stored once they are). The file's prefix comes back as its
    /// partial entry, `None` while nothing of it is read.
    pub fn settle(
        &self,
        ckpt: &Checkpointer,
        repo: &Repository,
        writer: &PackWriter,
        reading: Option<(&Node, &Partial)>,
        check: impl Fn() -> Result<()>,
    ) -> Result<Settled> {
        let plans = self.alone(|| ckpt.look(repo))?;
        let ahead = self.loose();
        let prefix = reading.map(|(node, chunks)| (node, chunks.snapshot()));
        writer.drain_claims(check)?;
        let reading = match prefix {
            Some((node, chunks)) if !chunks.is_empty() => {
                let len = chunks.iter().map(|c| u64::from(c.len)).sum();
                let mut n = mark_partial(node, len);
                n.payload = Payload::File(content_from_chunks(writer, chunks)?);
                Some(n)
            }
            _ => None,
        };
        Ok(Settled {
            plans,
            ahead,
            reading,
        })
    }

    /// Registers a file about to be read (or content about to be reused).
    pub fn register(&self, file: Partial) -> Arc<Partial> {
        let file = Arc::new(file);
        let mut r = crate::sync::lock(&self.files);
        if r.files.len() >= r.prune_at.max(PRUNE_FIRST_AT) {
            // Held by nobody else: its node was stored (or skipped).
            r.files.retain(|f| Arc::strong_count(f) > 1);
            r.prune_at = 2 * r.files.len();
        }
        r.files.push(file.clone());
        file
    }

    /// The blobs of every file still in flight.
    pub fn loose(&self) -> Loose {
        let mut r = crate::sync::lock(&self.files);
        r.files.retain(|f| Arc::strong_count(f) > 1);
        let mut out = Loose::default();
        for f in &r.files {
            out.chunks.extend(
                crate::sync::lock(&f.chunks)
                    .iter()
                    .filter(|c| !c.is_hole())
                    .map(|c| c.id),
            );
            out.lists.extend_from_slice(&f.lists);
        }
        out.chunks.sort_unstable();
        out.chunks.dedup();
        out.lists.sort_unstable_by_key(|l| l.id);
        out.lists.dedup_by_key(|l| l.id);
        out
    }
}

/// What [`InFlight::settle`] gathered for a checkpoint's tree and its
/// [`Checkpointer::write`].
pub(crate) struct Settled {
    pub plans: Vec<Id>,
    pub ahead: Loose,
    /// The partial entry of the file being read.
    pub reading: Option<Node>,
}

/// The size a file had when the read of a partial entry began, if `node`
/// is one.
pub(crate) fn partial_of(node: &Node) -> Option<u64> {
    node.xattrs
        .iter()
        .find(|(k, _)| k == PARTIAL_XATTR)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// `node` (as walked: its size is the file's) marked as a partial entry
/// holding `prefix` bytes; the caller sets the payload.
fn mark_partial(node: &Node, prefix: u64) -> Node {
    let mut n = node.clone();
    n.xattrs.retain(|(k, _)| k != PARTIAL_XATTR);
    n.xattrs
        .push((PARTIAL_XATTR.to_vec(), node.size.to_string().into_bytes()));
    n.xattrs.sort();
    n.size = prefix;
    n
}
