//! Putting a VM together and running it: `splitvm run`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::register_signal_handler;

use arch::acpi;
use arch::cpuid::CpuidConfig;
use arch::layout::{MIN_MEMORY, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};
use devices::acpi_pm::AcpiPm;
use devices::channel::{
    Channel, ControlPort, CountingSink, COM2_BASE, COM2_PIN, COM3_BASE, COM3_PIN, COM4_BASE,
    COM4_PIN,
};
use devices::ioapic::{IOAPIC_BASE, IOAPIC_SIZE};
use devices::legacy::{QuietPorts, I8042, QUIET_PORTS};
use devices::pci::PciSegment;
use devices::pic::{self, PicPorts};
use devices::pit::{Pit, PIT_BASE, PIT_LEN, PORT61};
use devices::serial::{PanicWatch, SerialDevice, SerialOutput, COM1_BASE, COM1_PIN};
use devices::sync::lock;
use devices::testdev::{self, DebugExit, IrqLines, MsiTestPort, Scratch};
use devices::{fwcfg::FwCfg, Bus, BusDevice, ExitReason, VmControl};

use crate::cli::{parse_size, KernelFormat, RunArgs};
use crate::error::{Error, Result};
use crate::host;
use crate::initramfs;
use crate::irqchip::{IrqChip, IrqChipMode};
use crate::kvm_stats::KvmStats;
use crate::loader;
use crate::snapshot::{self, pause::Pause, HostCpu, Machine};
use crate::sources::SourceRegistry;
use crate::stats::{ReportInputs, SnapshotInfo, VcpuCounters, VcpuStats};
use crate::trace::{TraceReport, Tracer};
use crate::vcpu::{self, BootState, VcpuContext};
use crate::virtio_setup;
use crate::vm;

/// Most vCPUs `--cpus` takes before asking KVM (x86 KVM allows at most 4096
/// with CONFIG_MAXSMP; the host's own limit, KVM_CAP_MAX_VCPUS, is checked
/// next). Past 254 only ACPI can describe them (the MP table has 8-bit IDs).
pub const MAX_CPUS: u32 = 4096;

/// ISA IRQ of the 8254 PIT (I/O APIC pin 2, see arch::layout::isa_irq_pin).
const PIT_ISA_IRQ: u8 = 0;

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// The first panic of any splitvm thread: "thread 'NAME' panicked at FILE:LINE: MSG".
static PANICKED: Mutex<Option<String>> = Mutex::new(None);

/// Report a panic of any thread in one line and remember it, so the
/// supervisor stops the VM with status 10 and still writes the report.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("thread '{name}' panicked{at}: {msg}");
        eprintln!("splitvm: internal error: {line} (a bug in splitvm; please report it)");
        let mut p = lock(&PANICKED);
        if p.is_none() {
            *p = Some(line);
        }
    }));
}

extern "C" fn on_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// SIGUSR1 with `--snapshot-on-signal`: the supervisor takes a snapshot.
static SNAPSHOT_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_snapshot_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SNAPSHOT_SIGNALLED.store(true, Ordering::SeqCst);
}

/// SIGUSR2: print a stuck-guest report (src/forensics.rs); the VM goes on.
static STUCK_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stuck_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STUCK_SIGNALLED.store(true, Ordering::SeqCst);
}

fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages.max(0) as u64).saturating_mul(page.max(0) as u64)
}

fn io_setup(what: &'static str) -> impl Fn(devices::BusError) -> Error {
    move |e| Error::Setup {
        what,
        msg: e.to_string(),
    }
}

/// Where `--serial` sends the guest's console.
enum SerialDest {
    Stdout,
    Stderr,
    Sink,
    File(std::path::PathBuf),
}

fn parse_serial(spec: &str) -> Result<SerialDest> {
    match spec {
        "stdout" => Ok(SerialDest::Stdout),
        "stderr" => Ok(SerialDest::Stderr),
        "none" => Ok(SerialDest::Sink),
        s => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialDest::File(p.into())),
            _ => Err(Error::SerialSyntax(s.to_string())),
        },
    }
}

fn serial_output(dest: &SerialDest) -> Result<Box<dyn Write + Send>> {
    match dest {
        SerialDest::Stdout => Ok(Box::new(std::io::stdout())),
        SerialDest::Stderr => Ok(Box::new(std::io::stderr())),
        SerialDest::Sink => Ok(Box::new(std::io::sink())),
        SerialDest::File(p) => {
            let f = File::create(p).map_err(|err| Error::Output {
                what: "serial log",
                path: p.clone(),
                err,
            })?;
            Ok(Box::new(f))
        }
    }
}

fn dev<T: BusDevice + 'static>(d: T) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(d))
}

/// Validate the arguments a user can get wrong before touching KVM.
/// Returns the guest memory size and the serial destination.
fn check_args(args: &RunArgs) -> Result<(u64, SerialDest)> {
    if args.cpus == 0 || args.cpus > MAX_CPUS {
        return Err(Error::Cpus {
            got: args.cpus,
            max: MAX_CPUS,
        });
    }
    let mem = parse_size(&args.memory).ok_or_else(|| Error::MemorySyntax(args.memory.clone()))?;
    if mem < MIN_MEMORY {
        return Err(Error::MemoryTooSmall {
            got: mem >> 20,
            min: MIN_MEMORY >> 20,
        });
    }
    let host = host_memory_bytes();
    if mem > host {
        return Err(Error::MemoryTooLarge {
            got: mem >> 20,
            host: host >> 20,
        });
    }
    if args.restore.is_none() && !args.kernel().exists() {
        return Err(Error::File {
            what: "kernel",
            path: args.kernel().clone(),
            err: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    // In command mode the console must not mix into the command's stdout.
    let default_serial = if args.command_mode() {
        "none"
    } else {
        "stdout"
    };
    let serial = parse_serial(args.serial.as_deref().unwrap_or(default_serial))?;
    if args.snapshot_on_ready.is_some() && !args.command_mode() && !args.test_devices {
        return Err(Error::DeviceSpec(
            "--snapshot-on-ready needs a guest that says it is ready: `-- CMD` (the agent) or --test-devices (the ready port)".into(),
        ));
    }
    if !args.add.is_empty() && args.initrd.is_none() {
        return Err(Error::DeviceSpec(
            "--add needs --initrd: the files are appended to it as a cpio archive".into(),
        ));
    }
    Ok((mem & !0xfff, serial))
}

/// The command line a Linux guest gets without `--cmdline`: the console on
/// the first serial port, reset through the keyboard controller, reboot at
/// once on a panic; plus, on a kvm_pvm host, what guest kernels need there
/// (docs/host-limits.md; the same file scripts/guest-cmdline.sh prints).
pub fn default_linux_cmdline(host: &host::HostReport) -> String {
    let mut c = String::from("console=ttyS0 reboot=k panic=-1");
    if host.kvm_modules.iter().any(|m| m == "kvm_pvm") {
        c.push(' ');
        c.push_str(include_str!("../resources/guest/cmdline-kvm-pvm").trim());
    }
    c
}

/// Tell the project's /init to hand over to the splitvm agent (docs/ci-runner.md).
pub const AGENT_CMDLINE: &str = "splitvm.agent=1";

/// Boot and run a VM; returns the process exit status. Four stages, each
/// its own function: the platform (KVM VM, irqchip, every device placed
/// once), the guest (kernel, command line, firmware tables), the vCPUs,
/// and supervision until the VM stops (then the report).
pub fn run(args: &RunArgs) -> Result<i32> {
    let started = Instant::now();
    install_panic_hook();
    // First thing: a SIGUSR1 or SIGUSR2 sent early must not end the
    // process (their default action); they are taken once the VM runs.
    let handler = |sig, f| {
        register_signal_handler(sig, f).map_err(|e| Error::Setup {
            what: "signal handler",
            msg: e.to_string(),
        })
    };
    if args.snapshot_on_signal.is_some() {
        handler(libc::SIGUSR1, on_snapshot_signal)?;
    }
    handler(libc::SIGUSR2, on_stuck_signal)?;
    crate::seccomp::setup(args.seccomp, args.command_mode()).map_err(|msg| Error::Setup {
        what: "seccomp",
        msg,
    })?;
    // A restore checks its snapshot first: the machine is the snapshot's.
    let (kvm, supported, host_cpu, restore, machine_args);
    let (args, (mem_size, serial_dest)) = if let Some(dir) = &args.restore {
        kvm = vm::open_kvm()?;
        supported = supported_cpuid(&kvm)?;
        host_cpu = HostCpu::of(&supported);
        let l = snapshot::load(dir, &host_cpu)?;
        check_restore_irqchip(&l, args)?;
        machine_args = l.state.machine.apply(args);
        check_restore(&l, &machine_args)?;
        restore = Some(l);
        (&machine_args, check_args(&machine_args)?)
    } else {
        let checked = check_args(args)?;
        kvm = vm::open_kvm()?;
        supported = supported_cpuid(&kvm)?;
        host_cpu = HostCpu::of(&supported);
        restore = None;
        (args, checked)
    };
    let irqchip_mode = args.irqchip.unwrap_or_default();
    vm::check_irqchip_caps(&kvm, irqchip_mode)?;
    let caps = vm::host_caps(&kvm);
    if args.cpus as usize > caps.max_vcpus {
        return Err(Error::Cpus {
            got: args.cpus,
            max: caps.max_vcpus as u32,
        });
    }
    let mem = match &restore {
        Some(l) => l.map_memory(&arch::layout::ram_regions(mem_size))?,
        None => vm::guest_memory(mem_size)?,
    };
    let vm_fd = Arc::new(vm::create_vm(&kvm, &mem, irqchip_mode, !args.no_pit)?);
    // Before any vCPU exists (KVM refuses it after).
    if let Some(mask) = args.disable_exits {
        host::disable_exits(&vm_fd, mask).map_err(|msg| Error::Setup {
            what: "--disable-exits",
            msg,
        })?;
    }
    let host_report = host::detect();

    let format = match &restore {
        Some(l) => l.state.machine.kernel_format,
        None => loader::format_of(args)?,
    };
    // The host-guest channel: for `-- CMD`, or a restored guest that had it.
    let channel = match &restore {
        Some(l) => l.state.machine.channel,
        None => args.command_mode(),
    };
    let platform = Platform::build(args, format, channel, &vm_fd, &mem, mem_size, &serial_dest)?;
    let boot = match &restore {
        Some(_) => None,
        None => Some(load_guest(args, &platform, &mem, mem_size, &host_report)?),
    };
    let mut kvm_stats = KvmStats::new(&*vm_fd);
    let vcpus = create_vcpus(
        args,
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
    let msr_indices = if args.snapshot_on_ready.is_some() || args.snapshot_on_signal.is_some() {
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
        machine: platform.machine(args, mem_size),
        pause: Arc::new(Pause::new(vcpus.len(), msr_indices)),
    };
    let (ring, coalesced_io) = coalesce_uarts(args, &kvm, &vm_fd, &platform.uarts, &vcpus);
    let mut running = platform.start(args, vcpus, &mem, snap, ring)?;
    running.coalesced_io = coalesced_io;
    running.tsc_khz = tsc_khz;
    supervise(
        args,
        started,
        running,
        &kvm_stats,
        &host_report,
        &serial_dest,
    )
}

/// `--coalesced-io on`: the UARTs' data ports as coalesced PIO zones, and
/// the VM's ring mapped (src/coalesced.rs), with what the report says:
/// `on`, `off`, or `unavailable` (said once: KVM cannot, and the writes
/// exit as with `off`).
fn coalesce_uarts(
    args: &RunArgs,
    kvm: &kvm_ioctls::Kvm,
    vm: &kvm_ioctls::VmFd,
    uarts: &[acpi::SerialPort],
    vcpus: &[kvm_ioctls::VcpuFd],
) -> (Option<crate::coalesced::Ring>, &'static str) {
    if args.coalesced_io == crate::cli::Toggle::Off {
        return (None, "off");
    }
    let unavailable = |why: String| {
        log::warn!("--coalesced-io: {why}; the UARTs' writes exit as with --coalesced-io off");
        (None, "unavailable")
    };
    if !kvm.check_extension(kvm_ioctls::Cap::CoalescedPio) {
        return unavailable("KVM has no KVM_CAP_COALESCED_PIO".into());
    }
    let ring = match vcpus.first().map(crate::coalesced::Ring::map) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return unavailable(format!("cannot map the coalesced ring: {e}")),
        None => return (None, "off"),
    };
    for u in uarts {
        let at = kvm_ioctls::IoEventAddress::Pio(u.base.into());
        if let Err(e) = vm.register_coalesced_mmio(at, 1) {
            return unavailable(format!(
                "KVM_REGISTER_COALESCED_MMIO at port {:#x}: {e}",
                u.base
            ));
        }
    }
    (Some(ring), "on")
}

/// The guest's console: its last line (progress), its tail (why a command
/// got no status) and whether it printed a kernel panic.
struct Console {
    last_line: Arc<Mutex<String>>,
    tail: Arc<Mutex<std::collections::VecDeque<String>>>,
    panicked: Arc<AtomicBool>,
}

/// A Linux kernel: it gets the MP table, ACPI tables and a default command
/// line.
fn is_linux(format: KernelFormat) -> bool {
    matches!(format, KernelFormat::Elf | KernelFormat::Bzimage)
}

/// Stage 1: the machine, every device placed once (on its bus range, with
/// its interrupt source row in the report).
struct Platform {
    control: Arc<VmControl>,
    irqchip: Arc<dyn IrqChip>,
    pio: Bus,
    mmio: Bus,
    sources: SourceRegistry,
    console: Console,
    channel: Option<Arc<Channel>>,
    msi_injected: Option<Arc<std::sync::atomic::AtomicU64>>,
    virtio: virtio_setup::VirtioSetup,
    /// The 16550-style ports placed (COM1, and COM2-COM4 in command mode),
    /// for the DSDT.
    uarts: Vec<acpi::SerialPort>,
    /// The kernel's format, read once from its head.
    format: KernelFormat,
    /// ACPI tables (and the PM device they name) are written.
    acpi: bool,
    /// The channel's control port (COM4), to send a command after a
    /// snapshot or a restore.
    control_port: Option<Arc<Mutex<ControlPort>>>,
}

impl Platform {
    fn build(
        args: &RunArgs,
        format: KernelFormat,
        channel: bool,
        vm_fd: &Arc<kvm_ioctls::VmFd>,
        mem: &vm_memory::GuestMemoryMmap,
        mem_size: u64,
        serial_dest: &SerialDest,
    ) -> Result<Platform> {
        let control = Arc::new(VmControl::new());
        let panicked = Arc::new(AtomicBool::new(false));
        let out = SerialOutput::new(serial_output(serial_dest)?).with_panic_watch(PanicWatch {
            panicked: panicked.clone(),
            control: control.clone(),
        });
        let mut p = Platform {
            // The irqchip of --irqchip (src/irqchip/).
            irqchip: crate::irqchip::create(args.irqchip.unwrap_or_default(), vm_fd.clone())?,
            control,
            pio: Bus::new(),
            mmio: Bus::new(),
            sources: SourceRegistry::platform(),
            console: Console {
                last_line: out.last_line(),
                tail: out.tail(),
                panicked,
            },
            channel: None,
            msi_injected: None,
            virtio: Default::default(),
            uarts: Vec::new(),
            format,
            acpi: is_linux(format) && !args.no_acpi,
            control_port: None,
        };
        if args.snapshot_on_ready.is_some() {
            p.control.snapshot_on_ready();
        }
        p.place_legacy(args, out)?;
        p.channel = p.place_channel(args, channel)?;
        if args.test_devices {
            p.place_test_devices(args, mem_size)?;
        }
        p.place_buses(args, mem)?;
        Ok(p)
    }

    /// Place a port-I/O device, once: on the bus, and, when it raises an
    /// I/O APIC pin, as that pin's interrupt source owning these ports. So
    /// the report has a source row exactly for the devices that exist.
    fn place_pio(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
        pin: Option<usize>,
    ) -> Result<()> {
        self.pio
            .insert(name, base, len, device)
            .map_err(io_setup(name))?;
        if let Some(src) = pin.and_then(|p| self.sources.name_pin(p, name)) {
            self.sources.attach_pio(src, base, len);
        }
        Ok(())
    }

    /// Place a UART (8 ports at `base`, ISA IRQ `irq`, which is also its
    /// I/O APIC pin) and remember it for the firmware tables.
    fn place_uart(
        &mut self,
        name: &'static str,
        base: u64,
        irq: usize,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<()> {
        self.place_pio(name, base, 8, device, Some(irq))?;
        self.uarts.push(acpi::SerialPort {
            base: base as u16,
            irq: irq as u8,
        });
        Ok(())
    }

    /// The PC's legacy devices: the 8259 pair, COM1, the i8042 reset line,
    /// the PIT, the quiet ports, the ACPI PM block. (With the in-kernel
    /// irqchip the 8259 pair and the PIT are KVM's: their ports never
    /// reach splitvm.)
    fn place_legacy(&mut self, args: &RunArgs, console: SerialOutput) -> Result<()> {
        if let Some(u) = self.irqchip.userspace() {
            let pic_ports = dev(PicPorts(u.pic.clone()));
            for (base, offset) in [
                (pic::MASTER_BASE, pic::MASTER_OFFSET),
                (pic::SLAVE_BASE, pic::SLAVE_OFFSET),
                (pic::ELCR_BASE, pic::ELCR_OFFSET),
            ] {
                self.pio
                    .insert_with_offset("pic", base, 2, pic_ports.clone(), offset)
                    .map_err(io_setup("pic"))?;
            }
        }
        let serial = SerialDevice::new(self.irqchip.isa_line(COM1_PIN as u8), console);
        self.place_uart("serial", COM1_BASE, COM1_PIN, dev(serial))?;
        let i8042 = dev(I8042::new(self.control.clone()));
        self.pio
            .insert_with_offset("i8042", 0x60, 1, i8042.clone(), 0)
            .map_err(io_setup("i8042"))?;
        self.pio
            .insert_with_offset("i8042", 0x64, 1, i8042, 4)
            .map_err(io_setup("i8042"))?;
        // The 8254 PIT on ISA IRQ 0 (I/O APIC pin 2), for guests that
        // calibrate or tick with it (see docs/guest-kernel.md).
        let pit_pin = arch::layout::isa_irq_pin(PIT_ISA_IRQ).map(usize::from);
        if args.no_pit {
        } else if self.irqchip.mode() == IrqChipMode::Kernel {
            // KVM's PIT (vm::create_vm): its pin's source row only.
            if let Some(p) = pit_pin {
                self.sources.name_pin(p, "pit");
            }
        } else {
            let pit = Pit::new(self.irqchip.isa_line(PIT_ISA_IRQ)).map_err(|e| Error::Setup {
                what: "PIT timer thread",
                msg: e.to_string(),
            })?;
            let port61 = pit.port61();
            self.place_pio("pit", PIT_BASE.into(), PIT_LEN, dev(pit), pit_pin)?;
            self.place_pio("pit", PORT61.into(), 1, dev(port61), pit_pin)?;
        }
        let quiet = dev(QuietPorts);
        for (name, base, len) in QUIET_PORTS {
            self.pio
                .insert(name, *base, *len, quiet.clone())
                .map_err(io_setup("legacy ports"))?;
        }
        // ACPI fixed hardware (PM1a blocks, PM timer) when the guest gets
        // ACPI tables that name it (see loader::load).
        if self.acpi {
            let pm = dev(AcpiPm::new(self.control.clone(), acpi::S5_SLP_TYP));
            self.place_pio(
                "acpi-pm",
                acpi::PM_BASE.into(),
                acpi::PM_LEN.into(),
                pm,
                None,
            )?;
        }
        Ok(())
    }

    /// `-- CMD`: the host-guest channel on COM2-COM4 (devices/src/channel.rs),
    /// each port an interrupt source on its ISA pin (shared as on a PC).
    fn place_channel(&mut self, args: &RunArgs, channel: bool) -> Result<Option<Arc<Channel>>> {
        if !channel {
            return Ok(None);
        }
        let command = args.command_mode().then(|| args.command.clone());
        let ch = Channel::new(self.control.clone(), command);
        let stream =
            |irqchip: &dyn IrqChip, out: Box<dyn Write + Send>, stderr: bool, pin: usize| {
                let sink = CountingSink::new(out, ch.clone(), stderr);
                dev(SerialDevice::new(
                    irqchip.isa_line(pin as u8),
                    SerialOutput::new(Box::new(sink)),
                ))
            };
        let stdout = stream(&*self.irqchip, Box::new(std::io::stdout()), false, COM2_PIN);
        self.place_uart("cmd-stdout", COM2_BASE, COM2_PIN, stdout)?;
        let stderr = stream(&*self.irqchip, Box::new(std::io::stderr()), true, COM3_PIN);
        self.place_uart("cmd-stderr", COM3_BASE, COM3_PIN, stderr)?;
        let ctl = Arc::new(Mutex::new(ControlPort::new(
            self.irqchip.isa_line(COM4_PIN as u8),
            ch.clone(),
        )));
        self.control_port = Some(ctl.clone());
        self.place_uart("cmd-control", COM4_BASE, COM4_PIN, ctl)?;
        Ok(Some(ch))
    }

    /// `--test-devices`: isa-debug-exit, pc-testdev, fw_cfg, the MSI test
    /// port (docs/test-devices.md).
    fn place_test_devices(&mut self, args: &RunArgs, mem_size: u64) -> Result<()> {
        // After the devices above: pc-testdev names only the pins no device owns.
        self.sources.attach_testdev_lines();
        let exit = dev(DebugExit(self.control.clone()));
        self.place_pio("debug-exit", testdev::DEBUG_EXIT_PORT, 4, exit, None)?;
        let lines = IrqLines::new(
            (0..testdev::TESTDEV_IRQ_LINES as u32)
                .map(|gsi| self.irqchip.line(gsi))
                .collect(),
        );
        let (base, len) = (testdev::TESTDEV_IRQ_BASE, testdev::TESTDEV_IRQ_LINES);
        self.place_pio("pc-testdev", base, len, dev(lines), None)?;
        let scratch = dev(Scratch::default());
        self.place_pio("pc-testdev", testdev::TESTDEV_SCRATCH, 4, scratch, None)?;
        let fw = dev(FwCfg::new(args.cpus as u16, mem_size));
        let (base, len) = (devices::fwcfg::FW_CFG_PORT, devices::fwcfg::FW_CFG_LEN);
        self.place_pio("fw_cfg", base, len, fw, None)?;
        let (msi_src, msi_routing) =
            self.sources
                .register_msi_source("msi-test-port", self.irqchip.routing(), None);
        self.sources
            .attach_pio(msi_src, testdev::MSI_TEST_PORT, testdev::MSI_TEST_LEN);
        let port = MsiTestPort::new(msi_routing);
        self.msi_injected = Some(port.injected_counter());
        let (base, len) = (testdev::MSI_TEST_PORT, testdev::MSI_TEST_LEN);
        self.place_pio("msi-test-port", base, len, dev(port), None)?;
        let ready = dev(testdev::ReadyPort(self.control.clone()));
        self.place_pio("ready-port", testdev::READY_PORT, 1, ready, None)
    }

    /// `--test-devices`: the MSI-X test function on PCI bus 0
    /// (devices/src/pci/msix_testdev.rs), an MSI source in the report.
    fn place_msix_testdev(&mut self, pci: &Arc<PciSegment>) -> Result<()> {
        use devices::pci::msix_testdev::MsixTestDevice;
        let setup = |e: devices::pci::PciError| Error::Setup {
            what: "MSI-X test device",
            msg: e.to_string(),
        };
        let (src, routing) =
            self.sources
                .register_msi_source("msix-testdev", self.irqchip.routing(), None);
        let d = MsixTestDevice::new(routing, self.irqchip.events(), self.irqchip.msi_gsis())
            .map_err(setup)?;
        self.sources
            .set_device_counters(src, Arc::new(virtio_setup::MsixCounters(d.msix())));
        pci.add_device(Arc::new(Mutex::new(d))).map_err(setup)?;
        Ok(())
    }

    /// The machine's shape, for a snapshot.
    fn machine(&self, args: &RunArgs, mem_size: u64) -> Machine {
        Machine {
            cpus: args.cpus,
            memory_bytes: mem_size,
            kernel_format: self.format,
            acpi: self.acpi,
            pit: !args.no_pit,
            test_devices: args.test_devices,
            channel: self.channel.is_some(),
            cpu_features: args.cpu_features.clone(),
            disks: args.disk.iter().map(|d| absolute_disk(d)).collect(),
            nets: args.net.clone(),
            transport: args.transport,
            irqchip: self.irqchip.mode(),
        }
    }

    /// Put a snapshot's state into this (identically built) machine and
    /// its new vCPUs, before any runs: the KVM clock, each vCPU, the split
    /// irqchip, every device; then a waiting guest gets its command.
    fn restore(
        &self,
        l: &snapshot::Loaded,
        vm_fd: &kvm_ioctls::VmFd,
        vcpus: &[kvm_ioctls::VcpuFd],
    ) -> Result<()> {
        let bad = |e: String| Error::Restore(format!("snapshot '{}': {e}", l.dir.display()));
        let mut clock = l.state.clock;
        // Without KVM_CLOCK_REALTIME KVM sets the clock as saved: the
        // guest's time goes on from the snapshot instant.
        clock.flags = 0;
        vm_fd
            .set_clock(&clock)
            .map_err(|e| bad(format!("KVM_SET_CLOCK: {e}")))?;
        for (v, s) in vcpus.iter().zip(&l.state.vcpus) {
            s.restore(v).map_err(bad)?;
        }
        self.irqchip.restore(&l.state.irqchip)?;
        self.pio
            .restore(&l.state.pio)
            .map_err(|e| bad(e.to_string()))?;
        self.mmio
            .restore(&l.state.mmio)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(port) = &self.control_port {
            lock(port).send_command();
        }
        Ok(())
    }

    /// The I/O APIC's page, PCI segment 0 (host bridge always there, config
    /// ports with the 0xCF9 reset, BAR window, ECAM) and the virtio devices
    /// (`--disk`, `--net` on `--transport pci|mmio`).
    fn place_buses(&mut self, args: &RunArgs, mem: &vm_memory::GuestMemoryMmap) -> Result<()> {
        if let Some(u) = self.irqchip.userspace() {
            let ioapic: Arc<Mutex<dyn BusDevice>> = u.ioapic.clone();
            self.mmio
                .insert("ioapic", IOAPIC_BASE, IOAPIC_SIZE, ioapic)
                .map_err(io_setup("ioapic"))?;
        }
        let pci = PciSegment::new(PCI_MMIO_START, PCI_MMIO_END);
        self.virtio = virtio_setup::attach(
            &args.disk,
            &args.net,
            args.transport,
            virtio_setup::Wiring {
                mem,
                routing: self.irqchip.routing(),
                events: self.irqchip.events(),
                irqchip: &*self.irqchip,
                control: &self.control,
                pio: &mut self.pio,
                mmio: &mut self.mmio,
                sources: &mut self.sources,
                pci: &pci,
                msi_gsis: self.irqchip.msi_gsis(),
            },
        )?;
        if args.test_devices {
            self.place_msix_testdev(&pci)?;
        }
        pci.attach_with_ecam(
            &mut self.pio,
            &mut self.mmio,
            Some(self.control.clone()),
            Some((PCI_ECAM_START, PCI_ECAM_SIZE)),
        )
        .map_err(io_setup("PCI bus"))
    }

    /// Stage 3: the vCPU threads, started (the buses and the registry are
    /// frozen from here on).
    fn start(
        self,
        args: &RunArgs,
        vcpus: Vec<kvm_ioctls::VcpuFd>,
        mem: &vm_memory::GuestMemoryMmap,
        snap: SnapshotSetup,
        ring: Option<crate::coalesced::Ring>,
    ) -> Result<Running> {
        register_signal_handler(crate::signals::kick_signal(), vcpu::on_kick).map_err(|e| {
            Error::Setup {
                what: "signal handler",
                msg: e.to_string(),
            }
        })?;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            register_signal_handler(sig, on_terminate).map_err(|e| Error::Setup {
                what: "signal handler",
                msg: e.to_string(),
            })?;
        }
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let coalesced = ring.map(|r| Arc::new(crate::coalesced::Coalesced::new(r, pio.clone())));
        let sources = Arc::new(self.sources);
        let mut trace_unavailable = None;
        let tracer = if args.trace_exits {
            let ioapic = self.irqchip.userspace().map(|u| u.ioapic.clone());
            match Tracer::start(sources.clone(), ioapic) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("splitvm: --trace-exits: {e}");
                    trace_unavailable = Some(e);
                    None
                }
            }
        } else {
            None
        };
        let counters: Vec<Arc<VcpuCounters>> = (0..vcpus.len())
            .map(|id| {
                Arc::new(VcpuCounters::new(
                    id as u32,
                    pio.device_names().len(),
                    mmio.device_names().len(),
                    sources.len(),
                ))
            })
            .collect();
        // --pin-vcpus: vCPU i runs on the i-th CPU of the process's affinity
        // mask (wrapping around).
        let host_cpus = if args.pin_vcpus {
            vcpu::allowed_host_cpus()
        } else {
            Vec::new()
        };
        let mut handles = Vec::new();
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let ctx = VcpuContext {
                pio: pio.clone(),
                mmio: mmio.clone(),
                irqchip: self.irqchip.clone(),
                control: self.control.clone(),
                mem: mem.clone(),
                counters: counters[id].clone(),
                sources: sources.clone(),
                fault: args.fault_inject.filter(|_| id == 0),
                extint: id == 0,
                pause: snap.pause.clone(),
                coalesced: coalesced.clone(),
            };
            let pin_to = (!host_cpus.is_empty()).then(|| host_cpus[id % host_cpus.len()]);
            let h = thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(cpu) = pin_to {
                        if let Err(e) = vcpu::pin_current_thread(cpu) {
                            log::warn!("vCPU {id}: cannot pin to host CPU {cpu}: {e}");
                        }
                    }
                    vcpu::run_vcpu(vcpu, id as u32, ctx)
                })
                .map_err(|e| Error::Setup {
                    what: "vCPU thread",
                    msg: e.to_string(),
                })?;
            handles.push(h);
        }
        if let Some(t) = &tracer {
            t.add_threads();
        }
        Ok(Running {
            control: self.control,
            irqchip: self.irqchip,
            pio_names: pio.device_names().to_vec(),
            mmio_names: mmio.device_names().to_vec(),
            pio,
            mmio,
            mem: mem.clone(),
            snap,
            control_port: self.control_port,
            sources,
            console: self.console,
            channel: self.channel,
            msi_injected: self.msi_injected,
            virtio: self.virtio,
            handles,
            counters,
            tracer,
            trace_unavailable,
            tsc_khz: None,
            coalesced,
            coalesced_io: "off",
        })
    }
}

/// Stage 2: the guest image, its command line and firmware tables in
/// guest memory; returns how the boot vCPU starts.
fn load_guest(
    args: &RunArgs,
    p: &Platform,
    mem: &vm_memory::GuestMemoryMmap,
    mem_size: u64,
    host_report: &host::HostReport,
) -> Result<BootState> {
    let mut cmdline = match &args.cmdline {
        Some(c) => c.clone(),
        None if is_linux(p.format) => default_linux_cmdline(host_report),
        None => String::new(),
    };
    cmdline.push_str(&p.virtio.cmdline);
    if p.channel.is_some() {
        cmdline.push(' ');
        cmdline.push_str(AGENT_CMDLINE);
    }
    let mut initrd = match &args.initrd {
        Some(path) if !args.add.is_empty() => {
            let adds = args
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
        num_cpus: args.cpus,
        ioapic_id: loader::ioapic_mp_id(args.cpus),
        pci_mmio: (PCI_MMIO_START, PCI_MMIO_END),
        ecam: (PCI_ECAM_START, PCI_ECAM_SIZE),
        serial: p.uarts.clone(),
        virtio_mmio: p.virtio.mmio_windows.clone(),
    });
    let (boot, _protocol) = loader::load(
        args,
        p.format,
        initrd.as_mut(),
        cmdline.trim(),
        mem,
        mem_size,
        acpi_cfg.as_ref(),
    )?;
    Ok(boot)
}

/// Every vCPU, created before any runs (CPUID, LAPIC LVTs, MSRs; the boot
/// vCPU's entry registers).
fn create_vcpus(
    args: &RunArgs,
    supported: &kvm_bindings::CpuId,
    vm_fd: &kvm_ioctls::VmFd,
    tsc_deadline: bool,
    mem: &vm_memory::GuestMemoryMmap,
    boot: Option<&BootState>,
    kvm_stats: &mut KvmStats,
) -> Result<Vec<kvm_ioctls::VcpuFd>> {
    let hidden = |f: &str| args.cpu_features.iter().any(|x| x == f);
    let cfg = CpuidConfig {
        num_cpus: args.cpus,
        tsc_deadline: tsc_deadline && !hidden("-tsc-deadline"),
        x2apic: !hidden("-x2apic"),
    };
    let mut vcpus = Vec::new();
    for id in 0..args.cpus {
        let b = boot.filter(|_| id == 0);
        let v = vcpu::create_vcpu(vm_fd, id, supported, cfg, mem, b)?;
        kvm_stats.add_vcpu(id, &v);
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// A `--disk` spec with its path made absolute (a restore may run in
/// another directory).
fn absolute_disk(spec: &str) -> String {
    let (path, rest) = spec.split_at(spec.find(',').unwrap_or(spec.len()));
    match std::fs::canonicalize(path) {
        Ok(p) => format!("{}{rest}", p.display()),
        Err(_) => spec.to_string(),
    }
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
fn check_restore(l: &snapshot::Loaded, args: &RunArgs) -> Result<()> {
    let dir = l.dir.display();
    match (
        l.state.machine.channel,
        l.state.awaiting_command(),
        args.command_mode(),
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

/// What taking a snapshot needs besides the buses and the irqchip.
struct SnapshotSetup {
    vm: Arc<kvm_ioctls::VmFd>,
    host: HostCpu,
    machine: Machine,
    pause: Arc<Pause>,
}

/// What supervision needs of a running VM.
struct Running {
    control: Arc<VmControl>,
    irqchip: Arc<dyn IrqChip>,
    pio_names: Vec<String>,
    mmio_names: Vec<String>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: vm_memory::GuestMemoryMmap,
    snap: SnapshotSetup,
    control_port: Option<Arc<Mutex<ControlPort>>>,
    sources: Arc<SourceRegistry>,
    console: Console,
    channel: Option<Arc<Channel>>,
    msi_injected: Option<Arc<std::sync::atomic::AtomicU64>>,
    virtio: virtio_setup::VirtioSetup,
    handles: Vec<thread::JoinHandle<VcpuStats>>,
    counters: Vec<Arc<VcpuCounters>>,
    tracer: Option<Tracer>,
    trace_unavailable: Option<String>,
    tsc_khz: Option<u32>,
    /// The UARTs' coalesced writes (`--coalesced-io on`).
    coalesced: Option<Arc<crate::coalesced::Coalesced>>,
    /// What the report says of them: `on`, `off`, `unavailable`.
    coalesced_io: &'static str,
}

impl Running {
    /// Hand the UARTs every write waiting in the coalesced ring (a no-op
    /// with `--coalesced-io off`).
    fn drain_coalesced(&self) {
        if let Some(c) = &self.coalesced {
            c.drain();
        }
    }
}

/// Stage 4: watch the VM until it stops, then join the vCPUs, write the
/// report and return the exit status.
fn supervise(
    args: &RunArgs,
    started: Instant,
    r: Running,
    kvm_stats: &KvmStats,
    host_report: &host::HostReport,
    serial_dest: &SerialDest,
) -> Result<i32> {
    let inputs = ReportInputs {
        started,
        pio_names: &r.pio_names,
        mmio_names: &r.mmio_names,
        irqchip: &*r.irqchip,
        msi_injected: r.msi_injected.as_deref(),
        sources: &r.sources,
        kvm_stats: Some(kvm_stats),
        host: host_report,
        disable_exits: args.disable_exits.unwrap_or(0),
        virtio: &r.virtio,
        command_mode: args.command_mode(),
        tsc_khz: r.tsc_khz,
        coalesced_io: r.coalesced_io,
        coalesced: r.coalesced.as_deref(),
    };
    let (snapshots, stuck) = watch(args, started, &r, &inputs);
    let mut stats: Vec<VcpuStats> = Vec::new();
    for h in r.handles {
        match h.join() {
            Ok(s) => stats.push(s),
            Err(_) => {
                let p = lock(&PANICKED).clone();
                r.control.request_exit(ExitReason::InternalError(
                    p.unwrap_or_else(|| "a vCPU thread panicked".into()),
                ));
            }
        }
    }
    // The guest's last writes (before a poweroff, a panic, a timeout, a
    // signal) reach the console and the channel.
    if let Some(c) = &r.coalesced {
        c.drain();
    }
    let mut reason = r
        .control
        .reason()
        .unwrap_or_else(|| ExitReason::VmmError("VM stopped without a reason".into()));
    // A panic with panic=-1 reboots before its closing line: still a panic.
    if r.console.panicked.load(Ordering::SeqCst)
        && matches!(
            reason,
            ExitReason::Reset | ExitReason::TripleFault | ExitReason::Timeout
        )
    {
        reason = ExitReason::GuestPanic;
    }
    // The tracer is finished (instance removed) before anything is printed.
    let trace = match r.tracer {
        Some(t) => Some(t.finish()),
        None => r.trace_unavailable.clone().map(TraceReport::unavailable),
    };
    let snap = SnapshotInfo {
        is_final: true,
        sequence: snapshots,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let mut report = inputs.build(&stats, Some(&reason), snap, trace);
    report.stuck = stuck;
    if let ExitReason::GuestError(m) | ExitReason::VmmError(m) = &reason {
        eprintln!("splitvm: {m}");
    }
    if let ExitReason::DebugExit(v) = &reason {
        if *v > 0x7f {
            eprintln!(
                "splitvm: the guest wrote {v:#x} to the debug-exit port; the exit status keeps 8 bits of ({v:#x} << 1) | 1, so it is {} (as QEMU's isa-debug-exit)",
                reason.status()
            );
        }
    }
    if let Some(ch) = &r.channel {
        if !matches!(reason, ExitReason::CommandExit(_)) {
            report_missing_status(&reason, ch, &r.console.tail, serial_dest);
        }
    }
    if args.stats {
        eprint!("{}", report.table());
    }
    if let Some(path) = &args.stats_json {
        crate::stats::write_json_atomic(path, &report).map_err(|err| Error::Output {
            what: "stats JSON",
            path: path.clone(),
            err,
        })?;
    }
    Ok(if r.channel.is_some() {
        reason.command_status()
    } else {
        reason.status()
    })
}

/// Until every vCPU thread has ended: turn signals, panics, the timeout and
/// dead vCPU threads into stop requests (a timeout or a signal first takes
/// a stuck-guest report, as SIGUSR2 does), kick the vCPUs while stopping,
/// show progress, write `--stats-interval` snapshots. Returns how many
/// snapshots were written (the final report's sequence number) and the
/// last stuck-guest report.
fn watch(
    args: &RunArgs,
    started: Instant,
    r: &Running,
    inputs: &ReportInputs,
) -> (u64, Option<crate::forensics::StuckReport>) {
    let mut stuck = None;
    let control = &r.control;
    let interval = args.stats_interval.map(Duration::from_secs_f64);
    let mut last_snapshot = Instant::now();
    let mut snapshot_seq = 0u64;
    let progress = match args.progress.as_str() {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };
    let deadline = args
        .timeout
        .map(|t| started + Duration::from_secs_f64(t.max(0.0)));
    let mut last_progress = Instant::now();
    // Every thread is started: from here on the main thread only supervises.
    if let Err(msg) =
        crate::seccomp::install(crate::seccomp::ThreadKind::Supervisor, args.seccomp, "main")
    {
        control.request_exit(ExitReason::VmmError(msg));
    }
    loop {
        let tick = Instant::now();
        // An idle guest's last line appears within 10 ms.
        r.drain_coalesced();
        if r.handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if control.is_stopping() {
            // vCPUs parked for a snapshot that will not be taken now.
            control.take_snapshot_request();
            r.snap.pause.resume();
            kick_vcpus(r);
        } else {
            let sig = SIGNALLED.load(Ordering::SeqCst);
            if let Some(p) = lock(&PANICKED).clone() {
                control.request_exit(ExitReason::InternalError(p));
            } else if sig != 0 {
                // The guest did not finish: say what it was doing first.
                stuck = Some(take_stuck(r, &format!("signal {sig}"), started));
                control.request_exit(ExitReason::Signal(sig));
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                stuck = Some(take_stuck(r, "timeout", started));
                control.request_exit(ExitReason::Timeout);
            } else if STUCK_SIGNALLED.swap(false, Ordering::SeqCst) {
                stuck = Some(take_stuck(r, "SIGUSR2", started));
            } else if r.handles.iter().any(|h| h.is_finished()) {
                control.request_exit(ExitReason::VmmError(
                    "a vCPU thread ended unexpectedly".into(),
                ));
            } else {
                snapshot_triggers(args, r);
            }
        }
        if progress && last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            let line = lock(&r.console.last_line).clone();
            let line: String = line.chars().take(60).collect();
            eprint!(
                "\r\x1b[K[splitvm {:6.1}s] exits {:>9} | {}",
                started.elapsed().as_secs_f64(),
                r.counters.iter().map(|c| c.total_exits()).sum::<u64>(),
                line
            );
        }
        if let (Some(iv), Some(path)) = (interval, &args.stats_json) {
            if !control.is_stopping() && last_snapshot.elapsed() >= iv {
                last_snapshot = Instant::now();
                let snaps: Vec<VcpuStats> = r.counters.iter().map(|c| c.snapshot()).collect();
                let snap = SnapshotInfo {
                    is_final: false,
                    sequence: snapshot_seq,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                };
                snapshot_seq += 1;
                let trace = match &r.tracer {
                    Some(t) => Some(t.snapshot()),
                    None => r.trace_unavailable.clone().map(TraceReport::unavailable),
                };
                let report = inputs.build(&snaps, None, snap, trace);
                if let Err(e) = crate::stats::write_json_atomic(path, &report) {
                    log::warn!("--stats-interval: cannot write {}: {e}", path.display());
                }
            }
        }
        let period = Duration::from_millis(if control.is_stopping() { 2 } else { 10 });
        thread::sleep(period.saturating_sub(tick.elapsed()));
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    (snapshot_seq, stuck)
}

/// Take the snapshots asked for: at the guest's first ready
/// (`--snapshot-on-ready`: a failure stops the VM, the snapshot was the
/// point; then the waiting guest gets its command) and on SIGUSR1
/// (`--snapshot-on-signal`: a failure is reported, the VM goes on).
fn snapshot_triggers(args: &RunArgs, r: &Running) {
    if r.control.take_snapshot_request() {
        if let Some(dir) = &args.snapshot_on_ready {
            match take_snapshot(r, dir, "ready") {
                Ok(()) => {
                    if let Some(port) = &r.control_port {
                        r.drain_coalesced();
                        lock(port).send_command();
                    }
                }
                Err(e) => {
                    r.control
                        .request_exit(ExitReason::VmmError(format!("--snapshot-on-ready: {e}")));
                }
            }
        }
    }
    if SNAPSHOT_SIGNALLED.swap(false, Ordering::SeqCst) {
        if let Some(dir) = &args.snapshot_on_signal {
            if let Err(e) = take_snapshot(r, dir, "signal") {
                eprintln!("splitvm: --snapshot-on-signal: {e}");
            }
        }
    }
}

/// Pause the VM at one consistent instant, save it into `dir`, resume.
/// Every vCPU parks first (no guest code runs, no register is written);
/// then the devices' own activity stops (the PIT's ticks, virtio workers at
/// a request boundary, their last interrupts landing in the LAPICs); only
/// then do the vCPUs save their state, so no tick or completion can fall
/// between the LAPICs' state and a device's.
fn take_snapshot(
    r: &Running,
    dir: &std::path::Path,
    trigger: &str,
) -> std::result::Result<(), String> {
    let t0 = Instant::now();
    let pause = &r.snap.pause;
    let result = pause
        .pause_all(|| kick_vcpus(r), || r.control.is_stopping(), Duration::from_secs(10))
        .and_then(|()| {
            let paused = t0.elapsed();
            r.pio.pause(true);
            r.mmio.pause(true);
            let saved = save_paused(r, dir, trigger);
            r.pio.pause(false);
            r.mmio.pause(false);
            pause.resume();
            let w = saved?;
            log::info!(
                "snapshot ({trigger}) written to {}: vCPUs paused in {:.1} ms, {:.1} ms in all; state {} KiB, memory {} of {} MiB written",
                dir.display(),
                paused.as_secs_f64() * 1e3,
                t0.elapsed().as_secs_f64() * 1e3,
                w.state_bytes >> 10,
                w.memory_written >> 20,
                w.memory_bytes >> 20
            );
            Ok(())
        });
    result
}

/// Kick every live vCPU thread out of KVM_RUN (or keep it from entering).
fn kick_vcpus(r: &Running) {
    for h in r.handles.iter().filter(|h| !h.is_finished()) {
        // SAFETY: the thread is alive (not finished) so its pthread_t is valid.
        unsafe { libc::pthread_kill(h.as_pthread_t(), crate::signals::kick_signal()) };
    }
}

/// A stuck-guest report (src/forensics.rs), printed on stderr: the vCPUs
/// park as for a snapshot, read their state, and run on.
fn take_stuck(r: &Running, trigger: &str, started: Instant) -> crate::forensics::StuckReport {
    let pause = &r.snap.pause;
    let vcpus = pause
        .pause_all(
            || kick_vcpus(r),
            || r.control.is_stopping(),
            crate::forensics::PARK_TIMEOUT,
        )
        .and_then(|()| {
            let v = pause.capture_parked();
            pause.resume();
            v
        });
    let report = crate::forensics::take(
        trigger,
        started.elapsed().as_millis() as u64,
        vcpus,
        &crate::forensics::Platform {
            irqchip: &*r.irqchip,
            virtio: &r.virtio,
            mem: &r.mem,
            control_port: r.control_port.as_deref(),
        },
    );
    eprint!("{}", report.render());
    report
}

/// With every vCPU parked: collect the state and write the snapshot.
fn save_paused(
    r: &Running,
    dir: &std::path::Path,
    trigger: &str,
) -> std::result::Result<snapshot::Written, String> {
    // Bytes in the ring belong to the UARTs' saved state.
    r.drain_coalesced();
    let vcpus = r.snap.pause.capture()?;
    let clock = r
        .snap
        .vm
        .get_clock()
        .map_err(|e| format!("KVM_GET_CLOCK: {e}"))?;
    let state = snapshot::VmState {
        splitvm_version: env!("CARGO_PKG_VERSION").into(),
        host: r.snap.host.clone(),
        trigger: trigger.into(),
        machine: r.snap.machine.clone(),
        memory_file: String::new(),
        clock,
        vcpus,
        irqchip: r.irqchip.save().map_err(|e| e.to_string())?,
        pio: r.pio.save().map_err(|e| e.to_string())?,
        mmio: r.mmio.save().map_err(|e| e.to_string())?,
    };
    snapshot::write(dir, state, &r.mem).map_err(|e| e.to_string())
}

/// `-- CMD` ended without the command's status: say why on stderr, with the
/// console's last lines when the console went nowhere else.
fn report_missing_status(
    reason: &ExitReason,
    ch: &Channel,
    tail: &Mutex<std::collections::VecDeque<String>>,
    serial: &SerialDest,
) {
    let why = match reason {
        ExitReason::GuestPanic => "the guest kernel panicked".to_string(),
        ExitReason::Timeout => "--timeout passed before the command ended".to_string(),
        ExitReason::Signal(s) => format!("splitvm was stopped by signal {s}"),
        ExitReason::GuestError(_) | ExitReason::VmmError(_) => {
            "the VM stopped on an error".to_string()
        }
        r => format!(
            "the VM stopped ({}) without reporting the command's status",
            r.name()
        ),
    };
    let hint = if ch.ready_seen() {
        ""
    } else {
        " (the guest never reached the splitvm agent: is it in the initramfs? see docs/ci-runner.md)"
    };
    eprintln!("splitvm: {why}{hint}; status {}", reason.command_status());
    if matches!(serial, SerialDest::Sink) {
        let t = lock(tail);
        if !t.is_empty() {
            eprintln!("splitvm: last {} console lines:", t.len());
            for l in t.iter() {
                eprintln!("  | {l}");
            }
        }
    }
}
