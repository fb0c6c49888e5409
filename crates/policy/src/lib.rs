//! What to back up and what to keep: KDMP exclude lists, exclusion rules, retention
//! policies and application-consistent backup hooks.
//!
//! Everything here is pure policy: it decides, the backup walker and the CLI act. The crate
//! depends on no other cairn crate so that `cairn-core` can depend on it.
//!
//! - [`kdmp`] parses the `KDMP_EXCLUDE_FILE_LIST` ConfigMap value (one line per storage class).
//! - [`exclude`] decides, one directory entry at a time, whether the walker leaves it out.
//! - [`retention`] decides which snapshots `forget` keeps, and why.
//! - [`hooks`] runs `--pre-exec` / `--post-exec` commands around a backup.

#![deny(missing_docs)]

mod error;
pub mod exclude;
pub mod hooks;
pub mod kdmp;
pub mod retention;

pub use error::PolicyError;
pub use exclude::{ExcludeOptions, Excluder};
pub use hooks::{run_hook, with_hooks, BodyOutcome, HookOutcome, HookPhase, Hooks, HooksRun};
pub use kdmp::{parse_exclude_list, ExcludeList};
pub use retention::{
    apply, GroupDecision, KeepReason, KeptSnapshot, RetentionPolicy, SnapshotInfo,
};
