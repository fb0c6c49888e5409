//! `damage/<id>` records: copies of blobs (or whole packs) found missing or
//! damaged, so that no writer deduplicates against them and maintenance
//! drops them. Specified in docs/FORMAT.md, *Damage records*.

use super::codec::{DecodeError, Reader, Writer};
use super::{BlobId, Id, PackId, ID_LEN};

/// Associated data of a sealed damage record.
pub const DAMAGE_AAD: &[u8] = b"cairn.damage";
/// Damage record body version.
pub const DAMAGE_VERSION: u32 = 1;
/// Object name prefix.
pub const DAMAGE_PREFIX: &str = "damage/";
/// Bytes of one encoded entry: pack id, blob id, reason.
pub const ENTRY_LEN: usize = 2 * ID_LEN + 1;

/// Why a copy is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DamageReason {
    /// The pack does not exist.
    PackMissing = 1,
    /// The pack exists but is damaged as a whole: truncated, its bytes do not
    /// hash to its name, or its trailer does not open.
    PackDamaged = 2,
    /// One blob in the pack does not open or does not hash to its id.
    BlobDamaged = 3,
}

impl DamageReason {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::PackMissing),
            2 => Some(Self::PackDamaged),
            3 => Some(Self::BlobDamaged),
            _ => None,
        }
    }
}

impl std::fmt::Display for DamageReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PackMissing => "pack missing",
            Self::PackDamaged => "pack damaged",
            Self::BlobDamaged => "blob damaged",
        })
    }
}

/// One unusable copy: a blob in a pack, or (`blob: None`) every blob the
/// index places in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DamageEntry {
    /// The pack holding the copy.
    pub pack: PackId,
    /// The blob; `None` for the whole pack.
    pub blob: Option<BlobId>,
    /// Why it is unusable.
    pub reason: DamageReason,
}

/// A `damage/<id>` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageRecord {
    /// When it was written, seconds since the epoch.
    pub created: i64,
    /// Entries, sorted.
    pub entries: Vec<DamageEntry>,
}

impl DamageRecord {
    /// Encodes the record body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + ENTRY_LEN * self.entries.len());
        w.u32(DAMAGE_VERSION);
        w.i64(self.created);
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.id(&e.pack.0);
            w.id(&e.blob.map_or(Id([0; ID_LEN]), |b| b.0));
            w.u8(e.reason as u8);
        }
        w.finish()
    }

    /// Decodes a record body.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "damage record");
        let version = r.u32()?;
        if version != DAMAGE_VERSION {
            return Err(DecodeError::new(
                "damage record",
                format!("unsupported version {version}"),
            ));
        }
        let created = r.i64()?;
        let n = r.count(ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let pack = PackId(r.id()?);
            let blob = r.id()?;
            let reason = r.u8()?;
            let reason = DamageReason::from_u8(reason).ok_or_else(|| {
                DecodeError::new("damage record", format!("unknown reason {reason}"))
            })?;
            entries.push(DamageEntry {
                pack,
                blob: (blob != Id([0; ID_LEN])).then_some(BlobId(blob)),
                reason,
            });
        }
        r.finish()?;
        Ok(Self { created, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = DamageEntry> {
        (
            any::<[u8; 32]>(),
            proptest::option::of(any::<[u8; 32]>().prop_filter("non-zero", |b| b != &[0; 32])),
            1u8..=3,
        )
            .prop_map(|(p, b, r)| DamageEntry {
                pack: PackId(Id(p)),
                blob: b.map(|b| BlobId(Id(b))),
                reason: DamageReason::from_u8(r).unwrap(),
            })
    }

    proptest! {
        #[test]
        fn record_round_trip(created in any::<i64>(), entries in proptest::collection::vec(entry(), 0..20)) {
            let rec = DamageRecord { created, entries };
            prop_assert_eq!(DamageRecord::decode(&rec.encode()).unwrap(), rec);
        }

        #[test]
        fn record_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = DamageRecord::decode(&data);
        }
    }
}
