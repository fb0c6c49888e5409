//! Index segments: which pack holds each blob, for many packs.

use super::codec::{DecodeError, Reader, Writer};
use super::pack::{BlobEntry, ENTRY_LEN};
use super::{IndexId, PackId};

/// Associated data of a sealed index segment.
pub const INDEX_AAD: &[u8] = b"cairn.index";
/// Segment version written (2: blob entries with the bundle field).
pub const INDEX_VERSION: u32 = 2;
/// Segment versions read.
fn known_version(version: u32) -> bool {
    version == 1 || version == INDEX_VERSION
}

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

    /// Encodes the body: as version 2 when a blob is bundled, else as
    /// version 1, which readers that predate bundles read (a version 1
    /// repository's segments stay version 1).
    pub fn encode(&self) -> Vec<u8> {
        let bundled = self
            .packs
            .iter()
            .any(|p| p.blobs.iter().any(|b| b.inner.is_some()));
        let version = if bundled { INDEX_VERSION } else { 1 };
        let mut w =
            Writer::with_capacity(16 + self.blob_count() * ENTRY_LEN + self.packs.len() * 44);
        w.u32(version);
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
                b.encode_version(&mut w, version);
            }
        }
        w.finish()
    }

    /// Decodes a body.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "index segment");
        let version = r.u32()?;
        if !known_version(version) {
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
            let nb = r.count(BlobEntry::encoded_len(version))?;
            let mut blobs = Vec::with_capacity(nb);
            for _ in 0..nb {
                blobs.push(BlobEntry::decode_version(&mut r, version)?);
            }
            packs.push(IndexedPack { id, len, blobs });
        }
        r.finish()?;
        Ok(Self { supersedes, packs })
    }
}

/// One item of a segment body read as a stream ([`visit_segment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentItem {
    /// A pack, followed by its `blobs` entries.
    Pack {
        /// Pack id.
        id: PackId,
        /// Pack length in bytes.
        len: u64,
        /// How many [`SegmentItem::Blob`] items follow.
        blobs: u32,
    },
    /// One blob of the last pack.
    Blob(BlobEntry),
}

/// What [`visit_segment`] read besides the items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Segments this one replaces.
    pub supersedes: Vec<IndexId>,
    /// Blob entries read.
    pub blobs: u64,
}

/// Blob entries [`visit_segment`] reads at once.
const STREAM_RUN: usize = 1024;

/// Reads fields of a segment body from a byte stream.
struct StreamReader<R> {
    r: R,
    read: u64,
}

impl<R: std::io::Read> StreamReader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from the stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), DecodeError> {
        self.r.read_exact(buf).map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "truncated: need {} bytes at offset {}",
                    buf.len(),
                    self.read
                )
            } else {
                format!("unreadable at offset {}: {e}", self.read)
            };
            DecodeError::new("index segment", reason)
        })?;
        self.read += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }

    fn id(&mut self) -> Result<super::Id, DecodeError> {
        Ok(super::Id(self.bytes::<32>()?))
    }

    /// Fails unless the stream is at its end.
    fn finish(mut self) -> Result<(), DecodeError> {
        let mut one = [0u8; 1];
        match self.r.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(DecodeError::new(
                "index segment",
                format!("trailing bytes at offset {}", self.read),
            )),
            Err(e) => Err(DecodeError::new(
                "index segment",
                format!("unreadable at offset {}: {e}", self.read),
            )),
        }
    }
}

/// Decodes a segment body from `body` as a stream, handing each pack and
/// blob entry to `f` in order, so memory stays one entry whatever the
/// segment's size; the same checks as [`IndexSegment::decode`] (version,
/// truncation, unknown kinds, trailing bytes). An error from `f` stops the
/// read and is returned.
pub fn visit_segment<E: From<DecodeError>>(
    body: impl std::io::Read,
    mut f: impl FnMut(SegmentItem) -> Result<(), E>,
) -> Result<SegmentSummary, E> {
    let mut r = StreamReader {
        r: std::io::BufReader::with_capacity(64 << 10, body),
        read: 0,
    };
    let version = r.u32()?;
    if !known_version(version) {
        return Err(
            DecodeError::new("index segment", format!("unsupported version {version}")).into(),
        );
    }
    let mut summary = SegmentSummary::default();
    let entry_len = BlobEntry::encoded_len(version);
    let mut run = vec![0u8; STREAM_RUN * entry_len];
    for _ in 0..r.u32()? {
        summary.supersedes.push(IndexId(r.id()?));
    }
    for _ in 0..r.u32()? {
        let id = PackId(r.id()?);
        let len = u64::from_le_bytes(r.bytes::<8>()?);
        let blobs = r.u32()?;
        f(SegmentItem::Pack { id, len, blobs })?;
        // Entries are read in runs into one buffer and decoded in place.
        let mut left = blobs as usize;
        while left > 0 {
            let n = left.min(STREAM_RUN);
            r.fill(&mut run[..n * entry_len])?;
            for entry in run[..n * entry_len].chunks_exact(entry_len) {
                let mut er = super::codec::Reader::new(entry, "index segment");
                f(SegmentItem::Blob(BlobEntry::decode_version(
                    &mut er, version,
                )?))?;
            }
            summary.blobs += n as u64;
            left -= n;
        }
    }
    r.finish()?;
    Ok(summary)
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
            proptest::option::of(0u32..1 << 20),
        )
            .prop_map(|(id, k, o, s, r, inner)| {
                // Only data blobs are bundled, and within a bundle's size.
                let inner = inner.filter(|_| k == 0);
                BlobEntry {
                    id: BlobId(Id(id)),
                    kind: BlobKind::from_code(k).unwrap(),
                    offset: o,
                    stored_len: s,
                    raw_len: if inner.is_some() { r % (1 << 20) } else { r },
                    inner,
                }
            })
    }

    /// Version 1 segments (45-byte entries, no bundles) still decode,
    /// whole and as a stream.
    /// A segment of one pack (id 9s, 4096 bytes) holding one tree blob
    /// (id 7s), bundled at `inner` if given.
    fn one_tree(inner: Option<u32>) -> IndexSegment {
        IndexSegment {
            supersedes: Vec::new(),
            packs: vec![IndexedPack {
                id: PackId(Id([9; 32])),
                len: 4096,
                blobs: vec![BlobEntry {
                    id: BlobId(Id([7; 32])),
                    kind: BlobKind::Tree,
                    offset: 8,
                    stored_len: 100,
                    raw_len: 90,
                    inner,
                }],
            }],
        }
    }

    #[test]
    fn version_1_segments_still_decode() {
        let seg = one_tree(None);
        let e = seg.packs[0].blobs[0];
        let mut w = Writer::with_capacity(128);
        w.u32(1);
        w.u32(0);
        w.u32(1);
        w.id(&Id([9; 32]));
        w.u64(4096);
        w.u32(1);
        w.bytes(e.id.as_bytes());
        w.u8(e.kind.code());
        w.u32(e.offset);
        w.u32(e.stored_len);
        w.u32(e.raw_len);
        let body = w.finish();
        assert_eq!(IndexSegment::decode(&body).unwrap(), seg);
        assert_eq!(streamed(&body).unwrap(), seg);
    }

    /// Only data blobs can be bundle members; an entry saying otherwise
    /// is refused, not followed.
    #[test]
    fn a_bundled_tree_entry_is_refused() {
        let seg = one_tree(Some(0));
        assert!(IndexSegment::decode(&seg.encode()).is_err());
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
            prop_assert_eq!(IndexSegment::decode(&seg.encode()).unwrap(), seg.clone());
            prop_assert_eq!(streamed(&seg.encode()).unwrap(), seg);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexSegment::decode(&data);
            let _ = streamed(&data);
        }

        #[test]
        fn the_stream_decoder_accepts_and_refuses_what_the_whole_one_does(
            packs in proptest::collection::vec((any::<[u8; 32]>(), any::<u64>(), proptest::collection::vec(entry(), 0..4)), 0..3),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let seg = IndexSegment {
                supersedes: Vec::new(),
                packs: packs.into_iter().map(|(id, len, blobs)| IndexedPack { id: PackId(Id(id)), len, blobs }).collect(),
            };
            let body = seg.encode();
            let truncated = &body[..cut.index(body.len())];
            prop_assert_eq!(IndexSegment::decode(truncated).is_ok(), streamed(truncated).is_ok());
            let mut longer = body.clone();
            longer.push(0);
            prop_assert!(streamed(&longer).is_err());
            let mut flipped = body.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0xff;
            prop_assert_eq!(IndexSegment::decode(&flipped).ok(), streamed(&flipped).ok());
        }
    }

    /// A segment rebuilt from what [`visit_segment`] hands out.
    fn streamed(body: &[u8]) -> Result<IndexSegment, DecodeError> {
        let mut packs: Vec<IndexedPack> = Vec::new();
        let summary = visit_segment(body, |item| {
            match item {
                SegmentItem::Pack { id, len, .. } => packs.push(IndexedPack {
                    id,
                    len,
                    blobs: Vec::new(),
                }),
                SegmentItem::Blob(b) => packs
                    .last_mut()
                    .ok_or_else(|| DecodeError::new("test", "a blob before any pack"))?
                    .blobs
                    .push(b),
            }
            Ok::<(), DecodeError>(())
        })?;
        Ok(IndexSegment {
            supersedes: summary.supersedes,
            packs,
        })
    }
}
