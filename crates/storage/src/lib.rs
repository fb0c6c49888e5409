//! The narrow object-store interface cairn writes through.
//!
//! Every repository object (header, keys, config, packs, index segments,
//! snapshots, locks) is read and written through [`Storage`]. The trait is
//! synchronous: the engine's pipelines run on threads, and the OpenDAL
//! implementation drives its async operator on a private tokio runtime.
//! Wrappers (retry, throttle, concurrency bound, fault injection, request
//! counting) implement the same trait and can be stacked; each wraps the
//! [`ObjectWriter`]s of the layer below, so objects streamed through
//! [`Storage::writer`] pass every layer like whole-object writes do.
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
mod spool;
pub mod testing;
mod throttle;
mod wire;
mod writer;

pub use counting::{CountingStorage, OpCounts, RequestCounts};
pub use credentials::Credentials;
pub use error::{StorageError, StorageErrorKind};
pub use fault::{FaultPlan, FaultRates, FaultStats, FaultStorage};
pub use limit::LimitStorage;
pub use location::{Location, WEBDAV_PASSWORD_ENV, WEBDAV_USER_ENV};
pub use opendal_store::OpendalStorage;
pub use options::StorageOptions;
pub use retry::{RetryPolicy, RetryStorage};
pub use throttle::{ThrottleStorage, TokenBucket};
pub use wire::{HttpCounts, SSL_CERT_DIR_ENV, SSL_CERT_FILE_ENV};
pub use writer::{BufferedWriter, ObjectWriter};

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

/// What [`Storage::sweep_abandoned`] found of writes that never finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Abandoned {
    /// Staging files deleted (or, in a dry run, that would be).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A flat namespace of immutable objects under one repository root.
///
/// Invariants every implementation keeps:
/// - `write` and [`ObjectWriter::close`] are atomic: a reader sees either
///   no object or the whole object, never a prefix (fs writes a temporary
///   file and renames; S3 uses one PUT or a multipart upload that completes
///   atomically).
/// - `delete` of a missing object succeeds.
/// - `list` is recursive, returns only objects (no directory markers), and
///   every [`ObjectInfo::size`] is the object's real size.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Reads a whole object.
    fn read(&self, path: &str) -> Result<Bytes>;
    /// Reads `range` of an object. Implementations return exactly
    /// `range.end - range.start` bytes or an error.
    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes>;
    /// Writes a whole object atomically, replacing any previous one.
    fn write(&self, path: &str, data: Bytes) -> Result<()>;
    /// Opens a writer for one object of about `size_hint` bytes, named when
    /// it is closed: the way to store an object without holding it whole
    /// in memory (packs). The default collects the bytes in memory and
    /// stores them with one [`Storage::write`] at close ([`BufferedWriter`]);
    /// the fs backend streams them into a staging file (`O_DIRECT`,
    /// `fdatasync`, rename: see docs/STORAGE.md); wrappers wrap the writer
    /// of the storage below them.
    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(BufferedWriter::new(self, size_hint)))
    }
    /// Lists every object under the folder `prefix` (such as `index/`, or
    /// `""` for the whole repository), recursively.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Size of an object, or a `NotFound` error.
    fn stat(&self, path: &str) -> Result<ObjectInfo>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, path: &str) -> Result<()>;
    /// Deletes (with `dry_run`, only counts) what writers killed mid-object
    /// left behind and last touched at or before `cutoff`: staging files of
    /// the fs backend. Nothing for object stores, whose unfinished uploads
    /// never become objects (the default).
    fn sweep_abandoned(&self, cutoff: std::time::SystemTime, dry_run: bool) -> Result<Abandoned> {
        let _ = (cutoff, dry_run);
        Ok(Abandoned::default())
    }
    /// Where this storage points, for messages (no credentials).
    fn location(&self) -> String;
    /// When the location itself does not exist (an fs root directory that
    /// is not there), a sentence saying so, for the message of a failed
    /// open; `None` (the default) when it exists or cannot be told without
    /// a request.
    fn missing_root(&self) -> Option<String> {
        None
    }
    /// Whether objects are files on this machine (a local directory, NFS
    /// included): a read costs no round trip, so reading ahead buys nothing
    /// and only holds memory. `false` (the default) for object stores.
    fn is_local(&self) -> bool {
        false
    }
}

/// Where the fs backend stages objects under a local repository root
/// before renaming them into place; listings skip it. Files left there by
/// a killed process are garbage (see [`Storage::sweep_abandoned`]).
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
    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        S::writer(Arc::clone(&*self), size_hint)
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
    fn sweep_abandoned(&self, cutoff: std::time::SystemTime, dry_run: bool) -> Result<Abandoned> {
        (**self).sweep_abandoned(cutoff, dry_run)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn missing_root(&self) -> Option<String> {
        (**self).missing_root()
    }
    fn is_local(&self) -> bool {
        (**self).is_local()
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
    /// [`Storage::write`], or the close of an [`ObjectWriter`].
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
