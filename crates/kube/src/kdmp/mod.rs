//! The KDMP executor contract: what Portworx's KDMP driver expects of its `kopiaexecutor`
//! job image, so the cairn binary can stand in for it. [`credentials`] turns the mounted
//! credential Secret into cairn repository locations; [`command`] parses the command line
//! KDMP builds; [`objects`] reads and writes KDMP's VolumeBackup, VolumeBackupDelete and
//! BackupLocationMaintenance; [`executor`] runs each operation.

pub mod command;
pub mod credentials;
pub mod executor;
pub mod objects;

pub use command::{
    repository_dir, BackupArgs, DeleteArgs, KdmpCommand, MaintenanceArgs, RestoreArgs, UsageError,
};
pub use credentials::{
    CredentialError, KdmpLocation, LocationKind, CRED_SECRET_DIR, GENERIC_BACKUP_DIR,
    NFS_TARGET_DIR,
};
pub use executor::{run, ExecutorEnv, ExecutorError};
