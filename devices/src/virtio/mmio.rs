//! virtio-mmio transport (virtio 1.2, 4.2), modern register layout
//! (version 2) only.
//!
//! One [`MmioTransport`] is a [`BusDevice`] for a 4 KiB window
//! ([`MMIO_SIZE`]) on the MMIO bus, wrapping one [`VirtioDevice`]. Linux
//! finds it through the kernel command line
//! ([`MmioTransport::cmdline_fragment`]:
//! `virtio_mmio.device=4K@0x<base>:<pin>`, needs
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
//!
//! # Notifications
//!
//! Each queue gets an eventfd registered as an ioeventfd on `base + 0x50`
//! (QueueNotify) with datamatch = queue index, so a guest notification
//! reaches the device worker without a userspace exit. A QueueNotify write
//! that still reaches [`BusDevice::write`] (an ioeventfd that could not be
//! registered) signals the queue's eventfd from here; those are counted
//! as `notify_exits`.
//!
//! # Interrupts
//!
//! The device's [`VirtioInterrupt`] sets InterruptStatus bit 0 (used
//! buffer) or bit 1 (configuration change) and signals the device's I/O
//! APIC pin. Two ways, picked by the constructor:
//!
//! - [`MmioTransport::new`] (irqfd): an eventfd registered as an irqfd on
//!   GSI = pin. Each interrupt is an eventfd write from the worker thread;
//!   KVM delivers it through the pin's MSI route, which the userspace I/O
//!   APIC keeps in sync with the RTE. No lock, no vCPU, no exit. The edge
//!   never passes through the userspace I/O APIC, so (a) its RTE mask is
//!   not honoured: KVM delivers through the installed route even while the
//!   guest has the pin masked (an interrupt the guest may see as spurious,
//!   or with the vector of the reset RTE until the guest programs it),
//!   unless the I/O APIC drops or rewrites the route of masked pins, and
//!   (b) its per-pin counters do not see these interrupts. The pin must be
//!   edge-triggered (declare it edge / active-high in the MP table or
//!   ACPI): each interrupt is one edge, with no line level to hold.
//! - [`MmioTransport::with_irq_line`] (I/O APIC line): the pin's line
//!   follows InterruptStatus != 0 (raised on a new event, lowered when the
//!   driver acknowledges everything), driven through [`IrqLine`] under the
//!   I/O APIC lock. Masking, Remote IRR and the per-pin counters behave
//!   exactly as for any other pin, and the pin works edge- or
//!   level-triggered, at the cost of taking the I/O APIC lock (and a
//!   `KVM_SIGNAL_MSI`-style call) per interrupt.
//!
//! # Guest errors
//!
//! Register accesses that are not 4 bytes wide and 4-byte aligned (config
//! space, from 0x100, takes 1, 2, 4 or 8 bytes at any offset) are ignored:
//! reads return 0. Writes to read-only registers, queue setup while a queue
//! is ready or the device is live, and out-of-range selectors are ignored.
//! FEATURES_OK is refused (left clear) if the driver accepted features the
//! device does not offer or not VERSION_1. At DRIVER_OK every ready queue is
//! validated (size a power of two no larger than QueueNumMax, rings aligned
//! and inside guest memory) and the device activated; if that fails the
//! device is not activated and reports DEVICE_NEEDS_RESET. Each kind is
//! logged once and counted in [`MmioStats::bad_accesses`] or
//! [`MmioStats::activation_failures`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::new_eventfd;
use super::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;
use crate::interrupt::{EventRegistry, InterruptError, IoEventAddress};
use crate::irq_line::IrqLine;
use crate::sync::lock;
use crate::sync::WarnOnce;

/// Size of one virtio-mmio window.
pub const MMIO_SIZE: u64 = 0x1000;
/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
pub const VERSION: u32 = 2;
/// "SPVM" in little-endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"SPVM");

/// InterruptStatus bits.
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG: u32 = 2;

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_SHM_SEL: u64 = 0x0ac;
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
pub const REG_QUEUE_RESET: u64 = 0x0c0;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

const WARN_ACCESS: u32 = 1 << 0;
const WARN_READ_ONLY: u32 = 1 << 1;
const WARN_QUEUE_LIVE: u32 = 1 << 2;
const WARN_QUEUE_SIZE: u32 = 1 << 3;
const WARN_FEATURES: u32 = 1 << 4;
const WARN_STATUS: u32 = 1 << 5;
const WARN_ACTIVATE: u32 = 1 << 6;
const WARN_SELECTOR: u32 = 1 << 7;
const WARN_RESET: u32 = 1 << 8;
const WARN_SIGNAL: u32 = 1 << 9;
const WARN_IOEVENT: u32 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(io::Error),
    #[error("cannot register the irqfd on GSI {gsi}: {source}")]
    Irqfd { gsi: u32, source: InterruptError },
    #[error("device queue {queue} has an invalid maximum size {size}")]
    QueueMax { queue: usize, size: u16 },
    #[error("base address {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
}

/// Counters of one virtio-mmio device, for the `--stats` report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MmioStats {
    /// Device name ("virtio-blk", "virtio-net").
    pub device: String,
    pub base: u64,
    pub pin: u32,
    /// "irqfd" or "ioapic-line".
    pub irq_mode: &'static str,
    /// Queue notifications consumed by the device worker (the device's
    /// "notifications" counter: ioeventfd signals plus `notify_exits`).
    pub notifications: u64,
    /// QueueNotify writes that exited to userspace (no ioeventfd).
    pub notify_exits: u64,
    /// Queues whose notification ioeventfd is registered.
    pub ioeventfds: usize,
    /// Used-buffer interrupts signalled.
    pub interrupts: u64,
    /// Configuration-change interrupts signalled (DEVICE_NEEDS_RESET
    /// included).
    pub config_interrupts: u64,
    /// Interrupts that could not be signalled (irqfd write failed).
    pub interrupt_errors: u64,
    pub activations: u64,
    /// Activations refused (bad queue, device error): DEVICE_NEEDS_RESET.
    pub activation_failures: u64,
    /// Device requests for a reset (broken queue).
    pub needs_reset: u64,
    /// Device resets by the driver (status 0).
    pub resets: u64,
    /// Ignored register accesses (size, alignment, read-only, selector,
    /// queue setup while live, refused FEATURES_OK or DRIVER_OK).
    pub bad_accesses: u64,
    /// The device's own counters.
    pub device_counters: Vec<(&'static str, u64)>,
}

enum IrqSignal {
    Irqfd { fd: EventFd, gsi: u32 },
    Line(IrqLine),
}

/// The transport side of [`VirtioInterrupt`]: InterruptStatus plus the pin.
struct MmioInterrupt {
    isr: Mutex<u32>,
    signal: IrqSignal,
    needs_reset: AtomicBool,
    interrupts: AtomicU64,
    config_interrupts: AtomicU64,
    errors: AtomicU64,
    reset_requests: AtomicU64,
    warned: WarnOnce,
}

impl MmioInterrupt {
    fn new(signal: IrqSignal) -> MmioInterrupt {
        MmioInterrupt {
            isr: Mutex::new(0),
            signal,
            needs_reset: AtomicBool::new(false),
            interrupts: AtomicU64::new(0),
            config_interrupts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reset_requests: AtomicU64::new(0),
            warned: WarnOnce::default(),
        }
    }

    fn raise(&self, bit: u32) {
        let mut isr = lock(&self.isr);
        *isr |= bit;
        match &self.signal {
            IrqSignal::Irqfd { fd, gsi } => {
                if let Err(e) = fd.write(1) {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.warned.warn(
                        WARN_SIGNAL,
                        format_args!("virtio-mmio: irqfd write for GSI {gsi} failed: {e}"),
                    );
                }
            }
            IrqSignal::Line(line) => line.set_level(true),
        }
    }

    fn status(&self) -> u32 {
        *lock(&self.isr)
    }

    fn ack(&self, bits: u32) {
        let mut isr = lock(&self.isr);
        *isr &= !bits;
        if let IrqSignal::Line(line) = &self.signal {
            if *isr == 0 {
                line.set_level(false);
            }
        }
    }

    fn clear(&self) {
        self.ack(u32::MAX);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn notify_queue(&self, _queue: u16) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
        self.raise(INT_USED_BUFFER);
    }

    fn notify_config(&self) {
        self.config_interrupts.fetch_add(1, Ordering::Relaxed);
        self.raise(INT_CONFIG);
    }

    fn needs_reset(&self) {
        self.reset_requests.fetch_add(1, Ordering::Relaxed);
        self.needs_reset.store(true, Ordering::SeqCst);
        self.notify_config();
    }
}

/// Driver-written queue registers (also their part of a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueRegs {
    /// QueueNum as written (QueueNumMax until written).
    pub num: u32,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// A virtio-mmio transport in a snapshot: its registers, InterruptStatus
/// and, for an active device, where each queue is (the device paused at a
/// request boundary). The pin's line level is the I/O APIC's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioMmioState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub status: u8,
    pub queues: Vec<QueueRegs>,
    pub interrupt_status: u32,
    pub needs_reset: bool,
    pub active: bool,
    pub positions: Vec<super::QueuePosition>,
}

/// A virtio device on a virtio-mmio window. See the module documentation.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    base: u64,
    pin: u32,
    events: Arc<dyn EventRegistry>,
    interrupt: Arc<MmioInterrupt>,
    max_sizes: Vec<u16>,
    queues: Vec<QueueRegs>,
    queue_evts: Vec<EventFd>,
    ioevent_registered: Vec<bool>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u8,
    active: bool,
    notify_exits: u64,
    activations: u64,
    activation_failures: u64,
    resets: u64,
    bad_accesses: u64,
    warned: WarnOnce,
}

impl MmioTransport {
    /// A transport at `base` whose interrupts go through an irqfd on
    /// GSI `pin` (see the module documentation for the trade-off).
    /// Registers the irqfd and one ioeventfd per queue with `events`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        base: u64,
        pin: u32,
        events: Arc<dyn EventRegistry>,
    ) -> Result<MmioTransport, MmioError> {
        let fd = new_eventfd().map_err(MmioError::EventFd)?;
        Self::build(
            device,
            mem,
            base,
            pin,
            IrqSignal::Irqfd { fd, gsi: pin },
            events,
        )
    }

    /// A transport at `base` whose interrupts drive `line` through the
    /// userspace I/O APIC (see the module documentation for the
    /// trade-off). Registers one ioeventfd per queue with `events`.
    pub fn with_irq_line(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        base: u64,
        line: IrqLine,
        events: Arc<dyn EventRegistry>,
    ) -> Result<MmioTransport, MmioError> {
        let pin = line.pin() as u32;
        Self::build(device, mem, base, pin, IrqSignal::Line(line), events)
    }

    fn build(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        base: u64,
        pin: u32,
        signal: IrqSignal,
        events: Arc<dyn EventRegistry>,
    ) -> Result<MmioTransport, MmioError> {
        if !base.is_multiple_of(MMIO_SIZE) {
            return Err(MmioError::Unaligned(base));
        }
        let max_sizes = device.queue_max_sizes().to_vec();
        for (queue, &size) in max_sizes.iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(MmioError::QueueMax { queue, size });
            }
        }
        let queue_evts = max_sizes
            .iter()
            .map(|_| new_eventfd())
            .collect::<io::Result<Vec<_>>>()
            .map_err(MmioError::EventFd)?;
        if let IrqSignal::Irqfd { fd, gsi } = &signal {
            events
                .register_irqfd(fd, *gsi)
                .map_err(|source| MmioError::Irqfd { gsi: *gsi, source })?;
        }
        let name = device.name().to_string();
        let ioevent_registered = queue_evts
            .iter()
            .enumerate()
            .map(|(i, fd)| {
                let addr = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
                match events.register_ioevent(fd, addr, Some(i as u32)) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!(
                            "{name} at {base:#x}: no ioeventfd for queue {i} ({e}); its notifications exit to userspace"
                        );
                        false
                    }
                }
            })
            .collect();
        let mut t = MmioTransport {
            device,
            mem,
            base,
            pin,
            events,
            interrupt: Arc::new(MmioInterrupt::new(signal)),
            queues: Vec::new(),
            max_sizes,
            queue_evts,
            ioevent_registered,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            active: false,
            notify_exits: 0,
            activations: 0,
            activation_failures: 0,
            resets: 0,
            bad_accesses: 0,
            warned: WarnOnce::default(),
        };
        t.clear_registers();
        Ok(t)
    }

    /// Guest-physical base of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// I/O APIC pin (= GSI) of the device.
    pub fn pin(&self) -> u32 {
        self.pin
    }

    /// The wrapped device's name.
    pub fn device_name(&self) -> &str {
        self.device.name()
    }

    /// Kernel command-line fragment announcing this device to Linux.
    pub fn cmdline_fragment(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.pin)
    }

    /// The rings of an active device's ready queues.
    pub fn rings(&self) -> Vec<super::RingAddrs> {
        let q = self.queues.iter();
        let q = q.map(|r| (r.num as u16, r.ready, r.driver, r.device));
        super::active_rings(self.active, self.device.as_ref(), q)
    }

    /// Current counters.
    pub fn stats(&self) -> MmioStats {
        let device_counters = self.device.counters();
        let notifications = device_counters
            .iter()
            .find(|(n, _)| *n == "notifications")
            .map_or(0, |&(_, v)| v);
        let i = &self.interrupt;
        MmioStats {
            device: self.device.name().to_string(),
            base: self.base,
            pin: self.pin,
            irq_mode: match i.signal {
                IrqSignal::Irqfd { .. } => "irqfd",
                IrqSignal::Line(_) => "ioapic-line",
            },
            notifications,
            notify_exits: self.notify_exits,
            ioeventfds: self.ioevent_registered.iter().filter(|&&r| r).count(),
            interrupts: i.interrupts.load(Ordering::Relaxed),
            config_interrupts: i.config_interrupts.load(Ordering::Relaxed),
            interrupt_errors: i.errors.load(Ordering::Relaxed),
            activations: self.activations,
            activation_failures: self.activation_failures,
            needs_reset: i.reset_requests.load(Ordering::Relaxed),
            resets: self.resets,
            bad_accesses: self.bad_accesses,
            device_counters,
        }
    }

    fn bad(&mut self, flag: u32, args: std::fmt::Arguments<'_>) {
        self.bad_accesses += 1;
        self.warned.warn(
            flag,
            format_args!("{} at {:#x}: {args}", self.device.name(), self.base),
        );
    }

    fn clear_registers(&mut self) {
        self.queues = self
            .max_sizes
            .iter()
            .map(|&m| QueueRegs {
                num: u32::from(m),
                ..QueueRegs::default()
            })
            .collect();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.active = false;
    }

    fn reset(&mut self) {
        if !self.device.reset() {
            self.warned.warn(
                WARN_RESET,
                format_args!(
                    "{} at {:#x}: device cannot reset",
                    self.device.name(),
                    self.base
                ),
            );
        }
        self.clear_registers();
        self.interrupt.clear();
        self.resets += 1;
    }

    fn status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.needs_reset.load(Ordering::SeqCst) {
            s |= STATUS_NEEDS_RESET;
        }
        u32::from(s)
    }

    fn set_status(&mut self, v: u32) {
        let v = (v & 0xff) as u8 & !STATUS_NEEDS_RESET;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & old & !STATUS_NEEDS_RESET != old & !STATUS_NEEDS_RESET {
            self.bad(
                WARN_STATUS,
                format_args!(
                    "driver cleared status bits {old:#x} -> {v:#x} without a reset; ignored"
                ),
            );
        }
        let mut new = old | v;
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            let extra = self.driver_features & !offered;
            if extra != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                new &= !STATUS_FEATURES_OK;
                let df = self.driver_features;
                self.bad(
                    WARN_FEATURES,
                    format_args!(
                        "FEATURES_OK refused: driver features {df:#x} (not offered {extra:#x}, VERSION_1 required)"
                    ),
                );
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 {
                new &= !STATUS_DRIVER_OK;
                self.bad(
                    WARN_STATUS,
                    format_args!("DRIVER_OK without FEATURES_OK refused"),
                );
            } else if let Err(e) = self.activate() {
                self.activation_failures += 1;
                new |= STATUS_NEEDS_RESET;
                self.warned.warn(
                    WARN_ACTIVATE,
                    format_args!(
                        "{} at {:#x}: activation refused, device needs reset: {e}",
                        self.device.name(),
                        self.base
                    ),
                );
                self.status = new;
                self.interrupt.notify_config();
                return;
            }
        }
        self.status = new;
    }

    /// The queue the driver configured at index `i`, checked.
    fn build_queue(&self, i: usize) -> Result<Queue, String> {
        let r = self.queues[i];
        let max = self.max_sizes[i];
        let size = u16::try_from(r.num)
            .ok()
            .filter(|&s| s != 0 && s <= max && s.is_power_of_two())
            .ok_or_else(|| format!("size {} is not a power of two <= {max}", r.num))?;
        let mut q = Queue::new(max).map_err(|e| e.to_string())?;
        q.try_set_size(size).map_err(|e| e.to_string())?;
        q.try_set_desc_table_address(GuestAddress(r.desc))
            .map_err(|e| e.to_string())?;
        q.try_set_avail_ring_address(GuestAddress(r.driver))
            .map_err(|e| e.to_string())?;
        q.try_set_used_ring_address(GuestAddress(r.device))
            .map_err(|e| e.to_string())?;
        let n = u64::from(size);
        for (what, addr, len) in [
            ("descriptor table", r.desc, 16 * n),
            ("driver area", r.driver, 6 + 2 * n),
            ("device area", r.device, 6 + 8 * n),
        ] {
            if !GuestMemoryBackend::check_range(&self.mem, GuestAddress(addr), len as usize) {
                return Err(format!("{what} {addr:#x}+{len:#x} is outside guest memory"));
            }
        }
        q.set_event_idx(self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0);
        q.set_ready(true);
        Ok(q)
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.activate_at(&[])
    }

    /// Activate; a queue named in `at` starts at that position (a restore).
    fn activate_at(&mut self, at: &[super::QueuePosition]) -> Result<(), ActivateError> {
        let mut active = Vec::new();
        for i in 0..self.queues.len() {
            if !self.queues[i].ready {
                continue;
            }
            let mut queue = self.build_queue(i).map_err(|why| {
                self.warned.warn(
                    WARN_QUEUE_SIZE,
                    format_args!(
                        "{} at {:#x}: queue {i} refused: {why}",
                        self.device.name(),
                        self.base
                    ),
                );
                ActivateError::BadQueue(i)
            })?;
            super::QueuePosition::place(at, i, &mut queue);
            let notify = self.queue_evts[i]
                .try_clone()
                .map_err(|e| ActivateError::Worker(e.to_string()))?;
            active.push(ActiveQueue {
                index: i as u16,
                queue,
                notify,
            });
        }
        self.device
            .activate(self.mem.clone(), active, self.interrupt.clone())?;
        self.active = true;
        self.activations += 1;
        Ok(())
    }

    fn selected(&self) -> Option<usize> {
        let i = self.queue_sel as usize;
        (i < self.queues.len()).then_some(i)
    }

    /// The selected queue's registers, if it exists and may be configured.
    fn queue_for_setup(&mut self, reg: u64) -> Option<&mut QueueRegs> {
        let Some(i) = self.selected() else {
            let sel = self.queue_sel;
            self.bad(
                WARN_SELECTOR,
                format_args!("write {reg:#x} for nonexistent queue {sel}"),
            );
            return None;
        };
        if self.active || self.queues[i].ready {
            self.bad(
                WARN_QUEUE_LIVE,
                format_args!(
                    "queue {i} register {reg:#x} written while the queue is live; ignored"
                ),
            );
            return None;
        }
        Some(&mut self.queues[i])
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let q = self.selected().map(|i| self.queues[i]);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected().map_or(0, |i| u32::from(self.max_sizes[i])),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length all-ones.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => 0,
            // Write-only and reserved registers read 0.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) != 0 {
                    self.bad(
                        WARN_FEATURES,
                        format_args!("DriverFeatures written after FEATURES_OK; ignored"),
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    s if v != 0 => self.bad(
                        WARN_SELECTOR,
                        format_args!("driver features {v:#x} for word {s} refused"),
                    ),
                    _ => {}
                }
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                let max = self.selected().map_or(0, |i| self.max_sizes[i]);
                let Some(q) = self.queue_for_setup(offset) else {
                    return;
                };
                q.num = v;
                if v == 0 || v > u32::from(max) || !v.is_power_of_two() {
                    self.bad(
                        WARN_QUEUE_SIZE,
                        format_args!(
                            "queue size {v} is not a power of two <= {max}; the device will refuse DRIVER_OK"
                        ),
                    );
                }
            }
            REG_QUEUE_READY => {
                if let Some(i) = self.selected() {
                    if self.active {
                        self.bad(
                            WARN_QUEUE_LIVE,
                            format_args!(
                                "QueueReady of queue {i} written while the device is live; ignored"
                            ),
                        );
                    } else {
                        self.queues[i].ready = v == 1;
                    }
                } else {
                    let sel = self.queue_sel;
                    self.bad(
                        WARN_SELECTOR,
                        format_args!("QueueReady for nonexistent queue {sel}"),
                    );
                }
            }
            REG_QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(fd) => {
                    self.notify_exits += 1;
                    if let Err(e) = fd.write(1) {
                        log::error!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
                None => self.bad(
                    WARN_SELECTOR,
                    format_args!("notification for nonexistent queue {v}"),
                ),
            },
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.queue_for_setup(offset) {
                    let field = match offset & !0xf {
                        REG_QUEUE_DESC_LOW => &mut q.desc,
                        REG_QUEUE_DRIVER_LOW => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xffff_ffff) | u64::from(v)
                    } else {
                        (*field & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                }
            }
            REG_SHM_SEL => {}
            _ => self.bad(
                WARN_READ_ONLY,
                format_args!("write {v:#x} to read-only or reserved register {offset:#x} ignored"),
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let who = format!("{} at {:#x}", self.device.name(), self.base);
        let positions = super::saved_positions(self.device.as_ref(), self.active, &who)?;
        let s = VirtioMmioState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            queues: self.queues.clone(),
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset.load(Ordering::SeqCst),
            active: self.active,
            positions,
        };
        Ok(Some(crate::DeviceState::of("virtio_mmio", &s)?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: VirtioMmioState = s.get("virtio_mmio")?;
        let mismatch = |m: String| crate::StateError::Mismatch(format!("virtio-mmio: {m}"));
        super::check_restorable(
            "virtio-mmio",
            s.queues.len(),
            self.queues.len(),
            self.active,
        )?;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features & self.device.features();
        self.queue_sel = s.queue_sel;
        self.status = s.status & !STATUS_NEEDS_RESET;
        self.queues = s.queues.clone();
        // InterruptStatus without raising the pin: its level (or the edge
        // it sent) is in the restored I/O APIC and LAPIC already.
        *lock(&self.interrupt.isr) = s.interrupt_status;
        self.interrupt
            .needs_reset
            .store(s.needs_reset, Ordering::SeqCst);
        if self.status & STATUS_FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if s.active {
            self.activate_at(&s.positions)
                .map_err(|e| mismatch(format!("its queues could not be started again: {e}")))?;
        }
        Ok(())
    }

    fn pause(&mut self, paused: bool) {
        if let Err(e) = super::pause_device(self.device.as_mut(), self.active, paused) {
            log::warn!(
                "virtio-mmio: {}: cannot pause for a snapshot: {e}",
                self.device.name()
            );
        }
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.read_config(offset - REG_CONFIG, data);
            } else {
                data.fill(0);
                self.bad(
                    WARN_ACCESS,
                    format_args!("{}-byte config read at {offset:#x} ignored", data.len()),
                );
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            self.bad(
                WARN_ACCESS,
                format_args!("{}-byte register read at {offset:#x} ignored", data.len()),
            );
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.device.write_config(offset - REG_CONFIG, data);
            } else {
                self.bad(
                    WARN_ACCESS,
                    format_args!("{}-byte config write at {offset:#x} ignored", data.len()),
                );
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.bad(
                WARN_ACCESS,
                format_args!("{}-byte register write at {offset:#x} ignored", data.len()),
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        // Join the worker before its eventfds are unregistered and closed.
        self.device.reset();
        for (i, fd) in self.queue_evts.iter().enumerate() {
            if self.ioevent_registered[i] {
                let addr = IoEventAddress::Mmio(self.base + REG_QUEUE_NOTIFY);
                if let Err(e) = self.events.unregister_ioevent(fd, addr, Some(i as u32)) {
                    self.warned.warn(
                        WARN_IOEVENT,
                        format_args!("virtio-mmio: cannot unregister ioeventfd: {e}"),
                    );
                }
            }
        }
        if let IrqSignal::Irqfd { fd, gsi } = &self.interrupt.signal {
            if let Err(e) = self.events.unregister_irqfd(fd, *gsi) {
                log::warn!("virtio-mmio: cannot unregister irqfd on GSI {gsi}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::{MsiMessage, MsiRouting};
    use crate::ioapic::IoApic;
    use crate::virtio::worker::testutil::memory;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, TYPE_BLOCK};

    const BASE: u64 = 0xd000_0000;
    const PIN: u32 = 5;
    const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | (1 << 9);

    /// (index, size, desc, avail, used, event_idx) of an activated queue.
    type SeenQueue = (u16, u16, u64, u64, u64, bool);

    /// What the dummy device saw.
    #[derive(Default)]
    struct Seen {
        acked: Option<u64>,
        activations: Vec<Vec<SeenQueue>>,
        resets: usize,
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    struct Dummy(Arc<Mutex<Seen>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn name(&self) -> &str {
            "dummy"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            FEATURES
        }
        fn ack_features(&mut self, features: u64) {
            lock(&self.0).acked = Some(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0xc0u8.wrapping_add(offset as u8).wrapping_add(i as u8);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            lock(&self.0).config_writes.push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<ActiveQueue>,
            interrupt: Arc<dyn VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            let mut s = lock(&self.0);
            s.activations.push(
                queues
                    .iter()
                    .map(|q| {
                        (
                            q.index,
                            q.queue.size(),
                            q.queue.desc_table(),
                            q.queue.avail_ring(),
                            q.queue.used_ring(),
                            q.queue.event_idx_enabled(),
                        )
                    })
                    .collect(),
            );
            s.interrupt = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            let mut s = lock(&self.0);
            s.resets += 1;
            s.interrupt = None;
            true
        }
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("notifications", 7)]
        }
    }

    /// Records registrations; keeps clones of the eventfds.
    #[derive(Default)]
    struct Registry {
        ioevents: Mutex<Vec<(EventFd, IoEventAddress, Option<u32>)>>,
        irqfds: Mutex<Vec<(EventFd, u32)>>,
        unregistered: Mutex<usize>,
        fail_ioevent: bool,
    }

    impl EventRegistry for Registry {
        fn register_ioevent(
            &self,
            fd: &EventFd,
            addr: IoEventAddress,
            datamatch: Option<u32>,
        ) -> Result<(), InterruptError> {
            if self.fail_ioevent {
                return Err(InterruptError::Routing("no ioeventfd".into()));
            }
            lock(&self.ioevents).push((fd.try_clone().unwrap(), addr, datamatch));
            Ok(())
        }
        fn unregister_ioevent(
            &self,
            _fd: &EventFd,
            _addr: IoEventAddress,
            _datamatch: Option<u32>,
        ) -> Result<(), InterruptError> {
            *lock(&self.unregistered) += 1;
            Ok(())
        }
        fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
            lock(&self.irqfds).push((fd.try_clone().unwrap(), gsi));
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, _gsi: u32) -> Result<(), InterruptError> {
            *lock(&self.unregistered) += 1;
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>, Arc<Registry>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reg = Arc::new(Registry::default());
        let t = MmioTransport::new(
            Box::new(Dummy(seen.clone())),
            memory(),
            BASE,
            PIN,
            reg.clone(),
        )
        .unwrap();
        (t, seen, reg)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, REG_STATUS, 0);
        w(t, REG_STATUS, u32::from(STATUS_ACKNOWLEDGE));
        w(t, REG_STATUS, u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER));
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
    }

    /// Set up queue `i` with `size` entries at sane addresses.
    fn setup_queue(t: &mut MmioTransport, i: u32, size: u32) {
        let base = 0x1_0000 + u64::from(i) * 0x4000;
        w(t, REG_QUEUE_SEL, i);
        w(t, REG_QUEUE_NUM, size);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DESC_HIGH, 0);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, 0);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, 0);
        w(t, REG_QUEUE_READY, 1);
    }

    const DRIVER_OK_ALL: u32 =
        (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK) as u32;

    fn bring_up(t: &mut MmioTransport) {
        negotiate(t, FEATURES);
        setup_queue(t, 0, 16);
        setup_queue(t, 1, 8);
        w(t, REG_STATUS, DRIVER_OK_ALL);
    }

    #[test]
    fn mmio_magic_version_and_device_id() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), TYPE_BLOCK);
        assert_eq!(r(&mut t, REG_VENDOR_ID), u32::from_le_bytes(*b"SPVM"));
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 8);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "nonexistent queue");
        assert_eq!(t.cmdline_fragment(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn mmio_transport_sits_on_the_bus() {
        let (t, _, _) = transport();
        let t = Arc::new(Mutex::new(t));
        let mut bus = crate::bus::Bus::new();
        let dev: Arc<Mutex<dyn BusDevice>> = t.clone();
        bus.insert("virtio-mmio", BASE, MMIO_SIZE, dev).unwrap();
        let mut d = [0u8; 4];
        bus.read(BASE + REG_MAGIC, &mut d);
        assert_eq!(u32::from_le_bytes(d), MAGIC);
        bus.write(BASE + REG_STATUS, &1u32.to_le_bytes());
        assert_eq!(lock(&t).status(), 1);
    }

    #[test]
    fn mmio_device_features_are_paged_by_selector() {
        let (mut t, _, _) = transport();
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), FEATURES as u32);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), (FEATURES >> 32) as u32);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn mmio_feature_negotiation_requires_features_ok() {
        let (mut t, seen, _) = transport();
        // A feature the device does not offer: FEATURES_OK stays clear.
        negotiate(&mut t, FEATURES | (1 << 3));
        assert_eq!(r(&mut t, REG_STATUS) & u32::from(STATUS_FEATURES_OK), 0);
        assert_eq!(lock(&seen).acked, None);
        // DRIVER_OK without FEATURES_OK does not activate.
        setup_queue(&mut t, 0, 16);
        w(
            &mut t,
            REG_STATUS,
            DRIVER_OK_ALL & !u32::from(STATUS_FEATURES_OK),
        );
        assert_eq!(r(&mut t, REG_STATUS) & u32::from(STATUS_DRIVER_OK), 0);
        assert!(lock(&seen).activations.is_empty());
        // Without VERSION_1: refused too.
        negotiate(&mut t, VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(r(&mut t, REG_STATUS) & u32::from(STATUS_FEATURES_OK), 0);
        // A proper subset: accepted and passed to the device.
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_ne!(r(&mut t, REG_STATUS) & u32::from(STATUS_FEATURES_OK), 0);
        assert_eq!(lock(&seen).acked, Some(VIRTIO_F_VERSION_1));
        // Features are frozen after FEATURES_OK.
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, u32::MAX);
        setup_queue(&mut t, 0, 16);
        w(&mut t, REG_STATUS, DRIVER_OK_ALL);
        let s = lock(&seen);
        assert_eq!(s.activations.len(), 1);
        assert!(!s.activations[0][0].5, "EVENT_IDX not negotiated");
    }

    #[test]
    fn mmio_activation_hands_ready_queues_to_device() {
        let (mut t, seen, _) = transport();
        bring_up(&mut t);
        assert_eq!(r(&mut t, REG_STATUS), DRIVER_OK_ALL);
        let s = lock(&seen);
        assert_eq!(
            s.activations,
            vec![vec![
                (0, 16, 0x1_0000, 0x1_1000, 0x1_2000, true),
                (1, 8, 0x1_4000, 0x1_5000, 0x1_6000, true)
            ]]
        );
        drop(s);
        assert_eq!(t.stats().activations, 1);
        // Queue setup is frozen while live.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, 4);
        assert_eq!(t.queues[0].num, 16);
        assert!(t.stats().bad_accesses >= 1);
    }

    #[test]
    fn mmio_non_power_of_two_queue_size_refused() {
        let (mut t, seen, _) = transport();
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 12);
        setup_queue(&mut t, 1, 8);
        w(&mut t, REG_STATUS, DRIVER_OK_ALL);
        assert_ne!(r(&mut t, REG_STATUS) & u32::from(STATUS_NEEDS_RESET), 0);
        assert!(lock(&seen).activations.is_empty());
        let st = t.stats();
        assert_eq!((st.activations, st.activation_failures), (0, 1));
        // Larger than QueueNumMax is refused the same way.
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 32);
        w(&mut t, REG_STATUS, DRIVER_OK_ALL);
        assert_ne!(r(&mut t, REG_STATUS) & u32::from(STATUS_NEEDS_RESET), 0);
        assert!(lock(&seen).activations.is_empty());
    }

    #[test]
    fn mmio_queue_outside_guest_memory_refused() {
        let (mut t, seen, _) = transport();
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 16);
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_NUM, 8);
        w(&mut t, REG_QUEUE_DESC_LOW, 0);
        w(&mut t, REG_QUEUE_DESC_HIGH, 0x10); // 64 GiB
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, DRIVER_OK_ALL);
        assert_ne!(r(&mut t, REG_STATUS) & u32::from(STATUS_NEEDS_RESET), 0);
        assert!(lock(&seen).activations.is_empty());
    }

    #[test]
    fn mmio_misaligned_descriptor_table_refused() {
        let (mut t, seen, _) = transport();
        negotiate(&mut t, FEATURES);
        setup_queue(&mut t, 0, 16);
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_READY, 0);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1_8008);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, DRIVER_OK_ALL);
        assert_ne!(r(&mut t, REG_STATUS) & u32::from(STATUS_NEEDS_RESET), 0);
        assert!(lock(&seen).activations.is_empty());
    }

    #[test]
    fn mmio_odd_sized_access_ignored() {
        let (mut t, seen, _) = transport();
        // Reads of the wrong size or alignment return zeros.
        let mut d2 = [0xffu8; 2];
        t.read(REG_MAGIC, &mut d2);
        assert_eq!(d2, [0, 0]);
        let mut d4 = [0xffu8; 4];
        t.read(REG_MAGIC + 2, &mut d4);
        assert_eq!(d4, [0; 4]);
        let mut d8 = [0xffu8; 8];
        t.read(REG_MAGIC, &mut d8);
        assert_eq!(d8, [0; 8]);
        // Writes are ignored.
        t.write(REG_STATUS, &[1]);
        t.write(REG_STATUS, &[1, 0]);
        t.write(REG_STATUS - 2, &[0, 0, 1, 0]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        // Odd-sized config accesses too; proper ones reach the device.
        let mut d3 = [0xffu8; 3];
        t.read(REG_CONFIG, &mut d3);
        assert_eq!(d3, [0; 3]);
        t.write(REG_CONFIG + 1, &[1, 2, 3]);
        t.write(REG_CONFIG + 1, &[9, 8]);
        let mut c = [0u8; 2];
        t.read(REG_CONFIG + 3, &mut c);
        assert_eq!(c, [0xc3, 0xc4]);
        assert_eq!(lock(&seen).config_writes, vec![(1, vec![9, 8])]);
        assert_eq!(t.stats().bad_accesses, 8);
    }

    #[test]
    fn mmio_status_zero_resets_device() {
        let (mut t, seen, _) = transport();
        bring_up(&mut t);
        let irq = lock(&seen).interrupt.clone().unwrap();
        irq.notify_queue(0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_BUFFER);
        let before = (lock(&seen).resets, t.stats().resets);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        assert_eq!(lock(&seen).resets, before.0 + 1, "device reset");
        assert!(lock(&seen).interrupt.is_none());
        w(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0, "queues cleared");
        assert_eq!(t.queues[0].desc, 0);
        assert_eq!(t.queues[0].num, 16, "QueueNum back to the maximum");
        assert_eq!(t.stats().resets, before.1 + 1);
        // And the device can be brought up again.
        bring_up(&mut t);
        assert_eq!(lock(&seen).activations.len(), 2);
    }

    #[test]
    fn mmio_interrupt_sets_status_bit_and_signals_irqfd() {
        let (mut t, seen, reg) = transport();
        let irqfd = {
            let fds = lock(&reg.irqfds);
            assert_eq!(fds.len(), 1);
            assert_eq!(fds[0].1, PIN);
            fds[0].0.try_clone().unwrap()
        };
        bring_up(&mut t);
        let irq = lock(&seen).interrupt.clone().unwrap();
        irq.notify_queue(1);
        irq.notify_queue(0);
        assert_eq!(irqfd.read().unwrap(), 2);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_USED_BUFFER);
        irq.notify_config();
        assert_eq!(
            r(&mut t, REG_INTERRUPT_STATUS),
            INT_USED_BUFFER | INT_CONFIG
        );
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_BUFFER);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        let s = t.stats();
        assert_eq!((s.interrupts, s.config_interrupts), (2, 1));
        assert_eq!(s.irq_mode, "irqfd");
        assert_eq!(s.notifications, 7, "from the device counters");
    }

    #[test]
    fn mmio_device_needs_reset_is_reported_in_status() {
        let (mut t, seen, reg) = transport();
        bring_up(&mut t);
        let irq = lock(&seen).interrupt.clone().unwrap();
        irq.needs_reset();
        assert_eq!(
            r(&mut t, REG_STATUS),
            DRIVER_OK_ALL | u32::from(STATUS_NEEDS_RESET)
        );
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(lock(&reg.irqfds)[0].0.read().unwrap(), 1);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(t.stats().needs_reset, 1);
    }

    #[test]
    fn mmio_registers_one_ioeventfd_per_queue_with_datamatch() {
        let (t, _, reg) = transport();
        let ev = lock(&reg.ioevents);
        let regs: Vec<_> = ev.iter().map(|(_, a, d)| (*a, *d)).collect();
        assert_eq!(
            regs,
            vec![
                (IoEventAddress::Mmio(BASE + 0x50), Some(0)),
                (IoEventAddress::Mmio(BASE + 0x50), Some(1)),
            ]
        );
        drop(ev);
        assert_eq!(t.stats().ioeventfds, 2);
        drop(t);
        assert_eq!(*lock(&reg.unregistered), 3, "2 ioeventfds + 1 irqfd");
    }

    #[test]
    fn mmio_notify_write_reaching_bus_signals_queue_eventfd() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reg = Arc::new(Registry {
            fail_ioevent: true,
            ..Registry::default()
        });
        let mut t =
            MmioTransport::new(Box::new(Dummy(seen)), memory(), BASE, PIN, reg.clone()).unwrap();
        assert_eq!(t.stats().ioeventfds, 0);
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        w(&mut t, REG_QUEUE_NOTIFY, 9); // nonexistent: ignored
        assert_eq!(t.queue_evts[1].read().unwrap(), 1);
        assert!(t.queue_evts[0].read().is_err(), "queue 0 not signalled");
        assert_eq!(t.stats().notify_exits, 1);
    }

    /// MsiRouting that counts signals per GSI.
    #[derive(Default)]
    struct Routing {
        signals: Mutex<Vec<u32>>,
    }

    impl MsiRouting for Routing {
        fn set_route(&self, _gsi: u32, _msg: Option<MsiMessage>) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal(&self, gsi: u32) -> Result<(), InterruptError> {
            lock(&self.signals).push(gsi);
            Ok(())
        }
        fn signal_msi(&self, _msg: MsiMessage) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    fn program_rte(ioapic: &Arc<Mutex<IoApic>>, pin: u32, low: u32) {
        let mut io = lock(ioapic);
        io.write(0x00, &(0x10 + 2 * pin).to_le_bytes());
        io.write(0x10, &low.to_le_bytes());
    }

    #[test]
    fn mmio_irq_line_mode_follows_interrupt_status_and_honours_mask() {
        let routing = Arc::new(Routing::default());
        let ioapic = Arc::new(Mutex::new(IoApic::new(routing.clone())));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reg = Arc::new(Registry::default());
        let mut t = MmioTransport::with_irq_line(
            Box::new(Dummy(seen.clone())),
            memory(),
            BASE,
            IrqLine::new(ioapic.clone(), PIN as usize),
            reg.clone(),
        )
        .unwrap();
        assert!(lock(&reg.irqfds).is_empty(), "no irqfd in line mode");
        assert_eq!(t.stats().irq_mode, "ioapic-line");
        bring_up(&mut t);
        let irq = lock(&seen).interrupt.clone().unwrap();
        // Masked (reset state): nothing delivered.
        irq.notify_queue(0);
        assert!(lock(&routing.signals).is_empty());
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_BUFFER);
        // Unmasked edge, vector 0x30.
        program_rte(&ioapic, PIN, 0x30);
        irq.notify_queue(0);
        irq.notify_queue(1); // line already high: no second edge
        assert_eq!(*lock(&routing.signals), vec![PIN]);
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_BUFFER);
        irq.notify_queue(0);
        assert_eq!(*lock(&routing.signals), vec![PIN, PIN]);
    }

    mod fuzz {
        //! Random register traffic must never panic the transport (the
        //! workspace has no nightly toolchain for `cargo fuzz`; proptest is
        //! the equivalent harness). Runs [`CASES`] cases.
        use super::*;
        use proptest::prelude::*;

        const CASES: u32 = 2_000;

        fn op() -> impl Strategy<Value = (bool, u64, usize, u64)> {
            (
                any::<bool>(),
                prop_oneof![
                    6 => (0u64..0x40).prop_map(|r| r * 4),
                    1 => 0u64..MMIO_SIZE,
                ],
                prop_oneof![4 => Just(4usize), 1 => 1usize..=8],
                prop_oneof![
                    2 => 0u64..32,
                    1 => Just(u64::from(DRIVER_OK_ALL)),
                    1 => Just(FEATURES),
                    2 => any::<u64>(),
                ],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            #[test]
            fn random_register_traffic_never_panics(ops in proptest::collection::vec(op(), 1..64)) {
                let (mut t, _, _) = transport();
                for (write, off, len, val) in ops {
                    let bytes = val.to_le_bytes();
                    if write {
                        t.write(off, &bytes[..len]);
                    } else {
                        let mut d = vec![0u8; len];
                        t.read(off, &mut d);
                    }
                }
                // The identity registers are read-only whatever was written,
                // only the two defined InterruptStatus bits can be set, and
                // the report still names the transport's window and pin.
                prop_assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
                prop_assert_eq!(r(&mut t, REG_VERSION), 2);
                prop_assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
                prop_assert_eq!(r(&mut t, REG_INTERRUPT_STATUS) & !3, 0);
                let s = t.stats();
                prop_assert_eq!(s.base, BASE);
                prop_assert_eq!(s.pin, PIN);
            }
        }
    }
}
