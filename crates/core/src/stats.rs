//! What snapshots hold: repository statistics, the differences between two
//! snapshots, and a path search across snapshots.
//!
//! Invariant: all three only read; subtrees with equal ids are equal, so
//! walks skip a subtree they have already counted (stats) or that both
//! sides share (diff).

use crate::error::Result;
use crate::format::tree::{Content, Node, NodeType, Payload, Tree};
use crate::format::{BlobId, SnapshotId};
use crate::repo::Repository;
use crate::Snapshot;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Repository totals over a set of snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepoStats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// Files, summed over snapshots (what restoring them all would write).
    pub files: u64,
    /// Content bytes, summed over snapshots (restore size).
    pub restore_size: u64,
    /// Distinct blobs the snapshots reference (data, tree and list).
    pub unique_blobs: u64,
    /// Plaintext bytes of those blobs (deduplicated size).
    pub unique_raw_size: u64,
    /// Stored bytes of those blobs (after compression and encryption; a
    /// bundled blob counts its share of its bundle's, estimated from its
    /// length, see [`crate::format::pack::BlobEntry::stored_share`]).
    pub unique_stored_size: u64,
    /// Referenced blobs the index does not know (see `cairn check`).
    pub missing_blobs: u64,
    /// Packs in the index.
    pub packs: u64,
    /// Bytes of those packs.
    pub pack_size: u64,
    /// Blob entries in the index, referenced or not (a blob stored in two
    /// packs counts twice).
    pub indexed_blobs: u64,
}

impl RepoStats {
    /// Restore size over stored size of referenced blobs (deduplication and
    /// compression together); 0 when nothing is stored.
    pub fn space_saving_ratio(&self) -> f64 {
        if self.unique_stored_size == 0 {
            0.0
        } else {
            self.restore_size as f64 / self.unique_stored_size as f64
        }
    }

    /// Deduplicated plaintext size over stored size (compression alone).
    pub fn compression_ratio(&self) -> f64 {
        if self.unique_stored_size == 0 {
            0.0
        } else {
            self.unique_raw_size as f64 / self.unique_stored_size as f64
        }
    }
}

struct StatsWalk<'a> {
    repo: &'a Repository,
    /// Every blob the snapshots reference, each once: located after the
    /// walk, all together.
    seen: HashSet<BlobId>,
    /// Files and bytes below each tree walked.
    sizes: HashMap<BlobId, (u64, u64)>,
    stats: RepoStats,
}

impl StatsWalk<'_> {
    /// Notes a blob (counted by [`StatsWalk::count_blobs`]); returns
    /// whether it was new.
    fn blob(&mut self, id: &BlobId) -> Result<bool> {
        Ok(!id.0.is_zero() && self.seen.insert(*id))
    }

    /// Locates every blob seen and counts its sizes: the index rows of
    /// those blobs are read in one pass over the segments (the whole index
    /// only past [`crate::index_view::MAX_COVERED`] blobs), not ingested
    /// for a lookup each.
    fn count_blobs(&mut self) -> Result<()> {
        if self.seen.len() <= crate::index_view::MAX_COVERED {
            self.repo.cover_blobs(&self.seen)?;
        } else {
            self.repo.index()?;
        }
        for id in &self.seen {
            match self.repo.lookup(id)? {
                Some(loc) => {
                    self.stats.unique_blobs += 1;
                    self.stats.unique_raw_size += u64::from(loc.raw_len);
                    self.stats.unique_stored_size +=
                        crate::format::pack::stored_share(loc.stored_len, loc.raw_len, loc.inner);
                }
                None => self.stats.missing_blobs += 1,
            }
        }
        Ok(())
    }

    /// Files and bytes below tree `id`, counting the blobs not seen before.
    fn tree(&mut self, id: &BlobId) -> Result<(u64, u64)> {
        if let Some(s) = self.sizes.get(id) {
            return Ok(*s);
        }
        self.blob(id)?;
        let tree = self.repo.load_tree(id)?;
        let mut sizes = (0, 0);
        for node in &tree.nodes {
            match &node.payload {
                Payload::Dir(sub) => {
                    let (f, b) = self.tree(sub)?;
                    sizes.0 += f;
                    sizes.1 += b;
                }
                Payload::File(content) => {
                    sizes.0 += 1;
                    sizes.1 += node.size;
                    self.content(content)?;
                }
                _ => {}
            }
        }
        self.sizes.insert(*id, sizes);
        Ok(sizes)
    }

    fn content(&mut self, content: &Content) -> Result<()> {
        if let Content::Lists(lists) = content {
            let mut any_new = false;
            for l in lists {
                any_new |= self.blob(&l.id)?;
            }
            if !any_new {
                return Ok(());
            }
        }
        for c in self.repo.chunk_list(content)? {
            self.blob(&c.id)?;
        }
        Ok(())
    }
}

/// Totals over `snapshots` (their trees must be readable: run `check` on a
/// damaged repository).
pub fn stats(repo: &Repository, snapshots: &[(SnapshotId, Snapshot)]) -> Result<RepoStats> {
    let mut w = StatsWalk {
        repo,
        seen: HashSet::new(),
        sizes: HashMap::new(),
        stats: RepoStats::default(),
    };
    for (_, snap) in snapshots {
        let sizes = w.tree(&snap.tree)?;
        w.stats.snapshots += 1;
        w.stats.files += sizes.0;
        w.stats.restore_size += sizes.1;
    }
    w.count_blobs()?;
    // The repository's totals from the segments as they stream past, not
    // from an ingested index (at 100M blobs, ~13 GB of cache).
    let totals = crate::gc::index_pack_totals(repo)?;
    w.stats.packs = totals.packs;
    w.stats.pack_size = totals.bytes;
    w.stats.indexed_blobs = totals.blobs;
    Ok(w.stats)
}

/// How a path differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// In both, with different content, type or metadata.
    Modified,
}

impl Change {
    /// `+`, `-` or `M`.
    pub fn symbol(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// What changed.
    pub change: Change,
    /// Path inside the snapshots, `/`-rooted.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Whether the entry is a directory (in the snapshot that has it).
    pub dir: bool,
}

fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Whether two entries of the same name differ in anything but their subtree.
fn node_differs(a: &Node, b: &Node) -> bool {
    if a.kind != b.kind {
        return true;
    }
    let meta = a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime_ns != b.mtime_ns
        || a.size != b.size
        || a.xattrs != b.xattrs;
    match (&a.payload, &b.payload) {
        (Payload::Dir(_), Payload::Dir(_)) => meta,
        (pa, pb) => meta || pa != pb,
    }
}

/// The paths added, removed and modified from tree `a` to tree `b`, in path
/// order. Removed and added directories are listed with everything below.
pub fn diff(repo: &Repository, a: &BlobId, b: &BlobId) -> Result<Vec<DiffEntry>> {
    let mut out = Vec::new();
    diff_trees(repo, Some(a), Some(b), Path::new("/"), &mut out)?;
    Ok(out)
}

fn diff_trees(
    repo: &Repository,
    a: Option<&BlobId>,
    b: Option<&BlobId>,
    at: &Path,
    out: &mut Vec<DiffEntry>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<&BlobId>| -> Result<Tree> {
        id.map_or(Ok(Tree::default()), |id| repo.load_tree(id))
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let na = ta.nodes.get(i);
        let nb = tb.nodes.get(j);
        let order = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match order {
            std::cmp::Ordering::Greater => &nb.expect("b has an entry").name,
            _ => &na.expect("a has an entry").name,
        };
        let path = at.join(OsStr::from_bytes(name));
        let sub = |n: Option<&Node>| match n.map(|n| &n.payload) {
            Some(Payload::Dir(id)) => Some(*id),
            _ => None,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = na.expect("a has an entry");
                out.push(entry(Change::Removed, &path, n));
                diff_trees(repo, sub(na).as_ref(), None, &path, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = nb.expect("b has an entry");
                out.push(entry(Change::Added, &path, n));
                diff_trees(repo, None, sub(nb).as_ref(), &path, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.expect("a"), nb.expect("b"));
                if node_differs(x, y) {
                    out.push(entry(Change::Modified, &path, y));
                }
                diff_trees(repo, sub(na).as_ref(), sub(nb).as_ref(), &path, out)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn entry(change: Change, path: &Path, n: &Node) -> DiffEntry {
    DiffEntry {
        change,
        path: path.to_path_buf(),
        dir: n.kind == NodeType::Dir,
    }
}

/// Calls `f(path, node)` for every entry below tree `root` (depth first, in
/// name order), paths `/`-rooted; `f` returns false to stop early.
pub fn walk(
    repo: &Repository,
    root: &BlobId,
    f: &mut dyn FnMut(&Path, &Node) -> bool,
) -> Result<bool> {
    walk_at(repo, root, Path::new("/"), f)
}

fn walk_at(
    repo: &Repository,
    id: &BlobId,
    at: &Path,
    f: &mut dyn FnMut(&Path, &Node) -> bool,
) -> Result<bool> {
    let tree = repo.load_tree(id)?;
    for node in &tree.nodes {
        let path = at.join(OsStr::from_bytes(&node.name));
        if !f(&path, node) {
            return Ok(false);
        }
        if let Payload::Dir(sub) = &node.payload {
            if !walk_at(repo, sub, &path, f)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
