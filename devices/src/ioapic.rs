//! Userspace I/O APIC (Intel 82093AA register model, version 0x20 with the
//! ICH-style EOI register) for KVM's split irqchip.
//!
//! Pin `i` owns KVM GSI `i`, routed as an MSI built from redirection table
//! entry (RTE) `i`; [`MsiRouting::signal`] on that GSI is one delivery. The
//! in-kernel LAPIC exits with `KVM_EXIT_IOAPIC_EOI` for vectors whose route
//! is level-triggered; the VMM then calls [`IoApic::end_of_interrupt`].
//!
//! Choices where the datasheet is silent or hardware differs:
//! - Lines are physical: `set_irq(pin, level)` drives the pin, and an
//!   active-low RTE (bit 13) treats `false` as asserted. An undriven line is
//!   low, so an active-low pin nobody drives reads as asserted.
//! - Only fixed and lowest-priority entries are level-triggered in effect:
//!   the datasheet treats NMI, INIT, SMI and ExtINT as edge whatever bit 15
//!   says, so they never set Remote IRR and their routes are edge.
//! - Remote IRR is cleared when an entry stops being level-triggered (its
//!   meaning is undefined for edge; Linux clears it that way on I/O APICs
//!   without an EOI register, and QEMU and crosvm do the same).
//! - Vectors 0-15 (fixed/lowest), delivery modes 3 and 6, and SMI are never
//!   delivered: counted in [`PinStats::invalid`]. ExtINT is delivered as an
//!   MSI, which KVM's LAPIC ignores (a PIC must use its own path).
//! - Delivery status (bit 12) reads 0: `signal` is synchronous. Reserved RTE
//!   bits (17-31, 32-48) read 0; bits 49-55 keep the x2APIC extended
//!   destination ID, sent in MSI address bits 11:5 (Linux's
//!   `virt_ext_dest_id` format). KVM reads only `address >> 32` for bits
//!   above 7 (with `KVM_X2APIC_API_USE_32BIT_IDS`), so a `MsiRouting` that
//!   advertises the extended ID must move them there, as QEMU does.
//! - Edges come only from `set_irq`: reprogramming polarity never creates
//!   one. A level pin that is asserted, unmasked and idle delivers on any
//!   RTE write, line update or EOI. A delivery that failed in `MsiRouting`
//!   is retried only on the pin's next such event.
//! - MMIO: 4-byte accesses at 0x00 (IOREGSEL), 0x10 (IOWIN) and 0x40 (EOI,
//!   write-only, reads 0); an 8-byte access there uses its low dword (the
//!   high dword reads 0). Anything else reads 0 and writes are ignored.
//!   Register indices other than 0, 1, 2, 0x10-0x3f read 0 (as QEMU and
//!   crosvm do; the datasheet leaves them undefined), writes are ignored.
//! - Routes are installed by [`IoApic::install_routes`], not by `new`, and
//!   only rewritten when the MSI message changes. A write to an RTE's high
//!   dword defers the update to the next low-dword write or delivery, since
//!   Linux writes high then low and each update rewrites KVM's whole table.
//! - `MsiRouting` must not call back into the I/O APIC: it is called with
//!   the I/O APIC locked.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::{InterruptError, MsiMessage, MsiRouting};

pub const NUM_PINS: usize = crate::interrupt::IOAPIC_PINS;
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Version register: max redirection entry 23 in bits 23:16, version 0x20.
pub const IOAPIC_VERSION: u32 = ((NUM_PINS as u32 - 1) << 16) | 0x20;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI_REG: u64 = 0x40;

const REG_ID: u8 = 0x00;
const REG_VER: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_RTE_BASE: u8 = 0x10;
const REG_RTE_LAST: u8 = REG_RTE_BASE + 2 * NUM_PINS as u8 - 1;

const RTE_VECTOR: u64 = 0xff;
const RTE_DEST_LOGICAL: u64 = 1 << 11;
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Guest-writable bits: 11:0, 13, 15, 16 and 63:49 (destination + ext dest).
const RTE_WRITABLE: u64 = 0xfffe_0000_0001_afff;

const DM_FIXED: u8 = 0;
const DM_LOWEST: u8 = 1;
const DM_SMI: u8 = 2;

const WARN_ACCESS: u8 = 1 << 0;
const WARN_REGISTER: u8 = 1 << 1;
const WARN_PIN: u8 = 1 << 2;
const WARN_INVALID: u8 = 1 << 3;
const WARN_ROUTE: u8 = 1 << 4;
const WARN_SIGNAL: u8 = 1 << 5;
const WARN_LOST: u8 = 1 << 6;

/// Per-pin counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PinStats {
    /// Transitions of the pin from deasserted to asserted (after polarity).
    pub raised: u64,
    /// `signal()` calls that succeeded.
    pub delivered: u64,
    /// Assertions of an unmasked level pin that found Remote IRR set: merged
    /// into the pending interrupt (redelivered at EOI if still asserted).
    pub coalesced: u64,
    /// Coalesced assertions whose line fell again before the EOI of the
    /// interrupt in service: lost, as on the 82093AA (a level input is
    /// sampled, not latched; at EOI the line is low, so nothing is sent
    /// again). A device that pulses a pin the guest made level-triggered
    /// loses interrupts this way; splitvm counts them and warns once.
    pub lost: u64,
    /// Assertions that arrived while masked: lost for edge pins, delivered
    /// on unmask for level pins whose line is still asserted then.
    pub masked_drops: u64,
    /// EOIs that cleared Remote IRR.
    pub eoi: u64,
    /// Deliveries refused because the RTE is unusable (vector < 16, reserved
    /// delivery mode, SMI).
    pub invalid: u64,
}

/// Errors that belong to no pin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoApicStats {
    /// `set_irq` calls with a pin >= [`NUM_PINS`].
    pub bad_pin: u64,
    /// Accesses through IOWIN to an undefined register index.
    pub bad_register: u64,
    /// MMIO accesses of an unsupported size or offset.
    pub bad_access: u64,
    /// Failed `set_route` calls.
    pub route_errors: u64,
    /// Failed `signal` calls (the interrupt was not delivered).
    pub signal_errors: u64,
}

/// A pin worth naming when a guest seems stuck ([`IoApic::stuck_pins`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StuckPin {
    pub pin: usize,
    /// The RTE as the guest reads it (Remote IRR included).
    pub rte: u64,
    pub vector: u8,
    pub level_triggered: bool,
    pub masked: bool,
    /// The line is asserted (after polarity).
    pub asserted: bool,
    pub remote_irr: bool,
}

impl StuckPin {
    /// Pin `pin` with RTE `rte` as the guest reads it (Remote IRR in bit
    /// 14) and its line `asserted`: Some if the pin is worth naming.
    pub fn of_rte(pin: usize, rte: u64, asserted: bool) -> Option<StuckPin> {
        let masked = rte & RTE_MASKED != 0;
        let remote_irr = rte & RTE_REMOTE_IRR != 0;
        (remote_irr || (masked && asserted)).then(|| StuckPin {
            pin,
            rte,
            vector: (rte & RTE_VECTOR) as u8,
            level_triggered: is_level(rte),
            masked,
            asserted,
            remote_irr,
        })
    }
}

/// The programming of one pin, for an interrupt-source registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRoute {
    pub pin: usize,
    pub vector: u8,
    pub delivery_mode: u8,
    /// APIC ID: bits 7:0 from RTE 63:56, bits 14:8 from RTE 55:49.
    pub destination: u32,
    pub dest_logical: bool,
    /// Level-triggered in effect (fixed or lowest priority with bit 15 set).
    pub level_triggered: bool,
    pub masked: bool,
}

impl PinRoute {
    /// Pin `pin` programmed with RTE `rte` (the guest's view of an 82093AA
    /// redirection entry; also how KVM's in-kernel I/O APIC keeps it).
    pub fn of_rte(pin: usize, rte: u64) -> PinRoute {
        PinRoute {
            pin,
            vector: (rte & RTE_VECTOR) as u8,
            delivery_mode: delivery_mode(rte),
            destination: ((rte >> 56) as u32) | ((((rte >> 49) & 0x7f) as u32) << 8),
            dest_logical: rte & RTE_DEST_LOGICAL != 0,
            level_triggered: is_level(rte),
            masked: rte & RTE_MASKED != 0,
        }
    }
}

fn delivery_mode(rte: u64) -> u8 {
    ((rte >> 8) & 7) as u8
}

/// Level-triggered in effect: NMI, INIT, SMI and ExtINT are always edge.
fn is_level(rte: u64) -> bool {
    rte & RTE_LEVEL != 0 && matches!(delivery_mode(rte), DM_FIXED | DM_LOWEST)
}

/// Why `rte` cannot be delivered, if it cannot.
fn undeliverable(rte: u64) -> Option<&'static str> {
    match delivery_mode(rte) {
        DM_FIXED | DM_LOWEST if rte & RTE_VECTOR < 16 => Some("illegal vector < 16"),
        DM_SMI => Some("SMI delivery is not supported"),
        3 | 6 => Some("reserved delivery mode"),
        _ => None,
    }
}

/// The MSI message an RTE sends (SDM Vol. 3, 11.11). Bit 14 (assert) is
/// always set; KVM only reads the trigger bit.
fn rte_to_msi(rte: u64) -> MsiMessage {
    // Destination: bits 63:56, plus the extended destination ID in 55:49
    // (destination bits 14:8, as Linux writes it for x2APIC IDs > 255).
    let dest = ((rte >> 56) & 0xff) as u32 | (((rte >> 49) & 0x7f) as u32) << 8;
    MsiMessage::compose(
        dest,
        rte & RTE_DEST_LOGICAL != 0,
        delivery_mode(rte),
        (rte & RTE_VECTOR) as u8,
        is_level(rte),
    )
}

/// The userspace I/O APIC. See the module documentation.
pub struct IoApic {
    routing: Arc<dyn MsiRouting>,
    id: u8,
    ioregsel: u8,
    /// Writable RTE bits only; Remote IRR lives in `remote_irr`.
    rte: [u64; NUM_PINS],
    remote_irr: [bool; NUM_PINS],
    /// A level pin asserted again while Remote IRR was set (a coalesced
    /// assertion not yet served by the EOI's redelivery).
    coalesced_pending: [bool; NUM_PINS],
    /// Physical line level as driven by devices.
    line: [bool; NUM_PINS],
    /// Route last installed successfully in KVM, per GSI.
    installed: [Option<MsiMessage>; NUM_PINS],
    /// Pins a device drives through an irqfd on GSI = pin, bypassing
    /// `set_irq`: their route is removed while the pin is masked and
    /// edge-triggered, so KVM drops the edge as the 82093AA would.
    irqfd_driven: [bool; NUM_PINS],
    pin_stats: [PinStats; NUM_PINS],
    stats: IoApicStats,
    warned: crate::sync::WarnOnce,
}

/// The I/O APIC's guest-visible state in a snapshot: ID, IOREGSEL, the
/// writable RTE bits, Remote IRR and the line levels devices drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApicState {
    pub id: u8,
    pub ioregsel: u8,
    pub rte: [u64; NUM_PINS],
    pub remote_irr: [bool; NUM_PINS],
    pub line: [bool; NUM_PINS],
}

impl IoApic {
    /// The state a snapshot keeps (statistics are not state).
    pub fn save(&self) -> IoApicState {
        IoApicState {
            id: self.id,
            ioregsel: self.ioregsel,
            rte: self.rte,
            remote_irr: self.remote_irr,
            line: self.line,
        }
    }

    /// Put back a saved state. `installed` is the pin routes KVM has now
    /// (the restored GSI table): the pins whose route differs from what
    /// their RTE wants are re-pushed in one batch. Nothing is delivered: an
    /// interrupt in service (Remote IRR set) ends with the guest's EOI.
    pub fn restore(
        &mut self,
        s: &IoApicState,
        installed: [Option<MsiMessage>; NUM_PINS],
    ) -> Result<(), InterruptError> {
        self.id = s.id & 0x0f;
        self.ioregsel = s.ioregsel;
        self.rte = s.rte.map(|r| r & RTE_WRITABLE);
        self.remote_irr = s.remote_irr;
        self.coalesced_pending = [false; NUM_PINS];
        self.line = s.line;
        self.installed = installed;
        self.install_routes()
    }

    /// A reset I/O APIC (all entries masked, ID 0). Installs no routes: call
    /// [`IoApic::install_routes`] once KVM's routing table is ready.
    pub fn new(routing: Arc<dyn MsiRouting>) -> IoApic {
        IoApic {
            routing,
            id: 0,
            ioregsel: 0,
            rte: [RTE_MASKED; NUM_PINS],
            remote_irr: [false; NUM_PINS],
            coalesced_pending: [false; NUM_PINS],
            line: [false; NUM_PINS],
            installed: [None; NUM_PINS],
            irqfd_driven: [false; NUM_PINS],
            pin_stats: [PinStats::default(); NUM_PINS],
            stats: IoApicStats::default(),
            warned: crate::sync::WarnOnce::default(),
        }
    }

    /// Declare that a device drives `pin` through an irqfd on GSI `pin`
    /// (virtio-mmio): while the pin is masked and edge-triggered its KVM
    /// route is removed, so the irqfd's edges are dropped like masked edges
    /// on real hardware. Level pins keep their route (KVM needs it to scan
    /// for EOI exits). Out-of-range pins are ignored.
    pub fn set_irqfd_driven(&mut self, pin: usize, driven: bool) {
        if let Some(d) = self.irqfd_driven.get_mut(pin) {
            *d = driven;
            let _ = self.sync_route(pin);
        }
    }

    /// Install the route of every pin whose route is missing or stale.
    /// Tries all pins; returns the first error.
    pub fn install_routes(&mut self) -> Result<(), InterruptError> {
        // One batch: a KVM router pushes its table once for all pins.
        let batch: Vec<(u32, Option<MsiMessage>)> = (0..NUM_PINS)
            .map(|pin| (pin as u32, self.wanted_route(pin)))
            .filter(|(pin, want)| self.installed[*pin as usize] != *want)
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        match self.routing.set_routes(&batch) {
            Ok(()) => {
                for (pin, want) in batch {
                    self.installed[pin as usize] = want;
                }
                Ok(())
            }
            Err(e) => {
                self.stats.route_errors += 1;
                self.warn_once(
                    WARN_ROUTE,
                    format_args!("installing the pin routes failed: {e}"),
                );
                Err(e)
            }
        }
    }

    /// Hardware reset: ID 0, IOREGSEL 0, all entries masked, Remote IRR
    /// clear. Line levels (driven by devices) and counters are kept.
    pub fn reset(&mut self) {
        self.id = 0;
        self.ioregsel = 0;
        self.rte = [RTE_MASKED; NUM_PINS];
        self.remote_irr = [false; NUM_PINS];
        self.coalesced_pending = [false; NUM_PINS];
        for pin in 0..NUM_PINS {
            // Failures are counted; the next delivery retries.
            let _ = self.sync_route(pin);
        }
    }

    /// Drive the physical line of `pin` (before polarity). Out-of-range pins
    /// are ignored and counted in [`IoApicStats::bad_pin`].
    pub fn set_irq(&mut self, pin: usize, level: bool) {
        if pin >= NUM_PINS {
            self.stats.bad_pin += 1;
            self.warn_once(WARN_PIN, format_args!("set_irq on nonexistent pin {pin}"));
            return;
        }
        let was = self.asserted(pin);
        self.line[pin] = level;
        let now = self.asserted(pin);
        let rte = self.rte[pin];
        let masked = rte & RTE_MASKED != 0;
        let rising = now && !was;
        if rising {
            self.pin_stats[pin].raised += 1;
            if masked {
                self.pin_stats[pin].masked_drops += 1;
            } else if is_level(rte) && self.remote_irr[pin] {
                self.pin_stats[pin].coalesced += 1;
                self.coalesced_pending[pin] = true;
            }
        } else if was && !now && self.coalesced_pending[pin] && self.remote_irr[pin] {
            self.coalesced_pending[pin] = false;
            self.pin_stats[pin].lost += 1;
            self.warn_once(
                WARN_LOST,
                format_args!(
                    "pin {pin} (RTE {:#018x}: level-triggered, vector {:#x}) was asserted and released while its previous interrupt was in service (Remote IRR set): lost, as on an 82093AA; counted in the report as `lost`",
                    self.rte(pin),
                    rte & RTE_VECTOR
                ),
            );
        }
        if is_level(rte) {
            self.eval_level(pin);
        } else if rising && !masked {
            self.deliver(pin);
        }
    }

    /// End of interrupt for `vector` (from `KVM_EXIT_IOAPIC_EOI` or the EOI
    /// register): clears Remote IRR of every entry with that vector and
    /// redelivers those whose line is still asserted and unmasked.
    ///
    /// Returns the pins the EOI belongs to, as a bit mask, for attributing
    /// the exit: the pins whose Remote IRR it cleared; if none, the
    /// level-triggered fixed/lowest-priority pins that carry the vector at
    /// all (a late EOI after the guest reprogrammed or EOIed through the
    /// EOI register); 0 if no pin carries it.
    pub fn end_of_interrupt(&mut self, vector: u8) -> u32 {
        let mut ended = 0u32;
        let mut carrying = 0u32;
        for pin in 0..NUM_PINS {
            let rte = self.rte[pin];
            if (rte & RTE_VECTOR) as u8 != vector {
                continue;
            }
            if is_level(rte) {
                carrying |= 1 << pin;
            }
            if self.remote_irr[pin] {
                self.remote_irr[pin] = false;
                self.coalesced_pending[pin] = false;
                self.pin_stats[pin].eoi += 1;
                ended |= 1 << pin;
                self.eval_level(pin);
            }
        }
        if ended != 0 {
            ended
        } else {
            carrying
        }
    }

    /// The full 64-bit RTE of `pin` as the guest reads it (0 if no such pin).
    pub fn rte(&self, pin: usize) -> u64 {
        match (self.rte.get(pin), self.remote_irr.get(pin)) {
            (Some(&rte), Some(&irr)) => rte | if irr { RTE_REMOTE_IRR } else { 0 },
            _ => 0,
        }
    }

    /// The pins a stuck-guest report names: Remote IRR set (a level
    /// interrupt waits for its EOI), or masked with the line asserted (an
    /// interrupt that waits for an unmask).
    pub fn stuck_pins(&self) -> Vec<StuckPin> {
        (0..NUM_PINS)
            .filter_map(|pin| StuckPin::of_rte(pin, self.rte(pin), self.asserted(pin)))
            .collect()
    }

    pub fn remote_irr(&self, pin: usize) -> bool {
        self.remote_irr.get(pin).copied().unwrap_or(false)
    }

    /// The physical level devices drive on `pin` (false for a bad pin).
    pub fn line_level(&self, pin: usize) -> bool {
        self.line.get(pin).copied().unwrap_or(false)
    }

    pub fn pin_stats(&self) -> &[PinStats] {
        &self.pin_stats
    }

    pub fn stats(&self) -> &IoApicStats {
        &self.stats
    }

    /// Current programming of every pin.
    pub fn routes(&self) -> Vec<PinRoute> {
        (0..NUM_PINS)
            .map(|pin| PinRoute::of_rte(pin, self.rte[pin]))
            .collect()
    }

    fn asserted(&self, pin: usize) -> bool {
        self.line[pin] ^ (self.rte[pin] & RTE_ACTIVE_LOW != 0)
    }

    /// Level state machine: deliver while asserted, unmasked, IRR clear.
    fn eval_level(&mut self, pin: usize) {
        let rte = self.rte[pin];
        if is_level(rte) && self.asserted(pin) && rte & RTE_MASKED == 0 && !self.remote_irr[pin] {
            self.deliver(pin);
        }
    }

    fn deliver(&mut self, pin: usize) {
        let rte = self.rte[pin];
        if let Some(why) = undeliverable(rte) {
            self.pin_stats[pin].invalid += 1;
            self.warn_once(
                WARN_INVALID,
                format_args!("pin {pin}: {why} (RTE {rte:#x})"),
            );
            return;
        }
        if self.sync_route(pin).is_err() {
            return;
        }
        match self.routing.signal(pin as u32) {
            Ok(()) => {
                self.pin_stats[pin].delivered += 1;
                if is_level(rte) {
                    self.remote_irr[pin] = true;
                }
            }
            Err(e) => {
                self.stats.signal_errors += 1;
                self.warn_once(WARN_SIGNAL, format_args!("signal on GSI {pin} failed: {e}"));
            }
        }
    }

    /// Make KVM's route for `pin` match its RTE, if it does not already.
    /// The route KVM should have for `pin`: the RTE's message, or none for
    /// a masked edge pin driven by an irqfd (KVM must not deliver it).
    fn wanted_route(&self, pin: usize) -> Option<MsiMessage> {
        let rte = self.rte[pin];
        if self.irqfd_driven[pin] && rte & RTE_MASKED != 0 && !is_level(rte) {
            None
        } else {
            Some(rte_to_msi(rte))
        }
    }

    fn sync_route(&mut self, pin: usize) -> Result<(), InterruptError> {
        let want = self.wanted_route(pin);
        if self.installed[pin] == want {
            return Ok(());
        }
        match self.routing.set_route(pin as u32, want) {
            Ok(()) => {
                self.installed[pin] = want;
                Ok(())
            }
            Err(e) => {
                self.stats.route_errors += 1;
                self.warn_once(WARN_ROUTE, format_args!("set_route GSI {pin} failed: {e}"));
                Err(e)
            }
        }
    }

    fn read_register(&mut self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VER => IOAPIC_VERSION,
            REG_RTE_BASE..=REG_RTE_LAST => {
                let pin = usize::from((index - REG_RTE_BASE) / 2);
                let rte = self.rte(pin);
                (if index & 1 == 0 { rte } else { rte >> 32 }) as u32
            }
            _ => {
                self.bad_register(index);
                0
            }
        }
    }

    fn write_register(&mut self, index: u8, val: u32) {
        match index {
            REG_ID => self.id = ((val >> 24) & 0xf) as u8,
            REG_VER | REG_ARB => {} // read-only
            REG_RTE_BASE..=REG_RTE_LAST => {
                let pin = usize::from((index - REG_RTE_BASE) / 2);
                let high = index & 1 == 1;
                let old = self.rte[pin];
                let new = if high {
                    (old & 0xffff_ffff) | (u64::from(val) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(val)
                } & RTE_WRITABLE;
                self.rte[pin] = new;
                if !is_level(new) {
                    self.remote_irr[pin] = false;
                    self.coalesced_pending[pin] = false;
                }
                if !high {
                    // Failures are counted; the next delivery retries.
                    let _ = self.sync_route(pin);
                }
                self.eval_level(pin);
            }
            _ => self.bad_register(index),
        }
    }

    fn bad_register(&mut self, index: u8) {
        self.stats.bad_register += 1;
        self.warn_once(
            WARN_REGISTER,
            format_args!("access to undefined register {index:#x}"),
        );
    }

    /// The register an MMIO access targets, if it is a supported access.
    fn decode(&mut self, offset: u64, len: usize, write: bool) -> Option<u64> {
        if matches!(offset, IOREGSEL | IOWIN | EOI_REG) && matches!(len, 4 | 8) {
            return Some(offset);
        }
        self.stats.bad_access += 1;
        let dir = if write { "write" } else { "read" };
        self.warn_once(
            WARN_ACCESS,
            format_args!("ignored {len}-byte {dir} at +{offset:#x}"),
        );
        None
    }

    fn warn_once(&self, flag: u8, msg: std::fmt::Arguments) {
        self.warned.warn(flag.into(), format_args!("ioapic: {msg}"));
    }
}

impl BusDevice for IoApic {
    /// The registers belong to the split irqchip's snapshot, not the bus's.
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let val = match self.decode(offset, data.len(), false) {
            Some(IOREGSEL) => u32::from(self.ioregsel),
            Some(IOWIN) => self.read_register(self.ioregsel),
            _ => return, // EOI is write-only
        };
        if let Some(low) = data.get_mut(..4) {
            low.copy_from_slice(&val.to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(reg) = self.decode(offset, data.len(), true) else {
            return;
        };
        let Some(val) = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            return;
        };
        match reg {
            IOREGSEL => self.ioregsel = val as u8,
            IOWIN => self.write_register(self.ioregsel, val),
            _ => {
                self.end_of_interrupt(val as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use proptest::prelude::*;

    /// Records routes and signals; each signal notes the route it used.
    #[derive(Default)]
    struct Recorder {
        routes: [Option<MsiMessage>; NUM_PINS],
        set_routes: Vec<(u32, Option<MsiMessage>)>,
        signals: Vec<(u32, Option<MsiMessage>)>,
        fail_route: bool,
        fail_signal: bool,
    }

    #[derive(Default)]
    struct FakeRouting(Mutex<Recorder>);

    impl MsiRouting for FakeRouting {
        fn set_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
            let mut r = self.0.lock().unwrap();
            if r.fail_route {
                return Err(InterruptError::Routing("test".into()));
            }
            let slot = r
                .routes
                .get_mut(gsi as usize)
                .ok_or(InterruptError::GsiOutOfRange(gsi))?;
            *slot = msg;
            r.set_routes.push((gsi, msg));
            Ok(())
        }
        fn signal(&self, gsi: u32) -> Result<(), InterruptError> {
            let mut r = self.0.lock().unwrap();
            if r.fail_signal {
                return Err(InterruptError::Inject {
                    gsi,
                    msg: "test".into(),
                });
            }
            let route = *r
                .routes
                .get(gsi as usize)
                .ok_or(InterruptError::GsiOutOfRange(gsi))?;
            r.signals.push((gsi, route));
            Ok(())
        }
        fn signal_msi(&self, _msg: MsiMessage) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    impl FakeRouting {
        fn rec(&self) -> std::sync::MutexGuard<'_, Recorder> {
            self.0.lock().unwrap()
        }
        fn signal_count(&self) -> usize {
            self.rec().signals.len()
        }
    }

    fn setup() -> (IoApic, Arc<FakeRouting>) {
        let fake = Arc::new(FakeRouting::default());
        let mut io = IoApic::new(fake.clone());
        io.install_routes().unwrap();
        fake.rec().set_routes.clear();
        (io, fake)
    }

    fn write_reg(io: &mut IoApic, index: u8, val: u32) {
        io.write(IOREGSEL, &u32::from(index).to_le_bytes());
        io.write(IOWIN, &val.to_le_bytes());
    }

    fn read_reg(io: &mut IoApic, index: u8) -> u32 {
        io.write(IOREGSEL, &u32::from(index).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    fn program(io: &mut IoApic, pin: u8, low: u32, high: u32) {
        write_reg(io, 0x11 + 2 * pin, high);
        write_reg(io, 0x10 + 2 * pin, low);
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;

    #[test]
    fn version_register_reports_24_entries() {
        let (mut io, _) = setup();
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020);
        write_reg(&mut io, 1, 0);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020);
    }

    #[test]
    fn id_register_keeps_only_bits_24_to_27() {
        let (mut io, _) = setup();
        write_reg(&mut io, 0, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, 0), 0x0f00_0000);
        assert_eq!(read_reg(&mut io, 2), 0x0f00_0000, "ARB reports the ID");
        write_reg(&mut io, 2, 0);
        assert_eq!(read_reg(&mut io, 2), 0x0f00_0000);
    }

    #[test]
    fn reset_state_is_masked_and_routes_wait_for_install() {
        let fake = Arc::new(FakeRouting::default());
        let mut io = IoApic::new(fake.clone());
        assert!(fake.rec().set_routes.is_empty());
        for pin in 0..NUM_PINS as u8 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), MASK);
            assert_eq!(read_reg(&mut io, 0x11 + 2 * pin), 0);
        }
        io.install_routes().unwrap();
        assert_eq!(fake.rec().set_routes.len(), NUM_PINS);
        io.install_routes().unwrap();
        assert_eq!(fake.rec().set_routes.len(), NUM_PINS, "nothing changed");
    }

    #[test]
    fn rte_write_updates_msi_route_address_and_data() {
        let (mut io, fake) = setup();
        program(&mut io, 5, 0x0130 | LEVEL, 0x0300_0000);
        let want = MsiMessage {
            address: 0xfee0_3000,
            data: 0x0000_4130 | LEVEL,
        };
        assert_eq!(fake.rec().set_routes, vec![(5, Some(want))]);
        // A high-dword write alone defers the update until a delivery.
        write_reg(&mut io, 0x11 + 10, 0x0400_0000);
        assert_eq!(fake.rec().set_routes.len(), 1);
        io.set_irq(5, true);
        let want = MsiMessage {
            address: 0xfee0_4000,
            ..want
        };
        assert_eq!(fake.rec().signals, vec![(5, Some(want))]);
    }

    #[test]
    fn unchanged_message_does_not_rewrite_route() {
        let (mut io, fake) = setup();
        program(&mut io, 3, 0x40, 0);
        program(&mut io, 3, 0x40 | MASK, 0);
        program(&mut io, 3, 0x40, 0);
        assert_eq!(fake.rec().set_routes.len(), 1);
    }

    #[test]
    fn logical_destination_mode_sets_address_bit_2() {
        let (mut io, fake) = setup();
        program(&mut io, 0, 0x40 | 1 << 11, 0x0100_0000);
        let route = fake.rec().routes[0].unwrap();
        assert_eq!(route.address, 0xfee0_1004);
        assert_eq!(io.routes()[0].destination, 1);
        assert!(io.routes()[0].dest_logical);
    }

    #[test]
    fn extended_destination_id_goes_to_address_bits_5_to_11() {
        let (mut io, fake) = setup();
        program(&mut io, 2, 0x40, 0x12fe_0000);
        assert_eq!(fake.rec().routes[2].unwrap().address, 0xfee1_2fe0);
        assert_eq!(io.routes()[2].destination, 0x7f12);
    }

    #[test]
    fn remote_irr_and_delivery_status_are_read_only() {
        let (mut io, fake) = setup();
        program(&mut io, 4, 0x50 | LEVEL | 1 << 14 | 1 << 12, 0);
        assert_eq!(read_reg(&mut io, 0x18), 0x50 | LEVEL);
        io.set_irq(4, true);
        assert!(io.remote_irr(4));
        write_reg(&mut io, 0x18, 0x50 | LEVEL);
        assert_eq!(read_reg(&mut io, 0x18), 0x50 | LEVEL | 1 << 14);
        assert_eq!(fake.signal_count(), 1);
    }

    #[test]
    fn edge_irq_delivers_on_rising_edge_only() {
        let (mut io, fake) = setup();
        program(&mut io, 1, 0x31, 0);
        io.set_irq(1, true);
        io.set_irq(1, true);
        io.set_irq(1, false);
        io.set_irq(1, true);
        assert_eq!(fake.signal_count(), 2);
        assert!(!io.remote_irr(1));
        assert_eq!(io.pin_stats()[1].raised, 2);
        assert_eq!(io.pin_stats()[1].delivered, 2);
    }

    #[test]
    fn masked_edge_is_dropped() {
        let (mut io, fake) = setup();
        program(&mut io, 1, 0x31 | MASK, 0);
        io.set_irq(1, true);
        program(&mut io, 1, 0x31, 0);
        assert_eq!(fake.signal_count(), 0);
        assert_eq!(io.pin_stats()[1].masked_drops, 1);
    }

    #[test]
    fn irqfd_driven_edge_pin_has_no_route_while_masked() {
        let (mut io, fake) = setup();
        io.set_irqfd_driven(5, true);
        program(&mut io, 5, 0x35 | MASK, 0);
        assert_eq!(fake.rec().set_routes.last(), Some(&(5, None)));
        program(&mut io, 5, 0x35, 0);
        let (gsi, msg) = *fake.rec().set_routes.last().unwrap();
        assert_eq!(gsi, 5);
        assert_eq!(msg.map(|m| m.vector()), Some(0x35));
        // A masked level pin keeps its route: KVM must still see its vector.
        program(&mut io, 5, 0x35 | MASK | LEVEL, 0);
        assert!(fake.rec().set_routes.last().unwrap().1.is_some());
    }

    #[test]
    fn level_irq_redelivers_after_eoi_while_line_high() {
        let (mut io, fake) = setup();
        program(&mut io, 9, 0x60 | LEVEL, 0);
        io.set_irq(9, true);
        assert!(io.remote_irr(9));
        io.end_of_interrupt(0x60);
        assert_eq!(fake.signal_count(), 2);
        assert!(io.remote_irr(9));
        assert_eq!(io.pin_stats()[9].eoi, 1);
    }

    #[test]
    fn a_restored_level_pin_in_service_delivers_nothing_until_its_eoi_then_redelivers() {
        let (mut io, _) = setup();
        program(&mut io, 9, 0x60 | LEVEL, 0);
        io.set_irq(9, true);
        let saved = io.save();
        let routes = std::array::from_fn(|p| io.installed[p]);

        let (mut restored, fake) = setup();
        let before = fake.signal_count();
        restored.restore(&saved, routes).unwrap();
        assert_eq!(fake.signal_count(), before, "restoring delivers nothing");
        assert!(restored.remote_irr(9) && restored.line_level(9));
        assert_eq!(
            restored.rte(9) & 0xffff,
            (saved.rte[9] | RTE_REMOTE_IRR) & 0xffff
        );
        assert_eq!(restored.end_of_interrupt(0x60), 1 << 9);
        assert_eq!(
            fake.signal_count(),
            before + 1,
            "line still high: delivered again"
        );
        assert_eq!(restored.save(), io.save(), "same state as the original");
    }

    #[test]
    fn level_irq_not_redelivered_after_eoi_when_line_low() {
        let (mut io, fake) = setup();
        program(&mut io, 9, 0x60 | LEVEL, 0);
        io.set_irq(9, true);
        io.set_irq(9, false);
        io.end_of_interrupt(0x61);
        assert!(io.remote_irr(9), "other vector");
        io.end_of_interrupt(0x60);
        assert_eq!(fake.signal_count(), 1);
        assert!(!io.remote_irr(9));
    }

    #[test]
    fn level_assertion_while_remote_irr_set_is_coalesced() {
        let (mut io, fake) = setup();
        program(&mut io, 9, 0x60 | LEVEL, 0);
        io.set_irq(9, true);
        io.set_irq(9, false);
        io.set_irq(9, true);
        assert_eq!(fake.signal_count(), 1);
        assert_eq!(io.pin_stats()[9].coalesced, 1);
        io.end_of_interrupt(0x60);
        assert_eq!(fake.signal_count(), 2);
    }

    #[test]
    fn a_pulse_on_a_level_pin_in_service_is_lost_as_on_the_82093aa_and_counted() {
        let (mut io, fake) = setup();
        program(&mut io, 9, 0x60 | LEVEL, 0);
        io.set_irq(9, true);
        assert_eq!(fake.signal_count(), 1);
        // The guest's handler serviced the device: the line falls before
        // the EOI. That is the normal level handshake, nothing lost.
        io.set_irq(9, false);
        assert_eq!(io.pin_stats()[9].lost, 0);
        // A pulse (assert, release) while Remote IRR is still set: the
        // datasheet samples a level input at EOI, when it is low again.
        io.set_irq(9, true);
        io.set_irq(9, false);
        assert_eq!(io.pin_stats()[9].coalesced, 1);
        assert_eq!(io.pin_stats()[9].lost, 1);
        io.end_of_interrupt(0x60);
        assert_eq!(fake.signal_count(), 1, "nothing to send again");
        assert!(!io.remote_irr(9));
        // A coalesced assertion still high at EOI is sent again, not lost.
        io.set_irq(9, true);
        io.set_irq(9, false);
        io.set_irq(9, true);
        io.end_of_interrupt(0x60);
        assert_eq!(fake.signal_count(), 3);
        assert_eq!(io.pin_stats()[9].lost, 1);
    }

    #[test]
    fn unmasking_asserted_level_pin_delivers() {
        let (mut io, fake) = setup();
        program(&mut io, 10, 0x70 | LEVEL | MASK, 0);
        io.set_irq(10, true);
        assert_eq!(fake.signal_count(), 0);
        write_reg(&mut io, 0x10 + 20, 0x70 | LEVEL);
        assert_eq!(fake.signal_count(), 1);
        assert!(io.remote_irr(10));
    }

    #[test]
    fn eoi_names_the_pins_whose_remote_irr_it_cleared() {
        let (mut io, _fake) = setup();
        program(&mut io, 3, 0x60 | LEVEL, 0);
        program(&mut io, 4, 0x60 | LEVEL, 0);
        program(&mut io, 5, 0x61 | LEVEL, 0);
        io.set_irq(4, true);
        assert!(io.remote_irr(4));
        io.set_irq(4, false);
        assert_eq!(
            io.end_of_interrupt(0x60),
            1 << 4,
            "only pin 4 was in service"
        );
        // A late EOI: nothing in service, the level pins carrying the vector.
        assert_eq!(io.end_of_interrupt(0x60), (1 << 3) | (1 << 4));
        assert_eq!(io.end_of_interrupt(0x70), 0, "no pin carries 0x70");
    }

    #[test]
    fn masking_preserves_remote_irr() {
        let (mut io, fake) = setup();
        program(&mut io, 10, 0x70 | LEVEL, 0);
        io.set_irq(10, true);
        write_reg(&mut io, 0x10 + 20, 0x70 | LEVEL | MASK);
        assert!(io.remote_irr(10));
        assert!(
            fake.rec().routes[10].unwrap().level_triggered(),
            "route kept for EOI exits"
        );
        io.end_of_interrupt(0x70);
        assert!(!io.remote_irr(10));
        assert_eq!(fake.signal_count(), 1, "masked: no redelivery");
    }

    #[test]
    fn switching_level_to_edge_clears_remote_irr() {
        let (mut io, _) = setup();
        program(&mut io, 11, 0x70 | LEVEL, 0);
        io.set_irq(11, true);
        write_reg(&mut io, 0x10 + 22, 0x70 | MASK);
        assert!(!io.remote_irr(11));
    }

    #[test]
    fn active_low_polarity_inverts_line() {
        let (mut io, fake) = setup();
        program(&mut io, 12, 0x80 | LEVEL | 1 << 13 | MASK, 0);
        io.set_irq(12, true);
        write_reg(&mut io, 0x10 + 24, 0x80 | LEVEL | 1 << 13);
        assert_eq!(fake.signal_count(), 0, "high is deasserted");
        io.set_irq(12, false);
        assert_eq!(fake.signal_count(), 1);
        io.set_irq(12, true);
        io.end_of_interrupt(0x80);
        assert_eq!(fake.signal_count(), 1);
    }

    #[test]
    fn vector_below_16_is_never_delivered() {
        let (mut io, fake) = setup();
        program(&mut io, 6, 0x0f | LEVEL, 0);
        io.set_irq(6, true);
        program(&mut io, 7, 0x01 | 1 << 8, 0);
        io.set_irq(7, true);
        assert_eq!(fake.signal_count(), 0);
        assert!(!io.remote_irr(6));
        assert_eq!(io.pin_stats()[6].invalid, 1);
        assert_eq!(io.pin_stats()[7].invalid, 1);
    }

    #[test]
    fn reserved_delivery_mode_is_not_delivered() {
        let (mut io, fake) = setup();
        for (pin, dm) in [(0u8, 3u32), (1, 6), (2, 2)] {
            program(&mut io, pin, 0x40 | dm << 8, 0);
            io.set_irq(pin.into(), true);
            assert_eq!(io.pin_stats()[usize::from(pin)].invalid, 1);
        }
        assert_eq!(fake.signal_count(), 0);
    }

    #[test]
    fn level_nmi_behaves_as_edge() {
        let (mut io, fake) = setup();
        program(&mut io, 8, 4 << 8 | LEVEL, 0);
        assert!(!fake.rec().routes[8].unwrap().level_triggered());
        io.set_irq(8, true);
        io.set_irq(8, false);
        io.set_irq(8, true);
        assert_eq!(fake.signal_count(), 2);
        assert!(!io.remote_irr(8));
        assert_eq!(fake.rec().signals[0].1.unwrap().delivery_mode(), 4);
    }

    #[test]
    fn eoi_register_at_0x40_clears_remote_irr() {
        let (mut io, fake) = setup();
        program(&mut io, 3, 0x90 | LEVEL, 0);
        program(&mut io, 4, 0x90 | LEVEL, 0);
        io.set_irq(3, true);
        io.set_irq(4, true);
        io.set_irq(4, false);
        io.write(EOI_REG, &0x90u32.to_le_bytes());
        assert!(io.remote_irr(3), "line 3 still high: redelivered");
        assert!(!io.remote_irr(4));
        assert_eq!(fake.signal_count(), 3);
        let mut d = [0xffu8; 4];
        io.read(EOI_REG, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn bad_register_index_reads_zero_and_ignores_writes() {
        let (mut io, fake) = setup();
        for index in [0x03u8, 0x0f, 0x40, 0xff] {
            write_reg(&mut io, index, 0xffff_ffff);
            assert_eq!(read_reg(&mut io, index), 0);
        }
        assert_eq!(io.stats().bad_register, 8);
        assert!(fake.rec().set_routes.is_empty());
        // IOREGSEL keeps its low 8 bits only.
        io.write(IOREGSEL, &0x1234_5610u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(IOREGSEL, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x10);
    }

    #[test]
    fn odd_sized_access_is_ignored() {
        let (mut io, fake) = setup();
        io.write(IOREGSEL, &[0x10]);
        io.write(IOREGSEL + 4, &[0x10, 0, 0, 0]);
        io.write(0x20, &[0x10, 0, 0, 0]);
        io.write(IOWIN, &[]);
        let mut d = [0xffu8; 2];
        io.read(IOWIN, &mut d);
        assert_eq!(d, [0; 2]);
        assert_eq!(io.stats().bad_access, 5);
        assert_eq!(read_reg(&mut io, 0x10), MASK, "IOREGSEL was 0");
        // 8-byte accesses use the low dword.
        io.write(IOREGSEL, &0x10u64.to_le_bytes());
        io.write(IOWIN, &(0xdead_beef_0000_0041u64).to_le_bytes());
        let mut q = [0xffu8; 8];
        io.read(IOWIN, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x41);
        assert_eq!(fake.rec().set_routes.len(), 1);
    }

    #[test]
    fn bad_pin_is_ignored_and_counted() {
        let (mut io, fake) = setup();
        io.set_irq(NUM_PINS, true);
        io.set_irq(usize::MAX, true);
        assert_eq!(io.stats().bad_pin, 2);
        assert_eq!(io.rte(NUM_PINS), 0);
        assert!(!io.remote_irr(usize::MAX));
        assert_eq!(fake.signal_count(), 0);
    }

    #[test]
    fn routing_errors_are_counted_and_not_fatal() {
        let (mut io, fake) = setup();
        fake.rec().fail_route = true;
        program(&mut io, 0, 0x40 | LEVEL, 0);
        io.set_irq(0, true);
        assert_eq!(fake.signal_count(), 0, "never signal through a stale route");
        assert_eq!(io.stats().route_errors, 2);
        fake.rec().fail_route = false;
        fake.rec().fail_signal = true;
        io.set_irq(0, false);
        io.set_irq(0, true);
        assert_eq!(io.stats().signal_errors, 1);
        assert!(!io.remote_irr(0), "failed delivery leaves IRR clear");
        fake.rec().fail_signal = false;
        io.set_irq(0, true);
        assert!(io.remote_irr(0));
        assert_eq!(io.pin_stats()[0].delivered, 1);
    }

    #[test]
    fn routes_lists_programmed_pins() {
        let (mut io, _) = setup();
        program(&mut io, 14, 0x2_0000 | 0x1a5 | LEVEL, 0x0200_0000);
        let r = io.routes()[14];
        let want = PinRoute {
            pin: 14,
            vector: 0xa5,
            delivery_mode: 1,
            destination: 2,
            dest_logical: false,
            level_triggered: true,
            masked: false,
        };
        assert_eq!(r, want);
        assert_eq!(io.routes().len(), NUM_PINS);
        assert!(io.routes()[0].masked);
    }

    #[test]
    fn reset_masks_everything_and_clears_remote_irr() {
        let (mut io, _) = setup();
        write_reg(&mut io, 0, 0x0300_0000);
        program(&mut io, 3, 0x90 | LEVEL, 0);
        io.set_irq(3, true);
        io.reset();
        assert_eq!(io.rte(3), u64::from(MASK));
        assert_eq!(read_reg(&mut io, 0), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Program {
            pin: u8,
            low: u32,
            high: u32,
        },
        /// A register write through IOREGSEL/IOWIN (what `Program` becomes).
        Reg {
            index: u8,
            val: u32,
        },
        Write {
            offset: u64,
            len: usize,
            val: u64,
        },
        Read {
            offset: u64,
            len: usize,
        },
        Line {
            pin: usize,
            level: bool,
        },
        Eoi(u8),
        Fail {
            route: bool,
            signal: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        // Mostly a few pins, valid vectors and fixed/lowest delivery, so that
        // deliveries and EOIs happen; garbage the rest of the time.
        let pin = prop_oneof![8 => 0u8..4, 1 => 0u8..26];
        let vector = prop_oneof![Just(0x40u32), Just(0x41), Just(0x05), (0u32..256)];
        let dm = prop_oneof![6 => 0u32..2, 1 => 0u32..8];
        let low = (vector, dm, any::<u32>(), prop::bool::weighted(0.3))
            .prop_map(|(v, dm, r, m)| (r & 0xf800) | u32::from(m) << 16 | dm << 8 | v);
        let offset = prop_oneof![Just(IOREGSEL), Just(IOWIN), Just(EOI_REG), 0u64..0x1000];
        let len = prop::sample::select(vec![0usize, 1, 2, 4, 8]);
        prop_oneof![
            4 => (pin.clone(), low, any::<u32>()).prop_map(|(pin, low, high)| Op::Program { pin, low, high }),
            2 => (offset.clone(), len.clone(), any::<u64>())
                .prop_map(|(offset, len, val)| Op::Write { offset, len, val }),
            1 => (offset, len).prop_map(|(offset, len)| Op::Read { offset, len }),
            8 => (pin.prop_map(usize::from), any::<bool>()).prop_map(|(pin, level)| Op::Line { pin, level }),
            3 => prop_oneof![Just(0x40u8), Just(0x41), any::<u8>()].prop_map(Op::Eoi),
            1 => (prop::bool::weighted(0.1), prop::bool::weighted(0.1))
                .prop_map(|(route, signal)| Op::Fail { route, signal }),
        ]
    }

    /// Independent model of the MSI message an RTE must be routed as.
    fn expected_msi(rte: u64) -> (u8, u32, bool, bool) {
        let dm = (rte >> 8) & 7;
        let level = rte & (1 << 15) != 0 && dm <= 1;
        let dest = (rte >> 56) as u32 | (((rte >> 49) & 0x7f) as u32) << 8;
        ((rte & 0xff) as u8, dest, rte & (1 << 11) != 0, level)
    }

    proptest! {
        #[test]
        fn random_guest_and_device_activity_keeps_invariants(ops in prop::collection::vec(op(), 1..200)) {
            let fake = Arc::new(FakeRouting::default());
            let mut io = IoApic::new(fake.clone());
            io.install_routes().unwrap();
            let mut lines = [false; NUM_PINS];
            // Check the invariants after each register write of `Program`.
            let steps = ops.into_iter().flat_map(|op| match op {
                Op::Program { pin, low, high } => {
                    let index = 0x10u8.wrapping_add(pin.wrapping_mul(2));
                    vec![
                        Op::Reg { index: index.wrapping_add(1), val: high },
                        Op::Reg { index, val: low },
                    ]
                }
                op => vec![op],
            });
            for op in steps {
                let irr_before: Vec<bool> = (0..NUM_PINS).map(|p| io.remote_irr(p)).collect();
                let signals_before = fake.signal_count();
                match op {
                    Op::Program { .. } => unreachable!(),
                    Op::Reg { index, val } => write_reg(&mut io, index, val),
                    Op::Write { offset, len, val } => io.write(offset, &val.to_le_bytes()[..len]),
                    Op::Read { offset, len } => io.read(offset, &mut [0u8; 8][..len]),
                    Op::Line { pin, level } => {
                        io.set_irq(pin, level);
                        if let Some(l) = lines.get_mut(pin) {
                            *l = level;
                        }
                    }
                    Op::Eoi(v) => {
                        io.end_of_interrupt(v);
                    }
                    Op::Fail { route, signal } => {
                        let mut r = fake.rec();
                        r.fail_route = route;
                        r.fail_signal = signal;
                    }
                }
                let rec = fake.rec();
                let new_signals = &rec.signals[signals_before..];
                for &(gsi, route) in new_signals {
                    prop_assert!((gsi as usize) < NUM_PINS);
                    let rte = io.rte(gsi as usize);
                    prop_assert_eq!(rte & (1 << 16), 0, "signal from masked pin {}", gsi);
                    let route = route.expect("signal without a route");
                    let (vector, dest, logical, level) = expected_msi(rte);
                    prop_assert_eq!(route.vector(), vector);
                    prop_assert_eq!(route.destination(), dest);
                    prop_assert_eq!(route.logical(), logical);
                    prop_assert_eq!(route.level_triggered(), level);
                    prop_assert!(undeliverable(rte).is_none());
                }
                for pin in 0..NUM_PINS {
                    let rte = io.rte(pin);
                    let irr = io.remote_irr(pin);
                    prop_assert_eq!(irr, rte & (1 << 14) != 0);
                    prop_assert_eq!(rte & (1 << 12), 0);
                    if irr {
                        prop_assert!(expected_msi(rte).3, "IRR on edge pin {}", pin);
                        if !irr_before[pin] {
                            prop_assert!(new_signals.iter().any(|s| s.0 as usize == pin));
                        }
                    }
                    // Level state machine: an asserted, unmasked, deliverable
                    // level pin always has an interrupt in service.
                    let asserted = lines[pin] ^ (rte & (1 << 13) != 0);
                    // A failed delivery is only retried on the pin's next event.
                    let failed = io.stats().route_errors + io.stats().signal_errors > 0;
                    if !failed && expected_msi(rte).3
                        && asserted && rte & (1 << 16) == 0 && undeliverable(rte).is_none() {
                        prop_assert!(irr, "pin {} asserted but idle", pin);
                    }
                }
                for (pin, stats) in io.pin_stats().iter().enumerate() {
                    let signals = rec.signals.iter().filter(|s| s.0 as usize == pin).count();
                    prop_assert_eq!(stats.delivered, signals as u64);
                }
            }
        }
    }
}
