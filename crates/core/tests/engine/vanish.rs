//! The one policy for an object deleted between a listing and its read
//! (`cairn_core::objects`): backup's parent choice, check, garbage
//! collection and copy skip a snapshot that vanished, and none fails.
//!
//! A storage wrapper deletes the chosen snapshot right after the listing
//! that returned it, as a backup replacing its checkpoint would.

use crate::support::{backup_dir, test_repo, PASSWORD};
use bytes::Bytes;
use cairn_core::check::{check, CheckOptions, Damage};
use cairn_core::copy::copy_snapshots;
use cairn_core::format::kinds::{ObjectKind, Snapshots};
use cairn_core::gc::{self, GcOptions, Roots};
use cairn_core::{OpenOptions, Repository, SnapshotId};
use cairn_storage::{DynStorage, ObjectInfo, Storage};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Deletes `victim` from the inner storage just after the first listing
/// of `snapshots/` that includes it, and counts how often it did.
#[derive(Debug)]
struct VanishAfterList {
    inner: DynStorage,
    victim: Mutex<Option<String>>,
    fired: Mutex<u32>,
}

impl VanishAfterList {
    fn new(inner: DynStorage) -> Arc<Self> {
        Arc::new(Self {
            inner,
            victim: Mutex::new(None),
            fired: Mutex::new(0),
        })
    }

    fn arm(&self, id: &SnapshotId) {
        *self.victim.lock().unwrap() = Some(Snapshots::path(id));
    }

    fn fired(&self) -> u32 {
        *self.fired.lock().unwrap()
    }
}

impl Storage for VanishAfterList {
    fn read(&self, path: &str) -> cairn_storage::Result<Bytes> {
        self.inner.read(path)
    }
    fn read_range(&self, path: &str, range: Range<u64>) -> cairn_storage::Result<Bytes> {
        self.inner.read_range(path, range)
    }
    fn write(&self, path: &str, data: Bytes) -> cairn_storage::Result<()> {
        self.inner.write(path, data)
    }
    fn list(&self, prefix: &str) -> cairn_storage::Result<Vec<ObjectInfo>> {
        let listed = self.inner.list(prefix)?;
        if prefix == Snapshots::PREFIX {
            let mut victim = self.victim.lock().unwrap();
            if let Some(path) = victim.take_if(|v| listed.iter().any(|o| o.path == *v)) {
                self.inner.delete(&path)?;
                *self.fired.lock().unwrap() += 1;
            }
        }
        Ok(listed)
    }
    fn stat(&self, path: &str) -> cairn_storage::Result<ObjectInfo> {
        self.inner.stat(path)
    }
    fn delete(&self, path: &str) -> cairn_storage::Result<()> {
        self.inner.delete(path)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// A handle on `t`'s repository through a [`VanishAfterList`], with an
/// empty in-memory cache so every snapshot is read from storage.
fn vanishing(t: &cairn_golden::testkit::TestRepo) -> (Arc<VanishAfterList>, Repository) {
    let wrapper = VanishAfterList::new(t.storage().unwrap());
    let repo = Repository::open(wrapper.clone(), PASSWORD, &OpenOptions::default()).unwrap();
    (wrapper, repo)
}

fn source(dir: &Path, seed: u8) {
    std::fs::write(dir.join("a"), vec![seed; 20_000]).unwrap();
    std::fs::write(dir.join("b"), format!("file b, version {seed}")).unwrap();
}

#[test]
fn backup_chooses_its_parent_among_the_snapshots_still_present() {
    let t = test_repo("vanish-backup");
    let src = tempfile::tempdir().unwrap();
    source(src.path(), 1);
    let first = backup_dir(&t.repo, src.path());
    source(src.path(), 2);
    let second = backup_dir(&t.repo, src.path());
    let (wrapper, repo) = vanishing(&t);
    wrapper.arm(&second.id);
    let third = backup_dir(&repo, src.path());
    assert_eq!(wrapper.fired(), 1, "the listing never returned the victim");
    assert_eq!(third.snapshot.parent, Some(first.id));
}

#[test]
fn check_does_not_report_a_snapshot_deleted_since_the_listing() {
    let t = test_repo("vanish-check");
    let src = tempfile::tempdir().unwrap();
    source(src.path(), 1);
    backup_dir(&t.repo, src.path());
    source(src.path(), 2);
    let second = backup_dir(&t.repo, src.path());
    let (wrapper, repo) = vanishing(&t);
    wrapper.arm(&second.id);
    let report = check(&repo, &CheckOptions::default()).unwrap();
    assert_eq!(wrapper.fired(), 1, "the listing never returned the victim");
    assert!(
        !report
            .damage
            .iter()
            .any(|d| matches!(d, Damage::SnapshotUnreadable { .. })),
        "{:#?}",
        report.damage
    );
    assert_eq!(report.snapshots, 1);
}

#[test]
fn gc_follows_only_the_snapshots_still_present() {
    let t = test_repo("vanish-gc");
    let src = tempfile::tempdir().unwrap();
    source(src.path(), 1);
    let first = backup_dir(&t.repo, src.path());
    source(src.path(), 2);
    let second = backup_dir(&t.repo, src.path());
    let (wrapper, repo) = vanishing(&t);
    wrapper.arm(&second.id);
    let roots = Roots::load(&repo).unwrap();
    assert_eq!(wrapper.fired(), 1, "the listing never returned the victim");
    assert_eq!(roots.snapshot_count(), 1);
    assert_eq!(roots.unreadable, 0);
    assert!(roots.may_reference(&first.snapshot.tree));
    let opts = GcOptions {
        dry_run: true,
        ..Default::default()
    };
    gc::mark(&repo, &roots, &opts).unwrap();
}

#[test]
fn copy_compares_only_with_the_destination_snapshots_still_present() {
    let from = test_repo("vanish-copy-src");
    let to = test_repo("vanish-copy-dst");
    let src = tempfile::tempdir().unwrap();
    source(src.path(), 1);
    let copied = backup_dir(&from.repo, src.path());
    source(src.path(), 2);
    let present = backup_dir(&to.repo, src.path());
    let (wrapper, dst) = vanishing(&to);
    wrapper.arm(&present.id);
    let report = copy_snapshots(&from.repo, &dst, &[copied.id]).unwrap();
    assert_eq!(wrapper.fired(), 1, "the listing never returned the victim");
    assert_eq!(report.copied.len(), 1);
    let left: Vec<SnapshotId> = dst
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![report.copied[0].1]);
}
