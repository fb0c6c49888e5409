//! Writes blobs into packs, uploads finished packs on bounded threads and
//! records them in index segments.
//!
//! A pack's bytes go to a [`cairn_storage::ObjectWriter`] as its blobs
//! arrive, a 1 MiB block at a time, hashed on the way (a pack is named by
//! the hash of its bytes); an uploader closes the writer under that name.
//! How the bytes are kept until then is the storage's business: a staging
//! file on a local repository, a memory buffer for an object store.
//!
//! Invariant: an index segment names only packs whose upload succeeded, and
//! a snapshot is written only after the segments naming its blobs.

use crate::bufpool::BufferPool;
use crate::cache::CachedKind;
use crate::crypto::SealKey;
use crate::error::{Error, Result};
use crate::format::index::{IndexSegment, IndexedPack};
use crate::format::pack::{pack_magic, pack_tail, BlobEntry};
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId};
use crate::index_view::Presence;
use crate::repo::Repository;
use crate::sealer::{BUNDLE_MEMBER_MAX, BUNDLE_TARGET};
use cairn_storage::{DynStorage, ObjectWriter, StorageError};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// Plaintext bytes of blobs a writer stores without confirming they are
/// new before it confirms them in one cover pass, at most. A blob is
/// unconfirmed when the index view cannot answer for it without reading
/// more of the index (the data-blob filter may hold it: a duplicate, or a
/// false positive); storing it again is safe (never lost; maintenance
/// reclaims the duplicate), reading every segment for each such blob is
/// not cheap. The first budget is the smaller of this and the stored size
/// of the index (what a pass reads); each pass doubles it.
pub const UNCONFIRMED_BUDGET: u64 = 64 << 20;

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
    /// Blobs added without confirming they were new (see
    /// [`UNCONFIRMED_BUDGET`]), and their plaintext bytes.
    pub unconfirmed_blobs: u64,
    /// Plaintext bytes of the unconfirmed blobs.
    pub unconfirmed_bytes: u64,
    /// Cover passes that confirmed unconfirmed blobs in batches.
    pub confirm_passes: u64,
    /// Of the blobs those passes confirmed, those the repository held
    /// already (stored twice until maintenance removes one copy).
    pub duplicates_stored: u64,
}

/// The blobs a writer stored without confirming they were new.
#[derive(Default)]
struct Unconfirmed {
    /// Since the last cover pass.
    open: Vec<BlobId>,
    /// Their plaintext bytes.
    bytes: u64,
    /// Cover passes made.
    passes: u64,
    /// Totals: blobs and plaintext bytes stored unconfirmed, and the
    /// duplicates among those a pass confirmed.
    blobs: u64,
    total_bytes: u64,
    duplicates: u64,
}

struct Shared {
    /// Spare hash blocks of open packs.
    blocks: BufferPool,
    done: Mutex<Vec<IndexedPack>>,
    /// The first upload failure. Kept, not taken, once set: every caller
    /// waiting on uploads (`sync`, sealing workers, the walker) must see it,
    /// or one that missed it would wait forever for the failed pack.
    error: Mutex<Option<StorageError>>,
    /// Signalled (under `error`) when a pack is stored or an upload fails.
    uploaded: Condvar,
    packs: AtomicU64,
    segments: AtomicU64,
}

impl Shared {
    /// Records a failure to store a pack; the first one is kept.
    fn fail(&self, e: StorageError) {
        crate::sync::lock(&self.error).get_or_insert(e);
        self.uploaded.notify_all();
    }

    /// Wakes `sync` after a pack was counted in `packs`.
    fn stored(&self) {
        let _error = crate::sync::lock(&self.error);
        self.uploaded.notify_all();
    }
}

/// Bytes of a pack hashed and handed to its writer at a time. Hashing
/// whole blocks, not each blob as it comes, lets BLAKE3 hash many 1 KiB
/// pieces at once: blob by blob, a pack of small files took five times as
/// long to hash.
const HASH_BLOCK: usize = 1 << 20;

/// A pack being filled: its bytes go to a storage writer (opened with the
/// first blob) a block at a time, hashed on the way. Dropped unfinished,
/// its writer leaves nothing in the repository.
struct OpenPack {
    /// The pack format version: the repository's.
    version: u32,
    writer: Option<Box<dyn ObjectWriter>>,
    /// What the writer is told to expect (a buffering writer reserves it).
    size_hint: usize,
    /// Bytes not yet hashed and written.
    block: Vec<u8>,
    hasher: blake3::Hasher,
    len: usize,
    entries: Vec<BlobEntry>,
}

impl OpenPack {
    /// An empty pack of `version` of about `target` bytes; allocates
    /// nothing yet.
    fn new(target: usize, version: u32) -> Self {
        Self {
            version,
            writer: None,
            size_hint: target + target / 16,
            block: Vec::new(),
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn blob_count(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.blob_count() == 0
    }

    /// Appends a blob's or a bundle's stored bytes (the first ones open
    /// the writer and write the magic); returns their offset. The caller
    /// adds the entries.
    fn append_stored(
        &mut self,
        storage: &DynStorage,
        blocks: &BufferPool,
        stored: &[u8],
    ) -> std::result::Result<u32, StorageError> {
        if self.writer.is_none() {
            self.writer = Some(storage.clone().writer(self.size_hint)?);
            self.block = blocks.take(HASH_BLOCK);
            self.append(pack_magic(self.version))?;
        }
        let offset = self.len as u32;
        self.append(stored)?;
        Ok(offset)
    }

    /// Adds `what`, stored as `stored`.
    fn add(
        &mut self,
        storage: &DynStorage,
        blocks: &BufferPool,
        what: &Stored<'_>,
        stored: &[u8],
    ) -> std::result::Result<(), StorageError> {
        if matches!(what, Stored::Bundle(_)) && self.version < 2 {
            // The sealer bundles only in repositories of version 2 on.
            return Err(StorageError::new(
                cairn_storage::StorageErrorKind::Other,
                "write a pack",
                "internal error: a bundle for a version 1 pack",
            ));
        }
        let offset = self.append_stored(storage, blocks, stored)?;
        let stored_len = stored.len() as u32;
        match *what {
            Stored::Blob { kind, id, raw_len } => self.entries.push(BlobEntry {
                id,
                kind,
                offset,
                stored_len,
                raw_len,
                inner: None,
            }),
            Stored::Bundle(members) => {
                self.entries
                    .extend(members.iter().map(|&(id, inner, raw_len)| BlobEntry {
                        id,
                        kind: BlobKind::Data,
                        offset,
                        stored_len,
                        raw_len,
                        inner: Some(inner),
                    }))
            }
        }
        Ok(())
    }

    /// Appends `bytes`: whole blocks are hashed and written, the rest
    /// waits in `block`. The middle of a large blob goes out without a copy.
    fn append(&mut self, bytes: &[u8]) -> std::result::Result<(), StorageError> {
        self.len += bytes.len();
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.block.is_empty() && rest.len() >= HASH_BLOCK {
                let (whole, tail) = rest.split_at(HASH_BLOCK);
                self.hasher.update(whole);
                self.writer()?.write(whole)?;
                rest = tail;
                continue;
            }
            let n = (HASH_BLOCK - self.block.len()).min(rest.len());
            self.block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.block.len() == HASH_BLOCK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn writer(&mut self) -> std::result::Result<&mut Box<dyn ObjectWriter>, StorageError> {
        self.writer.as_mut().ok_or_else(|| {
            StorageError::new(
                cairn_storage::StorageErrorKind::Other,
                "write a pack",
                "internal error: bytes for a pack whose writer was never opened",
            )
        })
    }

    /// Hashes and writes the bytes waiting in `block`.
    fn flush(&mut self) -> std::result::Result<(), StorageError> {
        let block = std::mem::take(&mut self.block);
        self.hasher.update(&block);
        let written = self.writer().and_then(|w| w.write(&block));
        self.block = block;
        self.block.clear();
        written
    }

    /// Appends the trailer and stores the pack under its id; returns its
    /// index entry.
    fn finish(
        mut self,
        seal_key: &SealKey,
        blocks: &BufferPool,
    ) -> std::result::Result<IndexedPack, StorageError> {
        let tail = pack_tail(&self.entries, seal_key, self.version);
        self.append(&tail)?;
        self.flush()?;
        blocks.give(std::mem::take(&mut self.block));
        let id = PackId(Id(*self.hasher.finalize().as_bytes()));
        self.writer()?.close(&id.path())?;
        Ok(IndexedPack {
            id,
            len: self.len as u64,
            blobs: std::mem::take(&mut self.entries),
        })
    }
}

/// Trees kept for the local cache are written this many at a time, or
/// once they hold this many bytes: a transaction per tree cost a commit
/// per directory (3% of a small-file backup's CPU, on the thread that
/// assembles trees).
const TREE_CACHE_BATCH: usize = 256;
const TREE_CACHE_BATCH_BYTES: usize = 4 << 20;

/// Capacity of a bundle buffer: a full bundle's plaintext (its target
/// and the member that took it past), or its sealed bytes should they not
/// compress (zstd's bound, the envelope byte, nonce and tag).
const BUNDLE_BUFFER: usize = BUNDLE_TARGET + BUNDLE_MEMBER_MAX + (8 << 10);

/// What a pack gets from one sealed object: a blob stored on its own, or
/// the members of a bundle (each member's id, start in the bundle's
/// plaintext and length; all data blobs).
enum Stored<'a> {
    Blob {
        kind: BlobKind,
        id: BlobId,
        raw_len: u32,
    },
    Bundle(&'a [(BlobId, u32, u32)]),
}

impl Stored<'_> {
    /// The blobs it holds.
    fn ids(&self) -> impl Iterator<Item = BlobId> + '_ {
        let (one, many) = match self {
            Stored::Blob { id, .. } => (Some(*id), &[][..]),
            Stored::Bundle(members) => (None, *members),
        };
        one.into_iter().chain(many.iter().map(|m| m.0))
    }

    /// How many blobs it holds.
    fn count(&self) -> usize {
        match self {
            Stored::Blob { .. } => 1,
            Stored::Bundle(members) => members.len(),
        }
    }
}

/// Small data blobs gathered for one bundle (see
/// [`crate::sealer::BUNDLE_MEMBER_MAX`]): their plaintexts back to back.
#[derive(Default)]
struct Bundle {
    plain: Vec<u8>,
    /// Each member's id, start in `plain` and length.
    members: Vec<(BlobId, u32, u32)>,
}

#[derive(Default)]
struct TreeBatch {
    trees: Vec<(Id, Vec<u8>)>,
    bytes: usize,
}

/// Accepts sealed blobs and turns them into uploaded, indexed packs.
pub struct PackWriter {
    repo: Repository,
    data: Mutex<OpenPack>,
    meta: Mutex<OpenPack>,
    pending: Mutex<HashSet<BlobId>>,
    tx: Option<Sender<OpenPack>>,
    uploaders: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    blobs: AtomicU64,
    stored_bytes: AtomicU64,
    written_segments: Mutex<Vec<IndexId>>,
    /// Packs handed to the uploaders (compared with `shared.packs` by `sync`).
    sent: AtomicU64,
    /// Blobs claimed but not yet added (still being sealed elsewhere).
    claims: Mutex<Claims>,
    /// Signalled (under `claims`) when a claimed blob is added or fails to be.
    sealed: Condvar,
    /// Trees stored by this writer, on their way to the local cache.
    tree_cache: Mutex<TreeBatch>,
    /// Small data blobs claimed and waiting for their bundle to fill.
    bundle: Mutex<Bundle>,
    /// Buffers for bundles' plaintext and sealed bytes: each is larger
    /// than glibc's mmap threshold in a backup (see cairn's `malloc.rs`),
    /// so a fresh one per bundle was a mapping and a page fault per 4 KiB
    /// (a third more system time on the real source tree).
    bundle_bufs: BufferPool,
    /// Blobs stored without confirming they were new.
    unconfirmed: Mutex<Unconfirmed>,
    /// Held while a cover pass confirms unconfirmed blobs (one at a time).
    confirming: Mutex<()>,
    /// The packs this writer indexed: its own copies are not duplicates.
    own_packs: Mutex<HashSet<PackId>>,
    /// Whether blobs may be stored unconfirmed ([`PackWriter::for_backup`]).
    unconfirmed_allowed: bool,
}

/// Claimed blobs not yet in a pack.
#[derive(Default)]
struct Claims {
    unsealed: HashSet<BlobId>,
    /// Whether adding a claimed blob failed: it will never arrive.
    failed: bool,
    /// Threads waiting in [`PackWriter::drain_claims`]: a blob's arrival
    /// wakes them only when there are any (a wake is a system call even
    /// when nobody waits, and arrivals come once per new blob).
    waiters: usize,
}

impl PackWriter {
    /// A writer with `uploaders` upload threads, 0 for the default of two:
    /// one pack's close (a sync and a rename, or a PUT) overlaps the next,
    /// and a pack's bytes are held by its storage writer (a staging file,
    /// or one buffer per pack on an object store), not by the uploader.
    pub fn new(repo: &Repository, uploaders: usize) -> Result<Self> {
        let uploaders = match uploaders {
            0 => 2,
            n => n,
        };
        // A rendezvous channel: a full pack waits for a free uploader, so
        // at most `uploaders` finished packs are held besides the two being
        // filled.
        let (tx, rx) = bounded::<OpenPack>(0);
        let config = repo.config();
        let shared = Arc::new(Shared {
            // One hash block per uploader and per open pack.
            blocks: BufferPool::new(uploaders + 2, HASH_BLOCK),
            done: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            uploaded: Condvar::new(),
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
        Ok(Self {
            repo: repo.clone(),
            data: Mutex::new(OpenPack::new(
                config.data_pack_size as usize,
                repo.format_version(),
            )),
            meta: Mutex::new(OpenPack::new(
                config.meta_pack_size as usize,
                repo.format_version(),
            )),
            pending: Mutex::new(HashSet::new()),
            tx: Some(tx),
            uploaders: handles,
            shared,
            blobs: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            written_segments: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            claims: Mutex::default(),
            sealed: Condvar::new(),
            tree_cache: Mutex::default(),
            bundle: Mutex::default(),
            bundle_bufs: BufferPool::new(4, BUNDLE_BUFFER),
            unconfirmed: Mutex::default(),
            confirming: Mutex::new(()),
            own_packs: Mutex::default(),
            unconfirmed_allowed: false,
        })
    }

    /// A backup's writer: as [`PackWriter::new`], but a chunk or tree the index
    /// view cannot answer for cheaply is stored unconfirmed, up to a
    /// budget, and confirmed with others in one pass (see
    /// [`PackWriter::claim`]). A duplicate stored this way costs space
    /// until maintenance, never data; copy and repair, which promise to
    /// add nothing a repository holds, keep exact answers.
    pub fn for_backup(repo: &Repository, uploaders: usize) -> Result<Self> {
        let mut writer = Self::new(repo, uploaders)?;
        writer.unconfirmed_allowed = true;
        Ok(writer)
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

    /// Claims `id` (`len` plaintext bytes) for this writer: true when the
    /// caller must store the blob, false when it is already stored or
    /// being stored. In a backup's writer ([`PackWriter::for_backup`]) a
    /// blob the index view cannot answer for without reading more of the
    /// index is stored unconfirmed, up to a budget
    /// ([`UNCONFIRMED_BUDGET`]); past it, the blobs stored so far and this
    /// one are confirmed in one cover pass. Other writers ask
    /// [`Repository::has_blob`], exact. "Already stored" is only ever a
    /// copy outside every `gc/` plan and `damage/` record.
    pub fn claim(&self, id: &BlobId, len: usize) -> Result<bool> {
        let unconfirmed = if !self.unconfirmed_allowed {
            if self.repo.has_blob(id)? {
                return Ok(false);
            }
            false
        } else {
            match self.repo.presence(id, &HashSet::new())? {
                Presence::Present => return Ok(false),
                Presence::Absent => false,
                // Being stored by this writer already (a chunk repeated
                // in the backup): no pass for it.
                Presence::Unknown if crate::sync::lock(&self.pending).contains(id) => {
                    return Ok(false)
                }
                Presence::Unknown => match self.confirm(id, len as u64)? {
                    Some(true) => return Ok(false),
                    Some(false) => false,
                    None => true,
                },
            }
        };
        let claimed = crate::sync::lock(&self.pending).insert(*id);
        if claimed {
            crate::sync::lock(&self.claims).unsealed.insert(*id);
            if unconfirmed {
                let mut u = crate::sync::lock(&self.unconfirmed);
                u.open.push(*id);
                u.bytes += len as u64;
                u.blobs += 1;
                u.total_bytes += len as u64;
            }
        }
        Ok(claimed)
    }

    /// The plaintext bytes stored unconfirmed that make a cover pass due.
    fn unconfirmed_budget(&self, passes: u64) -> u64 {
        let pass = self.repo.index_view().listed_bytes();
        UNCONFIRMED_BUDGET
            .min(pass)
            .saturating_mul(1 << passes.min(16))
    }

    /// Whether `len` more unconfirmed bytes fit the budget.
    fn fits_unconfirmed(&self, len: u64) -> bool {
        let u = crate::sync::lock(&self.unconfirmed);
        u.bytes + len <= self.unconfirmed_budget(u.passes)
    }

    /// For blob `id`, which the index view cannot answer for cheaply:
    /// `None` to store it unconfirmed (within the budget), else whether
    /// the repository holds it, found by one cover pass over the blobs
    /// stored unconfirmed since the last pass and this one. When most of
    /// them were duplicates (data the repository holds: hits will keep
    /// coming), the index is ingested in full instead, where every later
    /// answer is exact.
    fn confirm(&self, id: &BlobId, len: u64) -> Result<Option<bool>> {
        if self.fits_unconfirmed(len) {
            return Ok(None);
        }
        let _one = crate::sync::lock(&self.confirming);
        // A pass made while this thread waited may have answered, or
        // made room.
        match self.repo.presence(id, &HashSet::new())? {
            Presence::Present => return Ok(Some(true)),
            Presence::Absent => return Ok(Some(false)),
            Presence::Unknown => {}
        }
        if self.fits_unconfirmed(len) {
            return Ok(None);
        }
        let mut batch = {
            let mut u = crate::sync::lock(&self.unconfirmed);
            u.bytes = 0;
            std::mem::take(&mut u.open)
        };
        batch.push(*id);
        let report = self.repo.cover_blobs(&batch.iter().copied().collect())?;
        // Duplicates: blobs stored unconfirmed that have a copy other
        // than this writer's own.
        let own = crate::sync::lock(&self.own_packs).clone();
        let stored = &batch[..batch.len() - 1];
        let mut duplicates = 0u64;
        for b in stored {
            if self.repo.presence(b, &own)? == Presence::Present {
                duplicates += 1;
            }
        }
        let present = self.repo.presence(id, &HashSet::new())? == Presence::Present;
        let passes = {
            let mut u = crate::sync::lock(&self.unconfirmed);
            u.passes += 1;
            u.duplicates += duplicates;
            u.passes
        };
        tracing::debug!(
            "cover pass {passes} confirmed {} blobs stored unconfirmed ({duplicates} held by the repository already) and one more ({}): {report:?}",
            stored.len(),
            if present { "held" } else { "new" }
        );
        let hits = duplicates + u64::from(present);
        if hits * 2 > batch.len() as u64 && !self.repo.index_view().is_synced() {
            tracing::info!(
                "{hits} of {} blobs confirmed were in the repository already: reading the index in full to deduplicate the rest exactly",
                batch.len()
            );
            self.repo.index()?;
        }
        Ok(Some(present))
    }

    /// Waits until every blob claimed before this call has been added
    /// (sealing workers are done with it). Once adding one failed, returns
    /// the failure: `check` reports the sealing workers', then this
    /// writer's own.
    pub fn drain_claims(&self, check: impl Fn() -> Result<()>) -> Result<()> {
        let mut claims = crate::sync::lock(&self.claims);
        let waiting: Vec<BlobId> = claims.unsealed.iter().copied().collect();
        for id in waiting {
            while claims.unsealed.contains(&id) {
                if claims.failed {
                    drop(claims);
                    check()?;
                    self.check_error()?;
                    return Err(Error::Internal(
                        "a blob claimed by this writer could not be stored".into(),
                    ));
                }
                // A claimed blob may wait in the open bundle: seal it now.
                // One added after this look wakes this thread (see
                // `add_to_bundle`), which then looks again.
                if !crate::sync::lock(&self.bundle).members.is_empty() {
                    drop(claims);
                    self.flush_bundle()?;
                    claims = crate::sync::lock(&self.claims);
                    continue;
                }
                claims.waiters += 1;
                claims = crate::sync::wait(&self.sealed, claims);
                claims.waiters -= 1;
            }
        }
        Ok(())
    }

    /// Seals and adds a blob unless it is already stored; returns whether it was added.
    pub fn add_plain(&self, kind: BlobKind, plaintext: &[u8]) -> Result<(BlobId, bool)> {
        let id = self.repo.blob_id(plaintext);
        if !self.claim(&id, plaintext.len())? {
            return Ok((id, false));
        }
        self.store(kind, id, plaintext)?;
        if kind == BlobKind::Tree && !self.repo.cache().is_memory() {
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

    /// Stores blob `id` (the caller claimed it, or needs no claim) from
    /// its plaintext: into the open bundle when the sealer bundles it,
    /// else sealed on its own.
    pub fn store(&self, kind: BlobKind, id: BlobId, plaintext: &[u8]) -> Result<()> {
        if self.repo.sealer().bundles(kind, plaintext) {
            return self.add_to_bundle(id, plaintext);
        }
        let stored = self.repo.seal_blob_with_id(kind, id, plaintext);
        self.add_sealed(kind, id, &stored, plaintext.len() as u32)
    }

    /// Adds a claimed small data blob to the open bundle (see
    /// [`crate::sealer::BlobSealer::bundles`]); the bundle is sealed and
    /// added to a pack once it holds [`BUNDLE_TARGET`] bytes, by the
    /// thread that filled it, or by `drain_claims`, `flush_packs` or
    /// `finish`. Its blobs stay claimed until then.
    pub fn add_to_bundle(&self, id: BlobId, plaintext: &[u8]) -> Result<()> {
        if let Err(e) = self.check_error() {
            // Never to be stored: `drain_claims` must not wait for it.
            self.release(std::iter::once(id), false);
            return Err(e);
        }
        let full = {
            let mut b = crate::sync::lock(&self.bundle);
            if b.plain.capacity() == 0 {
                b.plain = self.bundle_bufs.take(BUNDLE_BUFFER);
            }
            let inner = b.plain.len() as u32;
            b.plain.extend_from_slice(plaintext);
            b.members.push((id, inner, plaintext.len() as u32));
            (b.plain.len() >= BUNDLE_TARGET).then(|| std::mem::take(&mut *b))
        };
        match full {
            Some(bundle) => self.seal_bundle(bundle),
            None => {
                // A thread draining the claims seals the bundle for it.
                let claims = crate::sync::lock(&self.claims);
                if claims.waiters > 0 {
                    self.sealed.notify_all();
                }
                Ok(())
            }
        }
    }

    /// Seals the open bundle now, if it holds any blob.
    fn flush_bundle(&self) -> Result<()> {
        let bundle = std::mem::take(&mut *crate::sync::lock(&self.bundle));
        self.seal_bundle(bundle)
    }

    /// Seals `bundle` and adds it to a data pack; its blobs stop being
    /// claimed.
    fn seal_bundle(&self, bundle: Bundle) -> Result<()> {
        if bundle.members.is_empty() {
            return Ok(());
        }
        let mut stored = self.bundle_bufs.take(BUNDLE_BUFFER);
        self.repo
            .sealer()
            .seal_bundle_into(&bundle.plain, &mut stored);
        self.add_stored(&Stored::Bundle(&bundle.members), &stored)?;
        self.bundle_bufs.give(stored);
        self.bundle_bufs.give(bundle.plain);
        Ok(())
    }

    /// Ends the claims on `ids`: added to a pack (`added`), or never to
    /// be; either way `drain_claims` stops waiting for them.
    fn release(&self, ids: impl Iterator<Item = BlobId>, added: bool) {
        let mut claims = crate::sync::lock(&self.claims);
        if added {
            for id in ids {
                claims.unsealed.remove(&id);
            }
        } else {
            claims.failed = true;
        }
        if claims.waiters > 0 {
            self.sealed.notify_all();
        }
    }

    /// Adds an already-sealed blob (the caller claimed it).
    pub fn add_sealed(
        &self,
        kind: BlobKind,
        id: BlobId,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<()> {
        self.add_stored(&Stored::Blob { kind, id, raw_len }, stored)
    }

    /// Adds `what` to a pack; its blobs stop being claimed.
    fn add_stored(&self, what: &Stored<'_>, stored: &[u8]) -> Result<()> {
        let added = self.add_to_pack(what, stored);
        // In a pack now (a later `sync` uploads and indexes it), or never.
        self.release(what.ids(), added.is_ok());
        added?;
        self.blobs.fetch_add(what.count() as u64, Ordering::Relaxed);
        self.stored_bytes
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.maybe_write_segment()
    }

    fn add_to_pack(&self, what: &Stored<'_>, stored: &[u8]) -> Result<()> {
        self.check_error()?;
        let metadata = matches!(what, Stored::Blob { kind, .. } if kind.is_metadata());
        let (builder, target) = if metadata {
            (&self.meta, self.repo.config().meta_pack_size as usize)
        } else {
            (&self.data, self.repo.config().data_pack_size as usize)
        };
        let mut b = crate::sync::lock_or_internal(builder, "pack builder")?;
        // A pack closes before the blob that would take it past its
        // target, so it never grows beyond the target (a blob larger than
        // the target gets a pack of its own), or past BLOBS_PER_PACK blobs.
        if !b.is_empty()
            && (b.len() + stored.len() > target || b.blob_count() + what.count() > BLOBS_PER_PACK)
        {
            self.close_pack(&mut b, target)?;
        }
        let storage = self.repo.storage();
        if let Err(e) = b.add(storage, &self.shared.blocks, what, stored) {
            self.shared.fail(e);
            return self.check_error();
        }
        Ok(())
    }

    /// Hands the pack in `builder` (locked by the caller) to an uploader and
    /// starts a new one. The hand-off waits for a free uploader; the new
    /// pack opens its writer with its first blob, after the hand-off, so a
    /// writer holds one open pack per builder and one per uploader.
    fn close_pack(&self, builder: &mut OpenPack, target: usize) -> Result<()> {
        // Counted while the builder lock is held, so `sync` waits for it.
        self.sent.fetch_add(1, Ordering::SeqCst);
        let pack = std::mem::replace(builder, OpenPack::new(target, self.repo.format_version()));
        let Some(tx) = self.tx.as_ref() else {
            return Err(Error::Internal("pack writer already finished".into()));
        };
        if tx.send(pack).is_err() {
            self.check_error()?;
            return Err(Error::Internal("pack upload threads stopped".into()));
        }
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

    /// Seals the open bundle and sends the partly filled packs to upload
    /// now (used at checkpoints).
    pub fn flush_packs(&self) -> Result<()> {
        self.flush_bundle()?;
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
        {
            let mut error = crate::sync::lock(&self.shared.error);
            while error.is_none()
                && self.shared.packs.load(Ordering::SeqCst) < self.sent.load(Ordering::SeqCst)
            {
                error = crate::sync::wait(&self.shared.uploaded, error);
            }
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
        crate::sync::lock(&self.own_packs).extend(packs.iter().map(|p| p.id));
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
        let stats = self.stats();
        if stats.unconfirmed_blobs > 0 {
            tracing::info!(
                "{} blobs ({} bytes) were stored without confirming they were new (the local cache does not hold the index in full, and its filter of data blobs may hold them); {} cover passes found {} duplicates among them; maintenance removes duplicate copies",
                stats.unconfirmed_blobs,
                stats.unconfirmed_bytes,
                stats.confirm_passes,
                stats.duplicates_stored
            );
        }
        Ok(stats)
    }

    /// Totals so far.
    pub fn stats(&self) -> WriteStats {
        let u = crate::sync::lock(&self.unconfirmed);
        WriteStats {
            blobs: self.blobs.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            packs: self.shared.packs.load(Ordering::Relaxed),
            segments: self.shared.segments.load(Ordering::Relaxed),
            unconfirmed_blobs: u.blobs,
            unconfirmed_bytes: u.total_bytes,
            confirm_passes: u.passes,
            duplicates_stored: u.duplicates,
        }
    }
}

impl PackWriter {
    /// Lets the uploaders finish the packs handed to them and joins them.
    fn stop_threads(&mut self) {
        drop(self.tx.take());
        for h in self.uploaders.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn upload_loop(repo: Repository, rx: Receiver<OpenPack>, shared: Arc<Shared>) {
    for pack in rx {
        if crate::sync::lock(&shared.error).is_some() {
            continue;
        }
        match pack.finish(repo.keyring().seal_key(), &shared.blocks) {
            Ok(indexed) => {
                crate::sync::lock(&shared.done).push(indexed);
                // Counted after `done` holds it, so `sync` sees it indexed.
                shared.packs.fetch_add(1, Ordering::SeqCst);
                shared.stored();
            }
            Err(e) => shared.fail(e),
        }
    }
}
