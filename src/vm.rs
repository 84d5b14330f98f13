//! The KVM VM: capability checks, the irqchip's KVM side (split, or KVM's
//! own), guest memory, and the GSI routing table that carries every
//! interrupt splitvm delivers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_IRQ_ROUTING_MSI,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use arch::layout;
use devices::interrupt::{EventRegistry, IoEventAddress, KVM_MAX_IRQ_ROUTES};
use devices::sync::lock;
use devices::{InterruptError, MsiMessage, MsiRouting};
use kvm_ioctls::NoDatamatch;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{kvm, Error, Result};
use crate::irqchip::IrqChipMode;

/// I/O APIC pins reserved with KVM_CAP_SPLIT_IRQCHIP; pin i is GSI i.
pub const IOAPIC_PINS: u64 = devices::interrupt::IOAPIC_PINS as u64;

/// Capabilities splitvm cannot run without, with the name we report.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
    (Cap::X2ApicApi, "KVM_CAP_X2APIC_API"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// What the host's KVM offers beyond the required set.
#[derive(Debug, Clone, Copy)]
pub struct HostCaps {
    pub tsc_deadline: bool,
    pub max_vcpus: usize,
}

pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => " (no KVM on this host: is the kvm module loaded?)",
            libc::EACCES | libc::EPERM => " (permission denied: run as root or join the kvm group)",
            _ => "",
        };
        Error::KvmOpen(format!(
            "{}{}",
            std::io::Error::from_raw_os_error(e.errno()),
            hint
        ))
    })?;
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(Error::KvmApiVersion(v));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// The capabilities an irqchip mode needs beyond [`REQUIRED_CAPS`].
pub fn check_irqchip_caps(kvm: &Kvm, mode: IrqChipMode) -> Result<()> {
    let need: &[(Cap, &'static str)] = match mode {
        IrqChipMode::Split => &[(Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP")],
        IrqChipMode::Kernel => &[
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ],
    };
    for (cap, name) in need {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(())
}

pub fn host_caps(kvm: &Kvm) -> HostCaps {
    HostCaps {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        max_vcpus: kvm.get_max_vcpus(),
    }
}

/// Create the VM with the irqchip of `mode` (and, in kernel mode, KVM's
/// PIT when `pit`) and the x2APIC API, and map guest RAM.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap, mode: IrqChipMode, pit: bool) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;

    // The irqchip must exist before any vCPU. Split: LAPICs in KVM, the
    // I/O APIC (24 pins = GSIs 0..23) in userspace, no KVM_CREATE_IRQCHIP
    // and no KVM_CREATE_PIT2. Kernel: KVM's 8259 pair, I/O APIC and PIT
    // (its speaker port a dummy, as QEMU and Firecracker have it).
    match mode {
        IrqChipMode::Split => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = IOAPIC_PINS;
            vm.enable_cap(&cap)
                .map_err(kvm_err("KVM_CAP_SPLIT_IRQCHIP"))?;
        }
        IrqChipMode::Kernel => {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            if pit {
                let cfg = kvm_bindings::kvm_pit_config {
                    flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                };
                vm.create_pit2(cfg).map_err(kvm_err("KVM_CREATE_PIT2"))?;
            }
        }
    }

    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        ..Default::default()
    };
    cap.args[0] = (KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK) as u64;
    vm.enable_cap(&cap).map_err(kvm_err("KVM_CAP_X2APIC_API"))?;

    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region stays mapped for the life of the VM (the
        // GuestMemoryMmap outlives every vCPU thread) and is not aliased.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    kvm(what)
}

/// Allocate guest RAM (MAP_NORESERVE: the host pays only for touched pages).
pub fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(b, l)| (GuestAddress(b), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory(e.to_string()))
}

/// GSIs KVM accepts routes for (KVM_MAX_IRQ_ROUTES on x86).
const MAX_GSIS: usize = KVM_MAX_IRQ_ROUTES as usize;

/// The whole GSI routing table, owned in userspace and pushed to KVM in one
/// KVM_SET_GSI_ROUTING per batch of changes. Pins 0..23 and MSI vectors
/// (24+) alike are MSI routes. Signalling a GSI takes no lock: it reads a
/// bitmap of the GSIs KVM has a route for, so a PIT tick never waits behind
/// an MSI-X route push.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<u32, MsiMessage>>,
    installed: [AtomicU64; MAX_GSIS / 64],
    /// Entries every push carries before the MSI routes: with KVM's
    /// in-kernel irqchip, the irqchip routes of GSIs 0-23.
    fixed: Vec<kvm_irq_routing_entry>,
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self::with_fixed(vm, Vec::new())
    }

    /// A router whose every push starts with `fixed` (kernel irqchip).
    pub fn with_fixed(vm: Arc<VmFd>, fixed: Vec<kvm_irq_routing_entry>) -> Self {
        GsiRouter {
            vm,
            routes: Mutex::new(BTreeMap::new()),
            installed: std::array::from_fn(|_| AtomicU64::new(0)),
            fixed,
        }
    }

    fn mark(&self, gsi: u32, present: bool) {
        if let Some(w) = self.installed.get(gsi as usize / 64) {
            let bit = 1u64 << (gsi % 64);
            if present {
                w.fetch_or(bit, Ordering::Release);
            } else {
                w.fetch_and(!bit, Ordering::Release);
            }
        }
    }

    fn has_route(&self, gsi: u32) -> bool {
        self.installed
            .get(gsi as usize / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1u64 << (gsi % 64)) != 0)
    }

    /// Apply `batch` to the table and push it once if anything changed. On
    /// a KVM error the table stays as it was.
    fn apply(
        &self,
        batch: &[(u32, Option<MsiMessage>)],
    ) -> std::result::Result<(), InterruptError> {
        let mut routes = lock(&self.routes);
        let mut next = routes.clone();
        let mut changed = false;
        for &(gsi, msg) in batch {
            if gsi as usize >= MAX_GSIS {
                return Err(InterruptError::GsiOutOfRange(gsi));
            }
            changed |= match msg {
                Some(m) => next.insert(gsi, m) != Some(m),
                None => next.remove(&gsi).is_some(),
            };
        }
        if !changed {
            return Ok(());
        }
        self.install(&mut routes, next)
    }

    /// Push `next` to KVM and make it `current`. A GSI losing its route
    /// stops being signalled before KVM drops it. On a KVM error `current`
    /// stays as it was.
    fn install(
        &self,
        current: &mut BTreeMap<u32, MsiMessage>,
        next: BTreeMap<u32, MsiMessage>,
    ) -> std::result::Result<(), InterruptError> {
        for gsi in current.keys().filter(|g| !next.contains_key(g)) {
            self.mark(*gsi, false);
        }
        self.push(&next)?;
        for gsi in next.keys() {
            self.mark(*gsi, true);
        }
        *current = next;
        Ok(())
    }

    fn push(&self, routes: &BTreeMap<u32, MsiMessage>) -> std::result::Result<(), InterruptError> {
        let mut table =
            KvmIrqRouting::new(0).map_err(|e| InterruptError::Routing(format!("{e:?}")))?;
        for e in &self.fixed {
            table
                .push(*e)
                .map_err(|e| InterruptError::Routing(format!("{e:?}")))?;
        }
        for (gsi, m) in routes {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            let (lo, hi) = m.kvm_address();
            e.u.msi.address_lo = lo;
            e.u.msi.address_hi = hi;
            e.u.msi.data = m.data;
            table
                .push(e)
                .map_err(|e| InterruptError::Routing(format!("{e:?}")))?;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| InterruptError::Routing(e.to_string()))
    }
}

impl GsiRouter {
    /// The table as KVM has it.
    pub fn table(&self) -> Vec<(u32, MsiMessage)> {
        lock(&self.routes).iter().map(|(g, m)| (*g, *m)).collect()
    }

    /// Make the table exactly `routes` and push it, even if unchanged: a
    /// push makes KVM rescan the level-triggered vectors of every vCPU
    /// (restored vCPUs included).
    pub fn replace(&self, routes: &[(u32, MsiMessage)]) -> std::result::Result<(), InterruptError> {
        let next: BTreeMap<u32, MsiMessage> = routes.iter().copied().collect();
        if let Some(g) = next.keys().find(|g| **g as usize >= MAX_GSIS) {
            return Err(InterruptError::GsiOutOfRange(*g));
        }
        self.install(&mut lock(&self.routes), next)
    }
}

impl MsiRouting for GsiRouter {
    fn set_route(
        &self,
        gsi: u32,
        msg: Option<MsiMessage>,
    ) -> std::result::Result<(), InterruptError> {
        self.apply(&[(gsi, msg)])
    }

    fn set_routes(
        &self,
        batch: &[(u32, Option<MsiMessage>)],
    ) -> std::result::Result<(), InterruptError> {
        self.apply(batch)
    }

    fn signal(&self, gsi: u32) -> std::result::Result<(), InterruptError> {
        if !self.has_route(gsi) {
            return Err(InterruptError::NoRoute(gsi));
        }
        // KVM_IRQ_LINE on an MSI route injects synchronously, from any thread.
        self.vm
            .set_irq_line(gsi, true)
            .map_err(|e| InterruptError::Inject {
                gsi,
                msg: e.to_string(),
            })
    }

    fn signal_msi(&self, msg: MsiMessage) -> std::result::Result<(), InterruptError> {
        let (address_lo, address_hi) = msg.kvm_address();
        let m = kvm_msi {
            address_lo,
            address_hi,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(m)
            .map(|_| ())
            .map_err(|e| InterruptError::Inject {
                gsi: u32::MAX,
                msg: e.to_string(),
            })
    }
}

impl GsiRouter {
    /// KVM_IOEVENTFD assign (`assign`) or deassign, with or without datamatch.
    fn ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
        assign: bool,
    ) -> std::result::Result<(), InterruptError> {
        let a = match addr {
            IoEventAddress::Pio(p) => kvm_ioctls::IoEventAddress::Pio(p),
            IoEventAddress::Mmio(m) => kvm_ioctls::IoEventAddress::Mmio(m),
        };
        let r = match (datamatch, assign) {
            (Some(d), true) => self.vm.register_ioevent(fd, &a, d),
            (None, true) => self.vm.register_ioevent(fd, &a, NoDatamatch),
            (Some(d), false) => self.vm.unregister_ioevent(fd, &a, d),
            (None, false) => self.vm.unregister_ioevent(fd, &a, NoDatamatch),
        };
        let what = if assign { "assign" } else { "deassign" };
        r.map_err(|e| InterruptError::Routing(format!("KVM_IOEVENTFD {what} {addr:?}: {e}")))
    }
}

impl EventRegistry for GsiRouter {
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> std::result::Result<(), InterruptError> {
        self.ioevent(fd, addr, datamatch, true)
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> std::result::Result<(), InterruptError> {
        self.ioevent(fd, addr, datamatch, false)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::result::Result<(), InterruptError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|e| InterruptError::Routing(format!("KVM_IRQFD on GSI {gsi}: {e}")))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::result::Result<(), InterruptError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|e| InterruptError::Routing(format!("KVM_IRQFD deassign on GSI {gsi}: {e}")))
    }
}
