//! `keys/<id>`: a password-derived key wrapping the master key.

use super::codec::{DecodeError, Reader, Writer};
use crate::crypto::{derive_key, KdfParams, SealKey};

/// Key file magic.
pub const KEY_MAGIC: &[u8; 8] = b"CAIRNKEY";
/// Key file version.
pub const KEY_VERSION: u32 = 1;
/// Salt length.
pub const SALT_LEN: usize = 32;

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
    /// Malformed bytes.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The password does not open this key.
    #[error("password does not match")]
    WrongPassword,
    /// The KDF failed (bad parameters).
    #[error("{0}")]
    Kdf(String),
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

    /// Decodes a key file.
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
        let salt: [u8; SALT_LEN] = r.take(SALT_LEN)?.try_into().expect("salt length");
        let created = r.i64()?;
        let label = String::from_utf8_lossy(r.lbytes()?).into_owned();
        let sealed_master = r.take(r.remaining())?.to_vec();
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
        enc[16] ^= 1;
        assert!(KeyFile::decode(&enc).unwrap().open(b"pw").is_err());
    }
}
