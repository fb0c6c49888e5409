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
use crate::format::tree::{Content, Payload};
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
    /// `gc/` plans so deduplication ignores planned packs from the start.
    pub fn new(repo: &Repository, opts: CheckpointOptions, template: Snapshot) -> Result<Self> {
        repo.refresh_plans()?;
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

    /// Writes a checkpoint whose tree is `partial`: the backup's tree as far
    /// as it got (every finished entry of every directory still open, each
    /// finished directory whole). The caller has drained its sealing
    /// workers, so every blob below `partial` has been handed to `writer`.
    pub fn write(
        &mut self,
        repo: &Repository,
        writer: &PackWriter,
        partial: BlobId,
        summary: &Summary,
    ) -> Result<SnapshotId> {
        writer.sync()?;
        self.protect(repo, writer, &[partial])?;
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
        repo.refresh_plans()?;
        let plans = repo.planned_packs().plan_ids();
        if plans.iter().all(|p| self.plans_seen.contains(p)) {
            self.plans_seen = plans;
            return Ok(());
        }
        let mut rewritten = 0u64;
        let mut seen: HashSet<BlobId> = HashSet::new();
        let mut stack: Vec<BlobId> = roots.to_vec();
        let mut keep = |id: &BlobId| -> Result<()> {
            if !repo.has_blob(id)? {
                crate::gc::rewrite_blob(repo, writer, id)?;
                rewritten += 1;
            }
            Ok(())
        };
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            keep(&t)?;
            let tree = repo.load_tree(&t)?;
            for node in &tree.nodes {
                match &node.payload {
                    Payload::Dir(sub) => stack.push(*sub),
                    Payload::File(Content::Inline(chunks)) => {
                        for c in chunks.iter().filter(|c| !c.is_hole()) {
                            if seen.insert(c.id) {
                                keep(&c.id)?;
                            }
                        }
                    }
                    Payload::File(Content::Lists(lists)) => {
                        for l in lists {
                            if !seen.insert(l.id) {
                                continue;
                            }
                            keep(&l.id)?;
                            for c in repo.chunk_list(&Content::Lists(vec![*l]))? {
                                if !c.is_hole() && seen.insert(c.id) {
                                    keep(&c.id)?;
                                }
                            }
                        }
                    }
                    Payload::Symlink(_) | Payload::None => {}
                }
            }
        }
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
