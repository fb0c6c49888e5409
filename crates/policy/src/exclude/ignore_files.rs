//! Per-directory ignore files (`.cairnignore`) in gitignore syntax, parsed once per
//! directory and cached.
//!
//! Invariants: a directory's chain lists the ignore files that apply to its entries, from the
//! backup root down to the directory itself; the deepest file with a matching rule decides
//! (a `!` rule there re-includes), as in git. The cache holds at most [`CACHE_DIRS`]
//! directories and is cleared when full, so memory does not grow with the tree; a miss
//! only costs re-reading the ignore files of the directory's ancestors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

/// Directories whose chains are cached at once. A walker descending in order needs only the
/// chains of the directories it is inside, far fewer than this.
const CACHE_DIRS: usize = 4096;

/// The ignore files applying to one directory's entries, shallowest first.
type Chain = Arc<Vec<Arc<Gitignore>>>;

#[derive(Debug)]
pub(crate) struct IgnoreFiles {
    root: PathBuf,
    file_name: String,
    /// Most directories cached at once; [`CACHE_DIRS`] outside tests.
    capacity: usize,
    cache: RwLock<HashMap<PathBuf, Chain>>,
}

impl IgnoreFiles {
    pub(crate) fn new(root: &Path, file_name: &str) -> Self {
        Self::with_capacity(root, file_name, CACHE_DIRS)
    }

    fn with_capacity(root: &Path, file_name: &str, capacity: usize) -> Self {
        Self {
            root: root.to_path_buf(),
            file_name: file_name.to_string(),
            capacity: capacity.max(1),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The rule excluding `path` (an entry below the root), as `<ignore file>:<pattern>`,
    /// or `None` when no ignore file excludes it or the deepest match re-includes it.
    pub(crate) fn matched(&self, path: &Path, is_dir: bool) -> Option<String> {
        let dir = path.parent()?;
        let chain = self.chain_for(dir);
        for gitignore in chain.iter().rev() {
            match gitignore.matched(path, is_dir) {
                Match::None => continue,
                Match::Whitelist(_) => return None,
                Match::Ignore(glob) => {
                    let file = glob
                        .from()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| self.file_name.clone());
                    return Some(format!("{file}:{}", glob.original()));
                }
            }
        }
        None
    }

    /// Told the names `dir` holds: when its ignore file is not among them, its chain is its
    /// parent's, cached now without looking for the file (one failed open a directory).
    pub(crate) fn listed(&self, dir: &Path, has: &dyn Fn(&std::ffi::OsStr) -> bool) {
        if has(std::ffi::OsStr::new(&self.file_name)) || !dir.starts_with(&self.root) {
            return;
        }
        if self.read_cache().contains_key(dir) {
            return;
        }
        let chain = self.parent_chain(dir);
        self.remember(dir, chain);
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PathBuf, Chain>> {
        self.cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, dir: &Path, chain: Chain) {
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= self.capacity {
            cache.clear();
        }
        cache.insert(dir.to_path_buf(), chain);
    }

    /// The chain of `dir`'s parent (none for the root).
    fn parent_chain(&self, dir: &Path) -> Chain {
        match dir.parent() {
            Some(parent) if dir != self.root && parent.starts_with(&self.root) => {
                self.chain_for(parent)
            }
            _ => Arc::new(Vec::new()),
        }
    }

    /// The chain of `dir`, from the cache or built from its parent's chain. `dir` must be the
    /// root or below it.
    fn chain_for(&self, dir: &Path) -> Chain {
        if let Some(chain) = self.read_cache().get(dir) {
            return chain.clone();
        }
        let parent_chain = self.parent_chain(dir);
        let chain = match self.load(dir) {
            Some(own) => {
                let mut files = parent_chain.as_ref().clone();
                files.push(Arc::new(own));
                Arc::new(files)
            }
            None => parent_chain,
        };
        self.remember(dir, chain.clone());
        chain
    }

    /// Parses `dir`'s ignore file. A missing file is `None`; an unreadable file or bad lines
    /// are logged and skipped (the backup goes on with the rules that could be read).
    fn load(&self, dir: &Path) -> Option<Gitignore> {
        let path = dir.join(&self.file_name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read ignore file; its rules are not applied");
                return None;
            }
        };
        let mut builder = GitignoreBuilder::new(dir);
        for (index, line) in text.lines().enumerate() {
            if let Err(e) = builder.add_line(Some(path.clone()), line) {
                tracing::warn!(
                    path = %path.display(),
                    line = index + 1,
                    error = %e,
                    "skipping invalid line in ignore file"
                );
            }
        }
        match builder.build() {
            Ok(gitignore) if gitignore.is_empty() => None,
            Ok(gitignore) => Some(gitignore),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot use ignore file; its rules are not applied");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.bak` below `root` is matched by the root rule, except in `d1` whose own file
    /// re-includes it; checked in two rounds so the second one runs on evicted chains.
    #[test]
    fn rules_stay_right_when_the_cache_overflows() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join(".cairnignore"), "*.bak\n").unwrap();
        for i in 0..10 {
            std::fs::create_dir_all(r.join(format!("d{i}/deeper"))).unwrap();
        }
        std::fs::write(r.join("d1/.cairnignore"), "!x.bak\n").unwrap();
        let files = IgnoreFiles::with_capacity(r, ".cairnignore", 3);
        for _round in 0..2 {
            for i in 0..10 {
                let expect_excluded = i != 1;
                for path in [format!("d{i}/x.bak"), format!("d{i}/deeper/x.bak")] {
                    let matched = files.matched(&r.join(&path), false);
                    assert_eq!(matched.is_some(), expect_excluded, "{path}: {matched:?}");
                }
                assert_eq!(files.matched(&r.join(format!("d{i}/x.txt")), false), None);
            }
            assert!(files.cache.read().unwrap().len() <= 3);
        }
    }

    /// A directory whose listing lacks the ignore file takes its parent's rules without
    /// looking for the file (one created after the listing is not read); one whose listing
    /// holds it reads it, under the parent's rules.
    #[test]
    fn a_listing_without_the_ignore_file_is_not_probed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join(".cairnignore"), "*.bak\n").unwrap();
        std::fs::create_dir_all(r.join("plain")).unwrap();
        std::fs::create_dir_all(r.join("own")).unwrap();
        std::fs::write(r.join("own/.cairnignore"), "*.tmp\n").unwrap();
        let files = IgnoreFiles::new(r, ".cairnignore");
        let holds = |names: &'static [&'static str]| {
            move |n: &std::ffi::OsStr| names.iter().any(|x| std::ffi::OsStr::new(x) == n)
        };
        files.listed(r, &holds(&[".cairnignore", "own", "plain"]));
        files.listed(&r.join("plain"), &holds(&["a.tmp", "a.bak"]));
        files.listed(&r.join("own"), &holds(&[".cairnignore", "a.tmp"]));
        // Written after the listing said `plain` has none: not read.
        std::fs::write(r.join("plain/.cairnignore"), "*.tmp\n").unwrap();
        assert!(files.matched(&r.join("plain/a.bak"), false).is_some());
        assert_eq!(files.matched(&r.join("plain/a.tmp"), false), None);
        assert!(files.matched(&r.join("own/a.tmp"), false).is_some());
        assert!(files.matched(&r.join("own/a.bak"), false).is_some());
    }
}
