//! The storage engine as job mode sees it: a trait cairn-engine (crates/engine) implements
//! with cairn-core, and the requests and results that cross it.

use crate::crd::MaintenanceKind;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Bytes processed so far, reported by the engine while it works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EngineProgress {
    /// Bytes read (backup) or written (restore).
    pub bytes_done: u64,
    /// Bytes to process, when known (0 otherwise).
    pub total_bytes: u64,
}

/// How to open the repository. Secrets are redacted from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RepositoryAccess {
    /// Repository URL (`s3://bucket/prefix`, `file:///path`, ...).
    pub location: String,
    /// Repository password.
    pub password: String,
    /// Storage credentials: file name -> content, from the mounted Secret.
    pub credentials: BTreeMap<String, String>,
    /// Local cache directory.
    pub cache_dir: Option<PathBuf>,
}

impl fmt::Debug for RepositoryAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryAccess")
            .field("location", &self.location)
            .field("password", &"<redacted>")
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// Back up a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupJobRequest {
    /// The repository.
    pub repository: RepositoryAccess,
    /// Directory to back up (the mounted volume), or the block device with `device`.
    pub source: PathBuf,
    /// `source` is a block device (a `volumeMode: Block` volume): back up its contents as
    /// one file of its size; progress counts against that size.
    pub device: bool,
    /// Name recorded as the snapshot's source (`namespace/pvc`), which finds the parent.
    pub source_name: String,
    /// Tags recorded in the snapshot.
    pub tags: BTreeMap<String, String>,
    /// The source PVC's storage class, selecting the KDMP exclude entries.
    pub storage_class: Option<String>,
    /// Raw KDMP_EXCLUDE_FILE_LIST text, parsed by the engine (cairn-policy).
    pub exclude_config: Option<String>,
    /// Time between checkpoints; None = the engine's default.
    pub checkpoint_interval: Option<std::time::Duration>,
    /// Bytes per second read from the volume at most; None = unlimited.
    pub limit_read: Option<u64>,
}

/// What a backup produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupJobResult {
    /// The new snapshot.
    pub snapshot_id: String,
    /// The snapshot's own time (when the backup started), as the catalog records it.
    pub time: jiff::Timestamp,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes in the source.
    pub total_bytes: u64,
    /// Bytes added to the repository, when the engine counts them.
    pub bytes_added: Option<u64>,
    /// One-line summary for the termination message.
    pub summary: String,
}

impl BackupJobResult {
    /// The RepositorySnapshot mirror entry of this result, for the backup `req`.
    pub fn summary_for(&self, req: &BackupJobRequest) -> SnapshotSummary {
        SnapshotSummary {
            id: self.snapshot_id.clone(),
            time: self.time,
            source: req.source_name.clone(),
            size_bytes: self.total_bytes,
            tags: req.tags.clone(),
        }
    }
}

/// Restore a snapshot into a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreJobRequest {
    /// The repository.
    pub repository: RepositoryAccess,
    /// Snapshot id or unique prefix.
    pub snapshot: String,
    /// Directory to restore into (the mounted target volume), or the block device with
    /// `device`.
    pub target: PathBuf,
    /// `target` is a block device: write the snapshot's one file (selected by
    /// `include_paths` when it has more) onto it, refusing a device smaller than the file.
    pub device: bool,
    /// Paths to restore; everything when empty.
    pub include_paths: Vec<String>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreJobResult {
    /// Bytes written.
    pub bytes_done: u64,
    /// Bytes in the snapshot.
    pub total_bytes: u64,
    /// One-line summary.
    pub summary: String,
}

/// Run maintenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceJobRequest {
    /// The repository.
    pub repository: RepositoryAccess,
    /// Quick or full.
    pub kind: MaintenanceKind,
}

/// What a maintenance run did, and the repository it left.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MaintenanceJobResult {
    /// One-line summary for the termination message.
    pub summary: String,
    /// Bytes of packs this run deleted.
    pub bytes_reclaimed: u64,
    /// Bytes of the packs indexed after the run, when the engine counts them.
    pub repository_bytes: Option<u64>,
    /// Distinct blobs indexed after the run, when the engine counts them.
    pub blob_count: Option<u64>,
    /// Damage records (missing packs, blobs that did not open, found by checks and reads)
    /// still naming indexed packs after the run, when the engine counts them.
    pub damage_records: Option<u64>,
}

/// Forget the snapshots a BackupSchedule's retention does not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgetJobRequest {
    /// The repository.
    pub repository: RepositoryAccess,
    /// Only complete snapshots carrying every one of these tags are considered
    /// (`cairn.io/schedule=<name>`); never empty.
    pub tags: BTreeMap<String, String>,
    /// Keep rules, applied per (host, source) group as `cairn forget` applies them.
    pub policy: cairn_policy::retention::RetentionPolicy,
}

/// One snapshot, for the RepositorySnapshot mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Full id.
    pub id: String,
    /// When it was taken.
    pub time: Timestamp,
    /// Source recorded in it (`namespace/pvc` for VolumeBackups).
    pub source: String,
    /// Logical size in bytes.
    pub size_bytes: u64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// An engine failure: what went wrong and whether running again can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// What went wrong and what to do about it.
    pub message: String,
    /// Transient (network, storage throttling): a retry resumes and may succeed.
    pub retryable: bool,
}

/// What the location of a repository holds, looked at without its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocationContent {
    /// Nothing: a repository may be created there.
    Empty,
    /// A cairn repository (possibly damaged; opening it says how).
    Cairn,
    /// A kopia repository (`kopia.repository`, or `kopia.repository.f` on a file system).
    Kopia,
    /// Objects that belong to neither; the first one's name.
    Unknown(String),
}

/// The error of an [`Engine`] method this engine does not provide.
fn unsupported(what: &str) -> EngineError {
    EngineError {
        message: format!("{what} is not supported by this engine"),
        retryable: false,
    }
}

/// The storage engine. Calls are blocking; job mode runs them off the async runtime.
pub trait Engine: Send + Sync {
    /// Backs up `req.source`, calling `progress` as bytes are processed.
    fn backup(
        &self,
        req: &BackupJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError>;
    /// Restores a snapshot, calling `progress` as bytes are written.
    fn restore(
        &self,
        req: &RestoreJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError>;
    /// Runs maintenance; returns its summary and figures.
    fn maintenance(&self, req: &MaintenanceJobRequest)
        -> Result<MaintenanceJobResult, EngineError>;
    /// Forgets the snapshots selected by `req.tags` that `req.policy` does not keep; never
    /// deletes data (maintenance reclaims the space). Returns a one-line summary.
    fn forget(&self, req: &ForgetJobRequest) -> Result<String, EngineError>;
    /// Lists the repository's complete snapshots.
    fn list_snapshots(
        &self,
        repository: &RepositoryAccess,
    ) -> Result<Vec<SnapshotSummary>, EngineError>;
    /// What `repository.location` holds (the KDMP executor decides from it whether to
    /// create a repository or to refuse a kopia one).
    fn inspect_location(
        &self,
        repository: &RepositoryAccess,
    ) -> Result<LocationContent, EngineError> {
        let _ = repository;
        Err(unsupported("inspecting a repository location"))
    }
    /// Creates a repository at `repository.location` with its password; `zstd_level`
    /// overrides the default compression of new data.
    fn init_repository(
        &self,
        repository: &RepositoryAccess,
        zstd_level: Option<i32>,
    ) -> Result<(), EngineError> {
        let _ = (repository, zstd_level);
        Err(unsupported("creating a repository"))
    }
    /// The folders directly under `location.location` that hold a cairn repository, by
    /// name, sorted.
    fn list_repositories(&self, location: &RepositoryAccess) -> Result<Vec<String>, EngineError> {
        let _ = location;
        Err(unsupported("listing repositories"))
    }
    /// Forgets the snapshot whose full id is `id`; `Ok(false)` when there is none. Never
    /// deletes data (maintenance reclaims it).
    fn forget_snapshot(
        &self,
        repository: &RepositoryAccess,
        id: &str,
    ) -> Result<bool, EngineError> {
        let _ = (repository, id);
        Err(unsupported("forgetting a snapshot"))
    }
}
