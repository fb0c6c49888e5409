//! The local SQLite cache: merged index, fetched trees and snapshots.
//!
//! The cache is only a cache. Every row can be rebuilt from the repository;
//! a cache of another repository or a damaged file is discarded and rebuilt,
//! and cached blobs are re-hashed before use.

use crate::error::{Error, Result};
use crate::format::pack::BlobEntry;
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Schema version of the cache file; a different one is rebuilt.
const SCHEMA_VERSION: i64 = 1;

/// Stores one object (`put_object`, `put_objects`).
const PUT_OBJECT: &str = "INSERT OR REPLACE INTO objects(id, kind, data) VALUES (?1, ?2, ?3)";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS packs(seq INTEGER PRIMARY KEY, id BLOB NOT NULL, seg INTEGER NOT NULL, len INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS packs_seg ON packs(seg);
CREATE INDEX IF NOT EXISTS packs_id ON packs(id);
CREATE TABLE IF NOT EXISTS blobs(id BLOB NOT NULL, pack INTEGER NOT NULL, kind INTEGER NOT NULL,
    offset INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
    PRIMARY KEY(id, pack)) WITHOUT ROWID;
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

/// The cache database.
pub struct Cache {
    conn: Mutex<Connection>,
    /// Idle extra connections for lookups: backup threads look blobs up
    /// concurrently, and behind the one connection's lock they queued
    /// (in WAL mode readers do not block each other or the writer).
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.path.display())
    }
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Cache {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Cache {
    /// Opens (or creates) the cache for repository `repo_id` at `path`;
    /// `None` keeps it in memory. A file belonging to another repository,
    /// of another schema, or unreadable as SQLite is deleted and recreated.
    pub fn open(path: Option<&Path>, repo_id: &Id, fingerprint: &[u8]) -> Result<Self> {
        let Some(path) = path else {
            let conn = Connection::open_in_memory().map_err(sql_err(Path::new(":memory:")))?;
            let cache = Cache {
                conn: Mutex::new(conn),
                readers: Mutex::default(),
                path: PathBuf::from(":memory:"),
            };
            cache.init_schema(repo_id, fingerprint)?;
            return Ok(cache);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        match Self::try_open(path, repo_id, fingerprint) {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!(
                    "discarding local cache {}: {e}; rebuilding it",
                    path.display()
                );
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                Self::try_open(path, repo_id, fingerprint)
            }
        }
    }

    fn try_open(path: &Path, repo_id: &Id, fingerprint: &[u8]) -> Result<Self> {
        let conn = Self::connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_err(path))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err(path))?;
        let cache = Cache {
            conn: Mutex::new(conn),
            readers: Mutex::default(),
            path: path.to_path_buf(),
        };
        cache.init_schema(repo_id, fingerprint)?;
        Ok(cache)
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path).map_err(sql_err(path))?;
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(sql_err(path))?;
        Ok(conn)
    }

    /// Runs the read-only query `f` on an idle reader connection (a new
    /// one when all are busy), or on the main one for an in-memory cache,
    /// which other connections cannot see.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if self.path == Path::new(":memory:") {
            return f(&self.conn.lock().expect("cache lock"));
        }
        let idle = self.readers.lock().expect("cache readers lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => Self::connect(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().expect("cache readers lock");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    fn init_schema(&self, repo_id: &Id, fingerprint: &[u8]) -> Result<()> {
        let err = sql_err(&self.path);
        let conn = self.conn.lock().expect("cache lock");
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

    /// Index segments already ingested.
    pub fn segments(&self) -> Result<Vec<IndexId>> {
        let err = sql_err(&self.path);
        let conn = self.conn.lock().expect("cache lock");
        let mut stmt = conn.prepare("SELECT id FROM segments").map_err(&err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row.map_err(&err)?;
            let id: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Cache {
                path: self.path.clone(),
                reason: "malformed segment id".into(),
            })?;
            out.push(IndexId(Id(id)));
        }
        Ok(out)
    }

    /// Ingests one index segment's packs in one transaction.
    pub fn add_segment(&self, id: &IndexId, packs: &[(PackId, u64, Vec<BlobEntry>)]) -> Result<()> {
        let err = sql_err(&self.path);
        let mut conn = self.conn.lock().expect("cache lock");
        let tx = conn.transaction().map_err(&err)?;
        tx.execute(
            "INSERT OR IGNORE INTO segments(id) VALUES (?1)",
            [&id.0 .0[..]],
        )
        .map_err(&err)?;
        let seg: i64 = tx
            .query_row(
                "SELECT seq FROM segments WHERE id = ?1",
                [&id.0 .0[..]],
                |r| r.get(0),
            )
            .map_err(&err)?;
        {
            let mut add_pack = tx
                .prepare_cached("INSERT INTO packs(id, seg, len) VALUES (?1, ?2, ?3)")
                .map_err(&err)?;
            let mut add_blob = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO blobs(id, pack, kind, offset, stored_len, raw_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&err)?;
            let mut rows = Vec::with_capacity(packs.iter().map(|p| p.2.len()).sum());
            for (pack, len, blobs) in packs {
                add_pack
                    .execute(params![&pack.0 .0[..], seg, *len as i64])
                    .map_err(&err)?;
                let pack_seq = tx.last_insert_rowid();
                rows.extend(blobs.iter().map(|b| (b, pack_seq)));
            }
            // In key order: neighbouring inserts then share B-tree pages
            // (about 5% faster on a fresh cache, more on a large one).
            rows.sort_unstable_by_key(|(b, pack_seq)| (b.id, *pack_seq));
            for (b, pack_seq) in rows {
                add_blob
                    .execute(params![
                        &b.id.0 .0[..],
                        pack_seq,
                        b.kind.code(),
                        b.offset,
                        b.stored_len,
                        b.raw_len
                    ])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// Drops a segment that vanished from the repository.
    pub fn remove_segment(&self, id: &IndexId) -> Result<()> {
        let err = sql_err(&self.path);
        let mut conn = self.conn.lock().expect("cache lock");
        let tx = conn.transaction().map_err(&err)?;
        let seg: Option<i64> = tx
            .query_row(
                "SELECT seq FROM segments WHERE id = ?1",
                [&id.0 .0[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        if let Some(seg) = seg {
            tx.execute(
                "DELETE FROM blobs WHERE pack IN (SELECT seq FROM packs WHERE seg = ?1)",
                [seg],
            )
            .map_err(&err)?;
            tx.execute("DELETE FROM packs WHERE seg = ?1", [seg])
                .map_err(&err)?;
            tx.execute("DELETE FROM segments WHERE seq = ?1", [seg])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// Where blob `id` is stored, if the index knows it.
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        Ok(self.query_locations(id, 1)?.into_iter().next())
    }

    /// Whether the index holds blob `id` (in any pack): the dedup check,
    /// one index probe without the pack join [`Cache::lookup`] needs.
    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let err = sql_err(&self.path);
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM blobs WHERE id = ?1 LIMIT 1")
                .map_err(&err)?;
            stmt.exists([&id.0 .0[..]]).map_err(&err)
        })
    }

    /// Every place blob `id` is stored (several packs when concurrent
    /// writers or a repack stored it more than once).
    pub fn locations(&self, id: &BlobId) -> Result<Vec<BlobLocation>> {
        self.query_locations(id, -1)
    }

    /// Up to `limit` locations of blob `id` (-1: all).
    fn query_locations(&self, id: &BlobId, limit: i64) -> Result<Vec<BlobLocation>> {
        let err = sql_err(&self.path);
        let rows = self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT p.id, b.kind, b.offset, b.stored_len, b.raw_len FROM blobs b JOIN packs p ON p.seq = b.pack WHERE b.id = ?1 LIMIT ?2",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![&id.0 .0[..], limit], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, u8>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, u32>(4)?,
                    ))
                })
                .map_err(&err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
        })?;
        let bad = || Error::Cache {
            path: self.path.clone(),
            reason: "malformed index row".into(),
        };
        rows.into_iter()
            .map(|(pack, kind, offset, stored_len, raw_len)| {
                Ok(BlobLocation {
                    pack: PackId(Id(pack.as_slice().try_into().map_err(|_| bad())?)),
                    kind: BlobKind::from_code(kind).ok_or_else(bad)?,
                    offset,
                    stored_len,
                    raw_len,
                })
            })
            .collect()
    }

    /// Calls `f(pack, pack length, entry)` for every indexed blob location,
    /// streaming rows so memory stays flat however large the index is.
    pub fn for_each_location(
        &self,
        mut f: impl FnMut(PackId, u64, BlobEntry) -> Result<()>,
    ) -> Result<()> {
        let err = sql_err(&self.path);
        let conn = self.conn.lock().expect("cache lock");
        let mut stmt = conn
            .prepare(
                "SELECT p.id, p.len, b.id, b.kind, b.offset, b.stored_len, b.raw_len FROM blobs b JOIN packs p ON p.seq = b.pack",
            )
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        let bad = || Error::Cache {
            path: self.path.clone(),
            reason: "malformed index row".into(),
        };
        while let Some(r) = rows.next().map_err(&err)? {
            let pack: Vec<u8> = r.get(0).map_err(&err)?;
            let len: i64 = r.get(1).map_err(&err)?;
            let blob: Vec<u8> = r.get(2).map_err(&err)?;
            let kind: u8 = r.get(3).map_err(&err)?;
            let entry = BlobEntry {
                id: BlobId(Id(blob.as_slice().try_into().map_err(|_| bad())?)),
                kind: BlobKind::from_code(kind).ok_or_else(bad)?,
                offset: r.get(4).map_err(&err)?,
                stored_len: r.get(5).map_err(&err)?,
                raw_len: r.get(6).map_err(&err)?,
            };
            f(
                PackId(Id(pack.as_slice().try_into().map_err(|_| bad())?)),
                len as u64,
                entry,
            )?;
        }
        Ok(())
    }

    /// The ingested segments that list pack `pack`.
    pub fn segments_listing(&self, pack: &PackId) -> Result<Vec<IndexId>> {
        let err = sql_err(&self.path);
        let conn = self.conn.lock().expect("cache lock");
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT s.id FROM packs p JOIN segments s ON s.seq = p.seg WHERE p.id = ?1",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([&pack.0 .0[..]], |r| r.get::<_, Vec<u8>>(0))
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row.map_err(&err)?;
            if let Ok(id) = <[u8; 32]>::try_from(bytes.as_slice()) {
                out.push(IndexId(Id(id)));
            }
        }
        Ok(out)
    }

    /// Number of distinct blobs indexed.
    pub fn blob_count(&self) -> Result<u64> {
        let conn = self.conn.lock().expect("cache lock");
        conn.query_row("SELECT COUNT(DISTINCT id) FROM blobs", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(sql_err(&self.path))
    }

    /// Every indexed pack with its length.
    pub fn packs(&self) -> Result<Vec<(PackId, u64)>> {
        let err = sql_err(&self.path);
        let conn = self.conn.lock().expect("cache lock");
        let mut stmt = conn
            .prepare("SELECT DISTINCT id, len FROM packs")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, len) = row.map_err(&err)?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                out.push((PackId(Id(id)), len as u64));
            }
        }
        Ok(out)
    }

    /// A cached object's bytes.
    pub fn get_object(&self, kind: CachedKind, id: &Id) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock().expect("cache lock");
        conn.prepare_cached("SELECT data FROM objects WHERE id = ?1 AND kind = ?2")
            .and_then(|mut s| {
                s.query_row(params![&id.0[..], kind as i64], |r| r.get(0))
                    .optional()
            })
            .map_err(sql_err(&self.path))
    }

    /// Stores an object's bytes.
    pub fn put_object(&self, kind: CachedKind, id: &Id, data: &[u8]) -> Result<()> {
        let conn = self.conn.lock().expect("cache lock");
        conn.prepare_cached(PUT_OBJECT)
            .and_then(|mut s| s.execute(params![&id.0[..], kind as i64, data]))
            .map(|_| ())
            .map_err(sql_err(&self.path))
    }

    /// Stores several objects of one kind in one transaction.
    pub fn put_objects(&self, kind: CachedKind, objects: &[(Id, Vec<u8>)]) -> Result<()> {
        let err = sql_err(&self.path);
        let mut conn = self.conn.lock().expect("cache lock");
        let tx = conn.transaction().map_err(&err)?;
        {
            let mut put = tx.prepare_cached(PUT_OBJECT).map_err(&err)?;
            for (id, data) in objects {
                put.execute(params![&id.0[..], kind as i64, data])
                    .map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    /// Drops a cached object (found damaged, or deleted from the repository).
    pub fn remove_object(&self, id: &Id) -> Result<()> {
        let conn = self.conn.lock().expect("cache lock");
        conn.execute("DELETE FROM objects WHERE id = ?1", [&id.0[..]])
            .map(|_| ())
            .map_err(sql_err(&self.path))
    }
}
