//! The decrypted-chunk cache and its byte budget (`--cache-size`): every
//! decrypted chunk the mount holds (cached, being fetched, or being copied
//! to a reader) is paid for out of one budget; least recently used chunks
//! are evicted to make room; a chunk is fetched once however many readers
//! want it at the same time.
//!
//! Invariant: the budget's bytes (reservations for fetches in flight plus
//! the decrypted chunks alive anywhere) never exceed the capacity, except
//! while one chunk larger than the whole cache is read on its own (then it
//! is the only chunk held, and it is not kept).

use cairn_core::{BlobId, BlobKind, Repository};
use lru::LruCache;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Why a read failed (the mount answers EIO and logs this).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReadError(pub String);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps or counters inconsistent
    // (each update is one insert, remove or add), so a poisoned lock is
    // still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where chunks come from: the repository, or a fake in tests.
pub(crate) trait Fetch: Send + Sync {
    /// The plaintext of data chunk `id`.
    fn fetch(&self, id: &BlobId) -> Result<Vec<u8>, ReadError>;
}

/// Data chunks read from a repository, re-reading the index once when a
/// chunk is not in it (written by a backup newer than our copy).
pub(crate) struct RepoChunks {
    repo: Repository,
    /// One index re-read at a time.
    resync: Mutex<()>,
}

impl RepoChunks {
    pub fn new(repo: Repository) -> Self {
        Self {
            repo,
            resync: Mutex::new(()),
        }
    }

    /// Re-reads the repository index (new segments of newer backups).
    pub fn resync_index(&self) {
        let _one = lock(&self.resync);
        if let Err(e) = self.repo.sync_index(false) {
            tracing::warn!("refreshing the index: {e}");
        }
    }
}

impl Fetch for RepoChunks {
    fn fetch(&self, id: &BlobId) -> Result<Vec<u8>, ReadError> {
        match self.repo.read_blob(BlobKind::Data, id) {
            Err(cairn_core::Error::BlobNotFound { .. }) => {
                self.resync_index();
                self.repo.read_blob(BlobKind::Data, id)
            }
            other => other,
        }
        .map_err(|e| ReadError(e.to_string()))
    }
}

/// The byte budget shared by every chunk buffer and fetch in flight.
struct Budget {
    capacity: u64,
    state: Mutex<BudgetState>,
    /// Signalled when bytes are given back or a chunk becomes evictable.
    changed: Condvar,
}

#[derive(Default)]
struct BudgetState {
    /// Bytes reserved or held by live chunk buffers.
    held: u64,
    /// The most `held` has ever been.
    peak: u64,
    /// Bumped by every change a waiting reader may be able to use.
    generation: u64,
    /// Readers short of room (from their first failed try until they get
    /// it); readahead takes nothing while there are any.
    waiting: usize,
}

impl Budget {
    /// Takes `bytes` if they fit (a chunk larger than the capacity fits
    /// only when nothing else is held); else returns the generation to
    /// wait past.
    fn try_take(self: &Arc<Self>, bytes: u64, readahead: bool) -> Result<Reservation, u64> {
        let mut s = lock(&self.state);
        let fits = if bytes > self.capacity {
            !readahead && s.held == 0
        } else {
            s.held + bytes <= self.capacity && !(readahead && s.waiting > 0)
        };
        if !fits {
            return Err(s.generation);
        }
        s.held += bytes;
        s.peak = s.peak.max(s.held);
        Ok(Reservation {
            bytes,
            budget: self.clone(),
        })
    }

    fn give_back(&self, bytes: u64) {
        let mut s = lock(&self.state);
        s.held -= bytes;
        s.generation += 1;
        self.changed.notify_all();
    }

    /// Whether evicting `evictable` bytes could make room for `bytes` of
    /// readahead now.
    fn readahead_could_fit(&self, bytes: u64, evictable: u64) -> bool {
        let s = lock(&self.state);
        s.waiting == 0 && s.held.saturating_sub(evictable) + bytes <= self.capacity
    }

    /// Tells waiters that a chunk became evictable.
    fn poke(&self) {
        lock(&self.state).generation += 1;
        self.changed.notify_all();
    }

    /// Waits until something changed since `generation`.
    fn wait_past(&self, generation: u64) {
        let mut s = lock(&self.state);
        while s.generation == generation {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Counts a reader as short of room until the guard drops.
    fn short_of_room(self: &Arc<Self>) -> ShortOfRoom {
        lock(&self.state).waiting += 1;
        ShortOfRoom(self.clone())
    }
}

/// A reader waiting for room (see [`BudgetState::waiting`]).
struct ShortOfRoom(Arc<Budget>);

impl Drop for ShortOfRoom {
    fn drop(&mut self) {
        lock(&self.0.state).waiting -= 1;
    }
}

/// Bytes taken from the budget; given back when dropped.
struct Reservation {
    bytes: u64,
    budget: Arc<Budget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// A decrypted chunk. Its bytes stay charged to the budget until the last
/// reference (cache entry, reader, fetch result) is dropped. (Under
/// [`crate::MALLOC_ENV`] glibc gives a buffer this size a mapping of its
/// own, returned to the kernel when the chunk is dropped.)
pub(crate) struct ChunkBuf {
    data: Vec<u8>,
    /// Exactly `data.len()` bytes.
    _paid: Reservation,
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

pub(crate) type Chunk = Arc<ChunkBuf>;

#[derive(Default)]
struct Flight {
    done: Mutex<Option<Result<Chunk, ReadError>>>,
    cv: Condvar,
}

/// Who asks for a chunk: a reader waits for room in the budget, readahead
/// gives up instead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Readahead,
}

/// The cached chunks, least recently used first out.
struct Lru {
    map: LruCache<BlobId, Chunk>,
    /// Sum of the chunks' lengths.
    bytes: u64,
}

impl Lru {
    fn pop(&mut self) -> Option<Chunk> {
        let (_, c) = self.map.pop_lru()?;
        self.bytes -= c.len() as u64;
        Some(c)
    }
}

/// Decrypted data chunks, least recently used evicted first.
pub(crate) struct ChunkCache {
    source: Arc<dyn Fetch>,
    budget: Arc<Budget>,
    lru: Mutex<Lru>,
    loading: Mutex<HashMap<BlobId, Arc<Flight>>>,
    /// Chunks fetched from the repository (for tests and logs).
    pub fetched: AtomicU64,
    /// Readahead requests dropped for lack of room.
    pub skipped: AtomicU64,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of decrypted chunks.
    pub fn new(source: Arc<dyn Fetch>, capacity: u64) -> Self {
        Self {
            source,
            budget: Arc::new(Budget {
                capacity,
                state: Mutex::new(BudgetState::default()),
                changed: Condvar::new(),
            }),
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            loading: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Bytes of chunks held now (cached, in flight or being read).
    pub fn bytes(&self) -> u64 {
        lock(&self.budget.state).held
    }

    /// The most bytes ever held at once.
    pub fn peak_bytes(&self) -> u64 {
        lock(&self.budget.state).peak
    }

    /// Whether `id` is cached or being fetched.
    pub fn present(&self, id: &BlobId) -> bool {
        lock(&self.lru).map.contains(id) || lock(&self.loading).contains_key(id)
    }

    /// Takes `bytes` from the budget, evicting least recently used chunks
    /// for room. A reader waits until room appears (chunks in flight or
    /// being copied are given back soon); readahead gets `None` instead.
    fn reserve(&self, bytes: u64, want: Want) -> Option<Reservation> {
        let readahead = want == Want::Readahead;
        // Held from a reader's first failed try until it has its room, so
        // readahead cannot keep taking what the reader waits for.
        let mut short = None;
        loop {
            let generation = {
                // Lock order: lru, then the budget (dropping an evicted
                // chunk gives its bytes back).
                let mut lru = lock(&self.lru);
                // Readahead does not empty the cache for a try that cannot
                // succeed (a reader waits, or fetches in flight fill it).
                if readahead && !self.budget.readahead_could_fit(bytes, lru.bytes) {
                    return None;
                }
                loop {
                    match self.budget.try_take(bytes, readahead) {
                        Ok(r) => return Some(r),
                        Err(generation) => match lru.pop() {
                            Some(evicted) => drop(evicted),
                            None => break generation,
                        },
                    }
                }
            };
            if readahead {
                return None;
            }
            short.get_or_insert_with(|| self.budget.short_of_room());
            self.budget.wait_past(generation);
        }
    }

    /// The plaintext of data chunk `id`, `len` bytes long, from the cache
    /// or the repository.
    pub fn get(&self, id: &BlobId, len: u32) -> Result<Chunk, ReadError> {
        if let Some(c) = lock(&self.lru).map.get(id) {
            return Ok(c.clone());
        }
        let (flight, leader) = self.join(id);
        if !leader {
            let mut done = lock(&flight.done);
            loop {
                if let Some(r) = done.as_ref() {
                    return r.clone();
                }
                done = flight.cv.wait(done).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let room = self.reserve(u64::from(len), Want::Read);
        self.lead(id, &flight, room)
    }

    /// Fetches chunk `id` into the cache if it is not there and the budget
    /// has room without waiting; never fails (a failed fetch is retried,
    /// and reported, by the reader that needs it).
    pub fn prefetch(&self, id: &BlobId, len: u32) {
        if self.present(id) {
            return;
        }
        let Some(room) = self.reserve(u64::from(len), Want::Readahead) else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (flight, leader) = self.join(id);
        if leader {
            if let Err(e) = self.lead(id, &flight, Some(room)) {
                tracing::debug!("readahead of chunk {}: {e}", id.short());
            }
        }
    }

    /// The fetch of `id` in flight, and whether the caller must do it.
    fn join(&self, id: &BlobId) -> (Arc<Flight>, bool) {
        let mut loading = lock(&self.loading);
        match loading.get(id) {
            Some(f) => (f.clone(), false),
            None => {
                let f = Arc::new(Flight::default());
                loading.insert(*id, f.clone());
                (f, true)
            }
        }
    }

    /// Fetches `id` into the bytes of `room`, caches it (unless it is
    /// larger than the whole cache) and hands the result to everyone
    /// waiting on `flight`.
    fn lead(
        &self,
        id: &BlobId,
        flight: &Flight,
        room: Option<Reservation>,
    ) -> Result<Chunk, ReadError> {
        let result = match room {
            Some(room) => self.load(id, room),
            None => Err(ReadError("no room in the chunk cache".into())),
        };
        *lock(&flight.done) = Some(result.clone());
        flight.cv.notify_all();
        lock(&self.loading).remove(id);
        result
    }

    fn load(&self, id: &BlobId, room: Reservation) -> Result<Chunk, ReadError> {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let data = self.source.fetch(id)?;
        if data.len() as u64 != room.bytes {
            return Err(ReadError(format!(
                "chunk {} holds {} bytes, the file's chunk list says {}",
                id.short(),
                data.len(),
                room.bytes
            )));
        }
        let keep = room.bytes <= self.budget.capacity;
        let chunk = Arc::new(ChunkBuf { data, _paid: room });
        if keep {
            let mut lru = lock(&self.lru);
            if let Some(old) = lru.map.put(*id, chunk.clone()) {
                lru.bytes -= old.len() as u64;
            }
            lru.bytes += chunk.len() as u64;
            drop(lru);
            self.budget.poke();
        }
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::format::Id;
    use std::sync::atomic::AtomicUsize;

    /// Chunk `n` is `n * 1000` bytes of the byte `n`.
    struct Fake {
        calls: AtomicUsize,
    }

    fn id(n: u8) -> BlobId {
        BlobId(Id([n; 32]))
    }

    fn len(n: u8) -> u32 {
        u32::from(n) * 1000
    }

    impl Fetch for Fake {
        fn fetch(&self, id: &BlobId) -> Result<Vec<u8>, ReadError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let n = id.0 .0[0];
            if n == 0 {
                return Err(ReadError("missing".into()));
            }
            Ok(vec![n; len(n) as usize])
        }
    }

    fn cache(capacity: u64) -> (Arc<ChunkCache>, Arc<Fake>) {
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
        });
        (Arc::new(ChunkCache::new(fake.clone(), capacity)), fake)
    }

    #[test]
    fn never_holds_more_than_its_budget() {
        const CAPACITY: u64 = 40_000;
        let (cache, _) = cache(CAPACITY);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let cache = &cache;
                s.spawn(move || {
                    // A deterministic walk over chunks 1..=30 (1 to 30 kB),
                    // with readahead of the next two.
                    let mut x = t * 7919 + 1;
                    for _ in 0..400 {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let n = (x >> 33) as u8 % 30 + 1;
                        let c = cache.get(&id(n), len(n)).expect("chunk");
                        assert_eq!(c.len(), len(n) as usize);
                        assert!(c.iter().all(|&b| b == n));
                        assert!(cache.bytes() <= CAPACITY);
                        drop(c);
                        for ahead in [n % 30 + 1, (n + 1) % 30 + 1] {
                            cache.prefetch(&id(ahead), len(ahead));
                        }
                    }
                });
            }
        });
        assert!(cache.fetched.load(Ordering::Relaxed) > 0);
        assert!(
            cache.peak_bytes() <= CAPACITY,
            "peak {} > capacity {CAPACITY}",
            cache.peak_bytes()
        );
        // What is left is what the LRU holds, within the budget.
        let lru = lock(&cache.lru);
        let cached: u64 = lru.map.iter().map(|(_, c)| c.len() as u64).sum();
        assert_eq!(lru.bytes, cached);
        assert_eq!(cache.bytes(), cached);
    }

    #[test]
    fn a_chunk_larger_than_the_cache_is_read_alone_and_not_kept() {
        let (cache, fake) = cache(10_000);
        let small = cache.get(&id(5), len(5)).expect("small");
        drop(small);
        assert_eq!(cache.bytes(), 5_000);
        // 20 kB > 10 kB: everything else is evicted first, nothing kept.
        let big = cache.get(&id(20), len(20)).expect("big");
        assert_eq!(big.len(), 20_000);
        assert_eq!(cache.bytes(), 20_000);
        drop(big);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.peak_bytes(), 20_000);
        // Readahead never takes an oversized chunk.
        cache.prefetch(&id(30), len(30));
        assert_eq!(cache.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(fake.calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_cached_chunk_is_fetched_once() {
        let (cache, fake) = cache(100_000);
        cache.prefetch(&id(3), len(3));
        for _ in 0..3 {
            assert_eq!(cache.get(&id(3), len(3)).expect("chunk").len(), 3000);
        }
        assert_eq!(fake.calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_and_wrong_lengths_give_errors_and_hold_nothing() {
        let (cache, _) = cache(100_000);
        assert!(cache.get(&id(0), 10).is_err());
        let err = cache.get(&id(4), 4001).err().expect("length mismatch");
        assert!(err.0.contains("4000 bytes"), "{err}");
        assert_eq!(cache.bytes(), 0);
        assert!(!cache.present(&id(4)));
    }

    #[test]
    fn readahead_that_cannot_fit_evicts_nothing() {
        let (cache, _) = cache(10_000);
        drop(cache.get(&id(2), len(2)).expect("chunk"));
        // A 7 kB fetch in flight: 4 kB of readahead cannot fit even if the
        // 2 kB cached chunk went.
        let in_flight = cache.budget.try_take(7_000, false).expect("room");
        cache.prefetch(&id(4), len(4));
        assert_eq!(cache.skipped.load(Ordering::Relaxed), 1);
        assert!(
            cache.present(&id(2)),
            "the cached chunk was evicted for nothing"
        );
        // 1 kB can: it fits beside both.
        cache.prefetch(&id(1), len(1));
        assert!(cache.present(&id(1)) && cache.present(&id(2)));
        drop(in_flight);
        assert_eq!(cache.bytes(), 3_000);
    }

    #[test]
    fn readahead_leaves_room_to_a_waiting_reader() {
        let (cache, _) = cache(10_000);
        // A reader pins 6 kB; a second reader wants 8 kB and must wait.
        let pinned = cache.get(&id(6), len(6)).expect("pinned");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| cache.get(&id(8), len(8)).expect("chunk").len());
            // Until the waiter is seen waiting, readahead may still run.
            while lock(&cache.budget.state).waiting == 0 {
                std::thread::yield_now();
            }
            cache.prefetch(&id(2), len(2));
            assert_eq!(cache.skipped.load(Ordering::Relaxed), 1);
            drop(pinned);
            assert_eq!(waiter.join().expect("waiter"), 8000);
        });
        assert!(cache.peak_bytes() <= 10_000);
    }
}
