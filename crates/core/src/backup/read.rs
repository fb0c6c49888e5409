//! Reading file content on a pool of threads: read, chunk, hash, claim new
//! chunks and hand them to the sealing stage ([`super::seal`]).
//!
//! The walker submits files in tree order and gets one result slot per
//! file; it collects the slots of a directory before storing its tree, so
//! trees stay sorted while many files are read at once. Every channel is
//! bounded: at most `threads` files are being read, each through one
//! reusable window of [`READ_WINDOW`] bytes (up to `chunk_max` while a
//! chunk needs it), and chunk buffers come from a [`BufferPool`].

use super::partial::{InFlight, Partial};
use super::seal::Sealer;
use crate::error::{Error, Result};
use crate::format::tree::ChunkRef;
use crate::packer::PackWriter;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::zeros::is_zero;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What reading one file produced.
pub(super) enum ReadOutcome {
    /// The bytes read; the chunks are in the file's [`Partial`]. With the
    /// file's xattrs when the job asked for them.
    Done {
        read: u64,
        xattrs: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    },
    /// The file could not be opened or read: skip it.
    Unreadable(std::io::Error),
    /// A repository error; the backup fails.
    Failed(Error),
    /// A sealing worker failed; the walker reports its error.
    Stopped,
}

/// What a reader needs; shared by the pool threads and the walker (which
/// reads hard-linked files itself).
#[derive(Clone)]
pub(super) struct ReadCtx {
    pub repo: Repository,
    /// Claims chunks (the first reader to claim one seals it).
    pub writer: Arc<PackWriter>,
    pub sealer: Sealer,
    pub progress: Arc<Progress>,
    /// Bytes per second read from the source, at most (`--limit-read`).
    pub limit: Option<Arc<cairn_storage::TokenBucket>>,
    /// Files in flight, and the gate deduplication decisions pass.
    pub in_flight: Arc<InFlight>,
}

/// One file for a reader: where its chunks go, and the offset to start
/// at (after a killed run's prefix, which `chunks` already holds).
pub(super) struct ReadJob {
    pub path: PathBuf,
    pub chunks: Arc<Partial>,
    pub start: u64,
    /// The file's lstat from the walk, which its node records: what the
    /// file must still be when its read ends (`None`: a device, whose
    /// node's times are not its content's; the open file is asked).
    pub walked: Option<std::fs::Metadata>,
    /// Read the file's xattrs from the open file (the walk left them out:
    /// no parent entry had them unchanged).
    pub xattrs: bool,
}

struct Queued {
    job: ReadJob,
    slot: Sender<ReadOutcome>,
}

/// Files in one batch at most, and the bytes after which a batch closes.
/// Small files go to the readers in batches: each hand-off wakes a reader,
/// the walker when the queue had been full and the assembler waiting for
/// the results, so one hand-off per file made the small-file backup a
/// stream of context switches (about one per file on each thread).
const BATCH_FILES: usize = 32;
const BATCH_BYTES: u64 = 1 << 20;

/// Threads reading submitted files.
pub(super) struct ReaderPool {
    tx: Option<Sender<Vec<Queued>>>,
    threads: Vec<JoinHandle<()>>,
    /// Files submitted but not yet handed to the readers.
    batch: Vec<Queued>,
    batch_bytes: u64,
}

impl ReaderPool {
    /// A pool of `threads` readers (at least one).
    pub fn new(ctx: &ReadCtx, threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<Vec<Queued>>(threads * 4);
        let threads = (0..threads)
            .map(|i| {
                let rx: Receiver<Vec<Queued>> = rx.clone();
                let ctx = ctx.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-read-{i}"))
                    .spawn(move || {
                        let mut outcomes = Vec::with_capacity(BATCH_FILES);
                        for batch in rx {
                            // The batch's dedup questions that find nothing
                            // share one cache read transaction (see
                            // `ReadSession`).
                            let session = ctx.repo.cache().session();
                            // Results go out together: whoever waits for the
                            // first file wakes once for the batch.
                            outcomes.extend(batch.iter().map(|q| read_file(&ctx, &q.job)));
                            drop(session);
                            for (q, outcome) in batch.into_iter().zip(outcomes.drain(..)) {
                                let _ = q.slot.send(outcome);
                            }
                        }
                    })
                    .map_err(Error::spawn("reader"))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            tx: Some(tx),
            threads,
            batch: Vec::with_capacity(BATCH_FILES),
            batch_bytes: 0,
        })
    }

    /// Queues `job` (`size` bytes to read); the result arrives on the
    /// returned slot once the file's batch is read. A batch is handed to the
    /// readers when full; call [`ReaderPool::flush`] before waiting on
    /// anything that may wait for a queued file.
    pub fn submit(&mut self, job: ReadJob, size: u64) -> Receiver<ReadOutcome> {
        let (slot, result) = bounded(1);
        self.batch.push(Queued { job, slot });
        self.batch_bytes += size;
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
        result
    }

    /// Hands the files queued so far to the readers.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_FILES));
        self.batch_bytes = 0;
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.send(batch) {
                for q in e.0 {
                    let _ = q.slot.send(ReadOutcome::Stopped);
                }
            }
        }
    }

    /// Reads every queued file, then stops the readers.
    pub fn finish(mut self) {
        self.flush();
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

/// Bytes a reader reads ahead of the chunker. A cut needs to see up to
/// `chunk_max` bytes only when no cut point turns up earlier; then the
/// window grows to `chunk_max` for that chunk.
pub const READ_WINDOW: usize = 4 << 20;

thread_local! {
    /// Each reader thread's window, reused from file to file.
    static WINDOW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The directory of the file this reader opened last, held open
    /// (`O_PATH`) for the files after it in the same directory.
    static DIR: std::cell::RefCell<Option<(PathBuf, std::os::fd::OwnedFd)>> =
        const { std::cell::RefCell::new(None) };
}

/// Opens `path` for reading. A reader's batch holds files of one directory
/// mostly, so the file is opened by its name relative to its directory,
/// which is opened by path once: one path lookup a directory, not one of
/// the whole path a file. The directory is the one the walk listed, even
/// if something was renamed over its path since.
fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return std::fs::File::open(path);
    };
    DIR.with_borrow_mut(|held| {
        if held.as_ref().is_none_or(|(p, _)| p != dir) {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            *held = rustix::fs::open(dir, flags, Mode::empty())
                .ok()
                .map(|fd| (dir.to_path_buf(), fd));
        }
        match held {
            Some((_, fd)) => {
                rustix::fs::openat(&*fd, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                    .map(std::fs::File::from)
                    .map_err(std::io::Error::from)
            }
            // The directory could not be opened: by the whole path, which
            // reports what is wrong with it.
            None => std::fs::File::open(path),
        }
    })
}

/// Reads, chunks and hashes one file from `job.start`, sending new chunks
/// to sealing and publishing each in `job.chunks`.
pub(super) fn read_file(ctx: &ReadCtx, job: &ReadJob) -> ReadOutcome {
    let path = &job.path;
    let mut file = match open_file(path) {
        Ok(f) => f,
        Err(e) => return ReadOutcome::Unreadable(e),
    };
    // Before the content, as the walk would have read them.
    let xattrs = job.xattrs.then(|| crate::fsmeta::read_xattrs_of(&file));
    // One fstat less per file: the walk's lstat is the state the node
    // records, so a change since then is one while the file was read.
    let meta = match &job.walked {
        Some(walked) => Some(walked.clone()),
        None => file.metadata().ok(),
    };
    // Only a regular file's size and times tell a change (a device's are
    // those of its node).
    let before = meta.as_ref().filter(|m| m.is_file()).map(Stamp::of);
    if job.start > 0 {
        if let Err(e) = file.seek(SeekFrom::Start(job.start)) {
            return ReadOutcome::Unreadable(e);
        }
        ctx.progress.add_bytes(job.start);
    }
    let mut read = 0u64;
    let mut window = WINDOW.take();
    let limit = ctx.limit.as_deref();
    let result = if meta.as_ref().is_some_and(super::sparse::looks_sparse) {
        let mut data = Paced {
            inner: super::sparse::DataReader::at(&file, job.start),
            limit,
        };
        chunk_stream(ctx, &mut data, &mut window, &job.chunks, &mut read)
    } else {
        // A regular file is read up to its walked size and no further: the
        // read that would return no bytes is not made (one system call a
        // small file). A file grown since the walk ends as a change while
        // read, as one changed any other way.
        let expected = before
            .filter(|b| b.size > job.start)
            .map_or(u64::MAX, |b| b.size - job.start);
        let mut src = Paced {
            inner: (&mut file).take(expected),
            limit,
        };
        chunk_stream(ctx, &mut src, &mut window, &job.chunks, &mut read)
    };
    if window.capacity() > READ_WINDOW {
        window = Vec::new();
    }
    WINDOW.set(window);
    match result {
        Ok(()) => {
            let after = file.metadata().ok().map(|m| Stamp::of(&m));
            let stored = job.start + read;
            if let (Some(before), Some(after)) = (before, after) {
                if before != after || after.size != stored {
                    ctx.progress
                        .changed_while_read(path, &before.describe_change(&after, stored));
                }
            }
            ReadOutcome::Done { read, xattrs }
        }
        Err(o) => o,
    }
}

/// What tells that a file changed: its size, modification and change
/// times (a write that keeps the size still moves both times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// How `self` (when the read began) differs from `after` (when it
    /// ended), and what was stored.
    fn describe_change(&self, after: &Stamp, read: u64) -> String {
        if self.size != after.size {
            format!(
                "size {} bytes when the read began, {} when it ended, {read} stored",
                self.size, after.size
            )
        } else if self.size != read {
            format!("{} bytes by size, {read} read", self.size)
        } else {
            "modified while it was read (same size)".to_string()
        }
    }
}

/// The length of the first chunk FastCDC cuts from `data`.
fn first_cut(data: &[u8], min: u32, avg: u32, max: u32) -> usize {
    fastcdc::v2020::FastCDC::new(data, min, avg, max)
        .next()
        .map_or(data.len(), |c| c.length)
}

/// A source read through the `--limit-read` bucket, if any.
pub(super) struct Paced<'a, R> {
    pub inner: R,
    pub limit: Option<&'a cairn_storage::TokenBucket>,
}

impl<R: Read> Read for Paced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(limit) = self.limit {
            limit.pace(n as u64);
        }
        Ok(n)
    }
}

fn chunk_stream(
    ctx: &ReadCtx,
    file: &mut impl Read,
    window: &mut Vec<u8>,
    chunks: &Partial,
    read: &mut u64,
) -> std::result::Result<(), ReadOutcome> {
    let cfg = ctx.repo.config();
    for_each_chunk(
        file,
        window,
        (cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max),
        |chunk| add_chunk(ctx, chunk, chunks, read),
        ReadOutcome::Unreadable,
    )
}

/// Cuts what `src` yields into chunks through `window` and calls `emit`
/// with each. The cut points are those of FastCDC over the whole content:
/// a cut found before the end of the bytes at hand is final (FastCDC takes
/// the first position whose hash matches, and the masks up to it do not
/// depend on what follows); otherwise the window is refilled, or grown up
/// to `max` bytes, and the cut retried.
pub(super) fn for_each_chunk<E>(
    src: &mut impl Read,
    window: &mut Vec<u8>,
    (min, avg, max): (u32, u32, u32),
    mut emit: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    io_error: impl Fn(std::io::Error) -> E,
) -> std::result::Result<(), E> {
    let max_len = max as usize;
    window.clear();
    window.reserve(READ_WINDOW.min(max_len));
    let mut start = 0usize;
    let mut eof = false;
    loop {
        let avail = window.len() - start;
        if avail == 0 && eof {
            return Ok(());
        }
        if avail > 0 {
            let cut = first_cut(&window[start..], min, avg, max);
            if eof || cut < avail || avail >= max_len {
                emit(&window[start..start + cut])?;
                start += cut;
                continue;
            }
        }
        // Not enough bytes to decide: keep the undecided tail, then read more.
        window.drain(..start);
        start = 0;
        if window.len() == window.capacity() {
            let grow = window.capacity().max(READ_WINDOW).min(max_len);
            window.reserve(grow);
        }
        let room = (window.capacity() - window.len()) as u64;
        // `read_to_end` stops at the end of the file or when the window is
        // full: a short fill is the end, so a small file costs one read
        // that returns its bytes and one that returns none.
        match src.by_ref().take(room).read_to_end(window) {
            Ok(n) if (n as u64) < room => eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// Chunks smaller than this (small files, and the tails of large ones) are
/// sealed by the reader that cut them; larger ones go to the sealing
/// workers, so that one large file is compressed on every core. A small
/// file's chunk costs a copy, a channel hop and a wake-up of a sealing
/// thread when handed over, all of it per file; the readers are as many
/// as the cores, so sealing in place keeps them all busy.
const INLINE_SEAL_BELOW: usize = 256 << 10;

/// Records one chunk; a new one is claimed and sealed here when small,
/// else copied into a pooled buffer and sent to sealing. The chunk is
/// claimed (or found stored) and published in `chunks` under the in-flight
/// gate, so a checkpoint sees it there once it has loaded the plans, and
/// drains the claims before it references it.
pub(super) fn add_chunk(
    ctx: &ReadCtx,
    data: &[u8],
    chunks: &Partial,
    read: &mut u64,
) -> std::result::Result<(), ReadOutcome> {
    let len = data.len() as u32;
    *read += data.len() as u64;
    ctx.progress.add_bytes(data.len() as u64);
    if is_zero(data) {
        chunks.push(ChunkRef::hole(len));
        return Ok(());
    }
    let id = ctx.repo.blob_id(data);
    let claimed = {
        let _deciding = ctx.in_flight.deciding();
        let claimed = ctx
            .writer
            .claim(&id, data.len())
            .map_err(ReadOutcome::Failed)?;
        chunks.push(ChunkRef { id, len });
        claimed
    };
    if claimed {
        if ctx.sealer.errors().failed() {
            return Err(ReadOutcome::Stopped);
        }
        if data.len() < INLINE_SEAL_BELOW {
            return ctx.sealer.seal(id, data).map_err(ReadOutcome::Failed);
        }
        ctx.sealer
            .queue(id, data)
            .map_err(|_| ReadOutcome::Stopped)?;
    }
    Ok(())
}

/// Turns a pool outcome into the walker's view: the bytes read now (the
/// chunks, a resumed prefix included, are in the file's [`Partial`]);
/// `Ok(None)` skips the file.
pub(super) fn into_result(
    outcome: ReadOutcome,
    on_skip: impl FnOnce(&std::io::Error),
) -> Result<Option<u64>> {
    match outcome {
        ReadOutcome::Done { read, .. } => Ok(Some(read)),
        ReadOutcome::Unreadable(e) => {
            on_skip(&e);
            Ok(None)
        }
        ReadOutcome::Failed(e) => Err(e),
        ReadOutcome::Stopped => Err(Error::Internal("sealing workers stopped".into())),
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};

    /// The windowed reader must cut where FastCDC cuts over the whole
    /// content, or files would stop deduplicating against older backups.
    #[test]
    fn windowed_cuts_match_whole_content_cuts() {
        let mut data = vec![0u8; 11 << 20];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut data);
        // A long run of one byte has no cut point: FastCDC cuts at chunk_max there.
        data[3 << 20..(3 << 20) + (9 << 20) / 2].fill(7);
        for (min, avg, max) in [
            (16 << 10, 64 << 10, 256 << 10),
            (512 << 10, 1 << 20, 8 << 20),
        ] {
            let whole: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, min, avg, max)
                .map(|c| c.length)
                .collect();
            let mut windowed = Vec::new();
            let mut window = Vec::new();
            super::for_each_chunk(
                &mut std::io::Cursor::new(&data),
                &mut window,
                (min, avg, max),
                |c| {
                    windowed.push(c.len());
                    Ok::<(), std::io::Error>(())
                },
                |e| e,
            )
            .expect("in-memory read");
            assert!(whole.len() > 5);
            assert_eq!(whole, windowed, "chunker sizes {min}/{avg}/{max}");
        }
    }
}
