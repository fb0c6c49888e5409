//! Micro-benchmarks of the backup stages: chunker, keyed hashing, seal and
//! open, pack writing. Each reports throughput in bytes per second.

use cairn_benches::data::Gen;
use cairn_core::crypto::{blob_aad, IdHasher, SealKey};
use cairn_core::format::config::Config;
use cairn_core::format::pack::PackBuilder;
use cairn_core::format::Id;
use cairn_core::repo::zstd_level_for;
use cairn_core::{BlobId, BlobKind};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const LEN: usize = 16 << 20;

fn inputs() -> [(&'static str, Vec<u8>); 2] {
    [
        ("text", Gen::new(1).text(LEN)),
        ("binary", Gen::new(1).binary(LEN)),
    ]
}

fn chunker(c: &mut Criterion) {
    let cfg = Config::new(Id::default());
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(LEN as u64));
    for (name, data) in inputs() {
        g.bench_function(name, |b| {
            b.iter(|| {
                fastcdc::v2020::FastCDC::new(&data, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max)
                    .count()
            })
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let hasher = IdHasher::new([3; 32]);
    let data = Gen::new(2).binary(1 << 20);
    let mut g = c.benchmark_group("keyed_blake3");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("1MiB_chunk", |b| b.iter(|| hasher.blob_id(&data)));
    let small = &data[..4096];
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("4KiB_file", |b| b.iter(|| hasher.blob_id(small)));
    g.finish();
}

fn seal_open(c: &mut Criterion) {
    let key = SealKey::new(&[5; 32]);
    let configured = Config::new(Id::default()).zstd_level;
    let aad = blob_aad(&BlobId(Id::default()), BlobKind::Data);
    let mut g = c.benchmark_group("seal_open");
    for (name, data) in inputs() {
        let chunk = &data[..1 << 20];
        // The level a backup seals this chunk at (3 for text, -1 for binary).
        let level = zstd_level_for(BlobKind::Data, configured, chunk);
        g.throughput(Throughput::Bytes(chunk.len() as u64));
        g.bench_function(format!("seal_zstd_{name}"), |b| {
            b.iter(|| key.seal_envelope(&aad, chunk, level))
        });
        g.bench_function(format!("seal_plain_{name}"), |b| {
            b.iter(|| key.seal_envelope(&aad, chunk, 0))
        });
        let sealed = key.seal_envelope(&aad, chunk, level);
        g.bench_function(format!("open_zstd_{name}"), |b| {
            b.iter(|| key.open_envelope(&aad, &sealed).expect("opens"))
        });
    }
    g.finish();
}

fn pack_writing(c: &mut Criterion) {
    let key = SealKey::new(&[5; 32]);
    let blob = Gen::new(3).binary(1 << 20);
    let hasher = IdHasher::new([3; 32]);
    let ids: Vec<BlobId> = (0..16u32)
        .map(|i| hasher.blob_id(&i.to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(16 << 20));
    g.bench_function("16x1MiB_blobs", |b| {
        b.iter_batched(
            PackBuilder::new,
            |mut p| {
                for id in &ids {
                    p.add(*id, BlobKind::Data, &blob, blob.len() as u32);
                }
                p.finish(&key)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, chunker, hashing, seal_open, pack_writing);
criterion_main!(benches);
