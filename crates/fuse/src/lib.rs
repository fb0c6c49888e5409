//! cairn's FUSE mount: every snapshot of a repository as a read-only
//! directory tree (`snapshots/`, `sources/`, `tags/`, `hosts/`), or one
//! snapshot at the root. Layout and behaviour: docs/MOUNT.md.
//!
//! [`mount`] runs in the calling thread until the file system is unmounted
//! (SIGINT, SIGTERM, SIGHUP or `fusermount3 -u`); [`spawn_mount`] returns a
//! [`MountHandle`] once the mount is ready. The mount takes no repository
//! lock: maintenance runs beside it, and a blob that vanishes under it
//! fails only the reads that need it (EIO).

mod cache;
mod chunks;
mod fs;
mod inodes;
mod layout;

use crate::fs::{CairnFs, FsConfig};
use crate::layout::{Layout, SnapInfo};
use cairn_core::{Repository, SnapshotId};
use crossbeam_channel::Receiver;
use fuser::{MountOption, SessionACL, SessionUnmounter};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The glibc malloc setting a mount process should start with (the
/// environment variable and its value; glibc reads it only at process
/// start, so callers re-execute themselves with it, as `cairn mount` does).
///
/// Why: each chunk fetch allocates one or two transient buffers of the
/// chunk's size (about 1 MiB, up to 8 MiB) in the repository and storage
/// layers, on about twenty threads (FUSE, readahead, I/O runtime), and
/// cached chunks are freed on other threads than they were allocated on.
/// With glibc's default dynamic mmap threshold all of these come from
/// per-thread arenas that keep the freed space: reading a 2 GiB file, a
/// 256 MiB cache mount peaked at 445 MB resident even with the cache's
/// byte budget exact. A fixed threshold of 256 KiB gives every such buffer
/// (and every cached chunk) a mapping of its own, returned to the kernel
/// when freed: 300 MB. The price is fresh zeroed pages per fetch (about a
/// quarter of sequential throughput on a 2-core machine, before reads were
/// answered with slices of cached chunks; docs/PERFORMANCE.md).
pub const MALLOC_ENV: (&str, &str) = ("MALLOC_MMAP_THRESHOLD_", "262144");

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount only this snapshot, at the root, instead of the whole repository.
    pub snapshot: Option<SnapshotId>,
    /// Bytes of decrypted chunks kept in memory.
    pub cache_size: u64,
    /// Bytes fetched ahead of a sequential reader (0: no readahead).
    pub readahead: u64,
    /// Threads answering kernel requests (concurrent readers).
    pub threads: usize,
    /// Background threads fetching chunks ahead.
    pub readahead_threads: usize,
    /// How often the snapshot list may be re-read (new snapshots appear).
    pub refresh: Duration,
    /// Name shown as the mount's source in `mount`/`df` (default: `cairn`).
    pub fsname: Option<String>,
    /// Let other users read the mount (`allow_other`; non-root users need
    /// `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            snapshot: None,
            cache_size: 256 << 20,
            readahead: 8 << 20,
            threads: 8,
            readahead_threads: 4,
            refresh: Duration::from_secs(2),
            fsname: None,
            allow_other: false,
        }
    }
}

/// A mount that could not be made or did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint cannot be used.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint given.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Reading the snapshot list or the snapshot to mount failed.
    #[error(transparent)]
    Engine(#[from] cairn_core::Error),
    /// The kernel refused the mount, or the session failed.
    #[error("FUSE mount at {path}: {source} (is fuse3 installed and /dev/fuse available?)")]
    Fuse {
        /// The mountpoint.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A named mount's entries cannot be shown as asked.
    #[error("{0}")]
    Named(String),
    /// Unmounting failed; the mount may still be there (`fusermount3 -u -z DIR`).
    #[error("unmounting {path}: {source}; run `fusermount3 -u -z {path}`")]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A snapshot (or one directory inside it) shown at a path of a named mount
/// ([`spawn_named_mount`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSnapshot {
    /// Path components from the mount's root (`["volumes", "shop", "data"]`).
    pub path: Vec<String>,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Show only this directory of the snapshot (`resources`, or `a/b`), not its root.
    pub subdir: Option<String>,
}

/// Checks that `dir` is an existing, empty directory.
pub fn check_mountpoint(dir: &Path) -> Result<(), MountError> {
    let err = |reason: String| MountError::Mountpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(err("does not exist; create an empty directory first".into()))
        }
        // A FUSE mount whose process died without unmounting (killed while
        // not root, or its auto-unmount helper killed too).
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(err(format!(
                "is a dead mount left by a mount process that ended without unmounting \
                 ({e}); run `fusermount3 -u {}` and try again",
                dir.display()
            )))
        }
        Err(e) => return Err(err(format!("cannot be read: {e}"))),
    };
    if !meta.is_dir() {
        return Err(err("is not a directory".into()));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot be listed: {e}")))?;
    if let Some(first) = entries.next() {
        let name = first
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(err(format!(
            "is not empty (it holds {name:?}); mount on an empty directory"
        )));
    }
    Ok(())
}

/// A live mount. Dropping it unmounts.
pub struct MountHandle {
    dir: PathBuf,
    unmounter: SessionUnmounter,
    done: Receiver<io::Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MountHandle({})", self.dir.display())
    }
}

/// Mounts `repo` at `dir` and serves it on background threads; returns
/// once the kernel has the mount (readable at once).
pub fn spawn_mount(
    repo: Repository,
    dir: &Path,
    opts: &MountOptions,
) -> Result<MountHandle, MountError> {
    check_mountpoint(dir)?;
    let (layout, single) = match &opts.snapshot {
        Some(id) => {
            let snap = repo.load_snapshot(id)?;
            let info = SnapInfo {
                id: *id,
                tree: snap.tree,
                time: snap.time,
            };
            (Layout::default(), Some(Arc::new(info)))
        }
        None => (Layout::build(&repo.list_snapshots()?), None),
    };
    let fs = CairnFs::new(repo, fs_config(opts), layout, single);
    serve_fs(fs, dir, opts)
}

fn fs_config(opts: &MountOptions) -> FsConfig {
    FsConfig {
        readahead: opts.readahead,
        refresh: opts.refresh,
        cache_size: opts.cache_size,
        readahead_workers: opts.readahead_threads,
    }
}

/// The tree of `id`, or of the directory `subdir` inside it.
fn named_info(
    repo: &Repository,
    id: &SnapshotId,
    subdir: Option<&str>,
) -> Result<SnapInfo, MountError> {
    let snap = repo.load_snapshot(id)?;
    let mut tree = snap.tree;
    for name in subdir
        .unwrap_or_default()
        .split('/')
        .filter(|n| !n.is_empty())
    {
        let dir = repo.load_tree(&tree)?;
        let found = dir.nodes.iter().find(|n| n.name == name.as_bytes());
        tree = match found.map(|n| &n.payload) {
            Some(cairn_core::format::tree::Payload::Dir(sub)) => *sub,
            _ => {
                return Err(MountError::Named(format!(
                    "snapshot {} has no directory {:?}",
                    id.short(),
                    subdir.unwrap_or_default()
                )))
            }
        };
    }
    Ok(SnapInfo {
        id: *id,
        tree,
        time: snap.time,
    })
}

/// Mounts several snapshots of `repo` at `dir`, each (or one directory of each) at its
/// own path under the root, and serves them on background threads like [`spawn_mount`].
/// `opts.snapshot` is ignored. Fails on an empty or invalid path component (`.`, `..`,
/// one holding `/`), and on a path that is another's prefix or repeats one.
pub fn spawn_named_mount(
    repo: Repository,
    dir: &Path,
    named: &[NamedSnapshot],
    opts: &MountOptions,
) -> Result<MountHandle, MountError> {
    check_mountpoint(dir)?;
    let mut entries = Vec::with_capacity(named.len());
    for (i, n) in named.iter().enumerate() {
        let bad = n.path.is_empty()
            || n.path
                .iter()
                .any(|c| c.is_empty() || c == "." || c == ".." || c.contains(['/', '\0']));
        let clash = named[..i].iter().any(|o| {
            let k = o.path.len().min(n.path.len());
            o.path[..k] == n.path[..k]
        });
        if bad || clash {
            return Err(MountError::Named(format!(
                "cannot show snapshot {} at {:?}: {}",
                n.snapshot.short(),
                n.path.join("/"),
                if bad {
                    "paths are non-empty names without `/`, `.` or `..`"
                } else {
                    "another snapshot is shown at or inside that path"
                }
            )));
        }
        let info = named_info(&repo, &n.snapshot, n.subdir.as_deref())?;
        entries.push((n.path.clone(), Arc::new(info)));
    }
    let fs = CairnFs::new(repo, fs_config(opts), Layout::named(&entries), None).with_fixed_layout();
    serve_fs(fs, dir, opts)
}

/// Mounts `fs` at `dir` and serves it on a background thread.
fn serve_fs(fs: CairnFs, dir: &Path, opts: &MountOptions) -> Result<MountHandle, MountError> {
    let fsname = opts.fsname.clone().unwrap_or_else(|| "cairn".into());
    let root = nix::unistd::geteuid().is_root();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // As root, let fusermount3 unmount even if this process is killed
    // with SIGKILL (auto_unmount needs allow_other, which root may set).
    if root {
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    let fuse_err = |source| MountError::Fuse {
        path: dir.to_path_buf(),
        source,
    };
    let mut session = fuser::Session::new(fs, dir, &config).map_err(fuse_err)?;
    let unmounter = session.unmount_callable();
    let (tx, done) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("cairn-fuse".into())
        .spawn(move || {
            let _ = tx.send(session.run());
        })
        .map_err(fuse_err)?;
    tracing::info!("mounted at {}", dir.display());
    Ok(MountHandle {
        dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
        unmounter,
        done,
        thread: Some(thread),
    })
}

/// Mounts `repo` at `dir` and serves it until it is unmounted: by SIGINT,
/// SIGTERM or SIGHUP (this function unmounts), or by `fusermount3 -u DIR`.
pub fn mount(repo: Repository, dir: &Path, opts: &MountOptions) -> Result<(), MountError> {
    mount_notify(repo, dir, opts, |_| {})
}

/// [`mount`], calling `ready` once the mount is usable. The signal
/// handlers are in place before the mount appears, so a SIGTERM sent as
/// soon as it is visible still unmounts cleanly.
pub fn mount_notify(
    repo: Repository,
    dir: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(&Path),
) -> Result<(), MountError> {
    let signals = ShutdownSignals::register(dir)?;
    let handle = spawn_mount(repo, dir, opts)?;
    ready(handle.dir());
    handle.serve(signals)
}

/// SIGINT, SIGTERM and SIGHUP, caught while a mount is served.
struct ShutdownSignals {
    handle: signal_hook::iterator::Handle,
    rx: Receiver<i32>,
    waiter: std::thread::JoinHandle<()>,
}

impl ShutdownSignals {
    fn register(dir: &Path) -> Result<Self, MountError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(|source| {
                MountError::Fuse {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        let handle = signals.handle();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let waiter = std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = tx.send(sig);
            }
        });
        Ok(Self { handle, rx, waiter })
    }

    /// Stops catching (the handlers stay installed but deliver nowhere).
    fn close(self) {
        self.handle.close();
        let _ = self.waiter.join();
    }
}

impl MountHandle {
    /// The mountpoint.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the mount ends: returns after an external unmount, or
    /// unmounts on SIGINT, SIGTERM or SIGHUP and then returns. (A signal
    /// arriving before this call takes its default action; [`mount_notify`]
    /// has no such window.)
    pub fn serve_until_signal(self) -> Result<(), MountError> {
        let signals = ShutdownSignals::register(&self.dir)?;
        self.serve(signals)
    }

    fn serve(mut self, signals: ShutdownSignals) -> Result<(), MountError> {
        let result = crossbeam_channel::select! {
            recv(self.done) -> r => {
                self.join();
                r.unwrap_or(Ok(())).map_err(|source| MountError::Fuse { path: self.dir.clone(), source })
            }
            recv(signals.rx) -> sig => {
                tracing::info!("signal {}: unmounting {}", sig.unwrap_or(0), self.dir.display());
                self.unmount_and_wait()
            }
        };
        signals.close();
        result
    }

    /// Unmounts and waits until the session has ended.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_and_wait()
    }

    fn unmount_and_wait(&mut self) -> Result<(), MountError> {
        if self.thread.is_none() {
            return Ok(());
        }
        // Releases fuser's hold on the mount (for an `auto_unmount` mount
        // that only closes the socket fusermount3 watched).
        if let Err(e) = self.unmounter.unmount() {
            tracing::debug!("fuser unmount of {}: {e}", self.dir.display());
        }
        use nix::errno::Errno;
        use nix::mount::{umount2, MntFlags};
        match umount2(&self.dir, MntFlags::empty()) {
            // Unmounted now, or already (EINVAL: no longer a mount point).
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            // Not root: fuser went through `fusermount3 -u` above.
            Err(Errno::EPERM) => {}
            // Busy (a shell sits inside it): detach now; the kernel
            // finishes once the last user leaves.
            Err(Errno::EBUSY) => {
                tracing::info!("{} is busy; detaching it lazily", self.dir.display());
                umount2(&self.dir, MntFlags::MNT_DETACH).map_err(|e| MountError::Unmount {
                    path: self.dir.clone(),
                    source: e.into(),
                })?;
            }
            Err(e) => {
                return Err(MountError::Unmount {
                    path: self.dir.clone(),
                    source: e.into(),
                })
            }
        }
        let r = self.done.recv().unwrap_or(Ok(()));
        self.join();
        r.map_err(|source| MountError::Fuse {
            path: self.dir.clone(),
            source,
        })
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_and_wait() {
            tracing::warn!("{e}");
        }
    }
}
