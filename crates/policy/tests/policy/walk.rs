//! A minimal walker with the contract the backup walker has: entries in name order, one
//! `is_excluded` call per entry, no descent into excluded directories.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use cairn_policy::Excluder;

/// Root-relative paths of every entry the backup would include (directories end in `/`).
pub fn included(excluder: &Excluder, root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    visit(excluder, root, root, &mut out);
    out
}

fn visit(excluder: &Excluder, root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).unwrap();
        if excluder.is_excluded(&path, &meta) {
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if meta.is_dir() {
            out.insert(format!("{relative}/"));
            visit(excluder, root, &path, out);
        } else {
            out.insert(relative);
        }
    }
}

/// Creates files (and their parent directories) and empty directories (`name/`) under root.
pub fn make_tree(root: &Path, entries: &[&str]) {
    for entry in entries {
        let path = root.join(entry);
        if entry.ends_with('/') {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, entry.as_bytes()).unwrap();
        }
    }
}

/// The set of the given paths, for comparing with [`included`].
pub fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}
