//! The one signal that kicks a vCPU thread out of KVM_RUN: sent by the
//! supervisor (stop requests, snapshot pauses) and by whatever raises the
//! 8259's output; handled by `vcpu::on_kick`; the only signal the seccomp
//! filters let device threads send (`tgkill` to this process).

/// The kick signal (the first real-time signal).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}
