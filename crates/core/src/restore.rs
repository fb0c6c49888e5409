//! Restore: plan by pack, read merged ranges, decrypt in parallel, write at
//! offsets (holes stay sparse), then metadata, deepest directories last.
//!
//! A damaged or missing pack fails only the files that need it: every other
//! file is restored, and the failures are listed in [`RestoreStats::failed`].

use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeType, Payload};
use crate::format::{BlobId, BlobKind, PackId};
use crate::fsmeta::apply_metadata;
use crate::progress::Progress;
use crate::repo::Repository;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Two blobs closer than this in a pack are fetched in one range read.
pub const MERGE_GAP: u64 = 1 << 20;
/// Largest single range read. Each restore thread holds one range (and
/// the storage layer may hold it twice while assembling it), so this bounds
/// restore memory: 4 MiB keeps a 2-thread restore near its baseline while a
/// 16 MiB pack still takes only four reads.
pub const MAX_RANGE: u64 = 4 << 20;

/// What to restore and how.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Directory to restore into.
    pub target: PathBuf,
    /// Only these snapshot paths (and what is below them); empty = all.
    pub includes: Vec<PathBuf>,
    /// Allow a non-empty target and replace what is in the way.
    pub overwrite: bool,
    /// Restore owners (needs root).
    pub owners: bool,
    /// Re-read and re-hash every restored file.
    pub verify: bool,
    /// Decrypting threads (0 = number of CPUs).
    pub workers: usize,
    /// Live progress counters.
    pub progress: Option<Arc<Progress>>,
}

/// What a restore did.
#[derive(Debug, Default, Clone)]
pub struct RestoreStats {
    /// Files restored (hard links count once).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, hard links.
    pub others: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Packs read.
    pub packs_read: u64,
    /// Range reads issued.
    pub ranges_read: u64,
    /// Files verified (with `verify`).
    pub verified: u64,
    /// Entries that could not be restored, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Entries restored from a snapshot `repair snapshots` wrote that are
    /// not what was backed up (they carry [`crate::repair::DAMAGED_XATTR`]):
    /// files whose lost ranges are zeros, directories whose lost listing is
    /// empty; with what was lost.
    pub zero_filled: Vec<(PathBuf, String)>,
}

struct FileTask {
    path: PathBuf,
    node: Node,
}

#[derive(Default)]
struct Plan {
    /// Directories whose listing cannot be read: nothing below them is
    /// restored, and each is reported.
    lost: Vec<(PathBuf, String)>,
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<FileTask>,
    specials: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, usize)>,
}

/// Where one blob's plaintext goes.
struct Placement {
    file: usize,
    offset: u64,
}

struct PackBlob {
    id: BlobId,
    offset: u64,
    stored_len: u64,
    targets: Vec<Placement>,
}

/// Normalises an include path: relative, no `.`/`..`.
fn normalise(p: &Path) -> PathBuf {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

enum Wanted {
    All,
    Ancestor,
    No,
}

fn wanted(rel: &Path, includes: &[PathBuf]) -> Wanted {
    if includes.is_empty() || includes.iter().any(|i| rel.starts_with(i)) {
        Wanted::All
    } else if includes.iter().any(|i| i.starts_with(rel)) {
        Wanted::Ancestor
    } else {
        Wanted::No
    }
}

/// Restores the tree `root` into `opts.target`.
pub fn restore(repo: &Repository, root: &BlobId, opts: &RestoreOptions) -> Result<RestoreStats> {
    let target = &opts.target;
    if target.exists() {
        let mut rd = std::fs::read_dir(target).map_err(|e| Error::io(target, e))?;
        if rd.next().is_some() && !opts.overwrite {
            return Err(Error::Usage(format!(
                "restore target {} is not empty; choose an empty directory or pass --overwrite",
                target.display()
            )));
        }
    } else {
        std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    let includes: Vec<PathBuf> = opts.includes.iter().map(|p| normalise(p)).collect();
    let mut plan = Plan::default();
    let mut seen_links: HashMap<(u64, u64), usize> = HashMap::new();
    collect(
        repo,
        root,
        Path::new(""),
        target,
        &includes,
        &mut plan,
        &mut seen_links,
    )?;
    if !includes.is_empty()
        && plan.files.is_empty()
        && plan.specials.is_empty()
        && plan.dirs.is_empty()
        && plan.lost.is_empty()
    {
        return Err(Error::Usage(format!(
            "no entry of the snapshot matches {}",
            includes
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let progress = opts.progress.clone().unwrap_or_default();
    progress
        .files_total
        .store(plan.files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(
        plan.files.iter().map(|f| f.node.size).sum(),
        Ordering::Relaxed,
    );
    progress.scan_done.store(true, Ordering::Relaxed);

    let mut stats = RestoreStats {
        failed: std::mem::take(&mut plan.lost),
        ..Default::default()
    };
    for (dir, _) in &plan.dirs {
        make_dir(dir, opts.overwrite)?;
    }
    stats.dirs = plan.dirs.len() as u64;
    let failed: Mutex<BTreeMap<usize, String>> = Mutex::default();

    // Create every file at its final size (sparse) and plan the blob reads.
    let mut packs: HashMap<PackId, HashMap<BlobId, PackBlob>> = HashMap::new();
    for (i, f) in plan.files.iter().enumerate() {
        if let Err(e) = create_sized(&f.path, f.node.size, opts.overwrite) {
            crate::sync::lock(&failed).insert(i, e.to_string());
            continue;
        }
        let Payload::File(content) = &f.node.payload else {
            continue;
        };
        let chunks = match repo.chunk_list(content) {
            Ok(c) => c,
            Err(e) => {
                crate::sync::lock(&failed).insert(i, e.to_string());
                continue;
            }
        };
        let mut offset = 0u64;
        for c in chunks {
            if !c.is_hole() {
                match repo.lookup(&c.id)? {
                    Some(loc) => {
                        let blob = packs
                            .entry(loc.pack)
                            .or_default()
                            .entry(c.id)
                            .or_insert_with(|| PackBlob {
                                id: c.id,
                                offset: loc.offset as u64,
                                stored_len: loc.stored_len as u64,
                                targets: Vec::new(),
                            });
                        blob.targets.push(Placement { file: i, offset });
                    }
                    None => {
                        crate::sync::lock(&failed).insert(
                            i,
                            format!("data blob {} is not in the index", c.id.to_hex()),
                        );
                    }
                }
            }
            offset += c.len as u64;
        }
    }

    let workers = if opts.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.workers
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("cairn-restore-{i}"))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start restore threads: {e}")))?;
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let ranges = std::sync::atomic::AtomicU64::new(0);
    let pack_list: Vec<(PackId, Vec<PackBlob>)> = packs
        .into_iter()
        .map(|(p, blobs)| {
            let mut v: Vec<PackBlob> = blobs.into_values().collect();
            v.sort_by_key(|b| b.offset);
            (p, v)
        })
        .collect();
    stats.packs_read = pack_list.len() as u64;
    pool.install(|| {
        pack_list.par_iter().for_each(|(pack, blobs)| {
            for range in merge_ranges(blobs) {
                ranges.fetch_add(1, Ordering::Relaxed);
                let start = range[0].offset;
                let end = range.last().map_or(start, |b| b.offset + b.stored_len);
                let path = pack.path();
                let data = match repo.read_pack_range(pack, start..end) {
                    Ok(d) => d,
                    Err(e) => {
                        let mut f = crate::sync::lock(&failed);
                        for b in range {
                            for t in &b.targets {
                                f.entry(t.file)
                                    .or_insert_with(|| format!("reading {path}: {e}"));
                            }
                        }
                        continue;
                    }
                };
                for b in range {
                    let rel = (b.offset - start) as usize;
                    let stored = &data[rel..rel + b.stored_len as usize];
                    let write_targets = |plain: &[u8]| {
                        for t in &b.targets {
                            let file = &plan.files[t.file];
                            let res = std::fs::OpenOptions::new()
                                .write(true)
                                .open(&file.path)
                                .and_then(|f| write_sparse(&f, plain, t.offset));
                            match res {
                                Ok(()) => {
                                    bytes.fetch_add(plain.len() as u64, Ordering::Relaxed);
                                    progress.add_bytes(plain.len() as u64);
                                }
                                Err(e) => {
                                    crate::sync::lock(&failed)
                                        .entry(t.file)
                                        .or_insert_with(|| format!("{}: {e}", file.path.display()));
                                }
                            }
                        }
                    };
                    let opened =
                        repo.with_open_blob(BlobKind::Data, &b.id, stored, &path, write_targets);
                    if let Err(e) = opened {
                        if matches!(e, Error::Corrupt { .. }) {
                            repo.note_damage(crate::damage::one_copy(b.id, *pack));
                        }
                        let mut f = crate::sync::lock(&failed);
                        for t in &b.targets {
                            f.entry(t.file).or_insert_with(|| e.to_string());
                        }
                    }
                }
            }
        })
    });
    stats.bytes = bytes.load(Ordering::Relaxed);
    stats.ranges_read = ranges.load(Ordering::Relaxed);

    let failed = crate::sync::into_inner(failed);
    for (i, f) in plan.files.iter().enumerate() {
        if failed.contains_key(&i) {
            continue;
        }
        progress.file_done();
        stats.files += 1;
        if let Some(why) = repaired_loss(&f.node) {
            stats.zero_filled.push((f.path.clone(), why));
        }
        if let Err(e) = apply_metadata(&f.path, &f.node, opts.owners) {
            stats.failed.push((f.path.clone(), e.to_string()));
        }
    }
    for (i, reason) in &failed {
        stats
            .failed
            .push((plan.files[*i].path.clone(), reason.clone()));
    }
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
        let res = clear_path(path, opts.overwrite)
            .and_then(|()| std::fs::hard_link(first_path, path).map_err(|e| Error::io(path, e)));
        match res {
            Ok(()) => stats.others += 1,
            Err(e) => stats.failed.push((path.clone(), e.to_string())),
        }
    }
    for (path, node) in &plan.specials {
        match make_special(path, node, opts.overwrite)
            .and_then(|()| apply_metadata(path, node, opts.owners))
        {
            Ok(()) => stats.others += 1,
            Err(e) => stats.failed.push((path.clone(), e.to_string())),
        }
    }
    if opts.verify {
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
    for (path, node) in &plan.dirs {
        if let Some(why) = repaired_loss(node) {
            stats.zero_filled.push((path.clone(), why));
        }
    }
    // Directories last, deepest first, so their times survive.
    let mut dirs: Vec<&(PathBuf, Node)> = plan.dirs.iter().collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, node) in dirs {
        if let Err(e) = apply_metadata(path, node, opts.owners) {
            stats.failed.push((path.clone(), e.to_string()));
        }
    }
    repo.record_found_damage_or_warn();
    Ok(stats)
}

/// What `repair snapshots` recorded as lost on an entry, if anything.
fn repaired_loss(node: &Node) -> Option<String> {
    node.xattrs
        .iter()
        .find(|(k, _)| k == crate::repair::DAMAGED_XATTR)
        .map(|(_, why)| String::from_utf8_lossy(why).into_owned())
}

fn collect(
    repo: &Repository,
    tree_id: &BlobId,
    rel: &Path,
    abs: &Path,
    includes: &[PathBuf],
    plan: &mut Plan,
    links: &mut HashMap<(u64, u64), usize>,
) -> Result<()> {
    let tree = match repo.load_tree(tree_id) {
        Ok(t) => t,
        Err(e) if e.kind() == crate::ErrorKind::Corrupt => {
            plan.lost.push((
                abs.to_path_buf(),
                format!(
                    "directory listing lost (tree {}): {e}; nothing below it was restored",
                    tree_id.short()
                ),
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for node in tree.nodes {
        let name = OsStr::from_bytes(&node.name);
        let child_rel = rel.join(name);
        let child_abs = abs.join(name);
        let want = wanted(&child_rel, includes);
        match (&node.payload, want) {
            (_, Wanted::No) => {}
            (Payload::Dir(sub), w) => {
                let sub = *sub;
                if matches!(w, Wanted::All) {
                    plan.dirs.push((child_abs.clone(), node));
                } else {
                    make_dir(&child_abs, true)?;
                }
                collect(repo, &sub, &child_rel, &child_abs, includes, plan, links)?;
            }
            (_, Wanted::Ancestor) => {}
            (Payload::File(_), Wanted::All) => {
                if node.nlink > 1 {
                    if let Some(first) = links.get(&(node.dev, node.inode)) {
                        plan.links.push((child_abs, *first));
                        continue;
                    }
                    links.insert((node.dev, node.inode), plan.files.len());
                }
                plan.files.push(FileTask {
                    path: child_abs,
                    node,
                });
            }
            (_, Wanted::All) => plan.specials.push((child_abs, node)),
        }
    }
    Ok(())
}

/// Groups a pack's blobs (sorted by offset) into ranges worth one read each.
fn merge_ranges(blobs: &[PackBlob]) -> Vec<&[PackBlob]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let prev_end = blobs[i - 1].offset + blobs[i - 1].stored_len;
            blobs[i].offset > prev_end + MERGE_GAP
                || blobs[i].offset + blobs[i].stored_len - blobs[start].offset > MAX_RANGE
        };
        if split {
            out.push(&blobs[start..i]);
            start = i;
        }
    }
    out
}

/// Granularity at which zeros inside a data chunk are left as holes.
const SPARSE_BLOCK: usize = 4096;

/// `RWF_DONTCACHE` (Linux 6.14): a buffered write whose pages leave the
/// page cache once written back. A restore writes each byte once and does
/// not read it back; with plain writes, gigabytes of new dirty pages pushed
/// the rest of the page cache out, and on this project's VM filling pages
/// freshly handed back by the host was 40% of a 12 GiB restore's CPU.
const RWF_DONTCACHE: u32 = 0x80;

/// Whether `RWF_DONTCACHE` still looks supported: cleared on the first
/// refusal (an older kernel, a file system without it), after which every
/// write is a plain one.
static DONTCACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Writes all of `buf` at `offset`, uncached where the kernel allows.
fn write_all_at(file: &std::fs::File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    while !buf.is_empty() && DONTCACHE.load(Ordering::Relaxed) {
        use rustix::io::{pwritev2, Errno, ReadWriteFlags};
        let flags = ReadWriteFlags::from_bits_retain(RWF_DONTCACHE);
        match pwritev2(file, &[std::io::IoSlice::new(buf)], offset, flags) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                DONTCACHE.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    file.write_all_at(buf, offset)
}

/// Writes `data` at `offset`, skipping all-zero 4 KiB blocks: the file was
/// created at its final size with `set_len`, so skipped ranges stay holes
/// and read back as zeros. Keeps files sparse even where a hole is smaller
/// than a chunk.
fn write_sparse(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, block) in data.chunks(SPARSE_BLOCK).enumerate() {
        let at = i * SPARSE_BLOCK;
        let zero = crate::backup::is_zero(block);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                write_all_at(file, &data[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        write_all_at(file, &data[start..], offset + start as u64)?;
    }
    Ok(())
}

fn clear_path(path: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(_) if !overwrite => Err(Error::Usage(format!(
            "{} exists; pass --overwrite to replace it",
            path.display()
        ))),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e)),
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io(path, e)),
    }
}

fn make_dir(path: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            clear_path(path, overwrite)?;
            std::fs::create_dir(path).map_err(|e| Error::io(path, e))
        }
        Err(_) => std::fs::create_dir_all(path).map_err(|e| Error::io(path, e)),
    }
}

fn create_sized(path: &Path, size: u64, overwrite: bool) -> Result<()> {
    clear_path(path, overwrite)?;
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.set_len(size).map_err(|e| Error::io(path, e))
}

fn make_special(path: &Path, node: &Node, overwrite: bool) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    clear_path(path, overwrite)?;
    let mode = Mode::from_bits_truncate(node.mode);
    let res = match (&node.payload, node.kind) {
        (Payload::Symlink(target), _) => {
            return std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
                .map_err(|e| Error::io(path, e))
        }
        (_, NodeType::Fifo) => nix::unistd::mkfifo(path, mode),
        (_, NodeType::CharDev) => mknod(path, SFlag::S_IFCHR, mode, node.rdev),
        (_, NodeType::BlockDev) => mknod(path, SFlag::S_IFBLK, mode, node.rdev),
        (_, NodeType::Socket) => {
            return Err(Error::Usage(format!(
                "{}: sockets are recorded but not recreated",
                path.display()
            )))
        }
        _ => return Ok(()),
    };
    res.map_err(|e| Error::io(path, std::io::Error::from(e)))
}

fn verify_file(repo: &Repository, f: &FileTask) -> Result<()> {
    let Payload::File(content) = &f.node.payload else {
        return Ok(());
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
            crate::backup::is_zero(&buf)
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
    let len = file.metadata().map_err(|e| Error::io(&f.path, e))?.len();
    if len != offset {
        return Err(Error::corrupt(
            f.path.display().to_string(),
            format!("size {len}, snapshot says {offset}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Uncached writes where the file system takes them (ext4 on Linux
    /// 6.14+), plain ones where it refuses (tmpfs): the bytes land either way.
    #[test]
    fn uncached_writes_land_whole_with_or_without_kernel_support() {
        let dirs = [
            Some(tempfile::tempdir().unwrap()),
            tempfile::tempdir_in("/dev/shm").ok(),
        ];
        for dir in dirs.iter().flatten() {
            let path = dir.path().join("f");
            let file = std::fs::File::create(&path).unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            write_all_at(&file, &data[100_000..], 100_000).unwrap();
            write_all_at(&file, &data[..100_000], 0).unwrap();
            drop(file);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                data,
                "in {}",
                dir.path().display()
            );
        }
    }

    #[test]
    fn zero_blocks_inside_a_chunk_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut data = vec![0u8; 1 << 20];
        data[..10].fill(7);
        data[(1 << 20) - 5..].fill(9);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(data.len() as u64).unwrap();
        write_sparse(&f, &data, 0).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Two 4 KiB blocks hold data; the rest stays unallocated.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 * 1024);
    }
}
