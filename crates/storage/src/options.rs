//! [`StorageOptions`]: the knobs of the production storage stack.

use crate::RetryPolicy;
use std::time::Duration;

/// How the storage stack behaves: limits, retries, timeouts, concurrency.
///
/// Build with struct update syntax:
/// `StorageOptions { limit_upload: Some(10 << 20), ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    /// Upload limit in bytes per second (`--limit-upload`); `None` = unlimited.
    pub limit_upload: Option<u64>,
    /// Download limit in bytes per second (`--limit-download`); `None` = unlimited.
    pub limit_download: Option<u64>,
    /// How many times a request that failed with a temporary error (or a
    /// short read) is retried after the first attempt. 0 disables retries.
    pub retries: u32,
    /// First retry delay; each further retry doubles it, up to
    /// `retry_max_delay`, and the actual sleep is a random fraction of it.
    pub retry_base_delay: Duration,
    /// Upper bound of one retry delay.
    pub retry_max_delay: Duration,
    /// Deadline of one metadata request (stat, list, delete). A request
    /// that exceeds it is abandoned and fails with a `Temporary` error.
    pub timeout: Duration,
    /// Deadline of one data request (read, read_range, write of a whole
    /// object). Must cover the largest object at the slowest acceptable
    /// transfer rate: a 32 MiB pack at 1 MiB/s takes 32 s.
    pub io_timeout: Duration,
    /// Most requests in flight at once through this stack; callers beyond
    /// it wait. At least 1.
    pub max_concurrency: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            limit_upload: None,
            limit_download: None,
            retries: 6,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(180),
            max_concurrency: 16,
        }
    }
}

impl StorageOptions {
    /// The retry policy these options describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.retries,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
        }
    }
}
