//! File content through the mount: per-open-file chunk offset tables, and
//! sequential readahead on a small pool of background threads filling the
//! chunk cache (whose byte budget also pays for the readahead in flight).

use crate::cache::{ChunkCache, ReadError};
use cairn_core::format::tree::ChunkRef;
use cairn_core::BlobId;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far from the previous read's end a read may start and still count
/// as sequential.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

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
    ) -> Result<Vec<u8>, ReadError> {
        let len = self.len();
        if offset >= len || size == 0 {
            return Ok(Vec::new());
        }
        let end = len.min(offset + u64::from(size));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = self.chunk_at(offset);
        let mut pos = offset;
        while pos < end {
            let c = &self.chunks[i];
            let start = self.ends[i] - u64::from(c.len);
            let from = (pos - start) as usize;
            let to = (end.min(self.ends[i]) - start) as usize;
            if c.is_hole() {
                out.resize(out.len() + (to - from), 0);
            } else {
                // Held only for this copy: a reader pins one chunk at a time.
                let data = cache.get(&c.id, c.len)?;
                out.extend_from_slice(&data[from..to]);
            }
            pos = start + to as u64;
            i += 1;
        }
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
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::format::Id;

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
