//! Job-mode parameters from arguments, with `CAIRN_<FLAG>` environment fallbacks, and the
//! Secret files mounted into the pod.
//!
//! Flags are `--name value` or `--name=value`; repeatable flags (`--tag`, `--include`)
//! collect every occurrence. The environment supplies a flag that is absent from the
//! arguments: `--password-file` <- `CAIRN_PASSWORD_FILE`.

use super::engine::RepositoryAccess;
use super::JobError;
use crate::crd::MaintenanceKind;
use crate::protocol::{ENV_EXCLUDE_FILE_LIST, TERMINATION_LOG};
use crate::resources::plan::Stage;
use cairn_policy::retention::RetentionPolicy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCommand {
    /// `cairn job backup`.
    Backup,
    /// `cairn job restore`.
    Restore,
    /// `cairn job maintenance`.
    Maintenance,
    /// `cairn job catalog`: refresh the RepositorySnapshot mirror.
    Catalog,
    /// `cairn job capture-resources`: back up an ApplicationBackup's configuration.
    CaptureResources,
    /// `cairn job restore-resources`: restore one stage of an ApplicationRestore's
    /// resources.
    RestoreResources,
    /// `cairn job forget`: forget a BackupSchedule's snapshots its retention does not keep.
    Forget,
}

impl std::str::FromStr for JobCommand {
    type Err = JobError;
    fn from_str(s: &str) -> Result<Self, JobError> {
        match s {
            "backup" => Ok(JobCommand::Backup),
            "restore" => Ok(JobCommand::Restore),
            "maintenance" => Ok(JobCommand::Maintenance),
            "catalog" => Ok(JobCommand::Catalog),
            "capture-resources" => Ok(JobCommand::CaptureResources),
            "restore-resources" => Ok(JobCommand::RestoreResources),
            "forget" => Ok(JobCommand::Forget),
            other => Err(JobError::Usage(format!(
                "unknown job {other:?}; expected backup, restore, maintenance, catalog, \
                 capture-resources, restore-resources or forget"
            ))),
        }
    }
}

/// Everything a job needs, parsed and read.
#[derive(Clone, Debug)]
pub struct JobParams {
    /// What to do.
    pub command: JobCommand,
    /// Namespace of the cairn resources.
    pub namespace: Option<String>,
    /// BackupRepository name.
    pub repository_name: Option<String>,
    /// How to open the repository.
    pub repository: RepositoryAccess,
    /// VolumeBackup whose status receives progress (backup).
    pub volume_backup: Option<String>,
    /// VolumeRestore whose status receives progress (restore).
    pub volume_restore: Option<String>,
    /// Source directory (backup), or the block device with `device`.
    pub source: Option<PathBuf>,
    /// Source name (backup).
    pub source_name: Option<String>,
    /// Storage class of the source (backup).
    pub storage_class: Option<String>,
    /// Raw KDMP exclude list (backup).
    pub exclude_config: Option<String>,
    /// Tags (backup), or the tags selecting the snapshots to consider (forget).
    pub tags: BTreeMap<String, String>,
    /// Keep rules (forget): `--keep-last`, `--keep-hourly`, ... `--keep-yearly`.
    pub retention: RetentionPolicy,
    /// Snapshot to restore, or the one snapshot to forget.
    pub snapshot: Option<String>,
    /// Restore target directory, or the block device with `device`.
    pub target: Option<PathBuf>,
    /// `--device PATH`: the volume is a raw block device (a `volumeMode: Block` PVC), read
    /// as one file of its size (backup) or written with the snapshot's one file (restore);
    /// `source` or `target` is that path.
    pub device: bool,
    /// Paths to restore.
    pub include_paths: Vec<String>,
    /// Maintenance kind.
    pub maintenance_kind: MaintenanceKind,
    /// Where the outcome is written.
    pub termination_log: PathBuf,
    /// Time between progress patches.
    pub progress_interval: Duration,
    /// Time between backup checkpoints (what a retry resumes from); None = the engine's
    /// default.
    pub checkpoint_interval: Option<Duration>,
    /// Bytes per second a backup reads from the volume at most (a Kubernetes quantity
    /// such as 50Mi); None = unlimited.
    pub limit_read: Option<u64>,
    /// ApplicationBackup whose configuration is captured (capture-resources).
    pub application_backup: Option<String>,
    /// ApplicationRestore served (restore-resources).
    pub application_restore: Option<String>,
    /// Which resources restore-resources creates.
    pub stage: Option<Stage>,
    /// Where manifests are staged; `/tmp` when absent (the only writable path in a job pod).
    pub staging_dir: Option<PathBuf>,
    /// Velero's namespace, for `data_upload` / `data_download`.
    pub velero_namespace: Option<String>,
    /// Velero DataUpload whose status receives progress (backup).
    pub data_upload: Option<String>,
    /// Velero DataDownload whose status receives progress (restore).
    pub data_download: Option<String>,
    /// Backup: create the repository when the location holds none (`--init-if-missing`,
    /// passed for Velero's per-namespace repositories).
    pub init_if_missing: bool,
}

fn env_name(flag: &str) -> String {
    format!("CAIRN_{}", flag.to_uppercase().replace('-', "_"))
}

/// Flags that take a value; anything else is a usage error (typos fail loudly).
const FLAGS: &[&str] = &[
    "namespace",
    "repository",
    "location",
    "password-file",
    "credentials-dir",
    "cache-dir",
    "volume-backup",
    "volume-restore",
    "source",
    "source-name",
    "storage-class",
    "exclude-config",
    "tag",
    "snapshot",
    "target",
    "device",
    "include",
    "kind",
    "termination-log",
    "progress-interval",
    "checkpoint-interval",
    "limit-read",
    "application-backup",
    "application-restore",
    "stage",
    "staging-dir",
    "keep-last",
    "keep-hourly",
    "keep-daily",
    "keep-weekly",
    "keep-monthly",
    "keep-yearly",
    "velero-namespace",
    "data-upload",
    "data-download",
];

/// Flags that take no value: present means on (`--init-if-missing`, or `=true|false`).
const SWITCHES: &[&str] = &["init-if-missing"];

impl JobParams {
    /// Parses `args` (after the job command) with `env` as fallback, and reads the password
    /// and credential files they name.
    pub fn parse(
        command: JobCommand,
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<JobParams, JobError> {
        let mut flags: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(JobError::Usage(format!("unexpected argument {arg:?}")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, v.to_string()),
                None if SWITCHES.contains(&body) => (body, "true".to_string()),
                None => (
                    body,
                    it.next()
                        .cloned()
                        .ok_or_else(|| JobError::Usage(format!("--{body} needs a value")))?,
                ),
            };
            let Some(known) = FLAGS.iter().chain(SWITCHES).find(|f| **f == name) else {
                return Err(JobError::Usage(format!("unknown flag --{name}")));
            };
            flags.entry(known).or_default().push(value);
        }
        let one = |name: &str| -> Option<String> {
            flags
                .get(name)
                .and_then(|v| v.last().cloned())
                .or_else(|| env(&env_name(name)))
        };
        let many = |name: &str| -> Vec<String> { flags.get(name).cloned().unwrap_or_default() };
        let required = |name: &str| {
            one(name).ok_or_else(|| {
                JobError::Usage(format!("--{name} (or {}) is required", env_name(name)))
            })
        };

        let location = required("location")?;
        let password = match (one("password-file"), env("CAIRN_PASSWORD")) {
            (Some(file), _) => read_secret_file(Path::new(&file))?,
            (None, Some(password)) => password,
            (None, None) => {
                return Err(JobError::Usage(
                    "--password-file (or CAIRN_PASSWORD) is required".into(),
                ))
            }
        };
        let mut credentials = BTreeMap::new();
        if let Some(dir) = one("credentials-dir") {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| JobError::Secret(format!("{dir}: {e}")))?;
            for entry in entries {
                let entry = entry.map_err(|e| JobError::Secret(format!("{dir}: {e}")))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Secret volumes hold `..data` and timestamped directories next to the keys.
                if name.starts_with('.') || entry.path().is_dir() {
                    continue;
                }
                credentials.insert(name, read_secret_file(&entry.path())?);
            }
        }
        let exclude_config = match one("exclude-config") {
            Some(file) => Some(
                std::fs::read_to_string(&file)
                    .map_err(|e| JobError::Usage(format!("--exclude-config {file}: {e}")))?,
            ),
            None => env(ENV_EXCLUDE_FILE_LIST),
        };
        let mut tags = BTreeMap::new();
        for tag in many("tag") {
            let (k, v) = tag
                .split_once('=')
                .ok_or_else(|| JobError::Usage(format!("--tag {tag:?}: expected key=value")))?;
            tags.insert(k.to_string(), v.to_string());
        }
        let maintenance_kind = match one("kind").as_deref() {
            None | Some("quick") => MaintenanceKind::Quick,
            Some("full") => MaintenanceKind::Full,
            Some(other) => {
                return Err(JobError::Usage(format!(
                    "--kind {other:?}: expected quick or full"
                )))
            }
        };
        let progress_interval = match one("progress-interval") {
            None => Duration::from_secs(5),
            Some(text) => crate::config::parse_duration(&text)
                .map_err(|e| JobError::Usage(format!("--progress-interval: {e}")))?,
        };
        let checkpoint_interval = match one("checkpoint-interval") {
            None => None,
            Some(text) => Some(
                crate::config::parse_duration(&text)
                    .map_err(|e| JobError::Usage(format!("--checkpoint-interval: {e}")))?,
            ),
        };
        let limit_read = match one("limit-read") {
            None => None,
            Some(text) => match crate::config::parse_quantity(&text) {
                Ok(rate) if rate >= 1.0 => Some(rate as u64),
                Ok(_) => {
                    return Err(JobError::Usage(format!(
                        "--limit-read {text:?}: give a rate of at least one byte per second, \
                         such as 50Mi"
                    )))
                }
                Err(e) => return Err(JobError::Usage(format!("--limit-read: {e}"))),
            },
        };
        let count = |name: &str| -> Result<Option<u32>, JobError> {
            one(name)
                .map(|text| {
                    text.parse::<u32>().map_err(|_| {
                        JobError::Usage(format!("--{name} {text:?}: expected a count"))
                    })
                })
                .transpose()
        };
        let retention = RetentionPolicy {
            keep_last: count("keep-last")?,
            keep_hourly: count("keep-hourly")?,
            keep_daily: count("keep-daily")?,
            keep_weekly: count("keep-weekly")?,
            keep_monthly: count("keep-monthly")?,
            keep_yearly: count("keep-yearly")?,
            ..RetentionPolicy::default()
        };
        let stage = match one("stage") {
            None => None,
            Some(text) => Some(
                text.parse::<Stage>()
                    .map_err(|e| JobError::Usage(format!("--stage: {e}")))?,
            ),
        };
        let init_if_missing = match one("init-if-missing").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(JobError::Usage(format!(
                    "--init-if-missing={other:?}: expected true or false"
                )))
            }
        };
        let device = one("device").map(PathBuf::from);
        let path_or_device = |flag: &str| -> Result<Option<PathBuf>, JobError> {
            match (one(flag), &device) {
                (Some(_), Some(_)) => Err(JobError::Usage(format!(
                    "--{flag} and --device name the same thing (a directory, or a block \
                     device); give one"
                ))),
                (Some(path), None) => Ok(Some(PathBuf::from(path))),
                (None, device) => Ok(device.clone()),
            }
        };
        let (source, target) = match command {
            JobCommand::Restore => (one("source").map(PathBuf::from), path_or_device("target")?),
            _ => (path_or_device("source")?, one("target").map(PathBuf::from)),
        };
        let params = JobParams {
            command,
            namespace: one("namespace").or_else(|| env("POD_NAMESPACE")),
            repository_name: one("repository"),
            repository: RepositoryAccess {
                location,
                password,
                credentials,
                cache_dir: one("cache-dir").map(PathBuf::from),
            },
            volume_backup: one("volume-backup"),
            volume_restore: one("volume-restore"),
            source,
            source_name: one("source-name"),
            storage_class: one("storage-class").filter(|s| !s.is_empty()),
            exclude_config,
            tags,
            snapshot: one("snapshot"),
            target,
            device: device.is_some(),
            include_paths: many("include"),
            maintenance_kind,
            termination_log: one("termination-log")
                .map(PathBuf::from)
                .unwrap_or_else(|| TERMINATION_LOG.into()),
            progress_interval,
            checkpoint_interval,
            limit_read,
            application_backup: one("application-backup"),
            application_restore: one("application-restore"),
            retention,
            stage,
            staging_dir: one("staging-dir").map(PathBuf::from),
            velero_namespace: one("velero-namespace"),
            data_upload: one("data-upload"),
            data_download: one("data-download"),
            init_if_missing,
        };
        match command {
            JobCommand::Backup if params.source.is_none() => Err(JobError::Usage(
                "backup needs --source (a directory) or --device (a block device)".into(),
            )),
            JobCommand::Restore if params.snapshot.is_none() || params.target.is_none() => {
                Err(JobError::Usage(
                    "restore needs --snapshot and --target (a directory) or --device (a block \
                     device)"
                        .into(),
                ))
            }
            JobCommand::Catalog
                if params.namespace.is_none() || params.repository_name.is_none() =>
            {
                Err(JobError::Usage(
                    "catalog needs --namespace and --repository".into(),
                ))
            }
            JobCommand::CaptureResources
                if params.namespace.is_none() || params.application_backup.is_none() =>
            {
                Err(JobError::Usage(
                    "capture-resources needs --namespace and --application-backup".into(),
                ))
            }
            JobCommand::RestoreResources
                if params.namespace.is_none()
                    || params.application_restore.is_none()
                    || params.stage.is_none() =>
            {
                Err(JobError::Usage(
                    "restore-resources needs --namespace, --application-restore and \
                     --stage configuration|workloads"
                        .into(),
                ))
            }
            JobCommand::Forget
                if params.snapshot.is_some()
                    && (!params.tags.is_empty() || !params.retention.is_empty()) =>
            {
                Err(JobError::Usage(
                    "forget takes either --snapshot ID (one snapshot) or --tag with --keep-* \
                     rules, not both"
                        .into(),
                ))
            }
            JobCommand::Forget
                if params.snapshot.is_none()
                    && (params.tags.is_empty() || params.retention.is_empty()) =>
            {
                Err(JobError::Usage(
                    "forget needs --tag (the snapshots to consider) and at least one --keep-* \
                     rule; it never forgets every snapshot"
                        .into(),
                ))
            }
            _ => Ok(params),
        }
    }
}

/// Reads a mounted Secret key, dropping one trailing newline (`kubectl create secret
/// --from-file` keeps it; passwords never end in one).
fn read_secret_file(path: &Path) -> Result<String, JobError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| JobError::Secret(format!("{}: {e}", path.display())))?;
    Ok(secret_value(&text).to_string())
}

/// A Secret value as a Job sees it: one trailing newline (`\n` or `\r\n`) dropped, the way
/// [`JobParams`] reads mounted Secret files. `cairn kube mount` reads Secrets through the
/// API and must open the repository with the same password.
pub fn secret_value(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}
