//! Connects cairn-policy's exclusion rules to the backup walker: [`Exclude`] for one
//! [`Excluder`], and [`RootExcluders`], one excluder per backup path.
//!
//! Invariant: every root is spelled as [`crate::backup::backup`] spells the paths it walks
//! (`std::path::absolute`, no symlink resolution), so the walker's paths start with it.

use crate::backup::Exclude;
use cairn_policy::exclude::{ExcludeOptions, Excluder};
use cairn_policy::PolicyError;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

impl Exclude for Excluder {
    fn is_excluded(&self, path: &Path, meta: &Metadata) -> bool {
        Excluder::is_excluded(self, path, meta)
    }

    fn listed(&self, dir: &Path, has: &dyn Fn(&OsStr) -> bool) {
        Excluder::listed(self, dir, has)
    }
}

/// The exclusion rules of a backup of several paths: each path is its own root (root-anchored
/// patterns, KDMP class entries and `--one-file-system` are relative to it), and an entry is
/// judged by the excluder of the deepest root it lies under.
#[derive(Debug)]
pub struct RootExcluders {
    /// Deepest root first, so the first root a path starts with is the one it belongs to.
    roots: Vec<(PathBuf, Excluder)>,
}

impl RootExcluders {
    /// Compiles `opts` once per backup path. A path that cannot be made absolute is kept as
    /// given (the backup then reports it). Fails as [`Excluder::new`] does.
    pub fn new(opts: &ExcludeOptions, paths: &[PathBuf]) -> Result<RootExcluders, PolicyError> {
        let mut roots = Vec::with_capacity(paths.len());
        for path in paths {
            let root = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let excluder = Excluder::new(opts, &root)?;
            roots.push((root, excluder));
        }
        roots.sort_by_key(|(root, _)| std::cmp::Reverse(root.components().count()));
        Ok(RootExcluders { roots })
    }

    /// The rules applied, for the snapshot record: the same options give the same rules for
    /// every root, so they are those of any root (none without paths).
    pub fn rules(&self) -> Vec<String> {
        self.roots
            .first()
            .map(|(_, excluder)| excluder.rules())
            .unwrap_or_default()
    }

    /// The excluder responsible for `path`: that of the deepest root containing it.
    fn excluder_for(&self, path: &Path) -> Option<&Excluder> {
        self.roots
            .iter()
            .find(|(root, _)| path.starts_with(root))
            .map(|(_, excluder)| excluder)
    }

    /// The rule leaving `path` out, if any (for verbose output and tests).
    pub fn excluded_by(&self, path: &Path, meta: &Metadata) -> Option<String> {
        self.excluder_for(path)?.excluded_by(path, meta)
    }
}

impl Exclude for RootExcluders {
    fn is_excluded(&self, path: &Path, meta: &Metadata) -> bool {
        self.excluder_for(path)
            .is_some_and(|excluder| excluder.is_excluded(path, meta))
    }

    fn listed(&self, dir: &Path, has: &dyn Fn(&OsStr) -> bool) {
        if let Some(excluder) = self.excluder_for(dir) {
            excluder.listed(dir, has);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_is_judged_against_its_own_root() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("a/b");
        std::fs::create_dir_all(b.join("x")).unwrap();
        std::fs::create_dir_all(a.join("x")).unwrap();
        let opts = ExcludeOptions {
            patterns: vec!["/x".into()],
            ..ExcludeOptions::default()
        };
        let set = RootExcluders::new(&opts, &[a.clone(), b.clone()]).unwrap();
        let meta = std::fs::symlink_metadata(a.join("x")).unwrap();
        // `/x` is anchored at each root: a/x under root a, a/b/x under root a/b.
        assert!(set.is_excluded(&a.join("x"), &meta));
        assert!(set.is_excluded(&b.join("x"), &meta));
        assert!(!set.is_excluded(&a.join("y/x"), &meta));
        assert!(!set.is_excluded(&dir.path().join("x"), &meta));
        assert_eq!(set.rules(), ["pattern:/x", "ignore-file:.cairnignore"]);
    }
}
