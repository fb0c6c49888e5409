//! Fetching: reads each pack's planned blobs in merged range reads,
//! decrypts them in parallel and writes the plaintext at its offsets in the
//! files (all-zero blocks stay holes). A pack that cannot be read or a blob
//! that does not open fails only the files that need it.
//!
//! A file is created (at its final size) by the first write into it, on
//! the thread that decrypted the blob, and that write uses the handle the
//! creation opened; files no blob is written into are created before the
//! writes start. So creating tens of thousands of files runs while the
//! first ranges are read, and a small file costs one open, not two.

use super::plan::{PackBlob, Plan};
use super::target;
use crate::error::Error;
use crate::format::{BlobKind, PackId};
use crate::progress::Progress;
use crate::repo::Repository;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Two blobs closer than this in a pack are fetched in one range read.
pub const MERGE_GAP: u64 = 1 << 20;
/// Largest single range read from a local repository. Each restore thread
/// holds one range (and the storage layer may hold it twice while
/// assembling it), so this bounds restore memory: 4 MiB keeps a 2-thread
/// restore near its baseline while a 16 MiB pack still takes only four
/// reads.
pub const MAX_RANGE: u64 = 4 << 20;
/// Largest single range read from an object store, where every read is a
/// round trip and the server's work per request: a 17 MiB pack needed
/// whole is three reads of ~5.7 MiB instead of five. Memory is bounded by
/// [`HELD_BYTES`], not by the size of one read. (16 MiB, one read per
/// pack, left too few reads in flight to keep both decrypting threads
/// busy: paired against 8 MiB on S3 with 20 ms round trips, 2.50-2.64 s
/// against 2.27-2.46 s.)
pub const MAX_REMOTE_RANGE: u64 = 8 << 20;
/// Range reads in flight at once during a restore from an object store,
/// on their own threads, ahead of the pool that decrypts and writes. A
/// local repository reads on the decrypting threads instead.
const READS_AHEAD: usize = 6;
/// Bytes of ranges an object-store restore holds at once: being read,
/// read and waiting, or being decrypted and written. A read starts only
/// when its range fits in what is left.
const HELD_BYTES: u64 = 40 << 20;

/// What fetching did.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    /// Packs read from.
    packs: u64,
    /// Content bytes written.
    bytes: u64,
    /// Range reads issued.
    ranges: u64,
}

impl Fetched {
    /// Puts these figures into a restore's `stats`.
    pub fn record(self, stats: &mut super::RestoreStats) {
        stats.packs_read = self.packs;
        stats.bytes = self.bytes;
        stats.ranges_read = self.ranges;
    }
}

/// Reads `packs` on `pool` and writes their blobs into `plan`'s files;
/// files that fail are added to `failed` with the reason (the first one
/// found is kept). With `create` (the `overwrite` flag), each file is
/// created here (see the module's text); without it, the files exist (a
/// device).
pub(super) fn fetch(
    repo: &Repository,
    pool: &rayon::ThreadPool,
    plan: &Plan,
    packs: &[(PackId, Vec<PackBlob>)],
    progress: &Progress,
    failed: &mut BTreeMap<usize, String>,
    create: Option<bool>,
) -> Fetched {
    let bytes = AtomicU64::new(0);
    let ranges = AtomicU64::new(0);
    let failed_m = Mutex::new(std::mem::take(failed));
    let fail = |file: usize, why: &dyn Fn() -> String| {
        crate::sync::lock(&failed_m).entry(file).or_insert_with(why);
    };
    let remote = !repo.storage().is_local();
    let max_range = if remote { MAX_REMOTE_RANGE } else { MAX_RANGE };
    let tasks: Vec<(&PackId, &[PackBlob])> = packs
        .iter()
        .flat_map(|(pack, blobs)| {
            merge_ranges(blobs, max_range)
                .into_iter()
                .map(move |r| (pack, r))
        })
        .collect();
    // Whether each file was created, or why it could not be: set by the
    // first write into it.
    let created: Vec<OnceLock<Result<(), String>>> = match create {
        Some(_) => plan.files.iter().map(|_| OnceLock::new()).collect(),
        None => Vec::new(),
    };
    let mut written = vec![false; plan.files.len()];
    for (_, blobs) in packs {
        for t in blobs.iter().flat_map(|b| &b.targets) {
            written[t.file] = true;
        }
    }
    // Creates file `i` unless done: the handle when this call created it.
    let create_file = |i: usize, overwrite: bool| -> Result<Option<std::fs::File>, String> {
        let file = &plan.files[i];
        let mut fresh = None;
        let state = created[i].get_or_init(|| {
            target::create_sized(&file.path, file.node.size, overwrite)
                .map(|f| fresh = Some(f))
                .map_err(|e| e.to_string())
        });
        state.clone().map(|()| fresh)
    };
    // Writes one blob's plaintext into every place it goes.
    let write_targets = |b: &PackBlob, plain: &[u8]| {
        for t in &b.targets {
            let file = &plan.files[t.file];
            let handle = match create {
                Some(overwrite) => match create_file(t.file, overwrite) {
                    Ok(fresh) => fresh,
                    Err(why) => {
                        fail(t.file, &|| why.clone());
                        continue;
                    }
                },
                None => None,
            };
            let res = match handle {
                Some(f) => Ok(f),
                None => std::fs::OpenOptions::new().write(true).open(&file.path),
            }
            .and_then(|f| {
                let uncached = file.node.size >= UNCACHED_FROM;
                write_sparse(&f, plain, t.offset, uncached)
            });
            match res {
                Ok(()) => {
                    bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                    progress.add_bytes(plain.len() as u64);
                }
                Err(e) => {
                    fail(t.file, &|| format!("{}: {e}", file.path.display()));
                }
            }
        }
    };
    // What to do with range `k` once read: decrypt its blobs, write them,
    // the blobs of one range on every pool thread.
    let process = |k: usize, data: crate::error::Result<bytes::Bytes>| {
        let (pack, range) = tasks[k];
        ranges.fetch_add(1, Ordering::Relaxed);
        let (start, _) = span(range);
        let path = pack.path();
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                for b in range {
                    for t in &b.targets {
                        fail(t.file, &|| format!("reading {path}: {e}"));
                    }
                }
                return;
            }
        };
        let failed = |b: &PackBlob, e: &Error| {
            if matches!(e, Error::Corrupt { .. }) {
                repo.note_damage(crate::damage::one_copy(b.id, *pack));
            }
            for t in &b.targets {
                fail(t.file, &|| e.to_string());
            }
        };
        // A bundle's members (one stored object, sorted together) are
        // opened together: the bundle is decrypted and decompressed once.
        let stored_objects: Vec<&[PackBlob]> =
            range.chunk_by(|a, b| a.offset == b.offset).collect();
        stored_objects.par_iter().for_each(|blobs| {
            let first = &blobs[0];
            let rel = (first.offset - start) as usize;
            // The read covers every blob of the range (see `span`).
            let stored = data
                .get(rel..rel + first.stored_len as usize)
                .unwrap_or_default();
            if first.inner.is_none() {
                for b in blobs.iter() {
                    let opened =
                        repo.with_open_blob(BlobKind::Data, &b.id, stored, &path, |plain| {
                            write_targets(b, plain)
                        });
                    if let Err(e) = opened {
                        failed(b, &e);
                    }
                }
                return;
            }
            let opened = repo.sealer().with_open_bundle(stored, &path, |bundle| {
                for b in blobs.iter() {
                    let member = b.inner.map_or_else(
                        || Err(Error::corrupt(&path, "a blob and a bundle share an offset")),
                        |inner| repo.sealer().member(bundle, &b.id, inner, b.raw_len, &path),
                    );
                    match member {
                        Ok(plain) => write_targets(b, plain),
                        Err(e) => failed(b, &e),
                    }
                }
            });
            if let Err(e) = opened {
                for b in blobs.iter() {
                    failed(b, &e);
                }
            }
        });
    };
    let read = |k: usize| {
        let (pack, range) = tasks[k];
        let (start, end) = span(range);
        repo.read_pack_range(pack, start..end)
    };
    // Files no blob is written into (empty, all holes, or every blob
    // lost): created before the writes, as the first reads go out.
    let create_unwritten = || {
        if let Some(overwrite) = create {
            (0..plan.files.len())
                .into_par_iter()
                .filter(|i| !written[*i])
                .for_each(|i| {
                    if let Err(why) = create_file(i, overwrite) {
                        fail(i, &|| why.clone());
                    }
                });
        }
    };
    // A local repository's reads cost no round trip: each pool thread
    // reads its own ranges (NFS included, two in flight), holding none
    // ahead.
    let ahead = if remote {
        READS_AHEAD.min(tasks.len())
    } else {
        0
    };
    // Bytes of ranges held.
    let budget = crate::sync::Budget::new(HELD_BYTES);
    let length = |k: usize| {
        let (start, end) = span(tasks[k].1);
        end - start
    };
    let next = AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::scope(|scope| {
        let mut readers = 0;
        for i in 0..ahead {
            let (tx, next, read, budget) = (tx.clone(), &next, &read, &budget);
            let count = tasks.len();
            let spawned = std::thread::Builder::new()
                .name(format!("cairn-restore-read-{i}"))
                .spawn_scoped(scope, move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        break;
                    }
                    budget.take(length(k), || false);
                    if tx.send((k, read(k))).is_err() {
                        budget.give_back(length(k));
                        break;
                    }
                });
            readers += usize::from(spawned.is_ok());
        }
        drop(tx);
        pool.install(|| {
            create_unwritten();
            if readers == 0 {
                (0..tasks.len())
                    .into_par_iter()
                    .for_each(|k| process(k, read(k)));
            } else {
                rx.into_iter().par_bridge().for_each(|(k, data)| {
                    process(k, data);
                    budget.give_back(length(k));
                });
            }
        });
    });
    // Files whose every read failed: created all the same, as the plan
    // says (their failure is already recorded).
    if let Some(overwrite) = create {
        pool.install(|| {
            (0..plan.files.len())
                .into_par_iter()
                .filter(|i| created[*i].get().is_none())
                .for_each(|i| {
                    if let Err(why) = create_file(i, overwrite) {
                        fail(i, &|| why.clone());
                    }
                });
        });
    }
    *failed = crate::sync::into_inner(failed_m);
    Fetched {
        packs: packs.len() as u64,
        bytes: bytes.load(Ordering::Relaxed),
        ranges: ranges.load(Ordering::Relaxed),
    }
}

/// The byte range of a pack that `range` (blobs sorted by offset) spans.
fn span(range: &[PackBlob]) -> (u64, u64) {
    let start = range.first().map_or(0, |b| b.offset);
    let end = range
        .iter()
        .map(|b| b.offset + b.stored_len)
        .max()
        .unwrap_or(start);
    (start, end)
}

/// Groups a pack's blobs (sorted by offset) into ranges worth one read
/// each: neighbours closer than [`MERGE_GAP`] share a read of at most
/// `max` bytes, and a span longer than `max` is cut into reads of about
/// equal length (a 17 MiB pack with a 16 MiB limit is two reads of about
/// 8.5 MiB, not 16 and 1).
fn merge_ranges(blobs: &[PackBlob], max: u64) -> Vec<&[PackBlob]> {
    let (first, last) = span(blobs);
    // The reads still to cut the rest of the span into, and the length
    // each should have.
    let mut left = (last - first).div_ceil(max.max(1)).max(1);
    let goal = |from: u64, left: u64| (last - from).div_ceil(left.max(1));
    let mut length = goal(first, left);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let prev_end = blobs[i - 1].offset + blobs[i - 1].stored_len;
            let long = blobs[i].offset + blobs[i].stored_len - blobs[start].offset;
            // A bundle's members share its read.
            blobs[i].offset != blobs[i - 1].offset
                && (blobs[i].offset > prev_end + MERGE_GAP || long > max || long > length)
        };
        if split {
            out.push(&blobs[start..i]);
            start = i;
            left = left.saturating_sub(1);
            if let Some(b) = blobs.get(i) {
                length = goal(b.offset, left);
            }
        }
    }
    out
}

/// Granularity at which zeros inside a data chunk are left as holes.
const SPARSE_BLOCK: usize = 4096;

/// `RWF_DONTCACHE` (Linux 6.14): a buffered write whose pages leave the
/// page cache once written back. A restore writes each byte once and does
/// not read it back; with plain writes, gigabytes of new dirty pages pushed
/// the rest of the page cache out, and on this project's VM filling pages
/// freshly handed back by the host was 40% of a 12 GiB restore's CPU.
const RWF_DONTCACHE: u32 = 0x80;

/// Files at least this large are written uncached ([`RWF_DONTCACHE`]);
/// smaller ones through the page cache, as `cp` writes them. An uncached
/// write starts its writeback at once: per small file that was a separate
/// write-out and block allocation where the page cache batches thousands.
/// Restoring the 30k files (532 MiB) of a crate-source tree onto a fresh
/// ext4 took 2.27-2.70 s uncached and 1.77-2.41 s buffered (`cp -a`:
/// 1.61-3.03 s), in alternated runs.
const UNCACHED_FROM: u64 = 1 << 20;

/// Whether `RWF_DONTCACHE` still looks supported: cleared on the first
/// refusal (an older kernel, a file system without it), after which every
/// write is a plain one.
static DONTCACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Writes all of `buf` at `offset`; `uncached` where the kernel allows.
fn write_all_at(
    file: &std::fs::File,
    mut buf: &[u8],
    mut offset: u64,
    uncached: bool,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    while uncached && !buf.is_empty() && DONTCACHE.load(Ordering::Relaxed) {
        use rustix::io::{pwritev2, Errno, ReadWriteFlags};
        let flags = ReadWriteFlags::from_bits_retain(RWF_DONTCACHE);
        match pwritev2(file, &[std::io::IoSlice::new(buf)], offset, flags) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                DONTCACHE.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    file.write_all_at(buf, offset)
}

/// Writes `data` at `offset`, skipping all-zero 4 KiB blocks: the file was
/// created at its final size with `set_len`, so skipped ranges stay holes
/// and read back as zeros. Keeps files sparse even where a hole is smaller
/// than a chunk.
fn write_sparse(
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
    uncached: bool,
) -> std::io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, block) in data.chunks(SPARSE_BLOCK).enumerate() {
        let at = i * SPARSE_BLOCK;
        let zero = crate::zeros::is_zero(block);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                write_all_at(file, &data[start..at], offset + start as u64, uncached)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        write_all_at(file, &data[start..], offset + start as u64, uncached)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobId;
    use std::os::unix::fs::MetadataExt;

    fn blob(offset: u64, stored_len: u64) -> PackBlob {
        PackBlob {
            id: BlobId::default(),
            offset,
            stored_len,
            inner: None,
            raw_len: 0,
            targets: Vec::new(),
        }
    }

    /// Blobs within MERGE_GAP of each other share one read, up to MAX_RANGE.
    #[test]
    fn ranges_merge_across_small_gaps_and_split_at_the_size_limit() {
        let blobs = [
            blob(0, 1000),
            blob(1000 + MERGE_GAP, 1000),
            blob(2000 + 2 * MERGE_GAP + 1, 1000),
        ];
        let lens = |blobs: &[PackBlob], max| -> Vec<usize> {
            merge_ranges(blobs, max).iter().map(|r| r.len()).collect()
        };
        assert_eq!(lens(&blobs, MAX_RANGE), [2, 1]);
        let big = MAX_RANGE / 2 + 1;
        let blobs = [blob(0, big), blob(big, big), blob(2 * big, 10)];
        assert_eq!(lens(&blobs, MAX_RANGE), [1, 2]);
        assert!(merge_ranges(&[], MAX_RANGE).is_empty());
    }

    /// A pack needed whole is read in near-equal parts, not a full read and
    /// a sliver: 17 blobs of 1 MiB with a 16 MiB limit are two reads of 8
    /// and 9, with a 4 MiB limit five reads of 3 or 4, none over the limit.
    #[test]
    fn a_long_span_is_cut_into_near_equal_reads() {
        let mib = 1u64 << 20;
        let blobs: Vec<PackBlob> = (0..17).map(|i| blob(i * mib, mib)).collect();
        let lens =
            |max| -> Vec<usize> { merge_ranges(&blobs, max).iter().map(|r| r.len()).collect() };
        assert_eq!(lens(16 * mib), [8, 9]);
        assert_eq!(lens(4 * mib), [3, 3, 3, 4, 4]);
        assert_eq!(lens(32 * mib), [17]);
        // One blob larger than the limit is still one read of its own.
        let huge = [blob(0, 10), blob(10, 40 * mib), blob(40 * mib + 10, 10)];
        let pieces = merge_ranges(&huge, 16 * mib);
        assert_eq!(pieces.iter().map(|r| r.len()).sum::<usize>(), 3);
        for r in &pieces {
            let (start, end) = span(r);
            assert!(r.len() == 1 || end - start <= 16 * mib, "{start}..{end}");
        }
    }

    /// Uncached writes where the file system takes them (ext4 on Linux
    /// 6.14+), plain ones where it refuses (tmpfs): the bytes land either way.
    #[test]
    fn uncached_writes_land_whole_with_or_without_kernel_support() {
        let dirs = [
            Some(tempfile::tempdir().unwrap()),
            tempfile::tempdir_in("/dev/shm").ok(),
        ];
        for dir in dirs.iter().flatten() {
            let path = dir.path().join("f");
            let file = std::fs::File::create(&path).unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            write_all_at(&file, &data[100_000..], 100_000, true).unwrap();
            write_all_at(&file, &data[..100_000], 0, true).unwrap();
            write_all_at(&file, &data[..10], 0, false).unwrap();
            drop(file);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                data,
                "in {}",
                dir.path().display()
            );
        }
    }

    #[test]
    fn zero_blocks_inside_a_chunk_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut data = vec![0u8; 1 << 20];
        data[..10].fill(7);
        data[(1 << 20) - 5..].fill(9);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(data.len() as u64).unwrap();
        write_sparse(&f, &data, 0, true).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Two 4 KiB blocks hold data; the rest stays unallocated.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 * 1024);
    }
}
