//! `cairn.repository`: the plaintext header naming the format version and repository id.

use super::codec::{DecodeError, Reader, Writer};
use super::{Id, FORMAT_VERSION, OLDEST_FORMAT_VERSION};

/// Object path of the header.
pub const HEADER_PATH: &str = "cairn.repository";
/// Header magic.
pub const HEADER_MAGIC: &[u8; 8] = b"CAIRNREP";
/// Encoded header length.
pub const HEADER_LEN: usize = 8 + 4 + 32;

/// The repository header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Random repository id.
    pub repo_id: Id,
}

/// Why a header could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a cairn header at all.
    #[error("the header does not start with the cairn magic")]
    BadMagic,
    /// A cairn header of another version.
    #[error("repository format version {found}, this cairn reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
    /// Truncated or malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Header {
    /// A new header for the current format.
    pub fn new(repo_id: Id) -> Self {
        Self {
            version: FORMAT_VERSION,
            repo_id,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(HEADER_LEN);
        w.bytes(HEADER_MAGIC);
        w.u32(self.version);
        w.id(&self.repo_id);
        w.finish()
    }

    /// Decodes and checks a header.
    pub fn decode(data: &[u8]) -> Result<Self, HeaderError> {
        let mut r = Reader::new(data, "repository header");
        if r.take(8).map_err(|_| HeaderError::BadMagic)? != HEADER_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = r.u32()?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let repo_id = r.id()?;
        r.finish()?;
        Ok(Self { version, repo_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let h = Header::new(Id([3; 32]));
        let enc = h.encode();
        assert_eq!(enc.len(), HEADER_LEN);
        assert_eq!(Header::decode(&enc).unwrap(), h);
        assert_eq!(Header::decode(b"hello"), Err(HeaderError::BadMagic));
        let mut v1 = enc.clone();
        v1[8] = 1;
        assert_eq!(Header::decode(&v1).unwrap().version, 1);
        let mut v3 = enc.clone();
        v3[8] = 3;
        assert_eq!(
            Header::decode(&v3),
            Err(HeaderError::UnsupportedVersion { found: 3 })
        );
        assert!(Header::decode(&enc[..20]).is_err());
    }
}
