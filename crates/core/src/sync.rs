//! Lock helpers: what a lock poisoned by a panic in another thread means.
//!
//! Two rules, chosen per lock by whether a panic while it was held can
//! leave its data half-updated:
//! - [`lock`], [`read`], [`write`] and [`wait`] go on with the data as it
//!   is. For data every holder changes in one step (a slot replaced whole,
//!   an element inserted or removed, an error recorded, a counter moved),
//!   or data kept consistent by something else (the cache's SQLite
//!   connections, whose transactions roll back when dropped during the
//!   unwinding), a panicking holder leaves it valid; the panic itself still
//!   surfaces where its thread is joined. One panic then stays one error
//!   instead of a cascade of panics in every thread that touches the lock.
//! - [`lock_or_internal`] fails with [`Error::Internal`] naming the lock,
//!   for data a holder changes in several steps (a pack being assembled),
//!   where going on could store something inconsistent.

use crate::error::{Error, Result};
use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

/// Locks `m`, going on if a panicking holder poisoned it (see the module docs).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, going on if a panicking holder poisoned it.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, going on if a panicking holder poisoned it.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, going on if a panicking holder poisoned the lock.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Takes the value out of `m`, going on if a panicking holder poisoned it.
pub(crate) fn into_inner<T>(m: Mutex<T>) -> T {
    m.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the value out of `l`, going on if a panicking holder poisoned it.
pub(crate) fn into_inner_rw<T>(l: RwLock<T>) -> T {
    l.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `m`, or fails with [`Error::Internal`] naming `what` when a
/// panicking holder may have left it half-updated.
pub(crate) fn lock_or_internal<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    m.lock().map_err(|_| {
        Error::Internal(format!(
            "the {what} lock was poisoned: a thread panicked while changing it"
        ))
    })
}

/// An amount threads take shares of and give back, bounded by a limit: a
/// taker waits until its share fits, or until nothing is held (a share
/// larger than the whole limit goes alone). Entries a lister runs ahead,
/// bytes of ranges a restore holds.
///
/// A give wakes takers only when some wait: a condvar's notify is a
/// system call even when nobody waits, and gives come once per item.
pub(crate) struct Budget {
    limit: u64,
    /// Held, and the takers waiting.
    state: Mutex<(u64, usize)>,
    freed: Condvar,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            state: Mutex::new((0, 0)),
            freed: Condvar::new(),
        }
    }

    /// Takes `n`, once it fits or `stopped()` (looked at again after every
    /// give and [`Budget::wake_all`]).
    pub fn take(&self, n: u64, stopped: impl Fn() -> bool) {
        let mut state = lock(&self.state);
        while state.0 > 0 && state.0 + n > self.limit && !stopped() {
            state.1 += 1;
            state = wait(&self.freed, state);
            state.1 -= 1;
        }
        state.0 += n;
    }

    /// Gives `n` back.
    pub fn give_back(&self, n: u64) {
        let mut state = lock(&self.state);
        state.0 = state.0.saturating_sub(n);
        if state.1 > 0 {
            self.freed.notify_all();
        }
    }

    /// Wakes every waiting taker, to look at its `stopped` again (set it
    /// first).
    pub fn wake_all(&self) {
        let _state = lock(&self.state);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned() -> Mutex<Vec<u8>> {
        let m = Mutex::new(vec![1]);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _g = m.lock().unwrap();
                panic!("poison it");
            })
            .join()
        });
        assert!(m.is_poisoned());
        m
    }

    #[test]
    fn a_poisoned_lock_is_an_internal_error_naming_it_or_goes_on() {
        let m = poisoned();
        let e = lock_or_internal(&m, "pack builder").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal);
        assert!(
            e.to_string().contains("pack builder lock was poisoned"),
            "{e}"
        );
        assert_eq!(*lock(&m), vec![1]);
    }

    /// A share that does not fit waits for a give (or a stop); one larger
    /// than the whole limit goes when nothing else is held.
    #[test]
    fn a_budget_share_waits_until_it_fits_or_the_taker_stops() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let budget = Budget::new(10);
        let stop = AtomicBool::new(false);
        budget.take(8, || false);
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let budget = &budget;
            s.spawn(move || {
                budget.take(5, || false);
                tx.send(()).unwrap();
            });
            let wait = std::time::Duration::from_millis(100);
            assert!(rx.recv_timeout(wait).is_err(), "8 + 5 > 10: waits");
            budget.give_back(8);
            rx.recv().unwrap();
        });
        // 5 held: a share past the whole limit waits until a stop.
        std::thread::scope(|s| {
            let taker = s.spawn(|| budget.take(20, || stop.load(Ordering::Acquire)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!taker.is_finished());
            stop.store(true, Ordering::Release);
            budget.wake_all();
        });
        budget.give_back(25);
        budget.take(20, || false);
    }
}
