//! Exclusive locks (`locks/<id>`): the few operations with no lock-free
//! alternative (repair, key removal) hold one while they run.
//!
//! Invariants:
//! - Every other operation runs lock-free; they never take a lock. Garbage
//!   collection asks [`exclusive_holder`] before deleting.
//! - A lock is live while its heartbeat is younger than its own
//!   `stale_after_ms` and, when its holder ran in this process's pid scope
//!   (same kernel boot and pid namespace), while that process exists; a
//!   holder that died leaves a stale lock, which acquisition ignores and
//!   `cairn unlock` removes.
//! - Acquisition writes its own lock first and then lists: of two racing
//!   acquirers each sees the other and both back off, so two exclusive
//!   holders never run at once (a listing is assumed to show objects
//!   written before it started; see docs/FORMAT.md).

use crate::error::{Error, Result};
use crate::repo::Repository;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Associated data of a sealed lock object.
pub const LOCK_AAD: &[u8] = b"cairn.lock";
/// Lock body version.
pub const LOCK_VERSION: u32 = 1;
/// Prefix of lock objects.
pub const LOCKS_PREFIX: &str = "locks/";
/// Default interval between heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// A lock whose heartbeat is this many intervals old is stale by default.
pub const STALE_INTERVALS: u32 = 5;

/// How a lock is taken.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// What the holder does, shown to whoever finds the lock (e.g. `repair index`).
    pub operation: String,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Age of the last heartbeat after which others treat the lock as stale.
    pub stale_after: Duration,
}

impl LockOptions {
    /// Defaults: 60 s heartbeat, stale after 5 minutes.
    pub fn new(operation: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            heartbeat: DEFAULT_HEARTBEAT,
            stale_after: DEFAULT_HEARTBEAT * STALE_INTERVALS,
        }
    }
}

/// The sealed JSON body of `locks/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Body version (1).
    pub version: u32,
    /// Lock id (hex of 16 random bytes; also the object name).
    pub id: String,
    /// Whether the lock excludes other lock holders (always true today).
    pub exclusive: bool,
    /// What the holder is doing.
    pub operation: String,
    /// `user@host` of the holder.
    pub holder: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the lock was taken.
    pub created: DateTime<Utc>,
    /// Last heartbeat.
    pub heartbeat: DateTime<Utc>,
    /// Age of `heartbeat`, in milliseconds, after which the lock is stale.
    pub stale_after_ms: u64,
    /// Where `pid` names a process: the kernel's boot id and the pid
    /// namespace of the holder (see [`pid_scope`]). `None` when unknown
    /// (not Linux, or a lock written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
}

/// This process's pid scope: `<boot id>/<pid namespace>`, e.g.
/// `0f4c…/pid:[4026531836]`. Two processes with the same scope see the
/// same pids, so one can tell whether the other still runs. The boot id
/// is random per boot of a kernel, so equal host names on two machines (or
/// two boots of one) never share a scope. `None` off Linux.
pub fn pid_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.to_string_lossy()))
}

/// Whether process `pid` of this pid scope is gone (`kill(pid, 0)` fails
/// with ESRCH). A process that exists but belongs to another user, or a
/// zombie not yet reaped, counts as running.
fn process_is_gone(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(pid) if pid > 0 => matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        ),
        _ => false,
    }
}

impl LockInfo {
    /// Whether the lock no longer protects anything at `now`: its holder
    /// stopped beating, or [`LockInfo::holder_is_gone`].
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.heartbeat_expired(now) || self.holder_is_gone()
    }

    /// Whether the last heartbeat is older than `stale_after_ms` at `now`.
    pub fn heartbeat_expired(&self, now: DateTime<Utc>) -> bool {
        let age = now.signed_duration_since(self.heartbeat).num_milliseconds();
        age > i64::try_from(self.stale_after_ms).unwrap_or(i64::MAX)
    }

    /// Whether the holder ran in this process's pid scope (same host,
    /// kernel boot and pid namespace) and its process no longer exists: a
    /// holder killed on this machine frees its lock at once instead of
    /// after `stale_after_ms`. A holder elsewhere is judged by its
    /// heartbeat only.
    pub fn holder_is_gone(&self) -> bool {
        self.pid_scope.is_some()
            && self.pid_scope == pid_scope()
            && self.host == crate::repo::hostname()
            && process_is_gone(self.pid)
    }

    /// `repair index by root@node-1 (pid 42), since …, last heartbeat …`.
    pub fn describe(&self) -> String {
        format!(
            "{} by {} (pid {}, lock {}), since {}, last heartbeat {}",
            self.operation,
            self.holder,
            self.pid,
            self.id,
            self.created.format("%Y-%m-%d %H:%M:%S UTC"),
            self.heartbeat.format("%Y-%m-%d %H:%M:%S UTC"),
        )
    }

    fn path(&self) -> String {
        format!("{LOCKS_PREFIX}{}", self.id)
    }
}

fn write_lock(repo: &Repository, info: &LockInfo) -> Result<()> {
    let body = serde_json::to_vec(info).map_err(|e| Error::corrupt(info.path(), e))?;
    let sealed = repo.keyring().seal_key().seal_envelope(LOCK_AAD, &body, 0);
    repo.storage()
        .write(&info.path(), Bytes::from(sealed))
        .map_err(repo.serr())
}

fn read_lock(repo: &Repository, path: &str) -> Result<LockInfo> {
    let sealed = repo.storage().read(path).map_err(repo.serr())?;
    let body = repo
        .keyring()
        .seal_key()
        .open_envelope(LOCK_AAD, &sealed)
        .map_err(|e| Error::corrupt(path, e))?;
    let info: LockInfo = serde_json::from_slice(&body).map_err(|e| Error::corrupt(path, e))?;
    if path.trim_start_matches(LOCKS_PREFIX) != info.id {
        return Err(Error::corrupt(path, "lock id differs from the object name"));
    }
    Ok(info)
}

/// Every readable lock. A lock that vanished while listing is skipped; a
/// damaged one is logged and skipped (it names no holder to wait for).
pub fn list_locks(repo: &Repository) -> Result<Vec<LockInfo>> {
    let mut out = Vec::new();
    for obj in repo.storage().list(LOCKS_PREFIX).map_err(repo.serr())? {
        match read_lock(repo, &obj.path) {
            Ok(info) => out.push(info),
            Err(Error::Storage { source, .. }) if source.is_not_found() => {}
            Err(e @ Error::Storage { .. }) => return Err(e),
            Err(e) => tracing::warn!("ignoring unreadable lock: {e}"),
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// The live exclusive lock, if one is held (garbage collection asks this
/// before deleting anything).
pub fn exclusive_holder(repo: &Repository) -> Result<Option<LockInfo>> {
    let now = Utc::now();
    Ok(list_locks(repo)?
        .into_iter()
        .find(|l| l.exclusive && !l.is_stale(now)))
}

/// Removes stale locks (every lock with `all`); returns what was removed.
pub fn remove_locks(repo: &Repository, all: bool) -> Result<Vec<LockInfo>> {
    let now = Utc::now();
    let mut removed = Vec::new();
    for lock in list_locks(repo)? {
        if all || lock.is_stale(now) {
            repo.storage().delete(&lock.path()).map_err(repo.serr())?;
            removed.push(lock);
        }
    }
    Ok(removed)
}

struct Beat {
    stop: Mutex<bool>,
    wake: Condvar,
    failure: Mutex<Option<String>>,
}

/// A held exclusive lock. A thread rewrites it every heartbeat interval;
/// dropping it (or [`ExclusiveLock::release`]) stops the thread and deletes
/// the lock object.
pub struct ExclusiveLock {
    repo: Repository,
    info: LockInfo,
    beat: Arc<Beat>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ExclusiveLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExclusiveLock({})", self.info.id)
    }
}

impl ExclusiveLock {
    /// Takes the exclusive lock, or fails naming the live holder.
    pub fn acquire(repo: &Repository, opts: &LockOptions) -> Result<Self> {
        let now = Utc::now();
        let info = LockInfo {
            version: LOCK_VERSION,
            id: hex::encode(&crate::crypto::random_key()[..16]),
            exclusive: true,
            operation: opts.operation.clone(),
            holder: crate::repo::user_at_host(),
            host: crate::repo::hostname(),
            pid: std::process::id(),
            created: now,
            heartbeat: now,
            stale_after_ms: u64::try_from(opts.stale_after.as_millis()).unwrap_or(u64::MAX),
            pid_scope: pid_scope(),
        };
        write_lock(repo, &info)?;
        let others = match list_locks(repo) {
            Ok(l) => l,
            Err(e) => {
                let _ = repo.storage().delete(&info.path());
                return Err(e);
            }
        };
        let now = Utc::now();
        if let Some(holder) = others.iter().find(|l| l.id != info.id && !l.is_stale(now)) {
            let _ = repo.storage().delete(&info.path());
            return Err(Error::Locked {
                holder: holder.describe(),
                stale_after_s: holder.stale_after_ms / 1000,
            });
        }
        let beat = Arc::new(Beat {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            failure: Mutex::new(None),
        });
        let thread = {
            let repo = repo.clone();
            let beat = beat.clone();
            let mut info = info.clone();
            let interval = opts.heartbeat;
            std::thread::Builder::new()
                .name("cairn-lock-heartbeat".into())
                .spawn(move || heartbeat_loop(repo, &mut info, &beat, interval))
                .map_err(|e| Error::io("heartbeat thread", e))?
        };
        Ok(Self {
            repo: repo.clone(),
            info,
            beat,
            thread: Some(thread),
        })
    }

    /// The lock as written at acquisition.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Fails when a heartbeat could not be written: the lock may have turned
    /// stale, so the holder should stop before changing more.
    pub fn check(&self) -> Result<()> {
        match crate::sync::lock(&self.beat.failure).clone() {
            Some(reason) => Err(Error::Usage(format!(
                "lost the exclusive lock {}: {reason}",
                self.info.id
            ))),
            None => Ok(()),
        }
    }

    /// Stops the heartbeat and deletes the lock.
    pub fn release(mut self) -> Result<()> {
        self.stop();
        self.repo
            .storage()
            .delete(&self.info.path())
            .map_err(self.repo.serr())
    }

    fn stop(&mut self) {
        *crate::sync::lock(&self.beat.stop) = true;
        self.beat.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            if let Err(e) = self.repo.storage().delete(&self.info.path()) {
                tracing::warn!("could not delete lock {}: {e}", self.info.path());
            }
        }
    }
}

fn heartbeat_loop(repo: Repository, info: &mut LockInfo, beat: &Beat, interval: Duration) {
    let mut stopped = crate::sync::lock(&beat.stop);
    loop {
        let (guard, _) = beat
            .wake
            .wait_timeout_while(stopped, interval, |s| !*s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stopped = guard;
        if *stopped {
            return;
        }
        info.heartbeat = Utc::now();
        if let Err(e) = write_lock(&repo, info) {
            tracing::warn!("lock heartbeat failed: {e}");
            *crate::sync::lock(&beat.failure) = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_of(pid: u32, scope: Option<String>) -> LockInfo {
        let now = Utc::now();
        LockInfo {
            version: LOCK_VERSION,
            id: "00".repeat(16),
            exclusive: true,
            operation: "test".into(),
            holder: crate::repo::user_at_host(),
            host: crate::repo::hostname(),
            pid,
            created: now,
            heartbeat: now,
            stale_after_ms: 3_600_000,
            pid_scope: scope,
        }
    }

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    }

    #[test]
    fn a_lock_of_an_exited_process_in_our_pid_scope_is_stale_at_once() {
        let now = Utc::now();
        let scope = pid_scope();
        assert!(scope.is_some(), "tests run on Linux");
        let dead = lock_of(dead_pid(), scope.clone());
        assert!(!dead.heartbeat_expired(now));
        assert!(dead.holder_is_gone() && dead.is_stale(now));
        // Ours is alive.
        assert!(!lock_of(std::process::id(), scope.clone()).is_stale(now));
        // Another scope (another machine, boot or pid namespace), another
        // host, or no scope at all: only the heartbeat counts.
        let elsewhere = lock_of(dead_pid(), Some("other-boot/pid:[1]".into()));
        assert!(!elsewhere.is_stale(now));
        let mut other_host = lock_of(dead_pid(), scope);
        other_host.host.push_str("-elsewhere");
        assert!(!other_host.is_stale(now));
        assert!(!lock_of(dead_pid(), None).is_stale(now));
    }

    #[test]
    fn locks_without_a_pid_scope_still_decode() {
        let json = serde_json::to_value(lock_of(1, None)).unwrap();
        assert!(json.get("pid_scope").is_none());
        let back: LockInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back.pid_scope, None);
    }
}
