//! Test support shared by every crate's tests: an in-memory [`Storage`] and
//! the backend choice of the behaviour suites.
//!
//! Suites call [`fresh_location`] for each test; it reads
//! `CAIRN_TEST_BACKEND` (`fs`, the default, or `s3`) and, for S3,
//! `CAIRN_TEST_S3_ENDPOINT` and `CAIRN_TEST_S3_BUCKET` (what `.ci/s3.sh
//! start` exports). Every call returns a location no other test uses.

use crate::{ObjectInfo, Result, Storage, StorageError, StorageErrorKind};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Chooses the backend of the behaviour suites: `fs` or `s3`.
pub const BACKEND_ENV: &str = "CAIRN_TEST_BACKEND";
/// The S3 endpoint for `CAIRN_TEST_BACKEND=s3`, e.g. `http://127.0.0.1:9000`.
pub const S3_ENDPOINT_ENV: &str = "CAIRN_TEST_S3_ENDPOINT";
/// The (existing) S3 bucket for `CAIRN_TEST_BACKEND=s3`.
pub const S3_BUCKET_ENV: &str = "CAIRN_TEST_S3_BUCKET";

/// The backend a behaviour suite runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    /// A temporary local directory per test.
    Fs,
    /// A fresh prefix per test in an existing bucket.
    S3 {
        /// `http://host:port` of the server.
        endpoint: String,
        /// The bucket.
        bucket: String,
    },
}

fn config_error(message: String) -> StorageError {
    StorageError::new(
        StorageErrorKind::InvalidConfig,
        "choose test backend",
        message,
    )
}

impl TestBackend {
    /// Reads the choice from the environment.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match var(BACKEND_ENV).as_deref().unwrap_or("fs") {
            "fs" => Ok(TestBackend::Fs),
            "s3" => {
                let endpoint = var(S3_ENDPOINT_ENV).ok_or_else(|| {
                    config_error(format!(
                        "{BACKEND_ENV}=s3 needs {S3_ENDPOINT_ENV} (run `eval \"$(.ci/s3.sh start)\"`)"
                    ))
                })?;
                let bucket = var(S3_BUCKET_ENV).ok_or_else(|| {
                    config_error(format!(
                        "{BACKEND_ENV}=s3 needs {S3_BUCKET_ENV} (run `eval \"$(.ci/s3.sh start)\"`)"
                    ))
                })?;
                Ok(TestBackend::S3 { endpoint, bucket })
            }
            other => Err(config_error(format!(
                "{BACKEND_ENV}={other:?} is not a backend; use fs or s3"
            ))),
        }
    }
}

/// A repository location for one test; a local one is removed on drop.
/// S3 prefixes are left in the bucket (the test server is in memory and
/// stopped after the run).
#[derive(Debug)]
pub struct TestLocation {
    location: String,
    local_root: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl TestLocation {
    /// The location to pass to [`crate::open`] or `cairn --repo`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The directory, for a filesystem location.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }
}

/// A location no other test uses, on the backend [`TestBackend::from_env`]
/// chooses. `name` (the test's name) makes leftovers recognisable.
pub fn fresh_location(name: &str) -> Result<TestLocation> {
    fresh_location_on(&TestBackend::from_env()?, name)
}

/// Like [`fresh_location`], on an explicit backend.
pub fn fresh_location_on(backend: &TestBackend, name: &str) -> Result<TestLocation> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let unique = format!(
        "{safe}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    match backend {
        TestBackend::Fs => {
            let dir = tempfile::Builder::new()
                .prefix("cairn-test-")
                .tempdir()
                .map_err(|e| {
                    StorageError::new(
                        StorageErrorKind::Other,
                        "create test directory",
                        e.to_string(),
                    )
                })?;
            let root = dir.path().join(unique);
            Ok(TestLocation {
                location: root.to_string_lossy().into_owned(),
                local_root: Some(root),
                _dir: Some(dir),
            })
        }
        TestBackend::S3 { endpoint, bucket } => {
            let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
            Ok(TestLocation {
                location: format!(
                    "s3://{bucket}/cairn-test/{unique}/?endpoint={endpoint}&region={region}"
                ),
                local_root: None,
                _dir: None,
            })
        }
    }
}

/// A [`Storage`] in memory, for fast unit tests of code above the storage
/// layer. Keeps the trait's contract: atomic writes, idempotent deletes,
/// exact range reads, recursive listings with sizes.
#[derive(Debug, Default)]
pub struct MemStorage {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, op: &str, path: &str) -> Result<Bytes> {
        self.objects()
            .get(path)
            .cloned()
            .ok_or_else(|| StorageError::new(StorageErrorKind::NotFound, op, "no such object"))
    }
}

impl Storage for MemStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        self.get(&format!("read {path}"), path)
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let op = format!("read {path} [{}..{}]", range.start, range.end);
        let data = self.get(&op, path)?;
        if range.start > range.end || range.end > data.len() as u64 {
            return Err(StorageError::new(
                StorageErrorKind::ShortObject,
                op,
                format!("range outside the object ({} bytes)", data.len()),
            ));
        }
        Ok(data.slice(range.start as usize..range.end as usize))
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        self.objects().insert(path.to_string(), data);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .objects()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                path: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let data = self.get(&format!("stat {path}"), path)?;
        Ok(ObjectInfo {
            path: path.to_string(),
            size: data.len() as u64,
        })
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.objects().remove(path);
        Ok(())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}
