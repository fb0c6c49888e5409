//! Reading file content on a pool of threads: read, chunk, hash, claim new
//! chunks and hand them to the sealing workers.
//!
//! The walker submits files in tree order and gets one result slot per
//! file; it collects the slots of a directory before storing its tree, so
//! trees stay sorted while many files are read at once. Every channel is
//! bounded: at most `threads` files are being read, each holding at most
//! one chunk in memory (files up to [`WHOLE_FILE_MAX`] are read whole).

use super::{is_zero, SealJob};
use crate::error::{Error, Result};
use crate::format::tree::ChunkRef;
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Files up to this size are read with one `read` into memory and chunked
/// there, which avoids the streaming chunker's per-file buffer of
/// `chunk_max` bytes. Cut points are the same either way.
pub const WHOLE_FILE_MAX: u64 = 1 << 20;

/// What reading one file produced.
pub(super) enum ReadOutcome {
    /// The chunks and the bytes read.
    Done { chunks: Vec<ChunkRef>, read: u64 },
    /// The file could not be opened or read: skip it.
    Unreadable(std::io::Error),
    /// A repository error; the backup fails.
    Failed(Error),
    /// A sealing worker failed; the walker reports its error.
    Stopped,
}

/// What a reader needs; shared by the pool threads and the walker.
#[derive(Clone)]
pub(super) struct ReadCtx {
    pub repo: Repository,
    pub writer: Arc<PackWriter>,
    pub seal_tx: Sender<SealJob>,
    pub worker_error: Arc<Mutex<Option<Error>>>,
    pub progress: Arc<Progress>,
}

struct ReadJob {
    path: PathBuf,
    size: u64,
    slot: Sender<ReadOutcome>,
}

/// Threads reading submitted files.
pub(super) struct ReaderPool {
    tx: Option<Sender<ReadJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReaderPool {
    /// A pool of `threads` readers (at least one).
    pub fn new(ctx: &ReadCtx, threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<ReadJob>(threads * 4);
        let threads = (0..threads)
            .map(|i| {
                let rx: Receiver<ReadJob> = rx.clone();
                let ctx = ctx.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-read-{i}"))
                    .spawn(move || {
                        for job in rx {
                            let _ = job.slot.send(read_file(&ctx, &job.path, job.size));
                        }
                    })
                    .expect("spawn reader thread")
            })
            .collect();
        Self {
            tx: Some(tx),
            threads,
        }
    }

    /// Queues `path` (of `size` bytes when stat'ed); the result arrives on the returned slot.
    pub fn submit(&self, path: PathBuf, size: u64) -> Receiver<ReadOutcome> {
        let (slot, result) = bounded(1);
        let job = ReadJob { path, size, slot };
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send(job) {
                let _ = e.0.slot.send(ReadOutcome::Stopped);
            }
        }
        result
    }

    /// Waits for every queued file.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReaderPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads, chunks and hashes one file, sending new chunks to sealing.
pub(super) fn read_file(ctx: &ReadCtx, path: &Path, size: u64) -> ReadOutcome {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    let mut chunks = Vec::new();
    let mut read = 0u64;
    let cfg = ctx.repo.config();
    let result = if size <= WHOLE_FILE_MAX {
        // Read one byte past the expected size so a file that grew is still read whole.
        let mut data = Vec::with_capacity(size as usize + 1);
        match file.take(WHOLE_FILE_MAX + 1).read_to_end(&mut data) {
            Err(e) => return ReadOutcome::Unreadable(e),
            Ok(_) if data.len() as u64 > WHOLE_FILE_MAX => {
                let file = match std::fs::File::open(path) {
                    Ok(f) => f,
                    Err(e) => return ReadOutcome::Unreadable(e),
                };
                stream_chunks(ctx, file, &mut chunks, &mut read)
            }
            Ok(_) => {
                let cuts = fastcdc::v2020::FastCDC::new(
                    &data,
                    cfg.chunk_min,
                    cfg.chunk_avg,
                    cfg.chunk_max,
                );
                let mut r = Ok(());
                for c in cuts {
                    let piece = &data[c.offset..c.offset + c.length];
                    r = add_chunk(ctx, piece.to_vec(), &mut chunks, &mut read);
                    if r.is_err() {
                        break;
                    }
                }
                r
            }
        }
    } else {
        stream_chunks(ctx, file, &mut chunks, &mut read)
    };
    match result {
        Ok(()) => ReadOutcome::Done { chunks, read },
        Err(o) => o,
    }
}

fn stream_chunks(
    ctx: &ReadCtx,
    file: std::fs::File,
    chunks: &mut Vec<ChunkRef>,
    read: &mut u64,
) -> std::result::Result<(), ReadOutcome> {
    let cfg = ctx.repo.config();
    let chunker = fastcdc::v2020::StreamCDC::new(file, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max);
    for chunk in chunker {
        let chunk = chunk.map_err(|e| {
            ReadOutcome::Unreadable(match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })?;
        add_chunk(ctx, chunk.data, chunks, read)?;
    }
    Ok(())
}

/// Records one chunk; a new one is claimed and sent to sealing.
fn add_chunk(
    ctx: &ReadCtx,
    data: Vec<u8>,
    chunks: &mut Vec<ChunkRef>,
    read: &mut u64,
) -> std::result::Result<(), ReadOutcome> {
    let len = data.len() as u32;
    *read += data.len() as u64;
    ctx.progress.add_bytes(data.len() as u64);
    if is_zero(&data) {
        chunks.push(ChunkRef::hole(len));
        return Ok(());
    }
    let id = ctx.repo.blob_id(&data);
    chunks.push(ChunkRef { id, len });
    if ctx.writer.claim(&id).map_err(ReadOutcome::Failed)? {
        if ctx.worker_error.lock().expect("lock").is_some() {
            return Err(ReadOutcome::Stopped);
        }
        ctx.seal_tx
            .send(SealJob { id, data })
            .map_err(|_| ReadOutcome::Stopped)?;
    }
    Ok(())
}

/// Collects a submitted file's result.
pub(super) fn wait(slot: &Receiver<ReadOutcome>) -> ReadOutcome {
    slot.recv().unwrap_or(ReadOutcome::Stopped)
}

/// Turns a pool outcome into the walker's view: `Ok(None)` skips the file.
pub(super) fn into_result(
    outcome: ReadOutcome,
    on_skip: impl FnOnce(&std::io::Error),
) -> Result<Option<(Vec<ChunkRef>, u64)>> {
    match outcome {
        ReadOutcome::Done { chunks, read } => Ok(Some((chunks, read))),
        ReadOutcome::Unreadable(e) => {
            on_skip(&e);
            Ok(None)
        }
        ReadOutcome::Failed(e) => Err(e),
        ReadOutcome::Stopped => Err(Error::Usage("sealing workers stopped".into())),
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};

    /// Whole-file reads must cut where the streaming chunker cuts, or a file
    /// crossing [`super::WHOLE_FILE_MAX`] would lose dedup against itself.
    #[test]
    fn in_memory_cuts_match_streaming_cuts() {
        let mut data = vec![0u8; 3 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
        let (min, avg, max) = (16 << 10, 64 << 10, 256 << 10);
        let mem: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
            .map(|c| (c.offset, c.length))
            .collect();
        let stream: Vec<(usize, usize)> =
            fastcdc::v2020::StreamCDC::new(std::io::Cursor::new(&data), min, avg, max)
                .map(|c| {
                    let c = c.expect("in-memory read");
                    (c.offset as usize, c.length)
                })
                .collect();
        assert!(mem.len() > 10);
        assert_eq!(mem, stream);
    }
}
