//! vCPU creation and the KVM_RUN loop. Each vCPU runs on its own thread and
//! owns its counters; the only shared state it touches is the device buses
//! (devices behind their own locks) and the VM stop flag.

use std::cell::Cell;
use std::sync::Arc;

use kvm_bindings::{
    kvm_msr_entry, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use arch::cpuid::{patch_cpuid, CpuidConfig};
use arch::regs::{self, EntryMode};
use devices::pic::Pic;
use devices::{Bus, ExitReason, VmControl};

use crate::counters::{ExitKind, VcpuCounters, VcpuStats};
use crate::error::{kvm, Error, Result};
use crate::irqchip::IrqChip;
use crate::sources::SourceRegistry;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootState {
    pub entry: u64,
    pub mode: EntryMode,
    pub rsi: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rsp: u64,
}

/// Create vCPU `id` (APIC ID = id) with its CPUID, LAPIC LVTs and MSRs.
/// The boot vCPU also gets its entry registers; the others stay in
/// wait-for-SIPI, as KVM leaves non-BSP vCPUs of an in-kernel LAPIC.
pub fn create_vcpu(
    vm: &VmFd,
    id: u32,
    supported: &CpuId,
    cfg: CpuidConfig,
    mem: &GuestMemoryMmap,
    boot: Option<&BootState>,
) -> Result<VcpuFd> {
    let vcpu = vm.create_vcpu(id as u64).map_err(kvm("KVM_CREATE_VCPU"))?;
    let mut cpuid = supported.clone();
    patch_cpuid(&mut cpuid, id, cfg);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;

    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    use arch::lapic;
    lapic::set_lvt_delivery_mode(&mut lapic.regs, lapic::LVT_LINT0, lapic::DELIVERY_EXTINT);
    lapic::set_lvt_delivery_mode(&mut lapic.regs, lapic::LVT_LINT1, lapic::DELIVERY_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WB,
            ..Default::default()
        },
    ])
    .map_err(|e| Error::Setup {
        what: "MSRs",
        msg: format!("{e:?}"),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;

    if let Some(b) = boot {
        let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        regs::setup_sregs(mem, b.mode, &mut sregs).map_err(|e| Error::Setup {
            what: "boot page tables",
            msg: e.to_string(),
        })?;
        vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(kvm("KVM_SET_FPU"))?;
        let r = regs::boot_regs(b.entry, b.rsp, b.rsi, b.rax, b.rbx);
        vcpu.set_regs(&r).map_err(kvm("KVM_SET_REGS"))?;
    }
    Ok(vcpu)
}

/// The host CPUs this process may run on (its affinity mask).
pub fn allowed_host_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = this thread; the size matches the set.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
        .collect()
}

/// Pin the calling thread to host CPU `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set (cpu < CPU_SETSIZE is checked).
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = the calling thread; the size matches the set.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// The irqchip: EOI exits go to it; vCPU 0 takes a userspace PIC's
    /// interrupts.
    pub irqchip: Arc<dyn IrqChip>,
    pub control: Arc<VmControl>,
    pub mem: GuestMemoryMmap,
    /// This vCPU's counters (written only here, read by the supervisor).
    pub counters: Arc<VcpuCounters>,
    /// Interrupt sources: which source owns a port, an address, a pin.
    pub sources: Arc<SourceRegistry>,
    /// Test-only fault to inject in this vCPU (`--fault-inject`).
    pub fault: Option<crate::cli::FaultInject>,
    /// vCPU 0: the 8259's INT output reaches this vCPU's LINT0 (ExtINT,
    /// virtual wire), as on a PC.
    pub extint: bool,
    /// Snapshot pauses: this vCPU parks when one is asked for.
    pub pause: Arc<crate::snapshot::pause::Pause>,
    /// The UARTs' coalesced writes: drained before any exit is handled.
    pub coalesced: Option<Arc<crate::coalesced::Coalesced>>,
}

thread_local! {
    /// This thread's `kvm_run` (a vCPU thread), for [`on_kick`].
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Handler of the kick signal: makes the vCPU on this thread leave KVM_RUN,
/// or not enter it if it is about to (`immediate_exit`), so a kick sent
/// just before KVM_RUN is never lost.
pub extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // run_vcpu before its loop and valid for the thread's life; the
        // signal runs on this thread, so nothing else writes it now.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_INTERRUPT,
    kvm_bindings::KVMIO,
    0x86,
    kvm_bindings::kvm_interrupt
);

/// KVM_INTERRUPT: queue an external (ExtINT) vector, as the PIC's INTA
/// cycle gave it (kvm-ioctls has no wrapper for this ioctl).
fn inject_extint(vcpu: &VcpuFd, vector: u8) -> std::io::Result<()> {
    let irq = kvm_bindings::kvm_interrupt { irq: vector.into() };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which
    // is valid for the call; the fd is a vCPU fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Before KVM_RUN on vCPU 0: hand a pending PIC interrupt to KVM (the INTA
/// cycle happens here), or ask for an interrupt-window exit until the guest
/// can take it (IF set, LINT0 accepting ExtINT).
fn pic_pre_run(vcpu: &mut VcpuFd, pic: &Pic, id: u32, control: &VmControl) {
    let run = vcpu.get_kvm_run();
    if !pic.output() {
        run.request_interrupt_window = 0;
        return;
    }
    if run.ready_for_interrupt_injection != 0 && run.if_flag != 0 {
        let vector = pic.acknowledge();
        // The output can stay high after the INTA (automatic EOI with
        // another request pending, or a higher one): then it did not rise
        // and will not kick, so ask KVM to come back as soon as the guest
        // can take the next one, or a halted vCPU 0 is never woken.
        run.request_interrupt_window = u8::from(pic.output());
        if let Err(e) = inject_extint(vcpu, vector) {
            control.request_exit(ExitReason::VmmError(format!(
                "vCPU {id}: KVM refused the 8259's interrupt (KVM_INTERRUPT vector {vector:#x}): {e}"
            )));
        }
    } else {
        run.request_interrupt_window = 1;
    }
}

/// Run `vcpu` until the VM stops; returns a final snapshot of its counters.
pub fn run_vcpu(mut vcpu: VcpuFd, id: u32, mut ctx: VcpuContext) -> VcpuStats {
    let stats = ctx.counters.clone();
    let name = format!("vcpu{id}");
    if let Err(msg) = crate::seccomp::install(
        crate::seccomp::ThreadKind::Vcpu,
        crate::seccomp::mode(),
        &name,
    ) {
        ctx.control.request_exit(ExitReason::VmmError(msg));
        return stats.snapshot();
    }
    crate::startup::mark_first_kvm_run();
    let run_ptr: *mut kvm_bindings::kvm_run = vcpu.get_kvm_run();
    KVM_RUN.with(|r| r.set(run_ptr));
    let pic: Option<Arc<Pic>> = ctx
        .irqchip
        .userspace()
        .filter(|_| ctx.extint)
        .map(|u| u.pic.clone());
    if let Some(pic) = &pic {
        // A rising PIC output kicks this thread out of KVM_RUN (or a halt).
        // By kernel thread id, not pthread_t: the hook is removed before
        // this thread ends, and a late tgkill to a gone tid only fails.
        // SAFETY: getpid/gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let sig = crate::signals::kick_signal();
        pic.set_kick(move || {
            // SAFETY: tgkill takes plain integers; the worst outcome of a
            // stale tid is ESRCH.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
        });
    }
    loop {
        if ctx.control.is_stopping() {
            break;
        }
        if ctx.control.snapshot_pending() {
            ctx.pause.request();
        }
        if ctx.pause.requested() {
            let mem = &ctx.mem;
            ctx.pause.park(&mut vcpu, id, |v| {
                code_at_rip(v, mem).bytes.map(|b| b.to_vec())
            });
            continue;
        }
        if let Some(pic) = &pic {
            pic_pre_run(&mut vcpu, pic, id, &ctx.control);
        }
        let mut internal = false;
        let mut fail: Option<(u64, u32)> = None;
        let result = vcpu.run();
        // Whatever this exit is, the UARTs first see the writes the guest
        // made before it (src/coalesced.rs).
        if let Some(c) = &ctx.coalesced {
            c.drain();
        }
        if let Some(f) = ctx.fault.take() {
            inject_fault(f);
        }
        match result {
            Ok(exit) => {
                match exit {
                    VcpuExit::IoIn(port, data) => {
                        stats.exit(ExitKind::Io);
                        stats.source_pio(ctx.sources.pio_source(port as u64));
                        match ctx.pio.read(port as u64, data) {
                            Some(i) => stats.pio_device[i].inc(),
                            None => {
                                data.fill(0xff);
                                stats.unhandled_pio(port);
                            }
                        }
                    }
                    VcpuExit::IoOut(port, data) => {
                        stats.exit(ExitKind::Io);
                        stats.source_pio(ctx.sources.pio_source(port as u64));
                        match ctx.pio.write(port as u64, data) {
                            Some(i) => stats.pio_device[i].inc(),
                            None => stats.unhandled_pio(port),
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        stats.exit(ExitKind::Mmio);
                        stats.source_mmio(ctx.sources.mmio_source(addr));
                        match ctx.mmio.read(addr, data) {
                            Some(i) => stats.mmio_device[i].inc(),
                            None => {
                                data.fill(0xff);
                                stats.unhandled_mmio(addr);
                            }
                        }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        stats.exit(ExitKind::Mmio);
                        stats.source_mmio(ctx.sources.mmio_source(addr));
                        match ctx.mmio.write(addr, data) {
                            Some(i) => stats.mmio_device[i].inc(),
                            None => stats.unhandled_mmio(addr),
                        }
                    }
                    VcpuExit::IoapicEoi(vector) => {
                        stats.exit(ExitKind::IoapicEoi);
                        stats.eoi_vectors[vector as usize].inc();
                        // The irqchip ends the level interrupt(s) and says
                        // which pins they were, for attribution.
                        let pins = ctx.irqchip.eoi_exit(vector);
                        stats.eoi_exit(pins, |p| ctx.sources.pin_source(p));
                    }
                    VcpuExit::Hlt => stats.exit(ExitKind::Hlt),
                    VcpuExit::IrqWindowOpen => stats.exit(ExitKind::IrqWindow),
                    VcpuExit::Intr => stats.exit(ExitKind::Intr),
                    VcpuExit::Shutdown => {
                        stats.exit(ExitKind::Shutdown);
                        ctx.control.request_exit(ExitReason::TripleFault);
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        stats.exit(ExitKind::SystemEvent);
                        let reason = match kind {
                            KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Poweroff,
                            KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                            KVM_SYSTEM_EVENT_CRASH => {
                                ExitReason::GuestError(format!("vCPU {id}: guest reported a crash"))
                            }
                            k => ExitReason::GuestError(format!("vCPU {id}: system event {k}")),
                        };
                        ctx.control.request_exit(reason);
                    }
                    VcpuExit::InternalError => {
                        stats.exit(ExitKind::InternalError);
                        internal = true;
                    }
                    VcpuExit::FailEntry(reason, cpu) => {
                        stats.exit(ExitKind::FailEntry);
                        fail = Some((reason, cpu));
                    }
                    VcpuExit::Exception => {
                        stats.exit(ExitKind::Exception);
                        ctx.control.request_exit(ExitReason::GuestError(format!(
                            "vCPU {id}: unhandled exception exit"
                        )));
                    }
                    _ => stats.exit(ExitKind::Other),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.exit(ExitKind::Intr);
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                ctx.control.request_exit(ExitReason::VmmError(format!(
                    "vCPU {id}: KVM_RUN failed: {e}"
                )));
                break;
            }
        }
        if internal {
            let run = vcpu.get_kvm_run();
            // SAFETY: KVM filled the `internal` member for this exit reason.
            let (suberror, ndata, data) = unsafe {
                let i = run.__bindgen_anon_1.internal;
                (i.suberror, i.ndata, i.data)
            };
            let msg = describe_internal_error(
                &vcpu,
                &ctx.mem,
                id,
                suberror,
                &data[..(ndata as usize).min(16)],
            );
            ctx.control.request_exit(ExitReason::GuestError(msg));
        }
        if let Some((reason, cpu)) = fail {
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            ctx.control.request_exit(ExitReason::GuestError(format!(
                "vCPU {id}: VM entry failed (hardware reason {reason:#x}, host CPU {cpu}) at RIP {rip:#x}"
            )));
        }
    }
    // Before `vcpu` (and its kvm_run mapping) goes away: later kicks (the
    // supervisor keeps kicking until the thread ends) must not write to it.
    KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    if let Some(pic) = &pic {
        pic.clear_kick();
    }
    stats.snapshot()
}

/// `--fault-inject`: make this vCPU thread fail the way a bug would.
fn inject_fault(f: crate::cli::FaultInject) {
    use crate::cli::FaultInject;
    match f {
        FaultInject::PanicVcpu => panic!("fault injection: vCPU thread panic"),
        FaultInject::ArenaShrinkVcpu => {
            // 4096 blocks of 1000 bytes (below the mmap threshold: in this
            // thread's arena), freed from the top: the top chunk passes the
            // trim threshold and glibc shrinks the heap (shrink_heap), whose
            // first call in a process opens /proc/sys/vm/overcommit_memory.
            let mut v: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 1000]).collect();
            while let Some(b) = v.pop() {
                std::hint::black_box(b);
            }
        }
        FaultInject::SeccompVcpu => {
            // getppid is on no thread's allow-list, and harmless when the
            // filters are off (ptrace, tried first, made the test process
            // splitvm's tracer then, which stopped it).
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
    }
}

/// Where a vCPU is: RIP, CS, the physical address of CS:RIP and the 15
/// bytes there (None when they cannot be read).
pub struct CodeAt {
    pub rip: u64,
    pub cs: u16,
    pub phys: u64,
    pub bytes: Option<[u8; 15]>,
}

/// Read the instruction at `vcpu`'s RIP (through its page tables,
/// KVM_TRANSLATE). Run on the vCPU's own thread, outside KVM_RUN.
pub fn code_at_rip(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> CodeAt {
    let regs = vcpu.get_regs().ok();
    let sregs = vcpu.get_sregs().ok();
    let rip = regs.map(|r| r.rip).unwrap_or(0);
    let (cs_base, cs) = sregs.map(|s| (s.cs.base, s.cs.selector)).unwrap_or((0, 0));
    let linear = cs_base.wrapping_add(rip);
    let phys = vcpu
        .translate_gva(linear)
        .ok()
        .filter(|t| t.valid != 0)
        .map(|t| t.physical_address)
        .unwrap_or(linear);
    let mut bytes = [0u8; 15];
    let read = mem.read_slice(&mut bytes, GuestAddress(phys)).is_ok();
    CodeAt {
        rip,
        cs,
        phys,
        bytes: read.then_some(bytes),
    }
}

/// The bytes as hex, space-separated.
pub fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line: vCPU, RIP, instruction bytes, suberror.
fn describe_internal_error(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    id: u32,
    suberror: u32,
    data: &[u64],
) -> String {
    let what = match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event failure",
        4 => "unexpected exit reason",
        _ => "internal error",
    };
    let CodeAt {
        rip,
        cs: cs_sel,
        phys,
        bytes,
    } = code_at_rip(vcpu, mem);
    let hint = match (suberror, bytes) {
        (1, Some(b)) => host_limit_instruction(&b)
            .map(|n| {
                format!("; this is {n}, which this host's KVM cannot emulate (docs/host-limits.md)")
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    let insn = bytes.map_or_else(|| "unreadable".to_string(), |b| hex_bytes(&b));
    let extra = if data.is_empty() {
        String::new()
    } else {
        format!(
            ", data [{}]",
            data.iter()
                .map(|d| format!("{d:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "vCPU {id} stopped: KVM internal error, suberror {suberror} ({what}) at RIP {rip:#x} (CS {cs_sel:#x}, phys {phys:#x}), instruction bytes: {insn}{extra}{hint}"
    )
}

/// Name the instruction at the start of `bytes` when it is one that the
/// kvm_pvm host's emulator is known not to run (docs/host-limits.md):
/// cmpxchg16b, the xsave family, x87, int3/int n, and hypercalls.
pub fn host_limit_instruction(bytes: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    let mut rex_w = false;
    // Legacy prefixes, then at most one REX prefix.
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => i += 1,
            _ => break,
        }
    }
    if let Some(&b) = bytes.get(i) {
        if b & 0xf0 == 0x40 {
            rex_w = b & 8 != 0;
            i += 1;
        }
    }
    let op = *bytes.get(i)?;
    let modrm = bytes.get(i + 2).copied();
    let reg = modrm.map(|m| (m >> 3) & 7);
    let is_mem = modrm.is_some_and(|m| m >> 6 != 3);
    match (op, bytes.get(i + 1).copied()) {
        (0xcc, _) => Some("int3"),
        (0xcd, _) => Some("a software interrupt (int n)"),
        (0x9b, _) | (0xd8..=0xdf, _) => Some("an x87 instruction"),
        (0x0f, Some(0xc7)) if reg == Some(1) && is_mem && rex_w => Some("cmpxchg16b"),
        (0x0f, Some(0xc7)) if is_mem && matches!(reg, Some(3..=5)) => {
            Some("an xsave-family instruction (xrstors/xsavec/xsaves)")
        }
        (0x0f, Some(0xae)) if is_mem && matches!(reg, Some(4..=6)) => {
            Some("an xsave-family instruction (xsave/xrstor/xsaveopt)")
        }
        (0x0f, Some(0x01)) if matches!(modrm, Some(0xc1 | 0xd9)) => {
            Some("a hypercall (vmcall/vmmcall)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::host_limit_instruction as name;

    #[test]
    fn emulation_failures_name_the_known_host_limits() {
        assert_eq!(name(&[0x48, 0x0f, 0xc7, 0x0e]), Some("cmpxchg16b"));
        assert_eq!(name(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), Some("cmpxchg16b"));
        assert!(name(&[0x0f, 0xae, 0x27]).unwrap().contains("xsave"));
        assert!(name(&[0x48, 0x0f, 0xae, 0x2f]).unwrap().contains("xrstor"));
        assert_eq!(name(&[0xcc]), Some("int3"));
        assert_eq!(name(&[0xdb, 0xe2]), Some("an x87 instruction"));
        assert_eq!(
            name(&[0x0f, 0x01, 0xc1]),
            Some("a hypercall (vmcall/vmmcall)")
        );
    }

    #[test]
    fn ordinary_instructions_are_not_named() {
        // cmpxchg8b (no REX.W), lfence (0f ae e8: register form), mov, nop.
        assert_eq!(name(&[0x0f, 0xc7, 0x0e]), None);
        assert_eq!(name(&[0x0f, 0xae, 0xe8]), None);
        assert_eq!(name(&[0x48, 0x89, 0xc3]), None);
        assert_eq!(name(&[0x90]), None);
        assert_eq!(name(&[]), None);
    }
}
