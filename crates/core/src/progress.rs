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
}

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
    pub(crate) fn skip(&self, path: &std::path::Path, err: &std::io::Error) {
        tracing::warn!("skipping {}: {err}", path.display());
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}
