//! seccomp-bpf allow-lists, one per kind of thread (docs/security.md).
//!
//! Each list is what that thread calls, derived from the code and checked
//! with `strace -f -Y` over the micro-guests, Linux boots with virtio-blk
//! and virtio-net over pci and mmio, `--trace-exits`, `--stats-interval`
//! and `-- CMD`. A thread installs its list itself: a vCPU before its first
//! KVM_RUN, a device thread before it handles guest data, the supervisor
//! once every thread is started. Filters stack: a virtio worker is started
//! by the vCPU that activates the device, so it runs under the vCPU's list
//! and its own.
//!
//! Threads other than the supervisor never open files, but libraries they
//! call may try: glibc's malloc opens /proc/sys/vm/overcommit_memory the
//! first time any thread shrinks its arena's heap (`check_may_shrink_heap`,
//! once per process, from whichever thread frees enough first). Killing
//! the VM for that let any guest that made a vCPU or worker thread allocate
//! and free enough end it (status 12). So on those threads `openat` is
//! answered with EACCES by a second, stacked filter ([`no_open_program`])
//! instead of trapping: glibc then shrinks with madvise(MADV_DONTNEED), and
//! no file is opened by them, ever (the kernel takes the most restrictive
//! answer of stacked filters: EACCES over the list's allow).
//!
//! `--seccomp kill` (the default) traps a call outside the list: a SIGSYS
//! handler prints one line naming the thread and the system call number and
//! ends the process with [`VIOLATION_STATUS`] (252 with `-- CMD`).
//! `--seccomp log` lets the call through and the kernel logs it (audit,
//! `dmesg | grep type=1326`); `off` installs nothing.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `--seccomp`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Stop splitvm at the first call outside a thread's list.
    #[default]
    Kill,
    /// Allow the call; the kernel logs it (to find a missing call).
    Log,
    /// No filters (debugging only).
    Off,
}

/// The kinds of thread splitvm runs, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    /// virtio-blk / virtio-net queue workers.
    VirtioWorker,
    /// The PIT's timer thread.
    Timer,
    /// The `--trace-exits` reader.
    Tracer,
    /// The main thread once the VM runs: supervision, reports, teardown.
    Supervisor,
    /// The `--api-socket` server (src/api.rs): sockets and epoll only.
    Api,
}

impl ThreadKind {
    /// The kind of a device thread, by the name it gives itself.
    pub fn of_thread(name: &str) -> Option<ThreadKind> {
        match name {
            "virtio-blk" | "virtio-net" => Some(ThreadKind::VirtioWorker),
            "pit-timer" => Some(ThreadKind::Timer),
            "trace" => Some(ThreadKind::Tracer),
            n if n.starts_with("vcpu") => Some(ThreadKind::Vcpu),
            _ => None,
        }
    }
}

/// Exit status of `splitvm run` after a call outside an allow-list.
pub const VIOLATION_STATUS: i32 = 12;
/// The same with `-- CMD` (where 12 could be the command's status).
pub const VIOLATION_STATUS_COMMAND: i32 = 252;

static STATUS: AtomicI32 = AtomicI32::new(VIOLATION_STATUS);

thread_local! {
    /// This thread's name, kept for the SIGSYS handler (which may not
    /// allocate or make calls outside the lists).
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

// Every thread: memory, locks, signals, time, its own exit, logging.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_prctl,
    // F_GETFL/F_SETFL on its own descriptors; F_DUPFD_CLOEXEC (try_clone).
    libc::SYS_fcntl,
    // A thread started under this list installs its own (stacked) list.
    libc::SYS_seccomp,
];

// Starting a thread (vCPUs start virtio workers on device activation).
const THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
];

// The virtio workers' I/O: epoll on eventfds, disk files, TAP devices.
const WORKER_IO: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_lseek,
];

// The vCPU's device handlers: eventfds for irqfds and ioeventfds.
const VCPU_EXTRA: &[i64] = &[libc::SYS_eventfd2];

// The supervisor: KVM statistics, report files, tracefs, kicking vCPUs.
const SUPERVISOR_EXTRA: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_tgkill,
    libc::SYS_fsync,
    // Snapshot files: the sparse memory file.
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
];

// The API server: accept and talk on its Unix socket, on tokio's epoll
// reactor (an eventfd wakes it).
const API_EXTRA: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
];

// ioctl request numbers (linux/kvm.h, asm-generic/ioctls.h).
const KVM_RUN: u64 = 0xae80;
const KVM_IRQ_LINE: u64 = 0x4008_ae61;
const KVM_SET_GSI_ROUTING: u64 = 0x4008_ae6a;
const KVM_IRQFD: u64 = 0x4020_ae76;
const KVM_IOEVENTFD: u64 = 0x4040_ae79;
const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_TRANSLATE: u64 = 0xc018_ae85;
const KVM_INTERRUPT: u64 = 0x4004_ae86;
const TCGETS: u64 = 0x5401;
// A snapshot: each vCPU reads its own state, the supervisor the KVM clock.
const KVM_GET_MSRS: u64 = 0xc008_ae88;
const KVM_GET_LAPIC: u64 = 0x8400_ae8e;
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
const KVM_GET_DEBUGREGS: u64 = 0x8080_aea1;
const KVM_GET_XSAVE: u64 = 0x9000_aea4;
const KVM_GET_XCRS: u64 = 0x8188_aea6;
const KVM_GET_CLOCK: u64 = 0x8030_ae7c;
const KVM_GET_TSC_KHZ: u64 = 0xaea3;
// KVM's in-kernel irqchip, read by the supervisor for reports, stuck-guest
// reports and snapshots (--irqchip kernel).
const KVM_GET_IRQCHIP: u64 = 0xc208_ae62;
const KVM_GET_PIT2: u64 = 0x8070_ae9f;

/// The ioctls each kind may make (none for the others).
fn ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        // KVM_RUN; interrupt delivery and routing by the devices it runs;
        // irqfd/ioeventfd changes on device (de)activation; the registers
        // read to describe a stop (KVM_GET_REGS/SREGS, KVM_TRANSLATE).
        ThreadKind::Vcpu => &[
            KVM_RUN,
            KVM_INTERRUPT,
            KVM_IRQ_LINE,
            KVM_SET_GSI_ROUTING,
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_SIGNAL_MSI,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_TRANSLATE,
            KVM_GET_MSRS,
            KVM_GET_LAPIC,
            KVM_GET_MP_STATE,
            KVM_GET_VCPU_EVENTS,
            KVM_GET_DEBUGREGS,
            KVM_GET_XSAVE,
            KVM_GET_XCRS,
            KVM_GET_TSC_KHZ,
        ],
        // Interrupts raised by the PIT and by virtio-mmio devices' pins.
        ThreadKind::Timer | ThreadKind::VirtioWorker => {
            &[KVM_IRQ_LINE, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI]
        }
        ThreadKind::Tracer | ThreadKind::Api => &[],
        // Teardown unregisters irqfds/ioeventfds and routes; TCGETS is
        // is_terminal() on stderr.
        // A snapshot's clock and its PIC/serial interrupts (KVM_IRQ_LINE,
        // when the channel's command goes out after it).
        ThreadKind::Supervisor => &[
            KVM_IRQFD,
            KVM_IOEVENTFD,
            KVM_SET_GSI_ROUTING,
            TCGETS,
            KVM_GET_CLOCK,
            KVM_IRQ_LINE,
            KVM_GET_IRQCHIP,
            KVM_GET_PIT2,
        ],
    }
}

/// The system calls `kind` may make without conditions.
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let mut v: Vec<i64> = BASE.to_vec();
    match kind {
        ThreadKind::Vcpu => {
            v.extend_from_slice(THREADS);
            v.extend_from_slice(VCPU_EXTRA);
            v.extend_from_slice(WORKER_IO);
        }
        ThreadKind::VirtioWorker => v.extend_from_slice(WORKER_IO),
        ThreadKind::Timer | ThreadKind::Tracer => {}
        ThreadKind::Api => v.extend_from_slice(API_EXTRA),
        // The supervisor restarts virtio workers after a snapshot: like a
        // vCPU, it starts them, and they run under its list and their own.
        ThreadKind::Supervisor => {
            v.extend_from_slice(THREADS);
            v.extend_from_slice(SUPERVISOR_EXTRA);
            v.extend_from_slice(VCPU_EXTRA);
            v.extend_from_slice(WORKER_IO);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether `kind` may open files (the supervisor); the others get EACCES.
fn opens_files(kind: ThreadKind) -> bool {
    kind == ThreadKind::Supervisor
}

/// The stacked filter of a thread that may not open files: `openat` fails
/// with EACCES, everything else is left to the allow-list (module docs).
fn no_open_program() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_openat, Vec::new())]);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// The BPF programs `kind` installs in `mode`, in order (none for `off`):
/// its allow-list, and for a thread that may not open files the stacked
/// EACCES answer to `openat` (module docs).
pub fn programs(kind: ThreadKind, mode: Mode) -> Result<Vec<BpfProgram>, String> {
    let Some(list) = program(kind, mode)? else {
        return Ok(Vec::new());
    };
    let mut v = vec![list];
    if !opens_files(kind) {
        v.push(no_open_program()?);
    }
    Ok(v)
}

/// The allow-list program for `kind` in `mode` (None for `off`). For a
/// thread that may not open files it lets `openat` through to the stacked
/// filter that answers it with EACCES.
pub fn program(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, String> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::Kill => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    if !opens_files(kind) {
        rules.insert(libc::SYS_openat, Vec::new());
    }
    let ioctl_rules = ioctls(kind)
        .iter()
        .map(|&req| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if !ioctl_rules.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctl_rules);
    }
    // Threads that raise ISA interrupt lines kick vCPU 0 when the 8259's
    // output rises: tgkill, only to this process and only the kick signal.
    if matches!(
        kind,
        ThreadKind::Vcpu | ThreadKind::Timer | ThreadKind::VirtioWorker
    ) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        let kick = crate::signals::kick_signal() as u64;
        let rule = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid)
            .and_then(|a| {
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, kick)
                    .and_then(|b| SeccompRule::new(vec![a, b]))
            })
            .map_err(|e| e.to_string())?;
        rules.insert(libc::SYS_tgkill, vec![rule]);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Install `kind`'s list on the calling thread, named `name` in messages.
pub fn install(kind: ThreadKind, mode: Mode, name: &str) -> Result<(), String> {
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    NAME.with(|c| c.set(n));
    for p in cached_programs(kind, mode)? {
        seccompiler::apply_filter(&p)
            .map_err(|e| format!("cannot install the seccomp filter of thread '{name}': {e}"))?;
    }
    Ok(())
}

/// [`programs`], compiled once per (kind, mode) for the process: every vCPU
/// thread installs the same list, and `--cpus` can be in the hundreds.
fn cached_programs(kind: ThreadKind, mode: Mode) -> Result<Vec<BpfProgram>, String> {
    type Cache = Vec<((ThreadKind, Mode), Vec<BpfProgram>)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
    let mut cache = devices::sync::lock(&CACHE);
    if let Some((_, p)) = cache.iter().find(|(k, _)| *k == (kind, mode)) {
        return Ok(p.clone());
    }
    let p = programs(kind, mode)?;
    cache.push(((kind, mode), p.clone()));
    Ok(p)
}

fn write_stderr(b: &[u8]) {
    // SAFETY: write(2) from a buffer we own; allowed on every list.
    unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo for SIGSYS: si_call_addr (pointer) at 16, si_syscall (int) at 24.
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let name = NAME.with(|c| c.get());
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(16)];
    let mut num = [0u8; 12];
    let mut i = num.len();
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        num[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    write_stderr(b"splitvm: seccomp: thread '");
    write_stderr(name);
    write_stderr(b"' made system call ");
    write_stderr(&num[i..]);
    write_stderr(b", which its allow-list does not include; stopping (docs/security.md)\n");
    // SAFETY: exit_group(2); nothing else may run after a violation.
    unsafe { libc::_exit(STATUS.load(Ordering::Relaxed)) };
}

/// Install the SIGSYS handler (process-wide) for `kill` mode.
pub fn install_sigsys_handler(command_mode: bool) -> Result<(), String> {
    STATUS.store(
        if command_mode {
            VIOLATION_STATUS_COMMAND
        } else {
            VIOLATION_STATUS
        },
        Ordering::Relaxed,
    );
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Set up seccomp for this run: the SIGSYS handler, and the hook device
/// threads (in the `devices` crate) call when they start.
pub fn setup(mode: Mode, command_mode: bool) -> Result<(), String> {
    let _ = MODE.set(mode);
    if mode == Mode::Kill {
        install_sigsys_handler(command_mode)?;
    }
    devices::thread_start::set_hook(Box::new(|name: &str| {
        let mode = *MODE.get().unwrap_or(&Mode::Kill);
        if let Some(kind) = ThreadKind::of_thread(name) {
            if let Err(e) = install(kind, mode, name) {
                // Running unconfined when confinement was asked for is not an option.
                eprintln!("splitvm: {e}");
                std::process::exit(2);
            }
        }
    }));
    Ok(())
}

/// The mode `setup` was given.
pub fn mode() -> Mode {
    *MODE.get().unwrap_or(&Mode::Off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_kind_compiles_to_a_program_in_kill_and_log_mode() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::VirtioWorker,
            ThreadKind::Timer,
            ThreadKind::Tracer,
            ThreadKind::Supervisor,
        ] {
            for mode in [Mode::Kill, Mode::Log] {
                assert!(program(kind, mode).unwrap().is_some(), "{kind:?} {mode:?}");
            }
            assert!(program(kind, Mode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn workers_may_not_start_processes_or_open_files_and_vcpus_may_not_open_files() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::VirtioWorker,
            ThreadKind::Timer,
            ThreadKind::Tracer,
        ] {
            let a = allowed(kind);
            for nr in [
                libc::SYS_execve,
                libc::SYS_openat,
                libc::SYS_socket,
                libc::SYS_ptrace,
                libc::SYS_fork,
            ] {
                assert!(!a.contains(&nr), "{kind:?} allows {nr}");
            }
        }
        assert!(!allowed(ThreadKind::Supervisor).contains(&libc::SYS_execve));
    }

    #[test]
    fn threads_that_may_not_open_files_get_eacces_from_a_stacked_filter() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::VirtioWorker,
            ThreadKind::Timer,
            ThreadKind::Tracer,
        ] {
            assert_eq!(programs(kind, Mode::Kill).unwrap().len(), 2, "{kind:?}");
        }
        assert_eq!(
            programs(ThreadKind::Supervisor, Mode::Kill).unwrap().len(),
            1
        );
        assert!(programs(ThreadKind::Vcpu, Mode::Off).unwrap().is_empty());
    }

    #[test]
    fn snapshot_ioctl_numbers_match_the_kvm_structures() {
        use kvm_bindings::*;
        use std::mem::size_of;
        let ior = |nr: u64, size: usize| 2 << 30 | (size as u64) << 16 | 0xae << 8 | nr;
        assert_eq!(
            KVM_GET_MSRS,
            3 << 30 | (size_of::<kvm_msrs>() as u64) << 16 | 0xae88
        );
        assert_eq!(KVM_GET_LAPIC, ior(0x8e, size_of::<kvm_lapic_state>()));
        assert_eq!(KVM_GET_MP_STATE, ior(0x98, size_of::<kvm_mp_state>()));
        assert_eq!(KVM_GET_VCPU_EVENTS, ior(0x9f, size_of::<kvm_vcpu_events>()));
        assert_eq!(KVM_GET_DEBUGREGS, ior(0xa1, size_of::<kvm_debugregs>()));
        assert_eq!(KVM_GET_XSAVE, ior(0xa4, size_of::<kvm_xsave>()));
        assert_eq!(KVM_GET_XCRS, ior(0xa6, size_of::<kvm_xcrs>()));
        assert_eq!(KVM_GET_CLOCK, ior(0x7c, size_of::<kvm_clock_data>()));
        assert_eq!(KVM_GET_REGS, ior(0x81, size_of::<kvm_regs>()));
        assert_eq!(KVM_GET_TSC_KHZ, 0xae << 8 | 0xa3, "_IO(KVMIO, 0xa3)");
        assert_eq!(
            KVM_GET_IRQCHIP,
            3 << 30 | (size_of::<kvm_irqchip>() as u64) << 16 | 0xae62
        );
        assert_eq!(KVM_GET_PIT2, ior(0x9f, size_of::<kvm_pit_state2>()));
    }

    #[test]
    fn thread_names_map_to_kinds() {
        assert_eq!(ThreadKind::of_thread("vcpu3"), Some(ThreadKind::Vcpu));
        assert_eq!(
            ThreadKind::of_thread("virtio-net"),
            Some(ThreadKind::VirtioWorker)
        );
        assert_eq!(ThreadKind::of_thread("pit-timer"), Some(ThreadKind::Timer));
        assert_eq!(ThreadKind::of_thread("main"), None);
    }
}
