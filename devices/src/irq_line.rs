//! A device's interrupt line. Devices drive it (`set_level`, `pulse`) and
//! do not know where it goes: in a split irqchip to the userspace I/O APIC
//! pin and, for an ISA device, the 8259 input of its ISA IRQ too (this
//! module is the only one that knows both controllers); with KVM's
//! in-kernel irqchip to a GSI (a [`LineSink`] the VMM provides).

use std::sync::{Arc, Mutex};

use crate::ioapic::IoApic;
use crate::pic::Pic;
use crate::sync::lock;

/// Where a line goes when it is not a userspace controller's input (the
/// VMM implements it, e.g. KVM_IRQ_LINE on a GSI of the in-kernel irqchip).
pub trait LineSink: Send + Sync {
    /// Drive the line to `level` (true = asserted).
    fn set_level(&self, level: bool);
    /// An edge: assert then deassert.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

#[derive(Clone)]
enum Sink {
    /// The split irqchip's I/O APIC pin, and an 8259 input.
    Userspace {
        ioapic: Arc<Mutex<IoApic>>,
        pic: Option<(Arc<Pic>, u8)>,
    },
    Other(Arc<dyn LineSink>),
}

/// A device's handle on one interrupt line: an I/O APIC input pin and, for
/// an ISA device, the 8259 input of its ISA IRQ too (a PC drives both).
#[derive(Clone)]
pub struct IrqLine {
    pin: usize,
    sink: Sink,
}

impl IrqLine {
    /// Pin `pin` of a userspace I/O APIC.
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: usize) -> Self {
        IrqLine {
            pin,
            sink: Sink::Userspace { ioapic, pic: None },
        }
    }
    /// Also drive ISA IRQ `irq` of the 8259 pair (a userspace line only).
    pub fn with_pic(mut self, pic: Arc<Pic>, irq: u8) -> Self {
        if let Sink::Userspace { pic: p, .. } = &mut self.sink {
            *p = Some((pic, irq));
        }
        self
    }
    /// A line that reaches I/O APIC pin `pin` through `sink`.
    pub fn with_sink(pin: usize, sink: Arc<dyn LineSink>) -> Self {
        IrqLine {
            pin,
            sink: Sink::Other(sink),
        }
    }
    /// The I/O APIC pin this line reaches.
    pub fn pin(&self) -> usize {
        self.pin
    }
    /// Drive the line to `level` (true = asserted, before polarity).
    pub fn set_level(&self, level: bool) {
        match &self.sink {
            Sink::Userspace { ioapic, pic } => {
                lock(ioapic).set_irq(self.pin, level);
                if let Some((pic, irq)) = pic {
                    pic.set_irq(*irq, level);
                }
            }
            Sink::Other(s) => s.set_level(level),
        }
    }
    /// An edge: assert then deassert the line.
    pub fn pulse(&self) {
        match &self.sink {
            Sink::Userspace { ioapic, pic } => {
                {
                    let mut ioapic = lock(ioapic);
                    ioapic.set_irq(self.pin, true);
                    ioapic.set_irq(self.pin, false);
                }
                if let Some((pic, irq)) = pic {
                    pic.set_irq(*irq, true);
                    pic.set_irq(*irq, false);
                }
            }
            Sink::Other(s) => s.pulse(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Recorder(AtomicU64, AtomicU64);
    impl LineSink for Recorder {
        fn set_level(&self, level: bool) {
            if level {
                self.0.fetch_add(1, Ordering::SeqCst);
            } else {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_line_through_a_sink_asserts_and_deasserts_it() {
        let r = Arc::new(Recorder::default());
        let l = IrqLine::with_sink(7, r.clone());
        assert_eq!(l.pin(), 7);
        l.set_level(true);
        l.pulse();
        assert_eq!(r.0.load(Ordering::SeqCst), 2);
        assert_eq!(r.1.load(Ordering::SeqCst), 1);
    }
}
