//! cairn's repository engine: the on-disk format, keys, packs, index,
//! trees and snapshots, and the backup and restore pipelines on top.
//!
//! Start with [`Repository::init`] / [`Repository::open`], then
//! [`backup::backup`] and [`restore::restore`].

pub mod backup;
pub mod browse;
pub mod bufpool;
pub mod cache;
pub mod check;
pub mod checkpoint;
pub mod copy;
pub mod crypto;
pub mod damage;
pub mod error;
pub mod exclude;
pub mod format;
pub mod fsmeta;
pub mod gc;
pub mod index_view;
pub mod keyring;
pub mod lock;
pub mod maintenance;
pub mod objects;
pub mod packer;
pub mod plans;
pub mod prefetch;
pub mod progress;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod sealer;
pub mod stats;
mod sync;
pub mod zeros;

pub use error::{Error, ErrorKind, Result};
pub use format::snapshot::Snapshot;
pub use format::{BlobId, BlobKind, IndexId, PackId, SnapshotId};
pub use repo::{InitOptions, OpenOptions, Repository, SnapshotFilter};
