//! Startup timing, reported as the `startup` object of the exit report
//! (docs/stats-schema.md) and measured by scripts/bench-startup.sh.
//!
//! Two moments are stamped with `CLOCK_MONOTONIC`: the top of `main()`
//! ([`mark_main`]) and the moment the first vCPU thread is about to enter its
//! KVM_RUN loop ([`mark_first_kvm_run`]). Everything before `main()` (exec,
//! dynamic loading, the Rust runtime) is invisible from inside; the report
//! gives the process CPU time used by then as a lower bound, and the raw
//! monotonic timestamps so that an outside observer that read the same clock
//! just before `execve()` can compute exec → first KVM_RUN itself.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// 0 = not stamped (a clock never reads 0 after boot).
static MAIN_NS: AtomicU64 = AtomicU64::new(0);
static CPU_AT_MAIN_NS: AtomicU64 = AtomicU64::new(0);
static FIRST_KVM_RUN_NS: AtomicU64 = AtomicU64::new(0);
static CPU_AT_FIRST_KVM_RUN_NS: AtomicU64 = AtomicU64::new(0);

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Called first thing in `main()`.
pub fn mark_main() {
    MAIN_NS.store(clock_ns(libc::CLOCK_MONOTONIC), Ordering::Relaxed);
    CPU_AT_MAIN_NS.store(clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID), Ordering::Relaxed);
}

/// Called by each vCPU thread just before its KVM_RUN loop; the first call wins.
pub fn mark_first_kvm_run() {
    if FIRST_KVM_RUN_NS.load(Ordering::Relaxed) == 0 {
        let now = clock_ns(libc::CLOCK_MONOTONIC);
        let cpu = clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
        if FIRST_KVM_RUN_NS
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            CPU_AT_FIRST_KVM_RUN_NS.store(cpu, Ordering::Relaxed);
        }
    }
}

/// The `startup` object of the report. `null` = not measured.
#[derive(Debug, Serialize, Default, Clone, PartialEq, Eq)]
pub struct StartupReport {
    /// Microseconds from the top of `main()` to the first vCPU thread
    /// entering KVM_RUN.
    pub main_to_first_kvm_run_us: Option<u64>,
    /// Process CPU time (`CLOCK_PROCESS_CPUTIME_ID`) at the top of `main()`:
    /// exec, dynamic loading and runtime start-up (plus the parent's work
    /// in the child between fork and exec), a lower bound on their wall time.
    pub cpu_time_before_main_us: Option<u64>,
    /// Process CPU time (all threads) when the first vCPU thread entered
    /// KVM_RUN: unlike the wall times, not inflated by waiting for a CPU on
    /// a busy host.
    pub cpu_time_at_first_kvm_run_us: Option<u64>,
    /// `CLOCK_MONOTONIC` at the top of `main()`, in nanoseconds.
    pub main_monotonic_ns: Option<u64>,
    /// `CLOCK_MONOTONIC` when the first vCPU thread entered KVM_RUN.
    pub first_kvm_run_monotonic_ns: Option<u64>,
}

fn stamp(a: &AtomicU64) -> Option<u64> {
    Some(a.load(Ordering::Relaxed)).filter(|&v| v != 0)
}

/// What has been stamped so far.
pub fn report() -> StartupReport {
    let main = stamp(&MAIN_NS);
    let first = stamp(&FIRST_KVM_RUN_NS);
    StartupReport {
        main_to_first_kvm_run_us: main.zip(first).map(|(m, f)| f.saturating_sub(m) / 1000),
        cpu_time_before_main_us: main.and(stamp(&CPU_AT_MAIN_NS)).map(|c| c / 1000),
        cpu_time_at_first_kvm_run_us: first.and(stamp(&CPU_AT_FIRST_KVM_RUN_NS)).map(|c| c / 1000),
        main_monotonic_ns: main,
        first_kvm_run_monotonic_ns: first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_ordered_and_first_run_is_kept() {
        mark_main();
        mark_first_kvm_run();
        let a = report();
        mark_first_kvm_run();
        let b = report();
        assert_eq!(a.first_kvm_run_monotonic_ns, b.first_kvm_run_monotonic_ns);
        let (m, f) = (
            a.main_monotonic_ns.unwrap(),
            a.first_kvm_run_monotonic_ns.unwrap(),
        );
        assert!(f >= m);
        assert!(a.main_to_first_kvm_run_us.is_some());
        assert!(a.cpu_time_before_main_us.is_some());
        assert!(a.cpu_time_at_first_kvm_run_us >= a.cpu_time_before_main_us);
    }
}
