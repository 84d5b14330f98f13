//! Recording fakes of KVM's routing and eventfd plumbing for PCI tests.

use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{
    EventRegistry, GsiAllocator, InterruptError, IoEventAddress, MsiMessage, MsiRouting,
    SharedGsiAllocator,
};
use crate::sync::lock;

struct Registered {
    raw: i32,
    fd: EventFd,
}

/// Records routes, irqfds and ioeventfds the way KVM would hold them.
#[derive(Default)]
pub(crate) struct FakeKvm {
    routes: Mutex<BTreeMap<u32, MsiMessage>>,
    route_calls: Mutex<Vec<(u32, Option<MsiMessage>)>>,
    irqfds: Mutex<BTreeMap<u32, Registered>>,
    ioevents: Mutex<Vec<(IoEventAddress, Option<u32>, Registered)>>,
    /// Make set_route fail.
    pub(crate) fail_routes: AtomicBool,
}

impl FakeKvm {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn gsis() -> SharedGsiAllocator {
        GsiAllocator::shared(crate::interrupt::KVM_MAX_IRQ_ROUTES)
    }

    pub(crate) fn route(&self, gsi: u32) -> Option<MsiMessage> {
        lock(&self.routes).get(&gsi).copied()
    }

    pub(crate) fn routes(&self) -> BTreeMap<u32, MsiMessage> {
        lock(&self.routes).clone()
    }

    /// Number of set_route calls so far.
    pub(crate) fn route_calls(&self) -> usize {
        lock(&self.route_calls).len()
    }

    pub(crate) fn has_irqfd(&self, gsi: u32) -> bool {
        lock(&self.irqfds).contains_key(&gsi)
    }

    pub(crate) fn irqfd_count(&self) -> usize {
        lock(&self.irqfds).len()
    }

    /// Interrupts sent on `gsi` since the last call (irqfd counter, read
    /// and reset as KVM would consume it).
    pub(crate) fn take_irqs(&self, gsi: u32) -> u64 {
        lock(&self.irqfds)
            .get(&gsi)
            .and_then(|r| r.fd.read().ok())
            .unwrap_or(0)
    }

    /// Interrupts sent since the last call on the GSI routed to `vector`.
    pub(crate) fn signals_for_vector(&self, vector: u8) -> u64 {
        let gsi = self
            .routes()
            .into_iter()
            .find(|(_, m)| m.vector() == vector)
            .map(|(g, _)| g);
        gsi.map_or(0, |g| self.take_irqs(g))
    }

    /// MMIO addresses with an ioeventfd.
    pub(crate) fn ioevent_addrs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.ioevents)
            .iter()
            .filter_map(|(a, _, _)| match a {
                IoEventAddress::Mmio(m) => Some(*m),
                IoEventAddress::Pio(_) => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// A guest write KVM would turn into an ioeventfd signal. Returns
    /// false if no ioeventfd covers `addr` (the write would exit).
    pub(crate) fn guest_mmio_write(&self, addr: u64) -> bool {
        for (a, _, r) in lock(&self.ioevents).iter() {
            if *a == IoEventAddress::Mmio(addr) {
                return r.fd.write(1).is_ok();
            }
        }
        false
    }
}

fn register(fd: &EventFd) -> Result<Registered, InterruptError> {
    Ok(Registered {
        raw: fd.as_raw_fd(),
        fd: fd
            .try_clone()
            .map_err(|e| InterruptError::Routing(e.to_string()))?,
    })
}

impl MsiRouting for FakeKvm {
    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        if self.fail_routes.load(Ordering::SeqCst) {
            return Err(InterruptError::Routing("injected failure".into()));
        }
        lock(&self.route_calls).push((gsi, msg));
        let mut r = lock(&self.routes);
        match msg {
            Some(m) => r.insert(gsi, m),
            None => r.remove(&gsi),
        };
        Ok(())
    }

    fn signal(&self, gsi: u32) -> Result<(), InterruptError> {
        Err(InterruptError::NoRoute(gsi))
    }

    fn signal_msi(&self, _msg: MsiMessage) -> Result<(), InterruptError> {
        Ok(())
    }
}

impl EventRegistry for FakeKvm {
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), InterruptError> {
        let mut v = lock(&self.ioevents);
        if v.iter().any(|(a, d, _)| *a == addr && *d == datamatch) {
            return Err(InterruptError::Routing("EEXIST".into()));
        }
        v.push((addr, datamatch, register(fd)?));
        Ok(())
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), InterruptError> {
        let mut v = lock(&self.ioevents);
        let n = v.len();
        v.retain(|(a, d, r)| !(*a == addr && *d == datamatch && r.raw == fd.as_raw_fd()));
        if v.len() == n {
            return Err(InterruptError::Routing("ENOENT".into()));
        }
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        let mut m = lock(&self.irqfds);
        if m.contains_key(&gsi) {
            return Err(InterruptError::Routing("EBUSY".into()));
        }
        m.insert(gsi, register(fd)?);
        Ok(())
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        let mut m = lock(&self.irqfds);
        match m.get(&gsi) {
            Some(r) if r.raw == fd.as_raw_fd() => {
                m.remove(&gsi);
                Ok(())
            }
            _ => Err(InterruptError::Routing("ENOENT".into())),
        }
    }
}
