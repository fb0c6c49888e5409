//! The `kopiaexecutor` command line exactly as KDMP builds it: `<op> --flag value ...`
//! (values joined with single spaces, `--flag=value` also accepted, as cobra does), for the
//! operations `backup`, `restore`, `delete` and `maintenance`.
//!
//! `--credentials` and `--app-restore-cr` are accepted and ignored, as KDMP's own executor
//! ignores them: the credentials are the Secret mounted at
//! [`CRED_SECRET_DIR`](super::CRED_SECRET_DIR).

use super::GENERIC_BACKUP_DIR;
use crate::crd::MaintenanceKind;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A `kopiaexecutor` command line that KDMP would not build.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("kopiaexecutor arguments: {0}")]
pub struct UsageError(pub String);

/// One KDMP operation with its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KdmpCommand {
    /// `backup`: back up a volume into its repository and report in a VolumeBackup.
    Backup(BackupArgs),
    /// `restore`: restore a snapshot into a volume.
    Restore(RestoreArgs),
    /// `delete`: forget one snapshot.
    Delete(DeleteArgs),
    /// `maintenance`: maintain every repository of the location.
    Maintenance(MaintenanceArgs),
}

/// `backup --volume-backup-name N --repository <ns>-<pvc> --backup-location L
/// --backup-location-namespace LNS --backup-namespace NS --source-path /data
/// [--source-path-glob G] [--compression C] [--exclude-file-list a,b]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupArgs {
    /// The VolumeBackup to create and update.
    pub volume_backup_name: String,
    /// The repository's directory in the location: `generic-backup/<ns>-<pvc>`.
    pub repository_dir: String,
    /// The BackupLocation, recorded in the VolumeBackup.
    pub backup_location: String,
    /// The BackupLocation's namespace.
    pub backup_location_namespace: String,
    /// Namespace of the VolumeBackup.
    pub backup_namespace: String,
    /// The mounted volume.
    pub source_path: PathBuf,
    /// A glob under the source path naming what to back up (KDMP passes it for volumes
    /// whose data sits below a generated directory), if any.
    pub source_path_glob: Option<String>,
    /// The compression KDMP asks of kopia; cairn's repository settings decide instead.
    pub compression: Option<String>,
    /// Files and directories, relative to the source, left out of the backup.
    pub exclude_file_list: Vec<String>,
}

/// `restore --volume-backup-name N --backup-location L --backup-location-namespace LNS
/// --repository generic-backup/<ns>-<pvc>/ --restore-namespace NS --target-path /data
/// --snapshot-id ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreArgs {
    /// The VolumeBackup that receives the totals.
    pub volume_backup_name: String,
    /// The BackupLocation.
    pub backup_location: String,
    /// The BackupLocation's namespace.
    pub backup_location_namespace: String,
    /// The repository's directory in the location: `generic-backup/<ns>-<pvc>`.
    pub repository_dir: String,
    /// Namespace of the VolumeBackup.
    pub restore_namespace: String,
    /// The mounted target volume.
    pub target_path: PathBuf,
    /// The snapshot to restore.
    pub snapshot_id: String,
}

/// `delete --repository R --cred-secret-name S --cred-secret-namespace NS --snapshot-id ID
/// --volume-backup-delete-name N --volume-backup-delete-namespace NS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteArgs {
    /// The repository's directory in the location: `generic-backup/<ns>-<pvc>`.
    pub repository_dir: String,
    /// The credential Secret (mounted; the name is informational).
    pub cred_secret_name: String,
    /// The credential Secret's namespace.
    pub cred_secret_namespace: String,
    /// The snapshot to forget.
    pub snapshot_id: String,
    /// The VolumeBackupDelete that records a failure.
    pub volume_backup_delete_name: String,
    /// Its namespace.
    pub volume_backup_delete_namespace: String,
}

/// `maintenance --cred-secret-name S --cred-secret-namespace NS --maintenance-status-name N
/// --maintenance-status-namespace NS --maintenance-type full|quick`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceArgs {
    /// The credential Secret (mounted; the name is informational).
    pub cred_secret_name: String,
    /// The credential Secret's namespace.
    pub cred_secret_namespace: String,
    /// The BackupLocationMaintenance that records each repository's run.
    pub maintenance_status_name: String,
    /// Its namespace.
    pub maintenance_status_namespace: String,
    /// Quick or full.
    pub kind: MaintenanceKind,
}

/// Flags every operation accepts and ignores, as KDMP's executor does.
const IGNORED: &[&str] = &["credentials", "app-restore-cr"];

const BACKUP_FLAGS: &[&str] = &[
    "volume-backup-name",
    "repository",
    "backup-location",
    "backup-location-namespace",
    "backup-namespace",
    "source-path",
    "source-path-glob",
    "compression",
    "exclude-file-list",
];

const RESTORE_FLAGS: &[&str] = &[
    "volume-backup-name",
    "backup-location",
    "backup-location-namespace",
    "repository",
    "restore-namespace",
    "target-path",
    "snapshot-id",
];

const DELETE_FLAGS: &[&str] = &[
    "repository",
    "cred-secret-name",
    "cred-secret-namespace",
    "snapshot-id",
    "volume-backup-delete-name",
    "volume-backup-delete-namespace",
];

const MAINTENANCE_FLAGS: &[&str] = &[
    "cred-secret-name",
    "cred-secret-namespace",
    "maintenance-status-name",
    "maintenance-status-namespace",
    "maintenance-type",
];

impl KdmpCommand {
    /// Parses `args`: the operation, then its flags.
    pub fn parse(args: &[String]) -> Result<KdmpCommand, UsageError> {
        let Some((op, rest)) = args.split_first() else {
            return Err(UsageError(
                "no operation; expected backup, restore, delete or maintenance".into(),
            ));
        };
        let known = match op.as_str() {
            "backup" => BACKUP_FLAGS,
            "restore" => RESTORE_FLAGS,
            "delete" => DELETE_FLAGS,
            "maintenance" => MAINTENANCE_FLAGS,
            other => {
                return Err(UsageError(format!(
                    "unknown operation {other:?}; expected backup, restore, delete or \
                     maintenance"
                )))
            }
        };
        let flags = Flags::parse(op, rest, known)?;
        Ok(match op.as_str() {
            "backup" => KdmpCommand::Backup(BackupArgs {
                volume_backup_name: flags.required("volume-backup-name")?,
                repository_dir: repository_dir(&flags.required("repository")?)?,
                backup_location: flags.required("backup-location")?,
                backup_location_namespace: flags.required("backup-location-namespace")?,
                backup_namespace: flags.required("backup-namespace")?,
                source_path: flags.required("source-path")?.into(),
                source_path_glob: flags.optional("source-path-glob"),
                compression: flags.optional("compression"),
                exclude_file_list: flags
                    .optional("exclude-file-list")
                    .map(|list| {
                        list.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            "restore" => KdmpCommand::Restore(RestoreArgs {
                volume_backup_name: flags.required("volume-backup-name")?,
                backup_location: flags.required("backup-location")?,
                backup_location_namespace: flags.required("backup-location-namespace")?,
                repository_dir: repository_dir(&flags.required("repository")?)?,
                restore_namespace: flags.required("restore-namespace")?,
                target_path: flags.required("target-path")?.into(),
                snapshot_id: flags.required("snapshot-id")?,
            }),
            "delete" => KdmpCommand::Delete(DeleteArgs {
                repository_dir: repository_dir(&flags.required("repository")?)?,
                cred_secret_name: flags.required("cred-secret-name")?,
                cred_secret_namespace: flags.required("cred-secret-namespace")?,
                snapshot_id: flags.required("snapshot-id")?,
                volume_backup_delete_name: flags.required("volume-backup-delete-name")?,
                volume_backup_delete_namespace: flags.required("volume-backup-delete-namespace")?,
            }),
            _ => KdmpCommand::Maintenance(MaintenanceArgs {
                cred_secret_name: flags.required("cred-secret-name")?,
                cred_secret_namespace: flags.required("cred-secret-namespace")?,
                maintenance_status_name: flags.required("maintenance-status-name")?,
                maintenance_status_namespace: flags.required("maintenance-status-namespace")?,
                kind: match flags.required("maintenance-type")?.as_str() {
                    "quick" => MaintenanceKind::Quick,
                    "full" => MaintenanceKind::Full,
                    other => {
                        return Err(UsageError(format!(
                            "--maintenance-type {other:?}: expected full or quick"
                        )))
                    }
                },
            }),
        })
    }
}

/// The repository's directory in the location from KDMP's `--repository`: the backup passes
/// `<ns>-<pvc>`, restore and delete pass `generic-backup/<ns>-<pvc>/`. Both become
/// `generic-backup/<ns>-<pvc>`.
pub fn repository_dir(repository: &str) -> Result<String, UsageError> {
    // `generic-backup/` names no repository; `generic-backup` alone is the volume
    // `generic`/`backup` as the backup spells it.
    let leading = repository.trim_start_matches('/');
    let name = leading
        .strip_prefix(GENERIC_BACKUP_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(leading)
        .trim_end_matches('/');
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(UsageError(format!(
            "--repository {repository:?}: expected <namespace>-<pvc> or \
             {GENERIC_BACKUP_DIR}/<namespace>-<pvc>/"
        )));
    }
    Ok(format!("{GENERIC_BACKUP_DIR}/{name}"))
}

/// Flag values by name; the last occurrence wins, as in cobra.
struct Flags<'a> {
    op: &'a str,
    values: BTreeMap<&'static str, String>,
}

impl<'a> Flags<'a> {
    fn parse(op: &'a str, args: &[String], known: &[&'static str]) -> Result<Self, UsageError> {
        let mut values = BTreeMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(UsageError(format!("{op}: unexpected argument {arg:?}")));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, v.to_string()),
                None => (
                    body,
                    it.next()
                        .cloned()
                        .ok_or_else(|| UsageError(format!("{op}: --{body} needs a value")))?,
                ),
            };
            if IGNORED.contains(&name) {
                continue;
            }
            let Some(flag) = known.iter().find(|f| **f == name) else {
                return Err(UsageError(format!("{op}: unknown flag --{name}")));
            };
            values.insert(*flag, value);
        }
        Ok(Flags { op, values })
    }

    fn optional(&self, name: &str) -> Option<String> {
        self.values.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn required(&self, name: &str) -> Result<String, UsageError> {
        self.optional(name)
            .ok_or_else(|| UsageError(format!("{} needs --{name}", self.op)))
    }
}
