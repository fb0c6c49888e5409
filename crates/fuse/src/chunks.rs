//! File content through the mount: the decrypted-chunk LRU cache (bounded
//! by bytes), per-open-file chunk offset tables, and sequential readahead
//! on a small pool of background threads.
//!
//! Invariants: the cache never holds more than its capacity in chunk bytes
//! (a chunk larger than the whole cache is returned but not kept); a chunk
//! is fetched once however many readers want it at the same time (readers
//! of a chunk being fetched wait for that fetch).

use cairn_core::format::tree::ChunkRef;
use cairn_core::{BlobId, BlobKind, Repository};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use lru::LruCache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Why a read failed (the mount answers EIO and logs this).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReadError(pub String);

type Chunk = Arc<[u8]>;

/// How far from the previous read's end a read may start and still count
/// as sequential.
const SEQUENTIAL_SLACK: u64 = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps inconsistent (each update
    // is one insert or remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Flight {
    done: Mutex<Option<Result<Chunk, ReadError>>>,
    cv: Condvar,
}

struct Lru {
    map: LruCache<BlobId, Chunk>,
    bytes: u64,
}

/// Decrypted data chunks, least recently used evicted first.
pub(crate) struct ChunkCache {
    repo: Repository,
    capacity: u64,
    lru: Mutex<Lru>,
    loading: Mutex<HashMap<BlobId, Arc<Flight>>>,
    /// One index re-read at a time.
    resync: Mutex<()>,
    /// Chunks fetched from the repository (for tests and logs).
    pub fetched: AtomicU64,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunks.
    pub fn new(repo: Repository, capacity: u64) -> Self {
        Self {
            repo,
            capacity,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            loading: Mutex::new(HashMap::new()),
            resync: Mutex::new(()),
            fetched: AtomicU64::new(0),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        lock(&self.lru).bytes
    }

    /// Re-reads the repository index (new segments of newer backups).
    pub fn resync_index(&self) {
        let _one = lock(&self.resync);
        if let Err(e) = self.repo.sync_index(false) {
            tracing::warn!("refreshing the index: {e}");
        }
    }

    /// Whether `id` is cached or being fetched.
    fn present(&self, id: &BlobId) -> bool {
        lock(&self.lru).map.contains(id) || lock(&self.loading).contains_key(id)
    }

    fn insert(&self, id: BlobId, data: &Chunk) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut lru = lock(&self.lru);
        if let Some(old) = lru.map.put(id, data.clone()) {
            lru.bytes -= old.len() as u64;
        }
        lru.bytes += len;
        while lru.bytes > self.capacity {
            match lru.map.pop_lru() {
                Some((_, evicted)) => lru.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }

    /// The plaintext of data chunk `id`, from the cache or the repository.
    pub fn get(&self, id: &BlobId) -> Result<Chunk, ReadError> {
        if let Some(c) = lock(&self.lru).map.get(id) {
            return Ok(c.clone());
        }
        let (flight, leader) = {
            let mut loading = lock(&self.loading);
            match loading.get(id) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    loading.insert(*id, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut done = lock(&flight.done);
            loop {
                if let Some(r) = done.as_ref() {
                    return r.clone();
                }
                done = flight.cv.wait(done).unwrap_or_else(PoisonError::into_inner);
            }
        }
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let result = match self.repo.read_blob(BlobKind::Data, id) {
            // Written by a backup newer than our copy of the index.
            Err(cairn_core::Error::BlobNotFound { .. }) => {
                self.resync_index();
                self.repo.read_blob(BlobKind::Data, id)
            }
            other => other,
        };
        let result = result
            .map(Chunk::from)
            .map_err(|e| ReadError(e.to_string()));
        if let Ok(data) = &result {
            self.insert(*id, data);
        }
        *lock(&flight.done) = Some(result.clone());
        flight.cv.notify_all();
        lock(&self.loading).remove(id);
        result
    }
}

/// Background threads fetching chunks ahead of sequential readers.
pub(crate) struct Prefetcher {
    tx: Option<Sender<BlobId>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts `workers` threads filling `cache`.
    pub fn start(cache: Arc<ChunkCache>, workers: usize) -> Self {
        let (tx, rx): (Sender<BlobId>, Receiver<BlobId>) = crossbeam_channel::bounded(64);
        let threads = (0..workers.max(1))
            .filter_map(|i| {
                let rx = rx.clone();
                let cache = cache.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-readahead-{i}"))
                    .spawn(move || {
                        for id in rx {
                            if let Err(e) = cache.get(&id) {
                                tracing::debug!("readahead of chunk {}: {e}", id.short());
                            }
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

    /// Asks for `id` to be fetched unless it already is; never blocks.
    pub fn want(&self, cache: &ChunkCache, id: BlobId) {
        if cache.present(&id) {
            return;
        }
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Disconnected(_)) = tx.try_send(id) {
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
                let data = cache.get(&c.id)?;
                if data.len() != c.len as usize {
                    return Err(ReadError(format!(
                        "chunk {} holds {} bytes, the file's chunk list says {}",
                        c.id.short(),
                        data.len(),
                        c.len
                    )));
                }
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
                if !self.chunks[j].is_hole() {
                    pool.want(cache, self.chunks[j].id);
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
