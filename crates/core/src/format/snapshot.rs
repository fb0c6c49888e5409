//! Snapshot manifests: sealed JSON naming a root tree and describing the backup.

use super::{BlobId, SnapshotId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Associated data of a sealed snapshot.
pub const SNAPSHOT_AAD: &[u8] = b"cairn.snapshot";
/// Manifest version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Counts and sizes of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent whose metadata changed (re-read).
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries (symlinks, devices, fifos, sockets).
    pub others: u64,
    /// Content bytes read from disk.
    pub bytes_read: u64,
    /// Total content bytes of the snapshot's files.
    pub bytes_total: u64,
    /// Blobs written to the repository.
    pub blobs_added: u64,
    /// Stored bytes added (after dedup and compression).
    pub bytes_added: u64,
    /// Entries skipped because they could not be read.
    pub errors: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// Files whose size, modification or change time differed between the
    /// start and the end of their read: what was stored is neither their
    /// content before nor after. Absent (0) in snapshots of older versions.
    #[serde(skip_serializing_if = "is_zero")]
    pub files_changed_while_read: u64,
    /// The first 100 of them, each with what changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_while_read: Vec<ChangedFile>,
}

/// A file that changed while a backup read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// Its path as the backup met it.
    pub path: RawPath,
    /// What changed (sizes before and after, bytes stored).
    pub what: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A path that survives JSON even when it is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPath(pub PathBuf);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawPathRepr {
    Text(String),
    Bytes { bytes: Vec<u8> },
}

impl Serialize for RawPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(t) => RawPathRepr::Text(t.to_string()),
            None => RawPathRepr::Bytes {
                bytes: self.0.as_os_str().as_bytes().to_vec(),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RawPath(match RawPathRepr::deserialize(d)? {
            RawPathRepr::Text(t) => PathBuf::from(t),
            RawPathRepr::Bytes { bytes } => PathBuf::from(OsStr::from_bytes(&bytes)),
        }))
    }
}

fn hex_id<S: Serializer>(id: &BlobId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

fn parse_hex<'de, D: Deserializer<'de>>(d: D) -> Result<BlobId, D::Error> {
    let s = String::deserialize(d)?;
    BlobId::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}")))
}

fn hex_opt<S: Serializer>(id: &Option<SnapshotId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_some(&id.to_hex()),
        None => s.serialize_none(),
    }
}

fn parse_hex_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SnapshotId>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => SnapshotId::from_hex(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}"))),
    }
}

fn default_true() -> bool {
    true
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Manifest version.
    pub version: u32,
    /// When the backup started.
    pub time: DateTime<Utc>,
    /// Host name.
    pub host: String,
    /// What was backed up.
    pub source: String,
    /// Paths given to the backup.
    pub paths: Vec<RawPath>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Root tree.
    #[serde(serialize_with = "hex_id", deserialize_with = "parse_hex")]
    pub tree: BlobId,
    /// Parent snapshot used to skip unchanged files.
    #[serde(
        default,
        serialize_with = "hex_opt",
        deserialize_with = "parse_hex_opt"
    )]
    pub parent: Option<SnapshotId>,
    /// False for a checkpoint of an unfinished backup.
    #[serde(default = "default_true")]
    pub complete: bool,
    /// Counts and sizes.
    #[serde(default)]
    pub summary: Summary,
    /// Program that wrote it.
    #[serde(default)]
    pub program_version: String,
    /// Exclusion rules applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Hook commands and their outcomes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<serde_json::Value>,
    /// Set by `repair snapshots` when the root directory's own listing was
    /// lost (the root tree is then empty): what was lost. Damaged entries
    /// below the root carry the xattr `user.cairn.damaged` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_root: Option<String>,
}

impl Snapshot {
    /// Encodes the JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("snapshot serializes")
    }

    /// Decodes the JSON body.
    pub fn from_json(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn snapshot_round_trip(
            host in ".{0,20}", source in ".{0,30}",
            paths in proptest::collection::vec(proptest::collection::vec(1u8..=255, 1..20), 0..4),
            tags in proptest::collection::vec("[a-z0-9=-]{1,10}", 0..4),
            tree in any::<[u8; 32]>(), parent in proptest::option::of(any::<[u8; 32]>()),
            secs in 0i64..4_000_000_000, nanos in 0u32..1_000_000_000, complete in any::<bool>(),
            files in any::<u64>(),
        ) {
            let snap = Snapshot {
                version: SNAPSHOT_VERSION,
                time: DateTime::from_timestamp(secs, nanos).unwrap(),
                host, source,
                paths: paths.into_iter().map(|p| RawPath(PathBuf::from(OsStr::from_bytes(&p)))).collect(),
                tags,
                tree: BlobId(Id(tree)),
                parent: parent.map(|p| SnapshotId(Id(p))),
                complete,
                summary: Summary { files_new: files, ..Default::default() },
                program_version: "cairn test".into(),
                excludes: vec![],
                hooks: vec![],
                damaged_root: None,
            };
            prop_assert_eq!(Snapshot::from_json(&snap.to_json()).unwrap(), snap);
        }
    }
}
