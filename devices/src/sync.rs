//! Locking shared by every device (a leaf module: it imports nothing of
//! the crate, so any module can use it without an import circle).

use std::sync::{Mutex, MutexGuard};

/// Lock a mutex, ignoring poisoning: device state stays usable even if a
/// thread panicked while holding it (a panic is a bug we report elsewhere).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
