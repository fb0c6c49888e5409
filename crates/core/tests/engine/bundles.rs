//! Bundles (several small data blobs sealed as one zstd frame): what goes
//! into them, and that every reader takes each member back out whole:
//! restore, a fresh handle reading the index from segments, `check
//! --read-data`, deduplication, checkpoints, and maintenance repacking a
//! bundle with dead members.

use cairn_core::backup::{backup, BackupOptions, ParentChoice};
use cairn_core::check::{check, CheckOptions, Damage, DataSubset};
use cairn_core::checkpoint::CheckpointOptions;
use cairn_core::format::pack::BlobEntry;
use cairn_core::gc::GcOptions;
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{BlobId, PackId, Repository};
use cairn_golden::testkit;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const PW: &str = "pw";

/// A compressed repository (zstd level 3, so small text is bundled) with
/// the test chunker (chunks of at most 4 KiB) and small packs.
fn init(dir: &Path) -> Repository {
    testkit::init_at(
        &dir.to_string_lossy(),
        PW,
        &testkit::init_options((64 << 10, 16 << 10)),
    )
    .unwrap()
}

/// A fresh handle with an empty in-memory cache: the index comes from the
/// segments in storage.
fn reopen(dir: &Path) -> Repository {
    testkit::open_at(dir.to_str().unwrap(), PW).unwrap()
}

/// `len` bytes of text: words from a small vocabulary, picked by a
/// generator seeded with `seed` (compressible, but unlike any other file).
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "backup", "restore", "pack", "index", "bundle", "chunk", "tree", "snapshot", "fn ", "let ",
        "{\n", "}\n",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.extend_from_slice(format!("{} ", x % 1000).as_bytes());
    }
    out.truncate(len);
    out
}

/// `files` small text files under `root` in a few directories, each from
/// its own seed (`seed` + its number).
fn write_text_tree(root: &Path, seed: u64, files: usize) {
    for f in 0..files {
        let dir = root.join(format!("src{}", f % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 100 + (f * 397) % 3000;
        std::fs::write(dir.join(format!("f{f}.rs")), text(seed + f as u64, len)).unwrap();
    }
}

fn opts(dir: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![dir.to_path_buf()],
        source: Some("src".into()),
        host: Some("h".into()),
        parent: ParentChoice::None,
        ..Default::default()
    }
}

/// Every indexed copy: (pack, entry).
fn copies(repo: &Repository) -> Vec<(PackId, BlobEntry)> {
    let mut out = Vec::new();
    repo.index().unwrap();
    repo.cache()
        .for_each_location(|pack, _, e: BlobEntry| {
            out.push((pack, e));
            Ok(())
        })
        .unwrap();
    out
}

/// The bundles indexed: (pack, offset) -> member ids.
fn bundles(repo: &Repository) -> HashMap<(PackId, u32), Vec<BlobId>> {
    let mut out: HashMap<(PackId, u32), Vec<BlobId>> = HashMap::new();
    for (pack, e) in copies(repo) {
        if e.inner.is_some() {
            out.entry((pack, e.offset)).or_default().push(e.id);
        }
    }
    out
}

fn read_all() -> CheckOptions {
    CheckOptions {
        read_data: Some(DataSubset::All),
    }
}

#[test]
fn small_text_is_bundled_dense_data_is_not_and_everything_restores() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 1, 200);
    // Dense (incompressible) small files stay blobs of their own.
    let mut x = 99u64;
    for i in 0..5 {
        std::fs::write(
            src.path().join(format!("noise{i}.bin")),
            testkit::noise(&mut x, 1500),
        )
        .unwrap();
    }
    let noise_ids: HashSet<BlobId> = (0..5)
        .map(|i| repo.blob_id(&std::fs::read(src.path().join(format!("noise{i}.bin"))).unwrap()))
        .collect();
    let result = backup(&repo, &opts(src.path())).unwrap();

    let all = copies(&repo);
    let bundled: Vec<_> = all.iter().filter(|(_, e)| e.inner.is_some()).collect();
    assert!(
        bundled.len() >= 200,
        "{} bundled of {}",
        bundled.len(),
        all.len()
    );
    assert!(bundled
        .iter()
        .all(|(_, e)| e.kind == cairn_core::BlobKind::Data));
    for (_, e) in &all {
        if noise_ids.contains(&e.id) {
            assert_eq!(e.inner, None, "dense data went into a bundle");
        }
    }
    let b = bundles(&repo);
    assert!(
        b.values().any(|m| m.len() > 10),
        "bundles: {:?}",
        b.values().map(Vec::len).collect::<Vec<_>>()
    );
    // Trees and lists are never bundled, and are still found.
    assert!(all
        .iter()
        .any(|(_, e)| e.kind == cairn_core::BlobKind::Tree && e.inner.is_none()));

    testkit::restores_to(&repo, &result.snapshot.tree, src.path()).unwrap();
    // A fresh handle reads the bundle fields back from the segments.
    let fresh = reopen(repo_dir.path());
    testkit::restores_to(&fresh, &result.snapshot.tree, src.path()).unwrap();
    assert_eq!(bundles(&fresh), b);
    let report = check(&fresh, &read_all()).unwrap();
    assert!(report.is_clean(), "{:#?}", report.damage);
}

#[test]
fn bundled_blobs_deduplicate() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 7, 120);
    backup(&repo, &opts(src.path())).unwrap();
    let data = |r: &Repository| {
        copies(r)
            .iter()
            .filter(|(_, e)| e.kind == cairn_core::BlobKind::Data)
            .count()
    };
    let before = data(&repo);
    // Every file again, under other names: no data to store.
    let again = tempfile::tempdir().unwrap();
    cairn_golden::repos::copy_dir(src.path(), &again.path().join("copy")).unwrap();
    let second = backup(&repo, &opts(again.path())).unwrap();
    assert_eq!(data(&repo), before, "{:?}", second.snapshot.summary);
    testkit::restores_to(
        &reopen(repo_dir.path()),
        &second.snapshot.tree,
        again.path(),
    )
    .unwrap();
}

#[test]
fn checkpoints_seal_the_open_bundle_first() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 3, 150);
    let o = BackupOptions {
        checkpoint: CheckpointOptions {
            every: Duration::ZERO,
            every_blobs: 4,
        },
        workers: 2,
        ..opts(src.path())
    };
    let result = backup(&repo, &o).unwrap();
    testkit::restores_to(&reopen(repo_dir.path()), &result.snapshot.tree, src.path()).unwrap();
    assert!(check(&reopen(repo_dir.path()), &read_all())
        .unwrap()
        .is_clean());
}

#[test]
fn repack_keeps_a_bundles_live_members_and_leaves_its_dead_ones() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 11, 200);
    let first = backup(&repo, &opts(src.path())).unwrap();
    // Two files in three change: their old blobs die with the first snapshot.
    let mut dead = HashSet::new();
    for (i, e) in crate::support::files_below(src.path())
        .into_iter()
        .enumerate()
    {
        if i % 3 != 0 {
            dead.insert(repo.blob_id(&std::fs::read(&e).unwrap()));
            std::fs::write(&e, text(5000 + i as u64, 900)).unwrap();
        }
    }
    let second = backup(&repo, &opts(src.path())).unwrap();
    repo.delete_snapshot(&first.id).unwrap();
    let report = maintenance::run(
        &repo,
        &MaintenanceOptions {
            mode: Mode::Prune,
            gc: GcOptions {
                repack_threshold: 0.9,
                safety_window: Duration::ZERO,
                now: chrono::Utc::now(),
                ..Default::default()
            },
        },
    )
    .unwrap();
    let mark = report.mark.unwrap();
    assert!(mark.repacked_blobs > 0, "{mark:?}");

    let fresh = reopen(repo_dir.path());
    let indexed: HashSet<BlobId> = copies(&fresh).into_iter().map(|(_, e)| e.id).collect();
    let kept_dead = dead.iter().filter(|d| indexed.contains(d)).count();
    assert!(
        kept_dead < dead.len() / 4,
        "{kept_dead} of {} dead blobs still indexed",
        dead.len()
    );
    testkit::restores_to(&fresh, &second.snapshot.tree, src.path()).unwrap();
    let c = check(&fresh, &read_all()).unwrap();
    assert!(c.is_clean(), "{:#?}", c.damage);
}

#[test]
fn a_damaged_bundle_fails_exactly_its_members_files_and_check_names_each() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 21, 200);
    let result = backup(&repo, &opts(src.path())).unwrap();
    let b = bundles(&repo);
    let ((pack, offset), members) = b
        .iter()
        .max_by_key(|(_, m)| m.len())
        .map(|(k, m)| (*k, m.clone()))
        .unwrap();
    let members: HashSet<BlobId> = members.into_iter().collect();
    // The files whose only chunk is in the bundle (text files up to 3 KiB
    // are one chunk of the test chunker or a few).
    let hit: HashSet<String> = crate::support::files_below(src.path())
        .into_iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            members.contains(&repo.blob_id(&data))
        })
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(hit.len() > 1, "{hit:?}");
    let path = repo_dir.path().join(pack.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 30] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    let fresh = reopen(repo_dir.path());
    let out = tempfile::tempdir().unwrap();
    let stats = restore(
        &fresh,
        &result.snapshot.tree,
        &RestoreOptions {
            target: out.path().join("r"),
            ..Default::default()
        },
    )
    .unwrap();
    let failed: HashSet<String> = stats
        .failed
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(hit.is_subset(&failed), "hit {hit:?} failed {failed:?}");
    assert!(
        stats.failed.iter().all(|(_, why)| why.contains("bundle")),
        "{:?}",
        stats.failed
    );
    assert!(failed.len() <= members.len());

    let report = check(&reopen(repo_dir.path()), &read_all()).unwrap();
    let named: HashSet<String> = report
        .damage
        .iter()
        .filter_map(|d| match d {
            Damage::BlobDamaged { blob, .. } => Some(blob.clone()),
            _ => None,
        })
        .collect();
    for m in &members {
        assert!(
            named.contains(&m.to_hex()),
            "{} not named: {:#?}",
            m.short(),
            report.damage
        );
    }
}

/// Readers of one blob at a time (copy, dump, a mount) read the files of
/// a bundle one after the other: the bundle is read and opened once for
/// them, not once per member.
#[test]
fn reading_a_bundles_members_one_by_one_reads_the_bundle_once() {
    let repo_dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = init(repo_dir.path());
    write_text_tree(src.path(), 31, 200);
    backup(&repo, &opts(src.path())).unwrap();
    let data_reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = data_reads.clone();
    let hooked = std::sync::Arc::new(crate::support::ReadHooked {
        inner: testkit::storage_at(&repo_dir.path().to_string_lossy()).unwrap(),
        on_read: Box::new(move |path| {
            if path.starts_with("packs/") {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }),
    });
    let fresh = Repository::open(hooked, PW, &Default::default()).unwrap();
    // Every bundled blob, in the order the backup stored them.
    let mut members: Vec<(PackId, BlobEntry)> = copies(&fresh)
        .into_iter()
        .filter(|(_, e)| e.inner.is_some())
        .collect();
    members.sort_by_key(|(p, e)| (*p, e.offset, e.inner));
    let bundles = bundles(&fresh).len();
    assert!(
        members.len() > bundles * 4,
        "{} in {bundles}",
        members.len()
    );
    let before = data_reads.load(std::sync::atomic::Ordering::Relaxed);
    for (_, e) in &members {
        let plain = fresh.read_blob(cairn_core::BlobKind::Data, &e.id).unwrap();
        assert_eq!(fresh.blob_id(&plain), e.id);
    }
    let reads = data_reads.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(
        reads,
        bundles,
        "pack reads for {} blobs in {bundles} bundles",
        members.len()
    );
}
