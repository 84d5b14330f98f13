//! The split irqchip (`--irqchip split`): the userspace half, in one owner.
//!
//! KVM keeps the local APICs; splitvm keeps everything that turns a device's
//! line or message into a LAPIC interrupt, and [`SplitIrqChip`] owns all of
//! it: the GSI routing table and its pushes to KVM ([`GsiRouter`], one
//! KVM_SET_GSI_ROUTING per batch of changes, lock-free signalling), the
//! I/O APIC (pin i = GSI i, RTE layout known only to devices/src/ioapic.rs),
//! the 8259 pair (ExtINT to vCPU 0), the GSIs handed to MSI/MSI-X vectors,
//! and the lines ISA devices drive. docs/architecture.md draws the path.
//!
//! Devices get lines ([`IrqChip::line`]) or the routing/eventfd
//! interfaces; the vCPU loop hands KVM_EXIT_IOAPIC_EOI to
//! [`IrqChip::eoi_exit`] and vCPU 0 polls the PIC.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use devices::ioapic::{IoApic, PinRoute, StuckPin};
use devices::pic::{Pic, PicRegisters};
use devices::sync::lock;
use devices::{IrqLine, MsiRouting};

use super::router::GsiRouter;
use super::{IrqChip, IrqChipMode, IrqChipState, PinCounts, Routes, Userspace};
use crate::error::{Error, Result};

pub struct SplitIrqChip {
    routes: Routes,
    ioapic: Arc<Mutex<IoApic>>,
    pic: Arc<Pic>,
}

impl SplitIrqChip {
    /// The chip of `vm` (KVM_CAP_SPLIT_IRQCHIP already enabled), with the
    /// 24 pin routes installed in one push.
    pub fn new(vm: Arc<VmFd>) -> Result<Arc<Self>> {
        let router = Arc::new(GsiRouter::new(vm));
        let routing: Arc<dyn MsiRouting> = router.clone();
        let ioapic = Arc::new(Mutex::new(IoApic::new(routing)));
        lock(&ioapic).install_routes().map_err(|e| Error::Setup {
            what: "I/O APIC routes",
            msg: e.to_string(),
        })?;
        Ok(Arc::new(SplitIrqChip {
            routes: Routes::new(router),
            ioapic,
            pic: Arc::new(Pic::new()),
        }))
    }
}

impl IrqChip for SplitIrqChip {
    fn mode(&self) -> IrqChipMode {
        IrqChipMode::Split
    }

    /// Below 16: 8259 input `gsi` and the I/O APIC pin the PC wires it to
    /// (`arch::layout::isa_irq_pin`: IRQ 0 -> pin 2); above, pin `gsi`.
    fn line(&self, gsi: u32) -> IrqLine {
        match u8::try_from(gsi).ok().filter(|g| *g < 16) {
            Some(irq) => {
                let pin = arch::layout::isa_irq_pin(irq).unwrap_or(irq) as usize;
                IrqLine::new(self.ioapic.clone(), pin).with_pic(self.pic.clone(), irq)
            }
            None => IrqLine::new(self.ioapic.clone(), gsi as usize),
        }
    }

    /// The irqfd signals GSI `pin` (its MSI route) and bypasses the I/O
    /// APIC, which therefore drops the route while the guest masks the pin.
    fn irqfd_pin(&self, pin: usize) -> u32 {
        lock(&self.ioapic).set_irqfd_driven(pin, true);
        pin as u32
    }

    fn routes(&self) -> &Routes {
        &self.routes
    }

    fn userspace(&self) -> Option<Userspace<'_>> {
        Some(Userspace {
            ioapic: &self.ioapic,
            pic: &self.pic,
        })
    }

    /// The I/O APIC clears Remote IRR of the level pins in service with
    /// `vector` (and delivers again while a line is still high).
    fn eoi_exit(&self, vector: u8) -> u32 {
        lock(&self.ioapic).end_of_interrupt(vector)
    }

    fn pin_routes(&self) -> Vec<PinRoute> {
        lock(&self.ioapic).routes()
    }

    fn pin_counts(&self) -> PinCounts {
        PinCounts::Ioapic(lock(&self.ioapic).pin_stats().to_vec())
    }

    fn stuck_pins(&self) -> Vec<StuckPin> {
        lock(&self.ioapic).stuck_pins()
    }

    fn pic_registers(&self) -> ([PicRegisters; 2], bool) {
        (self.pic.registers(), self.pic.output())
    }

    fn save(&self) -> Result<IrqChipState> {
        Ok(IrqChipState::Split(SplitState {
            ioapic: lock(&self.ioapic).save(),
            pic: self.pic.save(),
            routes: self.routes.router.table(),
        }))
    }

    /// The GSI table in one push (KVM rescans it for the level vectors
    /// whose EOI it must report, so an interrupt in service at the
    /// snapshot still gets its EOI exit), then the I/O APIC and the 8259
    /// registers.
    fn restore(&self, s: &IrqChipState) -> Result<()> {
        let setup = |msg: String| Error::Setup {
            what: "restored interrupt routes",
            msg,
        };
        let IrqChipState::Split(s) = s else {
            return Err(Error::Restore(format!(
                "the snapshot's irqchip is {}; this VM's is split",
                s.mode().name()
            )));
        };
        self.routes
            .router
            .replace(&s.routes)
            .map_err(|e| setup(e.to_string()))?;
        let installed = std::array::from_fn(|pin| {
            s.routes
                .iter()
                .find(|(g, _)| *g as usize == pin)
                .map(|(_, m)| *m)
        });
        lock(&self.ioapic)
            .restore(&s.ioapic, installed)
            .map_err(|e| setup(e.to_string()))?;
        self.pic.restore(&s.pic);
        Ok(())
    }
}

/// The split irqchip in a snapshot: the I/O APIC, the 8259 pair and the
/// whole GSI routing table (pins 0-23 and MSI vectors).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SplitState {
    pub ioapic: devices::ioapic::IoApicState,
    pub pic: devices::pic::PicState,
    pub routes: Vec<(u32, devices::MsiMessage)>,
}

#[cfg(test)]
mod tests {
    //! Against the real /dev/kvm (CI has KVM; without it these fail loudly).
    use super::*;
    use devices::MsiMessage;

    fn chip_and_vm() -> (Arc<SplitIrqChip>, Arc<VmFd>) {
        let kvm = crate::vm::open_kvm().expect("/dev/kvm (these tests need KVM)");
        let mem = crate::vm::guest_memory(16 << 20).unwrap();
        let vm = Arc::new(crate::vm::create_vm(&kvm, &mem, IrqChipMode::Split, false).unwrap());
        (SplitIrqChip::new(vm.clone()).unwrap(), vm)
    }

    fn chip() -> Arc<SplitIrqChip> {
        chip_and_vm().0
    }

    /// Whether `vector` is pending in the LAPIC's IRR (KVM_GET_LAPIC).
    fn in_irr(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
        let l = vcpu.get_lapic().unwrap();
        arch::lapic::vector_set(&l.regs, arch::lapic::IRR, vector)
    }

    #[test]
    fn every_pin_has_a_route_from_the_start() {
        let c = chip();
        let table = c.routes.router.table();
        for gsi in 0..devices::interrupt::IOAPIC_PINS as u32 {
            assert!(table.iter().any(|(g, _)| *g == gsi), "pin {gsi}");
        }
    }

    #[test]
    fn signalling_a_pin_route_delivers_its_vector_to_the_lapic() {
        let (c, vm) = chip_and_vm();
        let vcpu = vm.create_vcpu(0).unwrap();
        // Software-enable the LAPIC (SVR bit 8): a disabled one drops
        // fixed interrupts.
        let mut l = vcpu.get_lapic().unwrap();
        let svr = arch::lapic::read(&l.regs, arch::lapic::SVR);
        arch::lapic::write(&mut l.regs, arch::lapic::SVR, svr | arch::lapic::SVR_ENABLE);
        vcpu.set_lapic(&l).unwrap();
        let r = c.routing();
        for gsi in 0..devices::interrupt::IOAPIC_PINS as u32 {
            let vector = 0x40 + gsi as u8;
            assert!(!in_irr(&vcpu, vector));
            let m = MsiMessage::compose(0, false, 0, vector, false);
            r.set_route(gsi, Some(m)).unwrap();
            r.signal(gsi).unwrap_or_else(|e| panic!("pin {gsi}: {e}"));
            assert!(
                in_irr(&vcpu, vector),
                "pin {gsi}: vector {vector:#x} not in IRR"
            );
        }
        // A route to another APIC ID reaches no vCPU of this VM.
        let m = MsiMessage::compose(5, false, 0, 0x90, false);
        r.set_route(3, Some(m)).unwrap();
        r.signal(3).unwrap();
        assert!(!in_irr(&vcpu, 0x90));
    }

    #[test]
    fn a_gsi_without_a_route_is_refused_without_asking_kvm() {
        let c = chip();
        let gsi = c.msi_gsis().lock().unwrap().allocate().unwrap();
        assert!(matches!(
            c.routing().signal(gsi),
            Err(devices::InterruptError::NoRoute(g)) if g == gsi
        ));
        let m = MsiMessage::compose(0, false, 0, 0x40, false);
        c.routing().set_routes(&[(gsi, Some(m))]).unwrap();
        c.routing().signal(gsi).unwrap();
        c.routing().set_route(gsi, None).unwrap();
        assert!(c.routing().signal(gsi).is_err(), "a removed route is gone");
    }

    #[test]
    fn an_eoi_for_a_vector_no_pin_carries_ends_nothing() {
        let c = chip();
        assert_eq!(c.eoi_exit(0x99), 0);
    }
}
