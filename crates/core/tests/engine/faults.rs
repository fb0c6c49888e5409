//! Fault injection at the engine level: backups, restores and opens through
//! a storage that fails, times out and cuts range reads short.
//!
//! The stack is the production one with [`FaultStorage`] slid between the
//! backend and the retry layer (as `open_with` builds it), on the backend
//! `CAIRN_TEST_BACKEND` names (fs or s3). Every run either succeeds after
//! retries, and then restores bit-exact, or fails with an error that names
//! the request and the object; never a panic or a hang. After every run,
//! `check --read-data` through a clean storage finds no damage, and the
//! next run (clean, or under moderate faults) succeeds.
//!
//! Plans are seeded. Which requests fault is a pure function of the seed
//! and the request, but pack and segment names depend on random nonces, so
//! the rate-based runs assert what must hold for any outcome; the
//! exhausted-retry and countdown runs fail deterministically.

use cairn_core::backup::{backup, BackupOptions, BackupResult, ParentChoice};
use cairn_core::check::{check, CheckOptions, DataSubset};
use cairn_core::checkpoint::CheckpointOptions;
use cairn_core::restore::{restore, RestoreOptions, RestoreStats};
use cairn_core::{Error, InitOptions, OpenOptions, Repository};
use cairn_golden::fixture::{is_root, rich_tree, xattrs_supported, RichOptions};
use cairn_golden::testkit;
use cairn_golden::{compare_trees, CompareOptions};
use cairn_storage::testing::{fresh_location, fresh_location_on, TestBackend, TestLocation};
use cairn_storage::{
    open_backend, open_with, wrap, DynStorage, FaultPlan, FaultRates, FaultStorage, OpKind,
    StorageOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const PASSWORD: &str = "fault tolerant";

/// Production options with short retry delays, so exhausted retries cost
/// milliseconds.
fn storage_options(retries: u32) -> StorageOptions {
    StorageOptions {
        retries,
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(8),
        ..StorageOptions::default()
    }
}

/// Small chunks and packs: a small tree makes many packs, list blobs and
/// several checkpoints.
fn init_options() -> InitOptions {
    InitOptions {
        zstd_level: 1,
        ..testkit::init_options((64 << 10, 16 << 10))
    }
}

/// A source tree of a few hundred entries: small files, a 40 KiB file of
/// inline chunks, a 300 KiB file of list blobs, sparse files, hard links,
/// symlinks, a fifo.
struct Source {
    _dir: tempfile::TempDir,
    root: PathBuf,
    compare: CompareOptions,
}

impl Source {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("source dir");
        let root = dir.path().join("src");
        std::fs::create_dir(&root).expect("mkdir src");
        rich_tree(
            &root,
            &RichOptions {
                seed: 11,
                small_files: 200,
                depth: 6,
                large_sizes: vec![40 << 10, 300 << 10],
                ..RichOptions::default()
            },
        )
        .expect("write source tree");
        let compare = CompareOptions {
            owners: is_root(),
            xattrs: xattrs_supported(&root),
            sparse: true,
        };
        Self {
            _dir: dir,
            root,
            compare,
        }
    }
}

/// One repository reached three ways: through the fault injector under a
/// retry layer that gives up quickly (`flaky`) or persists (`patient`), and
/// through a clean production stack (`clean`).
struct Rig {
    loc: TestLocation,
    cache: tempfile::TempDir,
    fault: Arc<FaultStorage>,
    flaky: DynStorage,
    patient: DynStorage,
    clean: DynStorage,
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::at(fresh_location(name).expect("test location"))
    }

    /// A rig on a local directory, whatever `CAIRN_TEST_BACKEND` says.
    fn local(name: &str) -> Self {
        Self::at(fresh_location_on(&TestBackend::Fs, name).expect("test location"))
    }

    fn at(loc: TestLocation) -> Self {
        let backend = open_backend(loc.location(), &storage_options(0)).expect("backend");
        let fault = Arc::new(FaultStorage::new(backend, FaultPlan::new(0)));
        let flaky = wrap(fault.clone(), &storage_options(2));
        let patient = wrap(fault.clone(), &storage_options(10));
        let clean = open_with(loc.location(), &storage_options(6)).expect("clean storage");
        let cache = tempfile::tempdir().expect("cache dir");
        Repository::init(
            clean.clone(),
            PASSWORD,
            &init_options(),
            &OpenOptions::default(),
        )
        .expect("init");
        Self {
            loc,
            cache,
            fault,
            flaky,
            patient,
            clean,
        }
    }

    /// Opens the repository through `storage` with the rig's cache, as the
    /// next command on the same machine would.
    fn open(&self, storage: &DynStorage) -> Result<Repository, Error> {
        Repository::open(
            storage.clone(),
            PASSWORD,
            &testkit::cached(self.cache.path()),
        )
    }

    /// Asserts the repository is consistent: opened through the clean
    /// storage with a fresh in-memory cache, `check --read-data` finds no
    /// damaged segment, pack, blob or snapshot.
    fn assert_consistent(&self, when: &str) {
        let repo = Repository::open(
            self.clean.clone(),
            PASSWORD,
            &OpenOptions {
                cache_dir: None,
                tolerate_damage: true,
            },
        )
        .unwrap_or_else(|e| panic!("{when}: open through a clean storage: {e}"));
        assert!(
            repo.damaged_segments().unwrap().is_empty(),
            "{when}: damaged index segments: {:?}",
            repo.damaged_segments().unwrap()
        );
        let report = check(
            &repo,
            &CheckOptions {
                read_data: Some(DataSubset::All),
            },
        )
        .unwrap_or_else(|e| panic!("{when}: check failed: {e}"));
        assert!(
            report.is_clean(),
            "{when}: {} at {}:\n{:#?}",
            "check found damage",
            self.loc.location(),
            report.damage
        );
        assert!(report.affected.is_empty(), "{when}: {:#?}", report.affected);
    }
}

fn backup_options(src: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![src.to_path_buf()],
        host: Some("fault-host".into()),
        source: Some("fault-source".into()),
        parent: ParentChoice::Auto,
        workers: 2,
        uploaders: 2,
        // Checkpoints every few blobs: failures also land between
        // checkpoint writes (segment, incomplete snapshot, delete of the
        // previous one).
        checkpoint: CheckpointOptions {
            every: Duration::ZERO,
            every_blobs: 150,
        },
        ..BackupOptions::default()
    }
}

/// Whether an engine error names the failed request and its object, e.g.
/// `storage error at LOC: write packs/ab/ab12…: injected fault: …`.
fn names_request(e: &Error) -> bool {
    let Error::Storage { source, .. } = e else {
        return false;
    };
    let Some((verb, object)) = source.op.split_once(' ') else {
        return false;
    };
    ["read", "write", "list", "stat", "delete"].contains(&verb)
        && !object.trim().is_empty()
        && (source.message.contains("injected fault") || source.message.contains("short read"))
}

/// What the messages of retried-then-abandoned requests contain.
const TEMPORARY: &[&str] = &["injected fault", "short read"];

fn assert_clear(e: &Error, what: &str) {
    assert!(
        names_request(e),
        "{what} failed with an error that does not name the failed request: {e} ({e:?})"
    );
}

/// Opens through `storage` and backs up; `Err` when either failed.
fn try_backup(rig: &Rig, storage: &DynStorage, src: &Path) -> Result<BackupResult, Error> {
    let repo = rig.open(storage)?;
    backup(&repo, &backup_options(src))
}

/// Opens through `storage` and restores `result`'s snapshot into a fresh
/// directory; `Err` when the open or the tree walk failed. Files that could
/// not be read are in `RestoreStats::failed`.
fn try_restore(
    rig: &Rig,
    storage: &DynStorage,
    result: &BackupResult,
) -> Result<(tempfile::TempDir, RestoreStats), Error> {
    let repo = rig.open(storage)?;
    let out = tempfile::tempdir().expect("restore dir");
    let stats = restore(
        &repo,
        &result.snapshot.tree,
        &RestoreOptions {
            target: out.path().join("dst"),
            owners: is_root(),
            ..RestoreOptions::default()
        },
    )?;
    Ok((out, stats))
}

/// Every failed file must say which pack could not be read and why (the
/// fault's text contains `cause`), or which hard-linked file it shares its
/// content with failed, and that file's reason.
fn assert_failures_named(stats: &RestoreStats, what: &str, cause: &[&str]) {
    let named =
        |reason: &str| reason.contains("packs/") && cause.iter().any(|c| reason.contains(c));
    for (path, reason) in &stats.failed {
        let read_failed = named(reason);
        let link_failed = reason
            .split_once(" which failed: ")
            .is_some_and(|(head, why)| head.starts_with("hard link to") && named(why));
        assert!(
            read_failed || link_failed,
            "{what}: {} failed with an unclear reason: {reason}",
            path.display()
        );
    }
}

fn assert_restores(rig: &Rig, storage: &DynStorage, result: &BackupResult, src: &Source) {
    let (out, stats) = try_restore(rig, storage, result).expect("restore");
    assert!(stats.failed.is_empty(), "{:#?}", stats.failed);
    let diffs = compare_trees(&src.root, &out.path().join("dst"), &src.compare);
    assert!(
        diffs.is_empty(),
        "restore differs:\n  {}",
        diffs.join("\n  ")
    );
}

/// The next run under moderate faults with patient retries, then the next
/// run without faults: both succeed and restore bit-exact.
fn assert_next_runs_succeed(rig: &Rig, src: &Source, seed: u64, when: &str) {
    rig.fault
        .set_plan(FaultPlan::new(seed ^ 0x5eed).with_rates(FaultRates {
            error: 0.05,
            timeout: 0.03,
            short_read: 0.05,
        }));
    let result = try_backup(rig, &rig.patient, &src.root)
        .unwrap_or_else(|e| panic!("{when}: backup under moderate faults: {e}"));
    assert_restores(rig, &rig.patient, &result, src);
    rig.fault.disarm();
    let result = try_backup(rig, &rig.clean, &src.root)
        .unwrap_or_else(|e| panic!("{when}: backup without faults: {e}"));
    assert_restores(rig, &rig.clean, &result, src);
    rig.assert_consistent(&format!("{when}, after the next runs"));
}

#[test]
fn temporary_faults_are_retried_or_fail_clearly_and_never_damage_the_repository() {
    let src = Source::new();
    let (mut ok_backups, mut failed_backups, mut ok_restores, mut failed_restores) = (0, 0, 0, 0);
    for seed in 1..=4u64 {
        let rig = Rig::new(&format!("faults-rates-{seed}"));
        // Up to a third of the requests fail, and retries give up after
        // three attempts: some runs get through, some do not.
        rig.fault
            .set_plan(FaultPlan::new(seed).with_rates(FaultRates {
                error: 0.12,
                timeout: 0.08,
                short_read: 0.12,
            }));
        let backed_up = match try_backup(&rig, &rig.flaky, &src.root) {
            Ok(result) => {
                ok_backups += 1;
                Some(result)
            }
            Err(e) => {
                failed_backups += 1;
                assert_clear(&e, &format!("seed {seed}: backup"));
                None
            }
        };
        rig.assert_consistent(&format!("seed {seed}, after the faulty backup"));
        let result = match backed_up {
            Some(r) => r,
            None => {
                rig.fault.disarm();
                try_backup(&rig, &rig.clean, &src.root)
                    .unwrap_or_else(|e| panic!("seed {seed}: backup without faults: {e}"))
            }
        };
        rig.fault
            .set_plan(FaultPlan::new(seed + 100).with_rates(FaultRates {
                error: 0.12,
                timeout: 0.08,
                short_read: 0.12,
            }));
        match try_restore(&rig, &rig.flaky, &result) {
            Ok((out, stats)) if stats.failed.is_empty() => {
                ok_restores += 1;
                let diffs = compare_trees(&src.root, &out.path().join("dst"), &src.compare);
                assert!(diffs.is_empty(), "seed {seed}: {}", diffs.join("\n  "));
            }
            Ok((_, stats)) => {
                failed_restores += 1;
                assert_failures_named(&stats, &format!("seed {seed}: restore"), TEMPORARY);
            }
            Err(e) => {
                failed_restores += 1;
                assert_clear(&e, &format!("seed {seed}: restore"));
            }
        }
        let injected = rig.fault.stats();
        assert!(injected.injected() > 0, "seed {seed}: {injected:?}");
        rig.assert_consistent(&format!("seed {seed}, after the faulty restore"));
        assert_next_runs_succeed(&rig, &src, seed, &format!("seed {seed}"));
    }
    eprintln!(
        "backups: {ok_backups} ok, {failed_backups} failed; \
         restores: {ok_restores} ok, {failed_restores} failed"
    );
}

/// A plan that fails every request of `kind` in the given way.
fn always(seed: u64, kind: OpKind, rates: FaultRates) -> FaultPlan {
    FaultPlan::new(seed).with_op(kind, rates)
}

#[test]
fn exhausted_retries_fail_clearly_and_leave_the_repository_consistent() {
    let src = Source::new();
    let all_errors = FaultRates {
        error: 1.0,
        ..FaultRates::default()
    };
    let all_timeouts = FaultRates {
        timeout: 1.0,
        ..FaultRates::default()
    };
    let cases: [(&str, FaultPlan); 4] = [
        // Nothing can be written: the first pack, segment or snapshot stops the backup.
        ("every write fails", always(1, OpKind::Write, all_errors)),
        // Every write lands but its answer is lost: packs arrive unindexed.
        (
            "every write times out",
            always(2, OpKind::Write, all_timeouts),
        ),
        // The index cannot be listed: the open stops.
        ("every listing fails", always(3, OpKind::List, all_errors)),
        // Writes fail on the retry after a timeout landed them.
        (
            "writes time out or fail",
            always(
                4,
                OpKind::Write,
                FaultRates {
                    error: 0.5,
                    timeout: 0.5,
                    short_read: 0.0,
                },
            ),
        ),
    ];
    for (i, (what, plan)) in cases.into_iter().enumerate() {
        let rig = Rig::new(&format!("faults-exhausted-{i}"));
        rig.fault.set_plan(plan);
        let e = try_backup(&rig, &rig.flaky, &src.root)
            .err()
            .unwrap_or_else(|| panic!("{what}: the backup must fail"));
        assert_clear(&e, what);
        assert!(
            e.to_string().contains("gave up after 3 attempts"),
            "{what}: {e}"
        );
        assert!(e.is_retryable(), "{what}: a temporary failure: {e}");
        rig.assert_consistent(what);
        assert_next_runs_succeed(&rig, &src, i as u64, what);
    }

    // Every range read comes back short: the restore fails naming the pack.
    let rig = Rig::new("faults-exhausted-short");
    let result = try_backup(&rig, &rig.clean, &src.root).expect("clean backup");
    rig.fault.set_plan(always(
        5,
        OpKind::ReadRange,
        FaultRates {
            short_read: 1.0,
            ..FaultRates::default()
        },
    ));
    match try_restore(&rig, &rig.flaky, &result) {
        Err(e) => {
            assert_clear(&e, "restore with short reads");
            assert!(e.to_string().contains("short read"), "{e}");
        }
        Ok((_, stats)) => {
            assert!(!stats.failed.is_empty(), "every range read is short");
            assert_failures_named(&stats, "restore with short reads", &["short read"]);
        }
    }
    rig.fault.disarm();
    assert_restores(&rig, &rig.flaky, &result, &src);
    rig.assert_consistent("after short reads");
}

#[test]
fn storage_lost_mid_backup_leaves_a_consistent_repository() {
    let src = Source::new();
    // How many requests an uninterrupted first backup makes here.
    let probe = Rig::new("faults-countdown-probe");
    try_backup(&probe, &probe.flaky, &src.root).expect("probe backup");
    let total = probe.fault.stats().requests;
    assert!(
        total > 20,
        "a backup of this tree makes many requests: {total}"
    );
    drop(probe);

    for k in 1..=4u64 {
        // Cut points spread over the run, from the open to the last packs.
        let cut = total * k / 6;
        let rig = Rig::new(&format!("faults-countdown-{k}"));
        rig.fault.set_plan(FaultPlan::new(k).fail_after(cut));
        let e = try_backup(&rig, &rig.patient, &src.root)
            .err()
            .unwrap_or_else(|| panic!("the backup cut after {cut} of {total} requests must fail"));
        assert_clear(&e, &format!("backup cut after {cut} requests"));
        assert!(e.to_string().contains("simulated crash"), "{e}");
        assert!(!e.is_retryable(), "storage gone for good: {e}");
        assert!(rig.fault.stats().crashed >= 1);
        rig.assert_consistent(&format!("backup cut after {cut} of {total} requests"));

        // Storage lost in the middle of a restore of the backup that follows.
        rig.fault.disarm();
        let result = try_backup(&rig, &rig.patient, &src.root)
            .unwrap_or_else(|e| panic!("backup after the cut at {cut}: {e}"));
        assert_restores(&rig, &rig.clean, &result, &src);
        rig.fault.set_plan(FaultPlan::new(k).fail_after(5 + k * 7));
        match try_restore(&rig, &rig.patient, &result) {
            Ok((_, stats)) => {
                assert_failures_named(&stats, "restore cut short", &["simulated crash"])
            }
            Err(e) => assert_clear(&e, "restore cut short"),
        }
        rig.fault.disarm();
        assert_restores(&rig, &rig.patient, &result, &src);
        rig.assert_consistent(&format!("after the cut at {cut}"));
    }
}

/// Regression: an upload failure taken by a sealing worker (still busy
/// with a large file of the parent directory) was never seen by the walker
/// waiting in a checkpoint's `PackWriter::sync` for the failed pack: the
/// backup hung. Now every waiter sees the first upload failure.
#[test]
fn storage_lost_while_a_checkpoint_waits_for_uploads_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("source dir");
    let root = dir.path().join("src");
    std::fs::create_dir_all(root.join("b")).expect("mkdir");
    let mut rng = cairn_golden::fixture::Rng::new(5);
    // `a.bin` is still being read and sealed when `b/` ends and its
    // checkpoint waits for the packs in flight.
    std::fs::write(root.join("a.bin"), rng.bytes(16 << 20)).expect("big file");
    for f in 0..20 {
        std::fs::write(root.join("b").join(format!("f{f:03}")), rng.bytes(3000)).expect("file");
    }
    for k in 0..12u64 {
        let rig = Rig::new(&format!("faults-checkpoint-hang-{k}"));
        // Cuts between the first pack uploads and the first checkpoint.
        rig.fault.set_plan(FaultPlan::new(k).fail_after(8 + k));
        let (tx, rx) = std::sync::mpsc::channel();
        let storage = rig.patient.clone();
        let cache = rig.cache.path().to_path_buf();
        let opts = BackupOptions {
            checkpoint: CheckpointOptions {
                every: Duration::ZERO,
                every_blobs: 5,
            },
            ..backup_options(&root)
        };
        std::thread::spawn(move || {
            let open = OpenOptions {
                cache_dir: Some(cache),
                tolerate_damage: false,
            };
            let result = Repository::open(storage, PASSWORD, &open)
                .and_then(|repo| backup(&repo, &opts).map(|_| ()));
            let _ = tx.send(result);
        });
        // A watchdog, not a timing assertion: the run takes well under a
        // second; only a hang reaches the limit.
        let result = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("cut after {} requests: the backup hangs", 8 + k));
        let e = result
            .err()
            .unwrap_or_else(|| panic!("cut after {} requests: the backup must fail", 8 + k));
        assert_clear(&e, "backup cut during a checkpoint");
        assert!(e.to_string().contains("simulated crash"), "{e}");
        rig.assert_consistent(&format!("cut after {} requests", 8 + k));
    }
}

/// Files left in a local repository's staging folder.
fn staged(rig: &Rig) -> Vec<PathBuf> {
    let root = rig.loc.local_root().expect("a local repository");
    std::fs::read_dir(cairn_storage::staging_dir(root))
        .map(|rd| rd.map(|e| e.expect("staging entry").path()).collect())
        .unwrap_or_default()
}

/// The fault layer sits on the write path of a plain local repository:
/// packs stream into staging files through the fault, retry and
/// concurrency layers and are renamed when their writer closes. A fault on
/// that close fails the backup clearly, leaves no staging file, and the
/// repository checks clean; the next run succeeds.
#[test]
fn a_fault_on_the_pack_writer_of_a_local_repository_fails_the_backup_cleanly() {
    let src = Source::new();
    let cases = [
        (
            "every pack close fails",
            FaultRates {
                error: 1.0,
                ..FaultRates::default()
            },
        ),
        (
            "every pack lands but its answer is lost",
            FaultRates {
                timeout: 1.0,
                ..FaultRates::default()
            },
        ),
    ];
    for (i, (what, rates)) in cases.into_iter().enumerate() {
        let rig = Rig::local(&format!("faults-local-writer-{i}"));
        rig.fault
            .set_plan(always(40 + i as u64, OpKind::Write, rates));
        let e = try_backup(&rig, &rig.flaky, &src.root)
            .err()
            .unwrap_or_else(|| panic!("{what}: the backup must fail"));
        assert_clear(&e, what);
        let Error::Storage { source, .. } = &e else {
            panic!("{what}: not a storage error: {e}");
        };
        assert!(
            source.op.starts_with("write packs/"),
            "{what}: the first write of a backup is a pack's: {e}"
        );
        assert!(
            e.to_string().contains("gave up after 3 attempts"),
            "{what}: {e}"
        );
        assert!(staged(&rig).is_empty(), "{what}: {:?}", staged(&rig));
        rig.assert_consistent(what);
        assert_next_runs_succeed(&rig, &src, 40 + i as u64, what);
        assert!(staged(&rig).is_empty(), "{what}: {:?}", staged(&rig));
    }
}
