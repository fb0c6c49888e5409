//! The narrow object-store interface cairn writes through.
//!
//! Every repository object (header, keys, config, packs, index segments,
//! snapshots, locks) is read and written through [`Storage`]. The trait is
//! synchronous: the engine's pipelines run on threads, and the OpenDAL
//! implementation drives its async operator on a private tokio runtime.
//! Wrappers (retry, throttle, concurrency bound, fault injection, request
//! counting) implement the same trait and can be stacked.
//!
//! [`open_with`] builds the production stack for a repository URL:
//!
//! ```text
//! LimitStorage (bounded in-flight requests)
//!   └ RetryStorage (backoff + jitter on Temporary errors and short reads)
//!       └ ThrottleStorage (--limit-upload / --limit-download)
//!           └ OpendalStorage (fs, s3, azblob, gcs, webdav; per-request timeouts)
//! ```
//!
//! Tests insert [`FaultStorage`] or [`CountingStorage`] above the backend with
//! [`open_backend`] + [`wrap`].

#![deny(missing_docs)]

mod counting;
mod credentials;
mod error;
mod fault;
mod limit;
mod location;
mod opendal_error;
mod opendal_store;
mod options;
mod retry;
pub mod testing;
mod throttle;
mod wire;

pub use counting::{CountingStorage, OpCounts, RequestCounts};
pub use credentials::Credentials;
pub use error::{StorageError, StorageErrorKind};
pub use fault::{FaultPlan, FaultRates, FaultStats, FaultStorage};
pub use limit::LimitStorage;
pub use location::{Location, WEBDAV_PASSWORD_ENV, WEBDAV_USER_ENV};
pub use opendal_store::OpendalStorage;
pub use options::StorageOptions;
pub use retry::{RetryPolicy, RetryStorage};
pub use throttle::ThrottleStorage;
pub use wire::{HttpCounts, SSL_CERT_DIR_ENV, SSL_CERT_FILE_ENV};

use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// One object as seen by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Path relative to the repository root, `/`-separated, no leading `/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// Result type of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// A flat namespace of immutable objects under one repository root.
///
/// Invariants every implementation keeps:
/// - `write` is atomic: a reader sees either no object or the whole object,
///   never a prefix (fs writes a temporary file and renames; S3 uses one PUT
///   or a multipart upload that completes atomically).
/// - `delete` of a missing object succeeds.
/// - `list` is recursive, returns only objects (no directory markers), and
///   every [`ObjectInfo::size`] is the object's real size.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Reads a whole object.
    fn read(&self, path: &str) -> Result<Bytes>;
    /// Reads `range` of an object. Implementations return exactly
    /// `range.end - range.start` bytes or an error.
    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes>;
    /// Writes a whole object atomically, replacing any previous one.
    fn write(&self, path: &str, data: Bytes) -> Result<()>;
    /// Lists every object under the folder `prefix` (such as `index/`, or
    /// `""` for the whole repository), recursively.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Size of an object, or a `NotFound` error.
    fn stat(&self, path: &str) -> Result<ObjectInfo>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, path: &str) -> Result<()>;
    /// Where this storage points, for messages (no credentials).
    fn location(&self) -> String;
    /// The directory holding the objects, when they are plain files on a
    /// local (or NFS-mounted) file system with nothing between the caller
    /// and them: object `p` is the file `dir/p`. A writer may then create
    /// an object by writing a file in [`staging_dir`]`(dir)`, syncing it and
    /// renaming it into place, which is what `write` does, without holding
    /// the whole object in memory. `None` (the default) for object stores
    /// and for wrappers that must see every write (throttling, fault
    /// injection, counting).
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// Where writers stage files before renaming them into a local storage
/// rooted at `root` (see [`Storage::local_dir`]); listings skip it. Files
/// left there by a killed process are garbage (see docs/STORAGE.md).
pub fn staging_dir(root: &std::path::Path) -> std::path::PathBuf {
    root.join(STAGING_DIR_NAME)
}

/// Name of the staging directory under a local repository root.
pub const STAGING_DIR_NAME: &str = ".tmp";

/// Shared handle to a storage stack.
pub type DynStorage = Arc<dyn Storage>;

impl<S: Storage + ?Sized> Storage for Arc<S> {
    fn read(&self, path: &str) -> Result<Bytes> {
        (**self).read(path)
    }
    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        (**self).read_range(path, range)
    }
    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        (**self).write(path, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        (**self).list(prefix)
    }
    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        (**self).stat(path)
    }
    fn delete(&self, path: &str) -> Result<()> {
        (**self).delete(path)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        (**self).local_dir()
    }
}

/// The kinds of request a [`Storage`] serves; used by the counting and
/// fault-injection wrappers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// [`Storage::read`].
    Read,
    /// [`Storage::read_range`].
    ReadRange,
    /// [`Storage::write`].
    Write,
    /// [`Storage::list`].
    List,
    /// [`Storage::stat`].
    Stat,
    /// [`Storage::delete`].
    Delete,
}

impl OpKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpKind; 6] = [
        OpKind::Read,
        OpKind::ReadRange,
        OpKind::Write,
        OpKind::List,
        OpKind::Stat,
        OpKind::Delete,
    ];

    /// Short lowercase name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::ReadRange => "read_range",
            OpKind::Write => "write",
            OpKind::List => "list",
            OpKind::Stat => "stat",
            OpKind::Delete => "delete",
        }
    }
}

/// Opens the storage a repository location names, with default options.
///
/// See [`open_with`].
pub fn open(location: &str) -> Result<DynStorage> {
    open_with(location, &StorageOptions::default())
}

/// Opens the storage a repository location names and stacks the production
/// wrappers (throttle, retry, concurrency bound) configured by `opts`.
///
/// Accepted locations (see docs/STORAGE.md): a plain path, `file:///path`,
/// `s3://bucket/prefix?endpoint=..&region=..&path_style=..`,
/// `azblob://container/prefix?account=..&endpoint=..`,
/// `gcs://bucket/prefix?endpoint=..`, `webdav://host/path`,
/// `webdavs://host/path`. Nothing is contacted until the first request.
pub fn open_with(location: &str, opts: &StorageOptions) -> Result<DynStorage> {
    Ok(wrap(open_backend(location, opts)?, opts))
}

/// Like [`open_with`], with the credentials and CA certificates of `credentials` (values a
/// caller was given, over the process environment) instead of the process environment
/// alone. Nothing is written to the environment.
pub fn open_with_credentials(
    location: &str,
    opts: &StorageOptions,
    credentials: &Credentials,
) -> Result<DynStorage> {
    let parsed = Location::parse(location)?;
    let backend = OpendalStorage::open_with_credentials(&parsed, opts, credentials)?;
    Ok(wrap(Arc::new(backend), opts))
}

/// Opens only the backend for `location` (OpenDAL with per-request
/// timeouts from `opts`), without retry, throttle or concurrency bound.
///
/// Tests put [`FaultStorage`] or [`CountingStorage`] on top of this and then
/// call [`wrap`], so injected faults meet the real retry layer.
pub fn open_backend(location: &str, opts: &StorageOptions) -> Result<DynStorage> {
    let parsed = Location::parse(location)?;
    Ok(Arc::new(OpendalStorage::open(&parsed, opts)?))
}

/// Stacks the production wrappers configured by `opts` on `inner`:
/// throttle (only when a limit is set), then retry, then the concurrency
/// bound (outermost).
///
/// The throttle sits below the retry layer so retransmitted bytes are
/// charged too: the limit holds for what actually crosses the wire.
pub fn wrap(inner: DynStorage, opts: &StorageOptions) -> DynStorage {
    let mut storage = inner;
    if opts.limit_upload.is_some() || opts.limit_download.is_some() {
        storage = Arc::new(ThrottleStorage::new(
            storage,
            opts.limit_upload,
            opts.limit_download,
        ));
    }
    storage = Arc::new(RetryStorage::new(storage, opts.retry_policy()));
    Arc::new(LimitStorage::new(storage, opts.max_concurrency))
}
