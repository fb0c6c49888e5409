//! [`Storage`] on an OpenDAL operator, driven by a private tokio runtime,
//! with a deadline on every request.
//!
//! Invariants: every request is bounded by a timeout (a sync caller cannot
//! cancel, so the deadline lives here, around the future); `read_range`
//! returns exactly the bytes asked for or an error; `list` reports the real
//! size of every object; a filesystem location is created (root and
//! staging folder) by the first write only, so reading a mistyped path
//! leaves nothing behind. A filesystem location streams objects opened
//! with [`Storage::writer`] into staging files (`crate::spool`); other
//! services collect them in memory and store them with one write.

use crate::location::{process_env, Location};
use crate::opendal_error::{ErrorContext, Failure};
use crate::spool::Spool;
use crate::wire::{Counters, CountingFetch, HttpCounts};
use crate::{
    Abandoned, BufferedWriter, Credentials, ObjectInfo, ObjectWriter, Result, Storage,
    StorageError, StorageErrorKind, StorageOptions,
};
use bytes::Bytes;
use futures::TryStreamExt;
use opendal::layers::HttpClientLayer;
use opendal::{ErrorKind, Operator};
use std::future::IntoFuture;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Stats run at once when a listing has to look up sizes (filesystem).
const LIST_STAT_CONCURRENCY: usize = 32;

/// A range read's buffer is allocated whole up to this length, and grows
/// as the bytes arrive past it (a range asked of a short object may never
/// fill it).
const MAX_PREALLOCATED: u64 = 64 << 20;

/// Prefix of the local staging directory for atomic filesystem writes.
const FS_STAGING_DIR: &str = ".tmp/";
const _: () = assert!(FS_STAGING_DIR.len() == crate::STAGING_DIR_NAME.len() + 1);

/// A repository root on any OpenDAL service.
pub struct OpendalStorage {
    /// The operator for every request; for a filesystem location, built by
    /// the first write (see [`OpendalStorage::operator`]).
    op: OnceLock<Operator>,
    /// Filesystem only: the operator for reads before the first write, once
    /// the root exists.
    reader: OnceLock<Operator>,
    /// Filesystem only: what `op` is built from.
    deferred: Option<Location>,
    /// Always `Some` until drop, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
    location: String,
    context: Arc<ErrorContext>,
    timeout: Duration,
    io_timeout: Duration,
    http: Arc<Counters>,
    /// The root directory of a local file system location.
    local_root: Option<std::path::PathBuf>,
    /// Its staging area, for streamed objects.
    spool: Option<Arc<Spool>>,
}

impl Drop for OpendalStorage {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
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
        Self::open_with_credentials(location, opts, &Credentials::from_env())
    }

    /// Opens `location` with the timeouts of `opts`, signing requests and trusting CA
    /// certificates as `credentials` say (docs/STORAGE.md).
    pub fn open_with_credentials(
        location: &Location,
        opts: &StorageOptions,
        credentials: &Credentials,
    ) -> Result<Self> {
        let http = Arc::new(Counters::default());
        let op = OnceLock::new();
        // A local root is created by the first write, not here: opening a
        // mistyped path to read must not create it.
        let deferred = match location.local_root() {
            Some(_) => Some(location.clone()),
            None => {
                let client = CountingFetch::client(http.clone(), credentials)?;
                let _ = op.set(
                    location
                        .operator(&|name| credentials.get(name))?
                        .layer(HttpClientLayer::new(client)),
                );
                None
            }
        };
        let context = ErrorContext {
            credential_hint: location.credential_hint().to_string(),
            bucket: location.bucket().map(str::to_string),
            location: location.redacted(),
        };
        Ok(Self {
            op,
            reader: OnceLock::new(),
            deferred,
            runtime: Some(runtime()?),
            location: location.redacted(),
            context: Arc::new(context),
            timeout: opts.timeout,
            io_timeout: opts.io_timeout,
            http,
            local_root: location.local_root().map(Into::into),
            spool: location.local_root().map(|root| Arc::new(Spool::new(root))),
        })
    }

    /// The HTTP requests this storage has sent so far (all zero on fs).
    /// Requests of an operator given to [`Self::from_operator`] are not
    /// counted.
    pub fn http_requests(&self) -> HttpCounts {
        self.http.snapshot()
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
            op: OnceLock::from(op),
            reader: OnceLock::new(),
            deferred: None,
            runtime: Some(runtime()?),
            context: Arc::new(ErrorContext {
                credential_hint: "check the backend's credentials".to_string(),
                bucket: None,
                location: location.clone(),
            }),
            location,
            timeout: opts.timeout,
            io_timeout: opts.io_timeout,
            http: Arc::new(Counters::default()),
            local_root: None,
            spool: None,
        })
    }

    /// The operator for a write: for a filesystem location, built now if
    /// need be, which creates the root and its staging folder.
    fn write_operator(&self) -> Result<Operator> {
        if let Some(op) = self.op.get() {
            return Ok(op.clone());
        }
        let location = self.deferred.as_ref().ok_or_else(|| {
            StorageError::new(
                StorageErrorKind::Other,
                "storage request",
                "the storage has no backend",
            )
        })?;
        let op = location.operator(&process_env)?;
        Ok(self.op.get_or_init(|| op).clone())
    }

    /// The operator for a read, list, stat or delete. `None` for a
    /// filesystem root that does not exist: there is nothing to read, and
    /// nothing is created until a write.
    fn read_operator(&self) -> Result<Option<Operator>> {
        if let Some(op) = self.op.get() {
            return Ok(Some(op.clone()));
        }
        if let Some(op) = self.reader.get() {
            return Ok(Some(op.clone()));
        }
        let Some(location) = &self.deferred else {
            return self.write_operator().map(Some);
        };
        // Building an fs operator creates its root: only for one that exists.
        if !self.local_root.as_ref().is_some_and(|r| r.is_dir()) {
            return Ok(None);
        }
        match location.fs_reader() {
            Some(built) => {
                let op = built?;
                Ok(Some(self.reader.get_or_init(|| op).clone()))
            }
            None => self.write_operator().map(Some),
        }
    }

    /// The error of a read at a filesystem root that does not exist.
    fn no_root(&self, op: String) -> StorageError {
        // Made a directory since the caller looked (a racing init): it did
        // not exist then, which is the answer.
        if let Some(file) = self
            .local_root
            .as_ref()
            .filter(|r| r.exists() && !r.is_dir())
        {
            return crate::location::not_a_directory(file, op);
        }
        let root = self
            .local_root
            .as_ref()
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        StorageError::new(
            StorageErrorKind::NotFound,
            op,
            format!("the directory {root} does not exist"),
        )
    }

    /// Drives `fut` to completion on the private runtime.
    ///
    /// The trait is synchronous and meant for plain threads. Called from a
    /// multi-threaded tokio runtime's worker, the worker is handed over to
    /// blocking first; from a current-thread runtime that is impossible and
    /// the call fails instead of deadlocking.
    fn block_on<F: std::future::Future>(&self, fut: F) -> Result<F::Output> {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                "storage request",
                "the storage has been shut down",
            ));
        };
        match tokio::runtime::Handle::try_current() {
            Err(_) => Ok(runtime.block_on(fut)),
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                Ok(tokio::task::block_in_place(|| runtime.block_on(fut)))
            }
            Ok(_) => Err(StorageError::new(
                StorageErrorKind::Other,
                "storage request",
                "storage called from a single-threaded async runtime; call it from \
                 tokio::task::spawn_blocking or a plain thread",
            )),
        }
    }

    /// Runs one request under `deadline`; a request that exceeds it is
    /// dropped (cancelling its I/O) and becomes a `Temporary` error.
    fn run<T>(
        &self,
        op: &str,
        deadline: Duration,
        fut: impl IntoFuture<Output = opendal::Result<T>>,
    ) -> Result<T> {
        self.block_on(within(deadline, fut))?
            .map_err(|f| self.context.fail(f, op))
    }

    /// Lists `prefix` recursively. Each page request and each size lookup
    /// has its own deadline, so a listing of any length is bounded per
    /// request, not in total.
    ///
    /// Sizes the service's listing did not report (the filesystem lister
    /// does not stat) are looked up: a listed size of 0 is confirmed with
    /// one stat, which is every object on fs and only truly empty objects
    /// on S3, Azure, GCS and WebDAV, whose listings carry sizes. An object
    /// deleted between the listing and its stat is left out.
    async fn list_sized(
        operator: Operator,
        prefix: String,
        deadline: Duration,
    ) -> std::result::Result<Vec<ObjectInfo>, Failure> {
        let mut lister = within(deadline, operator.lister_with(&prefix).recursive(true)).await?;
        let mut objects = Vec::new();
        while let Some(entry) = within(deadline, lister.try_next()).await? {
            let path = entry.path();
            if entry.metadata().is_dir() || path.ends_with('/') || path.starts_with(FS_STAGING_DIR)
            {
                continue;
            }
            objects.push(ObjectInfo {
                path: path.to_string(),
                size: entry.metadata().content_length(),
            });
        }
        if objects.iter().all(|o| o.size > 0) {
            return Ok(objects);
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(LIST_STAT_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, object) in objects.iter().enumerate().filter(|(_, o)| o.size == 0) {
            let operator = operator.clone();
            let permits = permits.clone();
            let path = object.path.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                match within(deadline, operator.stat(&path)).await {
                    Ok(meta) => Ok((i, Some(meta.content_length()))),
                    Err(Failure::Backend(e)) if e.kind() == ErrorKind::NotFound => Ok((i, None)),
                    Err(f) => Err(f),
                }
            });
        }
        let mut sizes: Vec<Option<u64>> = objects.iter().map(|o| Some(o.size)).collect();
        while let Some(joined) = tasks.join_next().await {
            let (i, size) = joined.map_err(|e| {
                opendal::Error::new(ErrorKind::Unexpected, format!("stat task failed: {e}"))
            })??;
            sizes[i] = size;
        }
        Ok(objects
            .into_iter()
            .zip(sizes)
            .filter_map(|(object, size)| size.map(|size| ObjectInfo { size, ..object }))
            .collect())
    }
}

/// Awaits `fut` for at most `deadline`.
async fn within<T>(
    deadline: Duration,
    fut: impl IntoFuture<Output = opendal::Result<T>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(deadline, fut.into_future()).await {
        Ok(result) => result.map_err(Failure::Backend),
        Err(_) => Err(Failure::TimedOut(deadline)),
    }
}

impl Storage for OpendalStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        let op = format!("read {path}");
        let Some(operator) = self.read_operator()? else {
            return Err(self.no_root(op));
        };
        let buf = self.run(&op, self.io_timeout, operator.read(path))?;
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
        let past_end = |size: u64| {
            StorageError::new(
                StorageErrorKind::ShortObject,
                op.clone(),
                format!("range ends past the object's end ({size} bytes)"),
            )
        };
        let Some(operator) = self.read_operator()? else {
            return Err(self.no_root(op));
        };
        // Into one buffer of the range's length as the body arrives: the
        // pieces collected and then joined held a large range twice.
        let read = async {
            let reader = operator.reader(path).await?;
            let mut buf = bytes::BytesMut::with_capacity(want.min(MAX_PREALLOCATED) as usize);
            reader.read_into(&mut buf, range).await?;
            Ok(buf)
        };
        let buf = match self.run(&op, self.io_timeout, read) {
            Ok(buf) => buf,
            // Some services refuse a range past the end instead of
            // returning it short: tell a truncated object from a failure.
            Err(e) if e.kind == StorageErrorKind::Other => {
                return Err(match self.stat(path) {
                    Ok(info) if info.size < end => past_end(info.size),
                    _ => e,
                })
            }
            Err(e) => return Err(e),
        };
        if buf.len() as u64 == want {
            return Ok(buf.freeze());
        }
        // Short: either the object is shorter than the range (a caller bug
        // or a damaged object, not worth retrying) or the transfer was cut.
        let got = buf.len();
        match self.stat(path) {
            Ok(info) if info.size < end => Err(past_end(info.size)),
            _ => Err(StorageError::new(
                StorageErrorKind::Temporary,
                op,
                format!("short read: got {got} of {want} bytes"),
            )),
        }
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        let op = format!("write {path}");
        let operator = self.write_operator()?;
        self.run(&op, self.io_timeout, operator.write(path, data))?;
        Ok(())
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(match &self.spool {
            Some(spool) => Box::new(spool.writer()),
            None => Box::new(BufferedWriter::new(self, size_hint)),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let op = format!("list {prefix}");
        let Some(operator) = self.read_operator()? else {
            return Ok(Vec::new());
        };
        let listed = self.block_on(Self::list_sized(operator, prefix.to_string(), self.timeout));
        match listed?.map_err(|f| self.context.fail(f, &op)) {
            Ok(objects) => Ok(objects),
            // A folder that was never written (fs) is an empty listing.
            Err(e) if e.kind == StorageErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let op = format!("stat {path}");
        let Some(operator) = self.read_operator()? else {
            return Err(self.no_root(op));
        };
        let meta = self.run(&op, self.timeout, operator.stat(path))?;
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
        let Some(operator) = self.read_operator()? else {
            return Ok(());
        };
        match self.run(&op, self.timeout, operator.delete(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind == StorageErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn sweep_abandoned(&self, cutoff: std::time::SystemTime, dry_run: bool) -> Result<Abandoned> {
        match &self.spool {
            Some(spool) => spool.sweep(cutoff, dry_run),
            None => Ok(Abandoned::default()),
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn missing_root(&self) -> Option<String> {
        let root = self.local_root.as_ref()?;
        (!root.exists()).then(|| format!("the directory {} does not exist", root.display()))
    }

    fn is_local(&self) -> bool {
        self.local_root.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_storage(dir: &tempfile::TempDir) -> OpendalStorage {
        let location = Location::parse(&dir.path().to_string_lossy()).unwrap();
        OpendalStorage::open(&location, &StorageOptions::default()).unwrap()
    }

    #[test]
    fn a_directory_is_local_and_other_storage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fs_storage(&dir).is_local());
        // Anything else says no unless it knows better (an object store).
        assert!(!crate::testing::MemStorage::new().is_local());
        // Wrappers answer for what they wrap.
        let wrapped: crate::DynStorage = std::sync::Arc::new(crate::CountingStorage::new(
            std::sync::Arc::new(fs_storage(&dir)),
        ));
        assert!(wrapped.is_local());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn works_and_drops_inside_a_multi_threaded_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_storage(&dir);
        s.write("a/b", Bytes::from_static(b"xyz")).unwrap();
        assert_eq!(s.list("a/").unwrap()[0].size, 3);
        drop(s);
    }

    #[test]
    fn reading_a_missing_root_creates_nothing_and_the_first_write_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("typo/repo");
        let location = Location::parse(&root.to_string_lossy()).unwrap();
        let s = OpendalStorage::open(&location, &StorageOptions::default()).unwrap();
        let e = s.read("cairn.repository").unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::NotFound);
        assert!(e.message.contains("does not exist"), "{e}");
        assert_eq!(s.stat("x").unwrap_err().kind, StorageErrorKind::NotFound);
        assert!(s.read_range("x", 0..1).is_err());
        assert!(s.list("keys/").unwrap().is_empty());
        s.delete("x").unwrap();
        assert!(!dir.path().join("typo").exists(), "nothing created");
        s.write("a/b", Bytes::from_static(b"xyz")).unwrap();
        assert!(crate::staging_dir(&root).is_dir());
        assert_eq!(s.read("a/b").unwrap(), Bytes::from_static(b"xyz"));
    }

    #[test]
    fn reading_an_existing_root_creates_no_staging_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("obj"), b"1").unwrap();
        let s = fs_storage(&dir);
        assert_eq!(s.read("obj").unwrap(), Bytes::from_static(b"1"));
        assert_eq!(s.list("").unwrap().len(), 1);
        assert!(!crate::staging_dir(dir.path()).exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refuses_a_single_threaded_runtime_instead_of_deadlocking() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_storage(&dir);
        let e = s.read("x").unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Other);
        assert!(e.message.contains("spawn_blocking"), "{e}");
    }
}
