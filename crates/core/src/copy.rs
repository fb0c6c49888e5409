//! Copying snapshots to another repository (the "another copy in another
//! place" of 3-2-1), deduplicated at the destination.
//!
//! Blob ids are keyed per repository, so nothing can be copied by id: data
//! blobs are decrypted with the source key and stored under the
//! destination's id of the same plaintext; trees and list blobs are
//! rewritten with the destination's ids of their children. The
//! destination's index deduplicates, so copying the same snapshot twice
//! stores no new data. The destination follows the writer side of the GC
//! protocol like a backup (see docs/MAINTENANCE.md).

use crate::checkpoint::{CheckpointOptions, Checkpointer};
use crate::error::Result;
use crate::format::tree::{
    encode_list, ChunkRef, Content, ListRef, Payload, Tree, INLINE_CHUNKS_MAX, LIST_CHUNKS_MAX,
};
use crate::format::{BlobId, BlobKind, SnapshotId};
use crate::packer::PackWriter;
use crate::repo::Repository;
use std::collections::HashMap;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Snapshots written to the destination.
    pub copied: Vec<(SnapshotId, SnapshotId)>,
    /// Snapshots the destination already held (same time, host, source, content).
    pub skipped: Vec<SnapshotId>,
    /// Blobs stored at the destination.
    pub blobs_added: u64,
    /// Stored bytes added at the destination.
    pub bytes_added: u64,
}

/// Copies the snapshots `ids` of `src` into `dst`.
pub fn copy_snapshots(
    src: &Repository,
    dst: &Repository,
    ids: &[SnapshotId],
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let existing = crate::gc::list_snapshots(dst)?;
    let mut map: HashMap<BlobId, BlobId> = HashMap::new();
    for id in ids {
        let snap = src.load_snapshot(id)?;
        let writer = PackWriter::new(dst, 2)?;
        let mut template = snap.clone();
        template.parent = None;
        let mut ckpt = Checkpointer::new(
            dst,
            CheckpointOptions {
                every: std::time::Duration::ZERO,
                every_blobs: 0,
            },
            template.clone(),
        )?;
        let mut copier = Copier {
            src,
            writer: &writer,
            map: &mut map,
        };
        let root = copier.tree(&snap.tree)?;
        writer.sync()?;
        ckpt.protect(dst, &writer, &[root])?;
        let stats = writer.finish()?;
        report.blobs_added += stats.blobs;
        report.bytes_added += stats.stored_bytes;
        let already = existing.iter().any(|(_, d)| {
            d.tree == root && d.time == snap.time && d.host == snap.host && d.source == snap.source
        });
        if already {
            report.skipped.push(*id);
            continue;
        }
        let mut out = template;
        out.tree = root;
        let new_id = dst.save_snapshot(&out)?;
        report.copied.push((*id, new_id));
    }
    Ok(report)
}

struct Copier<'a> {
    src: &'a Repository,
    writer: &'a PackWriter,
    map: &'a mut HashMap<BlobId, BlobId>,
}

impl Copier<'_> {
    fn tree(&mut self, id: &BlobId) -> Result<BlobId> {
        if let Some(done) = self.map.get(id) {
            return Ok(*done);
        }
        let mut tree: Tree = self.src.load_tree(id)?;
        for node in &mut tree.nodes {
            match &mut node.payload {
                Payload::Dir(sub) => *sub = self.tree(sub)?,
                Payload::File(content) => *content = self.content(content)?,
                Payload::Symlink(_) | Payload::None => {}
            }
        }
        let (new, _) = self.writer.add_plain(BlobKind::Tree, &tree.encode())?;
        self.map.insert(*id, new);
        Ok(new)
    }

    fn chunk(&mut self, c: &ChunkRef) -> Result<ChunkRef> {
        if c.is_hole() {
            return Ok(*c);
        }
        if let Some(done) = self.map.get(&c.id) {
            return Ok(ChunkRef {
                id: *done,
                len: c.len,
            });
        }
        let plain = self.src.read_blob(BlobKind::Data, &c.id)?;
        let (new, _) = self.writer.add_plain(BlobKind::Data, &plain)?;
        self.map.insert(c.id, new);
        Ok(ChunkRef {
            id: new,
            len: c.len,
        })
    }

    fn content(&mut self, content: &Content) -> Result<Content> {
        let chunks = self.src.chunk_list(content)?;
        let mapped = chunks
            .iter()
            .map(|c| self.chunk(c))
            .collect::<Result<Vec<_>>>()?;
        if matches!(content, Content::Inline(_)) && mapped.len() <= INLINE_CHUNKS_MAX {
            return Ok(Content::Inline(mapped));
        }
        let mut lists = Vec::new();
        for part in mapped.chunks(LIST_CHUNKS_MAX) {
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
