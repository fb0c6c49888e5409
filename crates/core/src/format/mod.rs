//! On-disk encodings of every repository object, as specified in docs/FORMAT.md.
//!
//! Each submodule owns one object type; offsets and sizes derive from the
//! constants here and in those modules.

pub mod codec;
pub mod config;
pub mod damage;
pub mod header;
pub mod index;
pub mod key;
pub mod kinds;
pub mod pack;
pub mod plan;
pub mod snapshot;
pub mod tree;

mod ids;
pub use ids::{BlobId, BlobKind, Id, IndexId, PackId, SnapshotId};

/// Repository format version written by `init` (2: bundles; see
/// docs/FORMAT.md, version history).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest repository format version read (and written to: a version 1
/// repository is given version 1 packs, which readers of version 1 read).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;
