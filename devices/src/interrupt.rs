//! Interrupt plumbing shared by the I/O APIC, MSI-capable devices and the VMM.
//!
//! Every interrupt splitvm delivers is an MSI message on a KVM GSI: I/O APIC
//! pin `i` owns GSI `i` (0..24), MSI/MSI-X vectors own GSIs from 24 up. The
//! VMM implements [`MsiRouting`] on top of `KVM_SET_GSI_ROUTING` and
//! `KVM_IRQ_LINE`; unit tests implement it with a recorder.

use std::sync::{Arc, Mutex};

use crate::ioapic::IoApic;
use crate::pic::Pic;

/// An MSI message as the guest sees it (Intel SDM Vol. 3, 11.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// 0xFEEx_xxxx: destination ID in bits 19:12, destination mode in bit 2,
    /// extended destination ID (x2APIC) in bits 11:5 and in `address >> 32`.
    pub address: u64,
    /// Vector in bits 7:0, delivery mode in 10:8, level in 14, trigger in 15.
    pub data: u32,
}

impl MsiMessage {
    /// The vector this message delivers.
    pub fn vector(&self) -> u8 {
        (self.data & 0xff) as u8
    }
    /// True when the message is level-triggered (data bit 15).
    pub fn level_triggered(&self) -> bool {
        self.data & (1 << 15) != 0
    }
    /// Delivery mode, data bits 10:8.
    pub fn delivery_mode(&self) -> u8 {
        ((self.data >> 8) & 7) as u8
    }
    /// Destination APIC ID (8-bit xAPIC field).
    pub fn destination(&self) -> u32 {
        ((self.address >> 12) & 0xff) as u32
    }
    /// True when the address lies in the 0xFEEx_xxxx interrupt window.
    pub fn address_valid(&self) -> bool {
        // The high dword may carry x2APIC destination bits 31:8.
        (self.address & 0xfff0_0000) == 0xfee0_0000
    }
}

/// Errors from the interrupt routing backend.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("GSI {0} is out of range")]
    GsiOutOfRange(u32),
    #[error("GSI {0} has no route")]
    NoRoute(u32),
    #[error("KVM rejected the interrupt routing update: {0}")]
    Routing(String),
    #[error("KVM failed to inject on GSI {gsi}: {msg}")]
    Inject { gsi: u32, msg: String },
}

/// The KVM side of interrupt routing, as seen by devices.
///
/// Implementations must be callable from any thread (vCPU threads, device
/// threads) without stopping a vCPU.
pub trait MsiRouting: Send + Sync {
    /// Install (or replace) the MSI route of `gsi`. `None` removes it.
    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError>;
    /// Deliver one interrupt through the current route of `gsi`, synchronously:
    /// when this returns, KVM has accepted it into the target LAPIC(s).
    fn signal(&self, gsi: u32) -> Result<(), InterruptError>;
    /// Deliver a one-off MSI that has no GSI (test port, debugging).
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), InterruptError>;
}

/// Where a guest write lands for an ioeventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// The KVM side of eventfd plumbing, as seen by devices: ioeventfds turn a
/// guest write into an eventfd signal without a userspace exit; irqfds turn
/// an eventfd write into an interrupt on a GSI without a vCPU involved.
pub trait EventRegistry: Send + Sync {
    fn register_ioevent(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), InterruptError>;
    fn unregister_ioevent(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), InterruptError>;
    fn register_irqfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
    ) -> Result<(), InterruptError>;
    fn unregister_irqfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
    ) -> Result<(), InterruptError>;
}

/// A device's handle on one interrupt line: an I/O APIC input pin and, for
/// an ISA device, the 8259 input of its ISA IRQ too (a PC drives both).
#[derive(Clone)]
pub struct IrqLine {
    ioapic: Arc<Mutex<IoApic>>,
    pin: usize,
    pic: Option<(Arc<Pic>, u8)>,
}

impl IrqLine {
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: usize) -> Self {
        IrqLine {
            ioapic,
            pin,
            pic: None,
        }
    }
    /// Also drive ISA IRQ `irq` of the 8259 pair.
    pub fn with_pic(mut self, pic: Arc<Pic>, irq: u8) -> Self {
        self.pic = Some((pic, irq));
        self
    }
    pub fn pin(&self) -> usize {
        self.pin
    }
    /// Drive the line to `level` (true = asserted, before polarity).
    pub fn set_level(&self, level: bool) {
        lock(&self.ioapic).set_irq(self.pin, level);
        if let Some((pic, irq)) = &self.pic {
            pic.set_irq(*irq, level);
        }
    }
    /// An edge: assert then deassert the line.
    pub fn pulse(&self) {
        {
            let mut ioapic = lock(&self.ioapic);
            ioapic.set_irq(self.pin, true);
            ioapic.set_irq(self.pin, false);
        }
        if let Some((pic, irq)) = &self.pic {
            pic.set_irq(*irq, true);
            pic.set_irq(*irq, false);
        }
    }
}

pub use crate::sync::lock;

/// First GSI handed out to MSI/MSI-X vectors: GSIs 0..23 belong to the
/// I/O APIC pins.
pub const FIRST_MSI_GSI: u32 = 24;

/// KVM's limit on routing entries (`KVM_MAX_IRQ_ROUTES` on x86), the usual
/// `limit` for [`GsiAllocator::new`].
pub const KVM_MAX_IRQ_ROUTES: u32 = 4096;

/// Hands out GSIs for MSI and MSI-X vectors, from [`FIRST_MSI_GSI`] up to
/// (excluding) a limit. Freed GSIs are reused, lowest first, before new
/// ones are taken. One instance is shared by every MSI user of a VM
/// ([`SharedGsiAllocator`]).
#[derive(Debug)]
pub struct GsiAllocator {
    next: u32,
    limit: u32,
    free: std::collections::BTreeSet<u32>,
}

/// The allocator as shared by all MSI users of one VM.
pub type SharedGsiAllocator = Arc<Mutex<GsiAllocator>>;

impl GsiAllocator {
    /// GSIs `FIRST_MSI_GSI..limit` (KVM: `limit` = [`KVM_MAX_IRQ_ROUTES`]).
    pub fn new(limit: u32) -> Self {
        GsiAllocator {
            next: FIRST_MSI_GSI,
            limit: limit.max(FIRST_MSI_GSI),
            free: std::collections::BTreeSet::new(),
        }
    }

    /// A new [`SharedGsiAllocator`].
    pub fn shared(limit: u32) -> SharedGsiAllocator {
        Arc::new(Mutex::new(Self::new(limit)))
    }

    /// One GSI, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(g) = self.free.pop_first() {
            return Some(g);
        }
        if self.next < self.limit {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    /// `n` GSIs, all or nothing.
    pub fn allocate_many(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.available() {
            return None;
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    /// Return `gsi` to the pool. False (and nothing changes) if it was not
    /// allocated: out of range, never handed out or already freed.
    pub fn free(&mut self, gsi: u32) -> bool {
        if !self.is_allocated(gsi) {
            return false;
        }
        if gsi + 1 == self.next {
            // Shrink the high-water mark, absorbing freed GSIs below it.
            self.next -= 1;
            while self.next > FIRST_MSI_GSI && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.free.insert(gsi);
        }
        true
    }

    /// True if `gsi` is currently handed out.
    pub fn is_allocated(&self, gsi: u32) -> bool {
        (FIRST_MSI_GSI..self.next).contains(&gsi) && !self.free.contains(&gsi)
    }

    /// Number of GSIs currently handed out.
    pub fn in_use(&self) -> usize {
        (self.next - FIRST_MSI_GSI) as usize - self.free.len()
    }

    /// Number of GSIs that can still be allocated.
    pub fn available(&self) -> usize {
        (self.limit - self.next) as usize + self.free.len()
    }
}

#[cfg(test)]
mod gsi_allocator_tests {
    use super::*;

    #[test]
    fn gsi_allocator_starts_above_ioapic_pins() {
        let mut a = GsiAllocator::new(KVM_MAX_IRQ_ROUTES);
        assert_eq!(a.allocate(), Some(24));
        assert_eq!(a.allocate(), Some(25));
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn gsi_allocator_reuses_freed_gsis() {
        let mut a = GsiAllocator::new(KVM_MAX_IRQ_ROUTES);
        let g: Vec<u32> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(g, vec![24, 25, 26, 27]);
        assert!(a.free(25));
        assert!(a.free(24));
        assert_eq!(a.allocate(), Some(24), "lowest freed GSI first");
        assert_eq!(a.allocate(), Some(25));
        assert_eq!(a.allocate(), Some(28));
    }

    #[test]
    fn gsi_allocator_stops_at_limit() {
        let mut a = GsiAllocator::new(28);
        assert_eq!(a.allocate_many(4), Some(vec![24, 25, 26, 27]));
        assert_eq!(a.allocate(), None);
        assert_eq!(a.available(), 0);
        assert!(a.free(26));
        assert_eq!(a.allocate(), Some(26));
    }

    #[test]
    fn gsi_allocator_allocate_many_is_all_or_nothing() {
        let mut a = GsiAllocator::new(30);
        assert_eq!(a.allocate_many(7), None);
        assert_eq!(a.in_use(), 0);
        assert_eq!(a.allocate_many(6).map(|v| v.len()), Some(6));
    }

    #[test]
    fn gsi_allocator_refuses_double_and_foreign_free() {
        let mut a = GsiAllocator::new(KVM_MAX_IRQ_ROUTES);
        let g = a.allocate().unwrap();
        assert!(!a.free(3), "I/O APIC pins are not the allocator's");
        assert!(!a.free(100), "never handed out");
        assert!(a.free(g));
        assert!(!a.free(g), "double free");
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn gsi_allocator_freeing_top_shrinks_high_water_mark() {
        let mut a = GsiAllocator::new(KVM_MAX_IRQ_ROUTES);
        a.allocate_many(3).unwrap(); // 24, 25, 26
        assert!(a.free(25));
        assert!(a.free(26));
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.allocate(), Some(25));
        assert_eq!(a.allocate(), Some(26));
    }

    #[test]
    fn gsi_allocator_limit_below_first_gsi_hands_out_nothing() {
        let mut a = GsiAllocator::new(10);
        assert_eq!(a.allocate(), None);
    }
}
