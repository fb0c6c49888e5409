//! The virtual directories above the snapshots: which names appear in
//! `snapshots/`, `sources/<source>/`, `tags/<tag>/` and `hosts/<host>/`,
//! computed from a snapshot list. Pure: no I/O, no inodes.
//!
//! Naming rules (documented in docs/MOUNT.md):
//! - times are UTC, `2026-11-21T06-02-05Z` (no `:`, so the names work on
//!   any tool and in URLs);
//! - `snapshots/<time>-<short id>`; a checkpoint of an unfinished backup
//!   gets `-incomplete` appended and appears only there;
//! - `sources/<source>/<time>`, with `-<short id>` appended to every name
//!   of a second that two snapshots of the source share, and a `latest`
//!   symlink to the newest one;
//! - `tags/<tag>/<time>-<short id>` and `hosts/<host>/<time>-<short id>`;
//! - source, tag and host names are percent-encoded into one path
//!   component: `%` -> `%25`, `/` -> `%2F`, NUL -> `%00`, and a name that is
//!   `.` or `..` has every byte encoded (`%2E`), and the empty name is a
//!   lone `%`; so `/data/vol` becomes `%2Fdata%2Fvol`. The encoding is
//!   reversible.

use cairn_core::format::BlobId;
use cairn_core::{Snapshot, SnapshotId};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A snapshot as the mount shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapInfo {
    /// Snapshot id.
    pub id: SnapshotId,
    /// Root tree.
    pub tree: BlobId,
    /// When the backup started.
    pub time: DateTime<Utc>,
}

/// A virtual directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum VDir {
    /// The mount's root.
    Root,
    /// `snapshots/`.
    Snapshots,
    /// `sources/`.
    Sources,
    /// `sources/<source>/` (the source's raw name).
    Source(String),
    /// `tags/`.
    Tags,
    /// `tags/<tag>/`.
    Tag(String),
    /// `hosts/`.
    Hosts,
    /// `hosts/<host>/`.
    Host(String),
    /// A directory of a named mount ([`Layout::named`]), by its `/`-joined path from the
    /// root (`volumes/shop`).
    Named(String),
}

/// What a name in a virtual directory refers to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum VEntry {
    /// Another virtual directory.
    Dir(VDir),
    /// A snapshot's root directory.
    Snap(Arc<SnapInfo>),
    /// A symlink (`latest`) with this target.
    Link(String),
}

/// The virtual directories of one snapshot list.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    dirs: HashMap<VDir, BTreeMap<String, VEntry>>,
    /// Ids of every snapshot listed, to notice new ones.
    pub ids: Vec<SnapshotId>,
    /// Time of the newest snapshot (times of the virtual directories).
    pub newest: Option<DateTime<Utc>>,
}

/// `2026-11-21T06-02-05Z`.
pub(crate) fn time_name(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H-%M-%SZ").to_string()
}

/// Encodes a source, tag or host name into one path component.
pub(crate) fn encode_component(name: &str) -> String {
    if name.is_empty() {
        // A lone `%` cannot come from any other name: `%` is always `%25`.
        return "%".into();
    }
    if name == "." || name == ".." {
        return "%2E".repeat(name.len());
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

impl Layout {
    /// Builds the virtual directories of `snapshots` (any order).
    pub fn build(snapshots: &[(SnapshotId, Snapshot)]) -> Self {
        let mut sorted: Vec<&(SnapshotId, Snapshot)> = snapshots.iter().collect();
        cairn_core::repo::sort_snapshots(&mut sorted);
        let mut dirs: HashMap<VDir, BTreeMap<String, VEntry>> = HashMap::new();
        let root = dirs.entry(VDir::Root).or_default();
        for (name, dir) in [
            ("snapshots", VDir::Snapshots),
            ("sources", VDir::Sources),
            ("tags", VDir::Tags),
            ("hosts", VDir::Hosts),
        ] {
            root.insert(name.into(), VEntry::Dir(dir));
        }
        for d in [VDir::Snapshots, VDir::Sources, VDir::Tags, VDir::Hosts] {
            dirs.entry(d).or_default();
        }
        // Per source: (time name, snapshot) in time order, to resolve collisions.
        let mut by_source: BTreeMap<&str, Vec<Arc<SnapInfo>>> = BTreeMap::new();
        for (id, snap) in &sorted {
            let info = Arc::new(SnapInfo {
                id: *id,
                tree: snap.tree,
                time: snap.time,
            });
            let long = format!("{}-{}", time_name(&snap.time), id.short());
            let flat = if snap.complete {
                long.clone()
            } else {
                format!("{long}-incomplete")
            };
            insert_unique(&mut dirs, VDir::Snapshots, flat, id, &info);
            if !snap.complete {
                continue;
            }
            by_source
                .entry(&snap.source)
                .or_default()
                .push(info.clone());
            let host = VDir::Host(snap.host.clone());
            dirs.get_mut(&VDir::Hosts)
                .expect("hosts dir")
                .insert(encode_component(&snap.host), VEntry::Dir(host.clone()));
            insert_unique(&mut dirs, host, long.clone(), id, &info);
            for tag in &snap.tags {
                let t = VDir::Tag(tag.clone());
                dirs.get_mut(&VDir::Tags)
                    .expect("tags dir")
                    .insert(encode_component(tag), VEntry::Dir(t.clone()));
                insert_unique(&mut dirs, t, long.clone(), id, &info);
            }
        }
        for (source, snaps) in by_source {
            let dir = VDir::Source(source.to_string());
            dirs.get_mut(&VDir::Sources)
                .expect("sources dir")
                .insert(encode_component(source), VEntry::Dir(dir.clone()));
            let mut per_second: HashMap<String, usize> = HashMap::new();
            for s in &snaps {
                *per_second.entry(time_name(&s.time)).or_default() += 1;
            }
            let entries = dirs.entry(dir.clone()).or_default();
            let mut newest = None;
            for s in &snaps {
                let t = time_name(&s.time);
                let name = if per_second[&t] > 1 {
                    format!("{t}-{}", s.id.short())
                } else {
                    t
                };
                entries.insert(name.clone(), VEntry::Snap(s.clone()));
                newest = Some(name);
            }
            if let Some(n) = newest {
                entries.insert("latest".into(), VEntry::Link(n));
            }
        }
        Layout {
            dirs,
            ids: sorted.iter().map(|(id, _)| *id).collect(),
            newest: sorted.last().map(|(_, s)| s.time),
        }
    }

    /// The directories of a named mount: each snapshot tree at its path of components
    /// (`["volumes", "shop", "data"]`), with the directories above it. The caller checks
    /// that paths are non-empty, that components are plain names, and that no path is a
    /// prefix of another.
    pub fn named(entries: &[(Vec<String>, Arc<SnapInfo>)]) -> Self {
        let mut dirs: HashMap<VDir, BTreeMap<String, VEntry>> = HashMap::new();
        dirs.entry(VDir::Root).or_default();
        for (path, info) in entries {
            let Some((last, parents)) = path.split_last() else {
                continue;
            };
            let mut dir = VDir::Root;
            for (i, name) in parents.iter().enumerate() {
                let child = VDir::Named(path[..=i].join("/"));
                dirs.entry(dir)
                    .or_default()
                    .entry(name.clone())
                    .or_insert_with(|| VEntry::Dir(child.clone()));
                dirs.entry(child.clone()).or_default();
                dir = child;
            }
            dirs.entry(dir)
                .or_default()
                .insert(last.clone(), VEntry::Snap(info.clone()));
        }
        Layout {
            dirs,
            ids: entries.iter().map(|(_, i)| i.id).collect(),
            newest: entries.iter().map(|(_, i)| i.time).max(),
        }
    }

    /// The entries of `dir`, sorted by name; `None` if it no longer exists.
    pub fn list(&self, dir: &VDir) -> Option<&BTreeMap<String, VEntry>> {
        self.dirs.get(dir)
    }

    /// One entry of `dir`.
    pub fn get(&self, dir: &VDir, name: &str) -> Option<&VEntry> {
        self.dirs.get(dir)?.get(name)
    }
}

/// Inserts `name` into `dir`; should the name be taken (same second and
/// same 8-hex prefix), the full id is used instead.
fn insert_unique(
    dirs: &mut HashMap<VDir, BTreeMap<String, VEntry>>,
    dir: VDir,
    name: String,
    id: &SnapshotId,
    info: &Arc<SnapInfo>,
) {
    let entries = dirs.entry(dir).or_default();
    let name = if entries.contains_key(&name) {
        format!("{}-{}", time_name(&info.time), id.to_hex())
    } else {
        name
    };
    entries.insert(name, VEntry::Snap(info.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::format::snapshot::SNAPSHOT_VERSION;
    use cairn_core::format::Id;

    fn snap(
        n: u8,
        secs: i64,
        source: &str,
        host: &str,
        tags: &[&str],
        complete: bool,
    ) -> (SnapshotId, Snapshot) {
        (
            SnapshotId(Id([n; 32])),
            Snapshot {
                version: SNAPSHOT_VERSION,
                time: DateTime::from_timestamp(secs, 0).expect("valid time"),
                host: host.into(),
                source: source.into(),
                paths: vec![],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                tree: BlobId(Id([n; 32])),
                parent: None,
                complete,
                summary: Default::default(),
                program_version: String::new(),
                excludes: vec![],
                hooks: vec![],
                damaged_root: None,
            },
        )
    }

    fn names(l: &Layout, d: &VDir) -> Vec<String> {
        l.list(d)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn names_are_utc_without_colons() {
        let t = DateTime::from_timestamp(1_795_500_125, 0).expect("valid");
        assert_eq!(time_name(&t), "2026-11-24T06-02-05Z");
    }

    #[test]
    fn components_are_reversibly_encoded() {
        assert_eq!(encode_component("/data/vol"), "%2Fdata%2Fvol");
        assert_eq!(encode_component("50%/x"), "50%25%2Fx");
        assert_eq!(encode_component(".."), "%2E%2E");
        assert_eq!(encode_component("."), "%2E");
        assert_eq!(encode_component("plain"), "plain");
        assert_eq!(encode_component(""), "%");
    }

    #[test]
    fn layout_lists_every_view() {
        let l = Layout::build(&[
            snap(2, 200, "/data/vol", "h1", &["daily"], true),
            snap(1, 100, "/data/vol", "h1", &["daily", "x/y"], true),
            snap(3, 300, "/other", "h2", &[], false),
        ]);
        assert_eq!(
            names(&l, &VDir::Root),
            ["hosts", "snapshots", "sources", "tags"]
        );
        assert_eq!(
            names(&l, &VDir::Snapshots),
            [
                "1970-01-01T00-01-40Z-01010101",
                "1970-01-01T00-03-20Z-02020202",
                "1970-01-01T00-05-00Z-03030303-incomplete"
            ]
        );
        // The incomplete snapshot appears nowhere else.
        assert_eq!(names(&l, &VDir::Sources), ["%2Fdata%2Fvol"]);
        let src = VDir::Source("/data/vol".into());
        assert_eq!(
            names(&l, &src),
            ["1970-01-01T00-01-40Z", "1970-01-01T00-03-20Z", "latest"]
        );
        assert_eq!(
            l.get(&src, "latest"),
            Some(&VEntry::Link("1970-01-01T00-03-20Z".into()))
        );
        assert_eq!(names(&l, &VDir::Tags), ["daily", "x%2Fy"]);
        assert_eq!(names(&l, &VDir::Tag("x/y".into())).len(), 1);
        assert_eq!(names(&l, &VDir::Hosts), ["h1"]);
        assert_eq!(names(&l, &VDir::Host("h1".into())).len(), 2);
        assert_eq!(l.ids.len(), 3);
    }

    #[test]
    fn same_second_in_one_source_gets_ids() {
        let l = Layout::build(&[
            snap(1, 100, "s", "h", &[], true),
            snap(2, 100, "s", "h", &[], true),
        ]);
        let src = VDir::Source("s".into());
        assert_eq!(
            names(&l, &src),
            [
                "1970-01-01T00-01-40Z-01010101",
                "1970-01-01T00-01-40Z-02020202",
                "latest"
            ]
        );
        assert_eq!(
            l.get(&src, "latest"),
            Some(&VEntry::Link("1970-01-01T00-01-40Z-02020202".into()))
        );
    }
}
