//! Packs: stored blobs back to back, then a sealed trailer describing them.

use super::codec::{DecodeError, Reader, Writer};
use super::{BlobId, BlobKind};
use crate::crypto::SealKey;

/// Magic at the start of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPK1";
/// Magic at the end of a pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"CAIRNPKE";
/// Associated data of a pack trailer.
pub const TRAILER_AAD: &[u8] = b"cairn.pack-trailer";
/// Encoded size of one blob entry (trailer and index).
pub const ENTRY_LEN: usize = 32 + 1 + 4 + 4 + 4;
/// Bytes after the trailer: its length and the end magic.
pub const FOOTER_LEN: usize = 4 + 8;
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
}

impl BlobEntry {
    /// Appends the 45-byte encoding.
    pub fn encode_into(&self, w: &mut Writer) {
        w.bytes(self.id.as_bytes());
        w.u8(self.kind.code());
        w.u32(self.offset);
        w.u32(self.stored_len);
        w.u32(self.raw_len);
    }

    /// Reads one entry.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = BlobId(r.id()?);
        let code = r.u8()?;
        let kind = BlobKind::from_code(code)
            .ok_or_else(|| DecodeError::new("blob entry", format!("unknown kind {code}")))?;
        Ok(BlobEntry {
            id,
            kind,
            offset: r.u32()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
        })
    }

    /// End offset of the stored blob.
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.stored_len as u64
    }
}

/// Encodes trailer entries (the envelope body).
pub fn encode_entries(entries: &[BlobEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(4 + entries.len() * ENTRY_LEN);
    w.u32(entries.len() as u32);
    for e in entries {
        e.encode_into(&mut w);
    }
    w.finish()
}

/// Decodes trailer entries.
pub fn decode_entries(data: &[u8]) -> Result<Vec<BlobEntry>, DecodeError> {
    let mut r = Reader::new(data, "pack trailer");
    let n = r.count(ENTRY_LEN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(BlobEntry::decode_from(&mut r)?);
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
        });
    }

    /// Appends the sealed trailer and footer; returns the pack bytes and entries.
    pub fn finish(mut self, key: &SealKey) -> (Vec<u8>, Vec<BlobEntry>) {
        self.buf.extend_from_slice(&pack_tail(&self.entries, key));
        (self.buf, self.entries)
    }
}

/// What follows the blobs of a pack holding `entries`: the sealed trailer,
/// its length and the end magic.
pub fn pack_tail(entries: &[BlobEntry], key: &SealKey) -> Vec<u8> {
    let mut tail = key.seal_envelope(TRAILER_AAD, &encode_entries(entries), 1);
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

/// Reads the blob entries of a whole pack held in memory.
pub fn read_trailer(pack: &[u8], key: &SealKey) -> Result<Vec<BlobEntry>, DecodeError> {
    if pack.len() < FIRST_BLOB_OFFSET + FOOTER_LEN || &pack[..8] != PACK_MAGIC {
        return Err(DecodeError::new("pack", "bad start magic"));
    }
    let (start, len) = parse_footer(pack.len() as u64, &pack[pack.len() - FOOTER_LEN..])?;
    let sealed = &pack[start as usize..start as usize + len as usize];
    let body = key
        .open_envelope(TRAILER_AAD, sealed)
        .map_err(|e| DecodeError::new("pack trailer", e.to_string()))?;
    let entries = decode_entries(&body)?;
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
