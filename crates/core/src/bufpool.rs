//! Recycled byte buffers for the backup pipeline.
//!
//! Chunks (about 1 MiB), sealed blobs and packs (16 MiB) pass between
//! threads: read on one, sealed on another, uploaded on a third. Freshly
//! allocated per item, glibc's per-thread arenas kept the freed buffers and
//! peak RSS grew with the thread count rather than with what was in flight.
//! A pool hands the same few buffers round instead, so the memory a backup
//! holds is the buffers in flight and the ones the pool keeps.
//!
//! Invariant: the pool keeps at most `keep` buffers, each of capacity at
//! most `max_capacity`; larger ones (a rare 8 MiB chunk) are freed.

use std::sync::Mutex;

/// A bounded set of spare buffers.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
    max_capacity: usize,
}

impl BufferPool {
    /// A pool keeping up to `keep` spare buffers of at most `max_capacity` bytes.
    pub fn new(keep: usize, max_capacity: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
            max_capacity,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes: a spare one
    /// when the pool has any, else a new one.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        // The smallest spare that holds `capacity`, else the largest: a
        // buffer that has to grow gets fresh pages, and every first touch
        // of a page is a page fault (4% of a large-file backup's CPU when
        // buffers were taken in any order).
        let spare = {
            let mut free = crate::sync::lock(&self.free);
            let fits = |b: &&Vec<u8>| b.capacity() >= capacity;
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| fits(b))
                .min_by_key(|(_, b)| b.capacity())
                .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.capacity()))
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match spare {
            Some(mut buf) => {
                buf.clear();
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.max_capacity {
            return;
        }
        let mut free = crate::sync::lock(&self.free);
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    /// Spare buffers held now.
    pub fn spare(&self) -> usize {
        crate::sync::lock(&self.free).len()
    }
}

#[cfg(test)]
mod tests {
    use super::BufferPool;

    #[test]
    fn reuses_up_to_keep_buffers_and_drops_oversized_ones() {
        let pool = BufferPool::new(2, 1024);
        let mut a = pool.take(100);
        a.extend_from_slice(b"data");
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(10);
        assert!(b.is_empty(), "a reused buffer comes back cleared");
        assert_eq!(b.as_ptr(), ptr, "the spare buffer is handed out again");
        pool.give(b);
        pool.give(Vec::with_capacity(10));
        pool.give(Vec::with_capacity(10));
        assert_eq!(pool.spare(), 2, "no more than `keep` spares");
        let pool = BufferPool::new(4, 1024);
        pool.give(Vec::with_capacity(4096));
        assert_eq!(pool.spare(), 0, "oversized buffers are freed");
    }

    #[test]
    fn hands_out_the_smallest_spare_that_fits_else_the_largest() {
        let pool = BufferPool::new(4, 1 << 20);
        for cap in [100, 400, 200] {
            pool.give(Vec::with_capacity(cap));
        }
        assert_eq!(pool.take(150).capacity(), 200, "smallest that fits");
        assert!(pool.take(1000).capacity() >= 1000);
        assert_eq!(pool.spare(), 1, "the largest (400) was taken to grow");
        assert_eq!(pool.take(10).capacity(), 100);
    }
}
