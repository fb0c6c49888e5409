//! Finalizing: once the content is written, metadata on every file,
//! hard links, special files, `--verify`, and directories last, deepest
//! first, so their times survive.

use super::plan::{FileTask, Plan};
use super::target::{clear_path, make_special};
use super::{RestoreOptions, RestoreStats};
use crate::error::{Error, Result};
use crate::format::tree::{Node, Payload};
use crate::fsmeta::apply_metadata;
use crate::progress::Progress;
use crate::repo::Repository;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Finishes what `plan` restored; `failed` are the files whose content
/// could not be written (by index in [`Plan::files`], with the reason).
pub(super) fn finalize(
    repo: &Repository,
    pool: &rayon::ThreadPool,
    plan: &Plan,
    failed: &BTreeMap<usize, String>,
    opts: &RestoreOptions,
    progress: &Progress,
    stats: &mut RestoreStats,
) {
    // Files' metadata on the pool, each file on its own: on one thread
    // this was a small-file restore's last second.
    let applied: Vec<(usize, Option<String>)> = pool.install(|| {
        plan.files
            .par_iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains_key(i))
            .map(|(i, f)| {
                let res = apply_metadata(&f.path, &f.node, opts.owners);
                (i, res.err().map(|e| e.to_string()))
            })
            .collect()
    });
    for (i, err) in applied {
        let f = &plan.files[i];
        progress.file_done();
        stats.files += 1;
        if let Some(why) = repaired_loss(&f.node) {
            stats.zero_filled.push((f.path.clone(), why));
        }
        if let Some(e) = err {
            stats.failed.push((f.path.clone(), e));
        }
    }
    for (i, reason) in failed {
        stats
            .failed
            .push((plan.files[*i].path.clone(), reason.clone()));
    }
    links(plan, failed, opts.overwrite, stats);
    for (path, node) in &plan.specials {
        match make_special(path, node, opts.overwrite)
            .and_then(|()| apply_metadata(path, node, opts.owners))
        {
            Ok(()) => stats.others += 1,
            Err(e) => stats.failed.push((path.clone(), e.to_string())),
        }
    }
    if opts.verify {
        verify(repo, pool, plan, failed, stats);
    }
    for (path, node) in &plan.dirs {
        if let Some(why) = repaired_loss(node) {
            stats.zero_filled.push((path.clone(), why));
        }
    }
    // Deepest first, so setting a directory's times comes after every
    // change inside it; the directories of one depth in parallel.
    let mut by_depth: BTreeMap<std::cmp::Reverse<usize>, Vec<&(PathBuf, Node)>> = BTreeMap::new();
    for dir in &plan.dirs {
        by_depth
            .entry(std::cmp::Reverse(dir.0.components().count()))
            .or_default()
            .push(dir);
    }
    for dirs in by_depth.values() {
        let errors: Vec<(PathBuf, String)> = pool.install(|| {
            dirs.par_iter()
                .filter_map(|(path, node)| {
                    apply_metadata(path, node, opts.owners)
                        .err()
                        .map(|e| (path.clone(), e.to_string()))
                })
                .collect()
        });
        stats.failed.extend(errors);
    }
}

/// Links the further names of hard-linked files to their first name.
fn links(plan: &Plan, failed: &BTreeMap<usize, String>, overwrite: bool, stats: &mut RestoreStats) {
    for (path, first) in &plan.links {
        let first_path = &plan.files[*first].path;
        if let Some(why) = failed.get(first) {
            // The cause (a missing pack, say) is named here too: which name
            // of a linked file is restored first is an accident of order.
            stats.failed.push((
                path.clone(),
                format!("hard link to {} which failed: {why}", first_path.display()),
            ));
            continue;
        }
        let res = clear_path(path, overwrite)
            .and_then(|()| std::fs::hard_link(first_path, path).map_err(|e| Error::io(path, e)));
        match res {
            Ok(()) => stats.others += 1,
            Err(e) => stats.failed.push((path.clone(), e.to_string())),
        }
    }
}

/// Re-reads and re-hashes every restored file.
fn verify(
    repo: &Repository,
    pool: &rayon::ThreadPool,
    plan: &Plan,
    failed: &BTreeMap<usize, String>,
    stats: &mut RestoreStats,
) {
    let results: Vec<(PathBuf, Option<String>)> = pool.install(|| {
        plan.files
            .par_iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains_key(i))
            .map(|(_, f)| {
                (
                    f.path.clone(),
                    verify_file(repo, f).err().map(|e| e.to_string()),
                )
            })
            .collect()
    });
    for (path, err) in results {
        match err {
            None => stats.verified += 1,
            Some(e) => stats
                .failed
                .push((path, format!("verification failed: {e}"))),
        }
    }
}

/// What `repair snapshots` recorded as lost on an entry, if anything.
fn repaired_loss(node: &Node) -> Option<String> {
    node.xattrs
        .iter()
        .find(|(k, _)| k == crate::repair::DAMAGED_XATTR)
        .map(|(_, why)| String::from_utf8_lossy(why).into_owned())
}

fn verify_file(repo: &Repository, f: &FileTask) -> Result<()> {
    let offset = verify_content(repo, f)?;
    let len = std::fs::metadata(&f.path)
        .map_err(|e| Error::io(&f.path, e))?
        .len();
    if len != offset {
        return Err(Error::corrupt(
            f.path.display().to_string(),
            format!("size {len}, snapshot says {offset}"),
        ));
    }
    Ok(())
}

/// Re-reads the file's content from `f.path` and checks it against the
/// snapshot; returns its length (the target may be longer: a device).
pub(super) fn verify_content(repo: &Repository, f: &FileTask) -> Result<u64> {
    let Payload::File(content) = &f.node.payload else {
        return Ok(0);
    };
    let chunks = repo.chunk_list(content)?;
    let file = std::fs::File::open(&f.path).map_err(|e| Error::io(&f.path, e))?;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    for c in chunks {
        buf.resize(c.len as usize, 0);
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(&f.path, e))?;
        let ok = if c.is_hole() {
            crate::zeros::is_zero(&buf)
        } else {
            repo.blob_id(&buf) == c.id
        };
        if !ok {
            return Err(Error::corrupt(
                f.path.display().to_string(),
                format!("content at offset {offset} differs from the snapshot"),
            ));
        }
        offset += c.len as u64;
    }
    Ok(offset)
}
