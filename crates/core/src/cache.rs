//! The local SQLite cache: merged index, fetched trees and snapshots.
//!
//! The cache is only a cache. Every row can be rebuilt from the repository;
//! a cache of another repository or a damaged file (found at open or by
//! any later query) is discarded and rebuilt, and cached blobs are
//! re-hashed before use.

use crate::error::{Error, Result};
use crate::format::pack::BlobEntry;
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

/// Schema version of the cache file; a different one is rebuilt.
/// 2: `segments.full` (a segment ingested for tree and list locations
/// only, see [`Cache::ingest`]); 3: `blobs.inner` (bundled blobs).
const SCHEMA_VERSION: i64 = 3;

/// Stores one object (`put_object`, `put_objects`).
const PUT_OBJECT: &str = "INSERT OR REPLACE INTO objects(id, kind, data) VALUES (?1, ?2, ?3)";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, full INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS packs(seq INTEGER PRIMARY KEY, id BLOB NOT NULL, seg INTEGER NOT NULL, len INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS packs_seg ON packs(seg);
CREATE INDEX IF NOT EXISTS packs_id ON packs(id);
CREATE TABLE IF NOT EXISTS blobs(id BLOB NOT NULL, pack INTEGER NOT NULL, kind INTEGER NOT NULL,
    offset INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
    inner INTEGER, PRIMARY KEY(id, pack)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS objects(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, data BLOB NOT NULL);
";

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack holding it.
    pub pack: PackId,
    /// Kind.
    pub kind: BlobKind,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored length.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Where its plaintext starts in its bundle's, for a bundled blob
    /// (see [`crate::format::pack::BlobEntry::inner`]).
    pub inner: Option<u32>,
}

impl BlobLocation {
    /// The stored bytes to read: the blob's, or its bundle's.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset as u64..self.offset as u64 + self.stored_len as u64
    }
}

/// Reader connections kept open between lookups (one per busy thread).
const MAX_IDLE_READERS: usize = 16;

/// Object kinds kept in the `objects` table.
#[derive(Debug, Clone, Copy)]
pub enum CachedKind {
    /// Tree blob plaintext.
    Tree = 1,
    /// Sealed snapshot bytes.
    Snapshot = 2,
}

/// Most times one process rebuilds a damaged cache; past it, cache errors
/// are reported (something keeps damaging the file, or the disk is full).
const MAX_REBUILDS: u32 = 2;

/// Rebuilds the index of a fresh cache from the repository (installed by
/// the repository, see [`Cache::set_refill`]).
pub type Refill = Box<dyn Fn(&Cache) -> Result<()> + Send + Sync>;

/// The cache database.
///
/// Every query runs under `db`'s read lock; a query that fails because the
/// file is damaged (any SQLite error but "busy", "locked" and "disk full",
/// or a row that does not decode) triggers one rebuild: a new cache file is
/// filled from the repository beside the damaged one, then swapped in under
/// the write lock, and the query runs again. The damaged file is discarded
/// with one warning; the cache is only a cache.
pub struct Cache {
    db: RwLock<Db>,
    path: PathBuf,
    repo_id: Id,
    fingerprint: Vec<u8>,
    /// Bumped by every rebuild: a failure seen before a rebuild another
    /// thread finished needs no rebuild of its own.
    generation: AtomicU64,
    rebuilds: AtomicU32,
    rebuild_lock: Mutex<()>,
    refill: OnceLock<Refill>,
    /// Bumped after every write through this handle: a [`ReadSession`]'s
    /// snapshot serves only while it is unchanged.
    epoch: AtomicU64,
}

thread_local! {
    /// This thread's [`ReadSession`], if one is open.
    static SESSION: std::cell::RefCell<Option<Session>> = const { std::cell::RefCell::new(None) };
}

/// The state of a [`ReadSession`]: the cache it reads (by address), and
/// once a lookup ran, its connection inside an open read transaction.
struct Session {
    cache: usize,
    open: Option<OpenSession>,
}

struct OpenSession {
    conn: Connection,
    generation: u64,
    epoch: u64,
}

/// While the guard lives, this thread's dedup questions that find nothing
/// share one read transaction ([`Cache::session`]).
///
/// A query on its own takes and releases SQLite's file locks (two `fcntl`
/// calls and an `fstat`), which cost more than a lookup of a blob: a
/// backup reader asks once per new chunk. Inside a session,
/// [`Cache::contains`] and [`Cache::locations`] look first in the
/// session's snapshot (the one of its first lookup, kept while no write
/// went through this handle). An answer that finds nothing is taken from
/// it; one that finds the blob is asked again in a transaction of its
/// own. So every "present" answer is exactly as fresh as without a
/// session, and a stale snapshot can only miss a blob another process
/// added meanwhile: the caller stores it again, which costs space until
/// maintenance, never data.
pub struct ReadSession<'a> {
    cache: Option<&'a Cache>,
}

impl Drop for ReadSession<'_> {
    fn drop(&mut self) {
        let Some(cache) = self.cache else {
            return;
        };
        let open = SESSION.with(|s| s.borrow_mut().take()).and_then(|s| s.open);
        if let Some(open) = open {
            let db = crate::sync::read(&cache.db);
            cache.end_session(&db, open);
        }
    }
}

/// The open connections to one cache file.
struct Db {
    conn: Mutex<Connection>,
    /// Idle extra connections for lookups: backup threads look blobs up
    /// concurrently, and behind the one connection's lock they queued
    /// (in WAL mode readers do not block each other or the writer).
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.path.display())
    }
}

/// Why a cache query failed.
#[derive(Debug)]
enum Fail {
    Sql(rusqlite::Error),
    /// A row that does not decode (an id of the wrong length, an unknown kind).
    Malformed(&'static str),
    /// The caller's own failure inside a transaction (a segment being
    /// streamed in that does not decode): the transaction is rolled back
    /// and the error returned as it is.
    Caller(Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Sql(e) => e.fmt(f),
            Fail::Malformed(what) => f.write_str(what),
            Fail::Caller(e) => e.fmt(f),
        }
    }
}

impl Fail {
    /// Whether the failure says the file is damaged (and a rebuild helps),
    /// rather than another process holding a lock for too long or a full
    /// disk.
    fn is_damage(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull};
        match self {
            Fail::Sql(rusqlite::Error::SqliteFailure(e, _)) => {
                !matches!(e.code, DatabaseBusy | DatabaseLocked | DiskFull)
            }
            Fail::Sql(_) | Fail::Malformed(_) => true,
            Fail::Caller(_) => false,
        }
    }
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Cache {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A 32-byte id from a row, or [`Fail::Malformed`].
fn id32(bytes: &[u8], what: &'static str) -> Result<Id, Fail> {
    <[u8; 32]>::try_from(bytes)
        .map(Id)
        .map_err(|_| Fail::Malformed(what))
}

fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

impl Cache {
    /// Opens (or creates) the cache for repository `repo_id` at `path`;
    /// `None` keeps it in memory. A file belonging to another repository,
    /// of another schema, or unreadable as SQLite is deleted and recreated.
    pub fn open(path: Option<&Path>, repo_id: &Id, fingerprint: &[u8]) -> Result<Self> {
        let Some(path) = path else {
            return Self::create(None, repo_id, fingerprint);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        match Self::create(Some(path), repo_id, fingerprint) {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!(
                    "discarding local cache {}: {e}; rebuilding it",
                    path.display()
                );
                remove_files(path);
                Self::create(Some(path), repo_id, fingerprint)
            }
        }
    }

    fn create(path: Option<&Path>, repo_id: &Id, fingerprint: &[u8]) -> Result<Self> {
        let path = path.unwrap_or(Path::new(MEMORY));
        Self::with_db(Db::open(path, "WAL")?, path, repo_id, fingerprint)
    }

    /// A cache on `db`, whose schema is created or checked.
    fn with_db(db: Db, path: &Path, repo_id: &Id, fingerprint: &[u8]) -> Result<Self> {
        let cache = Cache {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            repo_id: *repo_id,
            fingerprint: fingerprint.to_vec(),
            generation: AtomicU64::new(0),
            rebuilds: AtomicU32::new(0),
            rebuild_lock: Mutex::new(()),
            refill: OnceLock::new(),
            epoch: AtomicU64::new(0),
        };
        cache.init_schema()?;
        Ok(cache)
    }

    /// Installs what fills a rebuilt cache's index (the repository's
    /// segments); without it a damaged cache is reported, not rebuilt.
    pub fn set_refill(&self, refill: Refill) {
        let _ = self.refill.set(refill);
    }

    /// Whether the cache lives in memory for one command (`--no-cache`).
    pub fn is_memory(&self) -> bool {
        self.path == Path::new(MEMORY)
    }

    fn error(&self, fail: Fail) -> Error {
        if let Fail::Caller(e) = fail {
            return e;
        }
        Error::Cache {
            path: self.path.clone(),
            reason: fail.to_string(),
        }
    }

    /// Runs `op` on the open database; on damage, rebuilds once and runs
    /// it again. `op` may run twice, so it must not have side effects
    /// outside the database.
    fn run<T>(&self, op: impl Fn(&Db) -> Result<T, Fail>) -> Result<T> {
        let (generation, result) = {
            let db = crate::sync::read(&self.db);
            (self.generation.load(Ordering::Acquire), op(&db))
        };
        match result {
            Ok(v) => Ok(v),
            Err(fail) if fail.is_damage() => {
                self.recover(generation, fail)?;
                let db = crate::sync::read(&self.db);
                op(&db).map_err(|f| self.error(f))
            }
            Err(fail) => Err(self.error(fail)),
        }
    }

    /// Runs `f` on the main connection (see [`Cache::run`]).
    fn write<T>(&self, f: impl Fn(&mut Connection) -> Result<T, Fail>) -> Result<T> {
        let out = self.run(|db| f(&mut crate::sync::lock(&db.conn)));
        // This handle's own writes are seen by the next lookup of a session.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        out
    }

    /// Opens a [`ReadSession`] on this thread: until the guard drops, its
    /// dedup questions that find nothing share one read transaction. A
    /// no-op for an in-memory cache (one connection) and inside another
    /// session.
    pub fn session(&self) -> ReadSession<'_> {
        if self.is_memory() {
            return ReadSession { cache: None };
        }
        let opened = SESSION.with(|s| {
            let mut slot = s.borrow_mut();
            if slot.is_some() {
                return false;
            }
            *slot = Some(Session {
                cache: self as *const Cache as usize,
                open: None,
            });
            true
        });
        ReadSession {
            cache: opened.then_some(self),
        }
    }

    /// Ends a session's transaction and gives its connection back to the
    /// idle readers, under `db`'s read lock, where the generation is that
    /// of `db`'s file: a connection to a file a rebuild replaced never
    /// joins the new file's readers.
    fn end_session(&self, db: &Db, open: OpenSession) {
        if open.conn.execute_batch("COMMIT").is_err()
            || open.generation != self.generation.load(Ordering::Acquire)
        {
            return;
        }
        let mut idle = crate::sync::lock(&db.readers);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(open.conn);
        }
    }

    /// Runs the lookup `f` in this thread's session on this cache, if one
    /// is open: in its transaction while that is current, else in a new
    /// one. `None` when there is no session, or `f` failed in it (the
    /// caller runs `f` the ordinary way, which rebuilds a damaged cache).
    /// Only for answers the caller takes when they find nothing (see
    /// [`ReadSession`]).
    fn read_in_session<T>(&self, f: &impl Fn(&Connection) -> Result<T, Fail>) -> Option<T> {
        let me = self as *const Cache as usize;
        // Taken out of the slot while `f` runs, so that a lookup `f` makes
        // itself runs the ordinary way.
        let open = SESSION.with(|s| match s.borrow_mut().as_mut() {
            Some(session) if session.cache == me => Some(session.open.take()),
            _ => None,
        })?;
        // Held while `f` runs, as for any query: a rebuild swaps the file
        // under the write lock, and the generation read here is the file's.
        let db = crate::sync::read(&self.db);
        let generation = self.generation.load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let open = match open {
            Some(o) if o.generation == generation && o.epoch == epoch => o,
            stale => {
                if let Some(o) = stale {
                    self.end_session(&db, o);
                }
                self.begin_session(&db, generation, epoch)?
            }
        };
        let out = f(&open.conn);
        drop(db);
        match out {
            Ok(v) => {
                SESSION.with(|s| {
                    if let Some(session) = s.borrow_mut().as_mut() {
                        session.open = Some(open);
                    }
                });
                Some(v)
            }
            // Rolled back as the connection drops.
            Err(_) => None,
        }
    }

    /// A reader connection of `db` in a new read transaction.
    fn begin_session(&self, db: &Db, generation: u64, epoch: u64) -> Option<OpenSession> {
        let idle = crate::sync::lock(&db.readers).pop();
        let conn = match idle {
            Some(c) => c,
            None => Db::connect(&self.path).ok()?,
        };
        conn.execute_batch("BEGIN").ok()?;
        Some(OpenSession {
            conn,
            generation,
            epoch,
        })
    }

    /// Runs the read-only query `f` on an idle reader connection (a new
    /// one when all are busy), or on the main one for an in-memory cache,
    /// which other connections cannot see (see [`Cache::run`]).
    fn read<T>(&self, f: impl Fn(&Connection) -> Result<T, Fail>) -> Result<T> {
        self.run(|db| {
            if self.is_memory() {
                return f(&crate::sync::lock(&db.conn));
            }
            let idle = crate::sync::lock(&db.readers).pop();
            let conn = match idle {
                Some(c) => c,
                None => Db::connect(&self.path)?,
            };
            let out = f(&conn);
            let mut idle = crate::sync::lock(&db.readers);
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            out
        })
    }

    /// Replaces a damaged cache: fills a new one from the repository, then
    /// swaps it in. A no-op when another thread rebuilt since `seen`.
    fn recover(&self, seen: u64, fail: Fail) -> Result<()> {
        let _one = crate::sync::lock(&self.rebuild_lock);
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let Some(refill) = self.refill.get() else {
            return Err(self.error(fail));
        };
        if self.rebuilds.fetch_add(1, Ordering::AcqRel) >= MAX_REBUILDS {
            return Err(self.error(fail));
        }
        tracing::warn!(
            "local cache {} is damaged ({fail}); discarding it and rebuilding it from the repository (nothing is lost: the cache is only a cache)",
            self.path.display()
        );
        let failed = |e: Error| Error::Cache {
            path: self.path.clone(),
            reason: format!("damaged ({fail}), and rebuilding it failed: {e}"),
        };
        // Built beside the damaged file in rollback-journal mode, so that
        // once closed it is one complete file to rename into place.
        let fresh_path = (!self.is_memory()).then(|| {
            let mut p = self.path.as_os_str().to_owned();
            p.push(".rebuild");
            PathBuf::from(p)
        });
        if let Some(p) = &fresh_path {
            remove_files(p);
        }
        let path = fresh_path.as_deref().unwrap_or(Path::new(MEMORY));
        let fresh = Db::open(path, "DELETE")
            .and_then(|db| Self::with_db(db, path, &self.repo_id, &self.fingerprint))
            .map_err(failed)?;
        refill(&fresh).map_err(failed)?;
        let fresh_db = crate::sync::into_inner_rw(fresh.db);
        let mut db = crate::sync::write(&self.db);
        match &fresh_path {
            None => *db = fresh_db,
            Some(fresh_path) => {
                drop(fresh_db);
                // Close every connection to the damaged file before its
                // name is reused (SQLite deletes `-wal` by name on close).
                // Until the new file is open, queries meet an empty
                // database without tables: they fail, they never answer
                // "not indexed".
                *db = Db::open(Path::new(MEMORY), "WAL").map_err(failed)?;
                remove_files(&self.path);
                std::fs::rename(fresh_path, &self.path)
                    .map_err(|e| failed(Error::io(&self.path, e)))?;
                *db = Db::open(&self.path, "WAL").map_err(failed)?;
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn init_schema(&self) -> Result<()> {
        let (repo_id, fingerprint) = (self.repo_id, self.fingerprint.as_slice());
        let db = crate::sync::read(&self.db);
        let conn = crate::sync::lock(&db.conn);
        let err = sql_err(&self.path);
        conn.execute_batch(SCHEMA).map_err(&err)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(&err)
        };
        let stored_repo = get("repo_id")?;
        let stored_fp = get("fingerprint")?;
        let stored_schema = get("schema")?;
        match (stored_repo, stored_fp, stored_schema) {
            (None, None, None) => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('repo_id', ?1), ('fingerprint', ?2), ('schema', ?3)",
                    params![&repo_id.0[..], fingerprint, SCHEMA_VERSION.to_le_bytes().to_vec()],
                )
                .map_err(&err)?;
                Ok(())
            }
            (Some(r), Some(f), Some(s))
                if r == repo_id.0 && f == fingerprint && s == SCHEMA_VERSION.to_le_bytes() =>
            {
                Ok(())
            }
            _ => Err(Error::Cache {
                path: self.path.clone(),
                reason: "belongs to another repository, configuration or cache version".into(),
            }),
        }
    }

    /// Path of the cache file (`:memory:` when in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index segments already ingested (in full or not).
    pub fn segments(&self) -> Result<Vec<IndexId>> {
        Ok(self
            .segment_levels()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Index segments already ingested, each with whether it was ingested
    /// in full (false: its packs and its tree and list rows only, plus any
    /// data rows a sync extracted for chosen blobs).
    pub fn segment_levels(&self) -> Result<Vec<(IndexId, bool)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, full FROM segments")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, full) = row?;
                out.push((IndexId(id32(&id, "malformed segment id")?), full != 0));
            }
            Ok(out)
        })
    }

    /// Ingests one index segment's packs in full, in one transaction.
    pub fn add_segment(&self, id: &IndexId, packs: &[SegmentRows]) -> Result<()> {
        self.add_segments(&[(*id, packs)])
    }

    /// Ingests several index segments in full, in one transaction (see
    /// [`Cache::ingest`]).
    pub fn add_segments(&self, segments: &[(IndexId, &[SegmentRows])]) -> Result<()> {
        let items: Vec<Ingest<'_>> = segments
            .iter()
            .map(|(id, packs)| Ingest::Full(*id, packs))
            .collect();
        self.ingest(&items)
    }

    /// Applies `items` in one transaction. A segment is recorded as
    /// ingested (in full or not) in the transaction that inserts its last
    /// row, so a cache left by a killed ingestion holds whole segments
    /// only, and the next sync ingests the rest. A segment ingested in
    /// full over a partial one replaces its rows.
    pub fn ingest(&self, items: &[Ingest<'_>]) -> Result<()> {
        let items: Vec<(IndexId, Record, &[SegmentRows])> = items
            .iter()
            .map(|item| match *item {
                Ingest::Full(id, packs) => (id, Record::Full, packs),
                Ingest::Partial(id, packs) => (id, Record::Partial, packs),
                Ingest::Rows(id, packs) => (id, Record::Rows, packs),
            })
            .collect();
        self.ingest_with(&items, |packs, sink| {
            for (pack, len, blobs) in *packs {
                sink.pack(pack, *len)?;
                for b in blobs {
                    sink.blob(b)?;
                }
            }
            Ok(())
        })
        .map(|_| ())
    }

    /// [`Cache::ingest`] of segments handed over as streams: for each item
    /// `(id, record, source)`, `fill(source, sink)` feeds the segment's
    /// packs and the blob rows to keep into `sink`, which inserts them in
    /// sorted runs of at most [`SINK_RUN`] rows, so memory does not follow
    /// the segment's size. One transaction for all the items, by the same
    /// rules as [`Cache::ingest`]; `fill` may run twice (after a rebuild of a
    /// damaged cache) and an error from it rolls everything back. Returns
    /// the blob rows inserted.
    pub fn ingest_with<S>(
        &self,
        items: &[(IndexId, Record, S)],
        fill: impl Fn(&S, &mut SegmentSink<'_, '_>) -> Result<()>,
    ) -> Result<u64> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0;
            for (id, record, source) in items {
                let mut sink = SegmentSink::begin(&tx, id, *record)?;
                let filled = fill(source, &mut sink);
                inserted += sink.finish(filled)?;
            }
            tx.commit()?;
            Ok(inserted)
        })
    }

    /// Drops a segment that vanished from the repository.
    pub fn remove_segment(&self, id: &IndexId) -> Result<()> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            let seg: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM segments WHERE id = ?1",
                    [&id.0 .0[..]],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(seg) = seg {
                tx.execute(
                    "DELETE FROM blobs WHERE pack IN (SELECT seq FROM packs WHERE seg = ?1)",
                    [seg],
                )?;
                tx.execute("DELETE FROM packs WHERE seg = ?1", [seg])?;
                tx.execute("DELETE FROM segments WHERE seq = ?1", [seg])?;
            }
            Ok(tx.commit()?)
        })
    }

    /// Where blob `id` is stored, if the index knows it.
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        Ok(self.query_locations(id, 1)?.into_iter().next())
    }

    /// Whether the index holds blob `id` (in any pack): the dedup check,
    /// one index probe without the pack join [`Cache::lookup`] needs.
    /// Inside a [`ReadSession`], a "no" may come from its snapshot.
    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let probe = |conn: &Connection| -> Result<bool, Fail> {
            let mut stmt = conn.prepare_cached("SELECT 1 FROM blobs WHERE id = ?1 LIMIT 1")?;
            Ok(stmt.exists([&id.0 .0[..]])?)
        };
        if self.read_in_session(&probe) == Some(false) {
            return Ok(false);
        }
        self.read(probe)
    }

    /// Every place blob `id` is stored (several packs when concurrent
    /// writers or a repack stored it more than once). Inside a
    /// [`ReadSession`], "nowhere" may come from its snapshot.
    pub fn locations(&self, id: &BlobId) -> Result<Vec<BlobLocation>> {
        let query =
            |conn: &Connection| locations_from(&mut conn.prepare_cached(LOCATIONS)?, id, -1);
        match self.read_in_session(&query) {
            Some(none) if none.is_empty() => Ok(none),
            _ => self.read(query),
        }
    }

    /// The packs holding each of `ids`, in their order, looked up in one
    /// read transaction: a query on its own takes and releases SQLite's
    /// file locks (two `fcntl` calls), which cost more than the lookup.
    pub fn packs_of_all(&self, ids: &[BlobId]) -> Result<Vec<Vec<PackId>>> {
        self.read(|conn| {
            in_transaction(conn, |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT p.id FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.id = ?1",
                )?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let mut packs = Vec::new();
                    let mut rows = stmt.query([&id.0 .0[..]])?;
                    while let Some(row) = rows.next()? {
                        let pack: Vec<u8> = row.get(0)?;
                        packs.push(PackId(id32(&pack, "malformed index row")?));
                    }
                    out.push(packs);
                }
                Ok(out)
            })
        })
    }

    /// Every location of each of `ids`, in their order, looked up in one
    /// read transaction (see [`Cache::packs_of_all`]): a prefetch locates
    /// a level of trees at once.
    pub fn locations_of_all(&self, ids: &[BlobId]) -> Result<Vec<Vec<BlobLocation>>> {
        self.read(|conn| {
            in_transaction(conn, |conn| {
                let mut stmt = conn.prepare_cached(LOCATIONS)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.push(locations_from(&mut stmt, id, -1)?);
                }
                Ok(out)
            })
        })
    }

    /// Up to `limit` locations of blob `id` (-1: all).
    fn query_locations(&self, id: &BlobId, limit: i64) -> Result<Vec<BlobLocation>> {
        self.read(|conn| locations_from(&mut conn.prepare_cached(LOCATIONS)?, id, limit))
    }

    /// Calls `f(pack, pack length, entry)` for every indexed blob location,
    /// streaming rows so memory stays flat however large the index is.
    ///
    /// `f` must not use the cache. The tables are checked first (SQLite's
    /// `quick_check`, about the cost of the scan itself), so damage is
    /// found and repaired before the first row, as for any query. Damage
    /// that appears after rows were handed to `f` is repaired too, but the
    /// call fails (its caller has seen part of the old index): running the
    /// command again reads the rebuilt cache.
    pub fn for_each_location(
        &self,
        mut f: impl FnMut(PackId, u64, BlobEntry) -> Result<()>,
    ) -> Result<()> {
        // A failure after rows reached `f` cannot be retried: check the
        // tables the stream reads first, so that damage is found (and the
        // cache rebuilt) before any row is handed out.
        self.read(|conn| {
            for table in ["blobs", "packs"] {
                let verdict: String =
                    conn.query_row(&format!("PRAGMA quick_check({table})"), [], |r| r.get(0))?;
                if verdict != "ok" {
                    return Err(Fail::Malformed("index tables fail SQLite's quick_check"));
                }
            }
            Ok(())
        })?;
        let mut delivered = false;
        let (generation, result) = {
            let db = crate::sync::read(&self.db);
            let generation = self.generation.load(Ordering::Acquire);
            (generation, stream_locations(&db, &mut f, &mut delivered))
        };
        match result {
            Ok(caller) => caller,
            Err(fail) if fail.is_damage() && !delivered => {
                self.recover(generation, fail)?;
                let db = crate::sync::read(&self.db);
                stream_locations(&db, &mut f, &mut delivered).map_err(|fail| self.error(fail))?
            }
            Err(fail) if fail.is_damage() => {
                let reason = fail.to_string();
                self.recover(generation, fail)?;
                Err(Error::Cache {
                    path: self.path.clone(),
                    reason: format!(
                        "damaged ({reason}) while this command was reading it; it has been rebuilt: run the command again"
                    ),
                })
            }
            Err(fail) => Err(self.error(fail)),
        }
    }

    /// The ingested segments that list pack `pack`.
    pub fn segments_listing(&self, pack: &PackId) -> Result<Vec<IndexId>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT s.id FROM packs p JOIN segments s ON s.seq = p.seg WHERE p.id = ?1",
            )?;
            let rows = stmt.query_map([&pack.0 .0[..]], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(IndexId(id32(&row?, "malformed segment id")?));
            }
            Ok(out)
        })
    }

    /// Number of distinct blobs indexed.
    pub fn blob_count(&self) -> Result<u64> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT COUNT(DISTINCT id) FROM blobs", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
    }

    /// Every indexed pack with its length.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT DISTINCT id, len FROM packs")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, len) = row?;
                out.push((PackId(id32(&id, "malformed pack id")?), len as u64));
            }
            Ok(out)
        })
    }

    /// The length of an indexed pack, or `None` when no segment names it.
    pub fn pack_len(&self, pack: &PackId) -> Result<Option<u64>> {
        self.read(|conn| {
            let mut s = conn.prepare_cached("SELECT len FROM packs WHERE id = ?1 LIMIT 1")?;
            Ok(s.query_row(params![&pack.0 .0[..]], |r| r.get::<_, i64>(0))
                .optional()?
                .map(|len| len as u64))
        })
    }

    /// A cached object's bytes.
    pub fn get_object(&self, kind: CachedKind, id: &Id) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_objects(kind, std::slice::from_ref(id))?
            .pop()
            .flatten())
    }

    /// The cached bytes of each of `ids` (of one kind), in their order,
    /// read in one transaction: a query on its own takes and releases
    /// SQLite's file locks, which cost more than the read.
    pub fn get_objects(&self, kind: CachedKind, ids: &[Id]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|conn| {
            in_transaction(conn, |conn| {
                let mut s =
                    conn.prepare_cached("SELECT data FROM objects WHERE id = ?1 AND kind = ?2")?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.push(
                        s.query_row(params![&id.0[..], kind as i64], |r| r.get(0))
                            .optional()?,
                    );
                }
                Ok(out)
            })
        })
    }

    /// Stores an object's bytes.
    pub fn put_object(&self, kind: CachedKind, id: &Id, data: &[u8]) -> Result<()> {
        self.write(|conn| {
            conn.prepare_cached(PUT_OBJECT)?
                .execute(params![&id.0[..], kind as i64, data])?;
            Ok(())
        })
    }

    /// Stores several objects of one kind in one transaction.
    pub fn put_objects(&self, kind: CachedKind, objects: &[(Id, Vec<u8>)]) -> Result<()> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            {
                let mut put = tx.prepare_cached(PUT_OBJECT)?;
                for (id, data) in objects {
                    put.execute(params![&id.0[..], kind as i64, data])?;
                }
            }
            Ok(tx.commit()?)
        })
    }

    /// Drops a cached object (found damaged, or deleted from the repository).
    pub fn remove_object(&self, id: &Id) -> Result<()> {
        self.write(|conn| {
            conn.execute("DELETE FROM objects WHERE id = ?1", [&id.0[..]])?;
            Ok(())
        })
    }
}

/// Every location of one blob: the blob's id, then the limit (-1: all).
const LOCATIONS: &str = "SELECT p.id, b.kind, b.offset, b.stored_len, b.raw_len, b.inner FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.id = ?1 LIMIT ?2";

/// Up to `limit` locations of blob `id` (-1: all), by `stmt` ([`LOCATIONS`]).
fn locations_from(
    stmt: &mut rusqlite::CachedStatement<'_>,
    id: &BlobId,
    limit: i64,
) -> Result<Vec<BlobLocation>, Fail> {
    let rows = stmt.query_map(params![&id.0 .0[..], limit], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, u8>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, u32>(3)?,
            r.get::<_, u32>(4)?,
            r.get::<_, Option<u32>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (pack, kind, offset, stored_len, raw_len, inner) = row?;
        out.push(BlobLocation {
            pack: PackId(id32(&pack, "malformed index row")?),
            kind: BlobKind::from_code(kind).ok_or(Fail::Malformed("malformed index row"))?,
            offset,
            stored_len,
            raw_len,
            inner,
        });
    }
    Ok(out)
}

/// Streams every blob location to `f` (see [`Cache::for_each_location`]);
/// the outer error is the database's, the inner one `f`'s, which ends the
/// stream. `delivered` is set once a row reached `f`.
fn stream_locations(
    db: &Db,
    f: &mut dyn FnMut(PackId, u64, BlobEntry) -> Result<()>,
    delivered: &mut bool,
) -> Result<Result<()>, Fail> {
    let conn = crate::sync::lock(&db.conn);
    let mut stmt = conn.prepare(
        "SELECT p.id, p.len, b.id, b.kind, b.offset, b.stored_len, b.raw_len, b.inner FROM blobs b JOIN packs p ON p.seq = b.pack",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let pack: Vec<u8> = r.get(0)?;
        let len: i64 = r.get(1)?;
        let blob: Vec<u8> = r.get(2)?;
        let kind: u8 = r.get(3)?;
        let entry = BlobEntry {
            id: BlobId(id32(&blob, "malformed index row")?),
            kind: BlobKind::from_code(kind).ok_or(Fail::Malformed("malformed index row"))?,
            offset: r.get(4)?,
            stored_len: r.get(5)?,
            raw_len: r.get(6)?,
            inner: r.get(7)?,
        };
        let pack = PackId(id32(&pack, "malformed index row")?);
        *delivered = true;
        if let Err(e) = f(pack, len as u64, entry) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// One pack of an index segment as the cache ingests it: its id, its
/// length and its blobs.
pub type SegmentRows = (PackId, u64, Vec<BlobEntry>);

/// What one ingestion step does with one index segment ([`Cache::ingest`]).
#[derive(Debug, Clone, Copy)]
pub enum Ingest<'a> {
    /// Every row of the segment: the segment is ingested in full.
    Full(IndexId, &'a [SegmentRows]),
    /// The segment's packs and the blob rows given (its tree and list
    /// rows, and whichever data rows the caller chose): the segment is
    /// recorded as not ingested in full.
    Partial(IndexId, &'a [SegmentRows]),
    /// More blob rows of a segment already recorded (not in full); its
    /// packs are already there. Nothing happens if the segment is not.
    Rows(IndexId, &'a [SegmentRows]),
}

/// What [`Cache::ingest_with`] records for one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Every row: the segment is ingested in full (replacing the rows of a
    /// partial ingestion; nothing happens to a segment already in full).
    Full,
    /// Its packs and the rows given: recorded as not in full (on a
    /// segment already recorded, the rows given are added).
    Partial,
    /// More rows of a segment already recorded (not in full), whose packs
    /// are there; nothing happens if the segment is not.
    Rows,
}

/// Blob rows a [`SegmentSink`] holds before inserting them, at most.
pub const SINK_RUN: usize = 64 << 10;

const ADD_BLOB: &str = "INSERT OR REPLACE INTO blobs(id, pack, kind, offset, stored_len, raw_len, inner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Takes one segment's packs and blob rows inside the transaction of
/// [`Cache::ingest_with`]: packs are inserted (or, for [`Record::Rows`],
/// found) as they come, blob rows in sorted runs.
pub struct SegmentSink<'t, 'c> {
    tx: &'t rusqlite::Transaction<'c>,
    /// The segment's row, or `None` when nothing is to be written (in full
    /// already, or rows of a segment dropped meanwhile).
    seg: Option<i64>,
    /// Whether packs are already there (found, not inserted).
    find_packs: bool,
    /// The current pack: its row once known, else its id to find.
    pack: Option<Result<i64, PackId>>,
    run: Vec<(BlobEntry, i64)>,
    inserted: u64,
    /// The first database failure: reported by [`Cache::ingest_with`]
    /// itself (a damaged cache is rebuilt), whatever `fill` returns.
    failed: Option<Fail>,
}

impl<'t, 'c> SegmentSink<'t, 'c> {
    /// Records segment `id` as `record` says and returns its sink. A
    /// segment recorded in full is left alone; one recorded partially is
    /// replaced by [`Record::Full`], added to by the others.
    fn begin(
        tx: &'t rusqlite::Transaction<'c>,
        id: &IndexId,
        record: Record,
    ) -> Result<Self, Fail> {
        let existing: Option<(i64, i64)> = tx
            .query_row(
                "SELECT seq, full FROM segments WHERE id = ?1",
                [&id.0 .0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (seg, find_packs) = match (existing, record) {
            (Some((_, 1)), _) => (None, false),
            (None, Record::Rows) => (None, false),
            (Some((seg, _)), Record::Rows | Record::Partial) => (Some(seg), true),
            (Some((seg, _)), Record::Full) => {
                tx.execute(
                    "DELETE FROM blobs WHERE pack IN (SELECT seq FROM packs WHERE seg = ?1)",
                    [seg],
                )?;
                tx.execute("DELETE FROM packs WHERE seg = ?1", [seg])?;
                tx.execute("UPDATE segments SET full = 1 WHERE seq = ?1", [seg])?;
                (Some(seg), false)
            }
            (None, Record::Full | Record::Partial) => {
                tx.execute(
                    "INSERT INTO segments(id, full) VALUES (?1, ?2)",
                    params![&id.0 .0[..], (record == Record::Full) as i64],
                )?;
                (Some(tx.last_insert_rowid()), false)
            }
        };
        Ok(Self {
            tx,
            seg,
            find_packs,
            pack: None,
            run: Vec::new(),
            inserted: 0,
            failed: None,
        })
    }

    /// Whether anything given to this sink is written (false for a
    /// segment already in full): a caller may skip reading it.
    pub fn wants_rows(&self) -> bool {
        self.seg.is_some()
    }

    /// Starts the next pack of the segment.
    pub fn pack(&mut self, id: &PackId, len: u64) -> Result<()> {
        let Some(seg) = self.seg else {
            return Ok(());
        };
        if self.find_packs {
            // Found at its first row: packs without rows cost no query.
            self.pack = Some(Err(*id));
            return Ok(());
        }
        let added = self
            .tx
            .prepare_cached("INSERT INTO packs(id, seg, len) VALUES (?1, ?2, ?3)")
            .and_then(|mut add| add.execute(params![&id.0 .0[..], seg, len as i64]));
        self.check(added.map_err(Fail::from))?;
        self.pack = Some(Ok(self.tx.last_insert_rowid()));
        Ok(())
    }

    /// Adds one blob row of the current pack.
    pub fn blob(&mut self, b: &BlobEntry) -> Result<()> {
        let Some(seg) = self.seg else {
            return Ok(());
        };
        let pack = match self.pack {
            Some(Ok(seq)) => seq,
            Some(Err(id)) => {
                let found = self
                    .tx
                    .prepare_cached("SELECT seq FROM packs WHERE seg = ?1 AND id = ?2 LIMIT 1")
                    .and_then(|mut find| {
                        find.query_row(params![seg, &id.0 .0[..]], |r| r.get::<_, i64>(0))
                            .optional()
                    })
                    .map_err(Fail::from)
                    .and_then(|seq| {
                        seq.ok_or(Fail::Malformed(
                            "a partially ingested segment lacks one of its packs",
                        ))
                    });
                let seq = self.check(found)?;
                self.pack = Some(Ok(seq));
                seq
            }
            None => {
                return self.check(Err(Fail::Malformed("a blob row before any pack")));
            }
        };
        self.run.push((*b, pack));
        if self.run.len() >= SINK_RUN {
            let flushed = self.flush();
            self.check(flushed)?;
        }
        Ok(())
    }

    /// Records `r`'s failure, if any, as the sink's, and stops the caller.
    fn check<T>(&mut self, r: Result<T, Fail>) -> Result<T> {
        r.map_err(|fail| {
            let message = fail.to_string();
            self.failed.get_or_insert(fail);
            Error::Cache {
                path: PathBuf::from("(ingestion)"),
                reason: message,
            }
        })
    }

    /// Inserts the rows held, in key order: neighbouring inserts then
    /// share B-tree pages (about 5% faster on a fresh cache, more on a
    /// large one).
    fn flush(&mut self) -> Result<(), Fail> {
        let mut add_blob = self.tx.prepare_cached(ADD_BLOB)?;
        self.run.sort_unstable_by_key(|(b, pack)| (b.id, *pack));
        for (b, pack) in self.run.drain(..) {
            add_blob.execute(params![
                &b.id.0 .0[..],
                pack,
                b.kind.code(),
                b.offset,
                b.stored_len,
                b.raw_len,
                b.inner
            ])?;
            self.inserted += 1;
        }
        Ok(())
    }

    /// Ends the segment: the database's failure first, then the caller's
    /// (`filled`), else the rows left are inserted.
    fn finish(mut self, filled: Result<()>) -> Result<u64, Fail> {
        if let Some(fail) = self.failed.take() {
            return Err(fail);
        }
        filled.map_err(Fail::Caller)?;
        self.flush()?;
        Ok(self.inserted)
    }
}

/// Runs the lookups `f` in one read transaction on `conn`.
fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let tx = conn.unchecked_transaction()?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Path standing for an in-memory cache.
const MEMORY: &str = ":memory:";

impl Db {
    /// Opens `path` (or memory) with `journal` mode.
    fn open(path: &Path, journal: &str) -> Result<Self> {
        let err = sql_err(path);
        let conn = if path == Path::new(MEMORY) {
            Connection::open_in_memory().map_err(&err)?
        } else {
            let conn = Self::connect(path).map_err(&err)?;
            conn.pragma_update(None, "journal_mode", journal)
                .map_err(&err)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(&err)?;
            conn
        };
        Ok(Db {
            conn: Mutex::new(conn),
            readers: Mutex::default(),
        })
    }

    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> BlobEntry {
        BlobEntry {
            id: BlobId(Id([n; 32])),
            kind: BlobKind::Data,
            offset: 0,
            stored_len: 10,
            raw_len: 10,
            inner: None,
        }
    }

    /// Segment `seg` holding blob `blob` in pack `seg`.
    fn segment(cache: &Cache, seg: u8, blob: u8) {
        let rows: Vec<SegmentRows> = vec![(PackId(Id([seg; 32])), 100, vec![entry(blob)])];
        cache.add_segment(&IndexId(Id([seg; 32])), &rows).unwrap();
    }

    fn packs(cache: &Cache, blob: u8) -> Vec<PackId> {
        let found = cache.locations(&entry(blob).id).unwrap();
        found.into_iter().map(|l| l.pack).collect()
    }

    /// Inside a session, an answer that finds a blob is as fresh as one
    /// without: another process's removal is seen at once. Only "nowhere"
    /// may come from the session's snapshot, and this handle's own writes
    /// end that snapshot.
    #[test]
    fn a_session_answers_present_only_from_a_fresh_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let cache = Cache::open(Some(&path), &Id([7; 32]), b"fp").unwrap();
        // Another process with the same cache file.
        let other = Cache::open(Some(&path), &Id([7; 32]), b"fp").unwrap();
        segment(&other, 1, 1);

        let session = cache.session();
        // The session's snapshot starts here, holding blob 1 in pack 1.
        assert!(!cache.contains(&entry(9).id).unwrap());
        assert!(cache.contains(&entry(1).id).unwrap());

        // Another process moves blob 1 from pack 1 to pack 2.
        segment(&other, 2, 1);
        other.remove_segment(&IndexId(Id([1; 32]))).unwrap();
        assert_eq!(packs(&cache, 1), vec![PackId(Id([2; 32]))], "fresh");
        other.remove_segment(&IndexId(Id([2; 32]))).unwrap();
        assert!(!cache.contains(&entry(1).id).unwrap(), "removed: fresh");
        assert!(packs(&cache, 1).is_empty());

        // A blob another process added may be missed (stored again by
        // the caller): the snapshot is shared, which is the point.
        segment(&other, 3, 3);
        assert!(!cache.contains(&entry(3).id).unwrap(), "snapshot kept");
        assert!(packs(&cache, 3).is_empty(), "snapshot kept");
        // This handle's own write ends the snapshot.
        segment(&cache, 4, 4);
        assert!(cache.contains(&entry(4).id).unwrap(), "own write");
        assert!(cache.contains(&entry(3).id).unwrap(), "renewed");
        drop(session);

        // Without a session every lookup reads the file as it is now.
        segment(&other, 5, 5);
        assert!(cache.contains(&entry(5).id).unwrap());
        assert_eq!(packs(&cache, 5), vec![PackId(Id([5; 32]))]);
        // The session's connection went back to the idle readers.
        let db = crate::sync::read(&cache.db);
        assert!(!crate::sync::lock(&db.readers).is_empty());
    }

    /// One session a thread: a nested one is a no-op; an in-memory cache
    /// has one connection and no session.
    #[test]
    fn sessions_do_not_nest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(&dir.path().join("c.sqlite")), &Id([7; 32]), b"fp").unwrap();
        let outer = cache.session();
        let inner = cache.session();
        assert!(inner.cache.is_none());
        segment(&cache, 4, 4);
        drop(inner);
        assert!(cache.contains(&entry(4).id).unwrap());
        drop(outer);
        assert!(cache.contains(&entry(4).id).unwrap());
        let memory = Cache::open(None, &Id([7; 32]), b"fp").unwrap();
        assert!(memory.session().cache.is_none());
    }
}
