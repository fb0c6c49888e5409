//! Sealing (AES-256-GCM), envelopes (optional zstd), keyed ids and password derivation.

use crate::format::{BlobId, BlobKind, Id};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::cell::RefCell;

/// Nonce length of a sealed object.
pub const NONCE_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes `seal` adds to its input.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Envelope compression byte: stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Envelope compression byte: a zstd frame.
pub const COMPRESSION_ZSTD: u8 = 1;

/// Upper bound on a decompressed envelope, so a hostile frame cannot exhaust memory.
pub const MAX_PLAINTEXT: usize = 256 << 20;

/// Failure to open a sealed object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The GCM tag did not verify: wrong key, or the bytes were altered.
    #[error("authentication failed (wrong key or corrupted data)")]
    Authentication,
    /// The sealed bytes are too short to hold a nonce and tag.
    #[error("sealed object too short ({0} bytes)")]
    TooShort(usize),
    /// The envelope's compression byte or frame is invalid.
    #[error("bad envelope: {0}")]
    Envelope(String),
}

/// A 256-bit AES-GCM key.
///
/// ring's AES-GCM (AES-NI with carry-less multiply, VAES where the CPU has
/// it): 6x the speed of the RustCrypto crate on this machine's 1 MiB blobs
/// (7.6 against 1.2 GB/s per core), where GHASH alone was 8% of a backup's CPU.
#[derive(Clone)]
pub struct SealKey {
    cipher: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes a 32-byte key");
        Self {
            cipher: LessSafeKey::new(key),
        }
    }

    /// Encrypts `out[NONCE_LEN..]` in place under a fresh random nonce,
    /// written to `out[..NONCE_LEN]`, and appends the tag.
    fn seal_in_place(&self, aad: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        out[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(tag.as_ref());
    }

    /// Seals `plaintext` with a random nonce and associated data `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(aad, &mut out);
        out
    }

    /// Opens bytes produced by [`SealKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut plain = Vec::new();
        self.open_into(aad, sealed, &mut plain)?;
        Ok(plain)
    }

    /// Seals an envelope: `body` compressed with zstd at `level` when that
    /// makes it smaller (`level` 0 disables compression). The envelope is
    /// built and encrypted in place in the one buffer that is returned.
    pub fn seal_envelope(&self, aad: &[u8], body: &[u8], level: i32) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_envelope_into(aad, body, level, &mut out);
        out
    }

    /// Like [`SealKey::seal_envelope`], into `out` (cleared first), so a
    /// caller can reuse one buffer for many blobs. The zstd frame is written
    /// into `out` itself and moved up behind the nonce and compression byte.
    pub fn seal_envelope_into(&self, aad: &[u8], body: &[u8], level: i32, out: &mut Vec<u8>) {
        write_envelope(body, level, NONCE_LEN, TAG_LEN, out);
        self.seal_in_place(aad, out);
    }

    /// Opens an envelope sealed by [`SealKey::seal_envelope`].
    pub fn open_envelope(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let plain = self.open(aad, sealed)?;
        unenvelope(plain)
    }

    /// Opens an envelope sealed by [`SealKey::seal_envelope`] in `sealed`'s
    /// own buffer, leaving its body compressed: for bodies read as a
    /// stream ([`OpenedEnvelope::body`]) instead of decompressed whole, so
    /// a large object costs its stored size in memory, once.
    pub fn open_envelope_in_place(
        &self,
        aad: &[u8],
        mut sealed: Vec<u8>,
    ) -> Result<OpenedEnvelope, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let len = self
            .cipher
            .open_within(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
                NONCE_LEN..,
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        sealed.truncate(len);
        match sealed.first() {
            Some(&COMPRESSION_NONE | &COMPRESSION_ZSTD) => Ok(OpenedEnvelope(sealed)),
            Some(b) => Err(CryptoError::Envelope(format!(
                "unknown compression byte {b}"
            ))),
            None => Err(CryptoError::Envelope("empty".into())),
        }
    }

    /// Opens an envelope like [`SealKey::open_envelope`] and hands its body
    /// to `f`, decrypting and decompressing in this thread's reusable
    /// buffers: no allocation per blob, and a body stored uncompressed is
    /// read where it was decrypted instead of being shifted out of its
    /// envelope. For readers of many blobs (restore).
    pub fn with_opened_envelope<R>(
        &self,
        aad: &[u8],
        sealed: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, CryptoError> {
        // Taken out of the thread-local while in use, so `f` may open
        // envelopes itself.
        let (mut plain, mut body) = OPEN_BUFFERS.take();
        let result =
            self.open_into(aad, sealed, &mut plain)
                .and_then(|()| match plain.split_first() {
                    Some((&COMPRESSION_NONE, stored)) => Ok(f(stored)),
                    Some((&COMPRESSION_ZSTD, frame)) => {
                        decompress_into(frame, &mut body)?;
                        Ok(f(&body))
                    }
                    Some((b, _)) => Err(CryptoError::Envelope(format!(
                        "unknown compression byte {b}"
                    ))),
                    None => Err(CryptoError::Envelope("empty".into())),
                });
        for buf in [&mut plain, &mut body] {
            if buf.capacity() > OPEN_BUFFER_KEEP_MAX {
                *buf = Vec::new();
            }
        }
        OPEN_BUFFERS.set((plain, body));
        result
    }

    /// Decrypts `sealed` into `plain` (cleared first).
    fn open_into(&self, aad: &[u8], sealed: &[u8], plain: &mut Vec<u8>) -> Result<(), CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CryptoError::TooShort(sealed.len()))?;
        plain.clear();
        plain.extend_from_slice(ct);
        let len = self
            .cipher
            .open_in_place(nonce, Aad::from(aad), plain)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        plain.truncate(len);
        Ok(())
    }
}

/// An envelope's plaintext, its body still compressed
/// ([`SealKey::open_envelope_in_place`]).
#[derive(Debug)]
pub struct OpenedEnvelope(Vec<u8>);

impl OpenedEnvelope {
    /// The body as a stream: decompressed as it is read (with a buffer of
    /// about zstd's window, never the whole body).
    pub fn body(&self) -> Result<Box<dyn std::io::Read + '_>, CryptoError> {
        match self.0.split_first() {
            Some((&COMPRESSION_ZSTD, frame)) => Ok(Box::new(
                zstd::stream::read::Decoder::with_buffer(frame)
                    .map_err(|e| CryptoError::Envelope(format!("zstd: {e}")))?,
            )),
            Some((_, stored)) => Ok(Box::new(stored)),
            None => Err(CryptoError::Envelope("empty".into())),
        }
    }

    /// Bytes held: the stored size less the seal.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is held (never: an envelope has its compression byte).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reusable buffers above this size are freed after use (chunks are at
/// most 8 MiB by default; this keeps two per restore thread at most).
const OPEN_BUFFER_KEEP_MAX: usize = 16 << 20;

/// Decompresses a zstd frame into `out` (cleared first), within
/// [`MAX_PLAINTEXT`].
fn decompress_into(frame: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let capacity = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size as usize > MAX_PLAINTEXT => {
            return Err(CryptoError::Envelope(format!(
                "declared size {size} exceeds the {MAX_PLAINTEXT}-byte limit"
            )))
        }
        Ok(Some(size)) => size as usize,
        _ => MAX_PLAINTEXT,
    };
    out.clear();
    out.reserve(capacity);
    DECOMPRESSOR
        .with_borrow_mut(|slot| {
            let d = match slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            d.decompress_to_buffer(frame, out)
        })
        .map(|_| ())
        .map_err(|e| CryptoError::Envelope(format!("zstd: {e}")))
}

thread_local! {
    /// zstd compression contexts of this thread: creating a context per
    /// blob cost more CPU than compressing a small file. Keyed by level
    /// (data blobs alternate between two) and by [`size_class`].
    static COMPRESSORS: RefCell<Vec<((i32, u32), zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
    /// Each thread's buffers for [`SealKey::with_opened_envelope`]: the
    /// decrypted envelope and the decompressed body.
    static OPEN_BUFFERS: std::cell::Cell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
    /// One zstd decompression context per thread.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Which of a thread's compression contexts compresses `len` bytes: one per
/// power of two from 1 KiB to 256 KiB, one for anything larger.
///
/// zstd sizes a context's workspace to each input (its tables shrink with
/// the input), grows it when an input needs more, and frees it for a
/// smaller one after 128 calls that needed under a third of it. With one
/// context for files of 100 B to 64 KiB it was reallocated every ~50
/// calls, each time ~640 KiB of fresh pages: 83k page faults per 30k small
/// files. Inputs of one class need at most twice each other's space.
fn size_class(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(10, 19)
}

/// Writes the zstd frame of `body` at `level` into `out` (from its start)
/// and returns its length; `None` when compression is off, does not shrink
/// `body`, or fails.
fn compress_into(body: &[u8], level: i32, out: &mut Vec<u8>) -> Option<usize> {
    if level == 0 || body.len() <= 64 {
        return None;
    }
    let key = (level, size_class(body.len()));
    COMPRESSORS.with_borrow_mut(|contexts| {
        let at = match contexts.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                contexts.push((key, zstd::bulk::Compressor::new(level).ok()?));
                contexts.len() - 1
            }
        };
        let compressor = &mut contexts[at].1;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(body.len()) + NONCE_LEN + 1 + TAG_LEN);
        match compressor.compress_to_buffer(body, out) {
            Ok(n) if n < body.len() => Some(n),
            _ => None,
        }
    })
}

/// What a sample of a blob's bytes (16 runs of 256 spread over it) says
/// about how it compresses, for the choice of its zstd level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataClass {
    /// At least 95% of the sample is printable ASCII or whitespace: source
    /// code, logs, JSON.
    Text,
    /// Not text, and the sample's bytes carry under
    /// [`REDUNDANT_BITS_PER_BYTE`] bits each (order-0 entropy): archives
    /// of small objects, sparse records, zero-filled data.
    Redundant,
    /// Anything else: compressed, encrypted or random data, dense records.
    Dense,
}

/// The order-0 entropy, in bits per byte, under which a sample that is not
/// text is [`DataClass::Redundant`]. On the real source tree of issue 19
/// the static and import libraries (`.a`, `.lib`: 196 of its 204 MiB that
/// are not text) sample at 3 to 6 bits, where zstd level 1 stores 7% less
/// than level -1; the generated disk-image data of `benches/compare.sh`
/// samples at 6 to 8 bits, where the two store the same.
pub const REDUNDANT_BITS_PER_BYTE: f64 = 6.0;

/// Classifies `data` from a sample of its bytes (see [`DataClass`]).
pub fn classify(data: &[u8]) -> DataClass {
    const RUNS: usize = 16;
    const RUN: usize = 256;
    if data.is_empty() {
        return DataClass::Dense;
    }
    let step = (data.len() / RUNS).max(RUN);
    let runs = || {
        (0..data.len())
            .step_by(step)
            .take(RUNS)
            .map(move |start| &data[start..(start + RUN).min(data.len())])
    };
    let (mut text, mut seen) = (0usize, 0usize);
    for run in runs() {
        seen += run.len();
        // A count without branches, which the compiler vectorizes.
        let in_run: u16 = run
            .iter()
            .map(|&b| u16::from(matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e)))
            .sum();
        text += usize::from(in_run);
    }
    if text * 100 >= seen * 95 {
        return DataClass::Text;
    }
    let mut counts = [0u32; 256];
    for run in runs() {
        for &b in run {
            counts[usize::from(b)] += 1;
        }
    }
    let n = seen as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    if entropy < REDUNDANT_BITS_PER_BYTE {
        DataClass::Redundant
    } else {
        DataClass::Dense
    }
}

/// Builds an envelope plaintext: a compression byte then the (maybe compressed) body.
pub fn envelope(body: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::new();
    write_envelope(body, level, 0, 0, &mut out);
    out
}

/// Writes into `out` (cleared first) `head` bytes for the caller to fill
/// (their content is unspecified), then the envelope of `body`; `tail`
/// more bytes are reserved for the caller to append.
fn write_envelope(body: &[u8], level: i32, head: usize, tail: usize, out: &mut Vec<u8>) {
    let start = head + 1;
    match compress_into(body, level, out) {
        Some(n) => {
            out.resize(start + n, 0);
            out.copy_within(0..n, start);
            out[head] = COMPRESSION_ZSTD;
        }
        None => {
            out.clear();
            out.reserve_exact(start + body.len() + tail);
            out.resize(start, 0);
            out[head] = COMPRESSION_NONE;
            out.extend_from_slice(body);
        }
    }
}

/// Decodes an envelope plaintext back to its body.
pub fn unenvelope(mut plain: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
    match plain.first() {
        Some(&COMPRESSION_NONE) => {
            plain.remove(0);
            Ok(plain)
        }
        Some(&COMPRESSION_ZSTD) => {
            let mut body = Vec::new();
            decompress_into(&plain[1..], &mut body)?;
            Ok(body)
        }
        Some(b) => Err(CryptoError::Envelope(format!(
            "unknown compression byte {b}"
        ))),
        None => Err(CryptoError::Envelope("empty".into())),
    }
}

/// Associated data of a stored blob: its id and kind.
pub fn blob_aad(id: &BlobId, kind: BlobKind) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(id.as_bytes());
    aad[32] = kind.code();
    aad
}

/// Keyed BLAKE3 with the repository's id key.
#[derive(Clone)]
pub struct IdHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher(..)")
    }
}

impl IdHasher {
    /// A hasher with `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }
    /// The blob id of `data`.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(Id(*blake3::keyed_hash(&self.key, data).as_bytes()))
    }
}

/// argon2id parameters stored in a key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Parallelism.
    pub p_cost: u32,
}

/// Defaults for new keys: 32 MiB and 6 passes, the same memory-time product
/// (the cost per guess of a memory-hard function) as 64 MiB and 3 passes,
/// above OWASP's argon2id minimum (19 MiB, 2 passes), at half the memory:
/// every command derives a key first, so this is the floor of a job pod's
/// peak RSS. Each key file records its own parameters; older keys keep theirs.
impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_cost: 32 * 1024,
            t_cost: 6,
            p_cost: 1,
        }
    }
}

/// Largest argon2 memory cost a key file may ask for, in KiB (1 GiB):
/// 32 times the default, and what a job pod can be expected to spare.
pub const KDF_MAX_MEMORY_KIB: u32 = 1 << 20;
/// Largest argon2 time cost (passes over the memory): with
/// [`KDF_MAX_MEMORY_KIB`], a derivation of tens of seconds at most.
pub const KDF_MAX_ITERATIONS: u32 = 16;
/// Largest argon2 parallelism (lanes).
pub const KDF_MAX_PARALLELISM: u32 = 16;

impl KdfParams {
    /// Checks the parameters against the documented maximums
    /// ([`KDF_MAX_MEMORY_KIB`], [`KDF_MAX_ITERATIONS`],
    /// [`KDF_MAX_PARALLELISM`]) and argon2's minimums, before anything is
    /// allocated: a key file asking for more is damaged or not written by
    /// cairn, and deriving would take gigabytes or hours.
    pub fn check(&self) -> Result<(), String> {
        let Self {
            m_cost,
            t_cost,
            p_cost,
        } = *self;
        if m_cost > KDF_MAX_MEMORY_KIB
            || t_cost > KDF_MAX_ITERATIONS
            || p_cost > KDF_MAX_PARALLELISM
        {
            return Err(format!(
                "argon2 parameters (memory {m_cost} KiB, {t_cost} iterations, parallelism {p_cost}) exceed cairn's maximum (memory {KDF_MAX_MEMORY_KIB} KiB, {KDF_MAX_ITERATIONS} iterations, parallelism {KDF_MAX_PARALLELISM})"
            ));
        }
        if t_cost == 0 || p_cost == 0 || u64::from(m_cost) < 8 * u64::from(p_cost) {
            return Err(format!(
                "argon2 parameters (memory {m_cost} KiB, {t_cost} iterations, parallelism {p_cost}) are below argon2's minimum (1 iteration, 1 lane, 8 KiB per lane)"
            ));
        }
        Ok(())
    }
}

/// Derives a 32-byte key-encryption key from a password with argon2id,
/// after [`KdfParams::check`].
pub fn derive_key(password: &[u8], salt: &[u8], params: KdfParams) -> Result<[u8; 32], String> {
    params.check()?;
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| format!("argon2: {e}"))?;
    Ok(out)
}

/// 32 random bytes.
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_in_reused_buffers_matches_open_envelope() {
        let key = SealKey::new(&[3u8; 32]);
        let text = b"the same line again\n".repeat(5000);
        let random: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (body, level) in [(&text[..], 3), (&random[..], 0), (&b""[..], 3)] {
            let sealed = key.seal_envelope(b"aad", body, level);
            let got = key
                .with_opened_envelope(b"aad", &sealed, |p| p.to_vec())
                .unwrap();
            assert_eq!(got, body);
            assert_eq!(key.open_envelope(b"aad", &sealed).unwrap(), body);
            // Nested use (a reader opening another blob inside `f`).
            let nested = key
                .with_opened_envelope(b"aad", &sealed, |outer| {
                    let inner = key
                        .with_opened_envelope(b"aad", &sealed, |p| p.len())
                        .unwrap();
                    (outer.len(), inner)
                })
                .unwrap();
            assert_eq!(nested, (body.len(), body.len()));
            let mut bad = sealed.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(
                key.with_opened_envelope(b"aad", &bad, |_| ()),
                Err(CryptoError::Authentication)
            );
        }
        assert_eq!(
            key.with_opened_envelope(b"aad", &[0; 10], |_| ()),
            Err(CryptoError::TooShort(10))
        );
    }

    #[test]
    fn seal_round_trip_and_tamper() {
        let key = SealKey::new(&[7u8; 32]);
        let sealed = key.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(key.open(b"aad", &sealed).unwrap(), b"hello");
        assert_eq!(
            key.open(b"other", &sealed),
            Err(CryptoError::Authentication)
        );
        let mut bad = sealed.clone();
        bad[13] ^= 1;
        assert_eq!(key.open(b"aad", &bad), Err(CryptoError::Authentication));
        assert_eq!(
            key.open(b"aad", &sealed[..10]),
            Err(CryptoError::TooShort(10))
        );
    }

    #[test]
    fn envelope_compresses_only_when_smaller() {
        let zeros = vec![0u8; 10_000];
        let env = envelope(&zeros, 3);
        assert_eq!(env[0], COMPRESSION_ZSTD);
        assert!(env.len() < 1000);
        assert_eq!(unenvelope(env).unwrap(), zeros);
        let random: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let env = envelope(&random, 3);
        assert_eq!(unenvelope(env).unwrap(), random);
        assert_eq!(envelope(b"abc", 0)[0], COMPRESSION_NONE);
        assert!(unenvelope(vec![9, 1, 2]).is_err());
    }

    #[test]
    fn text_is_told_from_binary() {
        let text = "fn main() {\n    println!(\"hello\");\n}\n".repeat(500);
        assert_eq!(classify(text.as_bytes()), DataClass::Text);
        let random: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_ne!(classify(&random), DataClass::Text);
        assert_ne!(classify(&[0u8; 100_000]), DataClass::Text);
        assert_ne!(classify(&[]), DataClass::Text);
        assert_eq!(classify(&random), DataClass::Dense);
        assert_eq!(classify(&[0u8; 100_000]), DataClass::Redundant);
        // An archive of small objects: names and headers among zeros.
        let archive: Vec<u8> = (0..2000u32)
            .flat_map(|i| {
                let mut member = format!("__imp_Function{i}\0").into_bytes();
                member.extend_from_slice(&[0, 0, 0, 0, 0x4c, 0x01, (i % 7) as u8, 0]);
                member.extend_from_slice(&i.to_le_bytes());
                member
            })
            .collect();
        assert_eq!(classify(&archive), DataClass::Redundant);
        // A fast (negative) level round-trips like any other.
        let env = envelope(&random, -1);
        assert_eq!(unenvelope(env).unwrap(), random);
    }

    #[test]
    fn keyed_ids_depend_on_key() {
        let a = IdHasher::new([1; 32]).blob_id(b"x");
        let b = IdHasher::new([2; 32]).blob_id(b"x");
        assert_ne!(a, b);
    }
}
