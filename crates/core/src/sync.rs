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
}
