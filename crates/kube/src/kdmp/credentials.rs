//! The backup location as KDMP hands it to its executor: one file per key of the credential
//! Secret mounted at `/etc/cred-secret`, turned into a cairn repository location, its
//! password and the storage credentials cairn-storage reads from the environment.
//!
//! Keys: `type` (`s3`, `azure`, `google`, `nfs`), `password` (the repository password) and
//! `path` (bucket or container); S3 `accessKey`, `secretAccessKey`, `endpoint`, `region`,
//! `disablessl`, `sse`; Azure `storageaccountname`, `storageaccountkey`, `environment`;
//! Google `projectid`, `accountkey`; NFS `serverAddr`, `subPath`. Every error names the key.

use crate::job::RepositoryAccess;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where KDMP mounts the credential Secret in its job pods.
pub const CRED_SECRET_DIR: &str = "/etc/cred-secret";

/// Where KDMP mounts an NFS backup location in its job pods.
pub const NFS_TARGET_DIR: &str = "/mnt/nfs-target";

/// Folder of the location under which KDMP keeps one repository per volume.
pub const GENERIC_BACKUP_DIR: &str = "generic-backup";

/// A credential Secret that cannot describe a backup location.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A key the location type needs is absent or empty.
    #[error(
        "the KDMP credential Secret has no {key:?} key (needed for a {kind} backup location); \
         check the BackupLocation the backup names"
    )]
    Missing {
        /// The key.
        key: &'static str,
        /// The location type, or `any` for the keys every location needs.
        kind: &'static str,
    },
    /// A key's value cannot be used.
    #[error("the KDMP credential Secret's {key:?} key is not usable: {reason}")]
    Malformed {
        /// The key.
        key: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The mounted Secret could not be read.
    #[error("reading the KDMP credential Secret at {path}: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The storage service of a KDMP backup location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationKind {
    /// S3 or an S3-compatible server.
    S3,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Google,
    /// An NFS export mounted at [`NFS_TARGET_DIR`].
    Nfs,
}

/// A KDMP backup location, ready to name cairn repositories inside it. Secrets are redacted
/// from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KdmpLocation {
    /// The storage service.
    pub kind: LocationKind,
    /// URL of the location's root, without options: `s3://bucket`, `file:///mnt/nfs-target/p`.
    root: String,
    /// URL options (`?endpoint=...&region=...`), or empty.
    options: String,
    /// The repository password.
    pub password: String,
    /// Storage credentials as environment variables (`AWS_ACCESS_KEY_ID`, ...).
    pub credentials: BTreeMap<String, String>,
}

impl std::fmt::Debug for KdmpLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdmpLocation")
            .field("kind", &self.kind)
            .field("root", &self.root)
            .field("options", &self.options)
            .field("password", &"<redacted>")
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KdmpLocation {
    /// Reads the mounted Secret in `dir` (one file per key); an NFS location is looked for
    /// under `nfs_root`.
    pub fn read_dir(dir: &Path, nfs_root: &Path) -> Result<KdmpLocation, CredentialError> {
        let read_err = |path: &Path, source| CredentialError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
            let entry = entry.map_err(|e| read_err(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Secret volumes hold `..data` and timestamped directories next to the keys.
            if name.starts_with('.') || entry.path().is_dir() {
                continue;
            }
            let text =
                std::fs::read_to_string(entry.path()).map_err(|e| read_err(&entry.path(), e))?;
            files.insert(name, text);
        }
        KdmpLocation::from_files(&files, dir, nfs_root)
    }

    /// The location the Secret's keys (`files`: key -> content) describe. `secret_dir` is
    /// where the keys are mounted (a Google account key is read from there by path).
    pub fn from_files(
        files: &BTreeMap<String, String>,
        secret_dir: &Path,
        nfs_root: &Path,
    ) -> Result<KdmpLocation, CredentialError> {
        let keys = Keys(files);
        let kind = match keys.required("type", "any")?.as_str() {
            "s3" => LocationKind::S3,
            "azure" => LocationKind::Azure,
            "google" => LocationKind::Google,
            "nfs" => LocationKind::Nfs,
            other => {
                return Err(CredentialError::Malformed {
                    key: "type",
                    reason: format!("{other:?}: expected s3, azure, google or nfs"),
                })
            }
        };
        // The password is used exactly as stored, less the newline `--from-file` adds.
        let password = match files.get("password") {
            Some(p) if !p.trim().is_empty() => crate::job::secret_value(p).to_string(),
            _ => {
                return Err(CredentialError::Missing {
                    key: "password",
                    kind: "any",
                })
            }
        };
        let mut credentials = BTreeMap::new();
        let (root, options) = match kind {
            LocationKind::S3 => {
                let bucket = bucket_path(&keys.required("path", "s3")?)?;
                credentials.insert(
                    "AWS_ACCESS_KEY_ID".to_string(),
                    keys.required("accessKey", "s3")?,
                );
                credentials.insert(
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    keys.required("secretAccessKey", "s3")?,
                );
                let disable_ssl = match keys.optional("disablessl").as_deref() {
                    None => false,
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(v) => {
                        return Err(CredentialError::Malformed {
                            key: "disablessl",
                            reason: format!("{v:?}: expected true or false"),
                        })
                    }
                };
                if let Some(sse) = keys.optional("sse") {
                    return Err(CredentialError::Malformed {
                        key: "sse",
                        reason: format!(
                            "{sse:?}: cairn does not request server-side encryption (it \
                             encrypts every object itself before upload); remove the \
                             encryption setting from the BackupLocation, or use the bucket's \
                             default encryption"
                        ),
                    });
                }
                let endpoint = s3_endpoint(&keys.required("endpoint", "s3")?, disable_ssl)?;
                let region = keys.optional("region");
                let mut opts = Vec::new();
                if let Some(endpoint) = endpoint {
                    opts.push(format!("endpoint={endpoint}"));
                } else if region.is_none() {
                    return Err(CredentialError::Missing {
                        key: "region",
                        kind: "AWS s3",
                    });
                }
                if let Some(region) = region {
                    if !region
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(CredentialError::Malformed {
                            key: "region",
                            reason: format!("{region:?}: expected a region name like us-east-1"),
                        });
                    }
                    opts.push(format!("region={region}"));
                }
                (format!("s3://{bucket}"), opts)
            }
            LocationKind::Azure => {
                let container = bucket_path(&keys.required("path", "azure")?)?;
                let account = keys.required("storageaccountname", "azure")?;
                if !account.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(CredentialError::Malformed {
                        key: "storageaccountname",
                        reason: format!("{account:?}: expected letters and digits"),
                    });
                }
                credentials.insert(
                    "AZURE_STORAGE_KEY".to_string(),
                    keys.required("storageaccountkey", "azure")?,
                );
                let suffix = match keys.optional("environment").as_deref() {
                    None | Some("AzurePublicCloud") => "core.windows.net",
                    Some("AzureChinaCloud") => "core.chinacloudapi.cn",
                    Some("AzureUSGovernmentCloud") => "core.usgovcloudapi.net",
                    Some("AzureGermanCloud") => "core.cloudapi.de",
                    Some(other) => {
                        return Err(CredentialError::Malformed {
                            key: "environment",
                            reason: format!(
                                "{other:?}: expected AzurePublicCloud, AzureChinaCloud, \
                                 AzureUSGovernmentCloud or AzureGermanCloud"
                            ),
                        })
                    }
                };
                let opts = vec![
                    format!("account={account}"),
                    format!("endpoint=https://{account}.blob.{suffix}"),
                ];
                (format!("azblob://{container}"), opts)
            }
            LocationKind::Google => {
                let bucket = bucket_path(&keys.required("path", "google")?)?;
                keys.required("projectid", "google")?;
                let key = keys.required("accountkey", "google")?;
                let json: Result<serde_json::Map<String, serde_json::Value>, _> =
                    serde_json::from_str(&key);
                if let Err(e) = json {
                    return Err(CredentialError::Malformed {
                        key: "accountkey",
                        reason: format!("expected a service account's JSON key file: {e}"),
                    });
                }
                credentials.insert(
                    "GOOGLE_APPLICATION_CREDENTIALS".to_string(),
                    secret_dir.join("accountkey").display().to_string(),
                );
                (format!("gcs://{bucket}"), Vec::new())
            }
            LocationKind::Nfs => {
                // The pod mounts serverAddr:subPath at the NFS root; cairn only needs the
                // mount, but a Secret without the server is not an NFS location.
                keys.required("serverAddr", "nfs")?;
                let mut dir = nfs_root.to_path_buf();
                if let Some(path) = keys.optional("path") {
                    let relative = path.trim_matches('/');
                    if relative.split('/').any(|s| s == "..") {
                        return Err(CredentialError::Malformed {
                            key: "path",
                            reason: format!("{path:?}: must not leave the NFS export (..)"),
                        });
                    }
                    if !relative.is_empty() {
                        dir.push(relative);
                    }
                }
                let dir = dir.display().to_string();
                (format!("file://{dir}"), Vec::new())
            }
        };
        let options = if options.is_empty() {
            String::new()
        } else {
            format!("?{}", options.join("&"))
        };
        Ok(KdmpLocation {
            kind,
            root,
            options,
            password,
            credentials,
        })
    }

    /// The URL of the repository in `dir` (a path inside the location, such as
    /// `generic-backup/ns-pvc/`), with the location's options.
    pub fn repository_url(&self, dir: &str) -> String {
        let dir = dir.trim_matches('/');
        if dir.is_empty() {
            format!("{}{}", self.root, self.options)
        } else {
            format!("{}/{dir}{}", self.root, self.options)
        }
    }

    /// How to open the repository in `dir` (see [`KdmpLocation::repository_url`]).
    pub fn access(&self, dir: &str, cache_dir: Option<PathBuf>) -> RepositoryAccess {
        RepositoryAccess {
            location: self.repository_url(dir),
            password: self.password.clone(),
            credentials: self.credentials.clone(),
            cache_dir,
        }
    }
}

/// The Secret's keys, trimmed; an empty value counts as absent.
struct Keys<'a>(&'a BTreeMap<String, String>);

impl Keys<'_> {
    fn optional(&self, key: &str) -> Option<String> {
        self.0
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &'static str, kind: &'static str) -> Result<String, CredentialError> {
        self.optional(key)
            .ok_or(CredentialError::Missing { key, kind })
    }
}

/// A bucket or container, optionally with a prefix (`bucket/team-a`), without the slashes
/// around it.
fn bucket_path(path: &str) -> Result<String, CredentialError> {
    let trimmed = path.trim_matches('/');
    let bucket = trimmed.split('/').next().unwrap_or_default();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/');
    if bucket.is_empty() || !trimmed.chars().all(allowed) || trimmed.split('/').any(|s| s == "..") {
        return Err(CredentialError::Malformed {
            key: "path",
            reason: format!("{path:?}: expected a bucket or container name"),
        });
    }
    Ok(trimmed.to_string())
}

/// The endpoint option for a KDMP S3 endpoint (`minio.example:9000`, with or without a
/// scheme): None for AWS itself (`s3.amazonaws.com`), where the region picks the endpoint.
fn s3_endpoint(endpoint: &str, disable_ssl: bool) -> Result<Option<String>, CredentialError> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((other, _)) => {
            return Err(CredentialError::Malformed {
                key: "endpoint",
                reason: format!("{other:?} scheme: expected host[:port], http:// or https://"),
            })
        }
        None if disable_ssl => ("http", endpoint),
        None => ("https", endpoint),
    };
    let host = rest.trim_end_matches('/');
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(CredentialError::Malformed {
            key: "endpoint",
            reason: format!("{endpoint:?}: expected host[:port]"),
        });
    }
    if host == "s3.amazonaws.com" {
        return Ok(None);
    }
    Ok(Some(format!("{scheme}://{host}")))
}
