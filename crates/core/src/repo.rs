//! The repository handle: init, open with a password, keys, blob and tree
//! reads, snapshots. It composes a keyring, an index view
//! ([`crate::index_view`]: index and `gc/` plans) and a blob sealer.

use crate::cache::{BlobLocation, Cache, CachedKind};
use crate::crypto::{IdHasher, KdfParams, SealKey};
use crate::damage::DamageSet;
use crate::error::{Error, Result};
use crate::format::config::{Config, CONFIG_AAD, CONFIG_PATH, CONFIG_ZSTD_LEVEL};
use crate::format::damage::{DamageEntry, DamageReason};
use crate::format::header::{Header, HeaderError, HEADER_LEN, HEADER_PATH};
use crate::format::index::IndexSegment;
use crate::format::kinds::{IndexSegments, KeyFiles, ObjectKind, Snapshots};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{decode_list, ChunkRef, Content, Tree};
use crate::format::{
    BlobId, BlobKind, Id, IndexId, PackId, SnapshotId, FORMAT_VERSION, OLDEST_FORMAT_VERSION,
};
use crate::index_view::{IndexView, Presence, SyncReport};
use crate::keyring::{new_key_file, Keyring};
use crate::objects::{any_on, list_on, Objects};
use crate::plans::PlanSet;
use crate::sealer::BlobSealer;
use bytes::Bytes;
use cairn_storage::{DynStorage, StorageError};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

/// How `init` lays out a new repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// argon2id parameters of the first key.
    pub kdf: KdfParams,
    /// Chunker minimum, average and maximum sizes.
    pub chunk_sizes: (u32, u32, u32),
    /// Data and metadata pack target sizes.
    pub pack_sizes: (u32, u32),
    /// Default zstd level.
    pub zstd_level: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        let c = Config::new(Id::default());
        Self {
            kdf: KdfParams::default(),
            chunk_sizes: (c.chunk_min, c.chunk_avg, c.chunk_max),
            pack_sizes: (c.data_pack_size, c.meta_pack_size),
            zstd_level: c.zstd_level,
        }
    }
}

/// How `open` uses the local cache.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Directory holding `<repository id>/cache.sqlite`; `None` keeps the
    /// cache in memory for this process only.
    pub cache_dir: Option<PathBuf>,
    /// Open even when index segments are damaged (check, repair); the
    /// damaged ones are reported by [`Repository::damaged_segments`].
    pub tolerate_damage: bool,
}

impl OpenOptions {
    /// The default cache location: `$CAIRN_CACHE_DIR`, else the XDG cache dir.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CAIRN_CACHE_DIR") {
            return Some(PathBuf::from(dir));
        }
        dirs::cache_dir().map(|d| d.join("cairn"))
    }
}

pub(crate) struct Inner {
    pub(crate) storage: DynStorage,
    pub(crate) location: String,
    pub(crate) config: Config,
    keys: Keyring,
    sealer: BlobSealer,
    /// The index and the `gc/` plans (whose packs count as absent for
    /// dedup, see docs/MAINTENANCE.md); the index is synced on first use.
    index: IndexView,
    /// Copies recorded in `damage/`: never deduplicated against, read only
    /// when no other copy exists. Refreshed by [`Repository::refresh_damage`].
    damage: std::sync::RwLock<DamageSet>,
    /// Damage this process met and has not recorded yet.
    found: std::sync::Mutex<BTreeSet<DamageEntry>>,
    /// Bumped each time `damage` is replaced ([`Repository::decisions_epoch`]).
    damage_epoch: std::sync::atomic::AtomicU64,
    /// Set when `cairn.repository` is damaged but the repository opened.
    header_damage: Option<String>,
    /// Trees a backup's prefetch fetched or read from the cache, kept for
    /// its walk ([`Repository::load_tree`] takes each once).
    prefetched: std::sync::Mutex<Prefetched>,
    /// The version a readable header named (see
    /// [`Repository::format_version`]).
    header_version: Option<u32>,
    /// Bundles [`Repository::read_blob`] opened last (see [`RecentBundles`]).
    recent_bundles: std::sync::Mutex<RecentBundles>,
}

/// The first format version with bundles (packs `CAIRNPK2`).
const BUNDLES_SINCE: u32 = 2;

/// Bundles most recently opened by [`Repository::read_blob`], at most.
/// A bundle's members are files backed up one after the other, and readers
/// of blobs one at a time (copy, dump, a mount) read them one after the
/// other: the bundle's other members then cost neither a read nor a
/// decompression.
const RECENT_BUNDLES: usize = 4;

/// Where a bundle is stored: its pack and offset.
type BundleKey = (PackId, u32);

/// The plaintexts of the last [`RECENT_BUNDLES`] bundles opened, newest
/// last.
#[derive(Default)]
struct RecentBundles(std::collections::VecDeque<(BundleKey, Arc<Vec<u8>>)>);

impl RecentBundles {
    fn get(&self, key: BundleKey) -> Option<Arc<Vec<u8>>> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b.clone())
    }

    fn put(&mut self, key: BundleKey, bundle: Arc<Vec<u8>>) {
        if self.0.len() >= RECENT_BUNDLES {
            self.0.pop_front();
        }
        self.0.push_back((key, bundle));
    }
}

/// Plaintext bytes of the trees a handle keeps for the walk that follows a
/// prefetch ([`Repository::keep_prefetched`]), at most; past it the walk
/// reads the rest from the cache.
pub const PREFETCHED_TREE_BYTES: u64 = 32 << 20;

/// Snapshots read at once by [`Repository::list_snapshots`] (those not in
/// the cache: all of them on an empty one, each a round trip on an object
/// store).
pub const SNAPSHOT_READS: usize = 16;

/// Trees kept for a walk: their plaintext, checked against their ids
/// (kept as plaintext: decoded, a tree takes about three times the
/// memory, and decoding is the cheap part of a cache read), and its bytes
/// in all.
#[derive(Default)]
struct Prefetched {
    trees: std::collections::HashMap<BlobId, Vec<u8>>,
    bytes: u64,
}

/// An open repository. Cheap to clone; clones share the cache and keys.
#[derive(Clone)]
pub struct Repository(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.0.location)
    }
}

pub use crate::keyring::{hostname, user_at_host, KeyInfo};
pub use crate::sealer::{zstd_level_for, BINARY_ZSTD_LEVEL};

/// Runs `a` here and `b` on a thread of its own, at once: two round trips
/// to an object store that do not depend on each other cost one. Where no
/// thread can be started, `b` runs here after `a`; a panic in `b` goes on
/// here, as if `b` had run here.
pub(crate) fn together<A, B: Send>(a: impl FnOnce() -> A, b: impl Fn() -> B + Sync) -> (A, B) {
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("cairn-open".into())
            .spawn_scoped(scope, &b);
        let a = a();
        let b = match other {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => b(),
        };
        (a, b)
    })
}

/// Listings of `gc/` and `damage/` an open makes while the key is derived
/// (the listing needs no key; the objects it names do), with when they
/// started: plans are as old as their listing.
struct Listings {
    started: std::time::Instant,
    plans: std::result::Result<Vec<Id>, String>,
    damage: std::result::Result<Vec<Id>, String>,
}

impl Listings {
    /// Lists `gc/` and `damage/` at once. A failure is kept as text only:
    /// the open lists again, and that listing reports it.
    fn take(storage: &DynStorage, location: &str) -> Self {
        let started = std::time::Instant::now();
        let ids = |listed: Result<Vec<Id>>| -> std::result::Result<Vec<Id>, String> {
            let mut ids = listed.map_err(|e| e.to_string())?;
            ids.sort();
            Ok(ids)
        };
        let (plans, damage) = together(
            || {
                ids(list_on::<crate::format::kinds::GcPlans>(storage, location)
                    .map(|l| l.into_iter().map(|l| l.id).collect()))
            },
            || {
                ids(
                    list_on::<crate::format::kinds::DamageRecords>(storage, location)
                        .map(|l| l.into_iter().map(|l| l.id).collect()),
                )
            },
        );
        Self {
            started,
            plans,
            damage,
        }
    }
}

fn storage_err(location: &str) -> impl Fn(StorageError) -> Error {
    let location = location.to_string();
    move |source| Error::Storage {
        location: location.clone(),
        source,
    }
}

/// Why a pack read by a handle with a stale index failed (see
/// [`Repository::read_blob`], which looks the blob up again).
const PACK_LEFT_THE_INDEX: &str = "the pack was removed by a maintenance run after this process \
    read the index (its blobs were repacked or forgotten); the index is refreshed: run the \
    command again";

impl Repository {
    /// Creates a repository in empty storage and opens it.
    pub fn init(
        storage: DynStorage,
        password: &str,
        opts: &InitOptions,
        open: &OpenOptions,
    ) -> Result<Self> {
        let location = storage.location();
        let serr = storage_err(&location);
        refuse_existing(&storage, &location)?;
        if password.is_empty() {
            return Err(Error::Usage("the password must not be empty".into()));
        }
        // Several processes may find the location empty at once (the first
        // backups of a namespace, each creating its repository): only the
        // holder of the one claim goes on, the others wait for its header.
        let claim = InitClaim::take(&storage, &location)?;
        refuse_existing(&storage, &location)?;
        // A repository whose header is missing is not an init leftover:
        // deleting its key files below would lose it.
        for (prefix, found) in [
            (
                IndexSegments::PREFIX,
                any_on::<IndexSegments>(&storage, &location)?,
            ),
            (Snapshots::PREFIX, any_on::<Snapshots>(&storage, &location)?),
        ] {
            if found {
                return Err(Error::NotARepository {
                    location,
                    reason: format!(
                        "it holds {prefix} but no {HEADER_PATH}: a repository whose header is missing, not an empty location; refusing to init over it (open it with its password: cairn opens a repository with a damaged header and says how to restore it)"
                    ),
                });
            }
        }
        // Leftovers of an init killed before it wrote the header.
        for stale in storage.list(KeyFiles::PREFIX).map_err(&serr)? {
            storage.delete(&stale.path).map_err(&serr)?;
        }
        let repo_id = Id(crate::crypto::random_key());
        let mut config = Config::new(repo_id);
        (config.chunk_min, config.chunk_avg, config.chunk_max) = opts.chunk_sizes;
        (config.data_pack_size, config.meta_pack_size) = opts.pack_sizes;
        config.zstd_level = opts.zstd_level;
        config
            .validate()
            .map_err(|e| Error::Usage(format!("invalid repository options: {e}")))?;
        let master = crate::crypto::random_key();
        let key = SealKey::new(&master);
        storage
            .write(
                CONFIG_PATH,
                Bytes::from(key.seal_envelope(CONFIG_AAD, &config.encode(), CONFIG_ZSTD_LEVEL)),
            )
            .map_err(&serr)?;
        let (key_id, encoded) = new_key_file(&master, password, opts.kdf)?;
        storage
            .write(&KeyFiles::path(&key_id), Bytes::from(encoded))
            .map_err(&serr)?;
        // The header goes last: until it exists this is not a repository.
        storage
            .write(HEADER_PATH, Bytes::from(Header::new(repo_id).encode()))
            .map_err(&serr)?;
        drop(claim);
        let keys = Keyring::new(master, key_id);
        let repo = Self::assemble(
            storage,
            location,
            config,
            keys,
            Some(FORMAT_VERSION),
            None,
            open,
        )?;
        let listed = Listings::take(&repo.0.storage, &repo.0.location);
        repo.refresh_from(listed)
    }

    /// Opens a repository with a password.
    ///
    /// A missing or damaged `cairn.repository` does not block a repository
    /// whose key files and config open: the config, authenticated under the
    /// master key, says which repository this is, and the damage is
    /// reported ([`Repository::header_damage`]). Only a header of a format
    /// version this cairn does not read is refused outright.
    pub fn open(storage: DynStorage, password: &str, opts: &OpenOptions) -> Result<Self> {
        let location = storage.location();
        let serr = storage_err(&location);
        let header = match storage.read(HEADER_PATH) {
            Ok(bytes) => match Header::decode(&bytes) {
                Ok(h) => Ok(h),
                Err(e @ HeaderError::UnsupportedVersion { .. }) => {
                    return Err(Error::NotARepository {
                        location,
                        reason: format!(
                            "{e} (if no cairn ever wrote that version, {HEADER_PATH} is damaged: restore it from a copy of the repository)"
                        ),
                    })
                }
                Err(e) => Err(format!("{HEADER_PATH} is damaged or not cairn's: {e}")),
            },
            Err(e) if e.is_not_found() => Err(format!("no {HEADER_PATH} object")),
            Err(e) => return Err(serr(e)),
        };
        if let Err(reason) = &header {
            // Without a header, key files are the only sign of a repository.
            if !any_on::<KeyFiles>(&storage, &location)? {
                let hint = match storage.missing_root() {
                    Some(missing) => {
                        format!("{missing} (check the path; `cairn init` creates a repository)")
                    }
                    _ => format!("{reason} (run `cairn init` to create a repository)"),
                };
                return Err(Error::NotARepository {
                    location,
                    reason: hint,
                });
            }
        }
        // The config is read, and `gc/` and `damage/` listed, while the
        // key is derived: through an object store each is a round trip, the
        // derivation tens of milliseconds of CPU, and none needs another
        // (what the listings name is opened with the key, after it).
        let (keys, (sealed, listed)) = together(
            || Keyring::open(&storage, &location, password),
            || {
                together(
                    || storage.read(CONFIG_PATH),
                    || Listings::take(&storage, &location),
                )
            },
        );
        let keys = keys?;
        let sealed = sealed.map_err(&serr)?;
        let config_damaged = |reason: String| {
            Error::corrupt(
                CONFIG_PATH,
                format!(
                    "{reason}; the config (chunker parameters, id key) cannot be rebuilt: restore it from a copy of the repository"
                ),
            )
        };
        let body = keys
            .seal_key()
            .open_envelope(CONFIG_AAD, &sealed)
            .map_err(|e| config_damaged(e.to_string()))?;
        let config = Config::decode(&body).map_err(|e| config_damaged(e.to_string()))?;
        // Without a readable header the version is unknown: written as
        // version 1, which every reader reads.
        let header_version = header.as_ref().ok().map(|h| h.version);
        // The config is authenticated under the master key; the plaintext
        // header is not: when their ids differ, the header is the damaged one.
        let header_damage = match header {
            Ok(h) if h.repo_id == config.repo_id => None,
            Ok(h) => Some(format!(
                "{HEADER_PATH} is damaged: its repository id {} differs from the config's",
                h.repo_id.to_hex(),
            )),
            Err(reason) => Some(reason),
        }
        .map(|what| {
            let damage = format!(
                "{what}; the config, which the key authenticates, names repository {}. Restore {HEADER_PATH} from a copy of the repository, or write it anew: the {HEADER_LEN} bytes `CAIRNREP`, format version {FORMAT_VERSION} as u32 little-endian, then that id (docs/FORMAT.md)",
                config.repo_id.to_hex()
            );
            tracing::warn!("{damage}");
            damage
        });
        Self::assemble(
            storage,
            location,
            config,
            keys,
            header_version,
            header_damage,
            opts,
        )
        .and_then(|repo| repo.refresh_from(listed))
    }

    /// What is wrong with `cairn.repository`, when the repository opened
    /// despite it (its repository id differs from the authenticated
    /// config's), for `check` to report.
    pub fn header_damage(&self) -> Option<&str> {
        self.0.header_damage.as_deref()
    }

    /// Moves the repository to the current format version by rewriting
    /// `cairn.repository` with it (the objects stored already are read as
    /// they are). Handles opened before, this one included, keep writing
    /// the old version's objects, which every reader reads; from the next
    /// open on, backups bundle small files, and a cairn that reads only
    /// the old version refuses the repository. Refused while the header is
    /// damaged (`repair header` first, which writes the current version).
    pub fn upgrade_format(&self) -> Result<()> {
        if let Some(why) = &self.0.header_damage {
            return Err(Error::Usage(format!(
                "cannot upgrade while {HEADER_PATH} is damaged ({why}); run `cairn repair header`"
            )));
        }
        self.write_header(FORMAT_VERSION)
    }

    /// Writes `cairn.repository` naming format `version` and this
    /// repository's id.
    fn write_header(&self, version: u32) -> Result<()> {
        let header = Header {
            version,
            repo_id: self.id(),
        };
        self.0
            .storage
            .write(HEADER_PATH, Bytes::from(header.encode()))
            .map_err(self.serr())
    }

    /// Rewrites `cairn.repository` from the config when
    /// [`Repository::header_damage`] says it is damaged; returns whether it
    /// did.
    pub fn repair_header(&self) -> Result<bool> {
        if self.0.header_damage.is_none() {
            return Ok(false);
        }
        // A header that decoded keeps its version; one that did not is
        // written with today's, which a reader of an older version refuses
        // rather than misread the repository's newer objects.
        self.write_header(self.0.header_version.unwrap_or(FORMAT_VERSION))?;
        Ok(true)
    }

    fn assemble(
        storage: DynStorage,
        location: String,
        config: Config,
        keys: Keyring,
        header_version: Option<u32>,
        header_damage: Option<String>,
        opts: &OpenOptions,
    ) -> Result<Self> {
        let fingerprint = blake3::hash(&config.encode());
        let cache_path = opts
            .cache_dir
            .as_ref()
            .map(|d| d.join(config.repo_id.to_hex()).join("cache.sqlite"));
        let cache = Cache::open(
            cache_path.as_deref(),
            &config.repo_id,
            fingerprint.as_bytes(),
        )?;
        let repo = Repository(Arc::new(Inner {
            sealer: BlobSealer::new(
                keys.seal_key().clone(),
                IdHasher::new(config.id_key),
                config.zstd_level,
                header_version.unwrap_or(OLDEST_FORMAT_VERSION) >= BUNDLES_SINCE,
            ),
            header_version,
            keys,
            storage,
            location,
            config,
            index: IndexView::new(cache, opts.tolerate_damage),
            damage: Default::default(),
            found: Default::default(),
            damage_epoch: Default::default(),
            header_damage,
            prefetched: Default::default(),
            recent_bundles: Default::default(),
        }));
        // A cache found damaged after this is rebuilt from the index.
        let weak = Arc::downgrade(&repo.0);
        let tolerate = opts.tolerate_damage;
        repo.0
            .index
            .cache()
            .set_refill(Box::new(move |fresh: &Cache| {
                let inner = weak
                    .upgrade()
                    .ok_or_else(|| Error::Internal("the repository handle was closed".into()))?;
                Repository(inner).fill_index(fresh, tolerate)
            }));
        Ok(repo)
    }

    /// Reads the `gc/` plans and the `damage/` records `listed` names (the
    /// index is synced on first use, see crate::index_view). A listing
    /// that failed is made again here, and reports its error.
    fn refresh_from(self, listed: Listings) -> Result<Self> {
        let Listings {
            started,
            plans,
            damage,
        } = listed;
        let (plans, damage) = together(
            || match plans.clone() {
                Ok(ids) => self
                    .0
                    .index
                    .refresh_plans_listed(&self.objects(), ids, started),
                Err(_) => self.refresh_plans(),
            },
            || match damage.clone() {
                Ok(ids) => self.refresh_damage_listed(ids),
                Err(_) => self.refresh_damage(),
            },
        );
        plans?;
        damage?;
        Ok(self)
    }

    /// Ingests every index segment into `fresh`, a cache being rebuilt
    /// after damage. One segment at a time, on the calling thread (this
    /// may run on a rayon worker while the pool's other threads wait for
    /// the rebuild), each decoded as a stream.
    fn fill_index(&self, fresh: &Cache, tolerate_damage: bool) -> Result<()> {
        let mut listed = self.objects().list::<IndexSegments>()?;
        listed.sort_by_key(|l| l.id);
        for crate::objects::Listed { id, size, .. } in listed {
            match crate::index_view::ingest_in_full(fresh, &self.objects(), &id, size) {
                Ok(()) => {}
                Err(e) if crate::objects::is_vanished(&e) => {}
                Err(e) if tolerate_damage => tracing::warn!("{e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Where the repository is.
    pub fn location(&self) -> &str {
        &self.0.location
    }

    /// The storage it lives on.
    pub fn storage(&self) -> &DynStorage {
        &self.0.storage
    }

    /// The repository config.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The repository id.
    pub fn id(&self) -> Id {
        self.0.config.repo_id
    }

    /// The local cache: trees and snapshots, and the index as far as it
    /// was synced. For index queries use [`Repository::index`].
    pub fn cache(&self) -> &Cache {
        self.0.index.cache()
    }

    /// The local cache with its index in line with `index/` (synced now if
    /// this handle has not synced yet).
    pub fn index(&self) -> Result<&Cache> {
        self.0.index.synced_cache(&self.objects())
    }

    /// The index view: the index and the `gc/` plans.
    pub fn index_view(&self) -> &IndexView {
        &self.0.index
    }

    /// The blob id of `data`.
    #[inline]
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        self.0.sealer.blob_id(data)
    }

    /// The repository's objects by kind: listing, loading and saving
    /// under the one policy of [`crate::objects`].
    pub fn objects(&self) -> Objects<'_> {
        Objects::new(&self.0.storage, &self.0.location, self.0.keys.seal_key())
    }

    /// The master key this handle opened with and the key files.
    pub fn keyring(&self) -> &Keyring {
        &self.0.keys
    }

    /// Seals and opens this repository's blobs.
    pub fn sealer(&self) -> &BlobSealer {
        &self.0.sealer
    }

    /// The repository's format version, what its packs are written as:
    /// its header's, or 1 when the header is unreadable. Version 1
    /// repositories are written version 1 packs (no bundles), so readers
    /// that predate version 2 keep reading them.
    pub fn format_version(&self) -> u32 {
        self.0.header_version.unwrap_or(OLDEST_FORMAT_VERSION)
    }

    pub(crate) fn serr(&self) -> impl Fn(StorageError) -> Error {
        storage_err(&self.0.location)
    }

    /// Index segments that failed to load (only with `tolerate_damage`);
    /// syncs the index if this handle has not yet.
    pub fn damaged_segments(&self) -> Result<Vec<(IndexId, String)>> {
        self.index()?;
        Ok(self.0.index.damaged_segments())
    }

    /// Brings the cached index in line with `index/`: ingests new segments
    /// (streamed, in bounded memory), drops vanished ones.
    pub fn sync_index(&self, tolerate_damage: bool) -> Result<()> {
        self.sync_index_report(tolerate_damage).map(|_| ())
    }

    /// Brings the index this handle has read in line with `index/`, at
    /// the level it has reached (see [`IndexView::refresh`]).
    pub fn refresh_index(&self) -> Result<SyncReport> {
        self.0.index.refresh(&self.objects())
    }

    /// [`Repository::sync_index`], saying what it did.
    pub fn sync_index_report(&self, tolerate_damage: bool) -> Result<SyncReport> {
        self.0.index.sync(&self.objects(), tolerate_damage)
    }

    /// Reads, verifies and decodes one index segment.
    pub fn load_segment(&self, id: &IndexId) -> Result<IndexSegment> {
        self.objects().load::<IndexSegments>(id)
    }

    /// Writes an index segment and adds it to the cache; returns its id.
    pub fn save_segment(&self, seg: &IndexSegment) -> Result<IndexId> {
        let (id, _) = self.objects().save::<IndexSegments>(seg)?;
        self.0.index.add_written(&id, seg)?;
        Ok(id)
    }

    /// Where a blob is stored, if indexed. Preferred, in order: a copy
    /// outside every `gc/` plan and every `damage/` record, a planned copy
    /// not recorded as damaged, then any copy (a reader of a damaged copy
    /// fails with the damage named).
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.0.index.lookup(&self.objects(), &self.damage(), id)
    }

    /// [`Repository::lookup`] of a blob stored as `kind`: trees and chunk
    /// lists are located without ingesting the index's data rows.
    pub fn lookup_kind(&self, kind: BlobKind, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.0
            .index
            .lookup_kind(&self.objects(), &self.damage(), kind, id)
    }

    /// [`Repository::lookup_kind`] of each of `ids`, in their order, from
    /// one cache transaction.
    pub fn lookup_kind_all(
        &self,
        kind: BlobKind,
        ids: &[BlobId],
    ) -> Result<Vec<Option<BlobLocation>>> {
        self.0
            .index
            .lookup_kind_all(&self.objects(), &self.damage(), kind, ids)
    }

    /// Brings the index rows of the data blobs `ids` into the cache (see
    /// [`IndexView::cover`]): their lookups and dedup checks then need no
    /// ingestion of the whole index.
    pub fn cover_blobs(&self, ids: &std::collections::HashSet<BlobId>) -> Result<SyncReport> {
        self.0.index.cover(&self.objects(), ids)
    }

    /// Whether the index holds blob `id` in a pack no `gc/` plan lists and
    /// no `damage/` record names for it. Writers deduplicate only against
    /// such blobs: a blob whose copies are all planned for deletion or known
    /// to be damaged counts as absent and is written again.
    pub fn has_blob(&self, id: &BlobId) -> Result<bool> {
        self.0.index.has_blob(&self.objects(), &self.damage(), id)
    }

    /// Which of `ids` [`Repository::has_blob`] says "yes" to, looked up
    /// together (one cache transaction); the others may be present too
    /// and are asked one by one. The answer holds while
    /// [`Repository::decisions_epoch`] has not moved.
    pub fn present_blobs(&self, ids: &[BlobId]) -> Result<std::collections::HashSet<BlobId>> {
        self.0
            .index
            .present_among(&self.objects(), &self.damage(), ids)
    }

    /// Changes each time the `gc/` plans or the `damage/` records this
    /// handle decides with are replaced: a presence answer taken at one
    /// epoch is not used at another.
    pub fn decisions_epoch(&self) -> u64 {
        self.0.index.plans_epoch()
            + self
                .0
                .damage_epoch
                .load(std::sync::atomic::Ordering::Acquire)
    }

    /// What the index says of blob `id` without reading it beyond the tree
    /// level (see [`IndexView::presence`]): a writer deduplicating takes
    /// [`Presence::Unknown`] as absent (stores the blob again) and
    /// confirms such blobs in batches. Copies in packs of `ignore` do not
    /// count. Callers that need an exact answer use [`Repository::has_blob`].
    pub fn presence(
        &self,
        id: &BlobId,
        ignore: &std::collections::HashSet<PackId>,
    ) -> Result<Presence> {
        self.0
            .index
            .presence(&self.objects(), &self.damage(), id, ignore)
    }

    /// The recorded damage, for reading. A poisoned lock still holds a
    /// whole set (it is only ever replaced whole).
    fn damage(&self) -> std::sync::RwLockReadGuard<'_, DamageSet> {
        crate::sync::read(&self.0.damage)
    }

    /// Whether any damage is recorded in `damage/` (as of the last refresh).
    pub fn has_recorded_damage(&self) -> bool {
        !self.damage().is_empty()
    }

    /// The damage recorded in `damage/` as of the last refresh.
    pub fn damage_set(&self) -> DamageSet {
        self.damage().clone()
    }

    /// Re-reads the `damage/` records (loads only records not seen before).
    pub fn refresh_damage(&self) -> Result<()> {
        let listed = self
            .objects()
            .list_ids::<crate::format::kinds::DamageRecords>()?;
        self.refresh_damage_listed(listed)
    }

    /// [`Repository::refresh_damage`] from a listing of `damage/` (`listed`).
    fn refresh_damage_listed(&self, listed: Vec<Id>) -> Result<()> {
        let known = self.damage_set();
        let fresh = crate::damage::load_damage_set_listed(&self.objects(), &known, listed)?;
        *crate::sync::write(&self.0.damage) = fresh;
        self.0
            .damage_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Notes damage met while reading, to be recorded by
    /// [`Repository::record_found_damage`]. Entries already recorded are
    /// ignored.
    pub fn note_damage(&self, entry: DamageEntry) {
        if self.is_known_damage(&entry) {
            return;
        }
        tracing::debug!("noting damage: {} {:?}", entry.reason, entry.pack);
        if let Ok(mut found) = self.0.found.lock() {
            found.insert(entry);
        }
    }

    fn is_known_damage(&self, entry: &DamageEntry) -> bool {
        self.damage().knows(entry)
    }

    /// Writes the damage noted since the last call as one `damage/` record,
    /// so every writer stores those blobs again and maintenance drops the
    /// bad copies; returns how many entries it recorded. A repository that
    /// cannot be written (read-only credentials) only loses the record:
    /// the caller warns.
    pub fn record_found_damage(&self) -> Result<usize> {
        let entries: Vec<DamageEntry> = match self.0.found.lock() {
            Ok(mut found) => std::mem::take(&mut *found).into_iter().collect(),
            Err(_) => return Ok(0),
        };
        let entries: Vec<DamageEntry> = entries
            .into_iter()
            .filter(|e| !self.is_known_damage(e))
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        crate::damage::save_record(&self.objects(), entries)?;
        self.refresh_damage()?;
        Ok(n)
    }

    /// [`Repository::record_found_damage`] for commands whose own result
    /// must not depend on it: a failure to record is logged, not returned.
    pub fn record_found_damage_or_warn(&self) {
        match self.record_found_damage() {
            Ok(0) => {}
            Ok(n) => tracing::info!("recorded {n} damaged object(s) in damage/"),
            Err(e) => tracing::warn!(
                "could not record the damage found ({e}); the next backup may deduplicate against it until `cairn check` records it"
            ),
        }
    }

    /// Reads `range` of pack `pack`; a missing or truncated pack is noted
    /// as damage and reported as a corrupt object.
    pub fn read_pack_range(&self, pack: &PackId, range: std::ops::Range<u64>) -> Result<Bytes> {
        let path = pack.path();
        let want = range.end.saturating_sub(range.start);
        match self.0.storage.read_range(&path, range) {
            Ok(b) if b.len() as u64 == want => Ok(b),
            // Storage promises the exact range; anything else is not data.
            Ok(b) => Err(self.serr()(StorageError::new(
                cairn_storage::StorageErrorKind::Temporary,
                format!("read {path}"),
                format!("short read: got {} of {want} bytes", b.len()),
            ))),
            Err(e) if e.is_not_found() => {
                if self.pack_left_the_index(pack) {
                    return Err(Error::corrupt(path, PACK_LEFT_THE_INDEX));
                }
                self.note_damage(crate::damage::whole_pack(*pack, DamageReason::PackMissing));
                Err(Error::corrupt(path, "the pack is missing"))
            }
            Err(e) if e.is_short_object() => {
                self.note_damage(crate::damage::whole_pack(*pack, DamageReason::PackDamaged));
                Err(Error::corrupt(
                    path,
                    format!("the pack is shorter than the index says (truncated): {e}"),
                ))
            }
            Err(e) => Err(self.serr()(e)),
        }
    }

    /// Re-reads the `gc/` plans (lists `gc/`, loads only plans not seen
    /// before); returns whether the set of planned packs changed.
    pub fn refresh_plans(&self) -> Result<bool> {
        self.0.index.refresh_plans(&self.objects())
    }

    /// [`Repository::refresh_plans`] unless this is the handle's first
    /// call and it read the plans less than `age` ago (see
    /// [`IndexView::refresh_plans_unless_opened_within`]).
    pub fn refresh_plans_unless_opened_within(&self, age: std::time::Duration) -> Result<()> {
        self.0
            .index
            .refresh_plans_unless_opened_within(&self.objects(), age)
    }

    /// The packs listed in the `gc/` plans seen by the last refresh.
    pub fn planned_packs(&self) -> PlanSet {
        self.0.index.planned_packs()
    }

    /// Seals a blob for storage: returns its id and stored bytes (see
    /// [`BlobSealer::seal`]).
    pub fn seal_blob(&self, kind: BlobKind, plaintext: &[u8]) -> (BlobId, Vec<u8>) {
        self.0.sealer.seal(kind, plaintext)
    }

    /// Seals a blob whose id is already known.
    pub fn seal_blob_with_id(&self, kind: BlobKind, id: BlobId, plaintext: &[u8]) -> Vec<u8> {
        self.0.sealer.seal_with_id(kind, id, plaintext)
    }

    /// Seals a blob whose id is already known into `out` (cleared first;
    /// see [`BlobSealer::seal_into`]).
    #[inline]
    pub fn seal_blob_into(&self, kind: BlobKind, id: BlobId, plaintext: &[u8], out: &mut Vec<u8>) {
        self.0.sealer.seal_into(kind, id, plaintext, out)
    }

    /// Opens a stored blob and checks its id.
    pub fn open_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &[u8],
        object: &str,
    ) -> Result<Vec<u8>> {
        self.0.sealer.open(kind, id, stored, object)
    }

    /// Opens the copy at `loc` from its stored bytes (the blob's own, or
    /// its bundle's; see [`BlobSealer::open_copy`]).
    pub fn open_copy(
        &self,
        loc: &BlobLocation,
        id: &BlobId,
        stored: &[u8],
        object: &str,
    ) -> Result<Vec<u8>> {
        self.0
            .sealer
            .open_copy(loc.kind, id, loc.inner, loc.raw_len, stored, object)
    }

    /// Opens a stored blob and hands its plaintext to `f` (see
    /// [`BlobSealer::with_open`]).
    #[inline]
    pub fn with_open_blob<R>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &[u8],
        object: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.0.sealer.with_open(kind, id, stored, object, f)
    }

    /// Whether `pack`, found missing, is also gone from the index once it
    /// is brought up to date: a handle kept open (a mount, a long restore)
    /// across a maintenance run that repacked and swept it holds a stale
    /// index, not a damaged repository.
    fn pack_left_the_index(&self, pack: &PackId) -> bool {
        if let Err(e) = self.sync_index(true) {
            tracing::debug!("refreshing the index after a missing pack failed: {e}");
            return false;
        }
        self.index()
            .and_then(|cache| cache.segments_listing(pack))
            .is_ok_and(|segments| segments.is_empty())
    }

    /// Reads, decrypts and verifies one blob.
    pub fn read_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_retrying(kind, id, true)
    }

    /// [`Repository::read_blob`]; with `retry`, a blob whose pack left the
    /// index since this handle looked it up is looked up again once.
    fn read_blob_retrying(&self, kind: BlobKind, id: &BlobId, retry: bool) -> Result<Vec<u8>> {
        let loc = self.locate_for_read(kind, id)?;
        let recent = loc
            .inner
            .and_then(|_| crate::sync::lock(&self.0.recent_bundles).get((loc.pack, loc.offset)));
        let (loc, opened) = match recent {
            Some(bundle) => (loc, self.member_of(&loc, id, &bundle)),
            None => {
                let (loc, stored) = self.read_located(kind, id, loc, retry)?;
                let path = loc.pack.path();
                let opened = match loc.inner {
                    None => self.open_blob(kind, id, &stored, &path),
                    Some(_) => self
                        .0
                        .sealer
                        .with_open_bundle(&stored, &path, <[u8]>::to_vec)
                        .and_then(|bundle| {
                            let bundle = Arc::new(bundle);
                            crate::sync::lock(&self.0.recent_bundles)
                                .put((loc.pack, loc.offset), bundle.clone());
                            self.member_of(&loc, id, &bundle)
                        }),
                };
                (loc, opened)
            }
        };
        opened.inspect_err(|e| {
            if matches!(e, Error::Corrupt { .. }) {
                self.note_damage(crate::damage::one_copy(*id, loc.pack));
            }
        })
    }

    /// Bundled blob `id`'s plaintext, from its opened `bundle`.
    fn member_of(&self, loc: &BlobLocation, id: &BlobId, bundle: &[u8]) -> Result<Vec<u8>> {
        let inner = loc.inner.unwrap_or_default();
        self.0
            .sealer
            .member(bundle, id, inner, loc.raw_len, &loc.pack.path())
            .map(<[u8]>::to_vec)
    }

    /// The copy of blob `id` a read uses.
    fn locate_for_read(&self, kind: BlobKind, id: &BlobId) -> Result<BlobLocation> {
        self.lookup_kind(kind, id)?
            .ok_or_else(|| Error::BlobNotFound {
                kind,
                id: id.to_hex(),
            })
    }

    /// One blob's stored (sealed) bytes and where they were read, as a copy
    /// keeps them; looked up again once when its pack left the index since
    /// this handle looked (see [`Repository::read_blob`]).
    pub fn read_stored(&self, kind: BlobKind, id: &BlobId) -> Result<(BlobLocation, Bytes)> {
        self.read_stored_retrying(kind, id, true)
    }

    fn read_stored_retrying(
        &self,
        kind: BlobKind,
        id: &BlobId,
        retry: bool,
    ) -> Result<(BlobLocation, Bytes)> {
        let loc = self.locate_for_read(kind, id)?;
        self.read_located(kind, id, loc, retry)
    }

    /// The stored bytes at `loc`, blob `id`'s copy; with `retry`, looked
    /// up again once if its pack left the index since the lookup.
    fn read_located(
        &self,
        kind: BlobKind,
        id: &BlobId,
        loc: BlobLocation,
        retry: bool,
    ) -> Result<(BlobLocation, Bytes)> {
        match self.read_pack_range(&loc.pack, loc.range()) {
            Ok(stored) => Ok((loc, stored)),
            Err(Error::Corrupt { reason, .. }) if retry && reason == PACK_LEFT_THE_INDEX => {
                tracing::debug!(
                    "{}: {reason}; looking {} up again",
                    loc.pack.path(),
                    id.short()
                );
                self.read_stored_retrying(kind, id, false)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps the plaintext `data` of tree `id` (it hashed to `id` and
    /// decoded) for the walk that follows a prefetch, within
    /// [`PREFETCHED_TREE_BYTES`]; returns whether it was kept.
    pub(crate) fn keep_prefetched(&self, id: BlobId, data: Vec<u8>) -> bool {
        let mut kept = crate::sync::lock(&self.0.prefetched);
        let len = data.len() as u64;
        if kept.bytes + len > PREFETCHED_TREE_BYTES || kept.trees.contains_key(&id) {
            return false;
        }
        kept.bytes += len;
        kept.trees.insert(id, data);
        true
    }

    /// Drops the trees a prefetch kept that no walk took (directories gone
    /// from the source since the parent).
    pub fn forget_prefetched(&self) {
        let mut kept = crate::sync::lock(&self.0.prefetched);
        kept.trees = Default::default();
        kept.bytes = 0;
    }

    /// Reads the index's tree level now, if this handle has not (see
    /// [`IndexView::reach_trees`]).
    pub fn reach_tree_level(&self) -> Result<()> {
        self.0.index.reach_trees(&self.objects())
    }

    /// Loads a tree: one a prefetch kept for this walk (taken: a walk
    /// loads each directory's tree once), else from the cache when
    /// possible, else from the repository.
    pub fn load_tree(&self, id: &BlobId) -> Result<Tree> {
        let kept = {
            let mut kept = crate::sync::lock(&self.0.prefetched);
            let taken = kept.trees.remove(id);
            if let Some(data) = &taken {
                kept.bytes -= data.len() as u64;
            }
            taken
        };
        if let Some(tree) = kept.and_then(|data| Tree::decode(&data).ok()) {
            return Ok(tree);
        }
        if let Some(data) = self.0.index.cache().get_object(CachedKind::Tree, &id.0)? {
            if self.blob_id(&data) == *id {
                if let Ok(tree) = Tree::decode(&data) {
                    return Ok(tree);
                }
            }
            tracing::warn!("cached tree {} is damaged; fetching it again", id.short());
            self.0.index.cache().remove_object(&id.0)?;
        }
        let data = self.read_blob(BlobKind::Tree, id)?;
        let tree =
            Tree::decode(&data).map_err(|e| Error::corrupt(format!("tree {}", id.to_hex()), e))?;
        self.0
            .index
            .cache()
            .put_object(CachedKind::Tree, &id.0, &data)?;
        Ok(tree)
    }

    /// The full chunk list of a file's content (loading list blobs).
    pub fn chunk_list(&self, content: &Content) -> Result<Vec<ChunkRef>> {
        match content {
            Content::Inline(chunks) => Ok(chunks.clone()),
            Content::Lists(lists) => {
                let mut out = Vec::new();
                for l in lists {
                    let data = self.read_blob(BlobKind::List, &l.id)?;
                    out.extend(
                        decode_list(&data).map_err(|e| {
                            Error::corrupt(format!("list blob {}", l.id.to_hex()), e)
                        })?,
                    );
                }
                Ok(out)
            }
        }
    }

    /// Writes a snapshot manifest; returns its id.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        let (id, stored) = self.objects().save::<Snapshots>(snap)?;
        self.cache()
            .put_object(CachedKind::Snapshot, &id.0, &stored)?;
        Ok(id)
    }

    /// Adds a key for `password`; returns its id.
    pub fn add_key(&self, password: &str, kdf: KdfParams) -> Result<String> {
        self.0
            .keys
            .add(&self.0.storage, &self.0.location, password, kdf)
    }

    /// Every key file.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.0.keys.list(&self.0.storage, &self.0.location)
    }

    /// Removes a key. The key this process opened with cannot be removed
    /// (use `change_password`), and neither can the last key.
    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        self.0
            .keys
            .remove(&self.0.storage, &self.0.location, id_prefix)
    }

    /// Replaces the current key with one for `new_password`; returns the new key id.
    pub fn change_password(&self, new_password: &str, kdf: KdfParams) -> Result<String> {
        self.0
            .keys
            .change_password(&self.0.storage, &self.0.location, new_password, kdf)
    }

    /// Deletes a snapshot manifest (its data stays until garbage collection).
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.objects().delete::<Snapshots>(id)?;
        self.0.index.cache().remove_object(&id.0)
    }

    /// Loads one snapshot manifest, from the cache when possible.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.load_snapshot_from(id, true)
    }

    /// Loads one snapshot manifest from storage, whatever the cache holds
    /// (`check` must see the stored object, not a cached copy).
    pub fn load_snapshot_stored(&self, id: &SnapshotId) -> Result<Snapshot> {
        self.load_snapshot_from(id, false)
    }

    fn load_snapshot_from(&self, id: &SnapshotId, use_cache: bool) -> Result<Snapshot> {
        let cached = if use_cache {
            self.0
                .index
                .cache()
                .get_object(CachedKind::Snapshot, &id.0)?
        } else {
            None
        };
        let stored = match cached {
            Some(s) if Id::hash(&s) == id.0 => s,
            _ => {
                let s = self.objects().read::<Snapshots>(id)?.to_vec();
                self.0
                    .index
                    .cache()
                    .put_object(CachedKind::Snapshot, &id.0, &s)?;
                s
            }
        };
        self.objects().open::<Snapshots>(id, &stored)
    }

    /// Every readable snapshot, oldest first (equal times by id). The one
    /// policy for a snapshot that cannot be read: one deleted between the
    /// listing and the read (a backup replacing its checkpoint) is skipped;
    /// one that is damaged is skipped with a warning, so it affects only
    /// itself (`check` names it, `repair snapshots` removes it). Storage
    /// failures fail the listing.
    pub fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let ids = self.objects().list_ids::<Snapshots>()?;
        // The cached manifests in one cache transaction, those read from
        // the repository stored in another: on an empty cache, two
        // transactions instead of one per snapshot.
        let keys: Vec<Id> = ids.iter().map(|id| id.0).collect();
        let cached: std::collections::HashMap<SnapshotId, Vec<u8>> = ids
            .iter()
            .copied()
            .zip(self.cache().get_objects(CachedKind::Snapshot, &keys)?)
            .filter_map(|(id, stored)| stored.filter(|s| Id::hash(s) == id.0).map(|s| (id, s)))
            .collect();
        let fetched = std::sync::Mutex::new(Vec::new());
        let reads = ids.len() - cached.len();
        let mut out = Vec::with_capacity(ids.len());
        let loaded = Objects::stream_each::<Snapshots, _>(
            ids,
            SNAPSHOT_READS.min(reads).max(2),
            |id| match cached.get(id) {
                Some(stored) => self.objects().open::<Snapshots>(id, stored),
                None => {
                    let stored = self.objects().read::<Snapshots>(id)?.to_vec();
                    let snapshot = self.objects().open::<Snapshots>(id, &stored);
                    crate::sync::lock(&fetched).push((id.0, stored));
                    snapshot
                }
            },
            |id, snapshot| {
                out.push((id, snapshot));
                Ok(())
            },
        )?;
        self.cache()
            .put_objects(CachedKind::Snapshot, &crate::sync::into_inner(fetched))?;
        for (id, e) in &loaded.damaged {
            tracing::warn!(
                "skipping snapshot {}: {e} (`cairn repair snapshots` removes it)",
                id.short()
            );
        }
        sort_snapshots(&mut out);
        Ok(out)
    }

    /// Resolves `spec` (`latest` or a hex prefix of at least 4 characters)
    /// among the snapshots `filter` accepts.
    pub fn find_snapshot(
        &self,
        spec: &str,
        filter: &SnapshotFilter,
    ) -> Result<(SnapshotId, Snapshot)> {
        let all: Vec<_> = self
            .list_snapshots()?
            .into_iter()
            .filter(|(_, s)| filter.matches(s))
            .collect();
        if spec == "latest" {
            return all
                .into_iter()
                .rev()
                .find(|(_, s)| s.complete)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no complete snapshot matches {}",
                        filter.describe()
                    ))
                });
        }
        let spec_l = spec.to_ascii_lowercase();
        if spec_l.len() < 4 || !spec_l.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "{spec:?} is not a snapshot id: give `latest` or at least 4 hex characters of an id"
            )));
        }
        let mut found: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec_l))
            .collect();
        match found.len() {
            0 => Err(Error::Usage(format!(
                "no snapshot {spec} (see `cairn snapshots`)"
            ))),
            1 => Ok(found.remove(0)),
            n => Err(Error::Usage(format!(
                "{n} snapshots start with {spec}; give more characters"
            ))),
        }
    }
}

/// Sorts snapshots oldest first, the same way on every run: by time; among
/// equal times a snapshot after its ancestors of that time (a repaired
/// snapshot keeps its original's time and names it as its parent, so
/// `latest` is the repaired one), then by id.
pub fn sort_snapshots<T: std::borrow::Borrow<(SnapshotId, Snapshot)>>(list: &mut [T]) {
    let by_id: std::collections::HashMap<SnapshotId, &Snapshot> = list
        .iter()
        .map(|e| {
            let (id, s) = e.borrow();
            (*id, s)
        })
        .collect();
    // Ancestors with the same time; bounded, though ids are content
    // hashes and cannot form a cycle.
    let depth = |s: &Snapshot| {
        let mut depth = 0;
        let mut parent = s.parent;
        while let Some(p) = parent.and_then(|p| by_id.get(&p)) {
            if p.time != s.time || depth >= by_id.len() {
                break;
            }
            depth += 1;
            parent = p.parent;
        }
        depth
    };
    let keys: std::collections::HashMap<SnapshotId, usize> =
        by_id.iter().map(|(id, s)| (*id, depth(s))).collect();
    list.sort_by(|a, b| {
        let ((ia, sa), (ib, sb)) = (a.borrow(), b.borrow());
        (sa.time, keys.get(ia), ia).cmp(&(sb.time, keys.get(ib), ib))
    });
}

/// Narrows which snapshots a command considers.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    /// Only this source.
    pub source: Option<String>,
    /// Only this host.
    pub host: Option<String>,
    /// Only snapshots carrying all these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `s` passes the filter.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.source.as_ref().is_none_or(|x| *x == s.source)
            && self.host.as_ref().is_none_or(|x| *x == s.host)
            && self.tags.iter().all(|t| s.tags.contains(t))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.source {
            parts.push(format!("source {s}"));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        for t in &self.tags {
            parts.push(format!("tag {t}"));
        }
        if parts.is_empty() {
            "the repository".into()
        } else {
            parts.join(", ")
        }
    }
}

/// `AlreadyExists` when the location has a repository header.
fn refuse_existing(storage: &DynStorage, location: &str) -> Result<()> {
    match storage.stat(HEADER_PATH) {
        Ok(_) => Err(Error::AlreadyExists {
            location: location.to_string(),
        }),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(storage_err(location)(e)),
    }
}

/// A claim older than this was left by an init that was killed: ignored and
/// removed.
const INIT_CLAIM_STALE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long an init waits for another one on the same location to finish.
const INIT_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The one claim to initialise a location, removed when dropped.
///
/// Every contender writes its own claim, then lists the claims, and goes on
/// only when it sees no other: with storage that lists every completed
/// write (local filesystems, S3 since 2020), of two contenders the later
/// writer sees the earlier one, so at most one goes on. Those that see
/// another withdraw, wait a random moment and look again: by then the
/// winner's header exists (the caller reports `AlreadyExists`, and a job
/// opens the repository instead), or every claim is gone and one retries.
struct InitClaim {
    storage: DynStorage,
    path: String,
}

impl InitClaim {
    fn take(storage: &DynStorage, location: &str) -> Result<InitClaim> {
        use crate::format::kinds::InitClaims;
        use rand::Rng;
        let serr = storage_err(location);
        let started = std::time::Instant::now();
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let nonce: u64 = rand::thread_rng().gen();
            let id = format!("{nonce:016x}-{now}");
            let path = InitClaims::path(&id);
            storage.write(&path, Bytes::new()).map_err(&serr)?;
            let claim = InitClaim {
                storage: storage.clone(),
                path,
            };
            let mut others = Vec::new();
            for listed in list_on::<InitClaims>(storage, location)? {
                if listed.id == id {
                    continue;
                }
                let written = listed
                    .id
                    .rsplit_once('-')
                    .and_then(|(_, secs)| secs.parse::<i64>().ok());
                match written {
                    Some(t) if now.saturating_sub(t) < INIT_CLAIM_STALE.as_secs() as i64 => {
                        others.push(listed.path)
                    }
                    // Left by a killed init (or not ours to read): out of the way.
                    _ => {
                        let _ = storage.delete(&listed.path);
                    }
                }
            }
            if others.is_empty() {
                return Ok(claim);
            }
            drop(claim);
            if started.elapsed() > INIT_CLAIM_WAIT {
                return Err(Error::InitInProgress {
                    location: location.to_string(),
                    claims: others.join(", "),
                    waited_s: INIT_CLAIM_WAIT.as_secs(),
                });
            }
            let pause = rand::thread_rng().gen_range(50..400);
            std::thread::sleep(std::time::Duration::from_millis(pause));
            // The winner may have finished meanwhile.
            refuse_existing(storage, location)?;
        }
    }
}

impl Drop for InitClaim {
    fn drop(&mut self) {
        if let Err(e) = self.storage.delete(&self.path) {
            tracing::warn!("could not remove the init claim {}: {e}", self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::SNAPSHOT_VERSION;

    fn snap(secs: i64, parent: Option<u8>) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: chrono::DateTime::from_timestamp(secs, 0).unwrap(),
            host: "h".into(),
            source: "s".into(),
            paths: vec![],
            tags: vec![],
            tree: BlobId(Id([0; 32])),
            parent: parent.map(|p| SnapshotId(Id([p; 32]))),
            complete: true,
            summary: Default::default(),
            program_version: "cairn test".into(),
            excludes: vec![],
            hooks: vec![],
            damaged_root: None,
        }
    }

    #[test]
    fn a_repaired_snapshot_sorts_after_its_original_of_the_same_time() {
        // Ids chosen so that id order alone would put each copy first.
        let original = (SnapshotId(Id([9; 32])), snap(100, None));
        let repaired = (SnapshotId(Id([5; 32])), snap(100, Some(9)));
        let repaired_again = (SnapshotId(Id([1; 32])), snap(100, Some(5)));
        let older = (SnapshotId(Id([7; 32])), snap(50, None));
        let other_same_time = (SnapshotId(Id([3; 32])), snap(100, None));
        let want = [
            &older,
            &other_same_time,
            &original,
            &repaired,
            &repaired_again,
        ]
        .map(|(id, _)| *id)
        .to_vec();
        let mut list = vec![
            repaired_again.clone(),
            repaired.clone(),
            other_same_time.clone(),
            original.clone(),
            older.clone(),
        ];
        for _ in 0..list.len() {
            list.rotate_left(1);
            sort_snapshots(&mut list);
            assert_eq!(list.iter().map(|(id, _)| *id).collect::<Vec<_>>(), want);
        }
        let mut refs: Vec<&(SnapshotId, Snapshot)> = list.iter().rev().collect();
        sort_snapshots(&mut refs);
        assert_eq!(refs.iter().map(|(id, _)| *id).collect::<Vec<_>>(), want);
    }
}
