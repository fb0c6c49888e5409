//! [`CountingStorage`]: counts requests per operation kind and per top-level
//! folder, and bytes moved in each direction.
//!
//! Tests use it to hold request-count proportions (PUTs per pack, one LIST
//! of `index/` per open, range GETs per needed pack). Failed requests are
//! counted too: they cost a round trip all the same. The close of a writer
//! counts as one write of the object's bytes (appends are not requests).

use crate::{Abandoned, DynStorage, ObjectInfo, ObjectWriter, OpKind, Result, Storage};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Requests of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Whole-object reads.
    pub read: u64,
    /// Range reads.
    pub read_range: u64,
    /// Writes.
    pub write: u64,
    /// Listings.
    pub list: u64,
    /// Stats.
    pub stat: u64,
    /// Deletes.
    pub delete: u64,
}

impl OpCounts {
    /// The count for one kind.
    pub fn get(&self, kind: OpKind) -> u64 {
        match kind {
            OpKind::Read => self.read,
            OpKind::ReadRange => self.read_range,
            OpKind::Write => self.write,
            OpKind::List => self.list,
            OpKind::Stat => self.stat,
            OpKind::Delete => self.delete,
        }
    }

    fn bump(&mut self, kind: OpKind) {
        let slot = match kind {
            OpKind::Read => &mut self.read,
            OpKind::ReadRange => &mut self.read_range,
            OpKind::Write => &mut self.write,
            OpKind::List => &mut self.list,
            OpKind::Stat => &mut self.stat,
            OpKind::Delete => &mut self.delete,
        };
        *slot += 1;
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        OpKind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    /// Reads of either kind.
    pub fn reads(&self) -> u64 {
        self.read + self.read_range
    }

    fn minus(&self, earlier: &OpCounts) -> OpCounts {
        OpCounts {
            read: self.read.saturating_sub(earlier.read),
            read_range: self.read_range.saturating_sub(earlier.read_range),
            write: self.write.saturating_sub(earlier.write),
            list: self.list.saturating_sub(earlier.list),
            stat: self.stat.saturating_sub(earlier.stat),
            delete: self.delete.saturating_sub(earlier.delete),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Every request.
    pub all: OpCounts,
    /// Requests per top-level folder of the object path (`packs`, `index`,
    /// `snapshots`, `keys`, ...) or the object name for top-level objects
    /// (`config`, `cairn.repository`). A listing is filed under its prefix.
    pub by_prefix: BTreeMap<String, OpCounts>,
    /// Payload bytes written.
    pub bytes_up: u64,
    /// Payload bytes read.
    pub bytes_down: u64,
}

impl RequestCounts {
    /// Requests under one top-level folder (`"packs"`, `"index"`, ...).
    pub fn prefix(&self, name: &str) -> OpCounts {
        self.by_prefix.get(name).copied().unwrap_or_default()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            all: self.all.minus(&earlier.all),
            by_prefix: self
                .by_prefix
                .iter()
                .map(|(k, v)| {
                    let before = earlier.by_prefix.get(k).copied().unwrap_or_default();
                    (k.clone(), v.minus(&before))
                })
                .filter(|(_, v)| v.total() > 0)
                .collect(),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

/// The top-level folder (or name) a path is filed under.
fn top_level(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    path.split('/').next().unwrap_or(path)
}

/// Counts the requests that pass through to the inner storage.
#[derive(Debug)]
pub struct CountingStorage {
    inner: DynStorage,
    counts: Arc<Counts>,
}

/// The counters, shared with the writers.
#[derive(Debug, Default)]
struct Counts(Mutex<RequestCounts>);

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, RequestCounts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, kind: OpKind, path: &str, up: u64, down: u64) {
        let mut c = self.lock();
        c.all.bump(kind);
        c.by_prefix
            .entry(top_level(path).to_string())
            .or_default()
            .bump(kind);
        c.bytes_up += up;
        c.bytes_down += down;
    }
}

/// A writer of the storage below whose every close is counted.
struct CountingWriter {
    inner: Box<dyn ObjectWriter>,
    counts: Arc<Counts>,
}

impl ObjectWriter for CountingWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn close(&mut self, path: &str) -> Result<()> {
        let result = self.inner.close(path);
        self.counts.record(OpKind::Write, path, self.inner.len(), 0);
        result
    }
}

impl CountingStorage {
    /// Wraps `inner` with all counters at zero.
    pub fn new(inner: DynStorage) -> Self {
        Self {
            inner,
            counts: Arc::default(),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> RequestCounts {
        self.counts.lock().clone()
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        *self.counts.lock() = RequestCounts::default();
    }

    fn record(&self, kind: OpKind, path: &str, up: u64, down: u64) {
        self.counts.record(kind, path, up, down);
    }
}

impl Storage for CountingStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        let result = self.inner.read(path);
        let len = result.as_ref().map_or(0, |d| d.len() as u64);
        self.record(OpKind::Read, path, 0, len);
        result
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let result = self.inner.read_range(path, range);
        let len = result.as_ref().map_or(0, |d| d.len() as u64);
        self.record(OpKind::ReadRange, path, 0, len);
        result
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        let result = self.inner.write(path, data);
        self.record(OpKind::Write, path, len, 0);
        result
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(CountingWriter {
            inner: self.inner.clone().writer(size_hint)?,
            counts: self.counts.clone(),
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let result = self.inner.list(prefix);
        self.record(OpKind::List, prefix, 0, 0);
        result
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let result = self.inner.stat(path);
        self.record(OpKind::Stat, path, 0, 0);
        result
    }

    fn delete(&self, path: &str) -> Result<()> {
        let result = self.inner.delete(path);
        self.record(OpKind::Delete, path, 0, 0);
        result
    }

    fn sweep_abandoned(&self, cutoff: std::time::SystemTime, dry_run: bool) -> Result<Abandoned> {
        self.inner.sweep_abandoned(cutoff, dry_run)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn missing_root(&self) -> Option<String> {
        self.inner.missing_root()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    #[test]
    fn counts_requests_per_kind_and_folder_with_bytes() {
        let counting = CountingStorage::new(Arc::new(MemStorage::new()));
        counting
            .write("packs/ab/ab12", Bytes::from_static(b"12345"))
            .unwrap();
        counting
            .write("index/01", Bytes::from_static(b"xy"))
            .unwrap();
        counting.write("config", Bytes::from_static(b"c")).unwrap();
        let before = counting.snapshot();
        counting.read_range("packs/ab/ab12", 1..3).unwrap();
        counting.list("index/").unwrap();
        counting.read("index/01").unwrap();
        assert!(counting.read("index/missing").is_err());
        let c = counting.snapshot();
        assert_eq!(before.all.write, 3);
        assert_eq!(before.bytes_up, 8);
        assert_eq!(before.prefix("packs").write, 1);
        assert_eq!(before.prefix("config").write, 1);
        let d = c.since(&before);
        assert_eq!(d.all.total(), 4);
        assert_eq!(d.prefix("packs").read_range, 1);
        assert_eq!(d.prefix("index").list, 1);
        assert_eq!(d.prefix("index").read, 2);
        assert_eq!(d.bytes_down, 4);
        assert_eq!(d.bytes_up, 0);
        assert!(!d.by_prefix.contains_key("config"));
        counting.reset();
        assert_eq!(counting.snapshot(), RequestCounts::default());
    }
}
