//! `cairn ls`: list a directory of a snapshot.

use super::FilterOpts;
use crate::common::GlobalOpts;
use anyhow::Result;
use cairn_core::browse::{list_dir, resolve, Resolved};
use cairn_core::format::tree::{Node, NodeType, Payload};
use cairn_core::{BlobId, Repository};
use clap::Args;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id prefix or `latest`.
    pub snapshot: String,
    /// Directory inside the snapshot (default: its root).
    pub path: Option<PathBuf>,
    /// List subdirectories too.
    #[arg(long, short = 'R')]
    pub recursive: bool,
    /// One JSON object per line instead of text: names as exact strings,
    /// with their bytes in base64 when they are not UTF-8.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub filter: FilterOpts,
}

fn type_char(kind: NodeType) -> char {
    match kind {
        NodeType::File => '-',
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::CharDev => 'c',
        NodeType::BlockDev => 'b',
        NodeType::Fifo => 'p',
        NodeType::Socket => 's',
    }
}

fn mode_string(node: &Node) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(node.kind));
    for shift in [6, 3, 0] {
        let bits = (node.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A name as `ls -b` shows it: one line whatever it holds. Backslash,
/// space and the C escapes (`\n`, `\t`, ...) are escaped with a backslash;
/// other control characters and bytes that are not UTF-8 as `\ooo` (octal).
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                ' ' => out.push_str("\\ "),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

fn print_node(out: &mut impl Write, path: &Path, node: &Node, json: bool) -> std::io::Result<()> {
    if json {
        return print_json(out, path, node);
    }
    let mtime = chrono::DateTime::from_timestamp_nanos(node.mtime_ns);
    let mut line = format!(
        "{} {:>5} {:>5} {:>12} {} {}",
        mode_string(node),
        node.uid,
        node.gid,
        node.size,
        crate::output::time(&mtime),
        escape_name(path.as_os_str().as_bytes())
    );
    if let Payload::Symlink(t) = &node.payload {
        line.push_str(" -> ");
        line.push_str(&escape_name(t));
    }
    writeln!(out, "{line}")
}

/// Puts `bytes` into `entry` under `key`: as a string when they are UTF-8
/// (JSON carries any such string exactly, newlines included), else as the
/// lossy string plus `<key>_base64` with the exact bytes.
fn put_name(entry: &mut serde_json::Map<String, serde_json::Value>, key: &str, bytes: &[u8]) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            entry.insert(key.into(), text.into());
        }
        Err(_) => {
            entry.insert(key.into(), String::from_utf8_lossy(bytes).into());
            entry.insert(
                format!("{key}_base64"),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
    }
}

fn print_json(out: &mut impl Write, path: &Path, node: &Node) -> std::io::Result<()> {
    let mut entry = serde_json::Map::new();
    put_name(&mut entry, "path", path.as_os_str().as_bytes());
    entry.insert(
        "type".into(),
        format!("{:?}", node.kind).to_lowercase().into(),
    );
    entry.insert("mode".into(), node.mode.into());
    entry.insert("uid".into(), node.uid.into());
    entry.insert("gid".into(), node.gid.into());
    entry.insert("size".into(), node.size.into());
    entry.insert(
        "mtime".into(),
        chrono::DateTime::from_timestamp_nanos(node.mtime_ns)
            .to_rfc3339()
            .into(),
    );
    if let Payload::Symlink(t) = &node.payload {
        put_name(&mut entry, "link_target", t);
    }
    serde_json::to_writer(&mut *out, &entry)?;
    writeln!(out)
}

fn walk(
    repo: &Repository,
    tree: &BlobId,
    prefix: &Path,
    recursive: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let tree = repo.load_tree(tree)?;
    for node in &tree.nodes {
        let path = prefix.join(std::ffi::OsStr::from_bytes(&node.name));
        print_node(out, &path, node, json)?;
        if let (true, Payload::Dir(sub)) = (recursive, &node.payload) {
            walk(repo, sub, &path, recursive, json, out)?;
        }
    }
    Ok(())
}

pub fn run(g: &GlobalOpts, a: LsArgs) -> Result<ExitCode> {
    let repo = g.open()?;
    let (_, snap) = repo.find_snapshot(&a.snapshot, &a.filter.filter())?;
    let path = a.path.clone().unwrap_or_else(|| PathBuf::from("/"));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match resolve(&repo, &snap.tree, &path)? {
        Resolved::Node(node) if node.kind != NodeType::Dir => {
            print_node(&mut out, &path, &node, a.json)?
        }
        resolved => {
            let tree_id = resolved.tree_id().expect("directory");
            let _ = list_dir(&repo, &snap.tree, &path)?;
            if a.recursive {
                // Every tree below in a few merged reads, not one round
                // trip per directory.
                let root = repo.load_tree(&tree_id)?;
                cairn_core::prefetch::prefetch_trees(&repo, &root)?;
            }
            walk(
                &repo,
                &tree_id,
                &Path::new("/").join(path.strip_prefix("/").unwrap_or(&path)),
                a.recursive,
                a.json,
                &mut out,
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::escape_name;

    #[test]
    fn names_are_escaped_as_ls_b_does() {
        assert_eq!(escape_name(b"plain.txt"), "plain.txt");
        assert_eq!(escape_name(b"two\nlines"), "two\\nlines");
        assert_eq!(escape_name(b"a b\\c\td"), "a\\ b\\\\c\\td");
        assert_eq!(escape_name(b"bad\xff\xfeutf8"), "bad\\377\\376utf8");
        assert_eq!(escape_name(b"bell\x07esc\x1b"), "bell\\aesc\\033");
        assert_eq!(escape_name("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }
}
