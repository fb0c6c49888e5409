//! Dedup lookups against an index of 1M blobs, and of 10M blobs when
//! CAIRN_BENCH_INDEX_10M=1 (building it takes minutes and ~1.5 GiB of disk).
//! Measures `Repository::has_blob` for blobs present and absent, and
//! `Repository::lookup`, on a file-backed cache as a backup uses it.

use cairn_core::crypto::KdfParams;
use cairn_core::format::index::{IndexSegment, IndexedPack};
use cairn_core::format::pack::BlobEntry;
use cairn_core::format::Id;
use cairn_core::{BlobId, BlobKind, InitOptions, OpenOptions, PackId, Repository};
use cairn_storage::StorageOptions;
use criterion::{criterion_group, criterion_main, Criterion};

const BLOBS_PER_PACK: u64 = 1000;
const PACKS_PER_SEGMENT: u64 = 100;

fn blob(i: u64) -> BlobId {
    BlobId(Id::hash(&i.to_le_bytes()))
}

/// A repository whose index names `n` blobs (in fake packs: lookups only).
fn build(n: u64) -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = cairn_storage::open_with(
        dir.path().join("repo").to_str().expect("utf-8"),
        &StorageOptions::default(),
    )
    .expect("storage");
    let init = InitOptions {
        kdf: KdfParams {
            m_cost: 8,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    let open = OpenOptions {
        cache_dir: Some(dir.path().join("cache")),
        tolerate_damage: false,
    };
    let repo = Repository::init(storage, "pw", &init, &open).expect("init");
    let mut i = 0u64;
    while i < n {
        let mut packs = Vec::new();
        for p in 0..PACKS_PER_SEGMENT {
            if i >= n {
                break;
            }
            let blobs = (0..BLOBS_PER_PACK.min(n - i))
                .map(|k| BlobEntry {
                    id: blob(i + k),
                    kind: BlobKind::Data,
                    offset: (k * 100) as u32,
                    stored_len: 100,
                    raw_len: 100,
                    inner: None,
                })
                .collect::<Vec<_>>();
            i += blobs.len() as u64;
            packs.push(IndexedPack {
                id: PackId(Id::hash(format!("pack{i}-{p}").as_bytes())),
                len: BLOBS_PER_PACK * 100,
                blobs,
            });
        }
        repo.save_segment(&IndexSegment {
            supersedes: Vec::new(),
            packs,
        })
        .expect("segment");
    }
    drop(repo);
    // Reopen, as a backup would: the cache is on disk, the index synced.
    let storage = cairn_storage::open_with(
        dir.path().join("repo").to_str().expect("utf-8"),
        &StorageOptions::default(),
    )
    .expect("storage");
    let repo = Repository::open(storage, "pw", &open).expect("open");
    (dir, repo)
}

fn lookups(c: &mut Criterion, n: u64, label: &str) {
    let (_dir, repo) = build(n);
    let mut g = c.benchmark_group(format!("index_{label}"));
    let mut k = 0u64;
    g.bench_function("has_blob_present", |b| {
        b.iter(|| {
            k = (k + 7919) % n;
            repo.has_blob(&blob(k)).expect("lookup")
        })
    });
    g.bench_function("has_blob_absent", |b| {
        b.iter(|| {
            k += 1;
            repo.has_blob(&blob(n + k)).expect("lookup")
        })
    });
    g.bench_function("lookup_present", |b| {
        b.iter(|| {
            k = (k + 7919) % n;
            repo.lookup(&blob(k)).expect("lookup")
        })
    });
    g.finish();
}

fn index_1m(c: &mut Criterion) {
    lookups(c, 1_000_000, "1M");
}

fn index_10m(c: &mut Criterion) {
    if std::env::var("CAIRN_BENCH_INDEX_10M").as_deref() == Ok("1") {
        lookups(c, 10_000_000, "10M");
    }
}

criterion_group!(benches, index_1m, index_10m);
criterion_main!(benches);
