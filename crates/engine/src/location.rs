//! The location-level operations of [`CoreEngine`](crate::CoreEngine) that the KDMP
//! executor needs beyond one repository's backup and restore: what a location holds,
//! creating a repository, finding the repositories under a folder, forgetting one snapshot.

use crate::{core_error, open, open_storage, permanent};
use cairn_core::format::config::CONFIG_PATH;
use cairn_core::format::header::HEADER_PATH;
use cairn_core::format::kinds::{
    IndexSegments, InitClaims, KeyFiles, ObjectKind, Packs, Snapshots,
};
use cairn_core::{InitOptions, OpenOptions, Repository};
use cairn_kube::job::{EngineError, LocationContent, RepositoryAccess};
use cairn_storage::DynStorage;

/// The object kopia writes at the root of its repositories; on a file system it is stored
/// as `kopia.repository.f`.
const KOPIA_MARKERS: [&str; 2] = ["kopia.repository", "kopia.repository.f"];

/// Objects only a cairn repository holds (its header may be damaged or missing).
/// Where `Repository::init` keeps its claims while it runs.
const INIT_CLAIMS: &str = <InitClaims as ObjectKind>::PREFIX;
const CAIRN_OBJECTS: [&str; 5] = [
    CONFIG_PATH,
    KeyFiles::PREFIX,
    IndexSegments::PREFIX,
    Snapshots::PREFIX,
    Packs::PREFIX,
];

fn storage(access: &RepositoryAccess) -> Result<DynStorage, EngineError> {
    open_storage(access).map_err(|e| EngineError {
        retryable: e.is_temporary(),
        message: format!("opening the storage at {}: {e}", access.location),
    })
}

fn storage_error(location: &str, e: cairn_storage::StorageError) -> EngineError {
    EngineError {
        retryable: e.is_temporary(),
        message: format!("reading {location}: {e}"),
    }
}

/// Whether object `path` exists.
fn exists(storage: &DynStorage, path: &str) -> Result<bool, EngineError> {
    match storage.stat(path) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(storage_error(&storage.location(), e)),
    }
}

/// Every object under `prefix`; a folder that does not exist is empty.
fn list(storage: &DynStorage, prefix: &str) -> Result<Vec<String>, EngineError> {
    match storage.list(prefix) {
        Ok(list) => Ok(list.into_iter().map(|o| o.path).collect()),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(storage_error(&storage.location(), e)),
    }
}

pub fn inspect_location(access: &RepositoryAccess) -> Result<LocationContent, EngineError> {
    let storage = storage(access)?;
    if exists(&storage, HEADER_PATH)? {
        return Ok(LocationContent::Cairn);
    }
    for marker in KOPIA_MARKERS {
        if exists(&storage, marker)? {
            return Ok(LocationContent::Kopia);
        }
    }
    let objects = list(&storage, "")?;
    // Another process is creating the repository (it holds a claim and may have written
    // the config and key but not yet the header): creating it here waits for that one and
    // then finds the repository, where opening it now could meet half of it.
    if objects.iter().any(|p| p.starts_with(INIT_CLAIMS)) {
        return Ok(LocationContent::Empty);
    }
    let cairn = |p: &String| {
        CAIRN_OBJECTS
            .iter()
            .any(|o| p == o || (o.ends_with('/') && p.starts_with(o)))
    };
    if objects.iter().any(cairn) {
        return Ok(LocationContent::Cairn);
    }
    Ok(match objects.into_iter().min() {
        None => LocationContent::Empty,
        Some(first) => LocationContent::Unknown(first),
    })
}

pub fn init_repository(
    access: &RepositoryAccess,
    zstd_level: Option<i32>,
) -> Result<(), EngineError> {
    let storage = storage(access)?;
    let mut opts = InitOptions::default();
    if let Some(level) = zstd_level {
        opts.zstd_level = level;
    }
    let open = OpenOptions {
        cache_dir: access.cache_dir.clone(),
        tolerate_damage: false,
    };
    Repository::init(storage, &access.password, &opts, &open)
        .map(drop)
        .map_err(|e| core_error("creating the repository", e))
}

pub fn list_repositories(location: &RepositoryAccess) -> Result<Vec<String>, EngineError> {
    let storage = storage(location)?;
    let suffix = format!("/{HEADER_PATH}");
    let mut names: Vec<String> = list(&storage, "")?
        .into_iter()
        .filter_map(|p| {
            let dir = p.strip_suffix(&suffix)?;
            (!dir.is_empty() && !dir.contains('/')).then(|| dir.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

pub fn forget_snapshot(access: &RepositoryAccess, id: &str) -> Result<bool, EngineError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(permanent(format!(
            "snapshot id {id:?} is not a cairn snapshot id (hexadecimal)"
        )));
    }
    let repo = open(access)?;
    let listed = repo
        .list_snapshots()
        .map_err(|e| core_error("listing snapshots", e))?;
    let Some((sid, _)) = listed
        .into_iter()
        .find(|(sid, _)| sid.to_hex().eq_ignore_ascii_case(id))
    else {
        return Ok(false);
    };
    repo.delete_snapshot(&sid)
        .map_err(|e| core_error(&format!("forgetting snapshot {id}"), e))?;
    Ok(true)
}
