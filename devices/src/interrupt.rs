//! Interrupt plumbing shared by the I/O APIC, MSI-capable devices and the VMM.
//!
//! Every interrupt splitvm delivers is an MSI message on a KVM GSI: I/O APIC
//! pin `i` owns GSI `i` (0..24), MSI/MSI-X vectors own GSIs from 24 up. The
//! VMM implements [`MsiRouting`] on top of `KVM_SET_GSI_ROUTING` and
//! `KVM_IRQ_LINE`; unit tests implement it with a recorder.

use std::sync::{Arc, Mutex};

/// An MSI message as the guest sees it (Intel SDM Vol. 3, 11.11), and the
/// one place that knows its layout: every other module asks it.
///
/// Address (`address` is address_hi << 32 | address_lo):
/// - lo 31:20 = 0xFEE (the interrupt window), 19:12 destination bits 7:0,
///   11:5 the *extended destination ID* (destination bits 14:8, as Linux
///   writes it when the hypervisor offers KVM_FEATURE_MSI_EXT_DEST_ID),
///   3 redirection hint, 2 destination mode (1 = logical);
/// - hi 31:8 destination bits 31:8, hi 7:0 must be 0: this is how KVM reads
///   a route with KVM_X2APIC_API_USE_32BIT_IDS (`x86_msi_msg_get_destid`),
///   and it refuses a route whose hi 7:0 is not 0 (`kvm_msi_route_invalid`).
///
/// Data: 7:0 vector, 10:8 delivery mode, 14 level (assert), 15 trigger
/// (1 = level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// MSI delivery modes (data bits 10:8) that the SDM reserves.
const RESERVED_DELIVERY_MODES: [u8; 2] = [3, 6];

impl MsiMessage {
    /// The message for destination APIC ID `dest` (bits 7:0 in address
    /// 19:12, bits 14:8 as the extended destination ID, bits 31:15 in
    /// address_hi), destination mode, delivery mode, vector and trigger
    /// (the assert bit 14 is always set; KVM reads only the trigger).
    pub fn compose(dest: u32, logical: bool, delivery_mode: u8, vector: u8, level: bool) -> Self {
        let lo = 0xfee0_0000u64
            | u64::from(dest & 0xff) << 12
            | u64::from((dest >> 8) & 0x7f) << 5
            | u64::from(logical) << 2;
        let hi = u64::from(dest & 0xffff_8000);
        let data = u32::from(vector)
            | u32::from(delivery_mode & 7) << 8
            | 1 << 14
            | u32::from(level) << 15;
        MsiMessage {
            address: hi << 32 | lo,
            data,
        }
    }

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
    /// True for logical destination mode (address bit 2).
    pub fn logical(&self) -> bool {
        self.address & (1 << 2) != 0
    }
    /// The destination APIC ID as KVM delivers it: bits 7:0 from address
    /// 19:12, bits 14:8 from the extended destination ID (address 11:5),
    /// bits 31:8 from address_hi 31:8.
    pub fn destination(&self) -> u32 {
        let (lo, hi) = self.kvm_address();
        ((lo >> 12) & 0xff) | (hi & 0xffff_ff00)
    }
    /// The (address_lo, address_hi) pair to give KVM (32-bit x2APIC IDs):
    /// the extended destination ID moves from address_lo 11:5 to
    /// address_hi 14:8, since KVM itself decodes only address_hi.
    pub fn kvm_address(&self) -> (u32, u32) {
        let lo = self.address as u32;
        let ext = (lo >> 5) & 0x7f;
        let hi = (self.address >> 32) as u32 | ext << 8;
        (lo & !(0x7f << 5), hi)
    }
    /// True when the address lies in the 0xFEEx_xxxx interrupt window.
    pub fn address_valid(&self) -> bool {
        (self.address & 0xfff0_0000) == 0xfee0_0000
    }
    /// Whether the message may be delivered: the address in the interrupt
    /// window with address_hi 7:0 clear (KVM refuses the route otherwise),
    /// a delivery mode that is not reserved, and for fixed and
    /// lowest-priority delivery a vector of at least 16.
    pub fn valid(&self) -> bool {
        let mode = self.delivery_mode();
        self.address_valid()
            && (self.address >> 32) & 0xff == 0
            && !RESERVED_DELIVERY_MODES.contains(&mode)
            && (mode > 1 || self.vector() >= 16)
    }
}

#[cfg(test)]
mod msi_tests {
    use super::MsiMessage;

    fn msg(address: u64, data: u32) -> MsiMessage {
        MsiMessage { address, data }
    }

    #[test]
    fn xapic_destination_is_address_bits_19_12() {
        assert_eq!(msg(0xfee0_3000, 0x30).destination(), 3);
        assert_eq!(msg(0xfeef_f000, 0x30).destination(), 0xff);
    }

    #[test]
    fn extended_destination_id_in_bits_11_5_gives_destination_bits_14_8() {
        // Destination 0x105: bits 7:0 = 5 in 19:12, bits 14:8 = 1 in 11:5.
        let m = msg(0xfee0_0000 | (5 << 12) | (1 << 5), 0x30);
        assert_eq!(m.destination(), 0x105);
        assert_eq!(msg(0xfee0_3fe0, 0x30).destination(), 0x7f03);
    }

    #[test]
    fn address_hi_carries_destination_bits_31_8_as_kvm_reads_it() {
        // address_hi 0x100 is destination 0x100 (not 0x10000: KVM takes
        // hi 31:8 as destination 31:8 in place).
        assert_eq!(msg(0x100_fee0_0000, 0x30).destination(), 0x100);
        assert_eq!(msg(0x200_fee0_3000, 0x30).destination(), 0x203);
        assert_eq!(msg(0xffff_ff00_fee0_0000, 0x30).destination(), 0xffff_ff00);
    }

    #[test]
    fn kvm_address_moves_the_extended_id_into_address_hi() {
        assert_eq!(msg(0xfee0_3004, 0).kvm_address(), (0xfee0_3004, 0));
        let m = msg(0xfee0_0000 | (5 << 12) | (1 << 5), 0);
        assert_eq!(m.kvm_address(), (0xfee0_5000, 1 << 8));
    }

    #[test]
    fn compose_and_destination_agree_for_every_width_of_id() {
        for dest in [0u32, 3, 0xff, 0x100, 0x7fff, 0x8000, 0x1234_5678, u32::MAX] {
            let m = MsiMessage::compose(dest, dest & 1 == 1, 0, 0x40, dest & 2 == 2);
            assert_eq!(m.destination(), dest, "dest {dest:#x}");
            assert_eq!(m.logical(), dest & 1 == 1);
            assert_eq!(m.level_triggered(), dest & 2 == 2);
            assert_eq!(m.vector(), 0x40);
            assert!(m.valid(), "dest {dest:#x}: {m:x?}");
        }
    }

    #[test]
    fn destination_mode_is_address_bit_2() {
        assert!(msg(0xfee0_1004, 0x30).logical());
        assert!(!msg(0xfee0_1000, 0x30).logical());
    }

    #[test]
    fn validity_follows_the_window_reserved_modes_vectors_and_kvm_hi_rule() {
        assert!(msg(0xfee0_0000, 0x30).valid());
        assert!(
            msg(0x100_fee0_1000, 0x4031).valid(),
            "destination bits in hi 31:8"
        );
        assert!(
            !msg(0x1_fee0_1000, 0x4031).valid(),
            "hi 7:0 set: KVM refuses the route"
        );
        assert!(!msg(0xfed0_0000, 0x30).valid(), "outside the window");
        assert!(!msg(0xfee0_0000, 0x0f).valid(), "vector < 16");
        assert!(
            !msg(0xfee0_0000, 0x330).valid(),
            "delivery mode 3 is reserved"
        );
        assert!(
            !msg(0xfee0_0000, 0x630).valid(),
            "delivery mode 6 is reserved"
        );
        assert!(msg(0xfee0_0000, 0x400).valid(), "NMI ignores the vector");
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
    /// Several route changes at once; a KVM backend pushes its table once
    /// for the whole batch. The default applies them one by one.
    fn set_routes(&self, batch: &[(u32, Option<MsiMessage>)]) -> Result<(), InterruptError> {
        let mut first = Ok(());
        for (gsi, msg) in batch {
            if let Err(e) = self.set_route(*gsi, *msg) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
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

/// I/O APIC input pins; pin i is GSI i (the one place this number is
/// written: the I/O APIC, KVM_CAP_SPLIT_IRQCHIP and the GSI plan use it).
pub const IOAPIC_PINS: usize = 24;

/// First GSI handed out to MSI/MSI-X vectors: GSIs below it belong to the
/// I/O APIC pins.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS as u32;

/// KVM's limit on routing entries (`KVM_MAX_IRQ_ROUTES` on x86), the usual
/// `limit` for [`GsiAllocator::new`].
pub const KVM_MAX_IRQ_ROUTES: u32 = 4096;

/// Hands out GSIs for MSI and MSI-X vectors, from [`FIRST_MSI_GSI`] up to
/// (excluding) a limit: rust-vmm's `vm_allocator::IdAllocator` (freed GSIs
/// are reused, lowest first, before new ones are taken), plus the counts
/// the VMM reports. One instance is shared by every MSI user of a VM
/// ([`SharedGsiAllocator`]).
#[derive(Debug)]
pub struct GsiAllocator {
    /// None when the limit leaves no GSI above the pins.
    ids: Option<vm_allocator::IdAllocator>,
    capacity: usize,
    in_use: usize,
}

/// The allocator as shared by all MSI users of one VM.
pub type SharedGsiAllocator = Arc<Mutex<GsiAllocator>>;

impl GsiAllocator {
    /// GSIs `FIRST_MSI_GSI..limit` (KVM: `limit` = [`KVM_MAX_IRQ_ROUTES`]).
    pub fn new(limit: u32) -> Self {
        let ids = (limit > FIRST_MSI_GSI)
            .then(|| vm_allocator::IdAllocator::new(FIRST_MSI_GSI, limit - 1).ok())
            .flatten();
        GsiAllocator {
            capacity: limit.saturating_sub(FIRST_MSI_GSI) as usize,
            ids,
            in_use: 0,
        }
    }

    /// A new [`SharedGsiAllocator`].
    pub fn shared(limit: u32) -> SharedGsiAllocator {
        Arc::new(Mutex::new(Self::new(limit)))
    }

    /// One GSI, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let g = self.ids.as_mut()?.allocate_id().ok()?;
        self.in_use += 1;
        Some(g)
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
        match self.ids.as_mut().map(|ids| ids.free_id(gsi)) {
            Some(Ok(_)) => {
                self.in_use -= 1;
                true
            }
            _ => false,
        }
    }

    /// True if `gsi` is currently handed out.
    pub fn is_allocated(&self, gsi: u32) -> bool {
        self.ids.as_ref().is_some_and(|ids| ids.is_allocated(gsi))
    }

    /// Number of GSIs currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Number of GSIs that can still be allocated.
    pub fn available(&self) -> usize {
        self.capacity - self.in_use
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
    fn gsi_allocator_limit_below_first_gsi_hands_out_nothing() {
        let mut a = GsiAllocator::new(10);
        assert_eq!(a.allocate(), None);
    }
}
