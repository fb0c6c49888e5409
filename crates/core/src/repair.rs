//! `repair`: rebuilds the index from pack trailers, and rewrites snapshots
//! whose blobs are lost so that what remains restores.
//!
//! Invariants:
//! - Both hold the exclusive lock ([`crate::lock`]) for their whole run.
//! - `repair index` writes the new segments before deleting any superseded
//!   one, so a crash leaves at worst both (which describe the same blobs).
//! - `repair snapshots` never deletes an original snapshot unless asked
//!   (`forget_originals`); the repaired one is written after the segments
//!   naming its new blobs, is tagged [`REPAIRED_TAG`] and names the
//!   original as its parent. Lost chunks become holes of the same length,
//!   so sizes and offsets stay right, and each damaged file or directory
//!   carries the xattr [`DAMAGED_XATTR`] saying what was lost.

use crate::check::{inspect, AffectedPath, CheckOptions, Damage, DataSubset, Health};
use crate::error::{Error, ErrorKind, Result};
use crate::format::index::{IndexSegment, IndexedPack};
use crate::format::kinds::{IndexSegments, Packs};
use crate::format::pack::{
    decode_entries, pack_version, parse_footer, BlobEntry, FIRST_BLOB_OFFSET, FOOTER_LEN,
    TRAILER_AAD,
};
use crate::format::tree::{
    encode_list, ChunkRef, Content, ListRef, Node, Payload, Tree, INLINE_CHUNKS_MAX,
    LIST_CHUNKS_MAX,
};
use crate::format::{BlobId, BlobKind, PackId, SnapshotId};
use crate::lock::{ExclusiveLock, LockOptions};
use crate::packer::PackWriter;
use crate::repo::Repository;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Tag of a snapshot written by `repair snapshots`.
pub const REPAIRED_TAG: &str = "repaired";
/// Extended attribute marking a damaged file or directory in a repaired snapshot.
pub const DAMAGED_XATTR: &[u8] = b"user.cairn.damaged";
/// Packs per index segment written by `repair index`.
pub const PACKS_PER_REPAIR_SEGMENT: usize = 1024;
/// Largest hole standing for lost content whose chunk boundaries are unknown.
const MAX_HOLE: u64 = 1 << 30;

/// What `repair index` does.
#[derive(Debug, Clone)]
pub struct RepairIndexOptions {
    /// Report what would change, write and delete nothing.
    pub dry_run: bool,
    /// The exclusive lock's timing.
    pub lock: LockOptions,
}

impl Default for RepairIndexOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            lock: LockOptions::new("repair index"),
        }
    }
}

/// A pack `repair index` could not index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadablePack {
    /// Object path.
    pub object: String,
    /// Why.
    pub reason: String,
    /// Whether an existing segment's description of it was kept.
    pub kept_old_entry: bool,
}

/// What `repair index` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexReport {
    /// Packs the new index describes.
    pub packs: u64,
    /// Blobs the new index describes.
    pub blobs: u64,
    /// Packs the old index did not describe.
    pub newly_indexed: u64,
    /// Indexed packs that no longer exist (dropped).
    pub dropped_missing: u64,
    /// Packs whose trailer could not be read.
    pub unreadable: Vec<UnreadablePack>,
    /// Segments written (empty in a dry run).
    pub segments_written: Vec<String>,
    /// Segments superseded (deleted unless a dry run).
    pub segments_removed: Vec<String>,
    /// Damaged packs recorded in `damage/` (never reused by writers).
    pub damage_recorded: u64,
}

/// Reads a pack's trailer with two range reads (footer, then trailer).
/// `Ok(Err(reason))` when the pack is damaged.
fn read_pack_trailer(
    repo: &Repository,
    path: &str,
    len: u64,
) -> Result<Result<Vec<BlobEntry>, String>> {
    if len < (FIRST_BLOB_OFFSET + FOOTER_LEN) as u64 {
        return Ok(Err(format!("only {len} bytes: too short to be a pack")));
    }
    let footer = repo
        .storage()
        .read_range(path, len - FOOTER_LEN as u64..len)
        .map_err(repo.serr())?;
    let (start, tlen) = match parse_footer(len, &footer) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // The start magic says how the trailer's entries are encoded.
    let magic = repo
        .storage()
        .read_range(path, 0..FIRST_BLOB_OFFSET as u64)
        .map_err(repo.serr())?;
    let version = match pack_version(&magic) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let sealed = repo
        .storage()
        .read_range(path, start..start + u64::from(tlen))
        .map_err(repo.serr())?;
    let body = match repo
        .keyring()
        .seal_key()
        .open_envelope(TRAILER_AAD, &sealed)
    {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("trailer: {e}"))),
    };
    let entries = match decode_entries(&body, version) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Some(e) = entries
        .iter()
        .find(|e| e.end() > start || (e.offset as usize) < FIRST_BLOB_OFFSET)
    {
        return Ok(Err(format!(
            "trailer places blob {} outside the blob area",
            e.id.short()
        )));
    }
    Ok(Ok(entries))
}

/// Rebuilds the index from the packs present: every readable pack's
/// trailer goes into new segments that supersede every existing segment,
/// which are then deleted. Packs with an unreadable trailer keep the
/// description an existing readable segment has of them, if any.
pub fn repair_index(repo: &Repository, opts: &RepairIndexOptions) -> Result<RepairIndexReport> {
    let lock = ExclusiveLock::acquire(repo, &opts.lock)?;
    let mut old: HashMap<PackId, IndexedPack> = HashMap::new();
    let mut old_segments = Vec::new();
    for id in repo.objects().list_ids::<IndexSegments>()? {
        old_segments.push(id);
        match repo.load_segment(&id) {
            Ok(seg) => {
                for p in seg.packs {
                    old.entry(p.id).or_insert(p);
                }
            }
            // Superseded by maintenance since the listing.
            Err(e) if crate::objects::is_vanished(&e) => {}
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                tracing::warn!("superseding unreadable segment: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    let mut report = RepairIndexReport::default();
    let mut packs = Vec::new();
    let mut present = HashSet::new();
    let mut listed = repo.objects().list::<Packs>()?;
    listed.sort_by(|a, b| a.path.cmp(&b.path));
    for obj in listed {
        let id = obj.id;
        lock.check()?;
        present.insert(id);
        match read_pack_trailer(repo, &obj.path, obj.size)? {
            Ok(blobs) => packs.push(IndexedPack {
                id,
                len: obj.size,
                blobs,
            }),
            Err(reason) => {
                // Its blobs stay readable where the old index placed them,
                // but no writer may trust them: maintenance salvages the
                // intact ones and drops the pack.
                repo.note_damage(crate::damage::whole_pack(
                    id,
                    crate::format::damage::DamageReason::PackDamaged,
                ));
                let kept = old.get(&id).cloned();
                report.unreadable.push(UnreadablePack {
                    object: obj.path.clone(),
                    reason,
                    kept_old_entry: kept.is_some(),
                });
                packs.extend(kept);
            }
        }
    }
    report.packs = packs.len() as u64;
    report.blobs = packs.iter().map(|p| p.blobs.len() as u64).sum();
    report.newly_indexed = packs.iter().filter(|p| !old.contains_key(&p.id)).count() as u64;
    report.dropped_missing = old.keys().filter(|id| !present.contains(id)).count() as u64;
    report.segments_removed = old_segments.iter().map(|s| s.path()).collect();
    if opts.dry_run {
        return Ok(report);
    }
    // The superseded list goes into the last segment: once it exists, all
    // the new ones do.
    let mut groups: Vec<Vec<IndexedPack>> = packs
        .chunks(PACKS_PER_REPAIR_SEGMENT)
        .map(|c| c.to_vec())
        .collect();
    if groups.is_empty() {
        groups.push(Vec::new());
    }
    let last = groups.len() - 1;
    for (i, group) in groups.into_iter().enumerate() {
        if group.is_empty() && old_segments.is_empty() {
            break;
        }
        let seg = IndexSegment {
            supersedes: if i == last {
                old_segments.clone()
            } else {
                Vec::new()
            },
            packs: group,
        };
        let id = repo.save_segment(&seg)?;
        report.segments_written.push(id.path());
    }
    lock.check()?;
    for s in &old_segments {
        repo.objects().delete::<IndexSegments>(s)?;
    }
    repo.sync_index(true)?;
    report.damage_recorded = repo.record_found_damage()? as u64;
    lock.release()?;
    Ok(report)
}

/// What `repair snapshots` does.
#[derive(Debug, Clone)]
pub struct RepairSnapshotsOptions {
    /// Only these snapshots (empty: all).
    pub snapshots: Vec<SnapshotId>,
    /// Also read every pack to find damaged (not only missing) blobs.
    pub read_data: bool,
    /// Delete each original once its repaired snapshot is written.
    pub forget_originals: bool,
    /// Report what would change, write nothing.
    pub dry_run: bool,
    /// The exclusive lock's timing.
    pub lock: LockOptions,
}

impl Default for RepairSnapshotsOptions {
    fn default() -> Self {
        Self {
            snapshots: Vec::new(),
            read_data: false,
            forget_originals: false,
            dry_run: false,
            lock: LockOptions::new("repair snapshots"),
        }
    }
}

/// One snapshot `repair snapshots` rewrote.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedSnapshot {
    /// The original's id (hex).
    pub original: String,
    /// The repaired snapshot's id (hex); `None` in a dry run.
    pub repaired: Option<String>,
    /// Whether the repaired snapshot already existed from an earlier run.
    pub reused: bool,
    /// Whether the original was deleted.
    pub original_forgotten: bool,
    /// Damaged paths, marked in the repaired snapshot.
    pub paths: Vec<AffectedPath>,
}

/// What `repair snapshots` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairSnapshotsReport {
    /// Snapshots examined.
    pub examined: u64,
    /// Snapshots rewritten.
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshot manifests that cannot be read at all (nothing to rewrite):
    /// deleted unless a dry run, since nothing can ever read them.
    pub unreadable: Vec<Damage>,
    /// Whether the unreadable manifests were deleted.
    pub unreadable_removed: bool,
    /// Damaged copies recorded in `damage/` (never reused by writers).
    pub damage_recorded: u64,
}

type Rewritten = (BlobId, std::sync::Arc<Vec<(PathBuf, String)>>);

struct Rewriter<'a> {
    repo: &'a Repository,
    health: &'a Health,
    writer: Option<PackWriter>,
    trees: HashMap<BlobId, Rewritten>,
    written: HashSet<BlobId>,
}

fn mark(node: &mut Node, reason: &str) {
    node.xattrs.retain(|(k, _)| k != DAMAGED_XATTR);
    node.xattrs
        .push((DAMAGED_XATTR.to_vec(), reason.as_bytes().to_vec()));
    node.xattrs.sort();
}

fn holes(mut bytes: u64, out: &mut Vec<ChunkRef>) {
    while bytes > 0 {
        let n = bytes.min(MAX_HOLE);
        out.push(ChunkRef::hole(n as u32));
        bytes -= n;
    }
}

impl Rewriter<'_> {
    /// Stores a blob unless a usable copy is indexed; returns its id.
    fn store(&mut self, kind: BlobKind, plain: &[u8]) -> Result<BlobId> {
        let id = self.repo.blob_id(plain);
        if self.written.contains(&id) || self.health.problem(self.repo, &id)?.is_none() {
            return Ok(id);
        }
        if let Some(w) = &self.writer {
            w.store(kind, id, plain)?;
        }
        self.written.insert(id);
        Ok(id)
    }

    /// The repaired version of tree `id` and the damaged paths below it.
    fn tree(&mut self, id: &BlobId) -> Result<Rewritten> {
        if let Some(r) = self.trees.get(id) {
            return Ok(r.clone());
        }
        let tree = match self.repo.load_tree(id) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == ErrorKind::Corrupt => None,
            Err(e) => return Err(e),
        };
        let out = match tree {
            None => {
                let reason = format!(
                    "directory listing lost (tree blob {}); restored empty",
                    id.short()
                );
                let empty = self.store(BlobKind::Tree, &Tree::default().encode())?;
                (empty, std::sync::Arc::new(vec![(PathBuf::new(), reason)]))
            }
            Some(mut tree) => {
                let mut damaged = Vec::new();
                for node in &mut tree.nodes {
                    let name = PathBuf::from(OsStr::from_bytes(&node.name));
                    match &node.payload {
                        Payload::Dir(sub) => {
                            let (new, below) = self.tree(sub)?;
                            node.payload = Payload::Dir(new);
                            for (p, r) in below.iter() {
                                if p.as_os_str().is_empty() {
                                    mark(node, r);
                                }
                                damaged.push((name.join(p), r.clone()));
                            }
                        }
                        Payload::File(content) => {
                            if let Some((content, reason)) = self.file(content)? {
                                node.payload = Payload::File(content);
                                mark(node, &reason);
                                damaged.push((name, reason));
                            }
                        }
                        _ => {}
                    }
                }
                // Re-stored also when unchanged: its own blob may be the lost
                // one, recovered here from the local cache.
                let new = self.store(BlobKind::Tree, &tree.encode())?;
                (new, std::sync::Arc::new(damaged))
            }
        };
        self.trees.insert(*id, out.clone());
        Ok(out)
    }

    /// A file's content with lost chunks as holes, and what was lost; `None`
    /// when nothing was.
    fn file(&mut self, content: &Content) -> Result<Option<(Content, String)>> {
        let mut chunks = Vec::new();
        let (mut lost_chunks, mut lost_bytes, mut lists_lost) = (0u64, 0u64, 0u64);
        let parts: Vec<(Option<ListRef>, Vec<ChunkRef>)> = match content {
            Content::Inline(c) => vec![(None, c.clone())],
            Content::Lists(lists) => {
                let mut v = Vec::new();
                for l in lists {
                    let read = match self.health.problem(self.repo, &l.id)? {
                        Some(_) => None,
                        None => match self.repo.chunk_list(&Content::Lists(vec![*l])) {
                            Ok(c) => Some(c),
                            Err(e) if e.kind() == ErrorKind::Corrupt => None,
                            Err(e) => return Err(e),
                        },
                    };
                    match read {
                        Some(c) => v.push((None, c)),
                        None => v.push((Some(*l), Vec::new())),
                    }
                }
                v
            }
        };
        for (lost_list, part) in parts {
            if let Some(l) = lost_list {
                lists_lost += 1;
                lost_bytes += l.bytes;
                holes(l.bytes, &mut chunks);
                continue;
            }
            for c in part {
                if !c.is_hole() && self.health.problem(self.repo, &c.id)?.is_some() {
                    lost_chunks += 1;
                    lost_bytes += u64::from(c.len);
                    chunks.push(ChunkRef::hole(c.len));
                } else {
                    chunks.push(c);
                }
            }
        }
        if lost_chunks == 0 && lists_lost == 0 {
            return Ok(None);
        }
        let mut reason = format!("{lost_bytes} bytes lost, restored as zeros");
        if lost_chunks > 0 {
            reason.push_str(&format!("; {lost_chunks} chunks lost"));
        }
        if lists_lost > 0 {
            reason.push_str(&format!("; {lists_lost} chunk lists lost"));
        }
        let content = if chunks.len() <= INLINE_CHUNKS_MAX {
            Content::Inline(chunks)
        } else {
            let mut lists = Vec::new();
            for part in chunks.chunks(LIST_CHUNKS_MAX) {
                let id = self.store(BlobKind::List, &encode_list(part))?;
                lists.push(ListRef {
                    id,
                    chunks: part.len() as u64,
                    bytes: part.iter().map(|c| u64::from(c.len)).sum(),
                });
            }
            Content::Lists(lists)
        };
        Ok(Some((content, reason)))
    }
}

/// Rewrites every (selected) snapshot with lost blobs: lost chunks become
/// holes, lost directories become empty, each damaged entry is marked with
/// [`DAMAGED_XATTR`]; the result is saved as a new snapshot tagged
/// [`REPAIRED_TAG`] whose parent is the original.
pub fn repair_snapshots(
    repo: &Repository,
    opts: &RepairSnapshotsOptions,
) -> Result<RepairSnapshotsReport> {
    let lock = ExclusiveLock::acquire(repo, &opts.lock)?;
    let check = CheckOptions {
        read_data: opts.read_data.then_some(DataSubset::All),
    };
    let inspection = inspect(repo, &check)?;
    let mut report = RepairSnapshotsReport {
        unreadable: inspection
            .report
            .damage
            .iter()
            .filter(|d| matches!(d, Damage::SnapshotUnreadable { .. }))
            .cloned()
            .collect(),
        ..Default::default()
    };
    let selected: Vec<_> = inspection
        .snapshots
        .iter()
        .filter(|(id, _)| opts.snapshots.is_empty() || opts.snapshots.contains(id))
        .collect();
    for want in &opts.snapshots {
        if !selected.iter().any(|(id, _)| id == want) {
            return Err(Error::Usage(format!(
                "no readable snapshot {}",
                want.short()
            )));
        }
    }
    let mut rw = Rewriter {
        repo,
        health: &inspection.health,
        writer: (!opts.dry_run)
            .then(|| PackWriter::new(repo, 2))
            .transpose()?,
        trees: HashMap::new(),
        written: HashSet::new(),
    };
    let mut planned = Vec::new();
    for (id, snap) in &selected {
        lock.check()?;
        report.examined += 1;
        let (root, damaged) = rw.tree(&snap.tree)?;
        if damaged.is_empty() && root == snap.tree {
            continue;
        }
        let mut paths: Vec<AffectedPath> = damaged
            .iter()
            .map(|(p, r)| AffectedPath {
                path: format!("/{}", p.to_string_lossy()),
                reason: r.clone(),
            })
            .collect();
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        planned.push((*id, (*snap).clone(), root, paths));
    }
    // Segments naming the new blobs go before the snapshots using them.
    if let Some(w) = rw.writer.take() {
        w.finish()?;
    }
    for (orig, snap, root, paths) in planned {
        let existing = inspection.snapshots.iter().find(|(_, s)| {
            s.parent == Some(orig) && s.tree == root && s.tags.iter().any(|t| t == REPAIRED_TAG)
        });
        let (repaired, reused) = match (existing, opts.dry_run) {
            (Some((id, _)), _) => (Some(*id), true),
            (None, true) => (None, false),
            (None, false) => {
                let mut new = snap.clone();
                new.tree = root;
                new.parent = Some(orig);
                // The root has no node to carry the damage mark.
                new.damaged_root = paths
                    .iter()
                    .find(|p| p.path == "/")
                    .map(|p| p.reason.clone())
                    .or(new.damaged_root);
                if !new.tags.iter().any(|t| t == REPAIRED_TAG) {
                    new.tags.push(REPAIRED_TAG.to_string());
                }
                (Some(repo.save_snapshot(&new)?), false)
            }
        };
        let forget = opts.forget_originals && !opts.dry_run && repaired.is_some();
        if forget {
            lock.check()?;
            repo.delete_snapshot(&orig)?;
        }
        report.repaired.push(RepairedSnapshot {
            original: orig.to_hex(),
            repaired: repaired.map(|r| r.to_hex()),
            reused,
            original_forgotten: forget,
            paths,
        });
    }
    if !opts.dry_run {
        for d in &report.unreadable {
            if let Damage::SnapshotUnreadable { object, .. } = d {
                lock.check()?;
                match repo.storage().delete(object) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(repo.serr()(e)),
                }
            }
        }
        report.unreadable_removed = !report.unreadable.is_empty();
        report.damage_recorded = repo.record_found_damage()? as u64;
    }
    lock.release()?;
    Ok(report)
}
