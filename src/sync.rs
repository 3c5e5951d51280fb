//! Locks shared by threads and tasks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `m`'s guard, even when a thread panicked while holding it. Humanline never holds a guard
/// over code that can leave the data half changed, so a poisoned lock's data is still
/// consistent, and a server keeps serving.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
