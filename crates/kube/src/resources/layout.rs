//! The resource snapshot's tree: `resources/<namespace>/<group>/<Kind>/<name>.yaml` (core
//! group written `core`; a Namespace object sits under its own name) and `application.json`
//! at the root, which says what the backup held.

use super::{group_dir, group_of, name_of, namespace_of};
use crate::crd::ApplicationBackupSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The directory holding the manifests.
pub const RESOURCES_DIR: &str = "resources";
/// The file describing the backup.
pub const MANIFEST_FILE: &str = "application.json";
/// Version of `application.json`.
pub const MANIFEST_VERSION: u32 = 1;

/// Tree and manifest failures.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A name that cannot be a file name (Kubernetes never issues one).
    #[error("{what} {name:?} cannot be written as a file name")]
    BadName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file that is not what the layout says.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn safe<'a>(what: &'static str, name: &'a str) -> Result<&'a str, LayoutError> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(LayoutError::BadName {
            what,
            name: name.into(),
        });
    }
    Ok(name)
}

/// Where an object is written, relative to the snapshot root: `resources/<dir
/// namespace>/<group>/<Kind>/<name>.yaml`. `dir_namespace` is the object's namespace, or
/// for a Namespace object its own name.
pub fn object_path(
    dir_namespace: &str,
    group: &str,
    kind: &str,
    name: &str,
) -> Result<PathBuf, LayoutError> {
    Ok(Path::new(RESOURCES_DIR)
        .join(safe("namespace", dir_namespace)?)
        .join(safe("group", group_dir(group))?)
        .join(safe("kind", kind)?)
        .join(format!("{}.yaml", safe("name", name)?)))
}

/// Writes `object` (which carries `apiVersion` and `kind`) under `root`; returns the path.
pub fn write_object(root: &Path, object: &Value) -> Result<PathBuf, LayoutError> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let group = group_of(object["apiVersion"].as_str().unwrap_or_default());
    let name = name_of(object);
    let dir_ns = match namespace_of(object) {
        Some(ns) => ns,
        None if kind == "Namespace" && group.is_empty() => name,
        None => {
            return Err(LayoutError::BadName {
                what: "namespace of a cluster-scoped object",
                name: format!("{kind}/{name}"),
            })
        }
    };
    let path = root.join(object_path(dir_ns, group, kind, name)?);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let text = serde_yaml::to_string(object).map_err(|e| LayoutError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(path)
}

/// One manifest read back from a tree.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedObject {
    /// Path relative to the root.
    pub path: PathBuf,
    /// The object.
    pub object: Value,
}

/// Every manifest under `root/resources`, in path order. A file that is not a Kubernetes
/// object (no `apiVersion`, `kind` or `metadata.name`) is an error: the tree is cairn's.
pub fn read_tree(root: &Path) -> Result<Vec<CapturedObject>, LayoutError> {
    let mut files = Vec::new();
    let base = root.join(RESOURCES_DIR);
    if !base.exists() {
        return Ok(Vec::new());
    }
    let mut dirs = vec![base];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let object: Value = serde_yaml::from_str(&text).map_err(|e| LayoutError::Parse {
            path: rel.display().to_string(),
            message: e.to_string(),
        })?;
        if !object["apiVersion"].is_string()
            || !object["kind"].is_string()
            || name_of(&object).is_empty()
        {
            return Err(LayoutError::Parse {
                path: rel.display().to_string(),
                message:
                    "not a Kubernetes object (apiVersion, kind and metadata.name are required)"
                        .into(),
            });
        }
        out.push(CapturedObject { path: rel, object });
    }
    Ok(out)
}

/// `application.json`: what an application backup held.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationManifest {
    /// Version of this file ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The ApplicationBackup's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its spec when it ran.
    pub spec: ApplicationBackupSpec,
    /// Namespaces captured.
    pub namespaces: Vec<String>,
    /// Its volumes and where their data is.
    pub volumes: Vec<ManifestVolume>,
    /// Manifests written under `resources/`.
    pub resource_count: u32,
}

/// One volume of the backup in `application.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestVolume {
    /// Namespace of the PVC.
    pub namespace: String,
    /// PVC name.
    pub persistent_volume_claim: String,
    /// Repository snapshot holding its data; absent when its upload failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The VolumeSnapshot cut for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_name: Option<String>,
    /// StorageClass of the PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requested size (`10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// Writes `application.json` under `root`.
pub fn write_manifest(root: &Path, manifest: &ApplicationManifest) -> Result<(), LayoutError> {
    let path = root.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(manifest).map_err(|e| LayoutError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(&path, text + "\n").map_err(io(&path))
}

/// Reads `application.json` under `root`.
pub fn read_manifest(root: &Path) -> Result<ApplicationManifest, LayoutError> {
    let path = root.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| LayoutError::Parse {
        path: path.display().to_string(),
        message: format!("{e}: not a cairn application manifest"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_layout_and_refuse_escapes() {
        assert_eq!(
            object_path("shop", "", "Secret", "db").unwrap(),
            Path::new("resources/shop/core/Secret/db.yaml")
        );
        assert_eq!(
            object_path("shop", "apps", "Deployment", "web").unwrap(),
            Path::new("resources/shop/apps/Deployment/web.yaml")
        );
        assert!(object_path("shop", "", "Secret", "../x").is_err());
        assert!(object_path("..", "", "Secret", "x").is_err());
    }
}
