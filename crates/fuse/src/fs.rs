//! The FUSE file system: answers the kernel's lookups, attribute, directory,
//! symlink, xattr and read requests from the snapshot layout, cached trees
//! and the chunk cache. Read-only; every engine failure becomes EIO and a
//! log line, never a crash.

use crate::cache::{ChunkCache, RepoChunks};
use crate::chunks::{OpenFile, Prefetcher};
use crate::inodes::{Inodes, Kind};
use crate::layout::{Layout, SnapInfo, VDir, VEntry};
use cairn_core::format::tree::{Node, NodeType, Payload};
use cairn_core::{BlobId, Repository};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use lru::LruCache;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache virtual entries (new snapshots show up
/// within this) and snapshot contents (immutable).
const TTL_VIRTUAL: Duration = Duration::from_secs(1);
const TTL_SNAPSHOT: Duration = Duration::from_secs(3600);
/// Decoded directories kept in memory (the SQLite cache holds the rest).
const TREE_CACHE_ENTRIES: usize = 4096;
const BLOCK: u32 = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A decoded directory: nodes sorted by name, shared with the inodes.
struct Dir {
    nodes: Vec<Arc<Node>>,
}

impl Dir {
    fn get(&self, name: &[u8]) -> Option<&Arc<Node>> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// One listing handed out by `opendir`, read by `readdir` at offsets.
type Listing = Arc<Vec<(u64, FileType, OsString)>>;

/// An open file handle: the chunk table and the node (for log lines).
type OpenEntry = (Arc<OpenFile>, Arc<Node>);

/// Settings of the file system proper.
pub(crate) struct FsConfig {
    pub readahead: u64,
    pub refresh: Duration,
    pub cache_size: u64,
    pub readahead_workers: usize,
}

/// The mounted file system.
pub(crate) struct CairnFs {
    repo: Repository,
    cfg: FsConfig,
    /// Single-snapshot and named mounts have a fixed layout: nothing to refresh.
    single: bool,
    inodes: RwLock<Inodes>,
    layout: RwLock<Arc<Layout>>,
    /// When the layout was last rebuilt; the mutex also keeps one refresh at a time.
    refreshed: Mutex<Instant>,
    trees: Mutex<LruCache<BlobId, Arc<Dir>>>,
    chunks: Arc<RepoChunks>,
    cache: Arc<ChunkCache>,
    prefetch: Prefetcher,
    files: Mutex<HashMap<u64, OpenEntry>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_nanos(ns.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn file_type(kind: NodeType) -> FileType {
    match kind {
        NodeType::File => FileType::RegularFile,
        NodeType::Dir => FileType::Directory,
        NodeType::Symlink => FileType::Symlink,
        NodeType::CharDev => FileType::CharDevice,
        NodeType::BlockDev => FileType::BlockDevice,
        NodeType::Fifo => FileType::NamedPipe,
        NodeType::Socket => FileType::Socket,
    }
}

/// glibc's 64-bit `dev_t` to the kernel's 32-bit encoding FUSE carries.
fn kernel_rdev(dev: u64) -> u32 {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

fn kind_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Virtual(_) | Kind::SnapRoot(_) => FileType::Directory,
        Kind::Link(_) => FileType::Symlink,
        Kind::Node(n) => file_type(n.kind),
    }
}

impl CairnFs {
    /// A file system showing `layout`, or the single snapshot `single`.
    pub fn new(
        repo: Repository,
        cfg: FsConfig,
        layout: Layout,
        single: Option<Arc<SnapInfo>>,
    ) -> Self {
        let chunks = Arc::new(RepoChunks::new(repo.clone()));
        let cache = Arc::new(ChunkCache::new(chunks.clone(), cfg.cache_size));
        let prefetch = Prefetcher::start(cache.clone(), cfg.readahead_workers);
        let root = match &single {
            Some(info) => Kind::SnapRoot(info.clone()),
            None => Kind::Virtual(VDir::Root),
        };
        Self {
            repo,
            cfg,
            single: single.is_some(),
            inodes: RwLock::new(Inodes::new(root)),
            layout: RwLock::new(Arc::new(layout)),
            refreshed: Mutex::new(Instant::now()),
            trees: Mutex::new(LruCache::new(
                NonZeroUsize::new(TREE_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
            )),
            chunks,
            cache,
            prefetch,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            started: SystemTime::now(),
        }
    }

    /// Keeps the layout given to [`CairnFs::new`] instead of rebuilding it from the
    /// repository's snapshot list (named mounts).
    pub fn with_fixed_layout(mut self) -> Self {
        self.single = true;
        self
    }

    fn kind(&self, ino: u64) -> Option<Kind> {
        self.inodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ino)
            .cloned()
    }

    /// The current layout, rebuilt from the repository's snapshot list when
    /// the last rebuild is older than the refresh interval. A failed
    /// listing keeps the previous layout (and logs why).
    fn layout(&self) -> Arc<Layout> {
        if !self.single {
            let mut last = lock(&self.refreshed);
            if last.elapsed() >= self.cfg.refresh {
                *last = Instant::now();
                match self.repo.list_snapshots() {
                    Ok(list) => {
                        let fresh = Layout::build(&list);
                        let old = self.current_layout();
                        if fresh.ids.iter().any(|id| !old.ids.contains(id)) {
                            // New snapshots bring index segments the cache
                            // has not seen yet.
                            self.resync_index();
                        }
                        *self.layout.write().unwrap_or_else(PoisonError::into_inner) =
                            Arc::new(fresh);
                    }
                    Err(e) => tracing::warn!("listing snapshots: {e}; showing the previous list"),
                }
            }
        }
        self.current_layout()
    }

    fn current_layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn resync_index(&self) {
        self.chunks.resync_index();
    }

    /// A decoded directory, from memory, the local cache or the repository.
    fn tree(&self, id: &BlobId) -> Result<Arc<Dir>, Errno> {
        if let Some(d) = lock(&self.trees).get(id) {
            return Ok(d.clone());
        }
        let loaded = match self.repo.load_tree(id) {
            Err(cairn_core::Error::BlobNotFound { .. }) => {
                self.resync_index();
                self.repo.load_tree(id)
            }
            other => other,
        };
        let tree = loaded.map_err(|e| {
            tracing::warn!("loading directory {}: {e}", id.short());
            Errno::EIO
        })?;
        let dir = Arc::new(Dir {
            nodes: tree.nodes.into_iter().map(Arc::new).collect(),
        });
        lock(&self.trees).put(*id, dir.clone());
        Ok(dir)
    }

    /// The tree of a directory inode.
    fn dir_tree(kind: &Kind) -> Option<BlobId> {
        match kind {
            Kind::SnapRoot(info) => Some(info.tree),
            Kind::Node(n) => match n.payload {
                Payload::Dir(id) => Some(id),
                _ => None,
            },
            _ => None,
        }
    }

    fn ventry_kind(entry: &VEntry) -> Kind {
        match entry {
            VEntry::Dir(d) => Kind::Virtual(d.clone()),
            VEntry::Snap(s) => Kind::SnapRoot(s.clone()),
            VEntry::Link(t) => Kind::Link(t.clone()),
        }
    }

    fn ttl(kind: &Kind) -> Duration {
        if kind.immutable() {
            TTL_SNAPSHOT
        } else {
            TTL_VIRTUAL
        }
    }

    fn attr(&self, ino: u64, kind: &Kind) -> FileAttr {
        let dir_time = |t: SystemTime| FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        };
        match kind {
            Kind::Virtual(_) => {
                let t = self.current_layout().newest.map_or(self.started, |t| {
                    system_time(t.timestamp_nanos_opt().unwrap_or(0))
                });
                dir_time(t)
            }
            Kind::SnapRoot(info) => {
                let mut a = dir_time(system_time(info.time.timestamp_nanos_opt().unwrap_or(0)));
                a.perm = 0o755;
                a
            }
            Kind::Link(target) => FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                nlink: 1,
                size: target.len() as u64,
                ..dir_time(self.started)
            },
            Kind::Node(n) => {
                let size = match n.payload {
                    Payload::Symlink(ref t) => t.len() as u64,
                    _ => n.size,
                };
                let blocks = match &n.payload {
                    Payload::File(cairn_core::format::tree::Content::Inline(chunks)) => chunks
                        .iter()
                        .filter(|c| !c.is_hole())
                        .map(|c| u64::from(c.len))
                        .sum::<u64>()
                        .div_ceil(512),
                    _ => size.div_ceil(512),
                };
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks,
                    atime: system_time(n.mtime_ns),
                    mtime: system_time(n.mtime_ns),
                    ctime: system_time(n.ctime_ns),
                    crtime: system_time(n.mtime_ns),
                    kind: file_type(n.kind),
                    perm: (n.mode & 0o7777) as u16,
                    nlink: u32::try_from(n.nlink.max(1)).unwrap_or(u32::MAX),
                    uid: n.uid,
                    gid: n.gid,
                    rdev: kernel_rdev(n.rdev),
                    blksize: BLOCK,
                    flags: 0,
                }
            }
        }
    }

    /// Every entry of directory `ino` (with `.` and `..`), handing out inodes.
    fn listing(&self, ino: u64, kind: &Kind) -> Result<Listing, Errno> {
        let parent = self
            .inodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .parent(ino);
        let mut out = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        match kind {
            Kind::Virtual(vdir) => {
                let layout = self.layout();
                let Some(entries) = layout.list(vdir) else {
                    return Err(Errno::ENOENT);
                };
                let mut inodes = self.inodes.write().unwrap_or_else(PoisonError::into_inner);
                for (name, entry) in entries {
                    let k = Self::ventry_kind(entry);
                    let t = kind_type(&k);
                    let child = inodes.child(ino, OsStr::new(name), k);
                    out.push((child, t, OsString::from(name)));
                }
            }
            _ => {
                let id = Self::dir_tree(kind).ok_or(Errno::ENOTDIR)?;
                let dir = self.tree(&id)?;
                let mut inodes = self.inodes.write().unwrap_or_else(PoisonError::into_inner);
                for n in &dir.nodes {
                    let name = OsStr::from_bytes(&n.name);
                    let child = inodes.child(ino, name, Kind::Node(n.clone()));
                    out.push((child, file_type(n.kind), name.to_os_string()));
                }
            }
        }
        Ok(Arc::new(out))
    }

    fn do_lookup(&self, parent: u64, name: &OsStr) -> Result<(u64, Kind), Errno> {
        let pkind = self.kind(parent).ok_or(Errno::ENOENT)?;
        let kind = match &pkind {
            Kind::Virtual(vdir) => {
                let name = name.to_str().ok_or(Errno::ENOENT)?;
                let layout = self.layout();
                Self::ventry_kind(layout.get(vdir, name).ok_or(Errno::ENOENT)?)
            }
            Kind::Link(_) => return Err(Errno::ENOTDIR),
            _ => {
                let id = Self::dir_tree(&pkind).ok_or(Errno::ENOTDIR)?;
                let dir = self.tree(&id)?;
                Kind::Node(dir.get(name.as_bytes()).ok_or(Errno::ENOENT)?.clone())
            }
        };
        let ino = self
            .inodes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .child(parent, name, kind.clone());
        Ok((ino, kind))
    }

    fn node_of(&self, ino: u64) -> Option<Arc<Node>> {
        match self.kind(ino)? {
            Kind::Node(n) => Some(n),
            _ => None,
        }
    }

    fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }
}

impl fuser::Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Let the kernel read ahead as far as it allows; our own readahead
        // fetches whole chunks behind it.
        let _ = config
            .set_max_readahead(1 << 20)
            .or_else(|max| config.set_max_readahead(max));
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::debug!(
            "unmounted: {} chunks fetched, {} readaheads skipped for room, {} bytes cached (peak {}), {} inodes",
            self.cache.fetched.load(Ordering::Relaxed),
            self.cache.skipped.load(Ordering::Relaxed),
            self.cache.bytes(),
            self.cache.peak_bytes(),
            self.inodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name) {
            Ok((ino, kind)) => {
                reply.entry(&Self::ttl(&kind), &self.attr(ino, &kind), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.kind(ino.0) {
            Some(kind) => reply.attr(&Self::ttl(&kind), &self.attr(ino.0, &kind)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.kind(ino.0) {
            Some(Kind::Link(t)) => reply.data(t.as_bytes()),
            Some(Kind::Node(n)) => match &n.payload {
                Payload::Symlink(t) => reply.data(t),
                _ => reply.error(Errno::EINVAL),
            },
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let node = match self.kind(ino.0) {
            Some(Kind::Node(n)) => n,
            Some(Kind::Link(_)) => return reply.error(Errno::ELOOP),
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let content = match &node.payload {
            Payload::File(c) => c,
            Payload::Dir(_) => return reply.error(Errno::EISDIR),
            // Devices, fifos and sockets are shown, never opened.
            _ => return reply.error(Errno::EACCES),
        };
        let chunks = match self.repo.chunk_list(content) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "opening {}: {e}; answering EIO",
                    String::from_utf8_lossy(&node.name)
                );
                return reply.error(Errno::EIO);
            }
        };
        let file = OpenFile::new(chunks);
        if file.len() != node.size {
            tracing::warn!(
                "{}: the chunk list holds {} bytes, the directory says {}",
                String::from_utf8_lossy(&node.name),
                file.len(),
                node.size
            );
        }
        let fh = self.fh();
        lock(&self.files).insert(fh, (Arc::new(file), node));
        // Contents never change: the kernel may keep its page cache across opens.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((file, node)) = lock(&self.files).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let prefetch = (self.cfg.readahead > 0).then_some((&self.prefetch, self.cfg.readahead));
        match file.read(&self.cache, prefetch, offset, size) {
            Ok(data) => reply.data(data.as_slice()),
            Err(e) => {
                tracing::warn!(
                    "reading {} (inode {}) at {offset}: {e}; answering EIO",
                    String::from_utf8_lossy(&node.name),
                    ino.0
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(kind) = self.kind(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.listing(ino.0, &kind) {
            Ok(list) => {
                let fh = self.fh();
                lock(&self.dirs).insert(fh, list);
                let flags = if kind.immutable() {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(list) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, t, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *t, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self
            .inodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        // Nothing can be written: no free blocks or inodes.
        reply.statfs(0, 0, 0, files, 0, BLOCK, 255, BLOCK);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(node) = self.node_of(ino.0) else {
            return reply.error(Errno::ENODATA);
        };
        let Some((_, value)) = node
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        else {
            return reply.error(Errno::ENODATA);
        };
        xattr_reply(value, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = Vec::new();
        if let Some(node) = self.node_of(ino.0) {
            for (k, _) in &node.xattrs {
                names.extend_from_slice(k);
                names.push(0);
            }
        }
        xattr_reply(&names, size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.kind(ino.0).is_none() {
            reply.error(Errno::ENOENT)
        } else if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }
}

/// Answers an xattr request: the size when asked for it, else the bytes.
fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_is_encoded_like_the_kernel() {
        // makedev(8, 1) in glibc's encoding is 0x801; the kernel's is the same.
        assert_eq!(kernel_rdev(0x801), 0x801);
        // makedev(259, 65536): major 0x103, minor 0x10000; glibc puts the
        // low 8 minor bits at 0, major bits at 8..20, high minor bits at 20..
        let glibc: u64 = (0x103 << 8) | ((0x10000 & !0xff) << 12);
        assert_eq!(kernel_rdev(glibc), (0x103 << 8) | ((0x10000 & !0xff) << 12));
    }

    #[test]
    fn negative_times_do_not_panic() {
        assert!(system_time(-1_500_000_000) < UNIX_EPOCH);
        assert_eq!(system_time(0), UNIX_EPOCH);
    }
}
