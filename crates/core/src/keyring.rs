//! The keyring: the master key this handle opened with, the key files
//! that seal it under passwords (`keys/`), and their management.

use crate::crypto::{KdfParams, SealKey};
use crate::error::{Error, Result};
use crate::format::key::{
    check_key_name, key_id, KeyFile, KeyFileError, KEY_ID_HEX_LEN, LEGACY_KEY_ID_HEX_LEN,
};
use crate::format::kinds::{KeyFiles, ObjectKind};
use crate::objects::list_on;
use bytes::Bytes;
use cairn_storage::{DynStorage, StorageError};

/// A key file as listed by `key list`.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Key id.
    pub id: String,
    /// `user@host` that added it.
    pub label: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// Whether this process opened the repository with it.
    pub current: bool,
    /// Why the key file cannot be used, when it is damaged (its label and
    /// time are then empty).
    pub damaged: Option<String>,
}

/// `user@host` of the current process, for key labels and snapshots.
pub fn user_at_host() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "unknown".into())
    });
    format!("{user}@{}", hostname())
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn storage_err(location: &str) -> impl Fn(StorageError) -> Error + '_ {
    move |source| Error::Storage {
        location: location.to_string(),
        source,
    }
}

/// Reads, checks and decodes key file `id`: damage (bytes that do not
/// match a content-named id, bad structure, argon2 parameters out of
/// bounds) is found here, before any key is derived.
fn read_key_file(
    storage: &DynStorage,
    location: &str,
    id: &String,
) -> Result<Result<KeyFile, KeyFileError>> {
    let bytes = storage
        .read(&KeyFiles::path(id))
        .map_err(storage_err(location))?;
    Ok(check_key_name(id, &bytes).and_then(|_| KeyFile::decode(&bytes)))
}

/// Finds the key file `password` opens; returns the master key and the
/// key id. Damaged key files are skipped with a warning; when no key
/// opens, they are named ([`Error::DamagedKeys`]) instead of blaming the
/// password.
fn open_master_key(
    storage: &DynStorage,
    location: &str,
    password: &str,
) -> Result<([u8; 32], String)> {
    let mut keys = list_on::<KeyFiles>(storage, location)?;
    keys.sort_by(|a, b| a.path.cmp(&b.path));
    if keys.is_empty() {
        return Err(Error::corrupt(
            KeyFiles::PREFIX,
            "the repository has no key files: a key file is needed to open it; restore keys/ from a copy of the repository",
        ));
    }
    let mut damaged = Vec::new();
    let mut unverified_tried = 0;
    let mut opened = None;
    for obj in &keys {
        let id = &obj.id;
        let file = match read_key_file(storage, location, id) {
            // Removed (`key remove`) since the listing.
            Err(Error::Storage { source, .. }) if source.is_not_found() => continue,
            other => other?,
        };
        let tried = file.and_then(|file| file.open(password.as_bytes()));
        match tried {
            Ok(master) => {
                opened = Some((master, id.to_string()));
                break;
            }
            Err(KeyFileError::WrongPassword) if id.len() != KEY_ID_HEX_LEN => {
                unverified_tried += 1;
            }
            Err(KeyFileError::WrongPassword) => {}
            Err(e) => damaged.push((obj.path.clone(), e.to_string())),
        }
    }
    match opened {
        Some(found) => {
            for (path, reason) in &damaged {
                tracing::warn!(
                    "key file {path} is damaged ({reason}): remove it with `cairn key remove {}` and add its password again with `cairn key add`, or restore it from a copy of the repository",
                    path.strip_prefix(KeyFiles::PREFIX).unwrap_or(path)
                );
            }
            Ok(found)
        }
        None if !damaged.is_empty() => Err(Error::DamagedKeys {
            location: location.to_string(),
            damaged,
        }),
        None => Err(Error::WrongPassword {
            location: location.to_string(),
            hint: if unverified_tried > 0 {
                format!(
                    " (or its key file is damaged: key files with {LEGACY_KEY_ID_HEX_LEN}-digit ids, written before cairn named keys by their content, carry no checksum)"
                )
            } else {
                String::new()
            },
        }),
    }
}

/// A new key file sealing `master` under `password`: its id and bytes.
pub(crate) fn new_key_file(
    master: &[u8; 32],
    password: &str,
    kdf: KdfParams,
) -> Result<(String, Vec<u8>)> {
    if password.is_empty() {
        return Err(Error::Usage("the password must not be empty".into()));
    }
    let file = KeyFile::create(password.as_bytes(), master, kdf, user_at_host(), now_secs())
        .map_err(|e| Error::Usage(e.to_string()))?;
    let encoded = file.encode();
    Ok((key_id(&encoded), encoded))
}

/// The master key a repository handle opened with, and which key file
/// opened it.
pub struct Keyring {
    master: [u8; 32],
    key_id: String,
    key: SealKey,
}

impl Keyring {
    /// The keyring of `master`, opened through key file `key_id`.
    pub(crate) fn new(master: [u8; 32], key_id: String) -> Self {
        Self {
            key: SealKey::new(&master),
            master,
            key_id,
        }
    }

    /// Opens the master key with `password` through the first key file on
    /// `storage` it opens.
    pub(crate) fn open(storage: &DynStorage, location: &str, password: &str) -> Result<Self> {
        let (master, key_id) = open_master_key(storage, location, password)?;
        Ok(Self::new(master, key_id))
    }

    /// The key sealing the repository's metadata (config, index, snapshots,
    /// pack trailers, plans, records, locks).
    pub fn seal_key(&self) -> &SealKey {
        &self.key
    }

    /// The id of the key file this handle opened with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Adds a key file for `password`; returns its id.
    pub fn add(
        &self,
        storage: &DynStorage,
        location: &str,
        password: &str,
        kdf: KdfParams,
    ) -> Result<String> {
        let (id, encoded) = new_key_file(&self.master, password, kdf)?;
        storage
            .write(&KeyFiles::path(&id), Bytes::from(encoded))
            .map_err(storage_err(location))?;
        Ok(id)
    }

    /// Every key file.
    pub fn list(&self, storage: &DynStorage, location: &str) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for obj in list_on::<KeyFiles>(storage, location)? {
            let id = obj.id;
            let (label, created, damaged) = match read_key_file(storage, location, &id) {
                Ok(Ok(file)) => (file.label, file.created, None),
                Ok(Err(e)) => (String::new(), 0, Some(e.to_string())),
                // Removed since the listing.
                Err(e) if crate::objects::is_vanished(&e) => continue,
                Err(e) => return Err(e),
            };
            out.push(KeyInfo {
                current: id == self.key_id,
                id,
                label,
                created,
                damaged,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes the key file whose id starts with `id_prefix`. The one this
    /// handle opened with cannot be removed (use
    /// [`Keyring::change_password`]), so neither can the last.
    pub fn remove(&self, storage: &DynStorage, location: &str, id_prefix: &str) -> Result<String> {
        let keys = self.list(storage, location)?;
        let matching: Vec<_> = keys
            .iter()
            .filter(|k| k.id.starts_with(id_prefix))
            .collect();
        let key = match matching.as_slice() {
            [] => {
                return Err(Error::Usage(format!(
                    "no key {id_prefix} (see `cairn key list`)"
                )))
            }
            [k] => *k,
            _ => {
                return Err(Error::Usage(format!(
                    "several keys start with {id_prefix}; give more characters"
                )))
            }
        };
        if key.current {
            return Err(Error::Usage(
                "refusing to remove the key this command opened the repository with; use `key passwd` or open with another password".into(),
            ));
        }
        storage
            .delete(&KeyFiles::path(&key.id))
            .map_err(storage_err(location))?;
        Ok(key.id.clone())
    }

    /// Replaces the key file this handle opened with by one for
    /// `new_password`; returns the new key id.
    pub fn change_password(
        &self,
        storage: &DynStorage,
        location: &str,
        new_password: &str,
        kdf: KdfParams,
    ) -> Result<String> {
        let id = self.add(storage, location, new_password, kdf)?;
        storage
            .delete(&KeyFiles::path(&self.key_id))
            .map_err(storage_err(location))?;
        Ok(id)
    }
}
