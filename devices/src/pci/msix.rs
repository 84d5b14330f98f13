//! MSI-X (PCI Local Bus 3.0, 6.8.2; PCIe 6.8.2 likewise): capability
//! message control, vector table and pending bit array.
//!
//! Each vector owns a GSI and an irqfd registered once at creation. The
//! device signals a vector with [`MsixConfig::trigger`] (or a
//! [`MsixVector`] handle), from any thread. Masking is enforced there, in
//! userspace: a vector that is masked, whose function is masked, or whose
//! capability is disabled gets its pending bit set instead; otherwise the
//! irqfd is written and KVM injects without a vCPU exit or ioctl. Checking
//! the mask in userspace costs nothing extra, because devices signal from
//! their worker threads anyway, and it keeps the irqfd registered for the
//! life of the device (no KVM_IRQFD churn on mask/unmask). A pending vector
//! is sent when it becomes deliverable (entry unmask, function unmask or
//! MSI-X enable), and its pending bit cleared.
//!
//! KVM routes follow the policy in [`vector`](super::vector): kept in step
//! with the entry while deliverable, left alone while masked.
//!
//! Table and PBA accesses must be aligned dwords or qwords within the
//! structure (spec 6.8.2: "aligned full DWORD or aligned full QWORD");
//! anything else is ignored (reads 0), counted in
//! [`MsixStats::bad_accesses`] and logged once. The PBA is read-only.
//! Message address bits 1:0 are read-only 0; vector control has only the
//! mask bit. Entries reset masked with a zero message.

use std::sync::{Arc, Mutex};

use super::vector::{IrqfdVectors, VectorReport};
use super::PciError;
use crate::interrupt::{EventRegistry, MsiMessage, MsiRouting, SharedGsiAllocator};
use crate::sync::lock;

pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Table size field is 11 bits.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const CTRL_ENABLE: u16 = 1 << 15;
const ENTRY_MASKED: u32 = 1;

/// MSI-X in a snapshot: enable and function mask, each entry's four
/// dwords (address low/high, data, vector control) and the PBA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixSnapshot {
    pub enabled: bool,
    pub function_masked: bool,
    pub entries: Vec<[u32; 4]>,
    pub pba: Vec<u64>,
}

/// Capability-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsixStats {
    /// Table/PBA accesses ignored: odd size, misaligned, past the end, or a
    /// write to the read-only PBA.
    pub bad_accesses: u64,
    /// Route updates KVM refused.
    pub route_errors: u64,
    /// `trigger()` calls naming a vector the table does not have.
    pub bad_triggers: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: ENTRY_MASKED,
        }
    }
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.ctrl & ENTRY_MASKED != 0
    }
}

struct MsixState {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    vectors: IrqfdVectors,
    stats: MsixStats,
    warned: bool,
}

impl MsixState {
    fn deliverable(&self, i: usize) -> bool {
        self.enabled && !self.function_masked && !self.entries[i].masked()
    }

    fn pending(&self, i: usize) -> bool {
        self.pba[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_pending(&mut self, i: usize, on: bool) {
        if on {
            self.pba[i / 64] |= 1 << (i % 64);
        } else {
            self.pba[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Vector `i` may have become deliverable or changed its message.
    fn refresh(&mut self, i: usize) {
        if !self.deliverable(i) {
            return;
        }
        let msg = self.entries[i].message();
        if self.pending(i) {
            self.set_pending(i, false);
            self.vectors.deliver(i, msg);
        } else {
            self.vectors.sync(i, msg);
        }
    }

    fn bad_access(&mut self, what: &str, offset: u64, len: usize) {
        self.stats.bad_accesses += 1;
        if !self.warned {
            self.warned = true;
            log::warn!("ignoring MSI-X {what} access of {len} bytes at offset {offset:#x}");
        }
    }
}

fn access_ok(offset: u64, len: usize, limit: u64) -> bool {
    (len == 4 || len == 8)
        && offset.is_multiple_of(len as u64)
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= limit)
}

/// An MSI-X capability's state; clones share it (the configuration space,
/// the BAR handler and the device's interrupt handles hold one each).
#[derive(Clone)]
pub struct MsixConfig {
    state: Arc<Mutex<MsixState>>,
    num: u16,
}

impl MsixConfig {
    /// `num_vectors` (1..=2048) vectors, each with a GSI from `gsis` and an
    /// irqfd registered with `events`. Everything is released on drop of
    /// the last clone.
    pub fn new(
        num_vectors: u16,
        routing: Arc<dyn MsiRouting>,
        events: Arc<dyn EventRegistry>,
        gsis: SharedGsiAllocator,
    ) -> Result<Self, PciError> {
        if num_vectors == 0 || num_vectors > MSIX_MAX_VECTORS {
            return Err(PciError::InvalidVectorCount(num_vectors as usize));
        }
        let n = num_vectors as usize;
        let vectors = IrqfdVectors::new(n, routing, events, gsis)?;
        Ok(MsixConfig {
            state: Arc::new(Mutex::new(MsixState {
                entries: vec![Entry::default(); n],
                pba: vec![0; n.div_ceil(64)],
                enabled: false,
                function_masked: false,
                vectors,
                stats: MsixStats::default(),
                warned: false,
            })),
            num: num_vectors,
        })
    }

    pub fn num_vectors(&self) -> u16 {
        self.num
    }

    /// Bytes of the vector table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.num) * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.num).div_ceil(64) * 8
    }

    /// Message control: table size - 1, function mask (bit 14), enable (15).
    pub fn read_control(&self) -> u16 {
        let s = lock(&self.state);
        (self.num - 1)
            | if s.function_masked {
                CTRL_FUNCTION_MASK
            } else {
                0
            }
            | if s.enabled { CTRL_ENABLE } else { 0 }
    }

    /// Guest write of message control (only bits 14 and 15 are writable).
    pub fn write_control(&self, value: u16) {
        let mut s = lock(&self.state);
        s.enabled = value & CTRL_ENABLE != 0;
        s.function_masked = value & CTRL_FUNCTION_MASK != 0;
        for i in 0..s.entries.len() {
            s.refresh(i);
        }
    }

    pub fn enabled(&self) -> bool {
        lock(&self.state).enabled
    }

    pub fn function_masked(&self) -> bool {
        lock(&self.state).function_masked
    }

    /// Entry mask bit of vector `v` (false for a vector that does not exist).
    pub fn vector_masked(&self, v: u16) -> bool {
        lock(&self.state)
            .entries
            .get(v as usize)
            .is_some_and(|e| e.masked())
    }

    pub fn pending(&self, v: u16) -> bool {
        let s = lock(&self.state);
        (v as usize) < s.entries.len() && s.pending(v as usize)
    }

    /// The capability's guest-visible state for a snapshot: message
    /// control, every table entry and the PBA (GSIs and irqfds are the
    /// VMM's, made again by the restored device).
    pub fn save(&self) -> MsixSnapshot {
        let s = lock(&self.state);
        MsixSnapshot {
            enabled: s.enabled,
            function_masked: s.function_masked,
            entries: s
                .entries
                .iter()
                .map(|e| [e.addr_lo, e.addr_hi, e.data, e.ctrl])
                .collect(),
            pba: s.pba.clone(),
        }
    }

    /// Put back a saved state. Nothing is delivered: a pending bit stays
    /// pending until its vector becomes deliverable (the guest unmasks it),
    /// exactly as before the snapshot; deliverable vectors get their routes.
    pub fn restore(&self, saved: &MsixSnapshot) -> Result<(), crate::StateError> {
        let mut s = lock(&self.state);
        if saved.entries.len() != s.entries.len() || saved.pba.len() != s.pba.len() {
            return Err(crate::StateError::Mismatch(format!(
                "{} MSI-X vectors saved, {} here",
                saved.entries.len(),
                s.entries.len()
            )));
        }
        s.enabled = saved.enabled;
        s.function_masked = saved.function_masked;
        for (e, v) in s.entries.iter_mut().zip(&saved.entries) {
            *e = Entry {
                addr_lo: v[0] & !3,
                addr_hi: v[1],
                data: v[2],
                ctrl: v[3] & ENTRY_MASKED,
            };
        }
        s.pba = saved.pba.clone();
        for i in 0..s.entries.len() {
            if s.deliverable(i) {
                // A consistent snapshot has no deliverable vector pending;
                // if one is, it is delivered now rather than lost.
                s.refresh(i);
            }
        }
        Ok(())
    }

    /// The GSI of vector `v`.
    pub fn gsi(&self, v: u16) -> Option<u32> {
        lock(&self.state)
            .vectors
            .vectors
            .get(v as usize)
            .map(|x| x.gsi)
    }

    /// Read `data` at `offset` in the vector table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let mut s = lock(&self.state);
        if !access_ok(offset, data.len(), self.table_len()) {
            data.fill(0);
            s.bad_access("table read", offset, data.len());
            return;
        }
        for (k, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + 4 * k as u64;
            let e = &s.entries[(at / MSIX_TABLE_ENTRY_SIZE) as usize];
            let v = match at % MSIX_TABLE_ENTRY_SIZE {
                0 => e.addr_lo,
                4 => e.addr_hi,
                8 => e.data,
                _ => e.ctrl,
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Write `data` at `offset` in the vector table; updates the vector's
    /// route and releases a pending interrupt as needed.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let mut s = lock(&self.state);
        if !access_ok(offset, data.len(), self.table_len()) {
            s.bad_access("table write", offset, data.len());
            return;
        }
        let i = (offset / MSIX_TABLE_ENTRY_SIZE) as usize;
        for (k, chunk) in data.chunks(4).enumerate() {
            let at = offset + 4 * k as u64;
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let v = u32::from_le_bytes(b);
            let e = &mut s.entries[i];
            match at % MSIX_TABLE_ENTRY_SIZE {
                0 => e.addr_lo = v & !3,
                4 => e.addr_hi = v,
                8 => e.data = v,
                _ => e.ctrl = v & ENTRY_MASKED,
            }
        }
        s.refresh(i);
    }

    /// Read `data` at `offset` in the PBA.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let mut s = lock(&self.state);
        if !access_ok(offset, data.len(), self.pba_len()) {
            data.fill(0);
            s.bad_access("PBA read", offset, data.len());
            return;
        }
        let q = s.pba[(offset / 8) as usize].to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&q[start..start + data.len()]);
    }

    /// The PBA is read-only: writes are ignored and counted.
    pub fn write_pba(&self, offset: u64, data: &[u8]) {
        lock(&self.state).bad_access("PBA write", offset, data.len());
    }

    /// Signal vector `v`. Returns true if the interrupt was sent (irqfd
    /// written), false if it was held pending or dropped.
    pub fn trigger(&self, v: u16) -> bool {
        let mut s = lock(&self.state);
        let i = v as usize;
        if i >= s.entries.len() {
            s.stats.bad_triggers += 1;
            return false;
        }
        s.vectors.vectors[i].stats.signalled += 1;
        if !s.deliverable(i) {
            s.set_pending(i, true);
            s.vectors.vectors[i].stats.pended += 1;
            return false;
        }
        let msg = s.entries[i].message();
        s.vectors.deliver(i, msg)
    }

    /// A handle on vector `v` for the device.
    pub fn vector(&self, v: u16) -> Option<MsixVector> {
        (v < self.num).then(|| MsixVector {
            msix: self.clone(),
            index: v,
        })
    }

    /// Function-level reset: disabled, not function-masked, entries masked
    /// with zero messages, no pending bits. Routes stay until the vectors
    /// are next deliverable.
    pub fn reset(&self) {
        let mut s = lock(&self.state);
        s.enabled = false;
        s.function_masked = false;
        s.entries.fill(Entry::default());
        s.pba.fill(0);
    }

    /// Per-vector report: message, guest vector, destination, counters.
    pub fn reports(&self) -> Vec<VectorReport> {
        let s = lock(&self.state);
        (0..s.entries.len())
            .filter_map(|i| {
                s.vectors
                    .report(i, s.entries[i].message(), !s.deliverable(i), s.pending(i))
            })
            .collect()
    }

    pub fn stats(&self) -> MsixStats {
        let s = lock(&self.state);
        MsixStats {
            route_errors: s.vectors.route_errors,
            ..s.stats
        }
    }
}

/// One MSI-X vector as a device holds it.
#[derive(Clone)]
pub struct MsixVector {
    msix: MsixConfig,
    index: u16,
}

impl MsixVector {
    /// See [`MsixConfig::trigger`].
    pub fn trigger(&self) -> bool {
        self.msix.trigger(self.index)
    }

    pub fn index(&self) -> u16 {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testutil::FakeKvm;

    const ADDR: u32 = 0xfee0_1000; // destination APIC 1
    const DATA: u32 = 0x41;

    fn setup(n: u16) -> (Arc<FakeKvm>, MsixConfig) {
        let kvm = FakeKvm::new();
        let m = MsixConfig::new(n, kvm.clone(), kvm.clone(), FakeKvm::gsis()).unwrap();
        (kvm, m)
    }

    fn w32(m: &MsixConfig, off: u64, v: u32) {
        m.write_table(off, &v.to_le_bytes());
    }

    fn r32(m: &MsixConfig, off: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read_table(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn pba(m: &MsixConfig) -> u64 {
        let mut b = [0u8; 8];
        m.read_pba(0, &mut b);
        u64::from_le_bytes(b)
    }

    /// Program vector `v` with a valid message, unmasked.
    fn program(m: &MsixConfig, v: u64, data: u32) {
        w32(m, v * 16, ADDR);
        w32(m, v * 16 + 4, 0);
        w32(m, v * 16 + 8, data);
        w32(m, v * 16 + 12, 0);
    }

    #[test]
    fn vectors_get_gsis_and_irqfds_at_creation() {
        let (kvm, m) = setup(3);
        assert_eq!(m.gsi(0), Some(24));
        assert_eq!(m.gsi(2), Some(26));
        assert!(kvm.has_irqfd(24) && kvm.has_irqfd(26));
        assert_eq!(kvm.route_calls(), 0, "no route until a vector is usable");
    }

    #[test]
    fn dropping_releases_irqfds_routes_and_gsis() {
        let kvm = FakeKvm::new();
        let gsis = FakeKvm::gsis();
        let m = MsixConfig::new(2, kvm.clone(), kvm.clone(), gsis.clone()).unwrap();
        m.write_control(CTRL_ENABLE);
        program(&m, 0, DATA);
        assert!(kvm.route(24).is_some());
        drop(m);
        assert_eq!(kvm.irqfd_count(), 0);
        assert!(kvm.routes().is_empty());
        assert_eq!(lock(&gsis).in_use(), 0);
    }

    #[test]
    fn control_reports_table_size_and_writable_bits() {
        let (_, m) = setup(5);
        assert_eq!(m.read_control(), 4);
        m.write_control(0xffff);
        assert_eq!(m.read_control(), 0xc004);
    }

    #[test]
    fn entries_reset_masked() {
        let (_, m) = setup(2);
        assert_eq!(r32(&m, 12), 1);
        assert!(m.vector_masked(1));
    }

    #[test]
    fn table_write_updates_gsi_route() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 1, DATA);
        assert_eq!(
            kvm.route(25),
            Some(MsiMessage {
                address: ADDR as u64,
                data: DATA
            })
        );
        // Retarget while unmasked: the route follows.
        w32(&m, 16 + 8, 0x42);
        assert_eq!(kvm.route(25).unwrap().data, 0x42);
        assert_eq!(r32(&m, 16 + 8), 0x42);
    }

    #[test]
    fn message_written_under_mask_is_routed_on_unmask_only() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        w32(&m, 0, ADDR);
        w32(&m, 4, 0);
        w32(&m, 8, DATA);
        assert_eq!(
            kvm.route_calls(),
            0,
            "no KVM table push per dword under mask"
        );
        w32(&m, 12, 0);
        assert_eq!(kvm.route_calls(), 1);
        assert_eq!(kvm.route(24).unwrap().data, DATA);
    }

    #[test]
    fn address_high_dword_passes_through_to_route_as_destination_bits_31_8() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        w32(&m, 0, ADDR);
        w32(&m, 4, 0x300); // destination bits 31:8 in address_hi 31:8 (KVM's reading)
        w32(&m, 8, DATA);
        w32(&m, 12, 0);
        assert_eq!(kvm.route(24).unwrap().address, 0x300_fee0_1000);
        assert_eq!(m.reports()[0].destination, 0x301);
    }

    #[test]
    fn address_hi_with_its_low_byte_set_gets_no_route() {
        // KVM refuses such a route (kvm_msi_route_invalid): the vector is
        // reported invalid and nothing is pushed.
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        w32(&m, 0, ADDR);
        w32(&m, 4, 0x3);
        w32(&m, 8, DATA);
        w32(&m, 12, 0);
        assert!(kvm.route(24).is_none());
        assert!(!m.reports()[0].valid);
    }

    #[test]
    fn enabled_unmasked_vector_delivers_through_irqfd() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 0, DATA);
        assert!(m.trigger(0));
        assert!(m.vector(0).unwrap().trigger());
        assert_eq!(kvm.take_irqs(24), 2);
        let r = m.reports()[0];
        assert_eq!((r.stats.signalled, r.stats.delivered), (2, 2));
        assert_eq!((r.guest_vector, r.destination, r.gsi), (0x41, 1, 24));
    }

    #[test]
    fn masked_vector_sets_pending_bit_instead_of_delivering() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 1, DATA);
        w32(&m, 16 + 12, 1);
        assert!(!m.trigger(1));
        assert_eq!(kvm.take_irqs(25), 0);
        assert_eq!(pba(&m), 0b10);
        let r = m.reports()[1];
        assert_eq!((r.stats.pended, r.stats.delivered), (1, 0));
        assert!(r.pending && r.masked);
    }

    #[test]
    fn unmasking_pending_vector_delivers_and_clears_pba() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 1, DATA);
        w32(&m, 16 + 12, 1);
        m.trigger(1);
        m.trigger(1);
        w32(&m, 16 + 12, 0);
        assert_eq!(kvm.take_irqs(25), 1, "pending signals coalesce into one");
        assert_eq!(pba(&m), 0);
        assert_eq!(m.reports()[1].stats.delivered, 1);
    }

    #[test]
    fn a_masked_pending_vector_restored_delivers_once_when_unmasked() {
        let (_, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 0, DATA);
        program(&m, 1, DATA + 1);
        w32(&m, 16 + 12, 1);
        assert!(!m.trigger(1));
        let saved = m.save();
        assert_eq!(saved.pba, vec![0b10]);

        let (kvm, restored) = setup(2);
        restored.restore(&saved).unwrap();
        assert_eq!(
            kvm.take_irqs(24) + kvm.take_irqs(25),
            0,
            "restoring sends nothing"
        );
        assert_eq!(pba(&restored), 0b10, "still pending");
        assert!(restored.enabled() && restored.vector_masked(1));
        assert_eq!(r32(&restored, 16 + 8), DATA + 1);
        w32(&restored, 16 + 12, 0);
        assert_eq!(kvm.take_irqs(25), 1, "delivered on unmask, once");
        assert_eq!(pba(&restored), 0);
        assert!(restored.trigger(0), "a deliverable vector delivers at once");
        assert_eq!(kvm.take_irqs(24), 1);
    }

    #[test]
    fn an_msix_state_of_another_size_is_refused() {
        let (_, m) = setup(2);
        let (_, other) = setup(3);
        assert!(other.restore(&m.save()).is_err());
    }

    #[test]
    fn function_mask_holds_all_vectors() {
        let (kvm, m) = setup(3);
        m.write_control(CTRL_ENABLE);
        for v in 0..3 {
            program(&m, v, 0x40 + v as u32);
        }
        m.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        for v in 0..3 {
            assert!(!m.trigger(v));
        }
        assert_eq!(pba(&m), 0b111);
        assert_eq!((24..27).map(|g| kvm.take_irqs(g)).sum::<u64>(), 0);
        m.write_control(CTRL_ENABLE);
        assert_eq!(pba(&m), 0);
        for g in 24..27 {
            assert_eq!(kvm.take_irqs(g), 1);
        }
    }

    #[test]
    fn disabled_msix_holds_vectors_pending_until_enabled() {
        let (kvm, m) = setup(1);
        program(&m, 0, DATA);
        assert!(!m.trigger(0));
        assert!(m.pending(0));
        assert_eq!(kvm.route_calls(), 0);
        m.write_control(CTRL_ENABLE);
        assert_eq!(kvm.take_irqs(24), 1);
        assert!(!m.pending(0));
    }

    #[test]
    fn invalid_msi_address_is_not_delivered_and_counted() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        w32(&m, 0, 0xfed0_0000);
        w32(&m, 8, DATA);
        w32(&m, 12, 0);
        assert!(!m.trigger(0));
        assert_eq!(kvm.take_irqs(24), 0);
        assert_eq!(kvm.route(24), None);
        let r = m.reports()[0];
        assert!(!r.valid);
        assert_eq!(r.stats.dropped_invalid, 1);
    }

    #[test]
    fn reserved_delivery_mode_and_low_vector_are_not_delivered() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        program(&m, 0, 0x341); // delivery mode 3
        program(&m, 1, 0x0f); // vector 15
        assert!(!m.trigger(0) && !m.trigger(1));
        assert_eq!(kvm.take_irqs(24) + kvm.take_irqs(25), 0);
        assert!(kvm.routes().is_empty());
    }

    #[test]
    fn invalidating_an_entry_removes_its_route() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        program(&m, 0, DATA);
        assert!(kvm.route(24).is_some());
        w32(&m, 0, 0);
        assert_eq!(kvm.route(24), None);
    }

    #[test]
    fn odd_sized_msix_table_access_is_ignored() {
        let (kvm, m) = setup(2);
        m.write_control(CTRL_ENABLE);
        m.write_table(12, &[0]); // byte write to vector control
        m.write_table(14, &[0, 0]);
        m.write_table(2, &[0, 0, 0, 0]); // misaligned dword
        m.write_table(4, &[0; 8]); // misaligned qword
        m.write_table(32, &[0; 4]); // past the end
        m.write_table(u64::MAX - 3, &[0; 4]);
        let mut b = [0xffu8; 2];
        m.read_table(12, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        m.read_table(32, &mut b);
        assert_eq!(b, [0; 4]);
        assert!(m.vector_masked(0), "byte write did not unmask");
        assert_eq!(m.stats().bad_accesses, 8);
        assert_eq!(kvm.route_calls(), 0);
    }

    #[test]
    fn qword_table_access_covers_two_fields() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        m.write_table(0, &(u64::from(ADDR) | 0x500 << 32).to_le_bytes());
        m.write_table(8, &u64::from(DATA).to_le_bytes()); // data + unmask
        assert_eq!(kvm.route(24).unwrap().address, 0x500_fee0_1000);
        let mut b = [0u8; 8];
        m.read_table(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), u64::from(DATA));
    }

    #[test]
    fn address_low_bits_read_as_zero() {
        let (_, m) = setup(1);
        w32(&m, 0, ADDR | 3);
        assert_eq!(r32(&m, 0), ADDR);
    }

    #[test]
    fn pba_is_read_only() {
        let (_, m) = setup(1);
        m.trigger(0);
        m.write_pba(0, &[0; 8]);
        assert_eq!(pba(&m), 1);
        let mut b = [0u8; 4];
        m.read_pba(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        m.read_pba(8, &mut b);
        assert_eq!(m.stats().bad_accesses, 2);
    }

    #[test]
    fn trigger_of_unknown_vector_is_counted() {
        let (_, m) = setup(1);
        assert!(!m.trigger(7));
        assert!(m.vector(7).is_none());
        assert_eq!(m.stats().bad_triggers, 1);
    }

    #[test]
    fn route_failure_drops_signal_and_counts() {
        let (kvm, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        kvm.fail_routes
            .store(true, std::sync::atomic::Ordering::SeqCst);
        program(&m, 0, DATA);
        assert!(!m.trigger(0));
        assert_eq!(kvm.take_irqs(24), 0);
        assert_eq!(m.reports()[0].stats.dropped_error, 1);
        assert!(m.stats().route_errors >= 1);
        kvm.fail_routes
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(m.trigger(0), "route retried on the next signal");
    }

    #[test]
    fn creation_fails_cleanly_when_gsis_run_out() {
        let kvm = FakeKvm::new();
        let gsis = crate::interrupt::GsiAllocator::shared(26);
        assert!(matches!(
            MsixConfig::new(3, kvm.clone(), kvm.clone(), gsis.clone()),
            Err(PciError::GsiExhausted(3))
        ));
        assert_eq!(lock(&gsis).in_use(), 0);
        assert_eq!(kvm.irqfd_count(), 0);
        assert!(MsixConfig::new(0, kvm.clone(), kvm.clone(), gsis.clone()).is_err());
        assert!(MsixConfig::new(2049, kvm.clone(), kvm, gsis).is_err());
    }

    #[test]
    fn reset_masks_entries_and_clears_pending() {
        let (_, m) = setup(1);
        m.write_control(CTRL_ENABLE);
        program(&m, 0, DATA);
        m.write_control(0);
        m.trigger(0);
        m.reset();
        assert!(!m.pending(0) && m.vector_masked(0) && !m.enabled());
        assert_eq!(r32(&m, 8), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        TableWrite(u64, usize, u64),
        /// An aligned dword write of field `1` of entry `0`, with a value
        /// likely to make sense for that field.
        EntryWrite(u64, u64, u64),
        TableRead(u64, usize),
        PbaRead(u64, usize),
        PbaWrite(u64, usize),
        Control(u16),
        Trigger(u16),
    }

    const N: u16 = 4;

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let size = prop::sample::select(vec![1usize, 2, 4, 8]);
        let offset = prop_oneof![4 => 0u64..64, 1 => 0u64..96, 1 => any::<u64>()];
        let value = prop_oneof![
            2 => Just(0xfee0_0000u64 | 0x41 << 32),
            2 => Just(u64::from(ADDR)),
            1 => (0u64..0x800).prop_map(|d| d << 32),
            2 => 0u64..2,
            2 => 0u64..0x800,
            1 => any::<u64>(),
        ];
        let field = (0u64..4).prop_flat_map(|f| {
            let v = match f {
                0 => prop_oneof![
                    4 => Just(u64::from(ADDR)),
                    2 => Just(0xfee0_0000u64),
                    1 => Just(0xfed0_0000u64),
                    1 => any::<u32>().prop_map(u64::from),
                ]
                .boxed(),
                1 => prop_oneof![4 => Just(0u64), 1 => 0u64..0x100].boxed(),
                2 => prop_oneof![4 => 0x20u64..0x100, 1 => 0u64..0x800].boxed(),
                _ => prop_oneof![Just(0u64), Just(1), any::<u32>().prop_map(u64::from)].boxed(),
            };
            (Just(f), v)
        });
        prop_oneof![
            2 => (offset.clone(), size.clone(), value).prop_map(|(o, s, v)| Op::TableWrite(o, s, v)),
            8 => (0u64..u64::from(N), field).prop_map(|(e, (f, v))| Op::EntryWrite(e, f, v)),
            1 => (offset.clone(), size.clone()).prop_map(|(o, s)| Op::TableRead(o, s)),
            1 => (0u64..16, size.clone()).prop_map(|(o, s)| Op::PbaRead(o, s)),
            1 => (0u64..16, size).prop_map(|(o, s)| Op::PbaWrite(o, s)),
            2 => prop_oneof![4 => Just(0x8000u16), 1 => Just(0xc000), 1 => Just(0), 1 => any::<u16>()]
                .prop_map(Op::Control),
            4 => (0u16..N + 2).prop_map(Op::Trigger),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Fuzzing harness for the MSI-X table, PBA and message control (no
        /// nightly toolchain here, so no cargo-fuzz; proptest drives the
        /// same handlers with random offsets, sizes 1/2/4/8 and values).
        /// Never panics; a masked (or function-masked, or disabled) vector
        /// never delivers; a pending bit is only ever set on a vector that
        /// cannot deliver; a deliverable vector's KVM route is its entry's
        /// message (or none if invalid); counters add up.
        #[test]
        fn msix_random_accesses_keep_invariants(ops in proptest::collection::vec(op(), 1..100)) {
            use proptest::prelude::*;
            let (kvm, m) = setup(N);
            let mut irqs = [0u64; N as usize];
            for op in ops {
                let before = m.reports();
                match &op {
                    Op::TableWrite(o, s, v) => m.write_table(*o, &v.to_le_bytes()[..*s]),
                    Op::EntryWrite(e, f, v) => w32(&m, e * 16 + f * 4, *v as u32),
                    Op::TableRead(o, s) => { let mut b = [0u8; 8]; m.read_table(*o, &mut b[..*s]); }
                    Op::PbaRead(o, s) => { let mut b = [0u8; 8]; m.read_pba(*o, &mut b[..*s]); }
                    Op::PbaWrite(o, s) => m.write_pba(*o, &[0xff; 8][..*s]),
                    Op::Control(c) => m.write_control(*c),
                    Op::Trigger(v) => { m.trigger(*v); }
                }
                let after = m.reports();
                for i in 0..N as usize {
                    let got = kvm.take_irqs(24 + i as u32);
                    irqs[i] += got;
                    let allowed = match &op {
                        Op::Trigger(v) => *v as usize == i && !before[i].masked,
                        Op::TableWrite(..) | Op::EntryWrite(..) | Op::Control(_) => before[i].pending && !after[i].masked,
                        _ => false,
                    };
                    prop_assert!(got <= u64::from(allowed), "{:?}: vector {} sent {} irqs", op, i, got);
                    let r = after[i];
                    prop_assert!(!r.pending || r.masked, "pending on a deliverable vector {}", i);
                    if !r.masked {
                        let want = r.valid.then_some(r.message);
                        prop_assert_eq!(kvm.route(r.gsi), want);
                    }
                    prop_assert_eq!(r.stats.delivered, irqs[i]);
                    prop_assert!(r.stats.delivered + r.stats.dropped_invalid + r.stats.dropped_error
                        <= r.stats.signalled);
                    prop_assert!(r.pending == m.pending(i as u16));
                }
            }
        }
    }
}
