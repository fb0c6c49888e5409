//! The engine's public error: what went wrong, on which object, and whether retrying helps.

use crate::format::codec::DecodeError;
use cairn_storage::StorageError;
use std::path::PathBuf;

/// Result type of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad classes of failure, for exit codes and for deciding whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The password opens no key.
    WrongPassword,
    /// The location is not a cairn repository (or not one this version reads).
    NotARepository,
    /// An object is missing or its bytes are damaged.
    Corrupt,
    /// The storage failed (maybe temporarily).
    Storage,
    /// A local file could not be read or written.
    Io,
    /// The user asked for something that cannot be done as asked.
    Usage,
    /// The local cache failed.
    Cache,
    /// Another process holds the repository's exclusive lock.
    Locked,
    /// cairn itself went wrong: a bug, not the input or the environment.
    Internal,
    /// A path given to back up does not exist.
    SourceMissing,
    /// Another process removed objects a running operation had just written.
    Interference,
}

/// A failed engine operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key file opens with the password, and none is damaged.
    #[error("wrong password: no key of the repository at {location} opens with it{hint}")]
    WrongPassword {
        /// Repository location.
        location: String,
        /// Empty, or a sentence (with leading separator) on key files
        /// whose damage cannot be told from a wrong password.
        hint: String,
    },
    /// No key file opens with the password, and some key files are damaged.
    #[error("{}", damaged_keys_message(.location, .damaged))]
    DamagedKeys {
        /// Repository location.
        location: String,
        /// `(keys/<id>, what is wrong)` for each damaged key file.
        damaged: Vec<(String, String)>,
    },
    /// Not a repository.
    #[error("{location} is not a cairn repository: {reason}")]
    NotARepository {
        /// Location.
        location: String,
        /// Why.
        reason: String,
    },
    /// init on an existing repository.
    #[error("{location} already holds a cairn repository; refusing to overwrite it")]
    AlreadyExists {
        /// Location.
        location: String,
    },
    /// A damaged object.
    #[error("corrupt object {object}: {reason}")]
    Corrupt {
        /// Object path (e.g. `packs/ab/ab12…`) or blob description.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob the repository should hold is not in the index.
    #[error(
        "{kind} blob {id} is not in the index: the repository is missing data (run `cairn check`)"
    )]
    BlobNotFound {
        /// Blob kind.
        kind: crate::format::BlobKind,
        /// Blob id (hex).
        id: String,
    },
    /// A storage failure.
    #[error("storage error at {location}: {source}")]
    Storage {
        /// Location.
        location: String,
        /// Cause.
        #[source]
        source: StorageError,
    },
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The cache failed.
    #[error("local cache {path}: {reason}")]
    Cache {
        /// Cache file.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Usage(String),
    /// A thread could not be started.
    #[error(
        "could not start a {what} thread: {source}; the process is at its thread limit (a container's pids limit) or out of memory: raise the limit, or run with fewer workers"
    )]
    Spawn {
        /// Which thread.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path given to back up does not exist (nothing was backed up).
    #[error(
        "{}: no such file or directory to back up; check the path (nothing was backed up)",
        .path.display()
    )]
    SourceMissing {
        /// The path as given.
        path: PathBuf,
    },
    /// Objects a backup had just written or chosen vanished while it ran.
    #[error(
        "the backup was interrupted: {object} vanished from {location} while the backup ran ({cause}). \
         A maintenance or prune run with a safety window shorter than the backup's checkpoint interval \
         (or --now / --no-backup-running while this backup ran) removes a running backup's newest \
         packs and staging files; so does deleting files in the repository by hand. Nothing already \
         snapshotted is affected: run the backup again, it resumes from its last checkpoint, and keep \
         maintenance at its default window while backups run"
    )]
    Interference {
        /// Repository location.
        location: String,
        /// The operation and object, e.g. `write packs/ab/ab12…`.
        object: String,
        /// The storage's own words.
        cause: String,
    },
    /// A broken internal invariant: a bug.
    #[error("internal error: {0} (a bug in cairn; please report it with the log)")]
    Internal(String),
    /// Another live process holds the exclusive lock.
    #[error(
        "the repository is locked: {holder}. Wait for it to finish. If that process is gone: a holder on this machine that exited frees the lock at once; one on another machine turns stale {stale_after_s} s after its last heartbeat; `cairn unlock` removes stale locks, `cairn unlock --remove-all` every lock"
    )]
    Locked {
        /// The holder, as [`crate::lock::LockInfo::describe`] puts it.
        holder: String,
        /// Seconds after its last heartbeat at which the lock turns stale.
        stale_after_s: u64,
    },
    /// Another process kept initialising the location for longer than an
    /// init waits.
    #[error(
        "{location}: another process has been initialising this location for over {waited_s} s (its claims: {claims}); wait for it to finish and open the repository, or, if no init runs, delete the init/ folder and retry"
    )]
    InitInProgress {
        /// The location.
        location: String,
        /// The other processes' claim objects.
        claims: String,
        /// How long this init waited.
        waited_s: u64,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::WrongPassword { .. } => ErrorKind::WrongPassword,
            Error::DamagedKeys { .. } => ErrorKind::Corrupt,
            Error::NotARepository { .. } | Error::AlreadyExists { .. } => ErrorKind::NotARepository,
            Error::Corrupt { .. } | Error::BlobNotFound { .. } => ErrorKind::Corrupt,
            Error::Storage { source, .. } if source.is_not_found() || source.is_short_object() => {
                ErrorKind::Corrupt
            }
            Error::Storage { .. } => ErrorKind::Storage,
            Error::Io { .. } => ErrorKind::Io,
            Error::Cache { .. } => ErrorKind::Cache,
            Error::Usage(_) => ErrorKind::Usage,
            Error::Locked { .. } | Error::InitInProgress { .. } => ErrorKind::Locked,
            Error::Spawn { .. } => ErrorKind::Io,
            Error::Internal(_) => ErrorKind::Internal,
            Error::SourceMissing { .. } => ErrorKind::SourceMissing,
            Error::Interference { .. } => ErrorKind::Interference,
        }
    }

    /// Whether running the same operation again can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage { source, .. } => source.is_temporary(),
            // A re-run resumes from the last checkpoint.
            Error::Interference { .. } => true,
            _ => false,
        }
    }

    /// A thread named `what` could not be started.
    pub fn spawn(what: &str) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::Spawn {
            what: what.to_string(),
            source,
        }
    }

    /// A local I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A damaged object.
    pub fn corrupt(object: impl Into<String>, reason: impl ToString) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    /// A decode failure of `object`.
    pub fn decode(object: impl Into<String>, e: DecodeError) -> Self {
        Error::corrupt(object, e)
    }
}

fn damaged_keys_message(location: &str, damaged: &[(String, String)]) -> String {
    let list: Vec<String> = damaged
        .iter()
        .map(|(path, reason)| format!("{path}: {reason}"))
        .collect();
    let what = if damaged.len() == 1 {
        "a key file is"
    } else {
        "key files are"
    };
    format!(
        "no key of the repository at {location} opens with this password, and {what} damaged ({}). \
         If the password is right, its key file is probably the damaged one: open the repository with another \
         password and run `cairn key add` for this one again (`cairn key remove ID` drops a damaged key), \
         or restore the key file from a copy of the repository",
        list.join(", ")
    )
}
