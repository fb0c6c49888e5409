//! [`ThrottleStorage`]: token buckets that hold uploads and downloads to a
//! number of bytes per second.
//!
//! Invariant: over any interval of length `t`, at most `rate * (t + 1 s)`
//! bytes pass in one direction. A transfer larger than the bucket borrows
//! from the future: the bucket goes negative and the *next* transfer waits
//! until it is repaid. Concurrent callers reserve their share under a lock
//! and sleep outside it, so waits queue up in arrival order.

use crate::{Abandoned, DynStorage, ObjectInfo, ObjectWriter, Result, Storage};
use bytes::Bytes;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bucket refilling at `rate` bytes per second, holding up to one
/// second's worth. Shared by threads (it locks); the backup's source-read
/// limit uses one too.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Bytes available now; negative while a large transfer is being repaid.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            state: Mutex::new(BucketState {
                tokens: rate,
                last: now,
            }),
        }
    }

    /// Takes `bytes` at time `now` and returns how long the caller must wait
    /// before its transfer may proceed (zero while the bucket is positive).
    pub(crate) fn take(&self, bytes: u64, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate).min(self.rate);
        s.last = s.last.max(now);
        let wait = if s.tokens < 0.0 {
            Duration::from_secs_f64(-s.tokens / self.rate)
        } else {
            Duration::ZERO
        };
        s.tokens -= bytes as f64;
        wait
    }

    /// Takes `bytes` now and sleeps until the caller may go on.
    pub fn pace(&self, bytes: u64) {
        let wait = self.take(bytes, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Limits the bytes per second written and read through the inner storage.
///
/// Writes wait before they are sent; an object streamed through a writer
/// is charged whole when it is closed, before the inner close (on object
/// stores, when its bytes are sent; each retried close is charged again,
/// like a retried write). Reads are charged once their size is known
/// (range reads before, whole reads after), so a whole read may overshoot
/// by one object and the next read waits it off. Lists, stats and deletes
/// carry no payload and are not throttled.
#[derive(Debug)]
pub struct ThrottleStorage {
    inner: DynStorage,
    up: Option<Arc<TokenBucket>>,
    down: Option<TokenBucket>,
}

/// A writer of the storage below whose close waits for the upload bucket.
struct ThrottleWriter {
    inner: Box<dyn ObjectWriter>,
    up: Arc<TokenBucket>,
}

impl ObjectWriter for ThrottleWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn close(&mut self, path: &str) -> Result<()> {
        self.up.pace(self.inner.len());
        self.inner.close(path)
    }
}

impl ThrottleStorage {
    /// Wraps `inner` with upload and download limits in bytes per second;
    /// `None` leaves that direction unlimited.
    pub fn new(inner: DynStorage, limit_upload: Option<u64>, limit_download: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            up: limit_upload.map(|r| Arc::new(TokenBucket::new(r, now))),
            down: limit_download.map(|r| TokenBucket::new(r, now)),
        }
    }
}

impl Storage for ThrottleStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        if let Some(down) = &self.down {
            // Repay earlier debt before starting, then charge what arrived.
            down.pace(0);
            let data = self.inner.read(path)?;
            down.take(data.len() as u64, Instant::now());
            return Ok(data);
        }
        self.inner.read(path)
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        if let Some(down) = &self.down {
            down.pace(range.end.saturating_sub(range.start));
        }
        self.inner.read_range(path, range)
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        if let Some(up) = &self.up {
            up.pace(data.len() as u64);
        }
        self.inner.write(path, data)
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.clone().writer(size_hint)?;
        Ok(match &self.up {
            Some(up) => Box::new(ThrottleWriter {
                inner,
                up: up.clone(),
            }),
            None => inner,
        })
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

    #[test]
    fn a_full_bucket_lets_one_second_through_then_makes_callers_wait() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1000, t0);
        assert_eq!(bucket.take(600, t0), Duration::ZERO);
        assert_eq!(bucket.take(600, t0), Duration::ZERO); // goes to -200
        assert_eq!(bucket.take(100, t0), Duration::from_millis(200));
        // 300 bytes in debt now; half a second later 200 remain.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(bucket.take(0, later), Duration::ZERO);
    }

    #[test]
    fn a_transfer_larger_than_the_bucket_is_repaid_by_the_next_caller() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100, t0);
        assert_eq!(bucket.take(1000, t0), Duration::ZERO); // -900
        assert_eq!(bucket.take(0, t0), Duration::from_secs(9));
    }

    #[test]
    fn idle_time_refills_at_most_one_second_of_tokens() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100, t0);
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.take(200, much_later), Duration::ZERO); // 100 - 200 = -100
        assert_eq!(bucket.take(0, much_later), Duration::from_secs(1));
    }
}
