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

fn print_node(out: &mut impl Write, path: &Path, node: &Node) -> std::io::Result<()> {
    let mtime = chrono::DateTime::from_timestamp_nanos(node.mtime_ns);
    let mut line = format!(
        "{} {:>5} {:>5} {:>12} {} {}",
        mode_string(node),
        node.uid,
        node.gid,
        node.size,
        crate::output::time(&mtime),
        path.display()
    );
    if let Payload::Symlink(t) = &node.payload {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(t));
    }
    writeln!(out, "{line}")
}

fn walk(
    repo: &Repository,
    tree: &BlobId,
    prefix: &Path,
    recursive: bool,
    out: &mut impl Write,
) -> Result<()> {
    let tree = repo.load_tree(tree)?;
    for node in &tree.nodes {
        let path = prefix.join(std::ffi::OsStr::from_bytes(&node.name));
        print_node(out, &path, node)?;
        if let (true, Payload::Dir(sub)) = (recursive, &node.payload) {
            walk(repo, sub, &path, recursive, out)?;
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
        Resolved::Node(node) if node.kind != NodeType::Dir => print_node(&mut out, &path, &node)?,
        resolved => {
            let tree_id = resolved.tree_id().expect("directory");
            let _ = list_dir(&repo, &snap.tree, &path)?;
            walk(
                &repo,
                &tree_id,
                &Path::new("/").join(path.strip_prefix("/").unwrap_or(&path)),
                a.recursive,
                &mut out,
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
