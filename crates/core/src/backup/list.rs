//! The lister: lists, sorts, lstats and excludes the source's directories
//! on a thread of its own, in the order the scanner enters them, a bounded
//! number of entries ahead of it.
//!
//! On an unchanged tree the walk is the whole backup, and half of it is
//! these system calls: with them on another core the scanner only matches
//! entries against the parent. The lister starts before the parent
//! snapshot is loaded, so its first directories are listed while the
//! backup still reads the repository.
//!
//! Invariant: the lister descends into exactly the entries the scanner
//! does (every listed directory, excluded ones left out, in name order),
//! so its listings arrive in the order the scanner asks for them. A
//! listing for another path than the one asked for means the two went out
//! of step; the scanner then stops the lister and lists on its own.

use super::walk::Exclude;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Entries listed and not yet taken by the scanner, at most (as far as
/// whole directories allow: a larger directory is listed alone). About
/// 350 bytes each: ~11 MiB at most, the whole tree of 30k files listed
/// while the repository opens.
const ENTRIES_AHEAD: usize = 32 << 10;

/// One directory as the scanner walks it.
pub(super) struct Listed {
    pub path: PathBuf,
    /// Its entries in name order: name, path and lstat; excluded entries
    /// and those whose lstat failed are left out.
    pub entries: Vec<(OsString, PathBuf, Metadata)>,
    /// What could not be listed or lstat'ed, for the scanner to report.
    pub skipped: Vec<(PathBuf, std::io::Error)>,
}

/// Lists `path` as the scanner walks it.
pub(super) fn list_dir(path: &Path, exclude: Option<&dyn Exclude>) -> Listed {
    let mut skipped = Vec::new();
    let mut names: Vec<(OsString, std::fs::DirEntry)> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some((e.file_name(), e)),
                Err(err) => {
                    skipped.push((path.to_path_buf(), err));
                    None
                }
            })
            .collect(),
        Err(err) => {
            skipped.push((path.to_path_buf(), err));
            Vec::new()
        }
    };
    names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    if let Some(x) = exclude {
        let has = |name: &std::ffi::OsStr| {
            names
                .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
                .is_ok()
        };
        x.listed(path, &has);
    }
    let mut entries = Vec::with_capacity(names.len());
    for (name, dirent) in names {
        let child = dirent.path();
        // lstat relative to the open directory: no walk of the whole path
        // per entry.
        let meta = match dirent.metadata() {
            Ok(m) => m,
            Err(err) => {
                skipped.push((child, err));
                continue;
            }
        };
        if exclude.is_some_and(|x| x.is_excluded(&child, &meta)) {
            continue;
        }
        entries.push((name, child, meta));
    }
    Listed {
        path: path.to_path_buf(),
        entries,
        skipped,
    }
}

/// Entries listed ahead and not yet taken.
struct Budget {
    ahead: crate::sync::Budget,
    stop: AtomicBool,
}

impl Budget {
    /// Waits until `n` more entries fit (or nothing is ahead); false once
    /// the lister is stopped.
    fn reserve(&self, n: usize) -> bool {
        let stopped = || self.stop.load(Ordering::Acquire);
        self.ahead.take(n as u64, stopped);
        !stopped()
    }

    fn release(&self, n: usize) {
        self.ahead.give_back(n as u64);
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.ahead.wake_all();
    }
}

/// Lists directories ahead of the scanner (see the module's text).
pub(super) struct Lister {
    listings: Option<Receiver<Listed>>,
    budget: Arc<Budget>,
    thread: Option<JoinHandle<()>>,
}

impl Lister {
    /// Starts listing `roots` (the directories the scanner enters first,
    /// in order) and everything below them. Without a thread, lists
    /// nothing: the scanner lists on its own.
    pub fn start(roots: Vec<PathBuf>, exclude: Option<Arc<dyn Exclude>>) -> Lister {
        Self::start_ahead(roots, exclude, ENTRIES_AHEAD)
    }

    /// [`Lister::start`], at most `limit` entries ahead.
    fn start_ahead(roots: Vec<PathBuf>, exclude: Option<Arc<dyn Exclude>>, limit: usize) -> Lister {
        let budget = Arc::new(Budget {
            ahead: crate::sync::Budget::new(limit as u64),
            stop: AtomicBool::new(false),
        });
        let (tx, rx) = unbounded();
        let b = budget.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-list".into())
            .spawn(move || {
                for root in &roots {
                    if !descend(root, exclude.as_deref(), &tx, &b) {
                        return;
                    }
                }
            })
            .ok();
        Lister {
            listings: thread.as_ref().map(|_| rx),
            budget,
            thread,
        }
    }

    /// The listing of `path`, the next directory the scanner enters; `None`
    /// when the lister has nothing for it (stopped, or out of step: it is
    /// stopped then, and the caller lists on its own from here on).
    pub fn take(&mut self, path: &Path) -> Option<Listed> {
        let listed = self.listings.as_ref()?.recv().ok();
        match listed {
            Some(listed) if listed.path == path => {
                self.budget.release(listed.entries.len());
                Some(listed)
            }
            _ => {
                self.stop();
                None
            }
        }
    }

    fn stop(&mut self) {
        self.budget.stop();
        // Dropping the receiver fails the lister's next send.
        self.listings = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Lister {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lists `dir`, hands the listing on, then descends into its directories
/// in name order: the scanner's order. False once the scanner stopped
/// taking listings.
fn descend(
    dir: &Path,
    exclude: Option<&dyn Exclude>,
    tx: &Sender<Listed>,
    budget: &Budget,
) -> bool {
    let listed = list_dir(dir, exclude);
    let subdirs: Vec<PathBuf> = listed
        .entries
        .iter()
        .filter(|(_, _, meta)| meta.is_dir())
        .map(|(_, path, _)| path.clone())
        .collect();
    if !budget.reserve(listed.entries.len()) || tx.send(listed).is_err() {
        return false;
    }
    subdirs.iter().all(|d| descend(d, exclude, tx, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ExcludeNamed(&'static str);

    impl Exclude for ExcludeNamed {
        fn is_excluded(&self, path: &Path, _meta: &Metadata) -> bool {
            path.file_name().is_some_and(|n| n == self.0)
        }
    }

    fn names(listed: &Listed) -> Vec<String> {
        listed
            .entries
            .iter()
            .map(|(n, _, _)| n.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn listings_come_in_the_walks_order_without_excluded_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["b/y", "b/x/deep", "a", "skip/inside", "c"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("b/file"), "f").unwrap();
        let exclude: Arc<dyn Exclude> = Arc::new(ExcludeNamed("skip"));
        let mut lister = Lister::start(vec![root.to_path_buf()], Some(exclude));
        let top = lister.take(root).unwrap();
        assert_eq!(names(&top), ["a", "b", "c"]);
        let order = ["a", "b", "b/file", "b/x", "b/x/deep", "b/y", "c"];
        for want in order.iter().filter(|p| !p.ends_with("file")) {
            let listed = lister.take(&root.join(want)).unwrap();
            assert_eq!(listed.path, root.join(want));
        }
        assert!(lister.take(&root.join("skip")).is_none());
    }

    #[test]
    fn a_path_out_of_step_stops_the_lister() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let mut lister = Lister::start(vec![dir.path().to_path_buf()], None);
        assert!(lister.take(dir.path()).is_some());
        assert!(lister.take(&dir.path().join("b")).is_none());
        assert!(lister.take(&dir.path().join("a")).is_none());
    }

    #[test]
    fn a_directory_larger_than_the_budget_is_listed_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("big")).unwrap();
        std::fs::create_dir_all(dir.path().join("next")).unwrap();
        for i in 0..110 {
            std::fs::write(dir.path().join(format!("big/{i:06}")), "").unwrap();
        }
        let mut lister = Lister::start_ahead(vec![dir.path().to_path_buf()], None, 100);
        assert_eq!(lister.take(dir.path()).unwrap().entries.len(), 2);
        let big = lister.take(&dir.path().join("big")).unwrap();
        assert_eq!(big.entries.len(), 110);
        assert!(lister.take(&dir.path().join("next")).is_some());
    }

    #[test]
    fn an_unreadable_directory_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let listed = list_dir(&missing, None);
        assert!(listed.entries.is_empty());
        assert_eq!(listed.skipped.len(), 1);
        assert_eq!(listed.skipped[0].0, missing);
    }
}
