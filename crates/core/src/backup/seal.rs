//! The sealing stage: compresses and encrypts new data chunks and adds them
//! to the pack writer, on a pool of threads fed by the readers, or in place
//! for a reader's small chunk.
//!
//! A failure on any backup worker thread lands in one [`WorkerError`] slot;
//! the other stages stop when they see it, and the backup reports it.

use crate::bufpool::BufferPool;
use crate::error::{Error, Result};
use crate::format::tree::{encode_list, ChunkRef, Content, ListRef};
use crate::format::tree::{INLINE_CHUNKS_MAX, LIST_CHUNKS_MAX};
use crate::format::{BlobId, BlobKind};
use crate::packer::PackWriter;
use crate::repo::Repository;
use crossbeam_channel::{bounded, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Chunk buffers larger than this are freed rather than kept for reuse
/// (chunks average `chunk_avg`, 1 MiB by default; few exceed 4 MiB), so
/// the spare buffers do not ratchet up to the largest chunk seen. It
/// leaves room for zstd's bound on a 4 MiB chunk: at 2 MiB every sealed
/// buffer of a chunk near 2 MiB was freed, and each fresh one cost a page
/// fault per 4 KiB (4-5% of a binary backup's CPU).
const CHUNK_BUFFER_KEEP_MAX: usize = (4 << 20) + (64 << 10);

/// The first error of a backup's worker threads. It stays in the slot: the
/// backup reports it at the end, whichever thread noticed first.
#[derive(Clone, Default)]
pub(super) struct WorkerError(Arc<Mutex<Option<Error>>>);

impl WorkerError {
    /// Keeps `e` unless an earlier error is already kept.
    pub fn record(&self, e: Error) {
        crate::sync::lock(&self.0).get_or_insert(e);
    }

    /// Whether a worker has failed.
    pub fn failed(&self) -> bool {
        crate::sync::lock(&self.0).is_some()
    }

    /// Fails once a worker has failed.
    pub fn check(&self) -> Result<()> {
        if self.failed() {
            return Err(Error::Internal("sealing workers stopped".into()));
        }
        Ok(())
    }

    /// The error kept, for the report at the end of the backup.
    pub fn take(&self) -> Option<Error> {
        crate::sync::lock(&self.0).take()
    }
}

struct SealJob {
    id: BlobId,
    data: Vec<u8>,
}

/// The readers' handle on sealing: seals in place or queues for the pool.
/// The pool's threads end once every clone of the handle is dropped.
#[derive(Clone)]
pub(super) struct Sealer {
    seal: Seal,
    tx: Sender<SealJob>,
    errors: WorkerError,
}

/// What sealing one chunk needs.
#[derive(Clone)]
struct Seal {
    repo: Repository,
    writer: Arc<PackWriter>,
    bufs: Arc<BufferPool>,
}

/// The sealing threads.
pub(super) struct SealPool {
    threads: Vec<JoinHandle<()>>,
}

impl SealPool {
    /// Starts `workers` sealing threads; failures go to `errors`.
    pub fn start(
        repo: &Repository,
        writer: &Arc<PackWriter>,
        workers: usize,
        errors: &WorkerError,
    ) -> Result<(Sealer, SealPool)> {
        let (tx, rx) = bounded::<SealJob>(workers);
        // Chunk and sealed-blob buffers in flight: the queue, one being sealed
        // (plain and sealed) per worker, one being sent per reader.
        let bufs = Arc::new(BufferPool::new(workers * 4, CHUNK_BUFFER_KEEP_MAX));
        let seal = Seal {
            repo: repo.clone(),
            writer: writer.clone(),
            bufs,
        };
        let threads = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                let seal = seal.clone();
                let errors = errors.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-seal-{i}"))
                    .spawn(move || {
                        for job in rx {
                            if let Err(e) = seal.seal(job.id, &job.data) {
                                errors.record(e);
                            }
                            seal.bufs.give(job.data);
                        }
                    })
                    .map_err(Error::spawn("sealing"))
            })
            .collect::<Result<_>>()?;
        let sealer = Sealer {
            seal,
            tx,
            errors: errors.clone(),
        };
        Ok((sealer, SealPool { threads }))
    }

    /// Waits for the threads, which end once every [`Sealer`] is dropped.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Seal {
    /// Seals a claimed data chunk into a pooled buffer and adds it to a
    /// pack, or adds it to the writer's open bundle when it is small.
    fn seal(&self, id: BlobId, data: &[u8]) -> Result<()> {
        if self.repo.sealer().bundles(BlobKind::Data, data) {
            return self.writer.add_to_bundle(id, data);
        }
        // Room for the envelope's compression byte, nonce and tag, should the
        // chunk not compress.
        let mut stored = self.bufs.take(data.len() + 64);
        self.repo
            .seal_blob_into(BlobKind::Data, id, data, &mut stored);
        let added = self
            .writer
            .add_sealed(BlobKind::Data, id, &stored, data.len() as u32);
        self.bufs.give(stored);
        added
    }
}

impl Sealer {
    /// Seals a claimed data chunk in place (a reader's small chunk).
    pub fn seal(&self, id: BlobId, data: &[u8]) -> Result<()> {
        self.seal.seal(id, data)
    }

    /// Copies a claimed chunk into a pooled buffer and queues it for the
    /// sealing threads; fails once they have stopped.
    pub fn queue(&self, id: BlobId, data: &[u8]) -> std::result::Result<(), Stopped> {
        let mut owned = self.seal.bufs.take(data.len());
        owned.extend_from_slice(data);
        self.tx
            .send(SealJob { id, data: owned })
            .map_err(|_| Stopped)
    }

    /// The slot where workers record their failure.
    pub fn errors(&self) -> &WorkerError {
        &self.errors
    }
}

/// The sealing threads have stopped (one failed; its error is in the
/// [`WorkerError`]).
pub(super) struct Stopped;

/// A file's content from its chunks: inline, or in list blobs when long.
pub(super) fn content_from_chunks(writer: &PackWriter, chunks: Vec<ChunkRef>) -> Result<Content> {
    if chunks.len() <= INLINE_CHUNKS_MAX {
        return Ok(Content::Inline(chunks));
    }
    let mut lists = Vec::new();
    for part in chunks.chunks(LIST_CHUNKS_MAX) {
        let (id, _) = writer.add_plain(BlobKind::List, &encode_list(part))?;
        lists.push(ListRef {
            id,
            chunks: part.len() as u64,
            bytes: part.iter().map(|c| c.len as u64).sum(),
        });
    }
    Ok(Content::Lists(lists))
}

#[cfg(test)]
mod tests {
    use super::WorkerError;
    use crate::error::Error;

    /// Workers stop on the first failure and the backup reports that one,
    /// not a later error of another thread.
    #[test]
    fn the_first_worker_error_is_the_one_reported() {
        let errors = WorkerError::default();
        assert!(errors.check().is_ok());
        errors.record(Error::Internal("first".into()));
        errors.clone().record(Error::Internal("second".into()));
        assert!(errors.failed());
        assert!(errors.check().is_err());
        let kept = errors.take().map(|e| e.to_string()).unwrap_or_default();
        assert!(kept.contains("first"), "{kept}");
        assert!(errors.take().is_none());
    }
}
