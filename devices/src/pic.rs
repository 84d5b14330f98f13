//! The PC's pair of 8259A programmable interrupt controllers, in userspace
//! (split irqchip: KVM has no PIC), after the Intel 8259A datasheet.
//!
//! - Master at ports 0x20/0x21, slave at 0xA0/0xA1, cascaded on master
//!   input 2; ELCR (edge/level control, as PIIX) at 0x4D0/0x4D1.
//! - ICW1-ICW4 (single/cascade, ICW4 needed, vector base, AEOI, special
//!   fully nested mode), OCW1 (IMR), OCW2 (non-specific/specific EOI,
//!   rotation on EOI and in AEOI mode, set priority), OCW3 (read IRR/ISR,
//!   poll mode, special mask mode).
//! - Edge inputs latch a rising edge into IRR; level inputs (ELCR bit set)
//!   follow the line, so a level request still high after its EOI is
//!   requested again.
//! - An acknowledge with no request left (the line fell between INTR and
//!   INTA) returns the spurious vector of IRQ 7 (master) or IRQ 15 (slave)
//!   without setting ISR, as the datasheet describes.
//!
//! Delivery: the master's INT output goes to LINT0 of vCPU 0 (ExtINT,
//! virtual wire). The vCPU loop polls [`Pic::output`], asks KVM for an
//! interrupt window, and injects the vector of [`Pic::acknowledge`]
//! (the INTA cycle) with KVM_INTERRUPT. When the output rises, the PIC
//! calls its kick hook so a halted vCPU 0 leaves KVM_RUN.
//!
//! Start-up state: as firmware (SeaBIOS) leaves it, so a guest that never
//! touches the PIC gets no interrupts from it: both chips initialised,
//! master vectors 0x08-0x0F, slave 0x70-0x77, every input masked except the
//! cascade, all edge-triggered. Linux and other OSes reprogram it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::BusDevice;

/// Ports (register with [`PicPorts`] at these bases and offsets).
pub const MASTER_BASE: u64 = 0x20;
pub const SLAVE_BASE: u64 = 0xA0;
pub const ELCR_BASE: u64 = 0x4D0;
/// Offsets [`PicPorts`] expects: master 0-1, slave 2-3, ELCR 4-5.
pub const MASTER_OFFSET: u64 = 0;
pub const SLAVE_OFFSET: u64 = 2;
pub const ELCR_OFFSET: u64 = 4;
/// Master input the slave's INT is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// ISA IRQs.
pub const NUM_IRQS: usize = 16;

/// ELCR bits that may be set: not IRQ 0, 1, 2 (master), 8, 13 (slave).
const ELCR_MASK: [u8; 2] = [0xF8, 0xDE];
/// Firmware's vector bases (SeaBIOS: 0x08 and 0x70).
const FIRMWARE_BASE: [u8; 2] = [0x08, 0x70];

/// One 8259A (its registers are the pair's snapshot state as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chip {
    /// Line levels as last driven (edge detection).
    last_irr: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// Lowest-priority rotation: IRQ `priority_add` has the highest priority.
    priority_add: u8,
    irq_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// 0: ready (OCW1 at the odd port); 1-3: expecting ICW2-ICW4.
    init_state: u8,
    init4: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    elcr: u8,
}

impl Chip {
    fn set_irq(&mut self, irq: u8, level: bool) {
        let m = 1u8 << irq;
        if self.elcr & m != 0 {
            if level {
                self.irr |= m;
                self.last_irr |= m;
            } else {
                self.irr &= !m;
                self.last_irr &= !m;
            }
        } else if level {
            if self.last_irr & m == 0 {
                self.irr |= m;
            }
            self.last_irr |= m;
        } else {
            self.last_irr &= !m;
        }
    }

    /// Priority (0 = highest) of the highest-priority bit of `mask`, or 8.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while mask & (1 << ((p + self.priority_add) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The IRQ this chip asks the CPU (or the master) for, if any.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr);
        if p == 8 {
            return None;
        }
        // In service requests block equal and lower priorities, except in
        // special mask mode (masked in-service levels do not block) and,
        // for the cascade input in special fully nested mode, the slave may
        // interrupt its own in-service level.
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (p < self.priority(in_service)).then_some((p + self.priority_add) & 7)
    }

    /// INTA for `irq` on this chip.
    fn intack(&mut self, irq: u8) {
        let m = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= m;
        }
        // An edge request is consumed; a level request stays while the line
        // is high.
        if self.elcr & m == 0 {
            self.irr &= !m;
        }
    }

    fn reset_for_icw1(&mut self) {
        let elcr = self.elcr;
        *self = Chip {
            // Level-triggered requests whose line is still high survive.
            irr: self.irr & elcr,
            last_irr: self.last_irr & elcr,
            elcr,
            ..Chip::default()
        };
    }

    /// Firmware's state: initialised with `base`, cascade mode, ICW4 8086.
    fn firmware(base: u8, imr: u8) -> Chip {
        Chip {
            irq_base: base,
            imr,
            init4: true,
            ..Chip::default()
        }
    }
}

/// Counters of the PIC for the exit report.
#[derive(Debug, Default)]
pub struct PicCounters {
    /// Requests latched per ISA IRQ (rising edges, or level assertions).
    pub raised: [AtomicU64; NUM_IRQS],
    /// Interrupts acknowledged (vector handed to the CPU) per ISA IRQ.
    pub delivered: [AtomicU64; NUM_IRQS],
    /// Spurious acknowledges (IRQ 7 / IRQ 15 without a request).
    pub spurious: AtomicU64,
    /// Guest port writes by kind: EOI commands (OCW2), IMR writes (OCW1),
    /// other (ICWs, OCW3, ELCR); and port reads (IRR/ISR/IMR/poll/ELCR).
    pub eoi_writes: AtomicU64,
    pub imr_writes: AtomicU64,
    pub other_writes: AtomicU64,
    pub reads: AtomicU64,
}

/// A snapshot of [`PicCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PicStats {
    pub raised: [u64; NUM_IRQS],
    pub delivered: [u64; NUM_IRQS],
    pub spurious: u64,
    pub eoi_writes: u64,
    pub imr_writes: u64,
    pub other_writes: u64,
    pub reads: u64,
}

/// One chip's request, in-service and mask registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PicRegisters {
    pub irr: u8,
    pub isr: u8,
    pub imr: u8,
}

type Kick = Box<dyn Fn() + Send + Sync>;

/// The master/slave pair, shared by the ISA interrupt lines, the port
/// handler and vCPU 0.
pub struct Pic {
    chips: Mutex<[Chip; 2]>,
    /// The master's INT output (kept current under the lock).
    output: AtomicBool,
    kick: Mutex<Option<Kick>>,
    counters: PicCounters,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

/// The 8259 pair's state in a snapshot: master, slave.
pub type PicState = [Chip; 2];

impl Pic {
    /// The registers of both chips (counters are not state).
    pub fn save(&self) -> PicState {
        lock(&self.chips).clone()
    }

    /// Put back saved registers; the INT output follows from them (a
    /// request pending at the snapshot kicks vCPU 0 again once it runs).
    /// Fields wider than the registers they model (a snapshot edited by
    /// hand) are cut to the register's width, as the chip would hold them.
    pub fn restore(&self, s: &PicState) {
        let mut c = lock(&self.chips);
        *c = s.clone();
        for (chip, mask) in c.iter_mut().zip(ELCR_MASK) {
            chip.elcr &= mask;
            chip.priority_add &= 7;
            if chip.init_state > 3 {
                chip.init_state = 0;
            }
        }
        self.update(&mut c);
    }

    /// A pair in firmware's start-up state (see the module docs).
    pub fn new() -> Pic {
        Pic {
            chips: Mutex::new([
                Chip::firmware(FIRMWARE_BASE[0], !(1 << CASCADE_IRQ)),
                Chip::firmware(FIRMWARE_BASE[1], 0xFF),
            ]),
            output: AtomicBool::new(false),
            kick: Mutex::new(None),
            counters: PicCounters::default(),
        }
    }

    /// Called (from any thread) when the output rises: makes vCPU 0 leave
    /// KVM_RUN to take the interrupt.
    pub fn set_kick(&self, kick: impl Fn() + Send + Sync + 'static) {
        *lock(&self.kick) = Some(Box::new(kick));
    }

    /// Remove the kick hook (vCPU 0's thread is ending).
    pub fn clear_kick(&self) {
        *lock(&self.kick) = None;
    }

    /// The master's INT line: an unmasked request outranks what is in
    /// service. Cheap (one atomic load); the vCPU loop polls it.
    pub fn output(&self) -> bool {
        self.output.load(Ordering::Acquire)
    }

    /// Drive ISA IRQ `irq` (0..16) to `level`. IRQ 2 is the cascade and
    /// has no device of its own (ignored).
    pub fn set_irq(&self, irq: u8, level: bool) {
        if irq as usize >= NUM_IRQS || irq == CASCADE_IRQ {
            return;
        }
        let mut c = lock(&self.chips);
        let (chip, bit) = ((irq >> 3) as usize, irq & 7);
        let before = c[chip].irr;
        c[chip].set_irq(bit, level);
        if c[chip].irr & !before & (1 << bit) != 0 {
            self.counters.raised[irq as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.update(&mut c);
    }

    /// Recompute the cascade and the output; kick vCPU 0 on a rising output.
    fn update(&self, c: &mut [Chip; 2]) {
        let slave_int = c[1].pending(false).is_some();
        c[0].set_irq(CASCADE_IRQ, slave_int);
        let out = c[0].pending(true).is_some();
        let was = self.output.swap(out, Ordering::AcqRel);
        if out && !was {
            if let Some(k) = lock(&self.kick).as_ref() {
                k();
            }
        }
    }

    /// The INTA cycle: the vector to inject, with ISR/IRR updated. A
    /// request that went away gives the spurious vector (IRQ 7 or 15).
    pub fn acknowledge(&self) -> u8 {
        let mut c = lock(&self.chips);
        let vector = match c[0].pending(true) {
            Some(CASCADE_IRQ) => {
                c[0].intack(CASCADE_IRQ);
                match c[1].pending(false) {
                    Some(irq) => {
                        c[1].intack(irq);
                        self.counters.delivered[8 + irq as usize].fetch_add(1, Ordering::Relaxed);
                        c[1].irq_base.wrapping_add(irq)
                    }
                    None => {
                        self.counters.spurious.fetch_add(1, Ordering::Relaxed);
                        c[1].irq_base.wrapping_add(7)
                    }
                }
            }
            Some(irq) => {
                c[0].intack(irq);
                self.counters.delivered[irq as usize].fetch_add(1, Ordering::Relaxed);
                c[0].irq_base.wrapping_add(irq)
            }
            None => {
                self.counters.spurious.fetch_add(1, Ordering::Relaxed);
                c[0].irq_base.wrapping_add(7)
            }
        };
        self.update(&mut c);
        vector
    }

    /// IRR, ISR and IMR of the master and the slave, for a stuck-guest
    /// report.
    pub fn registers(&self) -> [PicRegisters; 2] {
        let c = lock(&self.chips);
        std::array::from_fn(|i| PicRegisters {
            irr: c[i].irr,
            isr: c[i].isr,
            imr: c[i].imr,
        })
    }

    pub fn stats(&self) -> PicStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let k = &self.counters;
        PicStats {
            raised: std::array::from_fn(|i| n(&k.raised[i])),
            delivered: std::array::from_fn(|i| n(&k.delivered[i])),
            spurious: n(&k.spurious),
            eoi_writes: n(&k.eoi_writes),
            imr_writes: n(&k.imr_writes),
            other_writes: n(&k.other_writes),
            reads: n(&k.reads),
        }
    }

    fn count(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn write_port(&self, chip: usize, odd: bool, v: u8) {
        let mut c = lock(&self.chips);
        let s = &mut c[chip];
        if !odd {
            if v & 0x10 != 0 {
                // ICW1.
                self.count(&self.counters.other_writes);
                s.reset_for_icw1();
                s.init_state = 1;
                s.init4 = v & 0x01 != 0;
                s.single = v & 0x02 != 0;
                if v & 0x08 != 0 {
                    log::debug!("8259: ICW1 level-triggered mode (LTIM) ignored; the ELCR selects edge/level on a PC");
                }
            } else if v & 0x08 != 0 {
                // OCW3.
                self.count(&self.counters.other_writes);
                if v & 0x04 != 0 {
                    s.poll = true;
                }
                if v & 0x02 != 0 {
                    s.read_isr = v & 0x01 != 0;
                }
                if v & 0x40 != 0 {
                    s.special_mask = v & 0x20 != 0;
                }
            } else {
                // OCW2.
                self.count(&self.counters.eoi_writes);
                let cmd = v >> 5;
                match cmd {
                    0 | 4 => s.rotate_on_auto_eoi = cmd == 4,
                    1 | 5 => {
                        let p = s.priority(s.isr);
                        if p != 8 {
                            let irq = (p + s.priority_add) & 7;
                            s.isr &= !(1 << irq);
                            if cmd == 5 {
                                s.priority_add = (irq + 1) & 7;
                            }
                        }
                    }
                    3 => s.isr &= !(1 << (v & 7)),
                    6 => s.priority_add = ((v & 7) + 1) & 7,
                    7 => {
                        let irq = v & 7;
                        s.isr &= !(1 << irq);
                        s.priority_add = (irq + 1) & 7;
                    }
                    _ => {} // 2: no operation
                }
            }
        } else {
            match s.init_state {
                0 => {
                    self.count(&self.counters.imr_writes);
                    s.imr = v;
                }
                1 => {
                    self.count(&self.counters.other_writes);
                    s.irq_base = v & 0xF8;
                    s.init_state = match (s.single, s.init4) {
                        (false, _) => 2,
                        (true, true) => 3,
                        (true, false) => 0,
                    };
                }
                2 => {
                    // ICW3: the cascade wiring is fixed (slave on IRQ 2).
                    self.count(&self.counters.other_writes);
                    s.init_state = if s.init4 { 3 } else { 0 };
                }
                _ => {
                    self.count(&self.counters.other_writes);
                    s.special_fully_nested = v & 0x10 != 0;
                    s.auto_eoi = v & 0x02 != 0;
                    s.init_state = 0;
                }
            }
        }
        self.update(&mut c);
    }

    fn read_port(&self, chip: usize, odd: bool) -> u8 {
        self.count(&self.counters.reads);
        let mut c = lock(&self.chips);
        if c[chip].poll {
            // Poll: the read is the acknowledge (bit 7 = request present).
            c[chip].poll = false;
            let v = match c[chip].pending(chip == 0) {
                Some(irq) => {
                    c[chip].intack(irq);
                    if chip == 0 && irq == CASCADE_IRQ {
                        // The master's poll names the cascade; the slave is
                        // polled separately.
                    } else {
                        self.counters.delivered[chip * 8 + irq as usize]
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    0x80 | irq
                }
                None => 0,
            };
            self.update(&mut c);
            return v;
        }
        let s = &c[chip];
        if odd {
            s.imr
        } else if s.read_isr {
            s.isr
        } else {
            s.irr
        }
    }
}

/// The PIC's I/O ports on the port bus (offsets: master 0-1, slave 2-3,
/// ELCR 4-5). Only byte accesses do anything; wider ones are split.
pub struct PicPorts(pub Arc<Pic>);

impl BusDevice for PicPorts {
    /// The registers belong to the split irqchip's snapshot, not the bus's.
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match at {
                0..=3 => self.0.read_port((at / 2) as usize, at % 2 == 1),
                4 | 5 => {
                    self.0.count(&self.0.counters.reads);
                    lock(&self.0.chips)[(at - 4) as usize].elcr
                }
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = offset + i as u64;
            match at {
                0..=3 => self.0.write_port((at / 2) as usize, at % 2 == 1, v),
                4 | 5 => {
                    self.0.count(&self.0.counters.other_writes);
                    let chip = (at - 4) as usize;
                    let mut c = lock(&self.0.chips);
                    c[chip].elcr = v & ELCR_MASK[chip];
                    self.0.update(&mut c);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Program both chips as Linux does: vectors 0x30/0x38, cascade, 8086.
    /// ICW1-4 on both chips (vectors 0x30 and 0x38, cascade on IR2,
    /// 8086 mode), then every input unmasked.
    fn initialise(p: &mut PicPorts) {
        for (even, odd, base, icw3) in [(0u64, 1u64, 0x30u8, 0x04u8), (2, 3, 0x38, 0x02)] {
            p.write(even, &[0x11]);
            p.write(odd, &[base]);
            p.write(odd, &[icw3]);
            p.write(odd, &[0x01]);
        }
        p.write(1, &[0x00]);
        p.write(3, &[0x00]);
    }

    fn programmed() -> (Arc<Pic>, PicPorts) {
        let pic = Arc::new(Pic::new());
        let mut p = PicPorts(pic.clone());
        initialise(&mut p);
        (pic, p)
    }

    fn read(p: &mut PicPorts, off: u64) -> u8 {
        let mut b = [0u8];
        p.read(off, &mut b);
        b[0]
    }

    #[test]
    fn firmware_state_masks_every_input_but_the_cascade() {
        let pic = Pic::new();
        for irq in 0..16 {
            pic.set_irq(irq, true);
        }
        assert!(!pic.output());
    }

    #[test]
    fn icw2_sets_the_vector_base_and_an_edge_is_delivered_once() {
        let (pic, _) = programmed();
        pic.set_irq(4, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x34);
        assert!(!pic.output(), "in service blocks itself");
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert!(!pic.output(), "a new edge waits for the EOI");
    }

    #[test]
    fn non_specific_eoi_clears_the_highest_in_service() {
        let (pic, mut p) = programmed();
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x34);
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        p.write(0, &[0x20]);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn specific_eoi_clears_only_the_named_level() {
        let (pic, mut p) = programmed();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        p.write(0, &[0x0B]); // OCW3: read ISR
        assert_eq!(read(&mut p, 0), 1 << 3);
        p.write(0, &[0x60 | 4]); // specific EOI for 4: 3 stays in service
        assert_eq!(read(&mut p, 0), 1 << 3);
        p.write(0, &[0x60 | 3]);
        assert_eq!(read(&mut p, 0), 0);
    }

    #[test]
    fn imr_masks_and_unmasking_delivers_the_latched_edge() {
        let (pic, mut p) = programmed();
        p.write(1, &[1 << 5]);
        pic.set_irq(5, true);
        assert!(!pic.output());
        p.write(0, &[0x0A]); // OCW3: read IRR
        assert_eq!(read(&mut p, 0), 1 << 5, "latched in IRR while masked");
        p.write(1, &[0]);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x35);
    }

    #[test]
    fn elcr_level_input_is_requested_again_while_high() {
        let (pic, mut p) = programmed();
        p.write(5, &[1 << (10 - 8)]); // IRQ 10 level
        pic.set_irq(10, true);
        assert_eq!(pic.acknowledge(), 0x38 + 2);
        p.write(2, &[0x20]); // slave EOI
        p.write(0, &[0x20]); // master EOI (cascade)
        assert!(pic.output(), "still high: requested again");
        assert_eq!(pic.acknowledge(), 0x3A);
        pic.set_irq(10, false);
        p.write(2, &[0x20]);
        p.write(0, &[0x20]);
        assert!(!pic.output(), "the line fell before the EOIs");
    }

    #[test]
    fn lower_irq_number_wins_and_the_other_follows_after_eoi() {
        let (pic, mut p) = programmed();
        pic.set_irq(6, true);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        assert!(!pic.output(), "6 has lower priority than 3 in service");
        p.write(0, &[0x20]);
        assert_eq!(pic.acknowledge(), 0x36);
    }

    #[test]
    fn request_gone_before_inta_gives_spurious_irq7_without_isr() {
        let (pic, mut p) = programmed();
        p.write(4, &[0]); // all edge
        assert_eq!(pic.acknowledge(), 0x37);
        p.write(0, &[0x0B]);
        assert_eq!(read(&mut p, 0), 0, "no ISR bit for a spurious IRQ 7");
        assert_eq!(pic.stats().spurious, 1);
    }

    #[test]
    fn slave_interrupt_arrives_through_the_cascade() {
        let (pic, mut p) = programmed();
        pic.set_irq(12, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x3C);
        p.write(0, &[0x0B]);
        assert_eq!(read(&mut p, 0), 1 << 2, "cascade in service on the master");
        p.write(2, &[0x0B]);
        assert_eq!(read(&mut p, 2), 1 << 4, "IRQ 12 in service on the slave");
        assert_eq!(pic.stats().delivered[12], 1);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let pic = Arc::new(Pic::new());
        let mut p = PicPorts(pic.clone());
        p.write(0, &[0x11]);
        p.write(1, &[0x20]);
        p.write(1, &[0x04]);
        p.write(1, &[0x03]); // AEOI
        p.write(1, &[0x00]);
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x21);
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        assert!(pic.output(), "no EOI needed");
    }

    #[test]
    fn rotate_on_non_specific_eoi_gives_the_served_irq_lowest_priority() {
        let (pic, mut p) = programmed();
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), 0x31);
        p.write(0, &[0xA0]); // rotate on non-specific EOI
        pic.set_irq(1, false);
        pic.set_irq(1, true);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), 0x35, "5 now outranks 1");
    }

    #[test]
    fn poll_mode_read_acknowledges_the_highest_request() {
        let (pic, mut p) = programmed();
        pic.set_irq(6, true);
        p.write(0, &[0x0C]); // OCW3 poll
        assert_eq!(read(&mut p, 0), 0x80 | 6);
        p.write(0, &[0x0C]);
        assert_eq!(read(&mut p, 0), 0, "nothing left");
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let (pic, mut p) = programmed();
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x33);
        p.write(1, &[1 << 3]); // mask the level in service
        p.write(0, &[0x68]); // OCW3: set special mask mode
        pic.set_irq(6, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x36);
    }

    #[test]
    fn elcr_cannot_make_irq0_1_2_8_13_level() {
        let (_, mut p) = programmed();
        p.write(4, &[0xFF]);
        p.write(5, &[0xFF]);
        assert_eq!(read(&mut p, 4), 0xF8);
        assert_eq!(read(&mut p, 5), 0xDE);
    }

    #[test]
    fn kick_runs_when_the_output_rises() {
        let (pic, _) = programmed();
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        pic.set_kick(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        pic.set_irq(4, true);
        pic.set_irq(3, true);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn garbage_port_writes_never_panic_and_never_wedge_the_pair() {
        let pic = Arc::new(Pic::new());
        let mut p = PicPorts(pic.clone());
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = (x % 6) as u64;
            p.write(off, &[(x >> 8) as u8]);
            pic.set_irq(((x >> 16) % 16) as u8, x & (1 << 30) != 0);
            if pic.output() {
                pic.acknowledge();
            }
            let mut b = [0u8; 2];
            p.read(off, &mut b);
            // The ELCR bits a PIIX hard-wires to edge stay edge.
            assert_eq!(read(&mut p, 4) & 0x07, 0, "master ELCR");
            assert_eq!(read(&mut p, 5) & 0x21, 0, "slave ELCR");
        }
        // Whatever the garbage left, a guest that initialises the pair again
        // gets a working controller: every line low, ELCR edge, a fresh
        // edge on IRQ 5 (master) then IRQ 10 (slave) delivers with the new
        // vectors, and a non-specific EOI ends each.
        for irq in 0..16 {
            pic.set_irq(irq, false);
        }
        p.write(4, &[0]);
        p.write(5, &[0]);
        initialise(&mut p);
        assert!(!pic.output(), "nothing pending after a fresh init");
        pic.set_irq(5, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x35);
        p.write(0, &[0x20]);
        pic.set_irq(10, true);
        assert!(pic.output());
        assert_eq!(pic.acknowledge(), 0x3a);
        p.write(2, &[0x20]);
        p.write(0, &[0x20]);
        assert!(!pic.output());
    }
}
