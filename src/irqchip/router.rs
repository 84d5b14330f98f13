//! The GSI routing table (src/irqchip/ owns it: the split irqchip's pins
//! and MSIs, the kernel irqchip's fixed routes plus MSIs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use devices::interrupt::{EventRegistry, IoEventAddress, KVM_MAX_IRQ_ROUTES};
use devices::sync::lock;
use devices::{InterruptError, MsiMessage, MsiRouting};

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
