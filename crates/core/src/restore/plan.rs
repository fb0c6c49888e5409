//! Restore planning: which entries of the tree go where, and which blob
//! ranges of which packs fill which files. Reads trees, list blobs and the
//! index through the [`Source`] given, never packs, and touches no file.

use crate::cache::BlobLocation;
use crate::error::{Error, Result};
use crate::format::tree::{ChunkRef, Content, Node, Payload, Tree};
use crate::format::{BlobId, PackId};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// What planning reads: trees, the chunk lists of files, the index.
/// [`crate::repo::Repository`] in a restore; a map in tests.
pub(super) trait Source {
    fn tree(&self, id: &BlobId) -> Result<Tree>;
    fn chunks(&self, content: &Content) -> Result<Vec<ChunkRef>>;
    fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>>;
    /// Prepares the lookups of `ids` (one pass over the index on an empty
    /// cache, instead of ingesting all of it).
    fn cover(&self, _ids: &HashSet<BlobId>) -> Result<()> {
        Ok(())
    }
}

impl Source for crate::repo::Repository {
    fn tree(&self, id: &BlobId) -> Result<Tree> {
        self.load_tree(id)
    }
    fn chunks(&self, content: &Content) -> Result<Vec<ChunkRef>> {
        self.chunk_list(content)
    }
    fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.lookup(id)
    }
    fn cover(&self, ids: &HashSet<BlobId>) -> Result<()> {
        self.cover_blobs(ids).map(drop)
    }
}

/// A file to restore.
pub(super) struct FileTask {
    pub path: PathBuf,
    pub node: Node,
}

/// The entries to restore, by kind, with their target paths.
#[derive(Default)]
pub(super) struct Plan {
    /// Directories whose listing cannot be read: nothing below them is
    /// restored, and each is reported.
    pub lost: Vec<(PathBuf, String)>,
    /// Directories above the included paths: created, metadata untouched.
    pub ancestors: Vec<PathBuf>,
    pub dirs: Vec<(PathBuf, Node)>,
    pub files: Vec<FileTask>,
    pub specials: Vec<(PathBuf, Node)>,
    /// Further names of a hard-linked file: the path and the index in
    /// `files` of its first name.
    pub links: Vec<(PathBuf, usize)>,
}

impl Plan {
    /// Plans the tree `root` into `target`, only `includes` (snapshot paths)
    /// and what is below them when any are given.
    pub fn new(
        src: &impl Source,
        root: &BlobId,
        target: &Path,
        includes: &[PathBuf],
    ) -> Result<Plan> {
        let includes: Vec<PathBuf> = includes.iter().map(|p| normalise(p)).collect();
        let mut plan = Plan::default();
        let mut links = HashMap::new();
        plan.collect(src, root, Path::new(""), target, &includes, &mut links)?;
        if !includes.is_empty()
            && plan.files.is_empty()
            && plan.specials.is_empty()
            && plan.dirs.is_empty()
            && plan.lost.is_empty()
        {
            return Err(Error::Usage(format!(
                "no entry of the snapshot matches {}",
                includes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(plan)
    }

    fn collect(
        &mut self,
        src: &impl Source,
        tree_id: &BlobId,
        rel: &Path,
        abs: &Path,
        includes: &[PathBuf],
        links: &mut HashMap<(u64, u64), usize>,
    ) -> Result<()> {
        let tree = match src.tree(tree_id) {
            Ok(t) => t,
            Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
                self.lost.push((
                    abs.to_path_buf(),
                    format!(
                        "directory listing lost (tree {}): {e}; nothing below it was restored",
                        tree_id.short()
                    ),
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for node in tree.nodes {
            let name = OsStr::from_bytes(&node.name);
            let child_rel = rel.join(name);
            let child_abs = abs.join(name);
            let want = wanted(&child_rel, includes);
            match (&node.payload, want) {
                (_, Wanted::No) => {}
                (Payload::Dir(sub), w) => {
                    let sub = *sub;
                    if matches!(w, Wanted::All) {
                        self.dirs.push((child_abs.clone(), node));
                    } else {
                        self.ancestors.push(child_abs.clone());
                    }
                    self.collect(src, &sub, &child_rel, &child_abs, includes, links)?;
                }
                (_, Wanted::Ancestor) => {}
                (Payload::File(_), Wanted::All) => {
                    if node.nlink > 1 {
                        if let Some(first) = links.get(&(node.dev, node.inode)) {
                            self.links.push((child_abs, *first));
                            continue;
                        }
                        links.insert((node.dev, node.inode), self.files.len());
                    }
                    self.files.push(FileTask {
                        path: child_abs,
                        node,
                    });
                }
                (_, Wanted::All) => self.specials.push((child_abs, node)),
            }
        }
        Ok(())
    }

    /// The content bytes of every file.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.node.size).sum()
    }
}

/// Where one blob's plaintext goes: file (index in [`Plan::files`]) and offset.
pub(super) struct Placement {
    pub file: usize,
    pub offset: u64,
}

/// One blob to read from a pack, and every place it goes.
pub(super) struct PackBlob {
    pub id: BlobId,
    /// The stored bytes to read: the blob's, or its bundle's.
    pub offset: u64,
    pub stored_len: u64,
    /// Where the blob starts in its bundle's plaintext, if bundled.
    pub inner: Option<u32>,
    pub raw_len: u32,
    pub targets: Vec<Placement>,
}

/// The blob reads of a restore, by pack, each pack's blobs by offset; and
/// the files that cannot be restored, with the reason.
#[derive(Default)]
pub(super) struct Reads {
    pub packs: Vec<(PackId, Vec<PackBlob>)>,
    pub failed: BTreeMap<usize, String>,
}

/// Plans the blob reads filling `files`; files in `skip` are left out.
/// The chunk lists and the index lookups run on `pool` (a restore of many
/// small files asks the index once per chunk, tens of thousands of times);
/// the placements are then gathered in file order.
pub(super) fn reads(
    src: &(impl Source + Sync),
    pool: &rayon::ThreadPool,
    files: &[FileTask],
    skip: &BTreeMap<usize, String>,
) -> Result<Reads> {
    let mut packs: HashMap<PackId, HashMap<BlobId, PackBlob>> = HashMap::new();
    let mut failed = BTreeMap::new();
    // Every file's chunks first, so the index is asked about them at once.
    let listed: Vec<(usize, Result<Vec<ChunkRef>>)> = pool.install(|| {
        files
            .par_iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains_key(i))
            .filter_map(|(i, f)| match &f.node.payload {
                Payload::File(content) => Some((i, src.chunks(content))),
                _ => None,
            })
            .collect()
    });
    let mut lists = Vec::with_capacity(listed.len());
    let mut wanted = HashSet::new();
    for (i, chunks) in listed {
        match chunks {
            Ok(c) => {
                wanted.extend(c.iter().filter(|c| !c.is_hole()).map(|c| c.id));
                lists.push((i, c));
            }
            Err(e) => {
                failed.insert(i, e.to_string());
            }
        }
    }
    src.cover(&wanted)?;
    drop(wanted);
    // Each chunk's copy in the index, in the chunk list's order: `None`
    // for a hole, `Some(None)` for a blob the index lacks.
    let located: Vec<Result<Vec<Option<Option<BlobLocation>>>>> = pool.install(|| {
        lists
            .par_iter()
            .map(|(_, chunks)| {
                chunks
                    .iter()
                    .map(|c| (!c.is_hole()).then(|| src.locate(&c.id)).transpose())
                    .collect()
            })
            .collect()
    });
    for ((i, chunks), locations) in lists.into_iter().zip(located) {
        let mut offset = 0u64;
        for (c, loc) in chunks.iter().zip(locations?) {
            match loc {
                None => {}
                Some(Some(loc)) => {
                    let blob = packs
                        .entry(loc.pack)
                        .or_default()
                        .entry(c.id)
                        .or_insert_with(|| PackBlob {
                            id: c.id,
                            offset: loc.offset as u64,
                            stored_len: loc.stored_len as u64,
                            inner: loc.inner,
                            raw_len: loc.raw_len,
                            targets: Vec::new(),
                        });
                    blob.targets.push(Placement { file: i, offset });
                }
                Some(None) => {
                    failed.insert(
                        i,
                        format!("data blob {} is not in the index", c.id.to_hex()),
                    );
                }
            }
            offset += c.len as u64;
        }
    }
    let packs = packs
        .into_iter()
        .map(|(p, blobs)| {
            let mut v: Vec<PackBlob> = blobs.into_values().collect();
            // A bundle's members in the order of their plaintext.
            v.sort_by_key(|b| (b.offset, b.inner));
            (p, v)
        })
        .collect();
    Ok(Reads { packs, failed })
}

/// Normalises an include path: relative, no `.`/`..`.
fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

enum Wanted {
    All,
    Ancestor,
    No,
}

fn wanted(rel: &Path, includes: &[PathBuf]) -> Wanted {
    if includes.is_empty() || includes.iter().any(|i| rel.starts_with(i)) {
        Wanted::All
    } else if includes.iter().any(|i| i.starts_with(rel)) {
        Wanted::Ancestor
    } else {
        Wanted::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::NodeType;
    use crate::format::{BlobKind, Id};

    fn id(n: u8) -> BlobId {
        BlobId(Id([n; 32]))
    }

    fn node(name: &str, kind: NodeType, payload: Payload) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            dev: 0,
            nlink: 1,
            rdev: 0,
            xattrs: Vec::new(),
            payload,
        }
    }

    fn file(name: &str, chunks: Vec<ChunkRef>, inode: u64, nlink: u64) -> Node {
        let mut n = node(name, NodeType::File, Payload::File(Content::Inline(chunks)));
        n.inode = inode;
        n.nlink = nlink;
        n
    }

    /// Trees and an index in memory: planning reads nothing else.
    #[derive(Default)]
    struct Memory {
        trees: HashMap<BlobId, Tree>,
        index: HashMap<BlobId, BlobLocation>,
    }

    impl Source for Memory {
        fn tree(&self, id: &BlobId) -> Result<Tree> {
            self.trees
                .get(id)
                .cloned()
                .ok_or_else(|| Error::corrupt(format!("tree {}", id.short()), "missing"))
        }
        fn chunks(&self, content: &Content) -> Result<Vec<ChunkRef>> {
            match content {
                Content::Inline(c) => Ok(c.clone()),
                Content::Lists(_) => Err(Error::corrupt("list", "not in this test")),
            }
        }
        fn locate(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
            Ok(self.index.get(id).copied())
        }
    }

    fn at(pack: u8, offset: u32) -> BlobLocation {
        BlobLocation {
            pack: PackId(Id([pack; 32])),
            kind: BlobKind::Data,
            offset,
            stored_len: 100,
            raw_len: 80,
            inner: None,
        }
    }

    /// root: a/ (x, y = hard link of x, lost/ whose tree is missing), b (fifo)
    fn sample() -> Memory {
        let chunk = |n: u8| ChunkRef { id: id(n), len: 80 };
        let mut m = Memory::default();
        let a = Tree {
            nodes: vec![
                node("lost", NodeType::Dir, Payload::Dir(id(99))),
                file("x", vec![chunk(10), ChunkRef::hole(80), chunk(11)], 7, 2),
                file("y", vec![chunk(10), ChunkRef::hole(80), chunk(11)], 7, 2),
                file("z", vec![chunk(10), chunk(12)], 8, 1),
            ],
        };
        let root = Tree {
            nodes: vec![
                node("a", NodeType::Dir, Payload::Dir(id(2))),
                node("b", NodeType::Fifo, Payload::None),
            ],
        };
        m.trees.insert(id(1), root);
        m.trees.insert(id(2), a);
        m.index.insert(id(10), at(1, 500));
        m.index.insert(id(11), at(1, 0));
        m.index.insert(id(12), at(2, 0));
        m
    }

    #[test]
    fn a_plan_sorts_entries_by_kind_without_reading_packs() {
        let m = sample();
        let plan = Plan::new(&m, &id(1), Path::new("/t"), &[]).unwrap();
        let dirs: Vec<_> = plan.dirs.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(dirs, [PathBuf::from("/t/a"), PathBuf::from("/t/a/lost")]);
        let files: Vec<_> = plan.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(files, [PathBuf::from("/t/a/x"), PathBuf::from("/t/a/z")]);
        // The second name of x is a link to the first, not a second file.
        assert_eq!(plan.links, [(PathBuf::from("/t/a/y"), 0)]);
        assert_eq!(plan.specials.len(), 1);
        assert!(plan.ancestors.is_empty());
        // A directory whose tree is lost is reported, not fatal.
        assert_eq!(plan.lost.len(), 1);
        assert_eq!(plan.lost[0].0, PathBuf::from("/t/a/lost"));
        assert!(plan.lost[0].1.contains("nothing below it was restored"));
    }

    #[test]
    fn includes_restore_below_them_and_create_only_the_directories_above() {
        let m = sample();
        let plan = Plan::new(&m, &id(1), Path::new("/t"), &[PathBuf::from("/a/z")]).unwrap();
        assert_eq!(plan.ancestors, [PathBuf::from("/t/a")]);
        assert!(plan.dirs.is_empty() && plan.specials.is_empty() && plan.links.is_empty());
        let files: Vec<_> = plan.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(files, [PathBuf::from("/t/a/z")]);
        let none = Plan::new(&m, &id(1), Path::new("/t"), &[PathBuf::from("a/nope")]);
        assert!(matches!(none, Err(Error::Usage(_))));
    }

    #[test]
    fn reads_group_blobs_by_pack_in_offset_order_with_every_placement() {
        let mut m = sample();
        let plan = Plan::new(&m, &id(1), Path::new("/t"), &[]).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let reads = reads(&m, &pool, &plan.files, &BTreeMap::new()).unwrap();
        assert!(reads.failed.is_empty());
        let mut packs: Vec<_> = reads.packs.iter().collect();
        packs.sort_by_key(|(p, _)| p.0 .0[0]);
        let (_, one) = packs[0];
        // Pack 1 holds chunk 11 at 0 and chunk 10 at 500, in that order;
        // chunk 10 goes to both files at offset 0, chunk 11 after the hole.
        assert_eq!(one.iter().map(|b| b.offset).collect::<Vec<_>>(), [0, 500]);
        let placements = |b: &PackBlob| {
            b.targets
                .iter()
                .map(|t| (t.file, t.offset))
                .collect::<Vec<_>>()
        };
        assert_eq!(placements(&one[0]), [(0, 160)]);
        assert_eq!(placements(&one[1]), [(0, 0), (1, 0)]);
        assert_eq!(placements(&packs[1].1[0]), [(1, 80)]);
        // A file whose blob the index lacks fails alone; skipped files are not planned.
        m.index.remove(&id(12));
        let reads2 = super::reads(
            &m,
            &pool,
            &plan.files,
            &BTreeMap::from([(0, "in the way".into())]),
        )
        .unwrap();
        assert_eq!(reads2.failed.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(reads2.failed[&1].contains("not in the index"));
        assert!(reads2
            .packs
            .iter()
            .all(|(_, bs)| bs.iter().all(|b| b.targets.iter().all(|t| t.file == 1))));
    }
}
