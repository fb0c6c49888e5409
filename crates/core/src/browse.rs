//! Reading a snapshot without restoring it: resolve a path, list a
//! directory, stream a file's content.

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeType, Payload, Tree};
use crate::format::{BlobId, BlobKind};
use crate::repo::Repository;
use std::io::Write;
use std::path::{Component, Path};

/// What a path inside a snapshot names.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// The snapshot's root directory.
    Root(BlobId),
    /// An entry below the root.
    Node(Node),
}

impl Resolved {
    /// The tree of a directory, if this is one.
    pub fn tree_id(&self) -> Option<BlobId> {
        match self {
            Resolved::Root(id) => Some(*id),
            Resolved::Node(Node {
                payload: Payload::Dir(id),
                ..
            }) => Some(*id),
            _ => None,
        }
    }
}

/// Resolves `path` (relative to the snapshot root; a leading `/` is allowed).
pub fn resolve(repo: &Repository, root: &BlobId, path: &Path) -> Result<Resolved> {
    let mut current = Resolved::Root(*root);
    for comp in path.components() {
        let name = match comp {
            Component::Normal(n) => n,
            Component::RootDir | Component::CurDir => continue,
            _ => {
                return Err(Error::Usage(format!(
                    "{}: `..` is not allowed in snapshot paths",
                    path.display()
                )))
            }
        };
        let Some(tree_id) = current.tree_id() else {
            return Err(Error::Usage(format!(
                "{}: not a directory in the snapshot",
                path.display()
            )));
        };
        let tree = repo.load_tree(&tree_id)?;
        use std::os::unix::ffi::OsStrExt;
        match tree.get(name.as_bytes()) {
            Some(node) => current = Resolved::Node(node.clone()),
            None => {
                return Err(Error::Usage(format!(
                    "{}: no such file or directory in the snapshot",
                    path.display()
                )))
            }
        }
    }
    Ok(current)
}

/// Lists the directory at `path`.
pub fn list_dir(repo: &Repository, root: &BlobId, path: &Path) -> Result<Tree> {
    match resolve(repo, root, path)?.tree_id() {
        Some(id) => repo.load_tree(&id),
        None => Err(Error::Usage(format!(
            "{}: not a directory in the snapshot",
            path.display()
        ))),
    }
}

/// Writes a file's content to `out`; holes become zeros. Returns bytes written.
pub fn dump(repo: &Repository, node: &Node, out: &mut dyn Write) -> Result<u64> {
    let Payload::File(content) = &node.payload else {
        let what = match node.kind {
            NodeType::Dir => "a directory",
            NodeType::Symlink => "a symlink",
            _ => "not a regular file",
        };
        return Err(Error::Usage(format!(
            "{} is {what}; dump prints regular files",
            String::from_utf8_lossy(&node.name)
        )));
    };
    let zeros = vec![0u8; 1 << 16];
    let mut written = 0u64;
    let stdout_err = |e: std::io::Error| Error::io("<output>", e);
    let chunks = repo.chunk_list(content)?;
    // On a cache below the whole index: the file's chunk rows in one
    // pass, instead of a pass (or the whole index) per chunk.
    let wanted = chunks
        .iter()
        .filter(|c| !c.is_hole())
        .map(|c| c.id)
        .collect();
    repo.cover_blobs(&wanted)?;
    for c in chunks {
        if c.is_hole() {
            let mut left = c.len as usize;
            while left > 0 {
                let n = left.min(zeros.len());
                out.write_all(&zeros[..n]).map_err(stdout_err)?;
                left -= n;
            }
        } else {
            let data = repo.read_blob(BlobKind::Data, &c.id)?;
            out.write_all(&data).map_err(stdout_err)?;
        }
        written += c.len as u64;
    }
    out.flush().map_err(stdout_err)?;
    Ok(written)
}
