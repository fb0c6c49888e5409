//! Packs: stored blobs back to back, then a sealed trailer describing them.

use super::codec::{DecodeError, Reader, Writer};
use super::{BlobId, BlobKind};
use crate::crypto::SealKey;

/// Magic at the start of a pack (version 2: trailer entries of
/// [`ENTRY_LEN`] bytes, with the bundle field).
pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPK2";
/// Magic at the start of a version 1 pack (trailer entries of
/// [`ENTRY_LEN_V1`] bytes, no bundles); still read.
pub const PACK_MAGIC_V1: &[u8; 8] = b"CAIRNPK1";
/// Magic at the end of a pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"CAIRNPKE";
/// Associated data of a pack trailer.
pub const TRAILER_AAD: &[u8] = b"cairn.pack-trailer";
/// Encoded size of one blob entry (trailer and index, version 2).
pub const ENTRY_LEN: usize = 32 + 1 + 4 + 4 + 4 + 4;
/// Encoded size of one blob entry in version 1 packs and segments.
pub const ENTRY_LEN_V1: usize = 32 + 1 + 4 + 4 + 4;
/// The bundle field of an entry whose blob is stored on its own.
const NOT_BUNDLED: u32 = u32::MAX;
/// Bytes after the trailer: its length and the end magic.
pub const FOOTER_LEN: usize = 4 + 8;
/// Associated data of a sealed bundle: several small data blobs whose
/// plaintexts, back to back, are sealed as one envelope, so that zstd
/// compresses them together. Each member's entry says where its
/// plaintext starts; a reader checks the member's id after slicing it.
pub const BUNDLE_AAD: &[u8] = b"cairn.bundle";
/// The most plaintext bytes a bundle holds (writers stay well below it);
/// an entry placing a member past it is damaged.
pub const MAX_BUNDLE_PLAIN: u32 = 16 << 20;
/// Offset of the first blob.
pub const FIRST_BLOB_OFFSET: usize = PACK_MAGIC.len();

/// Where one blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// Blob id.
    pub id: BlobId,
    /// Blob kind.
    pub kind: BlobKind,
    /// Offset of the stored blob in the pack.
    pub offset: u32,
    /// Stored (sealed) length.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// For a blob stored in a bundle (several small data blobs sealed as
    /// one, see [`BUNDLE_AAD`]): where its plaintext starts in the
    /// bundle's plaintext. `offset` and `stored_len` are then the
    /// bundle's.
    pub inner: Option<u32>,
}

impl BlobEntry {
    /// Appends the encoding of `version` (2: [`ENTRY_LEN`] bytes; 1:
    /// without the bundle field, [`ENTRY_LEN_V1`] bytes, and callers never
    /// give it a bundled entry).
    pub fn encode_version(&self, w: &mut Writer, version: u32) {
        w.bytes(self.id.as_bytes());
        w.u8(self.kind.code());
        w.u32(self.offset);
        w.u32(self.stored_len);
        w.u32(self.raw_len);
        if version >= 2 {
            w.u32(self.inner.unwrap_or(NOT_BUNDLED));
        }
    }

    /// Reads one entry of a pack or segment of `version` (1: no bundle
    /// field; 2: with it).
    pub fn decode_version(r: &mut Reader<'_>, version: u32) -> Result<Self, DecodeError> {
        let id = BlobId(r.id()?);
        let code = r.u8()?;
        let kind = BlobKind::from_code(code)
            .ok_or_else(|| DecodeError::new("blob entry", format!("unknown kind {code}")))?;
        let (offset, stored_len, raw_len) = (r.u32()?, r.u32()?, r.u32()?);
        let inner = match version {
            1 => None,
            _ => Some(r.u32()?).filter(|i| *i != NOT_BUNDLED),
        };
        if inner.is_some() && kind != BlobKind::Data {
            return Err(DecodeError::new(
                "blob entry",
                format!("a {kind} blob cannot be in a bundle"),
            ));
        }
        if inner.is_some_and(|i| i as u64 + raw_len as u64 > MAX_BUNDLE_PLAIN as u64) {
            return Err(DecodeError::new(
                "blob entry",
                format!("blob {} extends past the largest bundle", id.short()),
            ));
        }
        Ok(BlobEntry {
            id,
            kind,
            offset,
            stored_len,
            raw_len,
            inner,
        })
    }

    /// The encoded length of an entry of `version`.
    pub fn encoded_len(version: u32) -> usize {
        if version == 1 {
            ENTRY_LEN_V1
        } else {
            ENTRY_LEN
        }
    }

    /// The stored bytes this blob accounts for: its own, or for a bundled
    /// blob its share of the bundle's by plaintext length, estimated for
    /// a bundle of [`crate::sealer::BUNDLE_TARGET`] bytes (an entry does
    /// not say how large its bundle's plaintext is; [`bundle_shares`]
    /// computes the exact shares from every entry of a pack).
    pub fn stored_share(&self) -> u64 {
        stored_share(self.stored_len, self.raw_len, self.inner)
    }

    /// End offset of the stored blob.
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.stored_len as u64
    }
}

/// See [`BlobEntry::stored_share`].
pub fn stored_share(stored_len: u32, raw_len: u32, inner: Option<u32>) -> u64 {
    match inner {
        None => stored_len as u64,
        Some(_) => {
            let bundle = (crate::sealer::BUNDLE_TARGET as u64).max(raw_len as u64);
            stored_len as u64 * raw_len as u64 / bundle.max(1)
        }
    }
}

/// The stored bytes of a pack's blobs (`entries`, every entry of the pack)
/// and of those `live` says are live: a bundle's bytes count once, and
/// count as live in the share of its plaintext its live members hold.
pub fn bundle_shares(entries: &[BlobEntry], live: impl Fn(&BlobEntry) -> bool) -> (u64, u64) {
    let (mut stored, mut kept) = (0u64, 0u64);
    // Bundles by offset: stored length, plaintext, live plaintext.
    let mut bundles: std::collections::HashMap<u32, (u64, u64, u64)> = Default::default();
    for e in entries {
        let is_live = live(e);
        match e.inner {
            None => {
                stored += e.stored_len as u64;
                if is_live {
                    kept += e.stored_len as u64;
                }
            }
            Some(_) => {
                let b = bundles
                    .entry(e.offset)
                    .or_insert((e.stored_len as u64, 0, 0));
                b.1 += e.raw_len as u64;
                if is_live {
                    b.2 += e.raw_len as u64;
                }
            }
        }
    }
    for (len, plain, live_plain) in bundles.into_values() {
        stored += len;
        kept += len * live_plain / plain.max(1);
    }
    (stored, kept)
}

/// Encodes trailer entries (the envelope body) of a pack of `version`.
pub fn encode_entries(entries: &[BlobEntry], version: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * ENTRY_LEN);
    w.u32(entries.len() as u32);
    for e in entries {
        e.encode_version(&mut w, version);
    }
    w.finish()
}

/// The start magic of a pack of `version`.
pub fn pack_magic(version: u32) -> &'static [u8; 8] {
    if version >= 2 {
        PACK_MAGIC
    } else {
        PACK_MAGIC_V1
    }
}

/// Decodes the trailer entries of a pack of `version`.
pub fn decode_entries(data: &[u8], version: u32) -> Result<Vec<BlobEntry>, DecodeError> {
    let mut r = Reader::new(data, "pack trailer");
    let n = r.count(BlobEntry::encoded_len(version))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(BlobEntry::decode_version(&mut r, version)?);
    }
    r.finish()?;
    Ok(out)
}

/// Builds one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::with_buffer(Vec::with_capacity(1 << 20))
    }

    /// An empty pack built in `buf` (cleared first), so finished packs'
    /// buffers can be reused.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(PACK_MAGIC);
        Self {
            buf,
            entries: Vec::new(),
        }
    }

    /// Current size in bytes (without the trailer).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of blobs.
    pub fn blob_count(&self) -> usize {
        self.entries.len()
    }

    /// Appends a stored (sealed) blob.
    pub fn add(&mut self, id: BlobId, kind: BlobKind, stored: &[u8], raw_len: u32) {
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(stored);
        self.entries.push(BlobEntry {
            id,
            kind,
            offset,
            stored_len: stored.len() as u32,
            raw_len,
            inner: None,
        });
    }

    /// Appends the sealed trailer and footer; returns the pack bytes and entries.
    pub fn finish(mut self, key: &SealKey) -> (Vec<u8>, Vec<BlobEntry>) {
        self.buf
            .extend_from_slice(&pack_tail(&self.entries, key, 2));
        (self.buf, self.entries)
    }
}

/// What follows the blobs of a pack of `version` holding `entries`: the
/// sealed trailer, its length and the end magic.
pub fn pack_tail(entries: &[BlobEntry], key: &SealKey, version: u32) -> Vec<u8> {
    let mut tail = key.seal_envelope(TRAILER_AAD, &encode_entries(entries, version), 1);
    let len = tail.len() as u32;
    tail.extend_from_slice(&len.to_le_bytes());
    tail.extend_from_slice(PACK_END_MAGIC);
    tail
}

/// Locates the sealed trailer in the last bytes of a pack: returns its
/// offset and length, given the pack length and its final `FOOTER_LEN` bytes.
pub fn parse_footer(pack_len: u64, footer: &[u8]) -> Result<(u64, u32), DecodeError> {
    if footer.len() != FOOTER_LEN || pack_len < (FIRST_BLOB_OFFSET + FOOTER_LEN) as u64 {
        return Err(DecodeError::new("pack footer", "pack too short"));
    }
    if &footer[4..] != PACK_END_MAGIC {
        return Err(DecodeError::new("pack footer", "bad end magic"));
    }
    let len = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes"));
    let start = pack_len
        .checked_sub(FOOTER_LEN as u64 + len as u64)
        .filter(|s| *s >= FIRST_BLOB_OFFSET as u64)
        .ok_or_else(|| {
            DecodeError::new(
                "pack footer",
                format!("trailer length {len} exceeds the pack"),
            )
        })?;
    Ok((start, len))
}

/// The version of a pack starting with `magic`.
pub fn pack_version(magic: &[u8]) -> Result<u32, DecodeError> {
    if magic == PACK_MAGIC {
        Ok(2)
    } else if magic == PACK_MAGIC_V1 {
        Ok(1)
    } else {
        Err(DecodeError::new("pack", "bad start magic"))
    }
}

/// Reads the blob entries of a whole pack held in memory.
pub fn read_trailer(pack: &[u8], key: &SealKey) -> Result<Vec<BlobEntry>, DecodeError> {
    if pack.len() < FIRST_BLOB_OFFSET + FOOTER_LEN {
        return Err(DecodeError::new("pack", "bad start magic"));
    }
    let version = pack_version(&pack[..8])?;
    let (start, len) = parse_footer(pack.len() as u64, &pack[pack.len() - FOOTER_LEN..])?;
    let sealed = &pack[start as usize..start as usize + len as usize];
    let body = key
        .open_envelope(TRAILER_AAD, sealed)
        .map_err(|e| DecodeError::new("pack trailer", e.to_string()))?;
    let entries = decode_entries(&body, version)?;
    for e in &entries {
        if e.end() > start {
            return Err(DecodeError::new(
                "pack trailer",
                format!("blob {} extends past the blob area", e.id.short()),
            ));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_round_trip(blobs in proptest::collection::vec((any::<[u8; 32]>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..200)), 0..20)) {
            let key = SealKey::new(&[4; 32]);
            let mut b = PackBuilder::new();
            for (id, kind, data) in &blobs {
                b.add(BlobId(Id(*id)), BlobKind::from_code(*kind).unwrap(), data, data.len() as u32 + 1);
            }
            let (pack, entries) = b.finish(&key);
            let read = read_trailer(&pack, &key).unwrap();
            prop_assert_eq!(&read, &entries);
            for (e, (_, _, data)) in read.iter().zip(&blobs) {
                prop_assert_eq!(&pack[e.offset as usize..e.end() as usize], &data[..]);
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let key = SealKey::new(&[4; 32]);
        assert!(read_trailer(b"", &key).is_err());
        assert!(read_trailer(&[0u8; 100], &key).is_err());
        let (mut pack, _) = PackBuilder::new().finish(&key);
        let n = pack.len();
        pack[n - 12] = 0xff;
        assert!(read_trailer(&pack, &key).is_err());
    }
}
