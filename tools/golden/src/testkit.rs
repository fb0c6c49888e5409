//! Repositories for tests: the fast key derivation and small chunks every
//! suite creates its repositories with, creating and opening a repository
//! at a location with an in-memory or an on-disk cache, and a backup of one
//! directory.
//!
//! Only the parameters that are the same everywhere are fixed here; what a
//! test depends on (pack sizes, compression level, password, cache) is a
//! parameter, so each suite keeps exactly the repository it asserts about.
//! Failures are returned as [`GoldenError`]; tests `expect` them.

use crate::repos::GoldenError;
use cairn_core::backup::{backup, BackupOptions, BackupResult};
use cairn_core::crypto::KdfParams;
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{BlobId, InitOptions, OpenOptions, Repository};
use cairn_storage::testing::{fresh_location, TestLocation};
use cairn_storage::DynStorage;
use std::path::Path;

/// Host recorded by [`backup_dir`].
pub const HOST: &str = "test-host";
/// Source recorded by [`backup_dir`].
pub const SOURCE: &str = "test-source";

/// argon2id parameters that derive a key in about a millisecond: tests
/// open many repositories, and their passwords protect nothing.
pub fn fast_kdf() -> KdfParams {
    KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    }
}

/// Options for a test repository: [`fast_kdf`], chunks of 256 B minimum,
/// 1 KiB average and 4 KiB maximum (so a few KiB of source make several
/// chunks and a few hundred KiB make list blobs), the given (data,
/// metadata) pack target sizes, zstd level 3. A test that relies on
/// another compression level sets `zstd_level` over this.
pub fn init_options(pack_sizes: (u32, u32)) -> InitOptions {
    InitOptions {
        kdf: fast_kdf(),
        chunk_sizes: (256, 1024, 4096),
        pack_sizes,
        zstd_level: 3,
    }
}

/// A repository at `dir` made with [`init_options`] for `pack_sizes` and
/// no compression, so a few small files fill several packs.
pub fn init_uncompressed_at(
    dir: &Path,
    password: &str,
    pack_sizes: (u32, u32),
) -> Result<Repository, GoldenError> {
    let opts = InitOptions {
        zstd_level: 0,
        ..init_options(pack_sizes)
    };
    init_at(&dir.to_string_lossy(), password, &opts)
}

/// `len` incompressible bytes from a xorshift64 generator whose state is
/// `state` (not zero), so tests make the same data on every run.
pub fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// Restores `tree` into a temporary folder and compares it with `src`
/// (`diff -r`): `Err` says what failed or differs.
pub fn restores_to(repo: &Repository, tree: &BlobId, src: &Path) -> Result<(), String> {
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let target = out.path().join("r");
    let opts = RestoreOptions {
        target: target.clone(),
        ..Default::default()
    };
    let stats = restore(repo, tree, &opts).map_err(|e| e.to_string())?;
    if !stats.failed.is_empty() {
        return Err(format!("files not restored: {:?}", stats.failed));
    }
    let diff = std::process::Command::new("diff")
        .args(["-r", "-q"])
        .arg(src)
        .arg(&target)
        .output()
        .map_err(|e| format!("diff: {e}"))?;
    if !diff.status.success() {
        return Err(format!(
            "restore differs from {}: {}",
            src.display(),
            String::from_utf8_lossy(&diff.stdout)
        ));
    }
    Ok(())
}

/// Open options that keep the cache in `cache` (the default keeps it in
/// memory, so every handle starts cold).
pub fn cached(cache: &Path) -> OpenOptions {
    OpenOptions {
        cache_dir: Some(cache.to_path_buf()),
        tolerate_damage: false,
    }
}

/// The production storage stack at `location` (a path or URL).
pub fn storage_at(location: &str) -> Result<DynStorage, GoldenError> {
    Ok(cairn_storage::open(location)?)
}

/// Creates a repository at `location` and returns it opened with an
/// in-memory cache.
pub fn init_at(
    location: &str,
    password: &str,
    opts: &InitOptions,
) -> Result<Repository, GoldenError> {
    Ok(Repository::init(
        storage_at(location)?,
        password,
        opts,
        &OpenOptions::default(),
    )?)
}

/// Opens the repository at `location` with an empty in-memory cache: the
/// handle sees only what storage holds.
pub fn open_at(location: &str, password: &str) -> Result<Repository, GoldenError> {
    Ok(Repository::open(
        storage_at(location)?,
        password,
        &OpenOptions::default(),
    )?)
}

/// [`open_at`] for a repository a test has damaged: index segments that
/// fail to load are reported by `damaged_segments`, as check and repair
/// open it.
pub fn open_damaged_at(location: &str, password: &str) -> Result<Repository, GoldenError> {
    let opts = OpenOptions {
        cache_dir: None,
        tolerate_damage: true,
    };
    Ok(Repository::open(storage_at(location)?, password, &opts)?)
}

/// Opens the repository at `loc` with the cache directory `cache`.
pub fn open_cached(
    loc: &TestLocation,
    password: &str,
    cache: &Path,
) -> Result<Repository, GoldenError> {
    Ok(Repository::open(
        storage_at(loc.location())?,
        password,
        &cached(cache),
    )?)
}

/// A repository at a fresh location on the test backend
/// (`CAIRN_TEST_BACKEND`), with a cache directory of its own that lives
/// as long as it does.
pub struct TestRepo {
    /// Where the repository is; removed when dropped.
    pub loc: TestLocation,
    /// The cache directory every handle of this repository uses.
    pub cache: tempfile::TempDir,
    /// The handle that created the repository.
    pub repo: Repository,
    password: String,
}

impl TestRepo {
    /// Creates the repository at `fresh_location(name)` with `opts`.
    pub fn init(name: &str, password: &str, opts: &InitOptions) -> Result<Self, GoldenError> {
        let loc = fresh_location(name)?;
        let cache = tempfile::tempdir().map_err(|source| GoldenError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let repo = Repository::init(
            storage_at(loc.location())?,
            password,
            opts,
            &cached(cache.path()),
        )?;
        Ok(Self {
            loc,
            cache,
            repo,
            password: password.to_string(),
        })
    }

    /// A second handle, opened from scratch with the same cache directory.
    pub fn reopen(&self) -> Result<Repository, GoldenError> {
        open_cached(&self.loc, &self.password, self.cache.path())
    }

    /// A new production storage stack on the repository's location.
    pub fn storage(&self) -> Result<DynStorage, GoldenError> {
        storage_at(self.loc.location())
    }
}

/// Backs up `dir` as host [`HOST`], source [`SOURCE`], with every other
/// option at its default.
pub fn backup_dir(repo: &Repository, dir: &Path) -> Result<BackupResult, GoldenError> {
    Ok(backup(
        repo,
        &BackupOptions {
            paths: vec![dir.to_path_buf()],
            host: Some(HOST.into()),
            source: Some(SOURCE.into()),
            ..Default::default()
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_repository_reopens_with_its_password_and_keeps_a_backup() {
        let t = TestRepo::init("testkit", "pw", &init_options((4096, 4096))).unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a"), vec![7u8; 10_000]).unwrap();
        let first = backup_dir(&t.repo, src.path()).unwrap();
        assert_eq!(first.snapshot.host, HOST);
        let again = t.reopen().unwrap();
        let (id, _) = again.find_snapshot("latest", &Default::default()).unwrap();
        assert_eq!(id, first.id);
        assert!(open_cached(&t.loc, "not pw", t.cache.path()).is_err());
        assert!(open_at(t.loc.location(), "pw").is_ok());
    }
}
