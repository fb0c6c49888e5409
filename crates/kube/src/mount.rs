//! `cairn kube mount VOLUMEBACKUP DIR`: resolve a VolumeBackup to its repository, password,
//! credentials and snapshot id through the cluster API, for the CLI to FUSE-mount locally;
//! `cairn kube mount applicationbackup/NAME DIR`: resolve an ApplicationBackup to the
//! snapshots of its volumes and of its resources.

use crate::adapter::describe;
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase, BackupRepository, VolumeBackup, VolumeBackupPhase,
};
use crate::job::{secret_value, RepositoryAccess};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::collections::BTreeMap;

/// Why a VolumeBackup cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The API refused or could not be reached.
    #[error("{what}: {}", describe(source))]
    Api {
        /// What was being read.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// An object the backup depends on does not exist.
    #[error("{object} not found; {hint}")]
    NotFound {
        /// Kind and `namespace/name`.
        object: String,
        /// Where the name came from, or what to check.
        hint: String,
    },
    /// The backup has no snapshot.
    #[error(
        "VolumeBackup {name} is {phase:?}{reason}: only a Completed VolumeBackup has a snapshot \
         to mount"
    )]
    NotCompleted {
        /// `namespace/name`.
        name: String,
        /// Its phase.
        phase: VolumeBackupPhase,
        /// `: <failure reason>` when it Failed.
        reason: String,
    },
    /// The ApplicationBackup has nothing to mount yet, or nothing at all.
    #[error(
        "ApplicationBackup {name} is {phase:?}{reason}: only a Completed or PartiallyFailed \
         ApplicationBackup has snapshots to mount"
    )]
    ApplicationNotFinished {
        /// `namespace/name`.
        name: String,
        /// Its phase.
        phase: ApplicationBackupPhase,
        /// `: <failure reason>` when it failed.
        reason: String,
    },
    /// A Secret lacks the key the repository names.
    #[error(
        "Secret {secret} has no key {key:?}; fix passwordSecret in BackupRepository {repository}"
    )]
    MissingKey {
        /// Secret `namespace/name`.
        secret: String,
        /// Key.
        key: String,
        /// Repository `namespace/name`.
        repository: String,
    },
}

/// What the CLI needs to mount one backup.
#[derive(Clone, Debug)]
pub struct MountTarget {
    /// How to open the repository (secrets redacted from Debug).
    pub repository: RepositoryAccess,
    /// The snapshot the VolumeBackup produced.
    pub snapshot_id: String,
}

fn secret_strings(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .chain(secret.string_data.unwrap_or_default())
        .collect()
}

/// Reads `namespace/name`, turning a 404 into [`MountError::NotFound`] with `hint`.
async fn get<K>(api: &Api<K>, namespace: &str, name: &str, hint: String) -> Result<K, MountError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let object = format!("{} {namespace}/{name}", K::kind(&()));
    match api.get_opt(name).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(MountError::NotFound { object, hint }),
        Err(source) => Err(MountError::Api {
            what: format!("reading {object}"),
            source,
        }),
    }
}

/// Resolves the VolumeBackup `namespace/name` to its repository access and snapshot id:
/// reads the VolumeBackup, its BackupRepository, the password Secret and the credentials
/// Secret (when the repository names one), all in `namespace`.
pub async fn resolve_mount(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<MountTarget, MountError> {
    let vb: VolumeBackup = get(
        &Api::namespaced(client.clone(), namespace),
        namespace,
        name,
        "check the name and the namespace (-n NAMESPACE or NAMESPACE/NAME)".into(),
    )
    .await?;
    let status = vb.status.unwrap_or_default();
    let Some(snapshot_id) = status
        .snapshot_id
        .filter(|_| status.phase == VolumeBackupPhase::Completed)
    else {
        return Err(MountError::NotCompleted {
            name: format!("{namespace}/{name}"),
            phase: status.phase,
            reason: status
                .failure_reason
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        });
    };
    let repository = repository_access(
        client,
        namespace,
        &vb.spec.repository,
        &format!("VolumeBackup {namespace}/{name}"),
    )
    .await?;
    Ok(MountTarget {
        repository,
        snapshot_id,
    })
}

/// One volume of an ApplicationBackup, to mount at `volumes/<namespace>/<pvc>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSnapshotRef {
    /// Namespace of the PVC.
    pub namespace: String,
    /// PVC name.
    pub persistent_volume_claim: String,
    /// Its repository snapshot.
    pub snapshot_id: String,
}

/// What the CLI needs to mount one ApplicationBackup.
#[derive(Clone, Debug)]
pub struct ApplicationMountTarget {
    /// How to open the repository (secrets redacted from Debug).
    pub repository: RepositoryAccess,
    /// Volumes that reached the repository; volumes that failed are left out.
    pub volumes: Vec<VolumeSnapshotRef>,
    /// The snapshot holding the captured resources under `resources/`, if captured.
    pub resource_snapshot_id: Option<String>,
}

/// Resolves the ApplicationBackup `namespace/name` to its repository access, the snapshot
/// of each volume that reached the repository (`status.volumes[].snapshotId`) and the
/// resource snapshot (`status.resourceSnapshotId`). Only a Completed or PartiallyFailed
/// backup with at least one snapshot resolves.
pub async fn resolve_application_mount(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<ApplicationMountTarget, MountError> {
    let ab: ApplicationBackup = get(
        &Api::namespaced(client.clone(), namespace),
        namespace,
        name,
        "check the name and the namespace (-n NAMESPACE)".into(),
    )
    .await?;
    let status = ab.status.unwrap_or_default();
    let volumes: Vec<VolumeSnapshotRef> = status
        .volumes
        .iter()
        .filter_map(|v| {
            Some(VolumeSnapshotRef {
                namespace: v.namespace.clone(),
                persistent_volume_claim: v.persistent_volume_claim.clone(),
                snapshot_id: v.snapshot_id.clone()?,
            })
        })
        .collect();
    let finished = matches!(
        status.phase,
        ApplicationBackupPhase::Completed | ApplicationBackupPhase::PartiallyFailed
    );
    if !finished || (volumes.is_empty() && status.resource_snapshot_id.is_none()) {
        return Err(MountError::ApplicationNotFinished {
            name: format!("{namespace}/{name}"),
            phase: status.phase,
            reason: status
                .failure_reason
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        });
    }
    let repository = repository_access(
        client,
        namespace,
        &ab.spec.repository,
        &format!("ApplicationBackup {namespace}/{name}"),
    )
    .await?;
    Ok(ApplicationMountTarget {
        repository,
        volumes,
        resource_snapshot_id: status.resource_snapshot_id,
    })
}

/// Reads BackupRepository `repo_name`, its password Secret and its credentials Secret (when
/// it names one), all in `namespace`; `user` names the object that refers to it.
async fn repository_access(
    client: &kube::Client,
    namespace: &str,
    repo_name: &str,
    user: &str,
) -> Result<RepositoryAccess, MountError> {
    let repo: BackupRepository = get(
        &Api::namespaced(client.clone(), namespace),
        namespace,
        repo_name,
        format!("{user} names it in spec.repository"),
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pw = &repo.spec.password_secret;
    let password_data = secret_strings(
        get(
            &secrets,
            namespace,
            &pw.name,
            format!("BackupRepository {namespace}/{repo_name} names it in spec.passwordSecret"),
        )
        .await?,
    );
    let password = password_data
        .get(&pw.key)
        .map(|p| secret_value(p).to_string())
        .ok_or_else(|| MountError::MissingKey {
            secret: format!("{namespace}/{}", pw.name),
            key: pw.key.clone(),
            repository: format!("{namespace}/{repo_name}"),
        })?;
    let credentials = match &repo.spec.credentials_secret {
        Some(c) => secret_strings(
            get(
                &secrets,
                namespace,
                &c.name,
                format!(
                    "BackupRepository {namespace}/{repo_name} names it in spec.credentialsSecret"
                ),
            )
            .await?,
        )
        .into_iter()
        .map(|(k, v)| (k, secret_value(&v).to_string()))
        .collect(),
        None => BTreeMap::new(),
    };
    Ok(RepositoryAccess {
        location: repo.spec.location,
        password,
        credentials,
        cache_dir: None,
    })
}
