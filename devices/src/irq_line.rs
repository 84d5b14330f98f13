//! A device's interrupt line: an I/O APIC pin and, for an ISA device, the
//! 8259 input of its ISA IRQ too (devices/src/pic.rs). The only module that
//! knows both controllers; the controllers know nothing of it.

use std::sync::{Arc, Mutex};

use crate::ioapic::IoApic;
use crate::pic::Pic;
use crate::sync::lock;

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
