//! The blob sealer: how a blob's plaintext becomes its stored bytes and
//! back (keyed BLAKE3 id, zstd at the level its kind and content call
//! for, AES-256-GCM with the id and kind as associated data).

use crate::crypto::{blob_aad, DataClass, IdHasher, SealKey};
use crate::error::{Error, Result};
use crate::format::pack::BUNDLE_AAD;
use crate::format::{BlobId, BlobKind};

/// zstd level for dense data blobs ([`DataClass::Dense`]). On the binary
/// benchmark data (database- and disk-image-like pages) level -1 compresses
/// as well as level 3 (ratio 1.764 against 1.763) at 2.2x the speed
/// (`zstd -b`: 788 against 357 MB/s per core); on source text it would lose
/// a third of the ratio, so text keeps the configured level.
pub const BINARY_ZSTD_LEVEL: i32 = -1;

/// zstd level for data that is not text but is redundant
/// ([`DataClass::Redundant`]): on the real source tree's static and import
/// libraries level 1 stores 7% less than level -1 at 11% more time (level
/// 3 would store another 9% less at 50% more time).
pub const REDUNDANT_ZSTD_LEVEL: i32 = 1;

/// Data blobs smaller than this whose content is not dense
/// ([`DataClass::Dense`]) are stored in bundles: sealed together with
/// their neighbours as one zstd frame, at the configured level. On the
/// real source tree (25k files under 64 KiB, 171 MB) one frame per 256 KiB
/// of them at level 1 stores 29.9 MiB where a frame per file at level 3
/// stores 41.1 MiB, in 63% of the compression time: a frame per small file
/// pays zstd's per-frame costs and cannot use what files have in common.
pub const BUNDLE_MEMBER_MAX: usize = 64 << 10;

/// A bundle is sealed once its plaintext reaches this size. A reader of
/// one member reads and decompresses the whole bundle.
pub const BUNDLE_TARGET: usize = 256 << 10;

/// Whether a blob of `kind` with `plaintext` goes into a bundle in a
/// repository whose configured zstd level is `configured`: small data that
/// is not dense, never with compression off.
pub fn bundles(kind: BlobKind, configured: i32, plaintext: &[u8]) -> bool {
    kind == BlobKind::Data
        && plaintext.len() < BUNDLE_MEMBER_MAX
        && configured > 0
        && crate::crypto::classify(plaintext) != DataClass::Dense
}

/// The zstd level a blob of `kind` is sealed at, given the repository's
/// configured level: metadata at least level 1; data by its
/// [`DataClass`]: text at the configured level, redundant data at
/// [`REDUNDANT_ZSTD_LEVEL`] (or the configured level if lower), dense
/// data at [`BINARY_ZSTD_LEVEL`].
pub fn zstd_level_for(kind: BlobKind, configured: i32, plaintext: &[u8]) -> i32 {
    if kind.is_metadata() {
        return configured.max(1);
    }
    if configured <= 0 {
        return configured;
    }
    match crate::crypto::classify(plaintext) {
        DataClass::Text => configured,
        DataClass::Redundant => configured.min(REDUNDANT_ZSTD_LEVEL),
        DataClass::Dense => BINARY_ZSTD_LEVEL,
    }
}

/// Seals and opens blobs of one repository.
#[derive(Clone)]
pub struct BlobSealer {
    key: SealKey,
    hasher: IdHasher,
    zstd_level: i32,
    /// Whether small data goes into bundles (format version 2 and later).
    bundling: bool,
}

impl BlobSealer {
    /// A sealer with the master key's seal `key`, the id `hasher` and the
    /// configured zstd level; `bundling` when the repository's format has
    /// bundles.
    pub fn new(key: SealKey, hasher: IdHasher, zstd_level: i32, bundling: bool) -> Self {
        Self {
            key,
            hasher,
            zstd_level,
            bundling,
        }
    }

    /// The blob id of `data`.
    #[inline]
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        self.hasher.blob_id(data)
    }

    /// Seals a blob for storage: returns its id and stored bytes.
    pub fn seal(&self, kind: BlobKind, plaintext: &[u8]) -> (BlobId, Vec<u8>) {
        let id = self.blob_id(plaintext);
        (id, self.seal_with_id(kind, id, plaintext))
    }

    /// Seals a blob whose id is already known.
    pub fn seal_with_id(&self, kind: BlobKind, id: BlobId, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(kind, id, plaintext, &mut out);
        out
    }

    /// Seals a blob whose id is already known into `out` (cleared first).
    /// Data is compressed at the level its content calls for
    /// ([`zstd_level_for`]).
    #[inline]
    pub fn seal_into(&self, kind: BlobKind, id: BlobId, plaintext: &[u8], out: &mut Vec<u8>) {
        let level = zstd_level_for(kind, self.zstd_level, plaintext);
        self.key
            .seal_envelope_into(&blob_aad(&id, kind), plaintext, level, out)
    }

    /// Whether a blob of `kind` with `plaintext` goes into a bundle (see
    /// [`BUNDLE_MEMBER_MAX`]); never with compression off.
    pub fn bundles(&self, kind: BlobKind, plaintext: &[u8]) -> bool {
        self.bundling && bundles(kind, self.zstd_level, plaintext)
    }

    /// Seals a bundle's plaintext (its members back to back) into `out`
    /// (cleared first).
    pub fn seal_bundle_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        self.key
            .seal_envelope_into(BUNDLE_AAD, plaintext, self.zstd_level, out)
    }

    /// Opens a stored bundle and hands its plaintext to `f`, in this
    /// thread's reusable buffers. Its members are then sliced out with
    /// [`BlobSealer::member`].
    pub fn with_open_bundle<R>(
        &self,
        stored: &[u8],
        object: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.key
            .with_opened_envelope(BUNDLE_AAD, stored, f)
            .map_err(|e| Error::corrupt(object, format!("bundle: {e}")))
    }

    /// The plaintext of data blob `id`, `raw_len` bytes from `inner` in
    /// the opened `bundle`, checked against its id.
    pub fn member<'a>(
        &self,
        bundle: &'a [u8],
        id: &BlobId,
        inner: u32,
        raw_len: u32,
        object: &str,
    ) -> Result<&'a [u8]> {
        let plain = bundle
            .get(inner as usize..inner as usize + raw_len as usize)
            .ok_or_else(|| {
                Error::corrupt(
                    object,
                    format!(
                        "data blob {} extends past the end of its bundle ({} bytes)",
                        id.short(),
                        bundle.len()
                    ),
                )
            })?;
        self.verify_id(BlobKind::Data, id, plain, object)?;
        Ok(plain)
    }

    /// Opens the copy of blob `id` stored in `stored`: the blob's own
    /// sealed bytes, or (`inner` given) its bundle's.
    pub fn open_copy(
        &self,
        kind: BlobKind,
        id: &BlobId,
        inner: Option<u32>,
        raw_len: u32,
        stored: &[u8],
        object: &str,
    ) -> Result<Vec<u8>> {
        match inner {
            None => self.open(kind, id, stored, object),
            Some(inner) => {
                if kind != BlobKind::Data {
                    return Err(Error::corrupt(
                        object,
                        format!("{kind} blob {} is indexed in a bundle", id.short()),
                    ));
                }
                self.with_open_bundle(stored, object, |bundle| {
                    self.member(bundle, id, inner, raw_len, object)
                        .map(<[u8]>::to_vec)
                })?
            }
        }
    }

    /// Opens a stored blob and checks its id.
    pub fn open(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &[u8],
        object: &str,
    ) -> Result<Vec<u8>> {
        let plain = self
            .key
            .open_envelope(&blob_aad(id, kind), stored)
            .map_err(|e| Error::corrupt(object, format!("{kind} blob {}: {e}", id.short())))?;
        self.verify_id(kind, id, &plain, object)?;
        Ok(plain)
    }

    /// Fails unless `plain` hashes to `id`.
    fn verify_id(&self, kind: BlobKind, id: &BlobId, plain: &[u8], object: &str) -> Result<()> {
        if self.blob_id(plain) != *id {
            return Err(Error::corrupt(
                object,
                format!("{kind} blob {} does not hash to its id", id.short()),
            ));
        }
        Ok(())
    }

    /// Opens a stored blob like [`BlobSealer::open`] and hands its
    /// plaintext to `f`, in this thread's reusable buffers (no allocation
    /// per blob; see [`crate::crypto::SealKey::with_opened_envelope`]).
    #[inline]
    pub fn with_open<R>(
        &self,
        kind: BlobKind,
        id: &BlobId,
        stored: &[u8],
        object: &str,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.key
            .with_opened_envelope(&blob_aad(id, kind), stored, |plain| {
                self.verify_id(kind, id, plain, object)?;
                Ok(f(plain))
            })
            .map_err(|e| Error::corrupt(object, format!("{kind} blob {}: {e}", id.short())))?
    }
}
