//! File content through the mount: per-open-file chunk offset tables, and
//! sequential readahead on a small pool of background threads filling the
//! chunk cache (whose byte budget also pays for the readahead in flight).

use crate::cache::{Chunk, ChunkCache, ReadError};
use cairn_core::format::tree::ChunkRef;
use cairn_core::BlobId;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far from the previous read's end a read may start and still count
/// as sequential.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

/// The bytes of one read: a slice of a cached chunk when the read falls
/// inside one chunk (no copy), else a buffer assembled from several.
pub(crate) enum ReadBuf {
    /// Assembled across chunks or holes.
    Owned(Vec<u8>),
    /// `chunk[from..to]`; the chunk stays charged to the cache budget
    /// until the reply is sent.
    Slice {
        chunk: Chunk,
        from: usize,
        to: usize,
    },
}

impl ReadBuf {
    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadBuf::Owned(v) => v,
            ReadBuf::Slice { chunk, from, to } => &chunk[*from..*to],
        }
    }
}

/// Background threads fetching chunks ahead of sequential readers.
pub(crate) struct Prefetcher {
    tx: Option<Sender<(BlobId, u32)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts `workers` threads filling `cache`.
    pub fn start(cache: Arc<ChunkCache>, workers: usize) -> Self {
        type Job = (BlobId, u32);
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::bounded(64);
        let threads = (0..workers.max(1))
            .filter_map(|i| {
                let rx = rx.clone();
                let cache = cache.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-readahead-{i}"))
                    .spawn(move || {
                        for (id, len) in rx {
                            cache.prefetch(&id, len);
                        }
                    })
                    .ok()
            })
            .collect();
        Self {
            tx: Some(tx),
            threads,
        }
    }

    /// Asks for chunk `id` (`len` bytes) to be fetched unless it already
    /// is; never blocks (a full queue drops the request).
    pub fn want(&self, cache: &ChunkCache, id: BlobId, len: u32) {
        if cache.present(&id) {
            return;
        }
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Disconnected(_)) = tx.try_send((id, len)) {
                tracing::debug!("readahead pool is gone");
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An open regular file: its chunk list with prefix-sum offsets.
pub(crate) struct OpenFile {
    chunks: Vec<ChunkRef>,
    /// `ends[i]` is the offset just past chunk `i` (strictly increasing
    /// over non-empty chunks; the last one is the file's length).
    ends: Vec<u64>,
    /// Where the last read ended, to spot sequential access.
    next: AtomicU64,
}

impl OpenFile {
    /// The table of `chunks`.
    pub fn new(chunks: Vec<ChunkRef>) -> Self {
        let mut ends = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for c in &chunks {
            at += u64::from(c.len);
            ends.push(at);
        }
        Self {
            chunks,
            ends,
            next: AtomicU64::new(0),
        }
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Index of the chunk holding byte `offset` (`offset < len()`).
    fn chunk_at(&self, offset: u64) -> usize {
        self.ends.partition_point(|&e| e <= offset)
    }

    /// Reads up to `size` bytes at `offset`; short only at the end of the
    /// file. Sequential reads ask `prefetch` for the chunks covering the
    /// next `readahead` bytes.
    pub fn read(
        &self,
        cache: &ChunkCache,
        prefetch: Option<(&Prefetcher, u64)>,
        offset: u64,
        size: u32,
    ) -> Result<ReadBuf, ReadError> {
        let len = self.len();
        if offset >= len || size == 0 {
            return Ok(ReadBuf::Owned(Vec::new()));
        }
        let end = len.min(offset + u64::from(size));
        let mut i = self.chunk_at(offset);
        let first = &self.chunks[i];
        let start = self.ends[i] - u64::from(first.len);
        let out = if end <= self.ends[i] && !first.is_hole() {
            // Inside one chunk (most reads): hand out a slice of it.
            let chunk = cache.get(&first.id, first.len)?;
            i += 1;
            ReadBuf::Slice {
                chunk,
                from: (offset - start) as usize,
                to: (end - start) as usize,
            }
        } else {
            ReadBuf::Owned(self.assemble(cache, &mut i, offset, end)?)
        };
        self.read_ahead(cache, prefetch, i, offset, end);
        Ok(out)
    }

    /// Copies `offset..end` out of chunks `i..` (advancing `i` past the
    /// last chunk used).
    fn assemble(
        &self,
        cache: &ChunkCache,
        i: &mut usize,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let c = &self.chunks[*i];
            let start = self.ends[*i] - u64::from(c.len);
            let from = (pos - start) as usize;
            let to = (end.min(self.ends[*i]) - start) as usize;
            if c.is_hole() {
                out.resize(out.len() + (to - from), 0);
            } else {
                // Held only for this copy: a reader pins one chunk at a time.
                let data = cache.get(&c.id, c.len)?;
                out.extend_from_slice(&data[from..to]);
            }
            pos = start + to as u64;
            *i += 1;
        }
        Ok(out)
    }

    /// After a read of `offset..end` that ended in chunk `i - 1`: if it
    /// continued the previous one, asks `prefetch` for the chunks covering
    /// the next `readahead` bytes.
    fn read_ahead(
        &self,
        cache: &ChunkCache,
        prefetch: Option<(&Prefetcher, u64)>,
        i: usize,
        offset: u64,
        end: u64,
    ) {
        // The kernel's own readahead sends neighbouring requests from
        // several threads, slightly out of order: "near the last end" counts.
        let sequential =
            self.next.swap(end, Ordering::Relaxed).abs_diff(offset) <= SEQUENTIAL_SLACK;
        if let (true, Some((pool, readahead))) = (sequential, prefetch) {
            let limit = end.saturating_add(readahead);
            let mut j = i.saturating_sub(1);
            // The chunk the read ended in, then the ones after it.
            while j < self.chunks.len() && self.ends[j] - u64::from(self.chunks[j].len) < limit {
                let c = &self.chunks[j];
                if !c.is_hole() {
                    pool.want(cache, c.id, c.len);
                }
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Fetch;
    use cairn_core::format::Id;

    /// Chunk `[n; 32]` is `n * 3` bytes of `n`.
    struct Fake;

    impl Fetch for Fake {
        fn fetch(&self, id: &BlobId) -> Result<Vec<u8>, ReadError> {
            let n = id.0 .0[0];
            Ok(vec![n; usize::from(n) * 3])
        }
    }

    fn chunk(n: u8) -> ChunkRef {
        ChunkRef {
            id: BlobId(Id([n; 32])),
            len: u32::from(n) * 3,
        }
    }

    #[test]
    fn reads_match_the_content_at_every_offset_and_size() {
        let file = OpenFile::new(vec![chunk(4), ChunkRef::hole(5), chunk(2), chunk(3)]);
        let mut content = vec![4u8; 12];
        content.extend([0; 5]);
        content.extend([2; 6]);
        content.extend([3; 9]);
        assert_eq!(file.len(), content.len() as u64);
        // A cache smaller than one chunk: every read fetches, nothing kept.
        for capacity in [1_000, 4] {
            let cache = Arc::new(ChunkCache::new(Arc::new(Fake), capacity));
            let pool = Prefetcher::start(cache.clone(), 1);
            for offset in 0..=content.len() + 1 {
                for size in 0..=content.len() + 2 {
                    let got = file
                        .read(&cache, Some((&pool, 8)), offset as u64, size as u32)
                        .expect("read");
                    let want = content
                        .get(offset..content.len().min(offset + size))
                        .unwrap_or(&[]);
                    assert_eq!(got.as_slice(), want, "offset {offset} size {size}");
                }
            }
        }
    }

    #[test]
    fn offsets_find_the_right_chunk() {
        let f = OpenFile::new(vec![
            ChunkRef {
                id: BlobId(Id([1; 32])),
                len: 10,
            },
            ChunkRef::hole(5),
            ChunkRef {
                id: BlobId(Id([2; 32])),
                len: 1,
            },
        ]);
        assert_eq!(f.len(), 16);
        assert_eq!(f.chunk_at(0), 0);
        assert_eq!(f.chunk_at(9), 0);
        assert_eq!(f.chunk_at(10), 1);
        assert_eq!(f.chunk_at(14), 1);
        assert_eq!(f.chunk_at(15), 2);
    }
}
