//! [`Storage`] on an OpenDAL operator, driven by a private tokio runtime,
//! with a deadline on every request.
//!
//! Invariants: every request is bounded by a timeout (a sync caller cannot
//! cancel, so the deadline lives here, around the future); `read_range`
//! returns exactly the bytes asked for or an error; `list` reports the real
//! size of every object.

use crate::location::{process_env, Location};
use crate::{ObjectInfo, Result, Storage, StorageError, StorageErrorKind, StorageOptions};
use bytes::Bytes;
use opendal::{ErrorKind, Operator};
use std::future::IntoFuture;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Stats run at once when a listing has to look up sizes (filesystem).
const LIST_STAT_CONCURRENCY: usize = 32;

/// Name of the local staging directory for atomic filesystem writes.
const FS_STAGING_DIR: &str = ".tmp/";

/// A repository root on any OpenDAL service.
pub struct OpendalStorage {
    op: Operator,
    runtime: tokio::runtime::Runtime,
    location: String,
    context: Arc<ErrorContext>,
    timeout: Duration,
    io_timeout: Duration,
}

/// What error messages may say about the service (never credentials).
#[derive(Debug, Default)]
struct ErrorContext {
    credential_hint: String,
    bucket: Option<String>,
    location: String,
}

impl std::fmt::Debug for OpendalStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpendalStorage")
            .field("location", &self.location)
            .finish()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn-io")
        .enable_all()
        .build()
        .map_err(|e| {
            StorageError::new(
                StorageErrorKind::Other,
                "start I/O runtime",
                format!("cannot start the I/O runtime: {e}"),
            )
        })
}

impl OpendalStorage {
    /// Opens `location` with the timeouts of `opts`; credentials come from
    /// the process environment (see docs/STORAGE.md).
    pub fn open(location: &Location, opts: &StorageOptions) -> Result<Self> {
        let op = location.operator(&process_env)?;
        let context = ErrorContext {
            credential_hint: location.credential_hint().to_string(),
            bucket: location.bucket().map(str::to_string),
            location: location.redacted(),
        };
        Ok(Self {
            op,
            runtime: runtime()?,
            location: location.redacted(),
            context: Arc::new(context),
            timeout: opts.timeout,
            io_timeout: opts.io_timeout,
        })
    }

    /// A local directory (or mounted NFS share) with default timeouts.
    /// Writes go to a temporary file in `<root>/.tmp` and are renamed into
    /// place, so a killed process never leaves a partial object under its
    /// final name.
    pub fn fs(root: &str) -> Result<Self> {
        Self::open(&Location::parse(root)?, &StorageOptions::default())
    }

    /// Wraps an already-configured operator, with default timeouts.
    pub fn from_operator(op: Operator, location: String) -> Result<Self> {
        let opts = StorageOptions::default();
        Ok(Self {
            op,
            runtime: runtime()?,
            context: Arc::new(ErrorContext {
                credential_hint: "check the backend's credentials".to_string(),
                bucket: None,
                location: location.clone(),
            }),
            location,
            timeout: opts.timeout,
            io_timeout: opts.io_timeout,
        })
    }

    /// Runs one request under `deadline`; a request that exceeds it is
    /// dropped (cancelling its I/O) and becomes a `Temporary` error.
    fn run<T>(
        &self,
        op: &str,
        deadline: Duration,
        fut: impl IntoFuture<Output = opendal::Result<T>>,
    ) -> Result<T> {
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(deadline, fut.into_future()).await });
        match outcome {
            Ok(result) => result.map_err(|e| self.context.map(e, op)),
            Err(_) => Err(StorageError::new(
                StorageErrorKind::Temporary,
                op,
                format!(
                    "timed out after {deadline:?} waiting for {}; is the endpoint reachable?",
                    self.context.location
                ),
            )),
        }
    }

    /// Fills in sizes the service's listing did not report (the filesystem
    /// lister does not stat). A listed size of 0 is confirmed with one stat
    /// per such object: every object on fs, only truly empty objects on S3,
    /// Azure, GCS and WebDAV, whose listings carry sizes. An object deleted
    /// between the listing and its stat is dropped from the result.
    fn confirm_sizes(&self, op: &str, objects: Vec<ObjectInfo>) -> Result<Vec<ObjectInfo>> {
        if objects.iter().all(|o| o.size > 0) {
            return Ok(objects);
        }
        let operator = self.op.clone();
        let fut = async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(LIST_STAT_CONCURRENCY));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, object) in objects.iter().enumerate().filter(|(_, o)| o.size == 0) {
                let operator = operator.clone();
                let permits = permits.clone();
                let path = object.path.clone();
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    match operator.stat(&path).await {
                        Ok(meta) => Ok((i, Some(meta.content_length()))),
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok((i, None)),
                        Err(e) => Err(e),
                    }
                });
            }
            let mut sizes: Vec<Option<u64>> = objects.iter().map(|o| Some(o.size)).collect();
            while let Some(joined) = tasks.join_next().await {
                let joined = joined.map_err(|e| {
                    opendal::Error::new(ErrorKind::Unexpected, format!("stat task failed: {e}"))
                })?;
                let (i, size) = joined?;
                sizes[i] = size;
            }
            Ok(objects
                .into_iter()
                .zip(sizes)
                .filter_map(|(object, size)| size.map(|size| ObjectInfo { size, ..object }))
                .collect())
        };
        self.run(op, self.timeout, fut)
    }
}

impl ErrorContext {
    /// Maps an OpenDAL error for operation `op`, adding what the user can do.
    fn map(&self, e: opendal::Error, op: &str) -> StorageError {
        let text = e.to_string();
        if let Some(bucket) = &self.bucket {
            if [
                "NoSuchBucket",
                "ContainerNotFound",
                "The specified bucket does not exist",
            ]
            .iter()
            .any(|marker| text.contains(marker))
            {
                return StorageError::new(
                    StorageErrorKind::InvalidConfig,
                    op,
                    format!(
                        "bucket {bucket:?} does not exist at {}: create it, or fix the \
                         repository URL ({text})",
                        self.location
                    ),
                );
            }
        }
        if text.contains("LoadCredential") || text.contains("loading credential") {
            // Credentials that cannot be found will not appear on retry.
            return StorageError::new(
                StorageErrorKind::PermissionDenied,
                op,
                format!(
                    "cannot load credentials for {}: {text}; {} (outside EC2, set \
                     AWS_EC2_METADATA_DISABLED=true to skip the instance metadata service)",
                    self.location, self.credential_hint
                ),
            );
        }
        let (kind, hint) = match e.kind() {
            ErrorKind::NotFound => (StorageErrorKind::NotFound, None),
            ErrorKind::PermissionDenied => (
                StorageErrorKind::PermissionDenied,
                Some(self.credential_hint.clone()),
            ),
            ErrorKind::ConfigInvalid => (StorageErrorKind::InvalidConfig, None),
            _ if text.contains("No space left") || text.contains("os error 28") => (
                StorageErrorKind::NoSpace,
                Some("free space on the device or raise the quota".to_string()),
            ),
            _ if text.contains("Read-only file system") || text.contains("os error 30") => (
                StorageErrorKind::PermissionDenied,
                Some("the repository is on a read-only file system".to_string()),
            ),
            ErrorKind::RateLimited => (StorageErrorKind::Temporary, None),
            _ if e.is_temporary() => {
                let hint = (text.contains("send http request") || text.contains("connect"))
                    .then(|| format!("is {} reachable?", self.location));
                (StorageErrorKind::Temporary, hint)
            }
            _ => (StorageErrorKind::Other, None),
        };
        let message = match hint {
            Some(hint) => format!("{text}; {hint}"),
            None => text,
        };
        StorageError::new(kind, op, message)
    }
}

impl Storage for OpendalStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        let op = format!("read {path}");
        let buf = self.run(&op, self.io_timeout, self.op.read(path))?;
        Ok(buf.to_bytes())
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let op = format!("read {path} [{}..{}]", range.start, range.end);
        if range.start > range.end {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                op,
                "invalid range: start is after end",
            ));
        }
        let want = range.end - range.start;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let end = range.end;
        let buf = self.run(&op, self.io_timeout, self.op.read_with(path).range(range))?;
        if buf.len() as u64 == want {
            return Ok(buf.to_bytes());
        }
        // Short: either the object is shorter than the range (a caller bug
        // or a damaged object, not worth retrying) or the transfer was cut.
        let got = buf.len();
        match self.stat(path) {
            Ok(info) if info.size < end => Err(StorageError::new(
                StorageErrorKind::Other,
                op,
                format!("range ends past the object's end ({} bytes)", info.size),
            )),
            _ => Err(StorageError::new(
                StorageErrorKind::Temporary,
                op,
                format!("short read: got {got} of {want} bytes"),
            )),
        }
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        let op = format!("write {path}");
        self.run(&op, self.io_timeout, self.op.write(path, data))?;
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let op = format!("list {prefix}");
        let listed = self.run(&op, self.timeout, self.op.list_with(prefix).recursive(true));
        let entries = match listed {
            Ok(entries) => entries,
            // A folder that was never written (fs) is an empty listing.
            Err(e) if e.kind == StorageErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let objects: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|entry| !entry.metadata().is_dir() && !entry.path().ends_with('/'))
            .filter(|entry| !entry.path().starts_with(FS_STAGING_DIR))
            .map(|entry| ObjectInfo {
                path: entry.path().to_string(),
                size: entry.metadata().content_length(),
            })
            .collect();
        self.confirm_sizes(&op, objects)
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let op = format!("stat {path}");
        let meta = self.run(&op, self.timeout, self.op.stat(path))?;
        if meta.is_dir() {
            return Err(StorageError::new(
                StorageErrorKind::NotFound,
                op,
                "no object of that name (it is a folder)",
            ));
        }
        Ok(ObjectInfo {
            path: path.to_string(),
            size: meta.content_length(),
        })
    }

    fn delete(&self, path: &str) -> Result<()> {
        let op = format!("delete {path}");
        match self.run(&op, self.timeout, self.op.delete(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind == StorageErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}
