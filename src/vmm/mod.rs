//! `splitvm run`: one machine description (src/config.rs) put together
//! and run, in rooms: the platform and its vCPU threads (platform.rs), the
//! running VM and what can be done to it (control.rs), its supervision
//! until it stops (supervisor.rs), what the API tells of it (info.rs).

mod control;
mod info;
mod platform;
mod supervisor;

use std::sync::Arc;
use std::time::Instant;

use arch::acpi;
use arch::cpuid::CpuidConfig;
use arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};

use crate::cli::RunArgs;
use crate::config::VmConfig;
use crate::error::{Error, Result};
use crate::host;
use crate::initramfs;
use crate::kvm_stats::KvmStats;
use crate::loader;
use crate::snapshot::{self, pause::Pause, HostCpu, Machine};
use crate::vcpu::{self, BootState};
use crate::vm;
use control::SnapshotSetup;
use platform::Platform;

pub use crate::config::MAX_CPUS;

/// The command line a Linux guest gets without `--cmdline`: the console on
/// the first serial port, reset through the keyboard controller, reboot at
/// once on a panic; plus, on a kvm_pvm host, what guest kernels need there
/// (docs/host-limits.md; the same file scripts/guest-cmdline.sh prints).
pub fn default_linux_cmdline(host: &host::HostReport) -> String {
    let mut c = String::from("console=ttyS0 reboot=k panic=-1");
    if host.kvm_modules.iter().any(|m| m == "kvm_pvm") {
        c.push(' ');
        c.push_str(include_str!("../../resources/guest/cmdline-kvm-pvm").trim());
    }
    c
}

/// Tell the project's /init to hand over to the splitvm agent (docs/ci-runner.md).
pub const AGENT_CMDLINE: &str = "splitvm.agent=1";

/// Boot (or restore) and run the VM `splitvm run` describes; returns the
/// process exit status.
pub fn run(args: &RunArgs) -> Result<i32> {
    let started = Instant::now();
    let mut cfg = VmConfig::from_args(args)?;
    supervisor::install_early(&cfg)?;
    crate::seccomp::setup(cfg.run.seccomp, cfg.command_mode()).map_err(|msg| Error::Setup {
        what: "seccomp",
        msg,
    })?;
    let kvm = vm::open_kvm()?;
    let supported = supported_cpuid(&kvm)?;
    let host_cpu = HostCpu::of(&supported);
    // A restore checks its snapshot first: the machine is the snapshot's.
    let restore = match &cfg.run.restore {
        Some(dir) => {
            let l = snapshot::load(dir, &host_cpu)?;
            check_restore_irqchip(&l, args)?;
            l.state.machine.apply(&mut cfg);
            check_restore(&l, &cfg)?;
            cfg.check()?;
            Some(l)
        }
        None => {
            cfg.boot.format = loader::format_of(&cfg.boot)?;
            None
        }
    };
    let api = match &cfg.run.api_socket {
        Some(path) => Some(crate::api::ApiServer::bind(path, cfg.run.seccomp)?),
        None => None,
    };
    run_machine(&cfg, started, kvm, supported, host_cpu, restore, api)
}

/// Stages 1-4: the platform (KVM VM, irqchip, every device placed once),
/// the guest (kernel, command line, firmware tables) or the snapshot's
/// state, the vCPUs, and supervision until the VM stops (then the report).
fn run_machine(
    cfg: &VmConfig,
    started: Instant,
    kvm: kvm_ioctls::Kvm,
    supported: kvm_bindings::CpuId,
    host_cpu: HostCpu,
    restore: Option<snapshot::Loaded>,
    api: Option<crate::api::ApiServer>,
) -> Result<i32> {
    vm::check_irqchip_caps(&kvm, cfg.irqchip)?;
    let caps = vm::host_caps(&kvm);
    if cfg.cpus as usize > caps.max_vcpus {
        return Err(Error::Cpus {
            got: cfg.cpus,
            max: caps.max_vcpus as u32,
        });
    }
    let mem = match &restore {
        Some(l) => l.map_memory(&arch::layout::ram_regions(cfg.mem_size))?,
        None => vm::guest_memory(cfg.mem_size)?,
    };
    let vm_fd = Arc::new(vm::create_vm(&kvm, &mem, cfg.irqchip, cfg.pit)?);
    // Before any vCPU exists (KVM refuses it after).
    if let Some(mask) = cfg.run.disable_exits {
        host::disable_exits(&vm_fd, mask).map_err(|msg| Error::Setup {
            what: "--disable-exits",
            msg,
        })?;
    }
    let host_report = host::detect();
    let platform = Platform::build(cfg, &vm_fd, &mem)?;
    let boot = match &restore {
        Some(_) => None,
        None => Some(load_guest(cfg, &platform, &mem, &host_report)?),
    };
    let mut kvm_stats = KvmStats::new(&*vm_fd);
    let vcpus = create_vcpus(
        cfg,
        &supported,
        &vm_fd,
        caps.tsc_deadline,
        &mem,
        boot.as_ref(),
        &mut kvm_stats,
    )?;
    if let Some(l) = &restore {
        platform.restore(l, &vm_fd, &vcpus)?;
    }
    // The guest TSC's rate, for reports (guests time themselves with it).
    let tsc_khz = vcpus.first().and_then(|v| v.get_tsc_khz().ok());
    // Snapshots save the MSRs KVM lists (read now, before seccomp); a
    // stuck-guest report needs the TSC and its deadline.
    let snapshots = cfg.run.snapshot_on_ready.is_some()
        || cfg.run.snapshot_on_signal.is_some()
        || api.is_some();
    let msr_indices = if snapshots {
        kvm.get_msr_index_list()
            .map_err(crate::error::kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec()
    } else {
        vec![
            crate::forensics::MSR_TSC,
            crate::forensics::MSR_TSC_DEADLINE,
        ]
    };
    let snap = SnapshotSetup {
        vm: vm_fd.clone(),
        host: host_cpu,
        machine: Machine::of(cfg),
        pause: Arc::new(Pause::new(vcpus.len(), msr_indices)),
    };
    let (ring, coalesced_io) = platform::coalesce_uarts(cfg, &kvm, &vm_fd, &platform.uarts, &vcpus);
    supervisor::install_stop_signals()?;
    let mut running = platform.start(cfg, vcpus, &mem, snap, ring)?;
    running.coalesced_io = coalesced_io;
    running.tsc_khz = tsc_khz;
    if let Some(a) = &api {
        a.start().map_err(|msg| Error::Setup {
            what: "API socket",
            msg,
        })?;
    }
    supervisor::supervise(cfg, started, running, &kvm_stats, &host_report, api)
}

/// Stage 2: the guest image, its command line and firmware tables in
/// guest memory; returns how the boot vCPU starts.
fn load_guest(
    cfg: &VmConfig,
    p: &Platform,
    mem: &vm_memory::GuestMemoryMmap,
    host_report: &host::HostReport,
) -> Result<BootState> {
    let mut cmdline = match &cfg.boot.cmdline {
        Some(c) => c.clone(),
        None if cfg.is_linux() => default_linux_cmdline(host_report),
        None => String::new(),
    };
    cmdline.push_str(&p.virtio.cmdline);
    if p.channel.is_some() {
        cmdline.push(' ');
        cmdline.push_str(AGENT_CMDLINE);
    }
    let mut initrd = match &cfg.boot.initrd {
        Some(path) if !cfg.boot.add.is_empty() => {
            let adds = cfg
                .boot
                .add
                .iter()
                .map(|a| initramfs::parse_add(a))
                .collect::<Result<Vec<_>>>()?;
            Some(initramfs::with_additions(path, &adds)?)
        }
        Some(path) => Some(loader::open_regular("initrd", path)?),
        None => None,
    };
    let acpi_cfg = p.acpi.then(|| acpi::AcpiConfig {
        num_cpus: cfg.cpus,
        ioapic_id: loader::ioapic_mp_id(cfg.cpus),
        pci_mmio: (PCI_MMIO_START, PCI_MMIO_END),
        ecam: (PCI_ECAM_START, PCI_ECAM_SIZE),
        serial: p.uarts.clone(),
        virtio_mmio: p.virtio.mmio_windows.clone(),
    });
    let (boot, _protocol) = loader::load(
        &cfg.boot,
        cfg.cpus,
        initrd.as_mut(),
        cmdline.trim(),
        mem,
        cfg.mem_size,
        acpi_cfg.as_ref(),
    )?;
    Ok(boot)
}

/// Every vCPU, created before any runs (CPUID, LAPIC LVTs, MSRs; the boot
/// vCPU's entry registers).
fn create_vcpus(
    vm_cfg: &VmConfig,
    supported: &kvm_bindings::CpuId,
    vm_fd: &kvm_ioctls::VmFd,
    tsc_deadline: bool,
    mem: &vm_memory::GuestMemoryMmap,
    boot: Option<&BootState>,
    kvm_stats: &mut KvmStats,
) -> Result<Vec<kvm_ioctls::VcpuFd>> {
    let hidden = |f: &str| vm_cfg.cpu_features.iter().any(|x| x == f);
    let cfg = CpuidConfig {
        num_cpus: vm_cfg.cpus,
        tsc_deadline: tsc_deadline && !hidden("-tsc-deadline"),
        x2apic: !hidden("-x2apic"),
    };
    let mut vcpus = Vec::new();
    for id in 0..vm_cfg.cpus {
        let b = boot.filter(|_| id == 0);
        let v = vcpu::create_vcpu(vm_fd, id, supported, cfg, mem, b)?;
        kvm_stats.add_vcpu(id, &v);
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// KVM_GET_SUPPORTED_CPUID: the vCPUs' CPUID base, and the host identity
/// a snapshot records.
fn supported_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<kvm_bindings::CpuId> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(crate::error::kvm("KVM_GET_SUPPORTED_CPUID"))
}

/// `--irqchip` with `--restore` may only name the snapshot's own mode.
fn check_restore_irqchip(l: &snapshot::Loaded, args: &RunArgs) -> Result<()> {
    let theirs = l.state.machine.irqchip;
    match args.irqchip {
        Some(ours) if ours != theirs => Err(Error::Restore(format!(
            "snapshot '{}' was taken with --irqchip {}; it restores only in that mode (leave --irqchip out)",
            l.dir.display(),
            theirs.name()
        ))),
        _ => Ok(()),
    }
}

/// A snapshot's machine against the restore's command line: a guest that
/// waits for a command needs one, and only a guest with the channel can
/// run one.
fn check_restore(l: &snapshot::Loaded, cfg: &VmConfig) -> Result<()> {
    let dir = l.dir.display();
    match (
        l.state.machine.channel,
        l.state.awaiting_command(),
        cfg.command_mode(),
    ) {
        (true, true, false) => Err(Error::Restore(format!(
            "snapshot '{dir}' was taken at the agent's ready: its guest waits for a command; give one after `--`"
        ))),
        (true, false, true) => Err(Error::Restore(format!(
            "snapshot '{dir}' was taken while its guest ran a command; restore it without `-- CMD` (it ends with that command's status)"
        ))),
        (false, _, true) => Err(Error::Restore(format!(
            "snapshot '{dir}' has no host-guest channel (it was not taken with `-- CMD`), so it cannot run a command"
        ))),
        _ => Ok(()),
    }
}
