//! Trees (one directory per blob), file content references and list blobs.

use super::codec::{DecodeError, Reader, Writer};
use super::{BlobId, Id};

/// Tree encoding version.
pub const TREE_VERSION: u32 = 1;
/// Encoded size of a chunk ref.
pub const CHUNK_REF_LEN: usize = 36;
/// Files with more chunks than this keep their chunk list in list blobs.
pub const INLINE_CHUNKS_MAX: usize = 64;
/// Chunk refs per list blob.
pub const LIST_CHUNKS_MAX: usize = 4096;
/// Smallest possible encoded entry (empty name, no xattrs, no payload).
const MIN_ENTRY_LEN: usize = 4 + 1 + 4 * 3 + 8 * 7 + 4;

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl NodeType {
    fn code(self) -> u8 {
        match self {
            NodeType::File => 1,
            NodeType::Dir => 2,
            NodeType::Symlink => 3,
            NodeType::CharDev => 4,
            NodeType::BlockDev => 5,
            NodeType::Fifo => 6,
            NodeType::Socket => 7,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => NodeType::File,
            2 => NodeType::Dir,
            3 => NodeType::Symlink,
            4 => NodeType::CharDev,
            5 => NodeType::BlockDev,
            6 => NodeType::Fifo,
            7 => NodeType::Socket,
            _ => return None,
        })
    }
}

/// A piece of file content: a data blob, or a hole of zeros (zero id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Blob id, or all zeros for a hole.
    pub id: BlobId,
    /// Length in bytes.
    pub len: u32,
}

impl ChunkRef {
    /// A hole of `len` zero bytes.
    pub fn hole(len: u32) -> Self {
        Self {
            id: BlobId(Id::default()),
            len,
        }
    }
    /// Whether this ref is a hole.
    pub fn is_hole(&self) -> bool {
        self.id.0.is_zero()
    }
}

/// One list blob of a large file's chunk list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListRef {
    /// List blob id.
    pub id: BlobId,
    /// Chunk refs it holds.
    pub chunks: u64,
    /// Bytes of content those chunks cover.
    pub bytes: u64,
}

/// Where a file's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The chunk list itself.
    Inline(Vec<ChunkRef>),
    /// List blobs holding the chunk list, in order.
    Lists(Vec<ListRef>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Inline(Vec::new())
    }
}

/// Type-specific part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A file's content.
    File(Content),
    /// A directory's subtree.
    Dir(BlobId),
    /// A symlink's target.
    Symlink(Vec<u8>),
    /// Devices, fifos, sockets.
    None,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File name bytes.
    pub name: Vec<u8>,
    /// Entry type.
    pub kind: NodeType,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Size (files: content length).
    pub size: u64,
    /// Inode number.
    pub inode: u64,
    /// Device of the file system.
    pub dev: u64,
    /// Link count.
    pub nlink: u64,
    /// Device number (device nodes).
    pub rdev: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Type payload.
    pub payload: Payload,
}

/// One directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Entries sorted by name.
    pub nodes: Vec<Node>,
}

fn encode_chunk(w: &mut Writer, c: &ChunkRef) {
    w.bytes(c.id.as_bytes());
    w.u32(c.len);
}

fn decode_chunk(r: &mut Reader<'_>) -> Result<ChunkRef, DecodeError> {
    Ok(ChunkRef {
        id: BlobId(r.id()?),
        len: r.u32()?,
    })
}

impl Tree {
    /// Finds an entry by name.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Encodes the tree (entries must be sorted by name).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.nodes.len() * 128);
        w.u32(TREE_VERSION);
        w.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            w.lbytes(&n.name);
            w.u8(n.kind.code());
            w.u32(n.mode);
            w.u32(n.uid);
            w.u32(n.gid);
            w.i64(n.mtime_ns);
            w.i64(n.ctime_ns);
            w.u64(n.size);
            w.u64(n.inode);
            w.u64(n.dev);
            w.u64(n.nlink);
            w.u64(n.rdev);
            w.u32(n.xattrs.len() as u32);
            for (k, v) in &n.xattrs {
                w.lbytes(k);
                w.lbytes(v);
            }
            match &n.payload {
                Payload::File(Content::Inline(chunks)) => {
                    w.u8(0);
                    w.u32(chunks.len() as u32);
                    for c in chunks {
                        encode_chunk(&mut w, c);
                    }
                }
                Payload::File(Content::Lists(lists)) => {
                    w.u8(1);
                    w.u32(lists.len() as u32);
                    for l in lists {
                        w.bytes(l.id.as_bytes());
                        w.u64(l.chunks);
                        w.u64(l.bytes);
                    }
                }
                Payload::Dir(id) => w.bytes(id.as_bytes()),
                Payload::Symlink(t) => w.lbytes(t),
                Payload::None => {}
            }
        }
        w.finish()
    }

    /// Decodes a tree, checking that names are valid and sorted.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "tree");
        let version = r.u32()?;
        if version != TREE_VERSION {
            return Err(DecodeError::new(
                "tree",
                format!("unsupported version {version}"),
            ));
        }
        let n = r.count(MIN_ENTRY_LEN)?;
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.lbytes()?.to_vec();
            if name.is_empty()
                || name.contains(&b'/')
                || name.contains(&0)
                || name == b"."
                || name == b".."
            {
                return Err(DecodeError::new(
                    "tree",
                    format!("invalid entry name {:?}", String::from_utf8_lossy(&name)),
                ));
            }
            if let Some(prev) = nodes.last() {
                if prev.name >= name {
                    return Err(DecodeError::new("tree", "entries not sorted or duplicated"));
                }
            }
            let code = r.u8()?;
            let kind = NodeType::from_code(code)
                .ok_or_else(|| DecodeError::new("tree", format!("unknown entry type {code}")))?;
            let mode = r.u32()?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let mtime_ns = r.i64()?;
            let ctime_ns = r.i64()?;
            let size = r.u64()?;
            let inode = r.u64()?;
            let dev = r.u64()?;
            let nlink = r.u64()?;
            let rdev = r.u64()?;
            let nx = r.count(8)?;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                let k = r.lbytes()?.to_vec();
                let v = r.lbytes()?.to_vec();
                xattrs.push((k, v));
            }
            let payload = match kind {
                NodeType::File => match r.u8()? {
                    0 => {
                        let nc = r.count(CHUNK_REF_LEN)?;
                        let mut chunks = Vec::with_capacity(nc);
                        for _ in 0..nc {
                            chunks.push(decode_chunk(&mut r)?);
                        }
                        Payload::File(Content::Inline(chunks))
                    }
                    1 => {
                        let nl = r.count(48)?;
                        let mut lists = Vec::with_capacity(nl);
                        for _ in 0..nl {
                            lists.push(ListRef {
                                id: BlobId(r.id()?),
                                chunks: r.u64()?,
                                bytes: r.u64()?,
                            });
                        }
                        Payload::File(Content::Lists(lists))
                    }
                    f => {
                        return Err(DecodeError::new(
                            "tree",
                            format!("unknown content form {f}"),
                        ))
                    }
                },
                NodeType::Dir => Payload::Dir(BlobId(r.id()?)),
                NodeType::Symlink => Payload::Symlink(r.lbytes()?.to_vec()),
                _ => Payload::None,
            };
            nodes.push(Node {
                name,
                kind,
                mode,
                uid,
                gid,
                mtime_ns,
                ctime_ns,
                size,
                inode,
                dev,
                nlink,
                rdev,
                xattrs,
                payload,
            });
        }
        r.finish()?;
        Ok(Tree { nodes })
    }
}

/// Encodes a list blob.
pub fn encode_list(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut w = Writer::with_capacity(chunks.len() * CHUNK_REF_LEN);
    for c in chunks {
        encode_chunk(&mut w, c);
    }
    w.finish()
}

/// Decodes a list blob.
pub fn decode_list(data: &[u8]) -> Result<Vec<ChunkRef>, DecodeError> {
    if !data.len().is_multiple_of(CHUNK_REF_LEN) {
        return Err(DecodeError::new(
            "list",
            format!("length {} is not a multiple of {CHUNK_REF_LEN}", data.len()),
        ));
    }
    let mut r = Reader::new(data, "list");
    let mut out = Vec::with_capacity(data.len() / CHUNK_REF_LEN);
    while r.remaining() > 0 {
        out.push(decode_chunk(&mut r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk() -> impl Strategy<Value = ChunkRef> {
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(id, len)| ChunkRef {
            id: BlobId(Id(id)),
            len,
        })
    }

    fn payload(kind: NodeType) -> BoxedStrategy<Payload> {
        match kind {
            NodeType::File => prop_oneof![
                proptest::collection::vec(chunk(), 0..5)
                    .prop_map(|c| Payload::File(Content::Inline(c))),
                proptest::collection::vec((any::<[u8; 32]>(), any::<u64>(), any::<u64>()), 0..3)
                    .prop_map(|l| Payload::File(Content::Lists(
                        l.into_iter()
                            .map(|(id, chunks, bytes)| ListRef {
                                id: BlobId(Id(id)),
                                chunks,
                                bytes
                            })
                            .collect()
                    ))),
            ]
            .boxed(),
            NodeType::Dir => any::<[u8; 32]>()
                .prop_map(|i| Payload::Dir(BlobId(Id(i))))
                .boxed(),
            NodeType::Symlink => proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(Payload::Symlink)
                .boxed(),
            _ => Just(Payload::None).boxed(),
        }
    }

    fn node() -> impl Strategy<Value = Node> {
        (1u8..8).prop_flat_map(|code| {
            let kind = NodeType::from_code(code).unwrap();
            (
                proptest::collection::vec(1u8..=255, 1..20).prop_filter("valid name", |n| {
                    !n.contains(&b'/') && n != b"." && n != b".."
                }),
                any::<(u32, u32, u32, i64, i64, u64)>(),
                any::<(u64, u64, u64, u64)>(),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(any::<u8>(), 1..10),
                        proptest::collection::vec(any::<u8>(), 0..10),
                    ),
                    0..3,
                ),
                payload(kind),
            )
                .prop_map(
                    move |(
                        name,
                        (mode, uid, gid, mtime_ns, ctime_ns, size),
                        (inode, dev, nlink, rdev),
                        xattrs,
                        payload,
                    )| Node {
                        name,
                        kind,
                        mode,
                        uid,
                        gid,
                        mtime_ns,
                        ctime_ns,
                        size,
                        inode,
                        dev,
                        nlink,
                        rdev,
                        xattrs,
                        payload,
                    },
                )
        })
    }

    proptest! {
        #[test]
        fn tree_round_trip(mut nodes in proptest::collection::vec(node(), 0..12)) {
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            let tree = Tree { nodes };
            prop_assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
        }

        #[test]
        fn list_round_trip(chunks in proptest::collection::vec(chunk(), 0..50)) {
            prop_assert_eq!(decode_list(&encode_list(&chunks)).unwrap(), chunks);
        }

        #[test]
        fn tree_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Tree::decode(&data);
        }
    }

    #[test]
    fn unsorted_tree_is_rejected() {
        let mk = |name: &[u8]| Node {
            name: name.to_vec(),
            kind: NodeType::Fifo,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            dev: 0,
            nlink: 1,
            rdev: 0,
            xattrs: vec![],
            payload: Payload::None,
        };
        let t = Tree {
            nodes: vec![mk(b"b"), mk(b"a")],
        };
        assert!(Tree::decode(&t.encode()).is_err());
    }
}
