//! Virtio devices from the command line (`--disk`, `--net`) on the chosen
//! transport (`--transport pci|mmio`), wired to splitvm's buses, GSI router
//! and interrupt-source registry.
//!
//! - pci: a PCI segment (config mechanism #1 at 0xCF8, a host bridge, BARs
//!   in the 32-bit MMIO hole); each device has MSI-X with one GSI and irqfd
//!   per vector (GSIs from 24 up), queue notifications through ioeventfds.
//! - mmio: each device gets a 4 KiB window at 0xD000_0000 + 0x1000 * i and
//!   I/O APIC pin 5 + i, signalled through an irqfd on GSI = pin; the
//!   window is announced on the kernel command line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vm_memory::GuestMemoryMmap;

use arch::layout::VIRTIO_MMIO_START;
use devices::interrupt::{EventRegistry, SharedGsiAllocator};
use devices::pci::{MsixConfig, PciDevice, PciSegment};
use devices::sync::lock;
use devices::virtio::block::Block;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use devices::virtio::net::{parse_mac, Net};
use devices::virtio::pci::VirtioPciDevice;
use devices::virtio::VirtioDevice;
use devices::{Bus, BusDevice, MsiRouting, VmControl};
use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::cli::Transport;
use crate::error::{Error, Result};
use crate::sources::{MsiVectorCounters, MsiVectorSnapshot, SourceRegistry};

/// I/O APIC pins of virtio-mmio devices, in order: ISA IRQs in the MP table
/// and the MADT (edge, active high), which Linux maps one to one; pin 9 is
/// left out, it is the ACPI SCI (level).
pub const MMIO_PINS: [u32; 10] = [5, 6, 7, 8, 10, 11, 12, 13, 14, 15];
const _: () = assert!(MMIO_SIZE == arch::layout::VIRTIO_MMIO_SIZE);
const _: () = assert!(
    VIRTIO_MMIO_START + MMIO_SIZE * MMIO_PINS.len() as u64 <= arch::layout::VIRTIO_MMIO_END
);

enum Handle {
    Pci(Arc<Mutex<VirtioPciDevice>>),
    Mmio(Arc<Mutex<MmioTransport>>),
}

/// One attached device, for the report.
struct Attached {
    name: String,
    handle: Handle,
}

/// What the VMM keeps of its virtio devices.
#[derive(Default)]
pub struct VirtioSetup {
    /// Appended to the guest command line (virtio-mmio announcements).
    pub cmdline: String,
    /// virtio-mmio windows and their pins, for the ACPI DSDT.
    pub mmio_windows: Vec<arch::acpi::VirtioMmio>,
    devices: Vec<Attached>,
}

/// A virtio device's counters in the exit report.
#[derive(Debug, Clone, Serialize)]
pub struct VirtioDeviceReport {
    pub name: String,
    pub transport: &'static str,
    /// "pin 5" (mmio) or "MSI-X" (pci).
    pub interrupt: String,
    /// Interrupts the device signalled (used buffers and config changes).
    pub interrupts: u64,
    /// Queue notifications that reached userspace as exits (0 when every
    /// queue has an ioeventfd).
    pub notify_exits: u64,
    /// Device and transport counters by name.
    pub counters: BTreeMap<String, u64>,
}

fn parse_disk(spec: &str) -> Result<Block> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    let mut readonly = false;
    for p in parts {
        match p {
            "readonly" | "ro" => readonly = true,
            _ => {
                return Err(Error::DeviceSpec(format!(
                    "--disk {spec}: unknown option '{p}'"
                )))
            }
        }
    }
    if path.is_empty() {
        return Err(Error::DeviceSpec(format!("--disk {spec}: no file given")));
    }
    Block::new(path, readonly).map_err(|e| Error::DeviceSpec(format!("--disk {spec}: {e}")))
}

fn parse_net(spec: &str) -> Result<Net> {
    let mut tap = None;
    let mut mac = None;
    for p in spec.split(',') {
        match p.split_once('=') {
            Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_string()),
            Some(("mac", v)) => {
                mac = Some(parse_mac(v).ok_or_else(|| {
                    Error::DeviceSpec(format!("--net {spec}: bad MAC address '{v}'"))
                })?)
            }
            _ => {
                return Err(Error::DeviceSpec(format!(
                    "--net {spec}: expected tap=NAME[,mac=XX:XX:XX:XX:XX:XX]"
                )))
            }
        }
    }
    let tap =
        tap.ok_or_else(|| Error::DeviceSpec(format!("--net {spec}: tap=NAME is required")))?;
    Net::new(&tap, mac).map_err(|e| Error::DeviceSpec(format!("--net {spec}: {e}")))
}

/// MSI-X counters of a virtio-pci device, for the source registry.
/// An MSI-X function's per-vector counters, for its source row.
pub(crate) struct MsixCounters(pub(crate) MsixConfig);

impl MsiVectorCounters for MsixCounters {
    fn vectors(&self) -> Vec<MsiVectorSnapshot> {
        self.0
            .reports()
            .into_iter()
            .map(|r| MsiVectorSnapshot {
                index: r.index as u32,
                address: r.message.address,
                data: r.message.data,
                masked: r.masked,
                raised: r.stats.signalled,
                delivered: r.stats.delivered,
                pending: r.stats.pended,
            })
            .collect()
    }
}

/// Everything attaching needs from the VMM.
pub struct Wiring<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub routing: Arc<dyn MsiRouting>,
    pub events: Arc<dyn EventRegistry>,
    pub irqchip: &'a dyn crate::irqchip::IrqChip,
    pub control: &'a Arc<VmControl>,
    pub pio: &'a mut Bus,
    pub mmio: &'a mut Bus,
    pub sources: &'a mut SourceRegistry,
    /// PCI segment 0 (always present, with its host bridge).
    pub pci: &'a Arc<PciSegment>,
    /// The irqchip's GSIs for MSI-X vectors.
    pub msi_gsis: SharedGsiAllocator,
}

/// Create the devices named by `disks` and `nets` on `transport`.
pub fn attach(
    disks: &[String],
    nets: &[String],
    transport: Transport,
    w: Wiring<'_>,
) -> Result<VirtioSetup> {
    let mut devs: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        devs.push((format!("virtio-blk{i}"), Box::new(parse_disk(d)?)));
    }
    for (i, n) in nets.iter().enumerate() {
        devs.push((format!("virtio-net{i}"), Box::new(parse_net(n)?)));
    }
    let mut setup = VirtioSetup::default();
    if devs.is_empty() {
        return Ok(setup);
    }
    let setup_err = |what: &'static str| move |e: String| Error::Setup { what, msg: e };
    match transport {
        Transport::Pci => {
            let gsis = w.msi_gsis.clone();
            let pci = w.pci;
            for (name, dev) in devs {
                // Route updates go through the source's counting wrapper;
                // deliveries go through irqfds, so the MSI-X counters of the
                // device are what the report shows.
                let (src, routing) = w
                    .sources
                    .register_msi_source(&name, w.routing.clone(), None);
                let d = VirtioPciDevice::new(
                    dev,
                    w.mem.clone(),
                    routing,
                    w.events.clone(),
                    gsis.clone(),
                )
                .map_err(|e| setup_err("virtio-pci")(e.to_string()))?;
                w.sources
                    .set_device_counters(src, Arc::new(MsixCounters(d.msix())));
                let d = Arc::new(Mutex::new(d));
                let as_pci: Arc<Mutex<dyn PciDevice>> = d.clone();
                pci.add_device(as_pci)
                    .map_err(|e| setup_err("virtio-pci")(e.to_string()))?;
                setup.devices.push(Attached {
                    name,
                    handle: Handle::Pci(d),
                });
            }
        }
        Transport::Mmio => {
            // The device windows come from rust-vmm's address allocator over
            // the virtio-mmio area of the memory map (arch::layout).
            let mut windows = AddressAllocator::new(
                VIRTIO_MMIO_START,
                arch::layout::VIRTIO_MMIO_END - VIRTIO_MMIO_START,
            )
            .map_err(|e| setup_err("virtio-mmio")(e.to_string()))?;
            for (i, (name, dev)) in devs.into_iter().enumerate() {
                let Some(&pin) = MMIO_PINS.get(i) else {
                    return Err(Error::DeviceSpec(format!(
                        "at most {} virtio-mmio devices",
                        MMIO_PINS.len()
                    )));
                };
                let base = windows
                    .allocate(MMIO_SIZE, MMIO_SIZE, AllocPolicy::FirstMatch)
                    .map_err(|e| setup_err("virtio-mmio")(e.to_string()))?
                    .start();
                setup.mmio_windows.push(arch::acpi::VirtioMmio {
                    base,
                    size: MMIO_SIZE,
                    gsi: pin,
                });
                // The irqfd raises the pin's GSI; the irqchip learns the
                // pin is driven that way.
                let gsi = w.irqchip.irqfd_pin(pin as usize);
                let t = MmioTransport::new(dev, w.mem.clone(), base, gsi, w.events.clone())
                    .map_err(|e| setup_err("virtio-mmio")(e.to_string()))?;
                setup.cmdline.push(' ');
                setup.cmdline.push_str(&t.cmdline_fragment());
                if let Some(src) = w.sources.name_pin(pin as usize, &name) {
                    w.sources.attach_mmio(src, base, MMIO_SIZE);
                }
                let t = Arc::new(Mutex::new(t));
                let as_bus: Arc<Mutex<dyn BusDevice>> = t.clone();
                w.mmio
                    .insert(&name, base, MMIO_SIZE, as_bus)
                    .map_err(|e| setup_err("virtio-mmio")(e.to_string()))?;
                setup.devices.push(Attached {
                    name,
                    handle: Handle::Mmio(t),
                });
            }
        }
    }
    Ok(setup)
}

impl VirtioSetup {
    /// Every active queue's rings, by device name.
    pub fn rings(&self) -> Vec<(String, Vec<devices::virtio::RingAddrs>)> {
        self.devices
            .iter()
            .map(|a| {
                let rings = match &a.handle {
                    Handle::Mmio(t) => lock(t).rings(),
                    Handle::Pci(d) => lock(d).rings(),
                };
                (a.name.clone(), rings)
            })
            .collect()
    }

    /// Current counters of every device.
    pub fn reports(&self) -> Vec<VirtioDeviceReport> {
        self.devices
            .iter()
            .map(|a| match &a.handle {
                Handle::Mmio(t) => {
                    let s = lock(t).stats();
                    let mut counters: BTreeMap<String, u64> = s
                        .device_counters
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect();
                    counters.insert("config_interrupts".into(), s.config_interrupts);
                    counters.insert("interrupt_errors".into(), s.interrupt_errors);
                    counters.insert("activations".into(), s.activations);
                    counters.insert("resets".into(), s.resets);
                    counters.insert("needs_reset".into(), s.needs_reset);
                    counters.insert("bad_accesses".into(), s.bad_accesses);
                    VirtioDeviceReport {
                        name: a.name.clone(),
                        transport: "mmio",
                        interrupt: format!("pin {} ({})", s.pin, s.irq_mode),
                        interrupts: s.interrupts + s.config_interrupts,
                        notify_exits: s.notify_exits,
                        counters,
                    }
                }
                Handle::Pci(d) => {
                    let d = lock(d);
                    let s = d.stats();
                    let mut counters: BTreeMap<String, u64> = d
                        .device()
                        .counters()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    counters.insert("activations".into(), s.activations);
                    counters.insert("resets".into(), s.resets);
                    counters.insert("bad_accesses".into(), s.bad_accesses);
                    counters.insert("no_vector".into(), s.no_vector);
                    let vectors = d.msix().reports();
                    let signalled: u64 = vectors.iter().map(|v| v.stats.signalled).sum();
                    counters.insert(
                        "msix_delivered".into(),
                        vectors.iter().map(|v| v.stats.delivered).sum(),
                    );
                    counters.insert(
                        "msix_pended".into(),
                        vectors.iter().map(|v| v.stats.pended).sum(),
                    );
                    VirtioDeviceReport {
                        name: a.name.clone(),
                        transport: "pci",
                        interrupt: format!("MSI-X ({} vectors)", vectors.len()),
                        interrupts: signalled,
                        notify_exits: s.notify_exits,
                        counters,
                    }
                }
            })
            .collect()
    }
}
