//! Known damage: the `damage/` records every reader writes when it meets a
//! missing pack or a blob that does not open, loaded into a [`DamageSet`]
//! that writers consult so damage is never inherited (docs/MAINTENANCE.md,
//! *Damage is healed, never inherited*).
//!
//! Invariants: a copy named by a record is never deduplicated against and
//! never preferred for reading while another copy exists; records are
//! immutable, and maintenance deletes one only once none of its packs is
//! indexed any more.

use crate::error::{Error, Result};
use crate::format::damage::{DamageEntry, DamageReason, DamageRecord};
use crate::format::kinds::{DamageRecords, ObjectKind};
use crate::format::{BlobId, Id, PackId};
use crate::objects::Objects;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The records present in `damage/` and what they name.
#[derive(Debug, Clone, Default)]
pub struct DamageSet {
    records: BTreeMap<Id, DamageRecord>,
    /// Packs damaged or missing as a whole.
    packs: HashMap<PackId, DamageReason>,
    /// Single damaged copies.
    copies: HashSet<(BlobId, PackId)>,
}

impl DamageSet {
    /// Every record with its id.
    pub fn records(&self) -> impl Iterator<Item = (&Id, &DamageRecord)> {
        self.records.iter()
    }

    fn from_records(records: BTreeMap<Id, DamageRecord>) -> Self {
        let mut packs = HashMap::new();
        let mut copies = HashSet::new();
        for e in records.values().flat_map(|r| r.entries.iter()) {
            match e.blob {
                None => {
                    packs.insert(e.pack, e.reason);
                }
                Some(b) => {
                    copies.insert((b, e.pack));
                }
            }
        }
        Self {
            records,
            packs,
            copies,
        }
    }

    /// Whether no copy is known to be damaged.
    pub fn is_empty(&self) -> bool {
        self.packs.is_empty() && self.copies.is_empty()
    }

    /// Whether the copy of `blob` in `pack` is known to be unusable.
    pub fn is_bad(&self, blob: &BlobId, pack: &PackId) -> bool {
        self.packs.contains_key(pack) || self.copies.contains(&(*blob, *pack))
    }

    /// Why pack `pack` is recorded as damaged as a whole, if it is.
    pub fn pack_reason(&self, pack: &PackId) -> Option<DamageReason> {
        self.packs.get(pack).copied()
    }

    /// Whether this one copy (not its whole pack) is recorded as damaged.
    pub fn copy_recorded(&self, blob: &BlobId, pack: &PackId) -> bool {
        self.copies.contains(&(*blob, *pack))
    }

    /// Whether `entry` (or the whole pack it is in) is already recorded.
    pub fn knows(&self, entry: &DamageEntry) -> bool {
        self.packs.contains_key(&entry.pack)
            || entry
                .blob
                .is_some_and(|b| self.copies.contains(&(b, entry.pack)))
    }

    /// Every pack holding a recorded copy (or damaged as a whole).
    pub fn packs(&self) -> HashSet<PackId> {
        self.packs
            .keys()
            .copied()
            .chain(self.copies.iter().map(|(_, p)| *p))
            .collect()
    }

    /// Number of records.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }
}

/// Lists `damage/` and returns its records, reusing the already-decoded
/// ones of `known`. A record that vanished since the listing is skipped; a
/// record that does not open is skipped with a warning (it can only make
/// writers store more, never less).
pub fn load_damage_set(objects: &Objects<'_>, known: &DamageSet) -> Result<DamageSet> {
    load_damage_set_listed(objects, known, objects.list_ids::<DamageRecords>()?)
}

/// [`load_damage_set`] from a listing of `damage/` already made (`listed`).
pub fn load_damage_set_listed(
    objects: &Objects<'_>,
    known: &DamageSet,
    listed: Vec<Id>,
) -> Result<DamageSet> {
    let mut records = BTreeMap::new();
    let mut new = Vec::new();
    for id in listed {
        match known.records.get(&id) {
            Some(r) => {
                records.insert(id, r.clone());
            }
            None => new.push(id),
        }
    }
    let loaded = Objects::load_each::<DamageRecords>(new, |id| objects.load::<DamageRecords>(id))?;
    for (id, e) in &loaded.damaged {
        tracing::warn!(
            "damage record {} is itself damaged and is ignored: {e}",
            DamageRecords::path(id)
        );
    }
    records.extend(loaded.objects);
    Ok(DamageSet::from_records(records))
}

/// Writes one record holding `entries`; returns its id.
pub fn save_record(objects: &Objects<'_>, mut entries: Vec<DamageEntry>) -> Result<Id> {
    entries.sort();
    entries.dedup();
    let rec = DamageRecord {
        created: chrono::Utc::now().timestamp(),
        entries,
    };
    Ok(objects.save::<DamageRecords>(&rec)?.0)
}

/// An entry for a whole pack.
pub fn whole_pack(pack: PackId, reason: DamageReason) -> DamageEntry {
    DamageEntry {
        pack,
        blob: None,
        reason,
    }
}

/// An entry for one damaged copy.
pub fn one_copy(blob: BlobId, pack: PackId) -> DamageEntry {
    DamageEntry {
        pack,
        blob: Some(blob),
        reason: DamageReason::BlobDamaged,
    }
}

/// What a pack-level read failure says about the pack, if anything: a
/// missing or truncated pack is damage, a timeout is not.
pub fn pack_failure(pack: PackId, e: &Error) -> Option<DamageEntry> {
    match e {
        Error::Storage { source, .. } if source.is_not_found() => {
            Some(whole_pack(pack, DamageReason::PackMissing))
        }
        Error::Corrupt { .. } => Some(whole_pack(pack, DamageReason::PackDamaged)),
        _ => None,
    }
}
