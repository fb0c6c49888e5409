//! `config`: chunker parameters, pack sizes, compression level and the id key.

use super::codec::{DecodeError, Reader, Writer};
use super::Id;

/// Object path of the config.
pub const CONFIG_PATH: &str = "config";
/// Associated data of the sealed config.
pub const CONFIG_AAD: &[u8] = b"cairn.config";
/// zstd level of the sealed config: 0, stored uncompressed (its random
/// id key does not compress).
pub const CONFIG_ZSTD_LEVEL: i32 = 0;
/// Config version.
pub const CONFIG_VERSION: u32 = 1;
/// Encoded body length.
pub const CONFIG_LEN: usize = 4 + 32 + 32 + 4 * 5 + 4;

/// The zstd level of new repositories (until 2026-12-08: 3). Small text
/// is compressed in bundles (see `crate::sealer::BUNDLE_MEMBER_MAX`), which
/// store less at level 1 than a frame per file at level 3; on the real
/// source tree level 1 for the rest of the text too costs 2% more
/// repository than level 3 for 9% less CPU.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Repository configuration, fixed at init.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Must equal the header's repository id.
    pub repo_id: Id,
    /// Key of the keyed BLAKE3 blob ids.
    pub id_key: [u8; 32],
    /// FastCDC minimum chunk size.
    pub chunk_min: u32,
    /// FastCDC average chunk size.
    pub chunk_avg: u32,
    /// FastCDC maximum chunk size.
    pub chunk_max: u32,
    /// Target size of data packs.
    pub data_pack_size: u32,
    /// Target size of metadata packs.
    pub meta_pack_size: u32,
    /// Default zstd level (0 = no compression).
    pub zstd_level: i32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("repo_id", &self.repo_id)
            .field("chunk_min", &self.chunk_min)
            .field("chunk_avg", &self.chunk_avg)
            .field("chunk_max", &self.chunk_max)
            .field("data_pack_size", &self.data_pack_size)
            .field("meta_pack_size", &self.meta_pack_size)
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults with a fresh id key.
    pub fn new(repo_id: Id) -> Self {
        Self {
            repo_id,
            id_key: crate::crypto::random_key(),
            chunk_min: 512 << 10,
            chunk_avg: 1 << 20,
            chunk_max: 8 << 20,
            data_pack_size: 16 << 20,
            meta_pack_size: 4 << 20,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }

    /// Checks the values a reader relies on.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let bad = |r: String| Err(DecodeError::new("config", r));
        if !(64..=1 << 20).contains(&self.chunk_min)
            || !(256..=4 << 20).contains(&self.chunk_avg)
            || !(1024..=16 << 20).contains(&self.chunk_max)
            || self.chunk_min > self.chunk_avg
            || self.chunk_avg > self.chunk_max
        {
            return bad(format!(
                "chunker sizes min {} avg {} max {} are outside FastCDC's limits",
                self.chunk_min, self.chunk_avg, self.chunk_max
            ));
        }
        if self.data_pack_size < 1024 || self.meta_pack_size < 1024 {
            return bad("pack target sizes must be at least 1 KiB".into());
        }
        if !(0..=22).contains(&self.zstd_level) {
            return bad(format!("zstd level {} is outside 0..=22", self.zstd_level));
        }
        Ok(())
    }

    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(CONFIG_LEN);
        w.u32(CONFIG_VERSION);
        w.id(&self.repo_id);
        w.bytes(&self.id_key);
        w.u32(self.chunk_min);
        w.u32(self.chunk_avg);
        w.u32(self.chunk_max);
        w.u32(self.data_pack_size);
        w.u32(self.meta_pack_size);
        w.i32(self.zstd_level);
        w.finish()
    }

    /// Decodes and validates the body.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data, "config");
        let version = r.u32()?;
        if version != CONFIG_VERSION {
            return Err(DecodeError::new(
                "config",
                format!("unsupported version {version}"),
            ));
        }
        let cfg = Config {
            repo_id: r.id()?,
            id_key: r.take(32)?.try_into().expect("32 bytes"),
            chunk_min: r.u32()?,
            chunk_avg: r.u32()?,
            chunk_max: r.u32()?,
            data_pack_size: r.u32()?,
            meta_pack_size: r.u32()?,
            zstd_level: r.i32()?,
        };
        r.finish()?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Config::new(Id([1; 32]));
        let enc = c.encode();
        assert_eq!(enc.len(), CONFIG_LEN);
        assert_eq!(Config::decode(&enc).unwrap(), c);
        let mut bad = c.clone();
        bad.chunk_min = 10;
        assert!(Config::decode(&bad.encode()).is_err());
    }
}
