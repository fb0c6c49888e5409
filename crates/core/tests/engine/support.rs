//! Shared helpers: fresh repositories with fast parameters, backup and
//! restore shorthands, and object counts through the storage listing.

use cairn_core::backup::{backup, BackupOptions, BackupResult};
use cairn_core::crypto::KdfParams;
use cairn_core::restore::{restore, RestoreOptions, RestoreStats};
use cairn_core::{InitOptions, OpenOptions, Repository};
use cairn_storage::testing::{fresh_location, TestLocation};
use cairn_storage::DynStorage;
use std::path::{Path, PathBuf};

pub const PASSWORD: &str = "correct horse battery staple";

/// Fast argon2 parameters: tests open many repositories.
pub fn fast_kdf() -> KdfParams {
    KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    }
}

/// Small chunks (average 1 KiB) and packs, so small trees exercise list
/// blobs and several packs.
pub fn fast_init() -> InitOptions {
    InitOptions {
        kdf: fast_kdf(),
        chunk_sizes: (256, 1024, 4096),
        pack_sizes: (128 << 10, 32 << 10),
        zstd_level: 3,
    }
}

/// A repository on the test backend with its own cache directory.
pub struct TestRepo {
    pub loc: TestLocation,
    pub cache: tempfile::TempDir,
    pub repo: Repository,
}

impl TestRepo {
    pub fn new(name: &str) -> Self {
        Self::with_options(name, &fast_init())
    }

    pub fn with_options(name: &str, init: &InitOptions) -> Self {
        let loc = fresh_location(name).expect("test location");
        let cache = tempfile::tempdir().expect("cache dir");
        let repo = Repository::init(storage(&loc), PASSWORD, init, &open_opts(cache.path()))
            .expect("init");
        Self { loc, cache, repo }
    }

    /// A second handle, opened from scratch (same cache directory).
    pub fn reopen(&self) -> Repository {
        open_repo(&self.loc, self.cache.path())
    }

    pub fn storage(&self) -> DynStorage {
        storage(&self.loc)
    }
}

/// Opens the repository at `loc` with the cache directory `cache`.
pub fn open_repo(loc: &TestLocation, cache: &Path) -> Repository {
    Repository::open(storage(loc), PASSWORD, &open_opts(cache)).expect("open")
}

pub fn storage(loc: &TestLocation) -> DynStorage {
    cairn_storage::open(loc.location()).expect("open storage")
}

pub fn open_opts(cache: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache.to_path_buf()),
        tolerate_damage: false,
    }
}

pub fn backup_dir(repo: &Repository, dir: &Path) -> BackupResult {
    backup(
        repo,
        &BackupOptions {
            paths: vec![dir.to_path_buf()],
            host: Some("test-host".into()),
            source: Some("test-source".into()),
            ..Default::default()
        },
    )
    .expect("backup")
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
