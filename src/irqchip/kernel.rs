//! KVM's in-kernel irqchip (`--irqchip kernel`): KVM_CREATE_IRQCHIP (an
//! 8259 pair and an I/O APIC beside the LAPICs) and KVM_CREATE_PIT2, as
//! Firecracker and QEMU's `kernel-irqchip=on` use it.
//!
//! splitvm keeps only the routing table: irqchip routes for GSIs 0-23
//! (GSI n below 16 to 8259 input n, except the cascade; GSI n to I/O APIC
//! pin `isa_irq_pin(n)`, so GSI 0 reaches pin 2) followed by the MSI
//! routes of MSI and MSI-X vectors, pushed whole with KVM_SET_GSI_ROUTING.
//! A device line is KVM_IRQ_LINE on its GSI; KVM keeps the levels, Remote
//! IRR and the EOIs itself, so a level line still high at EOI is delivered
//! again without an exit (no resample irqfd is needed: userspace lines use
//! KVM_IRQ_LINE, irqfds carry only edges). splitvm counts the rising edges
//! it drives, per pin; everything else is in KVM (binary statistics, and
//! with `--trace-exits` the kvm_pic_set_irq / kvm_ioapic_set_irq events).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use devices::interrupt::IOAPIC_PINS;
use devices::ioapic::{PinRoute, StuckPin, IOAPIC_BASE};
use devices::irq_line::LineSink;
use devices::pic::PicRegisters;
use devices::sync::WarnOnce;
use devices::IrqLine;

use super::router::GsiRouter;
use super::{IrqChip, IrqChipMode, IrqChipState, PinCounts, Routes, Userspace};
use crate::error::{Error, Result};

/// The I/O APIC pin GSI `gsi` reaches (module docs).
pub(super) fn pin_of(gsi: u32) -> usize {
    u8::try_from(gsi)
        .ok()
        .filter(|g| *g < 16)
        .and_then(arch::layout::isa_irq_pin)
        .map_or(gsi as usize, usize::from)
}

/// The irqchip routes of GSIs 0-23.
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let entry = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS as u32 {
        if gsi < 16 && gsi != 2 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(entry(gsi, chip, gsi % 8));
        }
        v.push(entry(gsi, KVM_IRQCHIP_IOAPIC, pin_of(gsi) as u32));
    }
    v
}

/// What splitvm sees of the lines it drives.
struct Lines {
    vm: Arc<VmFd>,
    level: [AtomicBool; IOAPIC_PINS],
    /// Rising edges per I/O APIC pin (splitvm's lines only).
    raised: [AtomicU64; IOAPIC_PINS],
    /// Pins splitvm has driven (a rising edge), or an irqfd drives.
    driven: [AtomicBool; IOAPIC_PINS],
    warned: WarnOnce,
}

impl Lines {
    fn set(&self, gsi: u32, level: bool) {
        let i = gsi as usize;
        let was = self.level[i].swap(level, Ordering::Relaxed);
        if level && !was {
            let pin = pin_of(gsi);
            self.driven[pin].store(true, Ordering::Relaxed);
            self.raised[pin].fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.vm.set_irq_line(gsi, level) {
            self.warned.warn(
                1,
                format_args!("irqchip: KVM_IRQ_LINE on GSI {gsi} failed: {e}"),
            );
        }
    }
}

/// A device's line: KVM_IRQ_LINE on one GSI.
struct KernelLine {
    lines: Arc<Lines>,
    gsi: u32,
}

impl LineSink for KernelLine {
    fn set_level(&self, level: bool) {
        self.lines.set(self.gsi, level);
    }
}

pub struct KernelIrqChip {
    vm: Arc<VmFd>,
    routes: Routes,
    lines: Arc<Lines>,
}

/// The in-kernel irqchip in a snapshot: KVM_GET_IRQCHIP of both 8259s and
/// the I/O APIC and KVM_GET_PIT2 (each as KVM's structure, raw bytes), and
/// the MSI routes (the irqchip routes are always the same).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelState {
    pub pic_master: Vec<u8>,
    pub pic_slave: Vec<u8>,
    pub ioapic: Vec<u8>,
    pub pit: Option<Vec<u8>>,
    pub routes: Vec<(u32, devices::MsiMessage)>,
    /// The levels splitvm's lines were driven to, by GSI.
    pub levels: Vec<bool>,
}

/// The 512-byte `dummy` view of `kvm_irqchip.chip`, with a Default.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct DummyChip([std::os::raw::c_char; 512]);

impl Default for DummyChip {
    fn default() -> Self {
        DummyChip([0; 512])
    }
}

/// `T`'s bytes (`T` is plain data from kvm-bindings).
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain-data KVM structure (no pointers, no padding
    // that matters: KVM wrote every byte); we read size_of::<T>() bytes of
    // a live value.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// A `T` from `b`, which must be exactly its size.
fn from_bytes<T: Copy + Default>(b: &[u8], what: &str) -> Result<T> {
    if b.len() != std::mem::size_of::<T>() {
        return Err(Error::Restore(format!(
            "the snapshot's {what} state is {} bytes, KVM's is {}",
            b.len(),
            std::mem::size_of::<T>()
        )));
    }
    let mut v = T::default();
    // SAFETY: `v` is a plain-data KVM structure of exactly b.len() bytes;
    // every bit pattern is a value KVM then checks (KVM_SET_*).
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len());
    }
    Ok(v)
}

impl KernelIrqChip {
    /// The chip of `vm` (KVM_CREATE_IRQCHIP done), with its irqchip routes
    /// pushed (replacing KVM's defaults, which send GSI 0 to pin 0).
    pub fn new(vm: Arc<VmFd>) -> Result<Arc<Self>> {
        let router = Arc::new(GsiRouter::with_fixed(vm.clone(), irqchip_routes()));
        router.replace(&[]).map_err(|e| Error::Setup {
            what: "in-kernel irqchip routes",
            msg: e.to_string(),
        })?;
        Ok(Arc::new(KernelIrqChip {
            lines: Arc::new(Lines {
                vm: vm.clone(),
                level: std::array::from_fn(|_| AtomicBool::new(false)),
                raised: std::array::from_fn(|_| AtomicU64::new(0)),
                driven: std::array::from_fn(|_| AtomicBool::new(false)),
                warned: WarnOnce::default(),
            }),
            vm,
            routes: Routes::new(router),
        }))
    }

    fn chip(&self, id: u32) -> Result<kvm_irqchip> {
        let mut c = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        self.vm
            .get_irqchip(&mut c)
            .map_err(crate::error::kvm("KVM_GET_IRQCHIP"))?;
        Ok(c)
    }

    /// The I/O APIC's redirection entries and its IRR (asserted lines).
    fn ioapic(&self) -> Option<([u64; IOAPIC_PINS], u32)> {
        let c = self.chip(KVM_IRQCHIP_IOAPIC).ok()?;
        // SAFETY: chip_id IOAPIC: KVM filled the `ioapic` member.
        let io = unsafe { c.chip.ioapic };
        // SAFETY: every redirection entry is 64 plain bits.
        let rtes = std::array::from_fn(|i| unsafe { io.redirtbl[i].bits });
        Some((rtes, io.irr))
    }

    fn pic(&self, id: u32) -> PicRegisters {
        match self.chip(id) {
            Ok(c) => {
                // SAFETY: chip_id is a PIC: KVM filled the `pic` member.
                let p = unsafe { c.chip.pic };
                PicRegisters {
                    irr: p.irr,
                    isr: p.isr,
                    imr: p.imr,
                }
            }
            Err(_) => PicRegisters::default(),
        }
    }
}

impl IrqChip for KernelIrqChip {
    fn mode(&self) -> IrqChipMode {
        IrqChipMode::Kernel
    }

    fn line(&self, gsi: u32) -> IrqLine {
        IrqLine::with_sink(
            pin_of(gsi),
            Arc::new(KernelLine {
                lines: self.lines.clone(),
                gsi,
            }),
        )
    }

    /// GSI `pin` reaches pin `pin` for every pin a device gets (not 0).
    fn irqfd_pin(&self, pin: usize) -> u32 {
        self.lines.driven[pin].store(true, Ordering::Relaxed);
        pin as u32
    }

    fn routes(&self) -> &Routes {
        &self.routes
    }

    fn userspace(&self) -> Option<Userspace<'_>> {
        None
    }

    /// KVM ends level interrupts itself: there is no EOI exit.
    fn eoi_exit(&self, _vector: u8) -> u32 {
        0
    }

    fn pin_routes(&self) -> Vec<PinRoute> {
        let rtes = self.ioapic().map_or([0x1_0000; IOAPIC_PINS], |(r, _)| r);
        (0..IOAPIC_PINS)
            .map(|pin| PinRoute::of_rte(pin, rtes[pin]))
            .collect()
    }

    fn pin_counts(&self) -> PinCounts {
        PinCounts::Lines(
            (0..IOAPIC_PINS)
                .map(|p| {
                    self.lines.driven[p]
                        .load(Ordering::Relaxed)
                        .then(|| self.lines.raised[p].load(Ordering::Relaxed))
                })
                .collect(),
        )
    }

    fn stuck_pins(&self) -> Vec<StuckPin> {
        let Some((rtes, irr)) = self.ioapic() else {
            return Vec::new();
        };
        (0..IOAPIC_PINS)
            .filter_map(|pin| StuckPin::of_rte(pin, rtes[pin], irr >> pin & 1 == 1))
            .collect()
    }

    /// The output: a request in the master's IRR that IMR lets through.
    fn pic_registers(&self) -> ([PicRegisters; 2], bool) {
        let m = self.pic(KVM_IRQCHIP_PIC_MASTER);
        let s = self.pic(KVM_IRQCHIP_PIC_SLAVE);
        let out = m.irr & !m.imr != 0;
        ([m, s], out)
    }

    fn save(&self) -> Result<IrqChipState> {
        let raw = |id| -> Result<Vec<u8>> {
            // SAFETY: a PIC or I/O APIC state, all plain data (the union's
            // 512-byte `dummy` view covers both).
            Ok(bytes_of(&unsafe { self.chip(id)?.chip.dummy }))
        };
        let pit = match self.vm.get_pit2() {
            Ok(p) => Some(bytes_of(&p)),
            // No PIT (--no-pit): KVM says ENXIO.
            Err(e) if e.errno() == libc::ENXIO => None,
            Err(e) => return Err(crate::error::kvm("KVM_GET_PIT2")(e)),
        };
        Ok(IrqChipState::Kernel(KernelState {
            pic_master: raw(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: raw(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: raw(KVM_IRQCHIP_IOAPIC)?,
            pit,
            routes: self.routes.router.table(),
            levels: self
                .lines
                .level
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .collect(),
        }))
    }

    /// Both 8259s, the I/O APIC (its base must be splitvm's), the PIT when
    /// both the snapshot and this VM have one, then the routing table.
    fn restore(&self, s: &IrqChipState) -> Result<()> {
        let IrqChipState::Kernel(s) = s else {
            return Err(Error::Restore(format!(
                "the snapshot's irqchip is {}; this VM's is kernel",
                s.mode().name()
            )));
        };
        for (id, b, what) in [
            (KVM_IRQCHIP_PIC_MASTER, &s.pic_master, "8259 master"),
            (KVM_IRQCHIP_PIC_SLAVE, &s.pic_slave, "8259 slave"),
            (KVM_IRQCHIP_IOAPIC, &s.ioapic, "I/O APIC"),
        ] {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            let dummy: DummyChip = from_bytes(b, what)?;
            c.chip.dummy = dummy.0;
            if id == KVM_IRQCHIP_IOAPIC {
                // SAFETY: the I/O APIC view of the bytes just copied.
                let base = unsafe { c.chip.ioapic.base_address };
                if base != IOAPIC_BASE {
                    return Err(Error::Restore(format!(
                        "the snapshot's I/O APIC is at {base:#x}, not {IOAPIC_BASE:#x}"
                    )));
                }
            }
            self.vm
                .set_irqchip(&c)
                .map_err(crate::error::kvm("KVM_SET_IRQCHIP"))?;
        }
        if let Some(p) = &s.pit {
            let pit: kvm_pit_state2 = from_bytes(p, "PIT")?;
            self.vm
                .set_pit2(&pit)
                .map_err(crate::error::kvm("KVM_SET_PIT2"))?;
        }
        for (l, &v) in self.lines.level.iter().zip(&s.levels) {
            l.store(v, Ordering::Relaxed);
        }
        self.routes
            .router
            .replace(&s.routes)
            .map_err(|e| Error::Setup {
                what: "restored interrupt routes",
                msg: e.to_string(),
            })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Program pin `pin` of KVM's I/O APIC through KVM_SET_IRQCHIP: vector,
    /// fixed, edge, unmasked, physical destination 0.
    pub fn program_pin(vm: &VmFd, pin: usize, vector: u8) {
        let mut c = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).unwrap();
        // SAFETY: the I/O APIC member, filled by KVM; plain bits.
        unsafe { c.chip.ioapic.redirtbl[pin].bits = u64::from(vector) };
        vm.set_irqchip(&c).unwrap();
    }

    #[test]
    fn gsi_0_reaches_pin_2_and_the_cascade_has_no_8259_route() {
        let r = irqchip_routes();
        let to = |gsi: u32, chip: u32| {
            r.iter()
                .filter(|e| e.gsi == gsi)
                // SAFETY: every entry here is an irqchip route.
                .find(|e| unsafe { e.u.irqchip.irqchip } == chip)
                .map(|e| unsafe { e.u.irqchip.pin })
        };
        assert_eq!(to(0, KVM_IRQCHIP_IOAPIC), Some(2));
        assert_eq!(to(0, KVM_IRQCHIP_PIC_MASTER), Some(0));
        assert_eq!(to(2, KVM_IRQCHIP_PIC_MASTER), None);
        assert_eq!(to(10, KVM_IRQCHIP_PIC_SLAVE), Some(2));
        assert_eq!(to(19, KVM_IRQCHIP_IOAPIC), Some(19));
        assert_eq!(to(19, KVM_IRQCHIP_PIC_SLAVE), None);
    }
}
