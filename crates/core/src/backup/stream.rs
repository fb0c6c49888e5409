//! Backing up a stream (standard input, or the output of a command such as
//! `pg_dump`) as the one file of a snapshot.
//!
//! The stream goes through the same stages as a file: cut by the backup's
//! chunker ([`super::read::for_each_chunk`]) through one bounded window,
//! new chunks claimed and sealed ([`super::read::add_chunk`], the sealing
//! pool), packed and indexed by the [`PackWriter`]. Memory does not grow
//! with the stream beyond its chunk list (about 40 bytes per chunk).
//!
//! Invariant: a snapshot is written only for a stream read to its end, and
//! for a command only once it has exited with status 0; otherwise the
//! backup fails and what it stored is referenced by no snapshot (garbage
//! collection removes it; a re-run deduplicates against it meanwhile).

use super::partial::{InFlight, Partial};
use super::plan::BackupPlan;
use super::read::{self, ReadCtx, ReadOutcome};
use super::seal::{content_from_chunks, SealPool, WorkerError};
use super::BackupOptions;
use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::tree::{Node, NodeType, Payload, Tree};
use crate::format::{BlobId, BlobKind};
use crate::packer::PackWriter;
use crate::repo::Repository;
use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The file a stream becomes.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Its name in the snapshot's root: one path component.
    pub name: String,
    /// Its permission bits.
    pub mode: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            name: "stdin".into(),
            mode: 0o600,
        }
    }
}

/// Stores what `src` yields up to its end as the file `stream.name`, and
/// returns the snapshot unsaved (save it with [`super::save_backup`]).
/// `opts.paths`, `exclude` and `read_devices` do not apply.
pub fn backup_stream_unsaved(
    repo: &Repository,
    opts: &BackupOptions,
    stream: &StreamOptions,
    src: &mut dyn Read,
) -> Result<Snapshot> {
    let (plan, node) = prepare(repo, opts, stream)?;
    let stored = store(repo, opts, &plan, node, src).map(|(snapshot, _)| snapshot);
    stored.map_err(super::vanished_under_backup)
}

/// Runs `argv` and stores its standard output as the file `stream.name`;
/// the command's standard input and error are this process's. The backup
/// fails, saving nothing, when the command cannot start, exits non-zero or
/// is killed, or when storing fails (the command is then killed).
pub fn backup_command_unsaved(
    repo: &Repository,
    opts: &BackupOptions,
    stream: &StreamOptions,
    argv: &[OsString],
) -> Result<Snapshot> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Usage(
            "--stdin-from-command needs a command: put it after `--`".into(),
        ));
    };
    let (plan, node) = prepare(repo, opts, stream)?;
    let shown = PathBuf::from(program);
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                &shown,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot run the command ({e}); check its name and PATH"),
                ),
            )
        })?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| Error::Internal("the command's output pipe is missing".into()))?;
    let stored = store(repo, opts, &plan, node, &mut out);
    drop(out);
    if stored.is_err() {
        // Nothing reads its output any more; it would block or die of SIGPIPE.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| Error::io(&shown, e))?;
    let (snapshot, checkpoints) = stored.map_err(super::vanished_under_backup)?;
    if !status.success() {
        // Its checkpoints would hold the short dump as a partial file.
        for id in checkpoints {
            if let Err(e) = repo.delete_snapshot(&id) {
                tracing::warn!("could not delete checkpoint {}: {e}", id.short());
            }
        }
        return Err(Error::io(
            &shown,
            std::io::Error::other(format!(
                "the command {}; its output is not a complete dump, so no snapshot was saved \
                 (what it stored so far is removed by the next prune). Fix the command and \
                 run the backup again",
                describe_status(&status)
            )),
        ));
    }
    Ok(snapshot)
}

/// `exited with status 2`, `was killed by signal 9`.
fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended with {status}"),
    }
}

/// The plan and the file's node (content still unset).
fn prepare(
    repo: &Repository,
    opts: &BackupOptions,
    stream: &StreamOptions,
) -> Result<(BackupPlan, Node)> {
    let name = stream.name.as_str();
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Usage(format!(
            "stream file name {name:?} must be one path component (no `/`), \
             e.g. --stdin-filename db.sql"
        )));
    }
    if stream.mode & !0o7777 != 0 {
        return Err(Error::Usage(format!(
            "stream file mode {:o} has bits beyond 7777: give permission bits, e.g. 0640",
            stream.mode
        )));
    }
    let plan = BackupPlan::for_stream(repo, opts, name)?;
    let now = plan.time.timestamp_nanos_opt().unwrap_or(0);
    let node = Node {
        name: name.as_bytes().to_vec(),
        kind: NodeType::File,
        mode: stream.mode,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        mtime_ns: now,
        ctime_ns: now,
        size: 0,
        inode: 0,
        dev: 0,
        nlink: 1,
        rdev: 0,
        xattrs: Vec::new(),
        payload: Payload::None,
    };
    Ok((plan, node))
}

/// Chunks, seals and packs `src`, stores the root tree holding `node` and
/// syncs the index; the snapshot returned is complete but not saved, the
/// checkpoints written meanwhile are still there.
fn store(
    repo: &Repository,
    opts: &BackupOptions,
    plan: &BackupPlan,
    mut node: Node,
    src: &mut dyn Read,
) -> Result<(Snapshot, Vec<crate::format::SnapshotId>)> {
    let started = Instant::now();
    let template = plan.snapshot(BlobId::default(), false, Summary::default(), Vec::new());
    let mut ckpt = Checkpointer::new(repo, opts.checkpoint, template)?;
    let progress = opts.progress.clone().unwrap_or_default();
    progress.files_total.store(1, Ordering::Relaxed);
    progress.scan_done.store(true, Ordering::Relaxed);
    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let writer = Arc::new(PackWriter::for_backup(repo, opts.uploaders)?);
    let errors = WorkerError::default();
    let (sealer, seals) = SealPool::start(repo, &writer, workers, &errors)?;
    let in_flight = Arc::new(InFlight::default());
    let ctx = ReadCtx {
        repo: repo.clone(),
        writer: writer.clone(),
        sealer,
        progress: progress.clone(),
        limit: opts
            .limit_read
            .map(|rate| Arc::new(cairn_storage::TokenBucket::new(rate, Instant::now()))),
        in_flight: in_flight.clone(),
    };
    let cfg = repo.config();
    let chunks = in_flight.register(Partial::default());
    let mut read = 0u64;
    let mut window = Vec::new();
    let mut src = read::Paced {
        inner: src,
        limit: ctx.limit.as_deref(),
    };
    let cut = read::for_each_chunk(
        &mut src,
        &mut window,
        (cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max),
        |chunk| {
            read::add_chunk(&ctx, chunk, &chunks, &mut read)?;
            if ckpt.due(writer.stats().blobs) {
                let stream = Checkpoint {
                    repo,
                    writer: &writer,
                    in_flight: &in_flight,
                    errors: &errors,
                };
                stream
                    .write(&mut ckpt, &node, &chunks)
                    .map_err(ReadOutcome::Failed)?;
            }
            Ok(())
        },
        ReadOutcome::Unreadable,
    );
    drop(window);
    // The reader context holds the only sender to the sealing threads.
    drop(ctx);
    seals.join();
    if let Some(e) = errors.take() {
        return Err(e);
    }
    let shown = String::from_utf8_lossy(&node.name).into_owned();
    match cut {
        Ok(()) => {}
        Err(ReadOutcome::Unreadable(e)) => {
            return Err(Error::io(
                format!("stream {shown}"),
                std::io::Error::new(e.kind(), format!("reading the stream failed: {e}")),
            ))
        }
        Err(ReadOutcome::Failed(e)) => return Err(e),
        Err(ReadOutcome::Stopped | ReadOutcome::Done { .. }) => {
            return Err(Error::Internal("sealing workers stopped".into()))
        }
    }
    node.size = read;
    node.payload = Payload::File(content_from_chunks(&writer, chunks.take())?);
    progress.file_done();
    let (root, _) = writer.add_plain(BlobKind::Tree, &Tree { nodes: vec![node] }.encode())?;
    let writer =
        Arc::try_unwrap(writer).map_err(|_| Error::Internal("pack writer still shared".into()))?;
    writer.sync()?;
    ckpt.protect(repo, &writer, &[root])?;
    let stats = writer.finish()?;
    let summary = Summary {
        files_new: 1,
        bytes_read: read,
        bytes_total: read,
        blobs_added: stats.blobs,
        bytes_added: stats.stored_bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Summary::default()
    };
    Ok((
        plan.snapshot(root, true, summary, opts.hooks.clone()),
        ckpt.written().to_vec(),
    ))
}

/// A checkpoint of a stream being stored: a root holding the stream's one
/// file as far as it got (a partial entry), so maintenance keeps a dump
/// that takes hours while it runs. (A stream cannot be resumed: a re-run
/// reads it again and deduplicates what was stored.)
struct Checkpoint<'a> {
    repo: &'a Repository,
    writer: &'a PackWriter,
    in_flight: &'a InFlight,
    errors: &'a WorkerError,
}

impl Checkpoint<'_> {
    fn write(&self, ckpt: &mut Checkpointer, node: &Node, chunks: &Partial) -> Result<()> {
        let settled =
            self.in_flight
                .settle(ckpt, self.repo, self.writer, Some((node, chunks)), || {
                    self.errors.check()
                })?;
        let nodes = settled.reading.into_iter().collect();
        let (root, _) = self
            .writer
            .add_plain(BlobKind::Tree, &Tree { nodes }.encode())?;
        ckpt.write(
            self.repo,
            self.writer,
            root,
            &Summary::default(),
            &settled.ahead,
            settled.plans,
        )?;
        Ok(())
    }
}
