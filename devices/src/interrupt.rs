//! Interrupt plumbing shared by the I/O APIC, MSI-capable devices and the VMM.
//!
//! Every interrupt splitvm delivers is an MSI message on a KVM GSI: I/O APIC
//! pin `i` owns GSI `i` (0..24), MSI/MSI-X vectors own GSIs from 24 up. The
//! VMM implements [`MsiRouting`] on top of `KVM_SET_GSI_ROUTING` and
//! `KVM_IRQ_LINE`; unit tests implement it with a recorder.

use std::sync::{Arc, Mutex};

use crate::ioapic::IoApic;

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

/// A device's handle on one I/O APIC input pin.
#[derive(Clone)]
pub struct IrqLine {
    ioapic: Arc<Mutex<IoApic>>,
    pin: usize,
}

impl IrqLine {
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: usize) -> Self {
        IrqLine { ioapic, pin }
    }
    pub fn pin(&self) -> usize {
        self.pin
    }
    /// Drive the line to `level` (true = asserted, before polarity).
    pub fn set_level(&self, level: bool) {
        lock(&self.ioapic).set_irq(self.pin, level);
    }
    /// An edge: assert then deassert the line.
    pub fn pulse(&self) {
        let mut ioapic = lock(&self.ioapic);
        ioapic.set_irq(self.pin, true);
        ioapic.set_irq(self.pin, false);
    }
}

/// Lock a mutex, ignoring poisoning: device state stays usable even if a
/// thread panicked while holding it (a panic is a bug we report elsewhere).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
