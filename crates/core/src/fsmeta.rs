//! Converting between file-system metadata and tree nodes, both directions.

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeType, Payload};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The node type of `meta`.
pub fn node_type(meta: &Metadata) -> NodeType {
    let ft = meta.file_type();
    if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        NodeType::Symlink
    } else if ft.is_char_device() {
        NodeType::CharDev
    } else if ft.is_block_device() {
        NodeType::BlockDev
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_socket() {
        NodeType::Socket
    } else {
        NodeType::File
    }
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// A node for `name` from its lstat, with an empty payload.
pub fn node_from_meta(name: &OsStr, meta: &Metadata) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind: node_type(meta),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        size: meta.size(),
        inode: meta.ino(),
        dev: meta.dev(),
        nlink: meta.nlink(),
        rdev: meta.rdev(),
        xattrs: Vec::new(),
        payload: Payload::None,
    }
}

/// Extended attributes of `path` (not following symlinks), sorted by name.
/// File systems without xattr support yield none.
pub fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    sorted_xattrs(names, |n| xattr::get(path, n))
}

/// [`read_xattrs`] of a file open for reading: no path lookup, and the
/// attributes are those of the very file whose content is read.
pub fn read_xattrs_of(file: &std::fs::File) -> Vec<(Vec<u8>, Vec<u8>)> {
    use xattr::FileExt;
    let Ok(names) = file.list_xattr() else {
        return Vec::new();
    };
    sorted_xattrs(names, |n| file.get_xattr(n))
}

fn sorted_xattrs(
    names: xattr::XAttrs,
    get: impl Fn(&OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|n| {
            let v = get(&n).ok().flatten()?;
            Some((n.as_bytes().to_vec(), v))
        })
        .collect();
    out.sort();
    out
}

/// Applies owner, mode, xattrs and times of `node` to `path`.
/// Owners only when `owners` (root); modes not on symlinks.
pub fn apply_metadata(path: &Path, node: &Node, owners: bool) -> Result<()> {
    let is_link = node.kind == NodeType::Symlink;
    if owners {
        nix::unistd::fchownat(
            None,
            path,
            Some(nix::unistd::Uid::from_raw(node.uid)),
            Some(nix::unistd::Gid::from_raw(node.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io(path, std::io::Error::from(e)))?;
    }
    if !is_link {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))
            .map_err(|e| Error::io(path, e))?;
    }
    for (k, v) in &node.xattrs {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(k), v) {
            tracing::warn!(
                "{}: cannot restore xattr {}: {e}",
                path.display(),
                String::from_utf8_lossy(k)
            );
        }
    }
    let mtime = filetime::FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    // utimensat without following links and without opening the path:
    // opening a fifo would block.
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(|e| Error::io(path, e))
}
