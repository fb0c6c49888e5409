//! [`RetryStorage`]: retries temporary failures and short reads with
//! exponential backoff and full jitter.
//!
//! Invariant: only `Temporary` errors are retried, and every `Storage`
//! operation is safe to repeat (writes replace whole objects, deletes are
//! idempotent, a writer's close may be repeated), so a retry never changes
//! the outcome of a request that succeeded server-side but whose answer was
//! lost. Appends to a writer are not retried: one that failed may have been
//! applied in part, so the writer is abandoned.

use crate::{
    Abandoned, DynStorage, ObjectInfo, ObjectWriter, Result, Storage, StorageError,
    StorageErrorKind,
};
use bytes::Bytes;
use rand::Rng;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// When and how long to wait before trying a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// Delay bound before the first retry; doubles for each later one.
    pub base_delay: Duration,
    /// Upper bound of any single delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The largest delay before retry number `retry` (0-based):
    /// `min(max_delay, base_delay * 2^retry)`. The actual sleep is drawn
    /// uniformly from `[0, bound]` ("full jitter"), so many clients that
    /// failed together do not retry together.
    pub fn delay_bound(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Retries `Temporary` failures of the inner storage.
#[derive(Debug)]
pub struct RetryStorage {
    inner: DynStorage,
    policy: RetryPolicy,
}

impl RetryStorage {
    /// Wraps `inner`.
    pub fn new(inner: DynStorage, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    fn retry<T>(&self, what: &str, attempt: impl FnMut() -> Result<T>) -> Result<T> {
        retry(&self.policy, what, attempt)
    }
}

/// A writer of the storage below whose close is retried.
struct RetryWriter {
    inner: Box<dyn ObjectWriter>,
    policy: RetryPolicy,
}

impl ObjectWriter for RetryWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn close(&mut self, path: &str) -> Result<()> {
        let inner = &mut self.inner;
        retry(&self.policy, "write", || inner.close(path))
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the retries of
/// `policy` are spent; the last error then says how many attempts were made.
fn retry<T>(policy: &RetryPolicy, what: &str, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut retry = 0;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if e.is_temporary() && retry < policy.max_retries => {
                let bound = policy.delay_bound(retry);
                let delay = rand::thread_rng().gen_range(Duration::ZERO..=bound);
                retry += 1;
                tracing::warn!(
                    operation = what,
                    retry,
                    max_retries = policy.max_retries,
                    delay_ms = delay.as_millis() as u64,
                    error = %e,
                    "temporary storage error; retrying"
                );
                std::thread::sleep(delay);
            }
            Err(mut e) => {
                if e.is_temporary() && retry > 0 {
                    e.message = format!("{} (gave up after {} attempts)", e.message, retry + 1);
                }
                return Err(e);
            }
        }
    }
}

impl Storage for RetryStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        self.retry("read", || self.inner.read(path))
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        self.retry("read_range", || {
            let data = self.inner.read_range(path, range.clone())?;
            if data.len() as u64 == want {
                Ok(data)
            } else {
                Err(StorageError::new(
                    StorageErrorKind::Temporary,
                    format!("read {path} [{}..{}]", range.start, range.end),
                    format!("short read: got {} of {want} bytes", data.len()),
                ))
            }
        })
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        self.retry("write", || self.inner.write(path, data.clone()))
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(RetryWriter {
            inner: self.inner.clone().writer(size_hint)?,
            policy: self.policy,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.retry("list", || self.inner.list(prefix))
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        self.retry("stat", || self.inner.stat(path))
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.retry("delete", || self.inner.delete(path))
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
    fn delay_bound_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let bounds: Vec<u128> = (0..6).map(|r| p.delay_bound(r).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay_bound(u32::MAX), Duration::from_secs(1));
    }
}
