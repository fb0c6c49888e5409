//! `cairn kube mount VOLUMEBACKUP DIR`: resolve a VolumeBackup to its repository, password,
//! credentials and snapshot id through the cluster API, for the CLI to FUSE-mount locally.

use crate::crd::{BackupRepository, VolumeBackup, VolumeBackupPhase};
use crate::job::RepositoryAccess;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use std::collections::BTreeMap;

/// Why a VolumeBackup cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// An object is missing or the API refused.
    #[error("{what}: {source}")]
    Api {
        /// What was being read.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// The backup has no snapshot (yet).
    #[error("VolumeBackup {0} is {1:?}, not Completed: there is no snapshot to mount yet")]
    NotCompleted(String, VolumeBackupPhase),
    /// A Secret lacks the key the repository names.
    #[error(
        "Secret {secret} has no key {key:?}; fix passwordSecret in BackupRepository {repository}"
    )]
    MissingKey {
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
        /// Repository name.
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

/// Resolves `namespace/name` to its repository access and snapshot id.
pub async fn resolve_mount(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<MountTarget, MountError> {
    let err = |what: String| move |source| MountError::Api { what, source };
    let vb = Api::<VolumeBackup>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(err(format!("reading VolumeBackup {namespace}/{name}")))?;
    let status = vb.status.unwrap_or_default();
    let Some(snapshot_id) = status
        .snapshot_id
        .filter(|_| status.phase == VolumeBackupPhase::Completed)
    else {
        return Err(MountError::NotCompleted(
            format!("{namespace}/{name}"),
            status.phase,
        ));
    };
    let repo_name = vb.spec.repository;
    let repo = Api::<BackupRepository>::namespaced(client.clone(), namespace)
        .get(&repo_name)
        .await
        .map_err(err(format!(
            "reading BackupRepository {namespace}/{repo_name}"
        )))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pw = &repo.spec.password_secret;
    let password_data = secret_strings(
        secrets
            .get(&pw.name)
            .await
            .map_err(err(format!("reading Secret {namespace}/{}", pw.name)))?,
    );
    let password = password_data
        .get(&pw.key)
        .cloned()
        .ok_or_else(|| MountError::MissingKey {
            secret: pw.name.clone(),
            key: pw.key.clone(),
            repository: repo_name.clone(),
        })?;
    let credentials = match &repo.spec.credentials_secret {
        Some(c) => secret_strings(
            secrets
                .get(&c.name)
                .await
                .map_err(err(format!("reading Secret {namespace}/{}", c.name)))?,
        ),
        None => BTreeMap::new(),
    };
    Ok(MountTarget {
        repository: RepositoryAccess {
            location: repo.spec.location,
            password,
            credentials,
            cache_dir: None,
        },
        snapshot_id,
    })
}
