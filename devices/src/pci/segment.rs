//! PCI segment 0, bus 0: configuration mechanism #1, slots, BAR allocation
//! and the MMIO window dispatcher.
//!
//! BARs decode only where it is safe: a memory BAR is routed when memory
//! decoding is on (command bit 1) and its whole range lies inside the PCI
//! MMIO window without overlapping another decoded BAR. A BAR programmed
//! elsewhere (over RAM below the window, over the I/O APIC/LAPIC above it,
//! or over another BAR) keeps the value the guest wrote, as hardware does,
//! but does not decode: counted in [`PciStats::bars_refused`] once per
//! programmed address, logged once per segment. Sizing a BAR with decoding
//! on (all-ones is above the window) is therefore harmless.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{BarKind, PciConfiguration, PciDevice, PciError, PciIds, COMMAND_MEMORY, NUM_BARS};
use crate::bus::{Bus, BusDevice, BusError};
use crate::control::{ExitReason, VmControl};
use crate::sync::lock;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

/// Configuration mechanism #1 ports: 0xCF8..0xCFF.
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;

pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Slots 1..=31 take devices; slot 0 is the host bridge.
const NUM_SLOTS: usize = 32;
/// BARs are placed at least page-aligned.
const MIN_BAR_ALIGN: u64 = 0x1000;

const REG_COMMAND: usize = 1;
const REG_BAR0: usize = 4;

const WARN_REFUSED: u8 = 1 << 0;
const WARN_CONFIG: u8 = 1 << 1;
const WARN_MMIO: u8 = 1 << 2;

/// The host bridge at 00:00.0: identity only, no BARs.
pub struct HostBridge {
    config: PciConfiguration,
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge {
            config: PciConfiguration::new(PciIds {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: 0x06_00_00,
                ..Default::default()
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "pci-host-bridge"
    }
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn save_state(&self) -> Result<crate::DeviceState, crate::StateError> {
        crate::DeviceState::of("host_bridge", &self.config.registers())
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        self.config
            .set_registers(&s.get::<Vec<u32>>("host_bridge")?)
    }
}

/// The PCI segment in a snapshot: each function's state by slot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PciSegmentState {
    pub functions: Vec<(u8, crate::DeviceState)>,
}

/// CONFIG_ADDRESS and the reset control register in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciConfigIoState {
    pub address: u32,
    pub reset_reg: u8,
}

/// Segment-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciStats {
    pub config_reads: u64,
    pub config_writes: u64,
    /// Config accesses that reached no function (bus != 0, function != 0,
    /// empty slot, enable bit clear): reads return all-ones.
    pub config_unclaimed: u64,
    /// Config data accesses of a bad size or alignment, and byte/word
    /// accesses to the address register: ignored, read all-ones.
    pub config_bad_accesses: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// Window accesses no decoded BAR claims (reads all-ones).
    pub mmio_unclaimed: u64,
    /// BAR addresses refused (outside the window or overlapping a BAR).
    pub bars_refused: u64,
    /// Decode changes: a BAR started, stopped or moved.
    pub bar_moves: u64,
}

/// Where a BAR currently decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRoute {
    pub slot: u8,
    pub bar: u8,
    pub addr: u64,
    pub size: u64,
}

struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    name: String,
    decoded: [Option<u64>; NUM_BARS],
    refused: [Option<u64>; NUM_BARS],
}

struct Route {
    size: u64,
    slot: u8,
    bar: u8,
}

struct State {
    start: u64,
    end: u64,
    slots: Vec<Option<Slot>>,
    /// Decoded BARs by base address; never overlapping.
    routes: BTreeMap<u64, Route>,
    /// Where BARs are placed: rust-vmm's address allocator over the window
    /// (None for an empty window).
    bar_space: Option<AddressAllocator>,
    stats: PciStats,
    warned: crate::sync::WarnOnce,
}

impl State {
    fn warn_once(&self, bit: u8, msg: std::fmt::Arguments) {
        self.warned.warn(bit.into(), format_args!("pci: {msg}"));
    }

    /// Where BAR `bar` of `slot` may decode, if at all.
    fn placement(&self, slot: u8, bar: u8, addr: u64, size: u64) -> Result<u64, &'static str> {
        let end = addr.checked_add(size).ok_or("wraps the address space")?;
        if addr < self.start {
            return Err("overlaps RAM below the PCI window");
        }
        if end > self.end {
            return Err("overlaps the I/O APIC/LAPIC area above the PCI window");
        }
        let clash = self
            .routes
            .range(..end)
            .rev()
            .find(|(_, r)| !(r.slot == slot && r.bar == bar));
        if let Some((base, r)) = clash {
            if base + r.size > addr {
                return Err("overlaps another BAR");
            }
        }
        Ok(addr)
    }

    /// Bring the routes of `slot` in step with its configuration space,
    /// telling the device about every change.
    fn update_decode(&mut self, slot: u8, dev: &mut dyn PciDevice) {
        let bars = dev.config().memory_bars();
        let enabled = dev.config().memory_enabled();
        for (bar, size, _) in bars {
            let addr = dev.config().bar_address(bar).unwrap_or(0);
            let want = if !enabled {
                None
            } else {
                match self.placement(slot, bar as u8, addr, size) {
                    Ok(a) => Some(a),
                    Err(why) => {
                        let newly = match self.slots[slot as usize].as_mut() {
                            Some(s) if s.refused[bar] != Some(addr) => {
                                s.refused[bar] = Some(addr);
                                true
                            }
                            _ => false,
                        };
                        if newly {
                            self.stats.bars_refused += 1;
                            self.warn_once(
                                WARN_REFUSED,
                                format_args!(
                                    "00:{slot:02x}.0 BAR {bar} at {addr:#x} ({size:#x} bytes) {why}: not decoded"
                                ),
                            );
                        }
                        None
                    }
                }
            };
            let Some(s) = self.slots[slot as usize].as_mut() else {
                return;
            };
            if want.is_some() {
                s.refused[bar] = None;
            }
            let old = s.decoded[bar];
            if old == want {
                continue;
            }
            s.decoded[bar] = want;
            if let Some(o) = old {
                self.routes.remove(&o);
            }
            if let Some(n) = want {
                self.routes.insert(
                    n,
                    Route {
                        size,
                        slot,
                        bar: bar as u8,
                    },
                );
            }
            self.stats.bar_moves += 1;
            dev.bar_moved(bar, old, want);
        }
    }

    /// A naturally aligned range of `size` bytes (at least 4 KiB aligned).
    fn allocate(&mut self, size: u64) -> Option<RangeInclusive> {
        let align = size.max(MIN_BAR_ALIGN).checked_next_power_of_two()?;
        self.bar_space
            .as_mut()?
            .allocate(size.max(1), align, AllocPolicy::FirstMatch)
            .ok()
    }
}

/// Bus 0 of PCI segment 0.
pub struct PciSegment {
    start: u64,
    end: u64,
    state: Mutex<State>,
}

impl PciSegment {
    /// A segment whose BARs live in `[mmio_start, mmio_end)` (splitvm:
    /// `arch::layout::PCI_MMIO_START..PCI_MMIO_END`), with the host bridge
    /// at 00:00.0.
    pub fn new(mmio_start: u64, mmio_end: u64) -> Arc<PciSegment> {
        let mut slots = Vec::with_capacity(NUM_SLOTS);
        slots.resize_with(NUM_SLOTS, || None);
        let seg = Arc::new(PciSegment {
            start: mmio_start,
            end: mmio_end.max(mmio_start),
            state: Mutex::new(State {
                start: mmio_start,
                end: mmio_end.max(mmio_start),
                slots,
                routes: BTreeMap::new(),
                bar_space: (mmio_end > mmio_start)
                    .then(|| AddressAllocator::new(mmio_start, mmio_end - mmio_start).ok())
                    .flatten(),
                stats: PciStats::default(),
                warned: crate::sync::WarnOnce::default(),
            }),
        });
        // Slot 0 is free in a new segment, so this cannot fail.
        let _ = seg.insert(0, Arc::new(Mutex::new(HostBridge::default())));
        seg
    }

    /// Plug `device` into the first free slot (1..=31): its memory BARs are
    /// allocated in the window (naturally aligned, at least 4 KiB) and
    /// memory decoding is turned on, as firmware would. Returns the slot
    /// (device number; function 0).
    pub fn add_device(&self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let slot = {
            let st = lock(&self.state);
            (1..NUM_SLOTS)
                .find(|&i| st.slots[i].is_none())
                .ok_or(PciError::NoFreeSlot)? as u8
        };
        self.add_device_at(slot, device)
    }

    /// Like [`add_device`](Self::add_device), at slot `slot` (1..=31).
    pub fn add_device_at(
        &self,
        slot: u8,
        device: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<u8, PciError> {
        if slot == 0 {
            return Err(PciError::SlotUnavailable(slot));
        }
        self.insert(slot, device)
    }

    fn insert(&self, slot: u8, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let mut st = lock(&self.state);
        if slot as usize >= NUM_SLOTS || st.slots[slot as usize].is_some() {
            return Err(PciError::SlotUnavailable(slot));
        }
        let mut dev = lock(&device);
        let bars = dev.config().memory_bars();
        // Largest first packs naturally aligned BARs without holes.
        let mut order: Vec<(usize, u64, BarKind)> = bars.clone();
        order.sort_by_key(|b| std::cmp::Reverse(b.1));
        let mut placed: Vec<(usize, RangeInclusive)> = Vec::new();
        for (bar, size, _) in order {
            match st.allocate(size) {
                Some(r) => placed.push((bar, r)),
                None => {
                    // All or nothing: give back what this device took.
                    if let Some(space) = st.bar_space.as_mut() {
                        for (_, r) in &placed {
                            let _ = space.free(r);
                        }
                    }
                    return Err(PciError::WindowFull { bar, size });
                }
            }
        }
        for (bar, r) in placed {
            dev.config_mut().set_bar_address(bar, r.start());
        }
        if !bars.is_empty() {
            dev.config_mut().set_command_bits(COMMAND_MEMORY);
        }
        st.slots[slot as usize] = Some(Slot {
            device: device.clone(),
            name: dev.name().to_string(),
            decoded: [None; NUM_BARS],
            refused: [None; NUM_BARS],
        });
        st.update_decode(slot, &mut *dev);
        Ok(slot)
    }

    /// Port I/O handler for 0xCF8..0xCFF (register at 0xCF8, length 8).
    pub fn config_io(self: &Arc<Self>) -> PciConfigIo {
        PciConfigIo {
            segment: self.clone(),
            address: 0,
            reset: None,
            reset_reg: 0,
        }
    }

    /// MMIO handler for the whole window (register at
    /// [`mmio_range`](Self::mmio_range)`.0`, length `end - start`).
    pub fn mmio_window(self: &Arc<Self>) -> PciMmioWindow {
        PciMmioWindow {
            segment: self.clone(),
        }
    }

    /// Register the segment on the VMM's buses: [`PciConfigIo`] at
    /// 0xCF8..0xCFF on `pio` as "pci-config" (with the 0xCF9 reset
    /// register if `reset` is given), and [`PciMmioWindow`] over the whole
    /// window on `mmio` as "pci-mmio". Devices may be added before or
    /// after; BAR moves never touch the buses.
    pub fn attach(
        self: &Arc<Self>,
        pio: &mut Bus,
        mmio: &mut Bus,
        reset: Option<Arc<VmControl>>,
    ) -> Result<(), BusError> {
        self.attach_with_ecam(pio, mmio, reset, None)
    }

    /// [`attach`](Self::attach), plus the ECAM window `(base, size)` of bus 0
    /// on `mmio` as "pci-ecam" (PCI Express enhanced configuration access,
    /// [`PciEcam`]).
    pub fn attach_with_ecam(
        self: &Arc<Self>,
        pio: &mut Bus,
        mmio: &mut Bus,
        reset: Option<Arc<VmControl>>,
        ecam: Option<(u64, u64)>,
    ) -> Result<(), BusError> {
        if let Some((base, size)) = ecam {
            mmio.insert(
                "pci-ecam",
                base,
                size,
                Arc::new(Mutex::new(PciEcam {
                    segment: self.clone(),
                })),
            )?;
        }
        let mut io = self.config_io();
        if let Some(c) = reset {
            io = io.with_reset(c);
        }
        pio.insert(
            "pci-config",
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
            Arc::new(Mutex::new(io)),
        )?;
        if self.end > self.start {
            mmio.insert(
                "pci-mmio",
                self.start,
                self.end - self.start,
                Arc::new(Mutex::new(self.mmio_window())),
            )?;
        }
        Ok(())
    }

    /// The MMIO window `(start, end)`.
    pub fn mmio_range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    pub fn stats(&self) -> PciStats {
        lock(&self.state).stats
    }

    /// Where BARs decode now.
    pub fn bar_routes(&self) -> Vec<BarRoute> {
        lock(&self.state)
            .routes
            .iter()
            .map(|(a, r)| BarRoute {
                slot: r.slot,
                bar: r.bar,
                addr: *a,
                size: r.size,
            })
            .collect()
    }

    /// Populated slots with their device names.
    pub fn devices(&self) -> Vec<(u8, String)> {
        lock(&self.state)
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u8, s.name.clone())))
            .collect()
    }

    /// Read configuration dword `reg` of bus/device/function.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, reg: usize) -> u32 {
        let mut st = lock(&self.state);
        st.stats.config_reads += 1;
        let device = match (bus, func, st.slots.get(dev as usize)) {
            (0, 0, Some(Some(s))) => s.device.clone(),
            _ => {
                st.stats.config_unclaimed += 1;
                return u32::MAX;
            }
        };
        let v = lock(&device).read_config_register(reg);
        v
    }

    /// Write `data` at byte `offset` of configuration dword `reg`.
    pub fn config_write(&self, bus: u8, dev: u8, func: u8, reg: usize, offset: usize, data: &[u8]) {
        let mut st = lock(&self.state);
        st.stats.config_writes += 1;
        let device = match (bus, func, st.slots.get(dev as usize)) {
            (0, 0, Some(Some(s))) => s.device.clone(),
            _ => {
                st.stats.config_unclaimed += 1;
                return;
            }
        };
        let mut d = lock(&device);
        d.write_config_register(reg, offset, data);
        if reg == REG_COMMAND || (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg) {
            st.update_decode(dev, &mut *d);
        }
    }

    /// Dispatch an MMIO read at guest address `addr` by the current BARs.
    /// Returns false (and fills all-ones) if no BAR claims the access.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let mut st = lock(&self.state);
        st.stats.mmio_reads += 1;
        match self.route(&mut st, addr, data.len()) {
            Some((device, bar, off)) => {
                lock(&device).read_bar(bar, off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch an MMIO write. Returns false if no BAR claims it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let mut st = lock(&self.state);
        st.stats.mmio_writes += 1;
        match self.route(&mut st, addr, data.len()) {
            Some((device, bar, off)) => {
                lock(&device).write_bar(bar, off, data);
                true
            }
            None => false,
        }
    }

    #[allow(clippy::type_complexity)]
    fn route(
        &self,
        st: &mut State,
        addr: u64,
        len: usize,
    ) -> Option<(Arc<Mutex<dyn PciDevice>>, usize, u64)> {
        let hit = st.routes.range(..=addr).next_back().and_then(|(base, r)| {
            let off = addr - base;
            (off.checked_add(len as u64)? <= r.size).then_some((r.slot, r.bar, off))
        });
        match hit.and_then(|(slot, bar, off)| {
            let s = st.slots.get(slot as usize)?.as_ref()?;
            Some((s.device.clone(), bar as usize, off))
        }) {
            Some(x) => Some(x),
            None => {
                st.stats.mmio_unclaimed += 1;
                st.warn_once(
                    WARN_MMIO,
                    format_args!("{len}-byte access at {addr:#x} hits no BAR"),
                );
                None
            }
        }
    }
}

/// ECAM (PCI Express enhanced configuration access): the 4 KiB
/// configuration space of bus/device/function at offset
/// `bus << 20 | device << 15 | function << 12`. The first 256 bytes are the
/// same registers mechanism #1 reaches; the extended space (0x100..0x1000)
/// of a present function reads as zero (no extended capabilities) and
/// ignores writes; an absent function reads all-ones. Accesses must be 1, 2
/// or 4 bytes at their natural alignment; others are ignored (all-ones).
pub struct PciEcam {
    segment: Arc<PciSegment>,
}

impl PciEcam {
    fn decode(offset: u64, len: usize) -> Option<(u8, u8, u8, usize)> {
        let ok = matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64) && offset < 1 << 28;
        ok.then_some((
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 7) as u8,
            (offset & 0xfff) as usize,
        ))
    }
}

/// Config space behind it is saved with the MMIO window.
impl BusDevice for PciEcam {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some((bus, dev, func, reg)) = Self::decode(offset, data.len()) else {
            return;
        };
        let v = self.segment.config_read(bus, dev, func, reg.min(0xff) >> 2);
        if reg >= 0x100 {
            if v != u32::MAX {
                data.fill(0);
            }
            return;
        }
        let k = reg & 3;
        data.copy_from_slice(&v.to_le_bytes()[k..k + data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bus, dev, func, reg)) = Self::decode(offset, data.len()) {
            if reg < 0x100 {
                self.segment
                    .config_write(bus, dev, func, reg >> 2, reg & 3, data);
            }
        }
    }
}

/// Configuration mechanism #1: 0xCF8 (offset 0) is the 32-bit address
/// register (enable bit 31, bus 23:16, device 15:11, function 10:8,
/// register 7:2); 0xCFC..0xCFF (offsets 4..8) the data window, with 1-, 2-
/// and 4-byte accesses at their natural alignment. 0xCF9 (offset 1, bytes
/// only) is the reset control register when built
/// [`with_reset`](PciConfigIo::with_reset): writing bit 2 resets the VM.
/// Other accesses are ignored and read all-ones.
pub struct PciConfigIo {
    segment: Arc<PciSegment>,
    address: u32,
    reset: Option<Arc<VmControl>>,
    reset_reg: u8,
}

impl PciConfigIo {
    /// Handle the 0xCF9 reset control register with `control`.
    pub fn with_reset(mut self, control: Arc<VmControl>) -> Self {
        self.reset = Some(control);
        self
    }

    /// The current CONFIG_ADDRESS value.
    pub fn address(&self) -> u32 {
        self.address
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        let a = self.address;
        (a & 0x8000_0000 != 0).then_some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            ((a >> 2) & 0x3f) as usize,
        ))
    }

    fn data_access_ok(offset: u64, len: usize) -> bool {
        (4..8).contains(&offset)
            && matches!(len, 1 | 2 | 4)
            && (offset - 4).is_multiple_of(len as u64)
            && (offset - 4) as usize + len <= 4
    }

    fn bad(&self, offset: u64, len: usize) {
        let mut st = lock(&self.segment.state);
        st.stats.config_bad_accesses += 1;
        st.warn_once(
            WARN_CONFIG,
            format_args!("ignoring {len}-byte config I/O access at 0xcf8+{offset}"),
        );
    }
}

impl BusDevice for PciConfigIo {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let s = PciConfigIoState {
            address: self.address,
            reset_reg: self.reset_reg,
        };
        Ok(Some(crate::DeviceState::of("pci_config_io", &s)?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: PciConfigIoState = s.get("pci_config_io")?;
        self.address = s.address & 0x80ff_fffc;
        self.reset_reg = s.reset_reg & 0x0e;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (1, 1) if self.reset.is_some() => data[0] = self.reset_reg,
            (0..=3, _) => {}
            _ if Self::data_access_ok(offset, data.len()) => {
                let Some((bus, dev, func, reg)) = self.target() else {
                    lock(&self.segment.state).stats.config_unclaimed += 1;
                    return;
                };
                let v = self.segment.config_read(bus, dev, func, reg).to_le_bytes();
                let k = (offset - 4) as usize;
                data.copy_from_slice(&v[k..k + data.len()]);
            }
            _ => self.bad(offset, data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                // Reserved bits 30:24 and 1:0 read as 0.
                self.address = u32::from_le_bytes(b) & 0x80ff_fffc;
            }
            (1, 1) => {
                if let Some(c) = &self.reset {
                    let old = self.reset_reg;
                    self.reset_reg = data[0] & 0x0e;
                    if data[0] & 0x04 != 0 && old & 0x04 == 0 {
                        c.request_exit(ExitReason::Reset);
                    }
                }
            }
            // Byte/word writes to 0xCF8-0xCFB are not config cycles (Linux
            // probes with `outb(0x01, 0xCFB)`).
            (0..=3, _) => {}
            _ if Self::data_access_ok(offset, data.len()) => {
                let Some((bus, dev, func, reg)) = self.target() else {
                    lock(&self.segment.state).stats.config_unclaimed += 1;
                    return;
                };
                self.segment
                    .config_write(bus, dev, func, reg, (offset - 4) as usize, data);
            }
            _ => self.bad(offset, data.len()),
        }
    }
}

/// The PCI MMIO window as one [`BusDevice`]: routes each access to the BAR
/// that currently decodes it, so BAR moves need no bus changes.
pub struct PciMmioWindow {
    segment: Arc<PciSegment>,
}

/// The segment's functions are saved once, with its MMIO window.
impl BusDevice for PciMmioWindow {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let st = lock(&self.segment.state);
        let mut functions = Vec::new();
        for (i, slot) in st.slots.iter().enumerate() {
            if let Some(s) = slot {
                let regs = lock(&s.device).save_state().map_err(|e| match e {
                    crate::StateError::Unsupported => crate::StateError::Mismatch(format!(
                        "PCI device '{}' cannot be snapshotted yet",
                        s.name
                    )),
                    e => e,
                })?;
                functions.push((i as u8, regs));
            }
        }
        Ok(Some(crate::DeviceState::of(
            "pci_segment",
            &PciSegmentState { functions },
        )?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: PciSegmentState = s.get("pci_segment")?;
        let mut st = lock(&self.segment.state);
        let present: Vec<u8> = (0..st.slots.len() as u8)
            .filter(|i| st.slots[*i as usize].is_some())
            .collect();
        let saved: Vec<u8> = s.functions.iter().map(|(i, _)| *i).collect();
        if present != saved {
            return Err(crate::StateError::Mismatch(format!(
                "PCI slots {saved:?} saved, {present:?} present"
            )));
        }
        for (i, state) in &s.functions {
            let Some(device) = st.slots[*i as usize].as_ref().map(|s| s.device.clone()) else {
                continue;
            };
            let mut dev = lock(&device);
            dev.restore_state(state)?;
            // The BARs as restored decode (and ioeventfds follow them).
            st.update_decode(*i, &mut *dev);
        }
        Ok(())
    }

    fn pause(&mut self, paused: bool) {
        let st = lock(&self.segment.state);
        for slot in st.slots.iter().flatten() {
            if let Err(e) = lock(&slot.device).pause(paused) {
                log::warn!("pci: {}: cannot pause for a snapshot: {e}", slot.name);
            }
        }
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.segment.start.wrapping_add(offset);
        self.segment.mmio_read(addr, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.segment.start.wrapping_add(offset);
        self.segment.mmio_write(addr, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 0xc000_0000;
    const END: u64 = 0xfec0_0000;

    /// A device with one 32-bit BAR that records accesses and moves.
    pub(super) struct TestDev {
        config: PciConfiguration,
        pub moves: Vec<(usize, Option<u64>, Option<u64>)>,
        pub writes: Vec<(usize, u64, Vec<u8>)>,
    }

    impl TestDev {
        fn new(bar_sizes: &[u64]) -> Self {
            let mut config = PciConfiguration::new(PciIds {
                vendor_id: 0x1234,
                device_id: 0x5678,
                class_code: 0xff_00_00,
                ..Default::default()
            });
            for (i, s) in bar_sizes.iter().enumerate() {
                config.add_bar(i, *s, BarKind::Mem32, false).unwrap();
            }
            TestDev {
                config,
                moves: vec![],
                writes: vec![],
            }
        }
    }

    impl PciDevice for TestDev {
        fn name(&self) -> &str {
            "test"
        }
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8 & 0xf);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.push((bar, old, new));
        }
    }

    fn addr(dev: u8, reg: u8) -> [u8; 4] {
        (0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg) << 2).to_le_bytes()
    }

    fn cfg_read(io: &mut PciConfigIo, dev: u8, reg: u8) -> u32 {
        io.write(0, &addr(dev, reg));
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    fn cfg_write(io: &mut PciConfigIo, dev: u8, reg: u8, v: u32) {
        io.write(0, &addr(dev, reg));
        io.write(4, &v.to_le_bytes());
    }

    fn setup(bars: &[u64]) -> (Arc<PciSegment>, Arc<Mutex<TestDev>>, PciConfigIo) {
        let seg = PciSegment::new(START, END);
        let dev = Arc::new(Mutex::new(TestDev::new(bars)));
        assert_eq!(seg.add_device(dev.clone()).unwrap(), 1);
        let io = seg.config_io();
        (seg, dev, io)
    }

    #[test]
    fn config_mechanism_1_reads_vendor_id() {
        let (_, _, mut io) = setup(&[]);
        assert_eq!(cfg_read(&mut io, 0, 0), 0x0d57_8086);
        assert_eq!(cfg_read(&mut io, 1, 0), 0x5678_1234);
        assert_eq!(
            cfg_read(&mut io, 0, 2) >> 8,
            0x06_00_00,
            "host bridge class"
        );
        // Byte and word reads at offsets within the data window.
        io.write(0, &addr(1, 0));
        let mut b = [0u8; 1];
        io.read(5, &mut b);
        assert_eq!(b[0], 0x12);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
    }

    #[test]
    fn config_address_register_reads_back() {
        let (_, _, mut io) = setup(&[]);
        io.write(3, &[0x01]); // Linux's type 1 probe
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }

    #[test]
    fn unpopulated_slot_reads_all_ones() {
        let (seg, _, mut io) = setup(&[]);
        assert_eq!(cfg_read(&mut io, 7, 0), u32::MAX);
        // Function 1 of a populated slot, bus 1, and enable bit clear.
        io.write(0, &(0x8000_0100u32 | 1 << 11).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0, &0x8001_0000u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0, &0x0000_0800u32.to_le_bytes());
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(4, &[0; 4]); // ignored
        assert_eq!(seg.stats().config_unclaimed, 5);
    }

    #[test]
    fn bad_config_data_access_is_ignored_and_counted() {
        let (seg, _, mut io) = setup(&[]);
        io.write(0, &addr(1, 0));
        let mut d = [0u8; 2];
        io.read(5, &mut d); // misaligned word
        assert_eq!(d, [0xff; 2]);
        let mut q = [0u8; 4];
        io.read(6, &mut q); // crosses the window end
        assert_eq!(q, [0xff; 4]);
        io.write(7, &[0; 2]);
        assert_eq!(seg.stats().config_bad_accesses, 3);
    }

    #[test]
    fn bars_are_allocated_in_window_and_decode() {
        let (seg, dev, mut io) = setup(&[0x1000, 0x4000]);
        let routes = seg.bar_routes();
        assert_eq!(routes.len(), 2);
        for r in &routes {
            assert!(r.addr >= START && r.addr + r.size <= END);
            assert_eq!(r.addr % r.size.max(0x1000), 0);
        }
        assert_ne!(cfg_read(&mut io, 1, 1) & u32::from(COMMAND_MEMORY), 0);
        assert_eq!(lock(&dev).moves.len(), 2, "device told where its BARs are");
        let bar1 = cfg_read(&mut io, 1, 5) as u64;
        let mut win = seg.mmio_window();
        let mut d = [0u8; 4];
        win.read(bar1 - START + 3, &mut d);
        assert_eq!(d, [0x13; 4]);
    }

    #[test]
    fn bar_sizing_through_config_io() {
        let (_, _, mut io) = setup(&[0x4000]);
        cfg_write(&mut io, 1, 4, 0xffff_ffff);
        assert_eq!(cfg_read(&mut io, 1, 4), 0xffff_c000);
    }

    #[test]
    fn bar_move_reroutes_mmio_and_notifies_device() {
        let (seg, dev, mut io) = setup(&[0x1000]);
        let old = cfg_read(&mut io, 1, 4) as u64;
        cfg_write(&mut io, 1, 4, 0xd000_0000);
        assert_eq!(
            lock(&dev).moves.last(),
            Some(&(0, Some(old), Some(0xd000_0000)))
        );
        assert!(!seg.mmio_write(old, &[1]), "old address no longer decodes");
        assert!(seg.mmio_write(0xd000_0010, &[1, 2]));
        assert_eq!(lock(&dev).writes, vec![(0, 0x10, vec![1, 2])]);
        assert_eq!(seg.stats().mmio_unclaimed, 1);
    }

    #[test]
    fn memory_decode_off_removes_routes() {
        let (seg, dev, mut io) = setup(&[0x1000]);
        let a = cfg_read(&mut io, 1, 4) as u64;
        cfg_write(&mut io, 1, 1, 0);
        assert!(seg.bar_routes().is_empty());
        assert_eq!(lock(&dev).moves.last(), Some(&(0, Some(a), None)));
        // Sizing with decode off is not a refusal.
        cfg_write(&mut io, 1, 4, 0xffff_ffff);
        cfg_write(&mut io, 1, 4, a as u32);
        cfg_write(&mut io, 1, 1, u32::from(COMMAND_MEMORY));
        assert_eq!(lock(&dev).moves.last(), Some(&(0, None, Some(a))));
        assert_eq!(seg.stats().bars_refused, 0);
    }

    #[test]
    fn bar_over_ioapic_is_refused() {
        let (seg, dev, mut io) = setup(&[0x1000]);
        let moves = lock(&dev).moves.len();
        cfg_write(&mut io, 1, 4, 0xfec0_0000);
        assert_eq!(
            cfg_read(&mut io, 1, 4),
            0xfec0_0000,
            "register keeps the value"
        );
        assert!(seg.bar_routes().is_empty(), "but it does not decode");
        assert_eq!(seg.stats().bars_refused, 1);
        // The I/O APIC address is not claimed by the window dispatcher.
        assert!(!seg.mmio_write(0xfec0_0000, &[0; 4]));
        assert_eq!(lock(&dev).moves.len(), moves + 1);
        // Rewriting the same bad value is not counted again.
        cfg_write(&mut io, 1, 4, 0xfec0_0000);
        assert_eq!(seg.stats().bars_refused, 1);
    }

    #[test]
    fn bar_over_ram_or_lapic_is_refused() {
        let (seg, _, mut io) = setup(&[0x1000]);
        cfg_write(&mut io, 1, 4, 0x0010_0000);
        cfg_write(&mut io, 1, 4, 0xfee0_0000);
        cfg_write(&mut io, 1, 4, 0xbfff_f800); // low bits dropped: 0xbfff_f000
        assert!(seg.bar_routes().is_empty());
        assert_eq!(seg.stats().bars_refused, 3);
    }

    #[test]
    fn overlapping_bar_is_refused() {
        let seg = PciSegment::new(START, END);
        let a = Arc::new(Mutex::new(TestDev::new(&[0x1000])));
        let b = Arc::new(Mutex::new(TestDev::new(&[0x1000])));
        seg.add_device(a).unwrap();
        seg.add_device(b.clone()).unwrap();
        let mut io = seg.config_io();
        let a_addr = cfg_read(&mut io, 1, 4);
        cfg_write(&mut io, 2, 4, a_addr);
        assert_eq!(seg.bar_routes().len(), 1);
        assert_eq!(seg.stats().bars_refused, 1);
        assert_eq!(lock(&b).moves.last().unwrap().2, None);
        // The first device still owns the range.
        let mut d = [0u8; 1];
        assert!(seg.mmio_read(u64::from(a_addr), &mut d));
    }

    #[test]
    fn access_crossing_bar_end_is_unclaimed() {
        let (seg, _, mut io) = setup(&[0x1000]);
        let a = u64::from(cfg_read(&mut io, 1, 4));
        let mut d = [0u8; 8];
        assert!(!seg.mmio_read(a + 0xffc, &mut d));
        assert_eq!(d, [0xff; 8]);
    }

    #[test]
    fn window_too_small_fails_cleanly() {
        let seg = PciSegment::new(START, START + 0x2000);
        let big = Arc::new(Mutex::new(TestDev::new(&[0x1000, 0x4000])));
        assert!(matches!(
            seg.add_device(big),
            Err(PciError::WindowFull { .. })
        ));
        assert_eq!(seg.devices().len(), 1);
        let small = Arc::new(Mutex::new(TestDev::new(&[0x1000, 0x1000])));
        assert_eq!(seg.add_device(small).unwrap(), 1);
    }

    #[test]
    fn slots_fill_up_and_refuse_slot_zero() {
        let seg = PciSegment::new(START, END);
        for i in 1..32 {
            let d = Arc::new(Mutex::new(TestDev::new(&[])));
            assert_eq!(seg.add_device(d).unwrap(), i);
        }
        let d = Arc::new(Mutex::new(TestDev::new(&[])));
        assert!(matches!(
            seg.add_device(d.clone()),
            Err(PciError::NoFreeSlot)
        ));
        assert!(seg.add_device_at(0, d).is_err());
    }

    #[test]
    fn attach_registers_config_ports_and_window_on_buses() {
        let (seg, _, mut io) = setup(&[0x1000]);
        let bar = u64::from(cfg_read(&mut io, 1, 4));
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        seg.attach(&mut pio, &mut mmio, None).unwrap();
        pio.write(0xcf8, &addr(1, 0));
        let mut d = [0u8; 4];
        assert!(pio.read(0xcfc, &mut d).is_some());
        assert_eq!(u32::from_le_bytes(d), 0x5678_1234);
        let mut b = [0u8; 1];
        assert!(mmio.read(bar + 2, &mut b).is_some());
        assert_eq!(b[0], 0x02);
        assert!(mmio.read(END, &mut b).is_none(), "the I/O APIC stays free");
        assert!(mmio.read(START - 1, &mut b).is_none());
    }

    #[test]
    fn ecam_reaches_the_same_registers_as_config_ports() {
        let (seg, _, mut io) = setup(&[0x1000]);
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        const ECAM: u64 = END + 0x10_0000;
        seg.attach_with_ecam(&mut pio, &mut mmio, None, Some((ECAM, 1 << 20)))
            .unwrap();
        let dev1 = ECAM + (1 << 15);
        let mut d = [0u8; 4];
        mmio.read(dev1, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), cfg_read(&mut io, 1, 0));
        let mut w = [0u8; 2];
        mmio.read(dev1 + 2, &mut w).unwrap();
        assert_eq!(u16::from_le_bytes(w) as u32, cfg_read(&mut io, 1, 0) >> 16);
        // The host bridge at 00:00.0 is always there.
        mmio.read(ECAM, &mut d).unwrap();
        assert_eq!(d, cfg_read(&mut io, 0, 0).to_le_bytes());
        // Extended space: zero for a present function, all-ones otherwise.
        mmio.read(dev1 + 0x100, &mut d).unwrap();
        assert_eq!(d, [0; 4]);
        mmio.read(ECAM + (9 << 15) + 0x100, &mut d).unwrap();
        assert_eq!(d, [0xff; 4]);
        mmio.read(ECAM + (9 << 15), &mut d).unwrap();
        assert_eq!(d, [0xff; 4], "absent device");
        // A misaligned access is ignored and reads all-ones.
        mmio.read(dev1 + 1, &mut w).unwrap();
        assert_eq!(w, [0xff; 2]);
        mmio.write(dev1 + 0x100, &[1, 2, 3, 4]).unwrap();
    }

    #[test]
    fn cf9_reset_requests_vm_reset() {
        let seg = PciSegment::new(START, END);
        let c = Arc::new(VmControl::new());
        let mut io = seg.config_io().with_reset(c.clone());
        io.write(1, &[0x02]);
        assert_eq!(c.reason(), None);
        io.write(1, &[0x06]);
        assert_eq!(c.reason(), Some(ExitReason::Reset));
        let mut b = [0u8];
        io.read(1, &mut b);
        assert_eq!(b[0], 0x06);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A 32-bit CONFIG_ADDRESS write aimed at a real register.
        Address(u8, u8),
        /// Address then a 4-byte data write: a whole config dword.
        Dword(u8, u8, u32),
        IoRead(u64, usize),
        IoWrite(u64, usize, u64),
        MmioRead(u64, usize),
        MmioWrite(u64, usize, u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let size = prop::sample::select(vec![1usize, 2, 4, 8]);
        let value = prop_oneof![
            3 => any::<u64>(),
            2 => Just(u64::MAX),
            2 => (0u64..0x40).prop_map(|p| START + (p << 12)),
            1 => Just(0xfec0_0000),
            1 => Just(0xfee0_0000),
            2 => 0u64..8,
            1 => Just(0x8000),
            // MSI: control enable / MME, data with a usable vector.
            1 => Just(0x0001_0005),
            1 => Just(0x0031_0031),
        ];
        let mmio = START..START + 0x2_0000;
        let dev = prop::sample::select(vec![0u8, 1, 2, 3, 31]);
        let reg = prop_oneof![2 => Just(1u8), 4 => 4u8..7, 3 => 16u8..26, 1 => 0u8..64];
        prop_oneof![
            6 => (dev.clone(), reg, value.clone()).prop_map(|(d, r, v)| Op::Dword(d, r, v as u32)),
            4 => (dev, 0u8..64)
                .prop_map(|(d, r)| Op::Address(d, r)),
            3 => (0u64..8, size.clone()).prop_map(|(o, s)| Op::IoRead(o, s)),
            6 => (0u64..8, size.clone(), value.clone()).prop_map(|(o, s, v)| Op::IoWrite(o, s, v)),
            1 => (mmio.clone(), size.clone()).prop_map(|(a, s)| Op::MmioRead(a, s)),
            1 => (mmio, size, value).prop_map(|(a, s, v)| Op::MmioWrite(a, s, v)),
        ]
    }

    fn walk_caps(seg: &PciSegment, slot: u8) -> Option<Vec<usize>> {
        let mut ptr = (seg.config_read(0, slot, 0, 0x34 / 4) & 0xff) as usize;
        let mut seen = vec![];
        while ptr != 0 {
            if seen.len() > 48 || ptr < 0x40 || !ptr.is_multiple_of(4) {
                return None;
            }
            seen.push(ptr);
            ptr = (seg.config_read(0, slot, 0, ptr / 4) >> 8) as usize & 0xff;
        }
        Some(seen)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Fuzzing harness for configuration mechanism #1, configuration
        /// space (BARs, command, MSI and MSI-X capabilities) and the MMIO
        /// window dispatcher: random port accesses at 0xCF8..0xCFF and MMIO
        /// accesses of sizes 1/2/4/8 (proptest stands in for cargo-fuzz,
        /// which needs nightly). Never panics; identity and the capability
        /// list are immutable; BARs keep their size alignment and type
        /// bits; decoded BARs lie in the window, match the registers and
        /// never overlap.
        #[test]
        fn config_space_random_accesses_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
            use proptest::prelude::*;
            use crate::pci::testutil::FakeKvm;
            use crate::pci::{MsiConfig, MsixConfig};

            let seg = PciSegment::new(START, END);
            let a = Arc::new(Mutex::new(TestDev::new(&[0x1000, 0x4000])));
            let b = Arc::new(Mutex::new(TestDev::new(&[0x2000])));
            let kvm = FakeKvm::new();
            let gsis = FakeKvm::gsis();
            {
                let mut d = lock(&b);
                let msi = MsiConfig::new(2, true, kvm.clone(), kvm.clone(), gsis.clone()).unwrap();
                d.config.add_msi_capability(msi).unwrap();
                let msix = MsixConfig::new(4, kvm.clone(), kvm.clone(), gsis).unwrap();
                d.config.add_msix_capability(msix, 0, 0, 0, 0x1000).unwrap();
            }
            seg.add_device(a.clone()).unwrap();
            seg.add_device(b.clone()).unwrap();
            let caps_b = walk_caps(&seg, 2).unwrap();
            prop_assert_eq!(caps_b.len(), 2);
            let mut io = seg.config_io();
            let mut win = seg.mmio_window();
            for op in ops {
                match op {
                    Op::Address(d, r) => io.write(0, &addr(d, r)),
                    Op::Dword(d, r, v) => {
                        io.write(0, &addr(d, r));
                        io.write(4, &v.to_le_bytes());
                    }
                    Op::IoRead(o, s) => { let mut x = [0u8; 8]; io.read(o, &mut x[..s]); }
                    Op::IoWrite(o, s, v) => io.write(o, &v.to_le_bytes()[..s]),
                    Op::MmioRead(a, s) => { let mut x = [0u8; 8]; win.read(a - START, &mut x[..s]); }
                    Op::MmioWrite(a, s, v) => win.write(a - START, &v.to_le_bytes()[..s]),
                }
                prop_assert_eq!(seg.config_read(0, 0, 0, 0), 0x0d57_8086);
                prop_assert_eq!(seg.config_read(0, 1, 0, 0), 0x5678_1234);
                prop_assert_eq!(seg.config_read(0, 2, 0, 0), 0x5678_1234);
                prop_assert_eq!(seg.config_read(0, 3, 0, 0), u32::MAX);
                prop_assert_eq!(walk_caps(&seg, 2), Some(caps_b.clone()));
                prop_assert_eq!(walk_caps(&seg, 1), Some(vec![]));
                for dev in [&a, &b] {
                    let d = lock(dev);
                    for (i, size, _) in d.config.memory_bars() {
                        let reg = d.config.read_reg(4 + i);
                        prop_assert_eq!(reg & 0xf, 0, "32-bit, not prefetchable");
                        prop_assert_eq!(u64::from(reg) & (size - 1), 0);
                    }
                }
                let routes = seg.bar_routes();
                for (k, r) in routes.iter().enumerate() {
                    prop_assert!(r.addr >= START && r.addr + r.size <= END);
                    let dev = if r.slot == 1 { &a } else { &b };
                    let d = lock(dev);
                    prop_assert!(d.config.memory_enabled());
                    prop_assert_eq!(d.config.bar_address(r.bar as usize), Some(r.addr));
                    if let Some(n) = routes.get(k + 1) {
                        prop_assert!(r.addr + r.size <= n.addr, "overlap");
                    }
                }
            }
        }
    }
}
