//! [`FaultStorage`]: deterministic fault injection for tests.
//!
//! Each request is failed, timed out or cut short with the probabilities of
//! a [`FaultPlan`]. Whether a request faults is a pure function of the seed,
//! the operation kind, the path (and range) and how many times that same
//! request was made before, so a test sees the same faults however its
//! threads interleave, and a retried request gets a fresh draw.
//!
//! Invariants: injected errors are `Temporary` (except the countdown's
//! simulated crash, which is `Other` so callers stop instead of retrying); a
//! failed write never leaves a partial object (the inner write is atomic and
//! either not made or made whole); short reads return `Ok` with fewer bytes
//! than asked, which the layer above must detect. The close of a writer is
//! a write request like any other, faulted by the same draw (appends are
//! not requests and pass through).

use crate::{
    Abandoned, DynStorage, ObjectInfo, ObjectWriter, OpKind, Result, Storage, StorageError,
    StorageErrorKind,
};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Probabilities (each in `0.0..=1.0`, summing to at most 1) of the faults
/// one request may suffer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// The request fails with a `Temporary` error and has no effect.
    pub error: f64,
    /// The request "times out": a `Temporary` error. A write that times out
    /// has already been applied (the answer was lost, not the request), the
    /// ambiguous case real object stores produce.
    pub timeout: f64,
    /// A read returns `Ok` with a prefix of the data (range reads; whole
    /// reads only with [`FaultPlan::short_whole_reads`]).
    pub short_read: f64,
}

/// What [`FaultStorage`] injects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Seed of every draw.
    pub seed: u64,
    /// Rates for every operation kind without an entry in `per_op`.
    pub rates: FaultRates,
    /// Rates for particular operation kinds.
    pub per_op: BTreeMap<OpKind, FaultRates>,
    /// Countdown: after this many requests every request fails with a
    /// non-retryable error, like a process that lost its storage for good.
    pub fail_after: Option<u64>,
    /// Also cut whole-object reads short. Off by default: over HTTP the
    /// transport checks Content-Length, so only content hashes can catch a
    /// truncated whole read, and tests of the retry path want it off.
    pub short_whole_reads: bool,
}

impl FaultPlan {
    /// A plan that injects nothing yet.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// Sets the rates for every operation kind.
    pub fn with_rates(mut self, rates: FaultRates) -> Self {
        self.rates = rates;
        self
    }

    /// Sets the rates for one operation kind.
    pub fn with_op(mut self, kind: OpKind, rates: FaultRates) -> Self {
        self.per_op.insert(kind, rates);
        self
    }

    /// Fails every request from the `n`-th one on (0 = fail all).
    pub fn fail_after(mut self, n: u64) -> Self {
        self.fail_after = Some(n);
        self
    }

    fn rates_for(&self, kind: OpKind) -> FaultRates {
        self.per_op.get(&kind).copied().unwrap_or(self.rates)
    }
}

/// What [`FaultStorage`] has injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests seen.
    pub requests: u64,
    /// Injected temporary errors.
    pub errors: u64,
    /// Injected timeouts.
    pub timeouts: u64,
    /// Injected short reads.
    pub short_reads: u64,
    /// Requests refused after the countdown ran out.
    pub crashed: u64,
}

impl FaultStats {
    /// All injected faults.
    pub fn injected(&self) -> u64 {
        self.errors + self.timeouts + self.short_reads + self.crashed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    Timeout,
    ShortRead,
    Crash,
}

/// Injects faults into the requests made to the inner storage.
#[derive(Debug)]
pub struct FaultStorage {
    inner: DynStorage,
    injector: Arc<Injector>,
}

/// The plan and what it has injected, shared with the writers.
#[derive(Debug)]
struct Injector {
    plan: Mutex<FaultPlan>,
    requests: AtomicU64,
    repeats: Mutex<HashMap<(OpKind, String), u64>>,
    stats: Mutex<FaultStats>,
}

/// A writer of the storage below whose close may fault like a write.
struct FaultWriter {
    inner: Box<dyn ObjectWriter>,
    injector: Arc<Injector>,
}

impl ObjectWriter for FaultWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn close(&mut self, path: &str) -> Result<()> {
        let injector = &self.injector;
        match injector.decide(OpKind::Write, path, false) {
            Fault::None => self.inner.close(path),
            Fault::Timeout => {
                // The object arrives; only the answer is lost.
                self.inner.close(path)?;
                Err(injector.injected(Fault::Timeout, format!("write {path}")))
            }
            // The inner writer keeps its bytes: a retried close can succeed.
            fault => Err(injector.injected(fault, format!("write {path}"))),
        }
    }
}

/// FNV-1a, then the SplitMix64 finaliser: a stable, well-mixed hash.
fn draw(seed: u64, kind: OpKind, key: &str, repeat: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = seed
        .to_le_bytes()
        .into_iter()
        .chain([kind as u8])
        .chain(key.bytes())
        .chain(repeat.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultStorage {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: DynStorage, plan: FaultPlan) -> Self {
        Self {
            inner,
            injector: Arc::new(Injector {
                plan: Mutex::new(plan),
                requests: AtomicU64::new(0),
                repeats: Mutex::new(HashMap::new()),
                stats: Mutex::new(FaultStats::default()),
            }),
        }
    }

    /// Replaces the plan and restarts the countdown; statistics are kept.
    pub fn set_plan(&self, plan: FaultPlan) {
        let i = &self.injector;
        *i.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan;
        i.requests.store(0, Ordering::SeqCst);
    }

    /// Stops injecting faults: the storage behaves like its inner one
    /// ("the next run succeeds").
    pub fn disarm(&self) {
        let i = &self.injector;
        let seed = i.plan.lock().unwrap_or_else(|p| p.into_inner()).seed;
        self.set_plan(FaultPlan::new(seed));
    }

    /// What has been injected so far.
    pub fn stats(&self) -> FaultStats {
        *self
            .injector
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, kind: OpKind, key: &str, can_short: bool) -> Fault {
        self.injector.decide(kind, key, can_short)
    }

    fn injected(&self, fault: Fault, op: String) -> StorageError {
        self.injector.injected(fault, op)
    }

    /// Faults for requests whose only possible faults are errors.
    fn plain<T>(&self, kind: OpKind, key: &str, op: impl FnOnce() -> Result<T>) -> Result<T> {
        match self.decide(kind, key, false) {
            Fault::None => op(),
            fault => Err(self.injected(fault, format!("{} {key}", kind.as_str()))),
        }
    }
}

impl Injector {
    /// Decides the fault for one request and records it.
    fn decide(&self, kind: OpKind, key: &str, can_short: bool) -> Fault {
        let plan = self.plan.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let fault = if plan.fail_after.is_some_and(|limit| n >= limit) {
            Fault::Crash
        } else {
            let repeat = {
                let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
                let slot = repeats.entry((kind, key.to_string())).or_insert(0);
                *slot += 1;
                *slot - 1
            };
            let rates = plan.rates_for(kind);
            let can_short = can_short && (kind == OpKind::ReadRange || plan.short_whole_reads);
            let u = draw(plan.seed, kind, key, repeat);
            if u < rates.error {
                Fault::Error
            } else if u < rates.error + rates.timeout {
                Fault::Timeout
            } else if can_short && u < rates.error + rates.timeout + rates.short_read {
                Fault::ShortRead
            } else {
                Fault::None
            }
        };
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.requests += 1;
        match fault {
            Fault::None => {}
            Fault::Error => stats.errors += 1,
            Fault::Timeout => stats.timeouts += 1,
            Fault::ShortRead => stats.short_reads += 1,
            Fault::Crash => stats.crashed += 1,
        }
        fault
    }

    fn injected(&self, fault: Fault, op: String) -> StorageError {
        match fault {
            Fault::Crash => {
                let limit = self
                    .plan
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail_after
                    .unwrap_or(0);
                StorageError::new(
                    StorageErrorKind::Other,
                    op,
                    format!(
                        "injected fault: storage gone after {limit} requests (simulated crash)"
                    ),
                )
            }
            Fault::Timeout => StorageError::new(
                StorageErrorKind::Temporary,
                op,
                "injected fault: request timed out",
            ),
            _ => StorageError::new(
                StorageErrorKind::Temporary,
                op,
                "injected fault: temporary failure",
            ),
        }
    }
}

/// Keeps the first half of `data` (at least one byte fewer), if it has any.
fn cut(data: Bytes) -> Bytes {
    let keep = data.len() / 2;
    data.slice(..keep)
}

impl Storage for FaultStorage {
    fn read(&self, path: &str) -> Result<Bytes> {
        match self.decide(OpKind::Read, path, true) {
            Fault::None => self.inner.read(path),
            Fault::ShortRead => self.inner.read(path).map(cut),
            fault => Err(self.injected(fault, format!("read {path}"))),
        }
    }

    fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes> {
        let key = format!("{path} [{}..{}]", range.start, range.end);
        match self.decide(OpKind::ReadRange, &key, true) {
            Fault::None => self.inner.read_range(path, range),
            Fault::ShortRead => self.inner.read_range(path, range).map(cut),
            fault => Err(self.injected(fault, format!("read {key}"))),
        }
    }

    fn write(&self, path: &str, data: Bytes) -> Result<()> {
        match self.decide(OpKind::Write, path, false) {
            Fault::None => self.inner.write(path, data),
            Fault::Timeout => {
                // The object arrives; only the answer is lost.
                self.inner.write(path, data)?;
                Err(self.injected(Fault::Timeout, format!("write {path}")))
            }
            fault => Err(self.injected(fault, format!("write {path}"))),
        }
    }

    fn writer(self: Arc<Self>, size_hint: usize) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(FaultWriter {
            inner: self.inner.clone().writer(size_hint)?,
            injector: self.injector.clone(),
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.plain(OpKind::List, prefix, || self.inner.list(prefix))
    }

    fn stat(&self, path: &str) -> Result<ObjectInfo> {
        self.plain(OpKind::Stat, path, || self.inner.stat(path))
    }

    fn delete(&self, path: &str) -> Result<()> {
        match self.decide(OpKind::Delete, path, false) {
            Fault::None => self.inner.delete(path),
            Fault::Timeout => {
                self.inner.delete(path)?;
                Err(self.injected(Fault::Timeout, format!("delete {path}")))
            }
            fault => Err(self.injected(fault, format!("delete {path}"))),
        }
    }

    fn sweep_abandoned(&self, cutoff: std::time::SystemTime, dry_run: bool) -> Result<Abandoned> {
        self.inner.sweep_abandoned(cutoff, dry_run)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn missing_root(&self) -> Option<String> {
        self.inner.missing_root()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    fn storage(plan: FaultPlan) -> FaultStorage {
        FaultStorage::new(Arc::new(MemStorage::new()), plan)
    }

    #[test]
    fn draws_are_uniform_enough_and_deterministic() {
        let hits = (0..10_000)
            .filter(|i| draw(7, OpKind::Write, &format!("packs/{i}"), 0) < 0.3)
            .count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
        assert_eq!(draw(1, OpKind::Read, "a", 3), draw(1, OpKind::Read, "a", 3));
        assert_ne!(draw(1, OpKind::Read, "a", 3), draw(1, OpKind::Read, "a", 4));
    }

    #[test]
    fn the_same_plan_injects_the_same_faults() {
        let run = || {
            let s = storage(FaultPlan::new(42).with_rates(FaultRates {
                error: 0.3,
                ..FaultRates::default()
            }));
            (0..200)
                .map(|i| {
                    s.write(&format!("o/{}", i % 20), Bytes::from_static(b"x"))
                        .is_ok()
                })
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.iter().any(|ok| !ok) && first.iter().any(|ok| *ok));
    }

    #[test]
    fn failed_writes_leave_nothing_and_timed_out_writes_leave_everything() {
        let s = storage(FaultPlan::new(1).with_op(
            OpKind::Write,
            FaultRates {
                error: 0.5,
                timeout: 0.5,
                short_read: 0.0,
            },
        ));
        for i in 0..50 {
            let path = format!("obj/{i}");
            let e = s.write(&path, Bytes::from_static(b"payload")).unwrap_err();
            assert!(e.is_temporary());
            match s.inner.read(&path) {
                Ok(data) => {
                    assert!(e.message.contains("timed out"), "{e}");
                    assert_eq!(&data[..], b"payload");
                }
                Err(not_found) => {
                    assert!(not_found.is_not_found());
                    assert!(e.message.contains("temporary failure"), "{e}");
                }
            }
        }
        let stats = s.stats();
        assert_eq!(stats.errors + stats.timeouts, 50);
        assert!(stats.errors > 0 && stats.timeouts > 0);
    }

    #[test]
    fn short_reads_return_a_prefix_only_for_range_reads_by_default() {
        let s = storage(FaultPlan::new(3).with_rates(FaultRates {
            short_read: 1.0,
            ..FaultRates::default()
        }));
        s.inner
            .write("p", Bytes::from_static(b"0123456789"))
            .unwrap();
        assert_eq!(&s.read_range("p", 2..8).unwrap()[..], b"234");
        assert_eq!(s.read("p").unwrap().len(), 10);
        s.set_plan(FaultPlan {
            short_whole_reads: true,
            ..FaultPlan::new(3).with_rates(FaultRates {
                short_read: 1.0,
                ..FaultRates::default()
            })
        });
        assert_eq!(s.read("p").unwrap().len(), 5);
    }

    #[test]
    fn countdown_fails_everything_after_n_requests_until_disarmed() {
        let s = storage(FaultPlan::new(0).fail_after(3));
        for i in 0..3 {
            s.write(&format!("k/{i}"), Bytes::from_static(b"v"))
                .unwrap();
        }
        let e = s.read("k/0").unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Other);
        assert!(e.message.contains("simulated crash"), "{e}");
        assert!(s.list("k/").is_err());
        assert_eq!(s.stats().crashed, 2);
        s.disarm();
        assert_eq!(s.list("k/").unwrap().len(), 3);
    }
}
