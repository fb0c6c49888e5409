//! Live counters a long operation updates and a front end polls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Progress of a backup or restore, updated from worker threads.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files_done: AtomicU64,
    /// Content bytes processed.
    pub bytes_done: AtomicU64,
    /// Files expected (grows while the scan runs).
    pub files_total: AtomicU64,
    /// Bytes expected (grows while the scan runs).
    pub bytes_total: AtomicU64,
    /// Whether the totals are final.
    pub scan_done: AtomicBool,
    /// Errors met (unreadable entries).
    pub errors: AtomicU64,
    /// Files that changed while they were read.
    pub changed: AtomicU64,
    /// The first [`CHANGED_LISTED`] of them, with what changed.
    pub changed_paths: std::sync::Mutex<Vec<(std::path::PathBuf, String)>>,
}

/// How many files that changed while read a backup lists by name (all are
/// counted).
pub const CHANGED_LISTED: usize = 100;

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Files finished.
    pub files_done: u64,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Files expected.
    pub files_total: u64,
    /// Bytes expected.
    pub bytes_total: u64,
    /// Whether the totals are final.
    pub scan_done: bool,
    /// Errors met.
    pub errors: u64,
}

impl Progress {
    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            scan_done: self.scan_done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs and counts an entry left out because it cannot be read.
    /// Records a file that changed while it was read: what was stored is
    /// neither its content before nor after (borg: "file changed while we
    /// backed it up").
    pub(crate) fn changed_while_read(&self, path: &std::path::Path, what: &str) {
        tracing::debug!("{} changed while it was read: {what}", path.display());
        self.changed.fetch_add(1, Ordering::Relaxed);
        let mut listed = crate::sync::lock(&self.changed_paths);
        if listed.len() < CHANGED_LISTED {
            listed.push((path.to_path_buf(), what.to_string()));
        }
    }

    pub(crate) fn skip(&self, path: &std::path::Path, err: &std::io::Error) {
        tracing::warn!("skipping {}: {err}", path.display());
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}
