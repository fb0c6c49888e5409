//! Backup checkpoints and the writer's half of the garbage-collection
//! protocol.
//!
//! Every checkpoint interval a backup makes what it stored so far durable
//! and referenced: it flushes its packs, writes an index segment, and
//! writes an incomplete snapshot (`complete: false`) whose tree is the
//! backup's tree as far as it got, so it references every blob the backup
//! has used so far. A re-run after a crash takes that tree as a parent: it
//! skips the files the checkpoint holds unchanged and uploads only what
//! came after; garbage collection keeps those blobs because a snapshot
//! references them.
//!
//! Invariant (see docs/MAINTENANCE.md): before any snapshot of the backup
//! is written, every blob it references is indexed in a pack that no `gc/`
//! plan seen at that moment lists; blobs found only in planned packs are
//! copied into new packs first ([`Checkpointer::protect`]).

use crate::error::{Error, Result};
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::tree::{Content, ListRef, Payload};
use crate::format::{BlobId, Id, SnapshotId};
use crate::packer::PackWriter;
use crate::repo::Repository;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// When a backup writes checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// At most this long between checkpoints (`Duration::ZERO` disables
    /// time-based checkpoints). Must stay well under the GC safety window.
    pub every: Duration,
    /// Also after this many new blobs (0 disables count-based checkpoints).
    pub every_blobs: u64,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(300),
            every_blobs: 0,
        }
    }
}

/// Content a backup holds that no tree references yet (files read ahead of
/// the tree, reused content waiting for its directory): chunks, and list
/// blobs standing for theirs.
#[derive(Debug, Default)]
pub(crate) struct Loose {
    pub chunks: Vec<BlobId>,
    pub lists: Vec<ListRef>,
}

/// Plans the handle read this recently count as the first backup's first
/// look at `gc/` (the open reads them; a listing more costs a round trip on
/// an object store). A plan made since is found by the backup's next look,
/// as one made during the backup is (see [`Checkpointer::protect`]): the
/// safety window is many minutes. A later backup on the handle looks
/// itself ([`Repository::refresh_plans_unless_opened_within`]).
pub const PLANS_FRESH_FOR: Duration = Duration::from_secs(60);

/// Decides when to checkpoint and writes checkpoints for one backup.
pub struct Checkpointer {
    opts: CheckpointOptions,
    started: Instant,
    last: Instant,
    blobs_at_last: u64,
    written: Vec<SnapshotId>,
    plans_seen: Vec<Id>,
    template: Snapshot,
}

impl Checkpointer {
    /// Starts tracking; `template` supplies the checkpoint snapshots'
    /// host, source, paths, tags, start time and parent. Loads the current
    /// `gc/` plans so deduplication ignores planned packs from the start
    /// (unless the open read them moments ago: [`PLANS_FRESH_FOR`]).
    pub fn new(repo: &Repository, opts: CheckpointOptions, template: Snapshot) -> Result<Self> {
        repo.refresh_plans_unless_opened_within(PLANS_FRESH_FOR)?;
        Ok(Self {
            opts,
            started: Instant::now(),
            last: Instant::now(),
            blobs_at_last: 0,
            written: Vec::new(),
            plans_seen: repo.planned_packs().plan_ids(),
            template,
        })
    }

    /// Whether a checkpoint is due, given the blobs the writer has added.
    pub fn due(&self, blobs_added: u64) -> bool {
        (!self.opts.every.is_zero() && self.last.elapsed() >= self.opts.every)
            || (self.opts.every_blobs > 0
                && blobs_added >= self.blobs_at_last + self.opts.every_blobs)
    }

    /// How long until a time-based checkpoint is due: how long a stage
    /// waiting for work may sleep before it looks again (at most a second,
    /// for count-based checkpoints).
    pub fn next_due(&self) -> Duration {
        const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(1);
        if self.opts.every.is_zero() {
            return LOOK_AT_LEAST_EVERY;
        }
        self.opts
            .every
            .saturating_sub(self.last.elapsed())
            .clamp(Duration::from_millis(10), LOOK_AT_LEAST_EVERY)
    }

    /// Loads the current `gc/` plans, which deduplication heeds from now
    /// on; returns their ids for [`Checkpointer::write`]. A running backup
    /// calls it with no deduplication decision under way, then collects
    /// what it holds in flight.
    ///
    /// The index is synced after the plans are loaded: a plan this backup
    /// never saw (made and swept between two looks, when a look came later
    /// than the maintenance's window allows) has had its packs removed
    /// from the index by then, so a blob whose only copies it deleted
    /// counts as absent and the check fails loudly on it, instead of
    /// trusting a stale index and writing a snapshot that references it.
    pub(crate) fn look(&self, repo: &Repository) -> Result<Vec<Id>> {
        repo.refresh_plans()?;
        repo.refresh_index()?;
        Ok(repo.planned_packs().plan_ids())
    }

    /// Writes a checkpoint whose tree is `partial`: the backup's tree as far
    /// as it got (every finished entry of every directory still open, each
    /// finished directory whole, the file being read as far as it is).
    /// `ahead` are the blobs of files read ahead of the tree, which the
    /// checkpoint cannot reference yet: they are protected from a
    /// concurrent maintenance's plans all the same. `plans` are what
    /// [`Checkpointer::look`] returned before `ahead` was collected. The
    /// caller has drained its sealing workers, so every blob below
    /// `partial` and in `ahead` has been handed to `writer`.
    pub(crate) fn write(
        &mut self,
        repo: &Repository,
        writer: &PackWriter,
        partial: BlobId,
        summary: &Summary,
        ahead: &Loose,
        plans: Vec<Id>,
    ) -> Result<SnapshotId> {
        writer.sync()?;
        self.keep_planned(repo, writer, plans, &[partial], ahead)?;
        let mut snap = self.template.clone();
        snap.tree = partial;
        snap.complete = false;
        snap.summary = summary.clone();
        snap.summary.duration_ms = self.started.elapsed().as_millis() as u64;
        let id = repo.save_snapshot(&snap)?;
        // The new checkpoint covers everything the old ones did.
        for old in self.written.drain(..) {
            repo.delete_snapshot(&old)?;
        }
        self.written.push(id);
        self.last = Instant::now();
        self.blobs_at_last = writer.stats().blobs;
        tracing::info!("checkpoint {} written", id.short());
        Ok(id)
    }

    /// Makes sure every blob reachable from `roots` is indexed in a pack no
    /// current `gc/` plan lists, copying the others into new packs. Cheap
    /// unless a plan appeared since the last call: only then are the roots
    /// walked. The caller has synced `writer` (everything is indexed).
    pub fn protect(
        &mut self,
        repo: &Repository,
        writer: &PackWriter,
        roots: &[BlobId],
    ) -> Result<()> {
        let plans = self.look(repo)?;
        self.keep_planned(repo, writer, plans, roots, &Loose::default())
    }

    /// [`Checkpointer::protect`] against `plans` (loaded by
    /// [`Checkpointer::look`]), and also the blobs `loose` (content no tree
    /// references yet: chunks, and list blobs with their chunks).
    fn keep_planned(
        &mut self,
        repo: &Repository,
        writer: &PackWriter,
        plans: Vec<Id>,
        roots: &[BlobId],
        loose: &Loose,
    ) -> Result<()> {
        if plans.iter().all(|p| self.plans_seen.contains(p)) {
            self.plans_seen = plans;
            return Ok(());
        }
        let mut keeper = Keeper {
            repo,
            writer,
            seen: HashSet::new(),
            rewritten: 0,
        };
        for id in &loose.chunks {
            keeper.chunk(id)?;
        }
        keeper.content(&Content::Lists(loose.lists.clone()))?;
        let mut stack: Vec<BlobId> = roots.to_vec();
        while let Some(t) = stack.pop() {
            if !keeper.blob(&t)? {
                continue;
            }
            for node in &repo.load_tree(&t)?.nodes {
                match &node.payload {
                    Payload::Dir(sub) => stack.push(*sub),
                    Payload::File(content) => keeper.content(content)?,
                    Payload::Symlink(_) | Payload::None => {}
                }
            }
        }
        let rewritten = keeper.rewritten;
        if rewritten > 0 {
            tracing::info!(
                "{rewritten} reused blobs sat in packs planned for deletion; stored them again"
            );
            writer.sync()?;
        }
        self.plans_seen = plans;
        Ok(())
    }

    /// Checkpoints this backup wrote and has not yet replaced.
    pub fn written(&self) -> &[SnapshotId] {
        &self.written
    }
}

/// Walks what a snapshot is about to reference and stores again each blob
/// found only in planned packs.
struct Keeper<'a> {
    repo: &'a Repository,
    writer: &'a PackWriter,
    seen: HashSet<BlobId>,
    rewritten: u64,
}

impl Keeper<'_> {
    /// Keeps `id` unless seen already; returns whether it was new.
    fn blob(&mut self, id: &BlobId) -> Result<bool> {
        if !self.seen.insert(*id) {
            return Ok(false);
        }
        if !self.repo.has_blob(id)? {
            crate::gc::rewrite_blob(self.repo, self.writer, id).map_err(|e| match e {
                // Planned, and swept before this backup looked again: it
                // stalled for longer than the maintenance's window.
                Error::BlobNotFound { .. } => Error::Interference {
                    location: self.repo.location().to_string(),
                    object: format!("copy blob {}", id.to_hex()),
                    cause: "its only copies were in packs a concurrent maintenance planned to \
                            delete, and has deleted since this backup last looked"
                        .into(),
                },
                e => e,
            })?;
            self.rewritten += 1;
        }
        Ok(true)
    }

    fn chunk(&mut self, id: &BlobId) -> Result<()> {
        self.blob(id).map(|_| ())
    }

    /// A file's content: its chunks, or its list blobs and theirs.
    fn content(&mut self, content: &Content) -> Result<()> {
        match content {
            Content::Inline(chunks) => {
                for c in chunks.iter().filter(|c| !c.is_hole()) {
                    self.chunk(&c.id)?;
                }
            }
            Content::Lists(lists) => {
                for l in lists {
                    if !self.blob(&l.id)? {
                        continue;
                    }
                    for c in self.repo.chunk_list(&Content::Lists(vec![*l]))? {
                        if !c.is_hole() {
                            self.chunk(&c.id)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Deletes the checkpoints `finished` covers, once it is saved: the
/// incomplete snapshots of the same host and source that started no later,
/// its own and those of killed runs it resumed from. (A concurrent run of
/// the same source that started earlier loses its checkpoint too; its next
/// checkpoint covers it again, and until then the garbage-collection
/// protocol protects what it reuses, as for any reused blob.)
pub fn remove_checkpoints(repo: &Repository, finished: &Snapshot) -> Result<u64> {
    if !finished.complete {
        return Err(Error::Usage(
            "refusing to remove checkpoints for an incomplete snapshot".into(),
        ));
    }
    let mut n = 0;
    for (id, s) in crate::gc::list_snapshots(repo)? {
        if !s.complete
            && s.time <= finished.time
            && s.host == finished.host
            && s.source == finished.source
        {
            repo.delete_snapshot(&id)?;
            n += 1;
        }
    }
    Ok(n)
}
