//! How devices ask the VMM to stop the VM (reset, debug-exit, poweroff).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::interrupt::lock;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 0xFE, triple fault, KVM reset event).
    Reset,
    /// The guest powered off.
    Poweroff,
    /// A triple fault (KVM_EXIT_SHUTDOWN): on a PC this resets the machine.
    TripleFault,
    /// isa-debug-exit write: the process exits with `(value << 1) | 1`.
    DebugExit(u32),
    /// The guest stopped on something KVM could not run; the VMM reports it.
    GuestError(String),
    /// The VMM itself failed while running the guest.
    VmmError(String),
    /// The user interrupted the VMM (Ctrl-C, SIGTERM).
    Signal(i32),
    /// `--timeout` passed.
    Timeout,
}

impl ExitReason {
    /// Process exit status for this reason (see README: even values are the
    /// VMM's own; odd values come from the guest's debug-exit device).
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::Poweroff | ExitReason::TripleFault => 0,
            ExitReason::DebugExit(v) => ((*v as i64) << 1 | 1) as i32 & 0xff,
            ExitReason::VmmError(_) => 2,
            ExitReason::GuestError(_) => 4,
            ExitReason::Timeout => 6,
            ExitReason::Signal(s) => 128 + s,
        }
    }

    /// Short machine-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Reset => "reset",
            ExitReason::Poweroff => "poweroff",
            ExitReason::TripleFault => "triple-fault",
            ExitReason::DebugExit(_) => "debug-exit",
            ExitReason::GuestError(_) => "guest-error",
            ExitReason::VmmError(_) => "vmm-error",
            ExitReason::Signal(_) => "signal",
            ExitReason::Timeout => "timeout",
        }
    }
}

/// Shared stop request. The first request wins; later ones are ignored.
#[derive(Default)]
pub struct VmControl {
    stopping: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
}

impl VmControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the VM to stop for `reason`. Returns false if it was already stopping.
    pub fn request_exit(&self, reason: ExitReason) -> bool {
        let mut r = lock(&self.reason);
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        self.stopping.store(true, Ordering::SeqCst);
        true
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_status_is_value_shifted_left_or_one() {
        assert_eq!(ExitReason::DebugExit(0).status(), 1);
        assert_eq!(ExitReason::DebugExit(3).status(), 7);
    }

    #[test]
    fn first_exit_request_wins() {
        let c = VmControl::new();
        assert!(c.request_exit(ExitReason::Reset));
        assert!(!c.request_exit(ExitReason::DebugExit(1)));
        assert_eq!(c.reason(), Some(ExitReason::Reset));
        assert!(c.is_stopping());
    }
}
