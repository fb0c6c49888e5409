//! Compares two directory trees entry by entry: type, content, mode,
//! owners, nanosecond mtimes, symlink targets, xattrs, hard-link groups
//! and holes. The round-trip suites use it to say "restore is bit-exact".

use std::collections::{BTreeMap, BTreeSet};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What [`compare_trees`] checks besides type, content, mode, mtime,
/// symlink targets and hard-link groups (always compared).
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare uid and gid.
    pub owners: bool,
    /// Compare extended attributes.
    pub xattrs: bool,
    /// A file with holes must have holes on the other side too.
    pub sparse: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            owners: true,
            xattrs: true,
            sparse: true,
        }
    }
}

#[derive(Debug)]
struct Entry {
    meta: Metadata,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char device"
    } else {
        "block device"
    }
}

/// Every entry below `root` (not `root` itself) by relative path.
fn scan(root: &Path, out: &mut BTreeMap<PathBuf, Entry>, errors: &mut Vec<String>) {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!("{}: cannot list: {e}", dir.display()));
                continue;
            }
        };
        for e in rd {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("{}: cannot list: {e}", dir.display()));
                    continue;
                }
            };
            let child = rel.join(e.file_name());
            let path = root.join(&child);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if meta.is_dir() {
                stack.push(child.clone());
            }
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
                .map(|names| {
                    names
                        .filter_map(|n| {
                            let v = xattr::get(&path, &n).ok().flatten()?;
                            Some((n.as_bytes().to_vec(), v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            out.insert(child, Entry { meta, xattrs });
        }
    }
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<Option<u64>> {
    let mut fa = std::fs::File::open(a)?;
    let mut fb = std::fs::File::open(b)?;
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if let Some(i) = (0..na.min(nb)).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn has_holes(meta: &Metadata) -> bool {
    meta.blocks() * 512 < meta.size()
}

fn mtime_ns(m: &Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

/// The paths of each hard-link group (files sharing an inode), keyed by
/// each member.
fn link_groups(entries: &BTreeMap<PathBuf, Entry>) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut by_inode: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    for (p, e) in entries {
        if e.meta.is_file() && e.meta.nlink() > 1 {
            by_inode
                .entry((e.meta.dev(), e.meta.ino()))
                .or_default()
                .insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_inode.into_values().filter(|g| g.len() > 1) {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// Compares the trees below `expected` and `actual` (their roots' own
/// metadata excluded) and returns one line per difference; empty means
/// equal.
pub fn compare_trees(expected: &Path, actual: &Path, o: &CompareOptions) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    scan(expected, &mut a, &mut diffs);
    scan(actual, &mut b, &mut diffs);
    let show = |p: &Path| String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned();
    for p in a.keys().filter(|p| !b.contains_key(*p)) {
        diffs.push(format!("{}: missing", show(p)));
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("{}: unexpected", show(p)));
    }
    for (p, ea) in &a {
        let Some(eb) = b.get(p) else { continue };
        let (ma, mb) = (&ea.meta, &eb.meta);
        let name = show(p);
        if kind(ma) != kind(mb) {
            diffs.push(format!("{name}: {} became {}", kind(ma), kind(mb)));
            continue;
        }
        if !ma.file_type().is_symlink() && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            diffs.push(format!(
                "{name}: mode {:o} became {:o}",
                ma.mode() & 0o7777,
                mb.mode() & 0o7777
            ));
        }
        if mtime_ns(ma) != mtime_ns(mb) {
            diffs.push(format!(
                "{name}: mtime {} ns became {} ns",
                mtime_ns(ma),
                mtime_ns(mb)
            ));
        }
        if o.owners && (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            diffs.push(format!(
                "{name}: owner {}:{} became {}:{}",
                ma.uid(),
                ma.gid(),
                mb.uid(),
                mb.gid()
            ));
        }
        if o.xattrs && ea.xattrs != eb.xattrs {
            diffs.push(format!(
                "{name}: xattrs {:?} became {:?}",
                ea.xattrs, eb.xattrs
            ));
        }
        if ma.file_type().is_symlink() {
            let ta = std::fs::read_link(expected.join(p)).ok();
            let tb = std::fs::read_link(actual.join(p)).ok();
            if ta != tb {
                diffs.push(format!("{name}: symlink target {ta:?} became {tb:?}"));
            }
        }
        if ma.is_file() {
            if ma.size() != mb.size() {
                diffs.push(format!("{name}: size {} became {}", ma.size(), mb.size()));
            }
            match same_content(&expected.join(p), &actual.join(p)) {
                Ok(None) => {}
                Ok(Some(at)) => diffs.push(format!("{name}: content differs at byte {at}")),
                Err(e) => diffs.push(format!("{name}: cannot compare content: {e}")),
            }
            if o.sparse && has_holes(ma) && !has_holes(mb) {
                diffs.push(format!(
                    "{name}: has holes ({} of {} bytes allocated) but its copy is fully allocated",
                    ma.blocks() * 512,
                    ma.size()
                ));
            }
        }
    }
    let (ga, gb) = (link_groups(&a), link_groups(&b));
    for p in a.keys().filter(|p| b.contains_key(*p)) {
        let (x, y) = (ga.get(p), gb.get(p));
        if x != y {
            let fmt = |g: Option<&BTreeSet<PathBuf>>| {
                g.map_or_else(
                    || "no other name".to_string(),
                    |g| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "),
                )
            };
            diffs.push(format!(
                "{}: hard links {} became {}",
                show(p),
                fmt(x),
                fmt(y)
            ));
        }
    }
    diffs
}

/// Panics with every difference when the trees differ.
pub fn assert_same_tree(expected: &Path, actual: &Path, o: &CompareOptions) {
    let diffs = compare_trees(expected, actual, o);
    assert!(
        diffs.is_empty(),
        "{} and {} differ:\n  {}",
        expected.display(),
        actual.display(),
        diffs.join("\n  ")
    );
}
