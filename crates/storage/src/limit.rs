//! [`LimitStorage`]: bounds the number of requests in flight.
//!
//! Invariant: at most `max` calls run inside the inner storage at once;
//! further callers block (in arrival order is not guaranteed) until one
//! finishes. A permit is released even when the call fails or panics.

use crate::{DynStorage, ObjectInfo, Result, Storage};
use bytes::Bytes;
use std::ops::Range;
use std::sync::{Condvar, Mutex};

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
    permits: Semaphore,
}

impl LimitStorage {
    /// Wraps `inner`; `max` below 1 is treated as 1.
    pub fn new(inner: DynStorage, max: usize) -> Self {
        Self {
            inner,
            permits: Semaphore {
                in_use: Mutex::new(0),
                freed: Condvar::new(),
                max: max.max(1),
            },
        }
    }

    /// Requests running in the inner storage right now.
    pub fn in_flight(&self) -> usize {
        *self.permits.in_use.lock().unwrap_or_else(|p| p.into_inner())
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

    fn location(&self) -> String {
        self.inner.location()
    }
}
