//! What the binary does when it runs as KDMP's `kopiaexecutor`: each operation with the
//! engine (reached only through [`Engine`]) and KDMP's objects (see [`super::objects`]),
//! ending in the exit status KDMP reads: success, or failure with the reason recorded where
//! KDMP looks for it.

use super::objects::{
    self, create_volume_backup, last_known_error, progress_percentage, KdmpKind, ObjectError,
    VolumeBackupStatus,
};
use super::{
    BackupArgs, CredentialError, DeleteArgs, KdmpCommand, KdmpLocation, MaintenanceArgs,
    RestoreArgs, CRED_SECRET_DIR, GENERIC_BACKUP_DIR, NFS_TARGET_DIR,
};
use crate::job::{
    BackupJobRequest, Engine, EngineError, EngineProgress, LocationContent, MaintenanceJobRequest,
    RepositoryAccess, RestoreJobRequest,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The storage class name under which `--exclude-file-list` is handed to the engine's KDMP
/// exclude rules (`<class>=<entries>`, the kdmp-config ConfigMap's own syntax).
const EXCLUDE_CLASS: &str = "kdmp-executor";

/// Tag recorded in every snapshot a KDMP backup makes: the VolumeBackup's name.
pub const TAG_VOLUME_BACKUP: &str = "kdmp.portworx.com/volume-backup";

/// Where the executor finds what KDMP mounts, and where it keeps its cache. KDMP's paths
/// by default; each can be moved by an environment variable (for a test double of the pod,
/// where nothing is mounted at the fixed paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorEnv {
    /// The credential Secret (`CAIRN_KDMP_CRED_SECRET_DIR`, default `/etc/cred-secret`).
    pub cred_secret_dir: PathBuf,
    /// The NFS location's mount (`CAIRN_KDMP_NFS_TARGET_DIR`, default `/mnt/nfs-target`).
    pub nfs_target_dir: PathBuf,
    /// The repository cache (`CAIRN_CACHE_DIR`, default `$TMPDIR/cairn-cache`, `/tmp`
    /// when TMPDIR is unset: KDMP's pods may write only there).
    pub cache_dir: PathBuf,
    /// Time between VolumeBackup updates (`CAIRN_KDMP_PROGRESS_INTERVAL`, seconds, default
    /// 5 as KDMP's own executor).
    pub progress_interval: Duration,
}

impl ExecutorEnv {
    /// Reads the environment through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ExecutorEnv, String> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let progress_interval = match var("CAIRN_KDMP_PROGRESS_INTERVAL") {
            None => Duration::from_secs(5),
            Some(v) => match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s < 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(format!(
                    "CAIRN_KDMP_PROGRESS_INTERVAL={v:?}: expected seconds, above 0 and below 3600"
                ))
                }
            },
        };
        let tmp = var("TMPDIR").unwrap_or_else(|| "/tmp".into());
        Ok(ExecutorEnv {
            cred_secret_dir: var("CAIRN_KDMP_CRED_SECRET_DIR")
                .unwrap_or_else(|| CRED_SECRET_DIR.into())
                .into(),
            nfs_target_dir: var("CAIRN_KDMP_NFS_TARGET_DIR")
                .unwrap_or_else(|| NFS_TARGET_DIR.into())
                .into(),
            cache_dir: var("CAIRN_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(tmp).join("cairn-cache")),
            progress_interval,
        })
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The credential Secret does not describe a usable location.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The engine failed.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// A KDMP object could not be read or written.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The request cannot be carried out as given (a kopia repository, bad flags).
    #[error("{0}")]
    Refused(String),
    /// No Kubernetes API: KDMP's objects are the executor's only report.
    #[error(
        "no Kubernetes API access ({0}): the KDMP executor reports through KDMP's objects; \
         run it in a pod with a service account, or with a kubeconfig"
    )]
    NoClient(String),
    /// The engine's thread ended abnormally.
    #[error("the engine stopped unexpectedly: {0}")]
    Panicked(String),
}

/// Runs `command` to its end: `Ok` with a one-line summary when it succeeded (exit 0),
/// `Err` when it failed, after recording why in KDMP's object where KDMP reads it.
pub async fn run(
    command: KdmpCommand,
    env: &ExecutorEnv,
    engine: Arc<dyn Engine>,
    client: Result<kube::Client, String>,
) -> Result<String, ExecutorError> {
    let client = client.map_err(ExecutorError::NoClient)?;
    match command {
        KdmpCommand::Backup(a) => backup(a, env, engine, client).await,
        KdmpCommand::Restore(a) => restore(a, env, engine, client).await,
        KdmpCommand::Delete(a) => delete(a, env, engine, client).await,
        KdmpCommand::Maintenance(a) => maintenance(a, env, engine, client).await,
    }
}

/// The message for a repository directory that holds kopia's repository, not cairn's.
pub fn kopia_refusal(location: &str) -> String {
    format!(
        "{location} holds a kopia repository (kopia.repository): this backup was made by \
         KDMP's kopia executor before the switch to cairn, and cairn does not read kopia's \
         format; restore or delete it with the kopia executor image (KDMP's image name \
         pointing at kopia's image again for that operation). New backups of the volume \
         need a location without it"
    )
}

/// The zstd level of a new repository for KDMP's `--compression` (kopia's algorithm names;
/// KDMP's default is `s2-parallel-8`). cairn compresses with zstd only, so each kopia
/// algorithm maps onto the zstd level of the same intent: `none` stores uncompressed,
/// the fast ones (s2, lz4, `*-fastest`, `*-best-speed`) level 1, `*-better-compression`
/// 6, `*-best-compression` 9, the rest zstd's own default level, 3 (an algorithm named at
/// its default strength; cairn's default for a new repository, level 1, applies only when
/// no flag is given). `None` for no flag.
pub fn compression_level(name: Option<&str>) -> Result<Option<i32>, ExecutorError> {
    let Some(name) = name else { return Ok(None) };
    let family = name.split('-').next().unwrap_or_default();
    if !matches!(
        family,
        "none" | "zstd" | "s2" | "gzip" | "pgzip" | "deflate" | "lz4"
    ) {
        return Err(ExecutorError::Refused(format!(
            "--compression {name:?}: not a kopia compression algorithm; expected none, or a \
             zstd, s2, gzip, pgzip, deflate or lz4 variant (cairn stores every one as zstd)"
        )));
    }
    let level = if name == "none" {
        0
    } else if family == "s2"
        || family == "lz4"
        || name.ends_with("-fastest")
        || name.ends_with("-best-speed")
    {
        1
    } else if name.ends_with("-best-compression") {
        9
    } else if name.ends_with("-better-compression") || name.ends_with("-better") {
        6
    } else {
        ZSTD_DEFAULT_LEVEL
    };
    Ok(Some(level))
}

/// zstd's own default level (`zstd` without `-#`), kopia's for its `zstd` algorithm.
const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// `--exclude-file-list a,b` as the exclude configuration the engine reads, in the
/// kdmp-config ConfigMap's syntax under [`EXCLUDE_CLASS`]: the same entries mean the same
/// thing here as in `KDMP_EXCLUDE_FILE_LIST`.
pub fn exclude_config(entries: &[String]) -> Result<Option<String>, ExecutorError> {
    if entries.is_empty() {
        return Ok(None);
    }
    let text = format!("{EXCLUDE_CLASS}={}", entries.join(","));
    cairn_policy::parse_exclude_list(&text)
        .map_err(|e| ExecutorError::Refused(format!("--exclude-file-list: {e}")))?;
    Ok(Some(text))
}

/// Runs `work` off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ExecutorError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| ExecutorError::Panicked(e.to_string()))
}

/// The repository at `access`, refusing what is not a cairn repository; with `create`, an
/// empty location gets a new one (with `zstd_level`).
fn ensure_repository(
    engine: &dyn Engine,
    access: &RepositoryAccess,
    create: Option<Option<i32>>,
) -> Result<(), ExecutorError> {
    match engine.inspect_location(access)? {
        LocationContent::Cairn => {
            if let Some(Some(level)) = create {
                tracing::info!(
                    level,
                    "the repository exists: its own compression setting applies, --compression \
                     only chooses it for a new repository"
                );
            }
            Ok(())
        }
        LocationContent::Kopia => Err(ExecutorError::Refused(kopia_refusal(&access.location))),
        LocationContent::Empty => match create {
            Some(level) => {
                tracing::info!(location = %access.location, "creating the repository");
                engine.init_repository(access, level)?;
                Ok(())
            }
            None => Err(ExecutorError::Refused(format!(
                "there is no cairn repository at {}: nothing was backed up there yet, or the \
                 backup location changed since",
                access.location
            ))),
        },
        LocationContent::Unknown(first) => Err(ExecutorError::Refused(format!(
            "{} holds {first:?}, which is neither a cairn nor a kopia repository; cairn will \
             not write into it: point the backup location elsewhere or empty that folder",
            access.location
        ))),
    }
}

/// Writes progress into the VolumeBackup every `interval` while it changes, until the
/// sender is dropped.
async fn report_progress(
    api: kube::Api<kube::api::DynamicObject>,
    name: String,
    mut rx: watch::Receiver<Option<EngineProgress>>,
    interval: Duration,
) {
    let mut sent = None;
    loop {
        let open = rx.changed().await.is_ok();
        if !open {
            return;
        }
        let latest = *rx.borrow_and_update();
        if let Some(p) = latest.filter(|p| Some(*p) != sent) {
            let status = VolumeBackupStatus {
                progress_percentage: progress_percentage(p.bytes_done, p.total_bytes),
                total_bytes: p.total_bytes,
                total_bytes_processed: p.bytes_done,
                ..Default::default()
            };
            if let Err(e) = objects::write_volume_backup_status(&api, &name, &status).await {
                tracing::warn!(error = %e, "progress update failed; continuing");
            }
            sent = Some(p);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Records `error` in the VolumeBackup (logged whole) and hands it back.
async fn fail_volume_backup(
    api: &kube::Api<kube::api::DynamicObject>,
    name: &str,
    error: ExecutorError,
) -> ExecutorError {
    let message = error.to_string();
    tracing::error!(error = %message, "failed");
    let status = VolumeBackupStatus {
        last_known_error: last_known_error(&message),
        ..Default::default()
    };
    if let Err(e) = objects::write_volume_backup_status(api, name, &status).await {
        tracing::error!(error = %e, "could not record the failure in the VolumeBackup");
    }
    error
}

async fn backup(
    a: BackupArgs,
    env: &ExecutorEnv,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<String, ExecutorError> {
    let api = KdmpKind::VolumeBackup.api(client, &a.backup_namespace);
    let name = a.volume_backup_name.clone();
    // First, before any long work: KDMP watches this object from the moment the Job exists.
    let object = objects::volume_backup(
        &name,
        &a.backup_namespace,
        &format!("{}/", a.repository_dir),
        &a.backup_location,
        &a.backup_location_namespace,
    );
    create_volume_backup(&api, &object).await?;
    let prepared = (|| {
        let location = KdmpLocation::read_dir(&env.cred_secret_dir, &env.nfs_target_dir)?;
        let level = compression_level(a.compression.as_deref())?;
        let exclude = exclude_config(&a.exclude_file_list)?;
        Ok::<_, ExecutorError>((location, level, exclude))
    })();
    let (location, level, exclude) = match prepared {
        Ok(p) => p,
        Err(e) => return Err(fail_volume_backup(&api, &name, e).await),
    };
    let access = location.access(&a.repository_dir, Some(env.cache_dir.clone()));
    let repo_name = a
        .repository_dir
        .strip_prefix(&format!("{GENERIC_BACKUP_DIR}/"))
        .unwrap_or(&a.repository_dir)
        .to_string();
    let req = BackupJobRequest {
        repository: access.clone(),
        source: a.source_path.clone(),
        device: false,
        source_name: repo_name,
        tags: BTreeMap::from([(TAG_VOLUME_BACKUP.to_string(), name.clone())]),
        storage_class: exclude.as_ref().map(|_| EXCLUDE_CLASS.to_string()),
        exclude_config: exclude,
        checkpoint_interval: None,
        limit_read: None,
    };
    let (tx, rx) = watch::channel(None::<EngineProgress>);
    let reporter = tokio::spawn(report_progress(
        api.clone(),
        name.clone(),
        rx,
        env.progress_interval,
    ));
    let work = blocking(move || {
        ensure_repository(engine.as_ref(), &req.repository, Some(level))?;
        let progress = move |p| {
            tx.send_replace(Some(p));
        };
        Ok::<_, ExecutorError>(engine.backup(&req, &progress)?)
    })
    .await
    .and_then(|r| r);
    // The sender went with the work: the reporter ends; the final status comes after it.
    let _ = reporter.await;
    match work {
        Ok(r) => {
            let status = VolumeBackupStatus {
                progress_percentage: 100.0,
                total_bytes: r.total_bytes,
                total_bytes_processed: r.bytes_done.max(r.total_bytes),
                snapshot_id: r.snapshot_id.clone(),
                last_known_error: String::new(),
            };
            // KDMP counts the backup only with 100% and the snapshot id in the object.
            objects::write_volume_backup_status(&api, &name, &status).await?;
            Ok(r.summary)
        }
        Err(e) => Err(fail_volume_backup(&api, &name, e).await),
    }
}

async fn restore(
    a: RestoreArgs,
    env: &ExecutorEnv,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<String, ExecutorError> {
    let api = KdmpKind::VolumeBackup.api(client, &a.restore_namespace);
    let name = a.volume_backup_name.clone();
    let location = match KdmpLocation::read_dir(&env.cred_secret_dir, &env.nfs_target_dir) {
        Ok(l) => l,
        Err(e) => return Err(fail_volume_backup(&api, &name, e.into()).await),
    };
    let req = RestoreJobRequest {
        repository: location.access(&a.repository_dir, Some(env.cache_dir.clone())),
        snapshot: a.snapshot_id.clone(),
        target: a.target_path.clone(),
        device: false,
        include_paths: Vec::new(),
    };
    let (tx, rx) = watch::channel(None::<EngineProgress>);
    let reporter = tokio::spawn(report_progress(
        api.clone(),
        name.clone(),
        rx,
        env.progress_interval,
    ));
    let work = blocking(move || {
        ensure_repository(engine.as_ref(), &req.repository, None)?;
        let progress = move |p| {
            tx.send_replace(Some(p));
        };
        Ok::<_, ExecutorError>(engine.restore(&req, &progress)?)
    })
    .await
    .and_then(|r| r);
    let _ = reporter.await;
    match work {
        Ok(r) => {
            let status = VolumeBackupStatus {
                progress_percentage: 100.0,
                total_bytes: r.total_bytes,
                total_bytes_processed: r.bytes_done,
                snapshot_id: a.snapshot_id.clone(),
                last_known_error: String::new(),
            };
            // The restore itself is done: a VolumeBackup that cannot be updated only logs.
            if let Err(e) = objects::write_volume_backup_status(&api, &name, &status).await {
                tracing::warn!(error = %e, "restore done, but the VolumeBackup was not updated");
            }
            Ok(r.summary)
        }
        Err(e) => Err(fail_volume_backup(&api, &name, e).await),
    }
}

async fn delete(
    a: DeleteArgs,
    env: &ExecutorEnv,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<String, ExecutorError> {
    let api = KdmpKind::VolumeBackupDelete.api(client, &a.volume_backup_delete_namespace);
    let work = async {
        let location = KdmpLocation::read_dir(&env.cred_secret_dir, &env.nfs_target_dir)?;
        let access = location.access(&a.repository_dir, Some(env.cache_dir.clone()));
        let id = a.snapshot_id.clone();
        blocking(move || {
            match engine.inspect_location(&access)? {
                // Nothing was ever backed up there: nothing to delete.
                LocationContent::Empty => {
                    return Ok(format!(
                        "no repository at {}: snapshot {id} is already gone",
                        access.location
                    ))
                }
                LocationContent::Cairn => {}
                LocationContent::Kopia => {
                    return Err(ExecutorError::Refused(kopia_refusal(&access.location)))
                }
                LocationContent::Unknown(first) => {
                    return Err(ExecutorError::Refused(format!(
                        "{} holds {first:?}, not a cairn repository",
                        access.location
                    )))
                }
            }
            Ok(if engine.forget_snapshot(&access, &id)? {
                format!("forgot snapshot {id}; maintenance reclaims its data")
            } else {
                format!("snapshot {id} is not in the repository: already gone")
            })
        })
        .await?
    }
    .await;
    match work {
        Ok(summary) => Ok(summary),
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "delete failed");
            if let Err(we) =
                objects::write_delete_failed(&api, &a.volume_backup_delete_name, &message).await
            {
                tracing::error!(error = %we, "could not record the failure in the VolumeBackupDelete");
            }
            Err(e)
        }
    }
}

async fn maintenance(
    a: MaintenanceArgs,
    env: &ExecutorEnv,
    engine: Arc<dyn Engine>,
    client: kube::Client,
) -> Result<String, ExecutorError> {
    let api = KdmpKind::BackupLocationMaintenance.api(client, &a.maintenance_status_namespace);
    let location = KdmpLocation::read_dir(&env.cred_secret_dir, &env.nfs_target_dir)?;
    let root = location.access(GENERIC_BACKUP_DIR, Some(env.cache_dir.clone()));
    let names = {
        let engine = engine.clone();
        blocking(move || engine.list_repositories(&root)).await??
    };
    let (mut ok, mut failed) = (0usize, 0usize);
    for dir in &names {
        let key = format!("{GENERIC_BACKUP_DIR}/{dir}/");
        let req = MaintenanceJobRequest {
            repository: location.access(&key, Some(env.cache_dir.clone())),
            kind: a.kind,
        };
        let engine = engine.clone();
        let result = blocking(move || engine.maintenance(&req))
            .await
            .and_then(|r| r.map_err(ExecutorError::from));
        let recorded = match result {
            Ok(done) => {
                tracing::info!(repository = %key, summary = %done.summary, "maintenance done");
                ok += 1;
                Ok(())
            }
            Err(e) => {
                // KDMP expects the job to succeed: each repository's failure is in the object.
                tracing::error!(repository = %key, error = %e, "maintenance failed");
                failed += 1;
                Err(e.to_string())
            }
        };
        let now = jiff::Timestamp::now();
        if let Err(e) = objects::write_maintenance_run(
            &api,
            &a.maintenance_status_name,
            a.kind,
            &key,
            recorded,
            now,
        )
        .await
        {
            tracing::warn!(repository = %key, error = %e, "could not record the run");
        }
    }
    Ok(format!(
        "{} maintenance of {} repositories under {GENERIC_BACKUP_DIR}/: {ok} done, {failed} failed",
        a.kind.as_str(),
        names.len()
    ))
}
