//! Index segments: which pack holds each blob, for many packs.

use super::codec::{DecodeError, Reader, Writer};
use super::pack::{BlobEntry, ENTRY_LEN};
use super::{IndexId, PackId};

/// Associated data of a sealed index segment.
pub const INDEX_AAD: &[u8] = b"cairn.index";
/// Segment version.
pub const INDEX_VERSION: u32 = 1;

/// The blobs of one pack, as listed in an index segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    /// Pack id.
    pub id: PackId,
    /// Pack length in bytes.
    pub len: u64,
    /// Its blobs.
    pub blobs: Vec<BlobEntry>,
}

/// One index segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexSegment {
    /// Segments this one replaces.
    pub supersedes: Vec<IndexId>,
    /// Packs described.
    pub packs: Vec<IndexedPack>,
}

impl IndexSegment {
    /// Number of blobs described.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(16 + self.blob_count() * ENTRY_LEN + self.packs.len() * 44);
        w.u32(INDEX_VERSION);
        w.u32(self.supersedes.len() as u32);
        for s in &self.supersedes {
            w.id(&s.0);
        }
        w.u32(self.packs.len() as u32);
        for p in &self.packs {
            w.id(&p.id.0);
            w.u64(p.len);
            w.u32(p.blobs.len() as u32);
            for b in &p.blobs {
                b.encode_into(&mut w);
            }
        }
        w.finish()
    }

    /// Decodes a body.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "index segment");
        let version = r.u32()?;
        if version != INDEX_VERSION {
            return Err(DecodeError::new(
                "index segment",
                format!("unsupported version {version}"),
            ));
        }
        let n = r.count(32)?;
        let mut supersedes = Vec::with_capacity(n);
        for _ in 0..n {
            supersedes.push(IndexId(r.id()?));
        }
        let np = r.count(44)?;
        let mut packs = Vec::with_capacity(np);
        for _ in 0..np {
            let id = PackId(r.id()?);
            let len = r.u64()?;
            let nb = r.count(ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(nb);
            for _ in 0..nb {
                blobs.push(BlobEntry::decode_from(&mut r)?);
            }
            packs.push(IndexedPack { id, len, blobs });
        }
        r.finish()?;
        Ok(Self { supersedes, packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BlobId, BlobKind, Id};
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = BlobEntry> {
        (
            any::<[u8; 32]>(),
            0u8..3,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(id, k, o, s, r)| BlobEntry {
                id: BlobId(Id(id)),
                kind: BlobKind::from_code(k).unwrap(),
                offset: o,
                stored_len: s,
                raw_len: r,
            })
    }

    proptest! {
        #[test]
        fn segment_round_trip(
            sup in proptest::collection::vec(any::<[u8; 32]>(), 0..3),
            packs in proptest::collection::vec((any::<[u8; 32]>(), any::<u64>(), proptest::collection::vec(entry(), 0..10)), 0..5),
        ) {
            let seg = IndexSegment {
                supersedes: sup.into_iter().map(|i| IndexId(Id(i))).collect(),
                packs: packs.into_iter().map(|(id, len, blobs)| IndexedPack { id: PackId(Id(id)), len, blobs }).collect(),
            };
            prop_assert_eq!(IndexSegment::decode(&seg.encode()).unwrap(), seg);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexSegment::decode(&data);
        }
    }
}
