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

/// Current repository format version.
pub const FORMAT_VERSION: u32 = 1;

/// Length of every id in bytes.
pub const ID_LEN: usize = 32;
