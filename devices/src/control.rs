//! How devices ask the VMM to stop the VM (reset, debug-exit, poweroff).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

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
    /// The guest kernel panicked (seen on its console).
    GuestPanic,
    /// A splitvm thread panicked (a bug in splitvm): the message says which.
    InternalError(String),
    /// The command of `splitvm run -- CMD` ended with this status (reported
    /// by the guest on the control channel, docs/ci-runner.md).
    CommandExit(i32),
}

/// Process exit statuses of `splitvm run -- CMD` that are not the command's
/// own (README, "Exit statuses"); chosen as virtme-ng, timeout(1) and
/// kvm-unit-tests' runner do.
pub mod command_status {
    /// `--timeout` passed before the command ended (as timeout(1)).
    pub const TIMEOUT: i32 = 124;
    /// splitvm itself failed (a setup error, or the guest stopped on
    /// something KVM could not run).
    pub const SPLITVM_ERROR: i32 = 253;
    /// The VM stopped (reset, power-off, debug-exit) without reporting the
    /// command's status.
    pub const NO_STATUS: i32 = 254;
    /// The guest kernel panicked (as virtme-ng).
    pub const PANIC: i32 = 255;
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
            ExitReason::GuestPanic => 8,
            ExitReason::InternalError(_) => 10,
            ExitReason::Signal(s) => 128 + s,
            ExitReason::CommandExit(n) => *n,
        }
    }

    /// Process exit status for this reason in `splitvm run -- CMD`: the
    /// command's own status, or one of [`command_status`].
    pub fn command_status(&self) -> i32 {
        match self {
            ExitReason::CommandExit(n) => *n,
            ExitReason::GuestPanic => command_status::PANIC,
            ExitReason::Timeout => command_status::TIMEOUT,
            ExitReason::Signal(s) => 128 + s,
            ExitReason::GuestError(_) | ExitReason::VmmError(_) | ExitReason::InternalError(_) => {
                command_status::SPLITVM_ERROR
            }
            ExitReason::Reset
            | ExitReason::Poweroff
            | ExitReason::TripleFault
            | ExitReason::DebugExit(_) => command_status::NO_STATUS,
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
            ExitReason::GuestPanic => "guest-panic",
            ExitReason::InternalError(_) => "internal-error",
            ExitReason::CommandExit(_) => "command-exit",
        }
    }
}

/// Shared stop request. The first request wins; later ones are ignored.
#[derive(Default)]
pub struct VmControl {
    stopping: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    /// `--snapshot-on-ready`: the guest's first "ready" asks for a snapshot.
    snapshot_on_ready: AtomicBool,
    /// A snapshot was asked for and not yet taken.
    snapshot_requested: AtomicBool,
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

    /// Take a snapshot when the guest first says it is ready.
    pub fn snapshot_on_ready(&self) {
        self.snapshot_on_ready.store(true, Ordering::SeqCst);
    }

    /// The guest says it is ready (the agent's `ready`, the test devices'
    /// ready port). Returns true if this starts a snapshot: the caller
    /// holds back what it would send the guest until the VMM has taken it.
    pub fn guest_ready(&self) -> bool {
        let snap = self.snapshot_on_ready.swap(false, Ordering::SeqCst);
        if snap {
            self.request_snapshot();
        }
        snap
    }

    /// Ask the supervisor for a snapshot (taken at its next check).
    pub fn request_snapshot(&self) {
        self.snapshot_requested.store(true, Ordering::SeqCst);
    }

    /// A snapshot is asked for and not yet taken (the vCPUs stop at once:
    /// the one that said "ready" is saved right after that instruction).
    pub fn snapshot_pending(&self) -> bool {
        self.snapshot_requested.load(Ordering::SeqCst)
    }

    /// Whether a snapshot was asked for since the last call.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_requested.swap(false, Ordering::SeqCst)
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
    fn command_mode_statuses_are_distinct_from_each_other() {
        let all = [
            ExitReason::GuestPanic.command_status(),
            ExitReason::Timeout.command_status(),
            ExitReason::Reset.command_status(),
            ExitReason::VmmError("x".into()).command_status(),
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(a), "{a} appears twice");
        }
        assert_eq!(ExitReason::CommandExit(3).command_status(), 3);
        assert_eq!(ExitReason::Signal(15).command_status(), 143);
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
