//! Poison-tolerant locking, written once.
//!
//! A `std` lock is poisoned when a thread panicked while holding it. Poisoning
//! is not a memory-safety matter (the data is still a valid value); it warns
//! that an invariant the critical section was restoring may be broken. Every
//! critical section in this crate is a single map operation or a value swap:
//! it either completes or leaves the previous value, and the `std` collections
//! stay valid when an operation unwinds. So the data behind a poisoned lock is
//! as usable as before, and carrying on is correct. Refusing instead would turn
//! one panic into every later request failing, for as long as the process
//! lives: a denial of service, not a safer state.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock `mutex`, also when it is poisoned (see the [module docs](self)).
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-lock `lock`, also when it is poisoned (see the [module docs](self)).
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-lock `lock`, also when it is poisoned (see the [module docs](self)).
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_hands_out_its_value() {
        let mutex = Mutex::new(1);
        let rw = RwLock::new(2);
        let _ = std::panic::catch_unwind(|| {
            let _m = mutex.lock().unwrap();
            let _w = rw.write().unwrap();
            panic!("poison both");
        });
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 3);
    }
}
