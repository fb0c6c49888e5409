//! What a backup is of, decided before anything is read: the absolute
//! paths and the root's shape, host and source, the parent snapshot and a
//! killed run's checkpoint to match entries against; and the one place the
//! backup's [`Snapshot`] is written out, for checkpoints and the final one.

use super::{BackupOptions, ParentChoice};
use crate::error::{Error, Result};
use crate::format::snapshot::{RawPath, Snapshot, Summary, SNAPSHOT_VERSION};
use crate::format::tree::Tree;
use crate::format::{BlobId, SnapshotId};
use crate::repo::{hostname, Repository, SnapshotFilter};
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// A backup's inputs, resolved.
pub(super) struct BackupPlan {
    /// When the backup started: the snapshot's time.
    pub time: DateTime<Utc>,
    /// The paths, absolute.
    pub paths: Vec<PathBuf>,
    /// One directory is the snapshot's root itself; anything else becomes
    /// the entries of a synthetic root.
    pub root_is_dir: bool,
    pub host: String,
    pub source: String,
    /// The parent snapshot recorded.
    pub parent: Option<SnapshotId>,
    /// Root trees entries are matched against, first match first: the
    /// checkpoint a killed run left, then the parent snapshot.
    pub parents: Vec<Tree>,
    tags: Vec<String>,
    excludes: Vec<String>,
}

/// What a backup reads: its paths, absolute, and whether they are one
/// directory (the snapshot's root) or the entries of a synthetic root.
pub struct Sources {
    pub paths: Vec<PathBuf>,
    pub root_is_dir: bool,
}

impl Sources {
    /// Resolves `opts.paths` against the file system.
    pub fn resolve(opts: &BackupOptions) -> Result<Self> {
        Self::of(&opts.paths)
    }

    /// Resolves `paths` against the file system.
    pub fn of(paths_given: &[PathBuf]) -> Result<Self> {
        if paths_given.is_empty() {
            return Err(Error::Usage(
                "nothing to back up: give at least one path".into(),
            ));
        }
        let mut paths = Vec::new();
        let mut all_dirs = true;
        for p in paths_given {
            let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
            all_dirs &= std::fs::symlink_metadata(&abs)
                .map_err(|e| Error::io(&abs, e))?
                .is_dir();
            paths.push(abs);
        }
        let root_is_dir = paths.len() == 1 && all_dirs;
        Ok(Self { paths, root_is_dir })
    }

    /// The directories the walk enters first, in its order: the root, or
    /// the directories among the entries of a synthetic root.
    pub fn first_dirs(&self) -> Vec<PathBuf> {
        if self.root_is_dir {
            return self.paths.clone();
        }
        self.paths
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .cloned()
            .collect()
    }
}

impl BackupPlan {
    /// Resolves `opts` against the repository's snapshots, for `sources`.
    pub fn new(repo: &Repository, opts: &BackupOptions, sources: Sources) -> Result<Self> {
        let time = chrono::Utc::now();
        let Sources { paths, root_is_dir } = sources;
        let host = opts.host.clone().unwrap_or_else(hostname);
        let source = opts.source.clone().unwrap_or_else(|| {
            paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",")
        });
        let (parent, parents) = parents(repo, &opts.parent, &host, &source)?;
        Ok(Self {
            time,
            paths,
            root_is_dir,
            host,
            source,
            parent,
            parents,
            tags: opts.tags.clone(),
            excludes: opts.exclude_rules.clone(),
        })
    }

    /// The plan of a stream stored as the one file `name` of the snapshot
    /// (`/name` is its path; the source defaults to `stdin:name`, so the
    /// next dump of the same name finds this one as its parent).
    pub fn for_stream(repo: &Repository, opts: &BackupOptions, name: &str) -> Result<Self> {
        let time = chrono::Utc::now();
        let host = opts.host.clone().unwrap_or_else(hostname);
        let source = opts
            .source
            .clone()
            .unwrap_or_else(|| format!("stdin:{name}"));
        let (parent, _) = parents(repo, &opts.parent, &host, &source)?;
        // No walk takes the parent's trees.
        repo.forget_prefetched();
        Ok(Self {
            time,
            paths: vec![PathBuf::from("/").join(name)],
            root_is_dir: false,
            host,
            source,
            parent,
            parents: Vec::new(),
            tags: opts.tags.clone(),
            excludes: opts.exclude_rules.clone(),
        })
    }

    /// The backup's snapshot of `tree`: a checkpoint (`complete: false`)
    /// or the final one.
    pub fn snapshot(
        &self,
        tree: BlobId,
        complete: bool,
        summary: Summary,
        hooks: Vec<serde_json::Value>,
    ) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            time: self.time,
            host: self.host.clone(),
            source: self.source.clone(),
            paths: self.paths.iter().cloned().map(RawPath).collect(),
            tags: self.tags.clone(),
            tree,
            parent: self.parent,
            complete,
            summary,
            program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
            excludes: self.excludes.clone(),
            hooks,
            damaged_root: None,
        }
    }
}

/// The parent snapshot to record and the root trees to match entries
/// against: a checkpoint a killed run of the same host and source left
/// first (the files it holds are not read again), then the parent.
fn parents(
    repo: &Repository,
    choice: &ParentChoice,
    host: &str,
    source: &str,
) -> Result<(Option<SnapshotId>, Vec<Tree>)> {
    let filter = SnapshotFilter {
        source: Some(source.to_string()),
        host: Some(host.to_string()),
        tags: Vec::new(),
    };
    let earlier = match choice {
        ParentChoice::None => Vec::new(),
        _ => {
            // The index's tree level, which the parent's trees need next
            // (and any backup needs), is read while the snapshots are: on
            // an empty cache and an object store, two chains of round
            // trips at once instead of one after the other. A failure here
            // is met again, and reported, where the index is needed.
            let (listed, indexed) =
                crate::repo::together(|| repo.list_snapshots(), || repo.reach_tree_level());
            if let Err(e) = indexed {
                tracing::debug!("reading the index beside the snapshots: {e}");
            }
            listed?
        }
    };
    let parent = match choice {
        ParentChoice::None => None,
        ParentChoice::Given(id) => Some(*id),
        ParentChoice::Auto => earlier
            .iter()
            .rev()
            .find(|(_, s)| s.complete && filter.matches(s))
            .map(|(id, _)| *id),
    };
    let resumed = earlier
        .iter()
        .rev()
        .find(|(_, s)| !s.complete && filter.matches(s))
        .map(|(id, _)| *id);
    let mut trees = Vec::new();
    if let Some(id) = resumed {
        if let Some(tree) = parent_root(repo, &id, "checkpoint")? {
            tracing::info!("resuming from checkpoint {}", id.short());
            trees.push(tree);
        }
    }
    if let Some(id) = parent {
        trees.extend(parent_root(repo, &id, "parent snapshot")?);
    }
    Ok((parent, trees))
}

/// The root tree of snapshot `id`, to match entries against. One that
/// cannot be read only costs speed: every file is read again, and what the
/// backup meets is recorded as damage.
fn parent_root(repo: &Repository, id: &SnapshotId, what: &str) -> Result<Option<Tree>> {
    match repo.load_snapshot(id).and_then(|snap| {
        // Its trees arrive in a few parallel reads (the root with the
        // pack holding it) instead of one round trip per directory during
        // the walk, and are kept decoded for the walk; a tree the prefetch
        // could not fetch is read here or by the walk, which report it.
        crate::prefetch::prefetch_parent(repo, &snap.tree)?;
        repo.load_tree(&snap.tree)
    }) {
        Ok(tree) => Ok(Some(tree)),
        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
            tracing::warn!(
                "{what} {} cannot be read ({e}); reading its files again",
                id.short()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
