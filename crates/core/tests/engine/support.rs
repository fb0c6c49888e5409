//! Shared helpers: the engine suite's repositories (on
//! [`cairn_golden::testkit`]), backup and restore shorthands, and object
//! counts through the storage listing.

use cairn_core::backup::BackupResult;
use cairn_core::restore::{restore, RestoreOptions, RestoreStats};
use cairn_core::{InitOptions, Repository};
use cairn_golden::testkit;
pub use cairn_golden::testkit::{cached as open_opts, fast_kdf, TestRepo};
use cairn_storage::testing::TestLocation;
use cairn_storage::DynStorage;
use std::path::{Path, PathBuf};

pub const PASSWORD: &str = "correct horse battery staple";

/// Small chunks (average 1 KiB) and 128 KiB data packs, so small trees
/// exercise list blobs and several packs.
pub fn fast_init() -> InitOptions {
    testkit::init_options((128 << 10, 32 << 10))
}

/// A fresh repository with [`fast_init`] and [`PASSWORD`].
pub fn test_repo(name: &str) -> TestRepo {
    test_repo_with(name, &fast_init())
}

/// A fresh repository with `init` and [`PASSWORD`].
pub fn test_repo_with(name: &str, init: &InitOptions) -> TestRepo {
    TestRepo::init(name, PASSWORD, init).expect("test repository")
}

/// Opens the repository at `loc` with the cache directory `cache`.
pub fn open_repo(loc: &TestLocation, cache: &Path) -> Repository {
    testkit::open_cached(loc, PASSWORD, cache).expect("open")
}

/// A new storage stack on `loc`.
pub fn storage(loc: &TestLocation) -> DynStorage {
    testkit::storage_at(loc.location()).expect("open storage")
}

/// Backs up `dir` (see [`testkit::backup_dir`]).
pub fn backup_dir(repo: &Repository, dir: &Path) -> BackupResult {
    testkit::backup_dir(repo, dir).expect("backup")
}

pub fn restore_opts(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_path_buf(),
        owners: cairn_golden::fixture::is_root(),
        ..Default::default()
    }
}

/// Restores `result`'s snapshot into `target` and asserts nothing failed.
pub fn restore_all(repo: &Repository, result: &BackupResult, target: &Path) -> RestoreStats {
    let stats = restore(repo, &result.snapshot.tree, &restore_opts(target)).expect("restore");
    assert!(stats.failed.is_empty(), "failed: {:#?}", stats.failed);
    stats
}

/// Number of objects under `prefix`.
pub fn count(storage: &DynStorage, prefix: &str) -> usize {
    storage.list(prefix).expect("list").len()
}

/// Object paths under `prefix`.
pub fn names(storage: &DynStorage, prefix: &str) -> std::collections::BTreeSet<String> {
    storage
        .list(prefix)
        .expect("list")
        .into_iter()
        .map(|o| o.path)
        .collect()
}

/// A fresh temporary directory and a path inside it named `sub`.
pub fn temp_sub(sub: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("temp dir");
    let p = d.path().join(sub);
    std::fs::create_dir_all(&p).expect("mkdir");
    (d, p)
}

/// The compare options that fit this process: owners only as root, xattrs
/// only when the file system keeps them.
pub fn compare_opts(dir: &Path) -> cairn_golden::CompareOptions {
    cairn_golden::CompareOptions {
        owners: cairn_golden::fixture::is_root(),
        xattrs: cairn_golden::fixture::xattrs_supported(dir),
        sparse: true,
    }
}

/// Number of regular-file entries below `dir` (hard links counted per name).
pub fn file_count(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                n += 1;
            }
        }
    }
    n
}

/// A storage whose reads, whole or ranged, call `on_read(path)` first,
/// which may fail them: tests that change the repository between a
/// listing and a read, or fail a read.
pub struct ReadHooked {
    pub inner: DynStorage,
    #[allow(clippy::type_complexity)]
    pub on_read: Box<dyn Fn(&str) -> cairn_storage::Result<()> + Send + Sync>,
}

impl std::fmt::Debug for ReadHooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadHooked({})", self.inner.location())
    }
}

impl cairn_storage::Storage for ReadHooked {
    fn read(&self, path: &str) -> cairn_storage::Result<bytes::Bytes> {
        (self.on_read)(path)?;
        self.inner.read(path)
    }
    fn read_range(
        &self,
        path: &str,
        range: std::ops::Range<u64>,
    ) -> cairn_storage::Result<bytes::Bytes> {
        (self.on_read)(path)?;
        self.inner.read_range(path, range)
    }
    fn write(&self, path: &str, data: bytes::Bytes) -> cairn_storage::Result<()> {
        self.inner.write(path, data)
    }
    fn list(&self, prefix: &str) -> cairn_storage::Result<Vec<cairn_storage::ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn stat(&self, path: &str) -> cairn_storage::Result<cairn_storage::ObjectInfo> {
        self.inner.stat(path)
    }
    fn delete(&self, path: &str) -> cairn_storage::Result<()> {
        self.inner.delete(path)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// Every file below `dir` (directories left out), sorted by path, so a
/// test that picks files by position picks the same ones on every run.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
