//! [`LimitStorage`]: bounds the number of requests in flight.
//!
//! Invariant: at most `max` calls run inside the inner storage at once;
//! further callers block (in arrival order is not guaranteed) until one
//! finishes. A permit is released even when the call fails or panics. The
//! close of a writer is a request and takes a permit; appends, which fill a
//! buffer or a staging file, do not.

use crate::{Abandoned, DynStorage, ObjectInfo, ObjectWriter, Result, Storage};
use bytes::Bytes;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

/// A counting semaphore for threads.
#[derive(Debug)]
struct Semaphore {
    in_use: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

/// Holds one permit; returns it on drop.
struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn acquire(&self) -> Permit<'_> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        while *in_use >= self.max {
            in_use = self.freed.wait(in_use).unwrap_or_else(|p| p.into_inner());
        }
        *in_use += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut in_use = self.0.in_use.lock().unwrap_or_else(|p| p.into_inner());
        *in_use -= 1;
        self.0.freed.notify_one();
    }
}

/// Lets at most `max` requests run in the inner storage at once.
#[derive(Debug)]
pub struct LimitStorage {
    inner: DynStorage,
    permits: Arc<Semaphore>,
}

/// A writer of the storage below whose close waits for a permit.
struct LimitWriter {
    inner: Box<dyn ObjectWriter>,
    permits: Arc<Semaphore>,
}

impl ObjectWriter for LimitWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn close(&mut self, path: &str) -> Result<()> {
        let _permit = self.permits.acquire();
        self.inner.close(path)
    }
}

impl LimitStorage {
    /// Wraps `inner`; `max` below 1 is treated as 1.
    pub fn new(inner: DynStorage, max: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore {
                in_use: Mutex::new(0),
                freed: Condvar::new(),
                max: max.max(1),
            }),
        }
    }

    /// Requests running in the inner storage right now.
    pub fn in_flight(&self) -> usize {
        *self
            .permits
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for LimitStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        let _permit = self.permits.acquire();
        self.inner.read(path)
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let _permit = self.permits.acquire();
        self.inner.read_range(path, range)
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        let _permit = self.permits.acquire();
        self.inner.write(path, data)
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(LimitWriter {
            inner: self.inner.clone().writer(size_hint)?,
            permits: self.permits.clone(),
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let _permit = self.permits.acquire();
        self.inner.list(prefix)
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let _permit = self.permits.acquire();
        self.inner.stat(path)
    }

    fn delete(&self, path: &str) -> Result<()> {
        let _permit = self.permits.acquire();
        self.inner.delete(path)
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records the most calls ever inside it at once; each call lingers so
    /// that callers overlap.
    #[derive(Debug, Default)]
    struct Gauge {
        inner: MemStorage,
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Storage for Gauge {
        fn read(&self, path: &str) -> Result<Bytes> {
            self.inner.read(path)
        }
        fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
            self.inner.read_range(path, range)
        }
        fn write(&self, path: &str, data: Bytes) -> Result<()> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.inner.write(path, data)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            self.inner.list(prefix)
        }
        fn stat(&self, path: &str) -> Result<ObjectInfo> {
            self.inner.stat(path)
        }
        fn delete(&self, path: &str) -> Result<()> {
            self.inner.delete(path)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
    }

    #[test]
    fn never_more_than_max_requests_run_at_once() {
        let gauge = Arc::new(Gauge::default());
        let limited = LimitStorage::new(gauge.clone(), 3);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let limited = &limited;
                scope.spawn(move || {
                    for i in 0..10 {
                        limited
                            .write(&format!("o/{t}/{i}"), Bytes::from_static(b"x"))
                            .unwrap();
                    }
                });
            }
        });
        let peak = gauge.peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "peak {peak}");
        assert_eq!(limited.in_flight(), 0);
        assert_eq!(gauge.inner.list("o/").unwrap().len(), 80);
    }
}
