//! `keys/<id>`: a password-derived key wrapping the master key, and the
//! key id that names it.
//!
//! Invariants: a key file is never rewritten; a key id of
//! [`KEY_ID_HEX_LEN`] hex digits is the BLAKE3 of the file's bytes, so a
//! damaged key file is told apart from a wrong password before any key is
//! derived (ids of [`LEGACY_KEY_ID_HEX_LEN`] digits are random and vouch
//! for nothing); argon2 parameters are checked against the documented
//! maximums before deriving.

use super::codec::{DecodeError, Reader, Writer};
use super::Id;
use crate::crypto::{derive_key, KdfParams, SealKey, SEAL_OVERHEAD};

/// Key file magic.
pub const KEY_MAGIC: &[u8; 8] = b"CAIRNKEY";
/// Key file version.
pub const KEY_VERSION: u32 = 1;
/// Salt length.
pub const SALT_LEN: usize = 32;
/// Length of the sealed master key, the last field.
pub const SEALED_MASTER_LEN: usize = SEAL_OVERHEAD + 32;
/// Length of a key id written today: hex of the BLAKE3 of the key file.
pub const KEY_ID_HEX_LEN: usize = 64;
/// Length of a key id written before ids were content hashes: hex of 16
/// random bytes.
pub const LEGACY_KEY_ID_HEX_LEN: usize = 32;

/// The id a key file with these bytes is stored under (`keys/<id>`).
pub fn key_id(encoded: &[u8]) -> String {
    Id::hash(encoded).to_hex()
}

/// Checks that the bytes of key file `keys/<id>` match its name: an id of
/// [`KEY_ID_HEX_LEN`] hex digits must be their BLAKE3. Returns whether the
/// name vouched for the bytes (false for a legacy random id, which cannot).
pub fn check_key_name(id: &str, encoded: &[u8]) -> Result<bool, KeyFileError> {
    let content_named = id.len() == KEY_ID_HEX_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !content_named {
        return Ok(false);
    }
    if !id.eq_ignore_ascii_case(&key_id(encoded)) {
        return Err(KeyFileError::Damaged(
            "its content does not match its name (BLAKE3 mismatch)".into(),
        ));
    }
    Ok(true)
}

/// A decoded key file (the master key still sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// argon2id parameters.
    pub kdf: KdfParams,
    /// Salt.
    pub salt: [u8; SALT_LEN],
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// `user@host` of whoever added the key.
    pub label: String,
    /// The sealed master key.
    pub sealed_master: Vec<u8>,
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Malformed bytes: damaged, or not a cairn key file.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The bytes do not match the key id that names them.
    #[error("{0}")]
    Damaged(String),
    /// The password does not open this key.
    #[error("password does not match")]
    WrongPassword,
    /// The KDF parameters are out of bounds, or the KDF failed.
    #[error("{0}")]
    Kdf(String),
}

impl KeyFileError {
    /// Whether the key file itself is at fault (damaged, or not one cairn
    /// can use), rather than the password.
    pub fn is_damage(&self) -> bool {
        !matches!(self, KeyFileError::WrongPassword)
    }
}

impl KeyFile {
    /// Wraps `master` under `password`.
    pub fn create(
        password: &[u8],
        master: &[u8; 32],
        kdf: KdfParams,
        label: String,
        created: i64,
    ) -> Result<Self, KeyFileError> {
        let salt = crate::crypto::random_key();
        let kek = derive_key(password, &salt, kdf).map_err(KeyFileError::Kdf)?;
        let mut file = KeyFile {
            kdf,
            salt,
            created,
            label,
            sealed_master: Vec::new(),
        };
        let aad = file.encode_header();
        file.sealed_master = SealKey::new(&kek).seal(&aad, master);
        Ok(file)
    }

    fn encode_header(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.bytes(KEY_MAGIC);
        w.u32(KEY_VERSION);
        w.u32(self.kdf.m_cost);
        w.u32(self.kdf.t_cost);
        w.u32(self.kdf.p_cost);
        w.bytes(&self.salt);
        w.i64(self.created);
        w.lbytes(self.label.as_bytes());
        w.finish()
    }

    /// Encodes the key file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_header();
        out.extend_from_slice(&self.sealed_master);
        out
    }

    /// Decodes a key file and checks its structure (magic, version, argon2
    /// parameters within bounds, UTF-8 label, sealed master key length)
    /// without deriving anything.
    pub fn decode(data: &[u8]) -> Result<Self, KeyFileError> {
        let mut r = Reader::new(data, "key file");
        if r.take(8)? != KEY_MAGIC {
            return Err(DecodeError::new("key file", "bad magic").into());
        }
        let version = r.u32()?;
        if version != KEY_VERSION {
            return Err(
                DecodeError::new("key file", format!("unsupported version {version}")).into(),
            );
        }
        let kdf = KdfParams {
            m_cost: r.u32()?,
            t_cost: r.u32()?,
            p_cost: r.u32()?,
        };
        kdf.check().map_err(KeyFileError::Kdf)?;
        let salt: [u8; SALT_LEN] = r.take(SALT_LEN)?.try_into().expect("salt length");
        let created = r.i64()?;
        let label = std::str::from_utf8(r.lbytes()?)
            .map_err(|_| DecodeError::new("key file", "the label is not UTF-8"))?
            .to_string();
        let sealed_master = r.take(r.remaining())?.to_vec();
        if sealed_master.len() != SEALED_MASTER_LEN {
            return Err(DecodeError::new(
                "key file",
                format!(
                    "the sealed master key is {} bytes, not {SEALED_MASTER_LEN}",
                    sealed_master.len()
                ),
            )
            .into());
        }
        Ok(KeyFile {
            kdf,
            salt,
            created,
            label,
            sealed_master,
        })
    }

    /// Unwraps the master key with `password`.
    pub fn open(&self, password: &[u8]) -> Result<[u8; 32], KeyFileError> {
        let kek = derive_key(password, &self.salt, self.kdf).map_err(KeyFileError::Kdf)?;
        let aad = self.encode_header();
        let master = SealKey::new(&kek)
            .open(&aad, &self.sealed_master)
            .map_err(|_| KeyFileError::WrongPassword)?;
        master
            .try_into()
            .map_err(|_| DecodeError::new("key file", "master key is not 32 bytes").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    #[test]
    fn wrap_unwrap() {
        let k = KeyFile::create(b"pw", &[9; 32], fast(), "me@here".into(), 5).unwrap();
        let dec = KeyFile::decode(&k.encode()).unwrap();
        assert_eq!(dec, k);
        assert_eq!(dec.open(b"pw").unwrap(), [9; 32]);
        assert!(matches!(
            dec.open(b"nope"),
            Err(KeyFileError::WrongPassword)
        ));
        // Tampering with the parameters breaks the seal.
        let mut enc = k.encode();
        enc[16] ^= 2; // 1 iteration becomes 3: in bounds, but bound by the seal
        assert!(KeyFile::decode(&enc).unwrap().open(b"pw").is_err());
    }

    #[test]
    fn every_flipped_byte_of_a_content_named_key_is_damage_not_a_wrong_password() {
        let enc = KeyFile::create(b"pw", &[9; 32], fast(), "me@here".into(), 5)
            .unwrap()
            .encode();
        let id = key_id(&enc);
        assert_eq!(id.len(), KEY_ID_HEX_LEN);
        assert!(check_key_name(&id, &enc).unwrap());
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            let e = check_key_name(&id, &bad).unwrap_err();
            assert!(e.is_damage() && e.to_string().contains("BLAKE3"), "{e}");
        }
        // Truncated or extended: damaged too.
        assert!(check_key_name(&id, &enc[..enc.len() - 1]).is_err());
        // A legacy random id vouches for nothing; the bytes are checked by
        // their structure only.
        assert!(!check_key_name(&"ab".repeat(16), &enc).unwrap());
    }

    #[test]
    fn kdf_parameters_over_the_maximum_are_refused_before_deriving() {
        let k = KeyFile::create(b"pw", &[9; 32], fast(), "me@here".into(), 5).unwrap();
        // Offsets 12, 16, 20: memory, iterations, parallelism (docs/FORMAT.md).
        for (offset, value) in [
            (12, crate::crypto::KDF_MAX_MEMORY_KIB + 1),
            (12, u32::MAX),
            (16, crate::crypto::KDF_MAX_ITERATIONS + 1),
            (20, crate::crypto::KDF_MAX_PARALLELISM + 1),
            (16, 0),
        ] {
            let mut enc = k.encode();
            enc[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            let started = std::time::Instant::now();
            let e = KeyFile::decode(&enc).unwrap_err();
            assert!(matches!(e, KeyFileError::Kdf(_)), "{e}");
            assert!(e.to_string().contains("argon2 parameters"), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        let over = KdfParams {
            m_cost: crate::crypto::KDF_MAX_MEMORY_KIB * 2,
            ..fast()
        };
        assert!(KeyFile::create(b"pw", &[9; 32], over, "x".into(), 5).is_err());
    }

    #[test]
    fn structural_damage_is_named() {
        let enc = KeyFile::create(b"pw", &[9; 32], fast(), "me@here".into(), 5)
            .unwrap()
            .encode();
        for (bad, want) in [
            (enc[..enc.len() - 1].to_vec(), "sealed master key"),
            ([&enc[..], b"x"].concat(), "sealed master key"),
            (enc[..40].to_vec(), "key file"),
            (b"CAIRNKEZ".to_vec(), "magic"),
        ] {
            let e = KeyFile::decode(&bad).unwrap_err();
            assert!(e.is_damage() && e.to_string().contains(want), "{e}");
        }
    }
}
