//! The storage engine of job mode: [`cairn_kube::job::Engine`] on cairn-core, so the Jobs
//! the controller launches back up, restore, maintain and list a repository with the same
//! code as the `cairn` commands; and ([`report`]) the renderings of core's reports the CLI
//! commands and the Jobs share.
//!
//! cairn-kube knows nothing of cairn-core (it reaches the engine only through its trait);
//! this crate is where the two meet, and the `cairn` binary only picks it.
//!
//! Invariants: every snapshot a job writes records host [`JOB_HOST`] and the source name
//! the controller passes (`namespace/pvc`), so successive backups of one PVC find each other
//! as parents and group per PVC; storage credentials reach the storage layer as values
//! ([`credentials`]), never through the process environment.

use cairn_core::backup::{backup, BackupOptions, ParentChoice, Prelisted};
use cairn_core::gc::GcOptions;
use cairn_core::maintenance::{self, MaintenanceOptions, Mode};
use cairn_core::progress::Progress;
use cairn_core::restore::{restore, RestoreOptions};
use cairn_core::{OpenOptions, Repository, SnapshotFilter};
use cairn_kube::crd::MaintenanceKind;
use cairn_kube::job::{
    BackupJobRequest, BackupJobResult, Engine, EngineError, EngineProgress, ForgetJobRequest,
    LocationContent, MaintenanceJobRequest, MaintenanceJobResult, RepositoryAccess,
    RestoreJobRequest, RestoreJobResult, SnapshotSummary,
};
use cairn_policy::exclude::{ExcludeOptions, Excluder};
use cairn_policy::retention::{apply, SnapshotInfo};
use cairn_storage::{Credentials, DynStorage, StorageError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

mod location;
pub mod report;

use report::size;

/// Host name recorded in snapshots written by jobs. Job pods have random names, so the
/// pod's host name would give every backup a new host and no parent.
pub const JOB_HOST: &str = "kubernetes";

/// How often the engine's counters are handed to job mode while an operation runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Failed restore entries named in a failure message; the job log lists all.
const FAILED_SHOWN: usize = 5;

/// The cairn-core engine. Stateless: each call opens the repository it is given.
#[derive(Debug, Default)]
pub struct CoreEngine;

/// The storage credentials of `access` (from the mounted Secret: `AWS_ACCESS_KEY_ID`,
/// `AZURE_STORAGE_KEY`, `SSL_CERT_DIR`, ...; docs/STORAGE.md), handed to the storage layer
/// as values over the process environment. Keys that are not variable names
/// (`service-account.json`) are never looked up: they stay readable as files in the mounted
/// Secret, for variables such as `GOOGLE_APPLICATION_CREDENTIALS` to point at.
pub fn credentials(access: &RepositoryAccess) -> Credentials {
    Credentials::new(access.credentials.clone())
}

/// Opens the storage `access` names, with its credentials.
pub fn open_storage(access: &RepositoryAccess) -> Result<DynStorage, StorageError> {
    cairn_storage::open_with_credentials(
        &access.location,
        &Default::default(),
        &credentials(access),
    )
}

/// An engine error from a cairn-core error: its message, and whether a retry can help.
pub(crate) fn core_error(context: &str, e: cairn_core::Error) -> EngineError {
    EngineError {
        message: format!("{context}: {e}"),
        retryable: e.is_retryable(),
    }
}

/// A failure that running again cannot fix (bad input, bad configuration).
pub(crate) fn permanent(message: String) -> EngineError {
    EngineError {
        message,
        retryable: false,
    }
}

/// Opens the repository `access` names.
pub(crate) fn open(access: &RepositoryAccess) -> Result<Repository, EngineError> {
    let storage = open_storage(access).map_err(|e| EngineError {
        retryable: e.is_temporary(),
        message: format!("opening the repository storage: {e}"),
    })?;
    let opts = OpenOptions {
        cache_dir: access.cache_dir.clone(),
        // As for the CLI: a damaged segment costs only what it describes;
        // maintenance syncs the index strictly on its own.
        tolerate_damage: true,
    };
    Repository::open(storage, &access.password, &opts)
        .map_err(|e| core_error("opening the repository", e))
}

/// Runs `work` on a scoped thread and hands `progress` the counters every second until it
/// ends, then once more with the final counters.
fn with_progress<T: Send>(
    counters: &Progress,
    progress: &dyn Fn(EngineProgress),
    work: impl FnOnce() -> T + Send,
) -> T {
    let report = || {
        let p = counters.snapshot();
        progress(EngineProgress {
            bytes_done: p.bytes_done,
            // The total grows while the scan runs; the contract is 0 until it is known.
            total_bytes: if p.scan_done { p.bytes_total } else { 0 },
        });
    };
    std::thread::scope(|s| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let worker = s.spawn(move || {
            let result = work();
            drop(done_tx);
            result
        });
        while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(PROGRESS_EVERY) {
            report();
        }
        report();
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The exclusion rules of a volume backup: the KDMP entries of its storage class, plus the
/// volume's own `.cairnignore` files (as `cairn backup` honours them).
fn excluder(req: &BackupJobRequest, root: &Path) -> Result<Excluder, EngineError> {
    let class_entries = match (&req.exclude_config, &req.storage_class) {
        (Some(text), Some(class)) => cairn_policy::parse_exclude_list(text)
            .map_err(|e| {
                permanent(format!(
                    "KDMP_EXCLUDE_FILE_LIST in the cairn ConfigMap is invalid: {e}"
                ))
            })?
            .entries_for_volume(class)
            .to_vec(),
        _ => Vec::new(),
    };
    let opts = ExcludeOptions {
        storage_class: req.storage_class.clone(),
        class_entries,
        ..Default::default()
    };
    Excluder::new(&opts, root).map_err(|e| permanent(format!("exclusion rules: {e}")))
}

/// Refuses a `--device` source that is neither a block device nor an image file: the
/// Job got the volume mounted (a Filesystem PVC), or no volume at all.
fn check_device(path: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        permanent(format!(
            "backup device {}: {e}: is the Block volume attached (volumeDevices)?",
            path.display()
        ))
    })?;
    let kind = meta.file_type();
    if kind.is_block_device() || kind.is_file() {
        Ok(())
    } else {
        Err(permanent(format!(
            "backup device {} is neither a block device nor an image file: a Filesystem \
             volume is backed up as a directory (--source)",
            path.display()
        )))
    }
}

/// `key=value` snapshot tags from a VolumeBackup's tag map, in key order.
fn tags_to_snapshot(tags: &BTreeMap<String, String>) -> Vec<String> {
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The tag map back from snapshot tags; a tag without `=` becomes a key with no value.
fn tags_from_snapshot(tags: &[String]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (t.clone(), String::new()),
        })
        .collect()
}

fn timestamp(t: &chrono::DateTime<chrono::Utc>) -> jiff::Timestamp {
    jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Whether this process may restore file owners.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs cairn-core maintenance (docs/MAINTENANCE.md) with the default safety window, which
/// keeps it safe beside the backup Jobs of the same repository: quick = sweep of due GC
/// plans and index compaction; full = also stale checkpoints and the mark (repack, orphans).
/// The figures are those of the index after the run: the packs it lists and their blobs.
fn maintain(repo: &Repository, kind: MaintenanceKind) -> Result<MaintenanceJobResult, EngineError> {
    let mode = match kind {
        MaintenanceKind::Quick => Mode::Quick,
        MaintenanceKind::Full => Mode::Full,
    };
    let opts = MaintenanceOptions {
        mode,
        gc: GcOptions::default(),
    };
    let r = maintenance::run(repo, &opts).map_err(|e| core_error("maintenance", e))?;
    let summary = format!(
        "{} maintenance: {}",
        kind.as_str(),
        report::maintenance_lines(&r, false).join("; ")
    );
    // Read as a stream: ingesting the index into the cache only to count
    // it would cost ~130 bytes of disk a blob (13 GB at 100M blobs).
    let (repository_bytes, blob_count) =
        cairn_core::gc::index_totals(repo).map_err(|e| core_error("reading the index", e))?;
    Ok(MaintenanceJobResult {
        summary,
        bytes_reclaimed: r.bytes_reclaimed(),
        repository_bytes: Some(repository_bytes),
        blob_count: Some(blob_count),
        // Maintenance already deleted the records whose packs left the index.
        damage_records: Some(repo.damage_set().record_count() as u64),
    })
}

impl Engine for CoreEngine {
    fn backup(
        &self,
        req: &BackupJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<BackupJobResult, EngineError> {
        let root = std::path::absolute(&req.source).map_err(|e| {
            permanent(format!(
                "backup source {}: {e}",
                req.source.to_string_lossy()
            ))
        })?;
        if req.device {
            check_device(&root)?;
        } else if !root.is_dir() {
            return Err(permanent(format!(
                "backup source {} is not a directory: is the volume mounted?",
                root.display()
            )));
        }
        // A device is one file: the exclusion list names files of a filesystem.
        let excluder = if req.device {
            None
        } else {
            Some(excluder(req, &root)?)
        };
        let exclude_rules = excluder.as_ref().map(|e| e.rules()).unwrap_or_default();
        let exclude = excluder.map(|e| Arc::new(e) as Arc<dyn cairn_core::backup::Exclude>);
        // The volume is listed while the repository opens (a job pod's
        // cache is empty, so the open is most of an unchanged backup's
        // start); a device is one file, with nothing to list.
        let prelisted = if req.device {
            Prelisted::default()
        } else {
            Prelisted::start(std::slice::from_ref(&root), exclude.clone())
        };
        let repo = open(&req.repository)?;
        let counters = Arc::new(Progress::default());
        let opts = BackupOptions {
            paths: vec![root],
            prelisted,
            host: Some(JOB_HOST.to_string()),
            source: Some(req.source_name.clone()).filter(|s| !s.is_empty()),
            tags: tags_to_snapshot(&req.tags),
            parent: ParentChoice::Auto,
            exclude_rules,
            exclude,
            read_devices: req.device,
            progress: Some(counters.clone()),
            checkpoint: match req.checkpoint_interval {
                Some(every) => cairn_core::checkpoint::CheckpointOptions {
                    every,
                    every_blobs: 0,
                },
                None => Default::default(),
            },
            limit_read: req.limit_read,
            ..Default::default()
        };
        let result = with_progress(&counters, progress, || backup(&repo, &opts))
            .map_err(|e| core_error("backup", e))?;
        let s = &result.snapshot.summary;
        let mut summary = if req.device {
            format!(
                "snapshot {}: device {} of {}; read {} that is not zero, added {}",
                result.id.short(),
                req.source.display(),
                size(s.bytes_total),
                size(s.bytes_read),
                size(s.bytes_added),
            )
        } else {
            format!(
                "snapshot {}: {} files new, {} changed, {} unchanged; read {} of {}, added {}",
                result.id.short(),
                s.files_new,
                s.files_changed,
                s.files_unchanged,
                size(s.bytes_read),
                size(s.bytes_total),
                size(s.bytes_added),
            )
        };
        if s.errors > 0 {
            // The snapshot holds everything else; running again would skip the same entries.
            summary.push_str(&format!(
                "; {} entries could not be read (see the job log)",
                s.errors
            ));
        }
        if s.files_changed_while_read > 0 {
            // A live volume (no CSI snapshot): what was stored of these is
            // neither their old nor their new content.
            let named: Vec<String> = s
                .changed_while_read
                .iter()
                .take(5)
                .map(|c| c.path.0.display().to_string())
                .collect();
            let more = s.files_changed_while_read - named.len() as u64;
            summary.push_str(&format!(
                "; {} files changed while they were read: {}{}",
                s.files_changed_while_read,
                named.join(", "),
                if more > 0 {
                    format!(" and {more} more (see the job log)")
                } else {
                    String::new()
                }
            ));
            for c in &s.changed_while_read {
                tracing::warn!(path = %c.path.0.display(), what = %c.what, "changed while it was read");
            }
        }
        tracing::info!(%summary, "backup done");
        Ok(BackupJobResult {
            snapshot_id: result.id.to_hex(),
            time: timestamp(&result.snapshot.time),
            bytes_done: counters.snapshot().bytes_done.max(s.bytes_total),
            bytes_added: Some(s.bytes_added),
            total_bytes: s.bytes_total,
            summary,
        })
    }

    fn restore(
        &self,
        req: &RestoreJobRequest,
        progress: &dyn Fn(EngineProgress),
    ) -> Result<RestoreJobResult, EngineError> {
        let repo = open(&req.repository)?;
        let (id, snap) = repo
            .find_snapshot(&req.snapshot, &SnapshotFilter::default())
            .map_err(|e| core_error("finding the snapshot to restore", e))?;
        let counters = Arc::new(Progress::default());
        let opts = RestoreOptions {
            target: req.target.clone(),
            target_device: req.device.then(|| req.target.clone()),
            includes: req.include_paths.iter().map(PathBuf::from).collect(),
            // The target is a volume: a fresh one holds lost+found, an existing one is
            // restored into on purpose (the VolumeRestore names it).
            overwrite: true,
            owners: is_root(),
            verify: false,
            workers: 0,
            progress: Some(counters.clone()),
        };
        let mut stats = with_progress(&counters, progress, || restore(&repo, &snap.tree, &opts))
            .map_err(|e| core_error("restore", e))?;
        if let (Some(lost), true) = (&snap.damaged_root, req.include_paths.is_empty()) {
            stats
                .zero_filled
                .insert(0, (req.target.clone(), lost.clone()));
        }
        if !stats.failed.is_empty() {
            return Err(permanent(format!(
                "{} entries of snapshot {} could not be restored: {}",
                stats.failed.len(),
                id.short(),
                logged_and_shown(&stats.failed, "not restored")
            )));
        }
        // A repaired snapshot restores whole but with zeros where data was
        // lost: the VolumeRestore must not report that as a clean success.
        if !stats.zero_filled.is_empty() {
            return Err(permanent(format!(
                "snapshot {} was repaired: {} restored entries hold zeros or nothing where data was lost: {}",
                id.short(),
                stats.zero_filled.len(),
                logged_and_shown(&stats.zero_filled, "zero-filled")
            )));
        }
        let total = counters.snapshot().bytes_total.max(stats.bytes);
        let summary = if req.device {
            format!(
                "restored snapshot {} onto device {}: {} written of {}",
                id.short(),
                req.target.display(),
                size(stats.bytes),
                size(total)
            )
        } else {
            format!(
                "restored snapshot {}: {} files, {} dirs, {} other entries, {}",
                id.short(),
                stats.files,
                stats.dirs,
                stats.others,
                size(stats.bytes)
            )
        };
        tracing::info!(%summary, "restore done");
        Ok(RestoreJobResult {
            bytes_done: stats.bytes,
            total_bytes: total,
            summary,
        })
    }

    fn maintenance(
        &self,
        req: &MaintenanceJobRequest,
    ) -> Result<MaintenanceJobResult, EngineError> {
        let repo = open(&req.repository)?;
        maintain(&repo, req.kind)
    }

    /// `cairn forget --tag ... --keep-...` without `--prune`: the same selection, the same
    /// grouping per host and source, the same decision (`cairn_policy::retention::apply`).
    fn forget(&self, req: &ForgetJobRequest) -> Result<String, EngineError> {
        if req.tags.is_empty() {
            return Err(permanent(
                "forget needs tags selecting the snapshots to consider".into(),
            ));
        }
        let repo = open(&req.repository)?;
        let filter = SnapshotFilter {
            tags: tags_to_snapshot(&req.tags),
            ..SnapshotFilter::default()
        };
        // Checkpoints of running or dead backups are not backups: GC manages them.
        let mut ids = std::collections::HashMap::new();
        let mut infos = Vec::new();
        let listed = repo
            .list_snapshots()
            .map_err(|e| core_error("listing snapshots", e))?;
        for (id, s) in listed {
            if !(s.complete && filter.matches(&s)) {
                continue;
            }
            infos.push(SnapshotInfo {
                id: id.to_hex(),
                time: s.time,
                host: s.host.clone(),
                source: s.source.clone(),
                tags: s.tags.clone(),
            });
            ids.insert(id.to_hex(), id);
        }
        let decisions = apply(&req.policy, &infos, chrono::Utc::now())
            .map_err(|e| permanent(format!("retention policy: {e}")))?;
        let mut removed = 0usize;
        for id in decisions.iter().flat_map(|d| &d.remove) {
            if let Some(sid) = ids.get(id) {
                repo.delete_snapshot(sid)
                    .map_err(|e| core_error(&format!("forgetting snapshot {id}"), e))?;
                removed += 1;
            }
        }
        let kept: usize = decisions.iter().map(|d| d.keep.len()).sum();
        Ok(format!(
            "forgot {removed} snapshot(s) tagged {}, kept {kept}; maintenance reclaims their data",
            filter.tags.join(",")
        ))
    }

    fn inspect_location(
        &self,
        repository: &RepositoryAccess,
    ) -> Result<LocationContent, EngineError> {
        location::inspect_location(repository)
    }

    fn init_repository(
        &self,
        repository: &RepositoryAccess,
        zstd_level: Option<i32>,
    ) -> Result<(), EngineError> {
        location::init_repository(repository, zstd_level)
    }

    fn list_repositories(&self, location: &RepositoryAccess) -> Result<Vec<String>, EngineError> {
        location::list_repositories(location)
    }

    fn forget_snapshot(
        &self,
        repository: &RepositoryAccess,
        id: &str,
    ) -> Result<bool, EngineError> {
        location::forget_snapshot(repository, id)
    }

    fn list_snapshots(
        &self,
        repository: &RepositoryAccess,
    ) -> Result<Vec<SnapshotSummary>, EngineError> {
        let repo = open(repository)?;
        let list = repo
            .list_snapshots()
            .map_err(|e| core_error("listing snapshots", e))?;
        Ok(list
            .into_iter()
            .filter(|(_, s)| s.complete)
            .map(|(id, s)| SnapshotSummary {
                id: id.to_hex(),
                time: timestamp(&s.time),
                source: s.source.clone(),
                size_bytes: s.summary.bytes_total,
                tags: tags_from_snapshot(&s.tags),
            })
            .collect())
    }
}

/// Logs every `(path, reason)` as an error and returns the first
/// [`FAILED_SHOWN`] of them for a status message.
fn logged_and_shown(entries: &[(PathBuf, String)], what: &str) -> String {
    for (path, reason) in entries {
        tracing::error!(path = %path.display(), %reason, "{what}");
    }
    entries
        .iter()
        .take(FAILED_SHOWN)
        .map(|(p, r)| format!("{}: {r}", p.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_passed_as_given() {
        let access = RepositoryAccess {
            location: "s3://b/p".into(),
            password: "pw".into(),
            credentials: [("AWS_ACCESS_KEY_ID".to_string(), "AKIA-GIVEN".to_string())].into(),
            cache_dir: None,
        };
        assert_eq!(
            credentials(&access).get("AWS_ACCESS_KEY_ID").as_deref(),
            Some("AKIA-GIVEN")
        );
    }

    #[test]
    fn tags_round_trip_through_snapshot_tags() {
        let map: BTreeMap<String, String> = [("app", "shop"), ("schedule", "a=b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let tags = tags_to_snapshot(&map);
        assert_eq!(tags, ["app=shop", "schedule=a=b"]);
        assert_eq!(tags_from_snapshot(&tags), map);
        assert_eq!(
            tags_from_snapshot(&["manual".to_string()]),
            [("manual".to_string(), String::new())].into()
        );
    }

    #[test]
    fn timestamps_keep_subsecond_precision() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(timestamp(&t).as_nanosecond(), 1_700_000_000_123_456_789);
    }
}
