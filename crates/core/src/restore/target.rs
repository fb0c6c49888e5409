//! The restore target on disk: making room for an entry, creating
//! directories, files at their final size and special files.

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeType, Payload};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(super) fn clear_path(path: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(_) if !overwrite => Err(in_the_way(path)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e)),
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io(path, e)),
    }
}

pub(super) fn make_dir(path: &Path, overwrite: bool) -> Result<()> {
    // The common case, a new directory whose parent exists, in one call;
    // anything else (it exists, or its parent does not) is looked at.
    if std::fs::create_dir(path).is_ok() {
        return Ok(());
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            clear_path(path, overwrite)?;
            std::fs::create_dir(path).map_err(|e| Error::io(path, e))
        }
        Err(_) => std::fs::create_dir_all(path).map_err(|e| Error::io(path, e)),
    }
}

/// Creates the file `path` at `size` (a hole until written) and returns it
/// open for writing.
pub(super) fn create_sized(path: &Path, size: u64, overwrite: bool) -> Result<std::fs::File> {
    let f = if overwrite {
        clear_path(path, overwrite)?;
        std::fs::File::create(path).map_err(|e| Error::io(path, e))?
    } else {
        // Without --overwrite, creating exclusively is the check that
        // nothing is in the way: one call instead of a lookup and a create.
        match std::fs::File::create_new(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(in_the_way(path));
            }
            Err(e) => return Err(Error::io(path, e)),
        }
    };
    if size > 0 {
        f.set_len(size).map_err(|e| Error::io(path, e))?;
    }
    Ok(f)
}

fn in_the_way(path: &Path) -> Error {
    Error::Usage(format!(
        "{} exists; pass --overwrite to replace it",
        path.display()
    ))
}

pub(super) fn make_special(path: &Path, node: &Node, overwrite: bool) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    clear_path(path, overwrite)?;
    let mode = Mode::from_bits_truncate(node.mode);
    let res = match (&node.payload, node.kind) {
        (Payload::Symlink(target), _) => {
            return std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
                .map_err(|e| Error::io(path, e))
        }
        (_, NodeType::Fifo) => nix::unistd::mkfifo(path, mode),
        (_, NodeType::CharDev) => mknod(path, SFlag::S_IFCHR, mode, node.rdev),
        (_, NodeType::BlockDev) => mknod(path, SFlag::S_IFBLK, mode, node.rdev),
        (_, NodeType::Socket) => {
            return Err(Error::Usage(format!(
                "{}: sockets are recorded but not recreated",
                path.display()
            )))
        }
        _ => return Ok(()),
    };
    res.map_err(|e| Error::io(path, std::io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_the_way_is_refused_without_overwrite_and_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_sized(&path, 10, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
        let e = create_sized(&path, 5, false).unwrap_err();
        assert!(e.to_string().contains("exists; pass --overwrite"), "{e}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            10,
            "left as it was"
        );
        create_sized(&path, 5, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5);
        // A directory in the way goes too, with --overwrite only.
        let sub = dir.path().join("d");
        make_dir(&sub, false).unwrap();
        std::fs::write(sub.join("x"), b"x").unwrap();
        assert!(create_sized(&sub, 1, false).is_err());
        create_sized(&sub, 1, true).unwrap();
        assert!(std::fs::metadata(&sub).unwrap().is_file());
        // A new empty file gets no size call and is empty.
        create_sized(&dir.path().join("empty"), 0, false).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("empty")).unwrap().len(),
            0
        );
    }

    #[test]
    fn make_dir_keeps_a_directory_and_replaces_a_file_only_with_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        make_dir(&d, false).unwrap();
        make_dir(&d, false).unwrap();
        assert!(d.is_dir());
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(make_dir(&f, false).is_err());
        assert!(f.is_file());
        make_dir(&f, true).unwrap();
        assert!(f.is_dir());
    }
}
