//! The interrupt-source registry: who owns each interrupt splitvm delivers,
//! and which VM exits each source costs.
//!
//! A *source* is one thing that raises interrupts:
//! - an I/O APIC pin (one source per pin, named after the device wired to
//!   it: "pit" on pin 2, "serial" on pin 4, "pc-testdev" on the pins the
//!   test device drives, later virtio-mmio pins);
//! - an MSI source ([`SourceRegistry::register_msi_source`]): the MSI test
//!   port today, MSI-X vectors of virtio-pci devices later;
//! - the I/O APIC's own MMIO window (register accesses are not per pin, so
//!   they are counted on a source of their own);
//! - IPIs and LAPIC-local interrupts (timer, LINT, error). These never leave
//!   KVM: only tracing (`--trace-exits`) can see them.
//!
//! What is counted per source:
//! - raised / delivered / coalesced / masked drops: from the I/O APIC's
//!   [`PinStats`] for pins, from the [`SourceRouting`] wrapper (or the
//!   device's own [`MsiVectorCounters`]) for MSI sources;
//! - EOI exits: every `KVM_EXIT_IOAPIC_EOI` is attributed, on the vCPU
//!   thread at the moment of the exit, to the level pins that carry that
//!   vector *then* (`IoApic::end_of_interrupt` returns them), so a guest that reprograms an RTE
//!   during the run is attributed correctly;
//! - userspace PIO/MMIO exits on the source's own registers (address ranges
//!   attached with [`SourceRegistry::attach_pio`] / `attach_mmio`).
//!
//! The registry is built before the vCPUs start and is immutable after
//! that; per-vCPU counters are sized by [`SourceRegistry::len`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use devices::ioapic::{PinRoute, NUM_PINS};
use devices::{InterruptError, MsiMessage, MsiRouting};

/// What kind of source a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// An I/O APIC input pin (KVM GSI = pin).
    IoapicPin,
    /// A device that sends MSIs (MSI test port, MSI-X vectors).
    Msi,
    /// The I/O APIC's MMIO register window (not per pin).
    IoapicMmio,
    /// Inter-processor interrupts (ICR writes; handled inside KVM).
    Ipi,
    /// LAPIC-local interrupts: timer, LINT0/1, error (inside KVM).
    LapicLocal,
}

/// Current counters of one MSI vector, as a device reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MsiVectorSnapshot {
    /// Table index (MSI-X entry), or 0 for a single-message source.
    pub index: u32,
    pub address: u64,
    pub data: u32,
    pub masked: bool,
    /// Interrupts the device asked for.
    pub raised: u64,
    /// Interrupts that reached KVM (through irqfd or an ioctl).
    pub delivered: u64,
    /// Raised while masked, held in the pending bit.
    pub pending: u64,
}

/// Hook for devices that deliver MSIs without going through
/// [`MsiRouting::signal`] (e.g. MSI-X through irqfd, which userspace never
/// sees): they report their own per-vector counters and current messages.
pub trait MsiVectorCounters: Send + Sync {
    fn vectors(&self) -> Vec<MsiVectorSnapshot>;
}

/// Counters kept by [`SourceRouting`] for one MSI source.
pub struct MsiSourceStats {
    delivered: AtomicU64,
    failed: AtomicU64,
    per_vector: Vec<AtomicU64>,
    /// Routes this source installed, by GSI (rarely written).
    routes: RwLock<BTreeMap<u32, MsiMessage>>,
    /// Distinct one-off messages (`signal_msi`) seen so far, lock-free:
    /// `address_lo << 32 | data` (0 = free slot) and `address_hi`.
    oneoff: Vec<(AtomicU64, AtomicU32)>,
}

/// How many distinct one-off messages a source remembers.
const ONEOFF_SLOTS: usize = 16;

impl Default for MsiSourceStats {
    fn default() -> Self {
        MsiSourceStats {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            per_vector: (0..256).map(|_| AtomicU64::new(0)).collect(),
            routes: RwLock::new(BTreeMap::new()),
            oneoff: (0..ONEOFF_SLOTS)
                .map(|_| (AtomicU64::new(0), AtomicU32::new(0)))
                .collect(),
        }
    }
}

impl MsiSourceStats {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Messages this source delivers now: its GSI routes, plus the distinct
    /// one-off messages it sent (up to 16).
    pub fn messages(&self) -> Vec<MsiMessage> {
        let mut v: Vec<MsiMessage> = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect();
        for (key, hi) in &self.oneoff {
            let k = key.load(Ordering::Acquire);
            if k == 0 {
                break;
            }
            let m = MsiMessage {
                address: (k >> 32) | (u64::from(hi.load(Ordering::Relaxed)) << 32),
                data: k as u32,
            };
            if !v.contains(&m) {
                v.push(m);
            }
        }
        v
    }

    /// Remember a one-off message (first 16 distinct ones).
    fn remember(&self, msg: MsiMessage) {
        let key = ((msg.address & 0xffff_ffff) << 32) | u64::from(msg.data);
        if key == 0 {
            return;
        }
        for (slot, hi) in &self.oneoff {
            match slot.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    hi.store((msg.address >> 32) as u32, Ordering::Relaxed);
                    return;
                }
                Err(k) if k == key => return,
                Err(_) => {}
            }
        }
    }
    /// Deliveries per vector (only vectors with a count).
    pub fn per_vector(&self) -> BTreeMap<u8, u64> {
        self.per_vector
            .iter()
            .enumerate()
            .map(|(v, n)| (v as u8, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
    fn count(&self, msg: MsiMessage) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.per_vector[msg.vector() as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// An [`MsiRouting`] that counts what one source delivers and remembers the
/// messages it uses, then forwards to the VM's router. Give each MSI-capable
/// device its own (from [`SourceRegistry::register_msi_source`]).
pub struct SourceRouting {
    inner: Arc<dyn MsiRouting>,
    stats: Arc<MsiSourceStats>,
}

impl MsiRouting for SourceRouting {
    fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        self.inner.set_route(gsi, msg)?;
        let mut r = self.stats.routes.write().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => r.insert(gsi, m),
            None => r.remove(&gsi),
        };
        Ok(())
    }

    fn signal(&self, gsi: u32) -> Result<(), InterruptError> {
        let r = self.inner.signal(gsi);
        match &r {
            Ok(()) => {
                let msg = self
                    .stats
                    .routes
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&gsi)
                    .copied()
                    .unwrap_or_default();
                self.stats.count(msg);
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<(), InterruptError> {
        let r = self.inner.signal_msi(msg);
        match &r {
            Ok(()) => {
                self.stats.remember(msg);
                self.stats.count(msg);
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }
}

/// One registry entry.
pub struct SourceDef {
    /// Device name ("serial", "pit", "pc-testdev", "msi-test-port", ...).
    pub name: Option<String>,
    pub kind: SourceKind,
    pub pin: Option<usize>,
    pub msi: Option<Arc<MsiSourceStats>>,
    pub device_counters: Option<Arc<dyn MsiVectorCounters>>,
}

impl SourceDef {
    /// Stable identifier used in JSON and by `--trace-exits`.
    pub fn id(&self) -> String {
        match (self.kind, self.pin) {
            (SourceKind::IoapicPin, Some(p)) => format!("ioapic-pin-{p}"),
            (SourceKind::Msi, _) => format!("msi:{}", self.display_name()),
            (SourceKind::IoapicMmio, _) => "ioapic-mmio".into(),
            (SourceKind::Ipi, _) => "ipi".into(),
            (SourceKind::LapicLocal, _) => "lapic-local".into(),
            (SourceKind::IoapicPin, None) => "ioapic-pin".into(),
        }
    }
    pub fn display_name(&self) -> String {
        match (&self.name, self.pin) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => format!("pin {p}"),
            (None, None) => self.id(),
        }
    }
    /// Never leaves KVM: userspace cannot count it.
    pub fn in_kernel(&self) -> bool {
        matches!(self.kind, SourceKind::Ipi | SourceKind::LapicLocal)
    }
}

#[derive(Debug, Clone, Copy)]
struct Range {
    base: u64,
    end: u64,
    source: usize,
}

/// Registry of interrupt sources. See the module documentation.
pub struct SourceRegistry {
    sources: Vec<SourceDef>,
    pin_source: [usize; NUM_PINS],
    pio: Vec<Range>,
    mmio: Vec<Range>,
}

/// Index of the IPI source in every registry.
pub const SOURCE_IPI: usize = NUM_PINS;
/// Index of the LAPIC-local source in every registry.
pub const SOURCE_LAPIC_LOCAL: usize = NUM_PINS + 1;

impl Default for SourceRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceRegistry {
    /// A registry with one unnamed source per I/O APIC pin, plus the IPI
    /// and LAPIC-local sources.
    pub fn new() -> Self {
        let mut sources: Vec<SourceDef> = (0..NUM_PINS)
            .map(|pin| SourceDef {
                name: None,
                kind: SourceKind::IoapicPin,
                pin: Some(pin),
                msi: None,
                device_counters: None,
            })
            .collect();
        for kind in [SourceKind::Ipi, SourceKind::LapicLocal] {
            sources.push(SourceDef {
                name: None,
                kind,
                pin: None,
                msi: None,
                device_counters: None,
            });
        }
        SourceRegistry {
            sources,
            pin_source: std::array::from_fn(|p| p),
            pio: Vec::new(),
            mmio: Vec::new(),
        }
    }

    /// The registry for splitvm's platform devices: "pit" on pin 2 (ports
    /// 0x40-0x43 and 0x61), "serial" on pin 4 (0x3f8-0x3ff), with
    /// `test_devices` "pc-testdev" on every pin (port 0x2000+n drives pin
    /// n), and the I/O APIC MMIO window. Devices added later name their pin
    /// with [`SourceRegistry::name_pin`] and attach their registers.
    /// The registry before any device is placed: the I/O APIC's own
    /// register window. Devices add themselves as they are placed
    /// (vmm::place_pio, virtio_setup), so a device that does not exist has
    /// no row.
    pub fn platform() -> Self {
        use devices::ioapic::{IOAPIC_BASE, IOAPIC_SIZE};
        let mut r = SourceRegistry::new();
        let io = r.add_source("ioapic-mmio", SourceKind::IoapicMmio);
        r.attach_mmio(io, IOAPIC_BASE, IOAPIC_SIZE);
        r
    }

    /// pc-testdev can drive any pin: it names the pins no device owns, and
    /// its port for pin n counts on pin n's source either way. Call after
    /// the devices are placed.
    pub fn attach_testdev_lines(&mut self) {
        use devices::testdev::{TESTDEV_IRQ_BASE, TESTDEV_IRQ_LINES};
        for n in 0..(TESTDEV_IRQ_LINES as usize).min(NUM_PINS) {
            if self.sources[n].name.is_none() {
                self.name_pin(n, "pc-testdev");
            }
            if let Some(src) = self.pin_source(n) {
                self.attach_pio(src, TESTDEV_IRQ_BASE + n as u64, 1);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&SourceDef> {
        self.sources.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &SourceDef)> {
        self.sources.iter().enumerate()
    }

    /// Name the device wired to `pin` (first name wins; later devices on a
    /// shared pin are appended with '+'). Returns the pin's source index.
    pub fn name_pin(&mut self, pin: usize, name: &str) -> Option<usize> {
        let s = *self.pin_source.get(pin)?;
        let def = &mut self.sources[s];
        match &mut def.name {
            Some(n) if n.split('+').any(|x| x == name) => {}
            Some(n) => {
                n.push('+');
                n.push_str(name);
            }
            None => def.name = Some(name.to_string()),
        }
        Some(s)
    }

    /// Source index of I/O APIC pin `pin`.
    pub fn pin_source(&self, pin: usize) -> Option<usize> {
        self.pin_source.get(pin).copied()
    }

    /// Add a source that is neither a pin nor an MSI source (e.g. the I/O
    /// APIC MMIO window).
    pub fn add_source(&mut self, name: &str, kind: SourceKind) -> usize {
        self.sources.push(SourceDef {
            name: Some(name.to_string()),
            kind,
            pin: None,
            msi: None,
            device_counters: None,
        });
        self.sources.len() - 1
    }

    /// The hook for MSI-capable devices: registers source `name` and returns
    /// its index and an [`MsiRouting`] to hand to the device instead of the
    /// VM's router. Everything the device delivers through it is counted per
    /// vector. A device that delivers through irqfd should also pass its own
    /// counters (`device_counters`), which the report then prefers.
    pub fn register_msi_source(
        &mut self,
        name: &str,
        inner: Arc<dyn MsiRouting>,
        device_counters: Option<Arc<dyn MsiVectorCounters>>,
    ) -> (usize, Arc<dyn MsiRouting>) {
        let stats = Arc::new(MsiSourceStats::default());
        self.sources.push(SourceDef {
            name: Some(name.to_string()),
            kind: SourceKind::Msi,
            pin: None,
            msi: Some(stats.clone()),
            device_counters,
        });
        let routing: Arc<dyn MsiRouting> = Arc::new(SourceRouting { inner, stats });
        (self.sources.len() - 1, routing)
    }

    /// Give source `source` the device's own per-vector counters (for
    /// devices created after their routing wrapper, such as MSI-X).
    pub fn set_device_counters(&mut self, source: usize, counters: Arc<dyn MsiVectorCounters>) {
        if let Some(s) = self.sources.get_mut(source) {
            s.device_counters = Some(counters);
        }
    }

    fn attach(ranges: &mut Vec<Range>, source: usize, base: u64, len: u64) {
        ranges.push(Range {
            base,
            end: base.saturating_add(len),
            source,
        });
        ranges.sort_by_key(|r| r.base);
    }

    /// Userspace port I/O exits in `[base, base+len)` belong to `source`.
    pub fn attach_pio(&mut self, source: usize, base: u64, len: u64) {
        Self::attach(&mut self.pio, source, base, len);
    }

    /// Userspace MMIO exits in `[base, base+len)` belong to `source`.
    pub fn attach_mmio(&mut self, source: usize, base: u64, len: u64) {
        Self::attach(&mut self.mmio, source, base, len);
    }

    fn find(ranges: &[Range], addr: u64) -> Option<usize> {
        let i = ranges.partition_point(|r| r.base <= addr);
        let r = ranges.get(i.checked_sub(1)?)?;
        (addr < r.end).then_some(r.source)
    }

    /// Source owning port `port`, if any (vCPU exit path: a binary search).
    #[inline]
    pub fn pio_source(&self, port: u64) -> Option<usize> {
        Self::find(&self.pio, port)
    }

    /// Source owning MMIO address `addr`, if any.
    #[inline]
    pub fn mmio_source(&self, addr: u64) -> Option<usize> {
        Self::find(&self.mmio, addr)
    }

    /// Sources that deliver `vector` to `apic_id` right now (`None` = any
    /// destination), for attributing traced events. Pins are looked up in
    /// `routes` (the I/O APIC's current RTEs), MSI sources in their current
    /// messages.
    pub fn vector_owners(
        &self,
        vector: u8,
        apic_id: Option<u32>,
        routes: &[PinRoute],
    ) -> Vec<usize> {
        let mut out = Vec::new();
        for r in routes {
            if r.vector == vector
                && !r.masked
                && (r.dest_logical || apic_id.is_none_or(|a| a == r.destination))
            {
                if let Some(s) = self.pin_source(r.pin) {
                    out.push(s);
                }
            }
        }
        for (i, s) in self.iter() {
            let msgs = match (&s.device_counters, &s.msi) {
                (Some(d), _) => d
                    .vectors()
                    .into_iter()
                    .map(|v| MsiMessage {
                        address: v.address,
                        data: v.data,
                    })
                    .collect(),
                (None, Some(m)) => m.messages(),
                (None, None) => continue,
            };
            if msgs.iter().any(|m| {
                m.vector() == vector
                    && (m.logical() || apic_id.is_none_or(|a| a == m.destination()))
            }) {
                out.push(i);
            }
        }
        out
    }
}

mod report;
pub use report::{RouteReport, SourceReport, TracedCounts};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_addresses_to_sources() {
        let mut r = SourceRegistry::new();
        let serial = r.name_pin(4, "serial").unwrap();
        r.attach_pio(serial, 0x3f8, 8);
        for n in 0..24u64 {
            let s = r.pin_source(n as usize).unwrap();
            r.attach_pio(s, 0x2000 + n, 1);
        }
        assert_eq!(r.pio_source(0x3f8), Some(serial));
        assert_eq!(r.pio_source(0x3ff), Some(serial));
        assert_eq!(r.pio_source(0x400), None);
        assert_eq!(r.pio_source(0x200b), r.pin_source(11));
        assert_eq!(r.pio_source(0x1fff), None);
        assert_eq!(r.pio_source(0x2018), None);
    }

    #[test]
    fn shared_pin_names_are_joined() {
        let mut r = SourceRegistry::new();
        r.name_pin(4, "serial");
        r.name_pin(4, "pc-testdev");
        r.name_pin(4, "serial");
        assert_eq!(r.get(4).unwrap().display_name(), "serial+pc-testdev");
        assert_eq!(r.get(5).unwrap().display_name(), "pin 5");
        assert_eq!(r.get(SOURCE_IPI).unwrap().id(), "ipi");
        assert_eq!(r.get(SOURCE_LAPIC_LOCAL).unwrap().id(), "lapic-local");
    }

    struct Null;
    impl MsiRouting for Null {
        fn set_route(&self, _: u32, _: Option<MsiMessage>) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal(&self, _: u32) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal_msi(&self, _: MsiMessage) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    #[test]
    fn msi_sources_count_per_vector_and_own_their_vectors() {
        let mut r = SourceRegistry::new();
        let (i, routing) = r.register_msi_source("msi-test-port", Arc::new(Null), None);
        let m = MsiMessage {
            address: 0xfee0_1000,
            data: 0x45,
        };
        routing.signal_msi(m).unwrap();
        routing.signal_msi(m).unwrap();
        routing
            .set_route(
                30,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x50,
                }),
            )
            .unwrap();
        routing.signal(30).unwrap();
        let st = r.get(i).unwrap().msi.clone().unwrap();
        assert_eq!(st.delivered(), 3);
        assert_eq!(st.per_vector()[&0x45], 2);
        assert_eq!(st.per_vector()[&0x50], 1);
        assert_eq!(r.vector_owners(0x45, Some(1), &[]), vec![i]);
        assert!(r.vector_owners(0x45, Some(0), &[]).is_empty());
        assert_eq!(r.vector_owners(0x50, None, &[]), vec![i]);
        let rep = r.report(
            &[],
            &crate::irqchip::PinCounts::Ioapic(Vec::new()),
            &[],
            None,
        );
        let row = rep.iter().find(|x| x.id == "msi:msi-test-port").unwrap();
        assert_eq!(row.delivered, Some(3));
        assert_eq!(row.eoi_exits, Some(0));
        assert_eq!(row.routes.len(), 2);
    }
}
