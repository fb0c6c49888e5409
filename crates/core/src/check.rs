//! `check`: verifies that index segments, packs and every snapshot agree,
//! optionally reads the packs and verifies every blob, and reports each
//! damaged object together with the snapshots and files it affects.
//!
//! Invariants: check never writes to the repository, and it never stops at
//! the first damage: every readable object is still examined. Packs present
//! but not indexed are warnings (a running backup uploads packs before the
//! segment naming them), not damage; the blobs a snapshot needs and cannot
//! find are damage.

use crate::damage::{one_copy, whole_pack, DamageSet};
use crate::error::{Error, ErrorKind, Result};
use crate::format::damage::DamageReason;
use crate::format::kinds::{IndexSegments, Packs, Snapshots};
use crate::format::pack::{encode_entries, read_trailer, BlobEntry};
use crate::format::tree::{Content, Payload};
use crate::format::{BlobId, BlobKind, Id, IndexId, PackId, SnapshotId};
use crate::objects::Objects;
use crate::repo::Repository;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Which packs `--read-data` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSubset {
    /// Every pack.
    All,
    /// A random `N` percent of the packs (at least one when any exist).
    Percent(u32),
    /// Slice `n` of `m`: packs whose id's first byte mod `m` is `n - 1`.
    /// Running 1/m … m/m over time reads everything once.
    Slice {
        /// Which slice, 1-based.
        n: u32,
        /// Number of slices.
        m: u32,
    },
}

impl std::str::FromStr for DataSubset {
    type Err = String;

    /// Parses `all`, `N%` (1–100) or `n/m` (1 ≤ n ≤ m ≤ 256).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(DataSubset::All);
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(DataSubset::Percent(p)),
                _ => Err(format!("{s:?}: a percentage must be 1% to 100%")),
            };
        }
        if let Some((n, m)) = s.split_once('/') {
            return match (n.trim().parse::<u32>(), m.trim().parse::<u32>()) {
                (Ok(n), Ok(m)) if n >= 1 && n <= m && m <= 256 => Ok(DataSubset::Slice { n, m }),
                _ => Err(format!("{s:?}: a slice is n/m with 1 <= n <= m <= 256")),
            };
        }
        Err(format!("{s:?} is not a subset: give N% or n/m"))
    }
}

impl DataSubset {
    fn select(&self, mut packs: Vec<(PackId, u64)>) -> Vec<(PackId, u64)> {
        match *self {
            DataSubset::All => packs,
            DataSubset::Slice { n, m } => packs
                .into_iter()
                .filter(|(id, _)| u32::from(id.as_bytes()[0]) % m == n - 1)
                .collect(),
            DataSubset::Percent(p) => {
                use rand::seq::SliceRandom;
                packs.shuffle(&mut rand::thread_rng());
                let take = (packs.len() * p as usize).div_ceil(100);
                packs.truncate(take);
                packs
            }
        }
    }
}

/// What `check` does.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Also read packs and verify every blob in them.
    pub read_data: Option<DataSubset>,
}

/// One damaged object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "damage", rename_all = "snake_case")]
pub enum Damage {
    /// `cairn.repository` is missing or damaged (the repository opened
    /// through its keys and config; `cairn repair header` rewrites it).
    HeaderDamaged {
        /// Why.
        reason: String,
    },
    /// An index segment cannot be read, opened or decoded.
    SegmentUnreadable {
        /// Object path.
        object: String,
        /// Why.
        reason: String,
    },
    /// A snapshot manifest cannot be read.
    SnapshotUnreadable {
        /// Object path.
        object: String,
        /// Why.
        reason: String,
    },
    /// The index names a pack the storage does not hold.
    PackMissing {
        /// Object path.
        object: String,
        /// Blobs the index says it held.
        blobs: u64,
    },
    /// A pack's size differs from the index's.
    PackSizeMismatch {
        /// Object path.
        object: String,
        /// Size in the index.
        indexed: u64,
        /// Size in storage.
        stored: u64,
    },
    /// A pack's bytes do not hash to its name.
    PackHashMismatch {
        /// Object path.
        object: String,
    },
    /// A pack's trailer cannot be read.
    TrailerUnreadable {
        /// Object path.
        object: String,
        /// Why.
        reason: String,
    },
    /// A pack's trailer and the index describe different blobs.
    IndexDisagrees {
        /// Object path.
        object: String,
    },
    /// A blob in a pack does not open or does not hash to its id.
    BlobDamaged {
        /// Pack object path.
        object: String,
        /// Blob id (hex).
        blob: String,
        /// Blob kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// A blob a snapshot needs cannot be found.
    BlobMissing {
        /// Blob id (hex).
        blob: String,
        /// Blob kind.
        kind: String,
        /// Why (not indexed, pack missing, ...).
        reason: String,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::HeaderDamaged { reason } => write!(
                f,
                "cairn.repository is damaged: {reason} (`cairn repair header` rewrites it)"
            ),
            Damage::SegmentUnreadable { object, reason } => {
                write!(f, "index segment {object} is unreadable: {reason}")
            }
            Damage::SnapshotUnreadable { object, reason } => {
                write!(f, "snapshot {object} is unreadable: {reason}")
            }
            Damage::PackMissing { object, blobs } => {
                write!(f, "pack {object} is missing ({blobs} blobs indexed in it)")
            }
            Damage::PackSizeMismatch {
                object,
                indexed,
                stored,
            } => write!(
                f,
                "pack {object} has {stored} bytes, the index says {indexed}"
            ),
            Damage::PackHashMismatch { object } => {
                write!(f, "pack {object} does not hash to its name (damaged bytes)")
            }
            Damage::TrailerUnreadable { object, reason } => {
                write!(f, "pack {object}: trailer unreadable: {reason}")
            }
            Damage::IndexDisagrees { object } => {
                write!(f, "pack {object}: trailer and index list different blobs")
            }
            Damage::BlobDamaged {
                object,
                blob,
                kind,
                reason,
            } => write!(
                f,
                "{kind} blob {blob} in pack {object} is damaged: {reason}"
            ),
            Damage::BlobMissing { blob, kind, reason } => {
                write!(f, "{kind} blob {blob} is missing: {reason}")
            }
        }
    }
}

/// A pack present in storage that no index segment names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnindexedPack {
    /// Object path.
    pub object: String,
    /// Size in bytes.
    pub size: u64,
}

/// A file or directory of a snapshot that cannot be restored whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffectedPath {
    /// Path inside the snapshot, `/`-rooted (lossy UTF-8 for display).
    pub path: String,
    /// What is lost.
    pub reason: String,
}

/// A snapshot that damage affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AffectedSnapshot {
    /// Snapshot id (hex).
    pub id: String,
    /// First 8 hex characters.
    pub short_id: String,
    /// Backup time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Host.
    pub host: String,
    /// Source.
    pub source: String,
    /// Damaged paths, sorted.
    pub paths: Vec<AffectedPath>,
}

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots examined.
    pub snapshots: u64,
    /// Distinct trees examined.
    pub trees: u64,
    /// Index segments listed.
    pub segments: u64,
    /// Packs in storage.
    pub packs: u64,
    /// Packs named by the index.
    pub indexed_packs: u64,
    /// Packs read with `--read-data`.
    pub packs_read: u64,
    /// Bytes read with `--read-data`.
    pub bytes_read: u64,
    /// Damaged or missing objects, sorted.
    pub damage: Vec<Damage>,
    /// Packs no segment names (warnings; `repair index` indexes them).
    pub unindexed_packs: Vec<UnindexedPack>,
    /// Snapshots with damaged files, oldest first.
    pub affected: Vec<AffectedSnapshot>,
    /// Damaged copies recorded in `damage/` that no snapshot needs (each
    /// blob it needs has an intact copy elsewhere): warnings, not damage;
    /// maintenance drops them.
    pub contained: Vec<Damage>,
    /// Damage entries this run recorded in `damage/`.
    pub recorded: u64,
}

impl CheckReport {
    /// True when nothing is damaged (unindexed packs are only warnings).
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// What the index says of one pack.
struct IndexedInfo {
    len: u64,
    blobs: u64,
    segment: IndexId,
    digest: Id,
}

fn entries_digest(entries: &[BlobEntry]) -> Id {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.id, e.offset));
    Id::hash(&encode_entries(&sorted, 2))
}

/// Which blobs are unusable: packs missing or truncated, blobs found
/// damaged (by this run or recorded in `damage/`). Shared by check and
/// repair. Lookups are memoised.
pub(crate) struct Health {
    missing_packs: HashSet<PackId>,
    /// Packs shorter than the index says, with their stored size.
    truncated: HashMap<PackId, u64>,
    damaged: HashMap<(PackId, BlobId), String>,
    /// Packs damaged as a whole (wrong hash, unreadable trailer) whose
    /// blobs may still read: suspect, not lost.
    suspect: HashSet<PackId>,
    /// `damage/` as of this run's start.
    recorded: DamageSet,
    memo: Mutex<HashMap<BlobId, Option<String>>>,
    /// Copies a needed blob had no alternative to: (pack, blob) of each
    /// location of a lost blob, and the suspect packs that hold the only
    /// readable copies of a needed blob.
    blamed: Mutex<HashSet<(PackId, Option<BlobId>)>>,
}

impl Health {
    /// Why the copy of `id` at `loc` cannot be read, if known.
    fn copy_problem(&self, id: &BlobId, loc: &crate::cache::BlobLocation) -> Option<String> {
        let pack = loc.pack;
        if self.missing_packs.contains(&pack)
            || self.recorded.pack_reason(&pack) == Some(DamageReason::PackMissing)
        {
            return Some(format!("its pack {} is missing", pack.path()));
        }
        if let Some(size) = self.truncated.get(&pack) {
            if u64::from(loc.offset) + u64::from(loc.stored_len) > *size {
                return Some(format!(
                    "its pack {} is truncated ({size} bytes)",
                    pack.path()
                ));
            }
        }
        if let Some(r) = self.damaged.get(&(pack, *id)) {
            return Some(format!("damaged in pack {}: {r}", pack.path()));
        }
        if self.recorded.copy_recorded(id, &pack) {
            return Some(format!(
                "its copy in pack {} is recorded as damaged (damage/)",
                pack.path()
            ));
        }
        None
    }

    fn is_suspect(&self, pack: &PackId) -> bool {
        self.suspect.contains(pack) || self.recorded.pack_reason(pack).is_some()
    }

    /// Why blob `id` cannot be read, or `None` when some copy can (as far
    /// as known).
    pub(crate) fn problem(&self, repo: &Repository, id: &BlobId) -> Result<Option<String>> {
        if let Some(p) = crate::sync::lock(&self.memo).get(id) {
            return Ok(p.clone());
        }
        let locations = repo.index()?.locations(id)?;
        let mut first = None;
        let mut readable = Vec::new();
        for loc in &locations {
            match self.copy_problem(id, loc) {
                None => readable.push(loc.pack),
                Some(r) => {
                    first.get_or_insert(r);
                }
            }
        }
        let mut blamed = crate::sync::lock(&self.blamed);
        let p = if locations.is_empty() {
            Some("not in the index".to_string())
        } else if readable.is_empty() {
            for loc in &locations {
                blamed.insert((loc.pack, Some(*id)));
                blamed.insert((loc.pack, None));
            }
            first
        } else {
            // Readable, but only from packs damaged as a whole: those
            // packs are still needed until an intact copy exists.
            if readable.iter().all(|p| self.is_suspect(p)) {
                for p in &readable {
                    blamed.insert((*p, None));
                }
            }
            None
        };
        drop(blamed);
        crate::sync::lock(&self.memo).insert(*id, p.clone());
        Ok(p)
    }

    /// Whether a snapshot needs a blob whose only copies include one in
    /// `pack` (of `blob`, when given).
    fn is_blamed(&self, pack: &PackId, blob: Option<&BlobId>) -> bool {
        crate::sync::lock(&self.blamed).contains(&(*pack, blob.copied()))
    }
}

/// Damaged paths below one tree, relative to it; memoised per tree id so
/// a subtree shared by many snapshots is walked once.
pub(crate) struct Walker<'a> {
    repo: &'a Repository,
    health: &'a Health,
    trees: HashMap<BlobId, Arc<Vec<(PathBuf, String)>>>,
    /// Blobs found missing, with their kind and reason (reported once each).
    pub(crate) missing: BTreeMap<BlobId, (BlobKind, String)>,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(repo: &'a Repository, health: &'a Health) -> Self {
        Self {
            repo,
            health,
            trees: HashMap::new(),
            missing: BTreeMap::new(),
        }
    }

    fn blob(&mut self, kind: BlobKind, id: &BlobId) -> Result<Option<String>> {
        let p = self.health.problem(self.repo, id)?;
        if let Some(r) = &p {
            self.missing.entry(*id).or_insert((kind, r.clone()));
        }
        Ok(p)
    }

    /// Damaged paths below tree `id`.
    pub(crate) fn tree(&mut self, id: &BlobId) -> Result<Arc<Vec<(PathBuf, String)>>> {
        if let Some(d) = self.trees.get(id) {
            return Ok(d.clone());
        }
        let lost = |r: String| {
            Arc::new(vec![(
                PathBuf::new(),
                format!("directory listing lost: tree blob {} {r}", id.short()),
            )])
        };
        let out = if let Some(r) = self.blob(BlobKind::Tree, id)? {
            lost(r)
        } else {
            match self.repo.load_tree(id) {
                Err(e) if e.kind() == ErrorKind::Corrupt => lost(e.to_string()),
                Err(e) => return Err(e),
                Ok(tree) => {
                    let mut out = Vec::new();
                    for node in &tree.nodes {
                        let name = PathBuf::from(OsStr::from_bytes(&node.name));
                        match &node.payload {
                            Payload::Dir(sub) => {
                                for (p, r) in self.tree(sub)?.iter() {
                                    out.push((name.join(p), r.clone()));
                                }
                            }
                            Payload::File(content) => {
                                if let Some(r) = self.file(content)? {
                                    out.push((name, r));
                                }
                            }
                            _ => {}
                        }
                    }
                    Arc::new(out)
                }
            }
        };
        self.trees.insert(*id, out.clone());
        Ok(out)
    }

    /// What of a file's content is lost, if anything.
    pub(crate) fn file(&mut self, content: &Content) -> Result<Option<String>> {
        if let Content::Lists(lists) = content {
            for l in lists {
                if let Some(r) = self.blob(BlobKind::List, &l.id)? {
                    return Ok(Some(format!(
                        "chunk list lost: list blob {} {r}",
                        l.id.short()
                    )));
                }
            }
        }
        let chunks = match self.repo.chunk_list(content) {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                return Ok(Some(format!("chunk list unreadable: {e}")))
            }
            Err(e) => return Err(e),
        };
        let (mut lost, mut bytes, mut first) = (0u64, 0u64, None);
        let total = chunks.iter().filter(|c| !c.is_hole()).count();
        for c in chunks.iter().filter(|c| !c.is_hole()) {
            if let Some(r) = self.blob(BlobKind::Data, &c.id)? {
                lost += 1;
                bytes += u64::from(c.len);
                first.get_or_insert(format!("data blob {} {r}", c.id.short()));
            }
        }
        Ok(first.map(|f| format!("{lost} of {total} chunks lost ({bytes} bytes), e.g. {f}")))
    }

    /// Number of distinct trees walked.
    pub(crate) fn trees_walked(&self) -> u64 {
        self.trees.len() as u64
    }
}

/// Structure and (optionally) data of the repository as found.
pub(crate) struct Inspection {
    pub(crate) report: CheckReport,
    pub(crate) health: Health,
    /// Readable snapshots, oldest first.
    pub(crate) snapshots: Vec<(SnapshotId, crate::Snapshot)>,
}

/// Checks index and packs (and data with `opts.read_data`), without walking
/// snapshots.
pub(crate) fn inspect(repo: &Repository, opts: &CheckOptions) -> Result<Inspection> {
    let mut report = CheckReport::default();
    if let Some(reason) = repo.header_damage() {
        report.damage.push(Damage::HeaderDamaged {
            reason: reason.to_string(),
        });
    }
    let mut stored: HashMap<PackId, u64> = HashMap::new();
    let objects = repo.objects();
    for obj in objects.list::<Packs>()? {
        stored.insert(obj.id, obj.size);
    }
    let mut indexed: HashMap<PackId, IndexedInfo> = HashMap::new();
    let segments = objects.list_ids::<IndexSegments>()?;
    report.segments = segments.len() as u64;
    // One segment in memory at a time.
    let segments = Objects::visit_each::<IndexSegments>(
        segments,
        |id| repo.load_segment(id),
        |seg_id, seg| {
            for p in seg.packs {
                indexed.entry(p.id).or_insert(IndexedInfo {
                    len: p.len,
                    blobs: p.blobs.len() as u64,
                    segment: seg_id,
                    digest: entries_digest(&p.blobs),
                });
            }
            Ok(())
        },
    )?;
    report.segments -= segments.vanished.len() as u64;
    for (seg_id, e) in segments.damaged {
        report.damage.push(Damage::SegmentUnreadable {
            object: seg_id.path(),
            reason: e.to_string(),
        });
    }
    report.packs = stored.len() as u64;
    report.indexed_packs = indexed.len() as u64;
    let mut missing_packs = HashSet::new();
    let mut truncated = HashMap::new();
    for (id, info) in &indexed {
        match stored.get(id) {
            None => {
                missing_packs.insert(*id);
                repo.note_damage(whole_pack(*id, DamageReason::PackMissing));
                report.damage.push(Damage::PackMissing {
                    object: id.path(),
                    blobs: info.blobs,
                });
            }
            Some(&size) if size != info.len => {
                if size < info.len {
                    truncated.insert(*id, size);
                }
                repo.note_damage(whole_pack(*id, DamageReason::PackDamaged));
                report.damage.push(Damage::PackSizeMismatch {
                    object: id.path(),
                    indexed: info.len,
                    stored: size,
                })
            }
            Some(_) => {}
        }
    }
    for (id, size) in &stored {
        if !indexed.contains_key(id) {
            report.unindexed_packs.push(UnindexedPack {
                object: id.path(),
                size: *size,
            });
        }
    }
    report
        .unindexed_packs
        .sort_by(|a, b| a.object.cmp(&b.object));
    let mut damaged = HashMap::new();
    let mut suspect = HashSet::new();
    if let Some(subset) = &opts.read_data {
        let mut all: Vec<(PackId, u64)> = stored.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort();
        let chosen = subset.select(all);
        let results: Vec<Result<PackVerdict>> = chosen
            .par_iter()
            .map(|(id, _)| verify_pack(repo, id, indexed.get(id)))
            .collect();
        for r in results {
            let v = r?;
            report.packs_read += 1;
            report.bytes_read += v.bytes;
            // Damage of the pack as such, not explained by damaged blobs:
            // its blobs may read, but until they have intact copies
            // elsewhere the pack is still needed.
            if v.whole_pack_damaged() {
                suspect.extend(v.pack);
            }
            report.damage.extend(v.damage);
            damaged.extend(v.damaged_blobs);
        }
    }
    let health = Health {
        missing_packs,
        truncated,
        damaged,
        suspect,
        recorded: repo.damage_set(),
        memo: Mutex::new(HashMap::new()),
        blamed: Mutex::new(HashSet::new()),
    };
    // A snapshot deleted since the listing (a backup replacing its
    // checkpoint) is skipped.
    let loaded = Objects::load_each::<Snapshots>(objects.list_ids::<Snapshots>()?, |id| {
        repo.load_snapshot_stored(id)
    })?;
    for (id, e) in loaded.damaged {
        report.damage.push(Damage::SnapshotUnreadable {
            object: id.path(),
            reason: e.to_string(),
        });
    }
    let mut snapshots = loaded.objects;
    snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    Ok(Inspection {
        report,
        health,
        snapshots,
    })
}

struct PackVerdict {
    pack: Option<PackId>,
    bytes: u64,
    damage: Vec<Damage>,
    damaged_blobs: Vec<((PackId, BlobId), String)>,
}

/// Reads one whole pack: its hash, its trailer against the index, and every blob.
fn verify_pack(
    repo: &Repository,
    id: &PackId,
    indexed: Option<&IndexedInfo>,
) -> Result<PackVerdict> {
    let object = id.path();
    let mut v = PackVerdict {
        pack: Some(*id),
        bytes: 0,
        damage: Vec::new(),
        damaged_blobs: Vec::new(),
    };
    let pack = match repo.storage().read(&object) {
        Ok(b) => b,
        // Deleted since the listing (garbage collection): nothing to verify.
        Err(e) if e.is_not_found() => return Ok(v),
        Err(e) => return Err(repo.serr()(e)),
    };
    v.bytes = pack.len() as u64;
    if Id::hash(&pack) != id.0 {
        v.damage.push(Damage::PackHashMismatch {
            object: object.clone(),
        });
    }

    let entries = match read_trailer(&pack, repo.keyring().seal_key()) {
        Ok(entries) => {
            if let Some(info) = indexed {
                if entries_digest(&entries) != info.digest {
                    v.damage.push(Damage::IndexDisagrees {
                        object: object.clone(),
                    });
                }
            }
            entries
        }
        Err(e) => {
            v.damage.push(Damage::TrailerUnreadable {
                object: object.clone(),
                reason: e.to_string(),
            });
            // Verify the blobs the index says the pack holds instead.
            match indexed {
                Some(info) => repo
                    .load_segment(&info.segment)?
                    .packs
                    .into_iter()
                    .find(|p| p.id == *id)
                    .map(|p| p.blobs)
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        }
    };
    let reason_of = |err: Error| match err {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    // Each blob's verdict; a bundle is opened once for all its members.
    let mut verdicts: Vec<(BlobEntry, Option<String>)> = Vec::with_capacity(entries.len());
    let mut sorted = entries;
    sorted.sort_by_key(|e| (e.offset, e.inner));
    for group in
        sorted.chunk_by(|a, b| a.offset == b.offset && a.inner.is_some() && b.inner.is_some())
    {
        let first = &group[0];
        let stored = pack.get(first.offset as usize..first.end() as usize);
        match (stored, first.inner) {
            (None, _) => verdicts.extend(
                group
                    .iter()
                    .map(|e| (*e, Some("extends past the end of the pack".to_string()))),
            ),
            (Some(stored), None) => verdicts.extend(group.iter().map(|e| {
                let reason = repo.open_blob(e.kind, &e.id, stored, &object).err();
                (*e, reason.map(reason_of))
            })),
            (Some(stored), Some(_)) => {
                let opened = repo.sealer().with_open_bundle(stored, &object, |bundle| {
                    group
                        .iter()
                        .map(|e| {
                            let inner = e.inner.unwrap_or_default();
                            let member = repo
                                .sealer()
                                .member(bundle, &e.id, inner, e.raw_len, &object);
                            (*e, member.err().map(reason_of))
                        })
                        .collect::<Vec<_>>()
                });
                match opened {
                    Ok(v) => verdicts.extend(v),
                    Err(err) => {
                        let reason = reason_of(err);
                        verdicts.extend(group.iter().map(|e| (*e, Some(reason.clone()))));
                    }
                }
            }
        }
    }
    for (e, reason) in verdicts {
        if let Some(reason) = reason {
            v.damage.push(Damage::BlobDamaged {
                object: object.clone(),
                blob: e.id.to_hex(),
                kind: e.kind.to_string(),
                reason: reason.clone(),
            });
            repo.note_damage(one_copy(e.id, *id));
            v.damaged_blobs.push(((*id, e.id), reason));
        }
    }
    // Damage to the pack as a whole (its trailer, bytes between blobs) is
    // recorded for the whole pack: maintenance then salvages its intact
    // blobs into a new pack and drops it.
    if v.whole_pack_damaged() {
        repo.note_damage(whole_pack(*id, DamageReason::PackDamaged));
    }
    Ok(v)
}

impl PackVerdict {
    /// Whether the pack is damaged as such, beyond its damaged blobs: its
    /// trailer does not open or disagrees with the index, or its bytes do
    /// not hash to its name although every blob is intact.
    fn whole_pack_damaged(&self) -> bool {
        self.damage.iter().any(|d| match d {
            Damage::TrailerUnreadable { .. } | Damage::IndexDisagrees { .. } => true,
            Damage::PackHashMismatch { .. } => self.damaged_blobs.is_empty(),
            _ => false,
        })
    }
}

/// Runs a full check.
pub fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let Inspection {
        mut report,
        health,
        snapshots,
    } = inspect(repo, opts)?;
    report.snapshots = snapshots.len() as u64;
    let mut walker = Walker::new(repo, &health);
    for (id, snap) in &snapshots {
        let damaged = walker.tree(&snap.tree)?;
        if damaged.is_empty() {
            continue;
        }
        let mut paths: Vec<AffectedPath> = damaged
            .iter()
            .map(|(p, r)| AffectedPath {
                path: format!("/{}", p.to_string_lossy()),
                reason: r.clone(),
            })
            .collect();
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        report.affected.push(AffectedSnapshot {
            id: id.to_hex(),
            short_id: id.short(),
            time: snap.time,
            host: snap.host.clone(),
            source: snap.source.clone(),
            paths,
        });
    }
    report.trees = walker.trees_walked();
    // A blob already reported damaged in its pack is not reported again as missing.
    let reported: HashSet<String> = report
        .damage
        .iter()
        .filter_map(|d| match d {
            Damage::BlobDamaged { blob, .. } => Some(blob.clone()),
            _ => None,
        })
        .collect();
    for (id, (kind, reason)) in std::mem::take(&mut walker.missing) {
        if !reported.contains(&id.to_hex()) {
            report.damage.push(Damage::BlobMissing {
                blob: id.to_hex(),
                kind: kind.to_string(),
                reason,
            });
        }
    }
    report.damage.sort();
    report.damage.dedup();
    // Record what this run found, then set apart the recorded damage no
    // snapshot needs: nothing is lost through it and no writer will use it.
    report.recorded = match repo.record_found_damage() {
        Ok(n) => n as u64,
        Err(e) => {
            tracing::warn!("could not record the damage found in damage/: {e}");
            0
        }
    };
    let recorded = repo.damage_set();
    let recorded_packs = recorded.packs();
    let (contained, damage): (Vec<Damage>, Vec<Damage>) = std::mem::take(&mut report.damage)
        .into_iter()
        .partition(|d| {
            let Some((pack, blob)) = damage_copy(d) else {
                return false;
            };
            let known = match blob {
                Some(b) => recorded.knows(&one_copy(b, pack)),
                None => recorded_packs.contains(&pack),
            };
            known && !health.is_blamed(&pack, blob.as_ref())
        });
    report.damage = damage;
    report.contained = contained;
    Ok(report)
}

/// The pack (and blob) a pack- or blob-level damage is about.
fn damage_copy(d: &Damage) -> Option<(PackId, Option<BlobId>)> {
    let pack_of = |object: &str| object.rsplit('/').next().and_then(PackId::from_hex);
    match d {
        Damage::PackMissing { object, .. }
        | Damage::PackSizeMismatch { object, .. }
        | Damage::PackHashMismatch { object }
        | Damage::TrailerUnreadable { object, .. }
        | Damage::IndexDisagrees { object } => Some((pack_of(object)?, None)),
        Damage::BlobDamaged { object, blob, .. } => {
            Some((pack_of(object)?, Some(BlobId::from_hex(blob)?)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_reject() {
        assert_eq!("all".parse(), Ok(DataSubset::All));
        assert_eq!("10%".parse(), Ok(DataSubset::Percent(10)));
        assert_eq!("2/5".parse(), Ok(DataSubset::Slice { n: 2, m: 5 }));
        for bad in ["0%", "101%", "0/3", "4/3", "1/300", "x", "5"] {
            assert!(bad.parse::<DataSubset>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slices_partition_the_packs() {
        let packs: Vec<(PackId, u64)> = (0..=255u8)
            .map(|b| {
                let mut id = [0u8; 32];
                id[0] = b;
                (PackId(Id(id)), 1)
            })
            .collect();
        let mut seen = 0;
        for n in 1..=3 {
            seen += DataSubset::Slice { n, m: 3 }.select(packs.clone()).len();
        }
        assert_eq!(seen, packs.len());
        assert_eq!(DataSubset::Percent(10).select(packs.clone()).len(), 26);
        assert_eq!(DataSubset::Percent(1).select(packs[..3].to_vec()).len(), 1);
    }
}
