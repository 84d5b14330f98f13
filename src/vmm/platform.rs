//! Stage 1 of `splitvm run`: the machine, every device placed once (on
//! its bus range, with its interrupt source row in the report), and stage
//! 3, its vCPU threads started.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;

use vmm_sys_util::signal::register_signal_handler;

use arch::acpi;
use arch::layout::{PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};
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
use devices::{fwcfg::FwCfg, Bus, BusDevice, VmControl};

use super::control::{Console, Running, SnapshotSetup};
use crate::config::{SerialDest, VmConfig};
use crate::error::{Error, Result};
use crate::irqchip::{IrqChip, IrqChipMode};
use crate::snapshot;
use crate::sources::SourceRegistry;
use crate::stats::VcpuCounters;
use crate::trace::Tracer;
use crate::vcpu::{self, VcpuContext};
use crate::virtio_setup;

/// ISA IRQ of the 8254 PIT (I/O APIC pin 2, see arch::layout::isa_irq_pin).
const PIT_ISA_IRQ: u8 = 0;

fn io_setup(what: &'static str) -> impl Fn(devices::BusError) -> Error {
    move |e| Error::Setup {
        what,
        msg: e.to_string(),
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
pub(super) fn coalesce_uarts(
    cfg: &VmConfig,
    kvm: &kvm_ioctls::Kvm,
    vm: &kvm_ioctls::VmFd,
    uarts: &[acpi::SerialPort],
    vcpus: &[kvm_ioctls::VcpuFd],
) -> (Option<crate::coalesced::Ring>, &'static str) {
    if !cfg.coalesced_io {
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

/// Stage 1: the machine, every device placed once (on its bus range, with
pub(super) struct Platform {
    pub(super) control: Arc<VmControl>,
    pub(super) irqchip: Arc<dyn IrqChip>,
    pub(super) pio: Bus,
    pub(super) mmio: Bus,
    pub(super) sources: SourceRegistry,
    pub(super) console: Console,
    pub(super) channel: Option<Arc<Channel>>,
    pub(super) msi_injected: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub(super) virtio: virtio_setup::VirtioSetup,
    /// The 16550-style ports placed (COM1, and COM2-COM4 in command mode),
    /// for the DSDT.
    pub(super) uarts: Vec<acpi::SerialPort>,
    /// ACPI tables (and the PM device they name) are written.
    pub(super) acpi: bool,
    /// The channel's control port (COM4), to send a command after a
    /// snapshot or a restore.
    pub(super) control_port: Option<Arc<Mutex<ControlPort>>>,
}

impl Platform {
    pub(super) fn build(
        cfg: &VmConfig,
        vm_fd: &Arc<kvm_ioctls::VmFd>,
        mem: &vm_memory::GuestMemoryMmap,
    ) -> Result<Platform> {
        let control = Arc::new(VmControl::new());
        let panicked = Arc::new(AtomicBool::new(false));
        let out = SerialOutput::new(serial_output(&cfg.run.serial)?).with_panic_watch(PanicWatch {
            panicked: panicked.clone(),
            control: control.clone(),
        });
        let mut p = Platform {
            // The irqchip of --irqchip (src/irqchip/).
            irqchip: crate::irqchip::create(cfg.irqchip, vm_fd.clone())?,
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
            acpi: cfg.has_acpi(),
            control_port: None,
        };
        if cfg.run.snapshot_on_ready.is_some() {
            p.control.snapshot_on_ready();
        }
        p.place_legacy(cfg, out)?;
        p.channel = p.place_channel(cfg)?;
        if cfg.test_devices {
            p.place_test_devices(cfg)?;
        }
        p.place_buses(cfg, mem)?;
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
    fn place_legacy(&mut self, cfg: &VmConfig, console: SerialOutput) -> Result<()> {
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
        if !cfg.pit {
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
    fn place_channel(&mut self, cfg: &VmConfig) -> Result<Option<Arc<Channel>>> {
        if !cfg.channel {
            return Ok(None);
        }
        let command = cfg.command_mode().then(|| cfg.run.command.clone());
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
    fn place_test_devices(&mut self, cfg: &VmConfig) -> Result<()> {
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
        let fw = dev(FwCfg::new(cfg.cpus as u16, cfg.mem_size));
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

    /// Put a snapshot's state into this (identically built) machine and
    /// its new vCPUs, before any runs: the KVM clock, each vCPU, the split
    /// irqchip, every device; then a waiting guest gets its command.
    pub(super) fn restore(
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
    fn place_buses(&mut self, cfg: &VmConfig, mem: &vm_memory::GuestMemoryMmap) -> Result<()> {
        if let Some(u) = self.irqchip.userspace() {
            let ioapic: Arc<Mutex<dyn BusDevice>> = u.ioapic.clone();
            self.mmio
                .insert("ioapic", IOAPIC_BASE, IOAPIC_SIZE, ioapic)
                .map_err(io_setup("ioapic"))?;
        }
        let pci = PciSegment::new(PCI_MMIO_START, PCI_MMIO_END);
        self.virtio = virtio_setup::attach(
            &cfg.disks,
            &cfg.nets,
            cfg.transport,
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
        if cfg.test_devices {
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
    pub(super) fn start(
        self,
        cfg: &VmConfig,
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
        let pio = Arc::new(self.pio);
        let mmio = Arc::new(self.mmio);
        let coalesced = ring.map(|r| Arc::new(crate::coalesced::Coalesced::new(r, pio.clone())));
        let sources = Arc::new(self.sources);
        let mut trace_unavailable = None;
        let tracer = if cfg.run.trace_exits {
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
        let host_cpus = if cfg.run.pin_vcpus {
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
                fault: cfg.run.fault_inject.filter(|_| id == 0),
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
            paused_since: Default::default(),
            paused_before: Default::default(),
        })
    }
}
