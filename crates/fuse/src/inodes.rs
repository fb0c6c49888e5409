//! Inode numbers: one per (parent inode, name), handed out on first sight
//! and never reused or renumbered while the mount lives, so `find`, `tar`
//! and `diff` see stable inodes.

use crate::layout::{SnapInfo, VDir};
use cairn_core::format::tree::Node;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

/// The root inode (FUSE's fixed number).
pub(crate) const ROOT: u64 = 1;

/// What an inode is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A virtual directory.
    Virtual(VDir),
    /// A virtual symlink (`latest`) and its target.
    Link(String),
    /// The root directory of a snapshot.
    SnapRoot(Arc<SnapInfo>),
    /// An entry inside a snapshot.
    Node(Arc<Node>),
}

impl Kind {
    /// Whether the kernel may cache this inode's attributes and entries
    /// for long: snapshot contents never change.
    pub fn immutable(&self) -> bool {
        matches!(self, Kind::SnapRoot(_) | Kind::Node(_))
    }
}

#[derive(Debug)]
struct Entry {
    parent: u64,
    kind: Kind,
}

/// Every inode handed out during the mount.
#[derive(Debug)]
pub(crate) struct Inodes {
    /// `entries[ino - 1]`.
    entries: Vec<Entry>,
    by_name: HashMap<(u64, OsString), u64>,
}

impl Inodes {
    /// A table holding only the root, of kind `root`.
    pub fn new(root: Kind) -> Self {
        Self {
            entries: vec![Entry {
                parent: ROOT,
                kind: root,
            }],
            by_name: HashMap::new(),
        }
    }

    /// The kind of `ino`.
    pub fn get(&self, ino: u64) -> Option<&Kind> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.entries.get(i).map(|e| &e.kind)
    }

    /// The parent of `ino` (the root is its own parent).
    pub fn parent(&self, ino: u64) -> u64 {
        ino.checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
            .map_or(ROOT, |e| e.parent)
    }

    /// The inode of `name` in `parent`, if handed out before.
    pub fn find(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.by_name.get(&(parent, name.to_os_string())).copied()
    }

    /// The inode of `name` in `parent`: the one handed out before (its kind
    /// refreshed to `kind`, which only matters for virtual entries such as
    /// `latest`), else a new one.
    pub fn child(&mut self, parent: u64, name: &OsStr, kind: Kind) -> u64 {
        if let Some(ino) = self.find(parent, name) {
            if !kind.immutable() {
                self.entries[(ino - 1) as usize].kind = kind;
            }
            return ino;
        }
        self.entries.push(Entry { parent, kind });
        let ino = self.entries.len() as u64;
        self.by_name.insert((parent, name.to_os_string()), ino);
        ino
    }

    /// Inodes handed out.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_and_never_reused() {
        let mut t = Inodes::new(Kind::Virtual(VDir::Root));
        let a = t.child(ROOT, OsStr::new("a"), Kind::Virtual(VDir::Snapshots));
        let b = t.child(ROOT, OsStr::new("b"), Kind::Link("x".into()));
        assert_ne!(a, b);
        assert_eq!(
            t.child(ROOT, OsStr::new("a"), Kind::Virtual(VDir::Snapshots)),
            a
        );
        // Same name under another parent: another inode.
        let c = t.child(a, OsStr::new("a"), Kind::Link("y".into()));
        assert!(c != a && c != b);
        assert_eq!(t.parent(c), a);
        // A virtual link's target is refreshed in place.
        assert_eq!(t.child(ROOT, OsStr::new("b"), Kind::Link("z".into())), b);
        assert!(matches!(t.get(b), Some(Kind::Link(s)) if s == "z"));
        assert!(t.get(0).is_none() && t.get(99).is_none());
        assert_eq!(t.len(), 4);
    }
}
