//! Locking shared by every device (a leaf module: it imports nothing of
//! the crate, so any module can use it without an import circle).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Lock a mutex, ignoring poisoning: device state stays usable even if a
/// thread panicked while holding it (a panic is a bug we report elsewhere).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// "Log this kind of guest error once" flags of one device.
#[derive(Default)]
pub struct WarnOnce(AtomicU32);

impl WarnOnce {
    /// Log `args` at warn level the first time `flag` is raised.
    pub fn warn(&self, flag: u32, args: fmt::Arguments<'_>) {
        if self.0.fetch_or(flag, Ordering::Relaxed) & flag == 0 {
            log::warn!("{args} (reported once)");
        }
    }
}
