//! Packs of a local repository are streamed to staging files and renamed
//! into place by the fs backend's writer (`Storage::writer`). These tests
//! cover what that path adds: nothing is left in staging, a full disk fails
//! the backup with a clear error and loses nothing, and a repository whose
//! staging folder cannot be made fails the backup naming it.

use cairn_core::backup::{backup, BackupOptions, ParentChoice};
use cairn_core::check::{check, CheckOptions, DataSubset};
use cairn_core::{Error, Repository};
use cairn_golden::testkit;
use cairn_storage::StorageErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

const PW: &str = "pw";

/// Small packs: a few MiB of data make many packs.
fn init(dir: &Path) -> Repository {
    testkit::init_uncompressed_at(dir, PW, (256 << 10, 64 << 10)).unwrap()
}

fn reopen(dir: &Path) -> Repository {
    testkit::open_at(dir.to_str().unwrap(), PW).unwrap()
}

/// `files` files of incompressible bytes, 256 KiB each.
fn write_random(root: &Path, files: usize, seed: u64) {
    let mut x = seed | 1;
    for f in 0..files {
        let dir = root.join(format!("d{}", f % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let data = testkit::noise(&mut x, 256 << 10);
        std::fs::write(dir.join(format!("f{f}")), data).unwrap();
    }
}

fn opts(src: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![src.to_path_buf()],
        host: Some("h".into()),
        source: Some("s".into()),
        parent: ParentChoice::None,
        ..Default::default()
    }
}

fn staged_files(repo_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(cairn_storage::staging_dir(repo_dir)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_restores(repo: &Repository, tree: &cairn_core::BlobId, src: &Path) {
    testkit::restores_to(repo, tree, src).unwrap();
}

#[test]
fn spooled_packs_verify_and_leave_nothing_in_staging() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_random(src.path(), 24, 3);
    let repo = init(repo_dir.path());
    let mut probe = repo.storage().clone().writer(0).unwrap();
    probe.write(b"probe").unwrap();
    assert_eq!(
        staged_files(repo_dir.path()).len(),
        1,
        "a local repository spools its packs"
    );
    drop(probe);
    let snap = backup(&repo, &opts(src.path())).unwrap();
    assert!(snap.snapshot.summary.blobs_added >= 24);
    assert!(staged_files(repo_dir.path()).is_empty());
    let fresh = reopen(repo_dir.path());
    let report = check(
        &fresh,
        &CheckOptions {
            read_data: Some(DataSubset::All),
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
    assert_restores(&fresh, &snap.snapshot.tree, src.path());
}

/// Unmounts a test's tmpfs however the test ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` at `dir`; `None` where this process may not mount
    /// (not root, or no mount permission in the container).
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_backup_clearly_and_a_rerun_with_space_succeeds() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(mnt.path(), "3m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let repo_dir = mnt.path().join("repo");
    let src = tempfile::tempdir().unwrap();
    // 6 MiB of incompressible data into a 3 MiB file system.
    write_random(src.path(), 24, 5);
    let repo = init(&repo_dir);
    let err = backup(&repo, &opts(src.path())).expect_err("the disk is full");
    assert!(
        matches!(&err, Error::Storage { source, .. } if source.kind == StorageErrorKind::NoSpace),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("No space left") && text.contains("free space"),
        "the error says what is wrong and what to do: {text}"
    );
    assert!(
        staged_files(&repo_dir).is_empty(),
        "a failed backup removes its staging files: {:?}",
        staged_files(&repo_dir)
    );
    let fresh = reopen(&repo_dir);
    assert!(fresh.list_snapshots().unwrap().is_empty(), "no snapshot");
    let report = check(&fresh, &CheckOptions::default()).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);

    fs.resize("64m");
    let repo = reopen(&repo_dir);
    let snap = backup(&repo, &opts(src.path())).unwrap();
    assert!(staged_files(&repo_dir).is_empty());
    assert_restores(&reopen(&repo_dir), &snap.snapshot.tree, src.path());
}

#[test]
fn without_a_staging_folder_packs_are_written_through_the_backend() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write_random(src.path(), 6, 9);
    let repo = init(repo_dir.path());
    // A file where the staging folder goes: the writer cannot stage a pack
    // and says where it tried.
    let staging = cairn_storage::staging_dir(repo_dir.path());
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::write(&staging, b"in the way").unwrap();
    let err = backup(&repo, &opts(src.path())).expect_err("nowhere to stage");
    assert!(
        err.to_string().contains(".tmp"),
        "the error names the staging path: {err}"
    );
    std::fs::remove_file(&staging).unwrap();
    let repo = reopen(repo_dir.path());
    let snap = backup(&repo, &opts(src.path())).unwrap();
    assert_restores(&reopen(repo_dir.path()), &snap.snapshot.tree, src.path());
}
