//! Writes blobs into packs, uploads finished packs on bounded threads and
//! records them in index segments.
//!
//! On an object store a pack fills a memory buffer and is uploaded with one
//! write. On a local repository ([`cairn_storage::Storage::local_dir`]) it
//! is written straight into a staging file a 1 MiB block at a time as blobs
//! arrive (by a block writer thread, so no sealing thread waits for the
//! disk), then synced and renamed into place: no pack buffer.
//!
//! Invariant: an index segment names only packs whose upload succeeded, and
//! a snapshot is written only after the segments naming its blobs.

use crate::bufpool::BufferPool;
use crate::cache::CachedKind;
use crate::error::{Error, Result};
use crate::format::index::{IndexSegment, IndexedPack};
use crate::format::pack::{pack_tail, BlobEntry, PackBuilder, PACK_MAGIC};
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId};
use crate::repo::Repository;
use bytes::Bytes;
use cairn_storage::StorageError;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Packs written per index segment before a segment is flushed.
pub const PACKS_PER_SEGMENT: usize = 64;

/// Blobs per pack at most. Until its segment is written, every blob of a
/// pack is held in memory twice (its id among the pending claims, its entry
/// in the uploaded list); a 16 MiB pack of tiny files would otherwise hold
/// ~250k of them.
pub const BLOBS_PER_PACK: usize = 16 << 10;

/// Uploaded blobs that make a segment due even before
/// [`PACKS_PER_SEGMENT`] packs (packs of small blobs). A segment's entries
/// go into the local cache when it is written, on the thread that wrote
/// it: at 16k the last one, ingested after everything else is done, takes
/// ~30 ms instead of ~110 ms, and the others overlap the backup.
pub const BLOBS_PER_SEGMENT: usize = 16 << 10;

/// Totals of what a writer added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Blobs added.
    pub blobs: u64,
    /// Stored bytes of those blobs.
    pub stored_bytes: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Index segments written.
    pub segments: u64,
}

struct Shared {
    /// Buffers of uploaded packs, for the next packs.
    buffers: BufferPool,
    done: Mutex<Vec<IndexedPack>>,
    /// The first upload failure. Kept, not taken, once set: every caller
    /// waiting on uploads (`sync`, sealing workers, the walker) must see it,
    /// or one that missed it would wait forever for the failed pack.
    error: Mutex<Option<StorageError>>,
    packs: AtomicU64,
    segments: AtomicU64,
}

impl Shared {
    /// Records a failure to store a pack; the first one is kept.
    fn fail(&self, e: StorageError) {
        crate::sync::lock(&self.error).get_or_insert(e);
    }
}

/// Where packs of a local repository are written before they are renamed
/// into place.
#[derive(Clone)]
struct Spool {
    /// The repository's root directory.
    root: PathBuf,
    /// Its staging directory.
    staging: PathBuf,
    /// Whether to try O_DIRECT: not on NFS, where each direct write is a
    /// synchronous round trip to the server while buffered writes stream.
    direct: bool,
    /// Block buffers, shared by every spooled pack of a writer.
    blocks: Arc<BufferPool>,
}

impl Spool {
    fn new(root: PathBuf) -> Option<Self> {
        let staging = cairn_storage::staging_dir(&root);
        // Without a staging folder packs go through memory and `write`,
        // whose error then says what is wrong with the repository.
        std::fs::create_dir_all(&staging).ok()?;
        let nfs = nix::sys::statfs::statfs(&staging)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NFS_SUPER_MAGIC);
        Some(Spool {
            root,
            staging,
            direct: !nfs,
            blocks: Arc::new(BufferPool::new(SPARE_BLOCKS, SPOOL_BLOCK + DIRECT_ALIGN)),
        })
    }
}

/// A pack being filled.
enum OpenPack {
    /// In memory, stored with one write.
    Memory(PackBuilder),
    /// In a staging file, renamed into place (boxed: the hasher's state
    /// is 2 KiB, and packs move through a channel).
    File(Box<SpoolPack>),
}

impl OpenPack {
    fn len(&self) -> usize {
        match self {
            OpenPack::Memory(b) => b.len(),
            OpenPack::File(f) => f.len,
        }
    }

    fn blob_count(&self) -> usize {
        match self {
            OpenPack::Memory(b) => b.blob_count(),
            OpenPack::File(f) => f.entries.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.blob_count() == 0
    }

    /// Adds a blob; blocks of a spooled pack that filled go to `writes`,
    /// for the caller to write once it has let go of the pack.
    fn add(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        stored: &[u8],
        raw_len: u32,
        writes: &mut Vec<BlockWrite>,
    ) -> std::result::Result<(), StorageError> {
        match self {
            OpenPack::Memory(b) => {
                b.add(id, kind, stored, raw_len);
                Ok(())
            }
            OpenPack::File(f) => f.add(id, kind, stored, raw_len, writes),
        }
    }
}

/// Bytes a spooled pack collects before writing them to its file: whole
/// blocks, so the writes can bypass the page cache.
const SPOOL_BLOCK: usize = 1 << 20;
/// Alignment direct I/O asks of buffer addresses, lengths and offsets
/// (4 KiB covers 512-byte and 4 KiB logical sectors).
const DIRECT_ALIGN: usize = 4096;
/// Spare block buffers a writer keeps: one per thread that may be writing
/// a block, a few.
const SPARE_BLOCKS: usize = 4;
/// Full blocks waiting for the block writer at most.
const BLOCKS_QUEUED: usize = 2;

/// A pack's staging file. Opened with `O_DIRECT` where the file system
/// takes it: a backup writes gigabytes it will not read back, and copying
/// them into the page cache cost more CPU than compressing them (on this
/// project's VM, 2.4 GB: 3-5 s of CPU buffered, 0.25 s direct). On NFS
/// (see [`Spool::direct`]) and where direct I/O is refused (tmpfs) it
/// writes through the page cache.
///
/// A direct write waits for the disk, so a block that fills is handed out
/// ([`BlockWrite`]) and written with the pack's lock released, by the
/// writer's block-writer thread (the last block by the pack's uploader):
/// written under the pack's lock, one thread's disk wait stalled every
/// thread sealing into that pack (a third of a large-file backup's CPU sat
/// idle).
struct SpoolFile {
    path: PathBuf,
    /// The file and whether it is open with `O_DIRECT`; one block is
    /// written at a time.
    file: Mutex<(std::fs::File, bool)>,
    /// Blocks handed out and not yet written, and the first write error.
    state: Mutex<(usize, Option<StorageError>)>,
    written: std::sync::Condvar,
}

impl SpoolFile {
    fn create(spool: &Spool) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = format!("pack-{:032x}.tmp", rand::random::<u128>());
        let path = spool.staging.join(name);
        let open = |flags: i32| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(flags)
                .open(&path)
        };
        let (file, direct) = if !spool.direct {
            (open(0)?, false)
        } else {
            match open(nix::fcntl::OFlag::O_DIRECT.bits()) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => (open(0)?, false),
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            path,
            file: Mutex::new((file, direct)),
            state: Mutex::new((0, None)),
            written: std::sync::Condvar::new(),
        })
    }

    fn direct(&self) -> bool {
        crate::sync::lock(&self.file).1
    }

    /// Writes `block` at `offset`. A file system that accepted `O_DIRECT`
    /// at open but refuses the write gets it again through the page cache.
    fn write_at(&self, block: &[u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut file = crate::sync::lock(&self.file);
        match file.0.write_all_at(block, offset) {
            Err(e) if file.1 && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                *file = (
                    std::fs::OpenOptions::new().write(true).open(&self.path)?,
                    false,
                );
                file.0.write_all_at(block, offset)
            }
            other => other,
        }
    }

    /// Records that a handed-out block was written (or failed with `error`).
    fn block_done(&self, error: Option<StorageError>) {
        let mut state = crate::sync::lock(&self.state);
        state.0 -= 1;
        if let Some(e) = error {
            state.1.get_or_insert(e);
        }
        self.written.notify_all();
    }

    /// Waits until every handed-out block is written; the first error.
    fn wait_written(&self) -> std::result::Result<(), StorageError> {
        let mut state = crate::sync::lock(&self.state);
        while state.0 > 0 {
            state = crate::sync::wait(&self.written, state);
        }
        match &state.1 {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// A full block of a spooled pack, handed out under the pack's lock and
/// written after it. Dropped unwritten (a panic), it counts as failed, so
/// the pack's `finish` does not wait for it forever.
struct BlockWrite {
    file: Arc<SpoolFile>,
    offset: u64,
    /// The bytes are `buf[align..align + len]`, `align` putting them on a
    /// [`DIRECT_ALIGN`] boundary.
    buf: Vec<u8>,
    align: usize,
    pool: Arc<BufferPool>,
    done: bool,
}

impl BlockWrite {
    fn run(mut self) -> std::result::Result<(), StorageError> {
        let result = self
            .file
            .write_at(&self.buf[self.align..], self.offset)
            .map_err(|e| StorageError::from_io(format!("write {}", self.file.path.display()), &e));
        self.done = true;
        self.file.block_done(result.as_ref().err().cloned());
        result
    }
}

impl Drop for BlockWrite {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
        if !self.done {
            let op = format!("write {}", self.file.path.display());
            let e = std::io::Error::other("block write abandoned");
            self.file.block_done(Some(StorageError::from_io(op, &e)));
        }
    }
}

/// A pack written to a staging file as its blobs arrive, hashed a block at
/// a time on the way (its id is the hash of its bytes). The file is
/// created with the first blob and removed if the pack is dropped
/// unfinished.
struct SpoolPack {
    spool: Spool,
    file: Option<Arc<SpoolFile>>,
    /// The block being filled: `block[align..]` are its bytes so far,
    /// `align` putting them on a [`DIRECT_ALIGN`] boundary.
    block: Vec<u8>,
    align: usize,
    /// Bytes handed out in blocks so far: the next block's offset.
    handed: u64,
    hasher: blake3::Hasher,
    len: usize,
    entries: Vec<BlobEntry>,
}

impl SpoolPack {
    fn new(spool: &Spool) -> Self {
        Self {
            spool: spool.clone(),
            file: None,
            block: Vec::new(),
            align: 0,
            handed: 0,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        }
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> StorageError {
        let path = self.file.as_ref().map(|f| f.path.display().to_string());
        let path = path.unwrap_or_else(|| self.spool.staging.display().to_string());
        StorageError::from_io(format!("{what} {path}"), e)
    }

    /// Bytes in the block being filled.
    fn fill(&self) -> usize {
        self.block.len() - self.align
    }

    /// Starts an empty block in a pooled buffer.
    fn start_block(&mut self) {
        self.block = self.spool.blocks.take(SPOOL_BLOCK + DIRECT_ALIGN);
        self.align = self.block.as_ptr().align_offset(DIRECT_ALIGN);
        self.block.resize(self.align, 0);
    }

    /// Appends `bytes` to the pack (the file is created on first use);
    /// each block that fills goes to `writes`.
    fn append(
        &mut self,
        bytes: &[u8],
        writes: &mut Vec<BlockWrite>,
    ) -> std::result::Result<(), StorageError> {
        if self.file.is_none() {
            let file = SpoolFile::create(&self.spool).map_err(|e| self.fail("create in", &e))?;
            self.file = Some(Arc::new(file));
            self.start_block();
            self.append(PACK_MAGIC, writes)?;
        }
        self.len += bytes.len();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (SPOOL_BLOCK - self.fill()).min(rest.len());
            self.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.fill() == SPOOL_BLOCK {
                writes.push(self.hand_out(SPOOL_BLOCK));
            }
        }
        Ok(())
    }

    /// Hashes the block's bytes, pads it with zeros to `n` bytes and hands
    /// it out for writing at the next offset; starts a new block. Hashing
    /// a whole block at a time, not each blob as it comes, lets BLAKE3 hash
    /// many 1 KiB pieces at once.
    fn hand_out(&mut self, n: usize) -> BlockWrite {
        self.hasher.update(&self.block[self.align..]);
        self.block.resize(self.align + n, 0);
        let file = self.file.clone().expect("created by append");
        crate::sync::lock(&file.state).0 += 1;
        let align = self.align;
        let buf = std::mem::take(&mut self.block);
        let offset = self.handed;
        self.handed += n as u64;
        self.start_block();
        BlockWrite {
            file,
            offset,
            buf,
            align,
            pool: self.spool.blocks.clone(),
            done: false,
        }
    }

    fn add(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        stored: &[u8],
        raw_len: u32,
        writes: &mut Vec<BlockWrite>,
    ) -> std::result::Result<(), StorageError> {
        self.append(stored, writes)?;
        self.entries.push(BlobEntry {
            id,
            kind,
            offset: (self.len - stored.len()) as u32,
            stored_len: stored.len() as u32,
            raw_len,
        });
        Ok(())
    }

    /// Appends the trailer, writes the last block (padded to a whole
    /// sector for direct I/O, then cut to the pack's length), waits for
    /// the blocks other threads are writing, syncs the file and renames it
    /// to the pack's object path, syncing its folder so the name survives
    /// a crash before an index segment names it.
    fn finish(mut self, repo: &Repository) -> std::result::Result<IndexedPack, StorageError> {
        let tail = pack_tail(&self.entries, repo.keyring().seal_key());
        let mut writes = Vec::new();
        self.append(&tail, &mut writes)?;
        let spool = self.file.clone().expect("a finished pack has blobs");
        if self.fill() > 0 {
            let n = if spool.direct() {
                self.fill().next_multiple_of(DIRECT_ALIGN)
            } else {
                self.fill()
            };
            writes.push(self.hand_out(n));
        }
        let mut written = Ok(());
        for w in writes {
            written = written.and(w.run());
        }
        written?;
        spool.wait_written()?;
        let id = PackId(Id(*self.hasher.finalize().as_bytes()));
        let object = id.path();
        let dest = self.spool.root.join(&object);
        let len = self.len as u64;
        let stored = (|| {
            let file = crate::sync::lock(&spool.file);
            // Cuts the padding of a last block written directly.
            file.0.set_len(len)?;
            file.0.sync_data()?;
            let folder = dest.parent().expect("pack paths have folders");
            std::fs::create_dir_all(folder)?;
            std::fs::rename(&spool.path, &dest)?;
            std::fs::File::open(folder)?.sync_all()
        })();
        self.file = None;
        if let Err(e) = stored {
            let _ = std::fs::remove_file(&spool.path);
            return Err(StorageError::from_io(format!("write {object}"), &e));
        }
        Ok(IndexedPack {
            id,
            len,
            blobs: std::mem::take(&mut self.entries),
        })
    }
}

impl Drop for SpoolPack {
    fn drop(&mut self) {
        self.spool.blocks.give(std::mem::take(&mut self.block));
        if let Some(spool) = self.file.take() {
            let _ = std::fs::remove_file(&spool.path);
        }
    }
}

/// Trees kept for the local cache are written this many at a time, or
/// once they hold this many bytes: a transaction per tree cost a commit
/// per directory (3% of a small-file backup's CPU, on the thread that
/// assembles trees).
const TREE_CACHE_BATCH: usize = 256;
const TREE_CACHE_BATCH_BYTES: usize = 4 << 20;

#[derive(Default)]
struct TreeBatch {
    trees: Vec<(Id, Vec<u8>)>,
    bytes: usize,
}

/// Accepts sealed blobs and turns them into uploaded, indexed packs.
pub struct PackWriter {
    repo: Repository,
    /// Set on a local repository: packs go through staging files.
    spool: Option<Spool>,
    data: Mutex<OpenPack>,
    meta: Mutex<OpenPack>,
    pending: Mutex<HashSet<BlobId>>,
    tx: Option<Sender<OpenPack>>,
    uploaders: Vec<JoinHandle<()>>,
    /// Full blocks of spooled packs, on their way to the block writer.
    blocks_tx: Option<Sender<BlockWrite>>,
    block_writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    blobs: AtomicU64,
    stored_bytes: AtomicU64,
    written_segments: Mutex<Vec<IndexId>>,
    /// Packs handed to the uploaders (compared with `shared.packs` by `sync`).
    sent: AtomicU64,
    /// Blobs claimed but not yet added (still being sealed elsewhere).
    unsealed: Mutex<HashSet<BlobId>>,
    /// Trees stored by this writer, on their way to the local cache.
    tree_cache: Mutex<TreeBatch>,
}

impl PackWriter {
    /// A writer with `uploaders` upload threads, 0 for the default: two
    /// when packs are spooled (an uploader only syncs and renames one, so a
    /// second costs no memory and lets one pack's sync overlap the next)
    /// and on object stores (two PUTs in flight); one on a local file
    /// system written through memory (throttled), where each uploader holds
    /// a pack buffer and one keeps up.
    pub fn new(repo: &Repository, uploaders: usize) -> Result<Self> {
        let spool = repo.storage().local_dir().and_then(Spool::new);
        let uploaders = match uploaders {
            0 => {
                let location = repo.location();
                let local = !location.contains("://") || location.starts_with("file://");
                if local && spool.is_none() {
                    1
                } else {
                    2
                }
            }
            n => n,
        };
        // A rendezvous channel: a full pack waits for a free uploader, so
        // at most `uploaders` finished packs are held besides the two being
        // filled.
        let (tx, rx) = bounded::<OpenPack>(0);
        let config = repo.config();
        let largest = config.data_pack_size.max(config.meta_pack_size) as usize;
        let shared = Arc::new(Shared {
            // One buffer per uploader and per builder; the buffer of a pack
            // that grew past its target (one oversized blob) is not kept.
            buffers: BufferPool::new(uploaders + 2, largest + largest / 16),
            done: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            packs: AtomicU64::new(0),
            segments: AtomicU64::new(0),
        });
        let handles = (0..uploaders)
            .map(|i| {
                let rx: Receiver<OpenPack> = rx.clone();
                let repo = repo.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-upload-{i}"))
                    .spawn(move || upload_loop(repo, rx, shared))
                    .map_err(Error::spawn("uploader"))
            })
            .collect::<Result<_>>()?;
        // One thread writes the spooled packs' blocks: a direct write waits
        // for the disk, and a sealing thread waiting there leaves its core
        // idle. The queue bounds the blocks in flight.
        let (blocks_tx, block_writer) = match &spool {
            Some(_) => {
                let (tx, rx) = bounded::<BlockWrite>(BLOCKS_QUEUED);
                let shared = shared.clone();
                let handle = std::thread::Builder::new()
                    .name("cairn-spool".into())
                    .spawn(move || {
                        for w in rx {
                            if let Err(e) = w.run() {
                                shared.fail(e);
                            }
                        }
                    })
                    .map_err(Error::spawn("spool writer"))?;
                (Some(tx), Some(handle))
            }
            None => (None, None),
        };
        Ok(Self {
            repo: repo.clone(),
            data: Mutex::new(fresh_pack(&spool, &shared, config.data_pack_size as usize)),
            meta: Mutex::new(fresh_pack(&spool, &shared, config.meta_pack_size as usize)),
            spool,
            pending: Mutex::new(HashSet::new()),
            tx: Some(tx),
            uploaders: handles,
            blocks_tx,
            block_writer,
            shared,
            blobs: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            written_segments: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            unsealed: Mutex::new(HashSet::new()),
            tree_cache: Mutex::default(),
        })
    }

    fn check_error(&self) -> Result<()> {
        match &*crate::sync::lock(&self.shared.error) {
            Some(e) => Err(Error::Storage {
                location: self.repo.location().to_string(),
                source: e.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether the repository or this writer already holds blob `id`.
    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        if crate::sync::lock(&self.pending).contains(id) {
            return Ok(true);
        }
        self.repo.has_blob(id)
    }

    /// Claims `id` for this writer: true when the caller must store the
    /// blob, false when it is already stored or being stored.
    pub fn claim(&self, id: &BlobId) -> Result<bool> {
        if self.repo.has_blob(id)? {
            return Ok(false);
        }
        let claimed = crate::sync::lock(&self.pending).insert(*id);
        if claimed {
            crate::sync::lock(&self.unsealed).insert(*id);
        }
        Ok(claimed)
    }

    /// Waits until every blob claimed before this call has been added
    /// (sealing workers are done with it); `check` reports their failures.
    pub fn drain_claims(&self, check: impl Fn() -> Result<()>) -> Result<()> {
        let waiting: Vec<BlobId> = crate::sync::lock(&self.unsealed).iter().copied().collect();
        for id in waiting {
            while crate::sync::lock(&self.unsealed).contains(&id) {
                check()?;
                self.check_error()?;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// Seals and adds a blob unless it is already stored; returns whether it was added.
    pub fn add_plain(&self, kind: BlobKind, plaintext: &[u8]) -> Result<(BlobId, bool)> {
        let id = self.repo.blob_id(plaintext);
        if !self.claim(&id)? {
            return Ok((id, false));
        }
        let stored = self.repo.seal_blob_with_id(kind, id, plaintext);
        self.add_sealed(kind, id, &stored, plaintext.len() as u32)?;
        if kind == BlobKind::Tree && self.repo.cache().path() != Path::new(":memory:") {
            // The next backup compares against this tree: keep it so that
            // backup does not fetch it again (one range read per directory).
            // Not in an in-memory cache, whose size would grow with the tree.
            let full = {
                let mut batch = crate::sync::lock(&self.tree_cache);
                batch.bytes += plaintext.len();
                batch.trees.push((id.0, plaintext.to_vec()));
                batch.trees.len() >= TREE_CACHE_BATCH || batch.bytes >= TREE_CACHE_BATCH_BYTES
            };
            if full {
                self.flush_tree_cache()?;
            }
        }
        Ok((id, true))
    }

    /// Writes the trees waiting for the local cache in one transaction.
    fn flush_tree_cache(&self) -> Result<()> {
        let trees = {
            let mut batch = crate::sync::lock(&self.tree_cache);
            batch.bytes = 0;
            std::mem::take(&mut batch.trees)
        };
        if trees.is_empty() {
            return Ok(());
        }
        self.repo.cache().put_objects(CachedKind::Tree, &trees)
    }

    /// Adds an already-sealed blob (the caller claimed it).
    pub fn add_sealed(
        &self,
        kind: BlobKind,
        id: BlobId,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<()> {
        self.check_error()?;
        let (builder, target) = if kind.is_metadata() {
            (&self.meta, self.repo.config().meta_pack_size as usize)
        } else {
            (&self.data, self.repo.config().data_pack_size as usize)
        };
        let mut writes = Vec::new();
        {
            let mut b = crate::sync::lock_or_internal(builder, "pack builder")?;
            // A pack closes before the blob that would take it past its
            // target, so its buffer never grows beyond the target (a blob
            // larger than the target gets a pack of its own), or past
            // BLOBS_PER_PACK blobs.
            if !b.is_empty()
                && (b.len() + stored.len() > target || b.blob_count() >= BLOBS_PER_PACK)
            {
                self.close_pack(&mut b, target)?;
            }
            if let Err(e) = b.add(id, kind, stored, raw_len, &mut writes) {
                self.shared.fail(e);
                return self.check_error();
            }
        }
        // Blocks that filled are written with the pack unlocked, by the
        // block writer: this thread goes back to sealing.
        for w in writes {
            let queued = match &self.blocks_tx {
                Some(tx) => tx.send(w).is_ok(),
                None => w.run().map_err(|e| self.shared.fail(e)).is_ok(),
            };
            if !queued {
                self.check_error()?;
                return Err(Error::Internal("pack block writer stopped".into()));
            }
        }
        // In a builder now: a later `sync` uploads and indexes it.
        crate::sync::lock(&self.unsealed).remove(&id);
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.maybe_write_segment()
    }

    /// Hands the pack in `builder` (locked by the caller) to an uploader and
    /// starts a new one. The hand-off waits for a free uploader before the
    /// new pack's buffer is taken, so a writer holds one buffer per builder
    /// and one per uploader: the one just handed over waits for no one.
    fn close_pack(&self, builder: &mut OpenPack, target: usize) -> Result<()> {
        // Counted while the builder lock is held, so `sync` waits for it.
        self.sent.fetch_add(1, Ordering::SeqCst);
        let empty = OpenPack::Memory(PackBuilder::with_buffer(Vec::new()));
        let pack = std::mem::replace(builder, empty);
        let tx = self.tx.as_ref().expect("writer not finished");
        if tx.send(pack).is_err() {
            self.check_error()?;
            return Err(Error::Internal("pack upload threads stopped".into()));
        }
        *builder = fresh_pack(&self.spool, &self.shared, target);
        Ok(())
    }

    /// Writes a segment once enough uploaded packs wait for one.
    fn maybe_write_segment(&self) -> Result<()> {
        let due = {
            let done = crate::sync::lock(&self.shared.done);
            done.len() >= PACKS_PER_SEGMENT
                || done.iter().map(|p| p.blobs.len()).sum::<usize>() >= BLOBS_PER_SEGMENT
        };
        if due {
            self.write_segment()?;
        }
        Ok(())
    }

    /// Sends the partly filled packs to upload now (used at checkpoints).
    pub fn flush_packs(&self) -> Result<()> {
        let config = self.repo.config();
        let targets = [
            (&self.data, config.data_pack_size as usize),
            (&self.meta, config.meta_pack_size as usize),
        ];
        for (builder, target) in targets {
            let mut b = crate::sync::lock_or_internal(builder, "pack builder")?;
            if !b.is_empty() {
                self.close_pack(&mut b, target)?;
            }
        }
        self.maybe_write_segment()
    }

    /// Uploads the partly filled packs, waits until every pack handed to
    /// the uploaders is stored, and indexes them: afterwards every blob
    /// added so far is findable through the index (a checkpoint).
    pub fn sync(&self) -> Result<Option<IndexId>> {
        self.flush_tree_cache()?;
        self.flush_packs()?;
        while self.shared.packs.load(Ordering::SeqCst) < self.sent.load(Ordering::SeqCst) {
            self.check_error()?;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        self.check_error()?;
        self.write_segment()
    }

    /// Writes an index segment naming every pack uploaded since the last one.
    pub fn write_segment(&self) -> Result<Option<IndexId>> {
        let packs = std::mem::take(&mut *crate::sync::lock(&self.shared.done));
        if packs.is_empty() {
            return Ok(None);
        }
        let seg = IndexSegment {
            supersedes: Vec::new(),
            packs,
        };
        let id = self.repo.save_segment(&seg)?;
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.written_segments).push(id);
        // Blobs in an indexed segment are found through the index now.
        let mut pending = crate::sync::lock(&self.pending);
        for p in &seg.packs {
            for b in &p.blobs {
                pending.remove(&b.id);
            }
        }
        Ok(Some(id))
    }

    /// Uploads what is left, waits for every upload and writes the last
    /// index segment.
    pub fn finish(mut self) -> Result<WriteStats> {
        self.flush_tree_cache()?;
        let flushed = self.flush_packs();
        self.stop_threads();
        flushed?;
        self.check_error()?;
        self.write_segment()?;
        Ok(self.stats())
    }

    /// Totals so far.
    pub fn stats(&self) -> WriteStats {
        WriteStats {
            blobs: self.blobs.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            packs: self.shared.packs.load(Ordering::Relaxed),
            segments: self.shared.segments.load(Ordering::Relaxed),
        }
    }
}

impl PackWriter {
    /// Lets the uploaders finish the packs handed to them, then the block
    /// writer the blocks those packs wait for, and joins both.
    fn stop_threads(&mut self) {
        drop(self.tx.take());
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
        drop(self.blocks_tx.take());
        if let Some(h) = self.block_writer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// An empty pack of `target` bytes: a staging file on a local repository,
/// else a reused buffer when one is spare.
fn fresh_pack(spool: &Option<Spool>, shared: &Shared, target: usize) -> OpenPack {
    match spool {
        Some(spool) => OpenPack::File(Box::new(SpoolPack::new(spool))),
        None => OpenPack::Memory(PackBuilder::with_buffer(
            shared.buffers.take(target + target / 16),
        )),
    }
}

/// Stores a finished pack and returns its index entry.
fn store_pack(
    repo: &Repository,
    shared: &Shared,
    pack: OpenPack,
) -> std::result::Result<IndexedPack, StorageError> {
    let builder = match pack {
        OpenPack::File(spooled) => return spooled.finish(repo),
        OpenPack::Memory(builder) => builder,
    };
    let (bytes, blobs) = builder.finish(repo.keyring().seal_key());
    let id = PackId(Id::hash(&bytes));
    let len = bytes.len() as u64;
    let bytes = Bytes::from(bytes);
    let written = repo.storage().write(&id.path(), bytes.clone());
    // The storage is done with the bytes: take the buffer back (no copy
    // when this is the last reference).
    shared.buffers.give(Vec::from(bytes));
    written.map(|()| IndexedPack { id, len, blobs })
}

fn upload_loop(repo: Repository, rx: Receiver<OpenPack>, shared: Arc<Shared>) {
    for pack in rx {
        if crate::sync::lock(&shared.error).is_some() {
            continue;
        }
        match store_pack(&repo, &shared, pack) {
            Ok(indexed) => {
                crate::sync::lock(&shared.done).push(indexed);
                // Counted after `done` holds it, so `sync` sees it indexed.
                shared.packs.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => shared.fail(e),
        }
    }
}
