//! The userspace half of the split irqchip, in one owner.
//!
//! KVM keeps the local APICs; splitvm keeps everything that turns a device's
//! line or message into a LAPIC interrupt, and [`SplitIrqChip`] owns all of
//! it: the GSI routing table and its pushes to KVM ([`GsiRouter`], one
//! KVM_SET_GSI_ROUTING per batch of changes, lock-free signalling), the
//! I/O APIC (pin i = GSI i, RTE layout known only to devices/src/ioapic.rs),
//! the 8259 pair (ExtINT to vCPU 0), the GSIs handed to MSI/MSI-X vectors,
//! and the lines ISA devices drive. docs/architecture.md draws the path.
//!
//! Devices get lines ([`isa_line`](SplitIrqChip::isa_line)) or the
//! routing/eventfd interfaces; the vCPU loop hands KVM_EXIT_IOAPIC_EOI to
//! [`eoi_exit`](SplitIrqChip::eoi_exit) and vCPU 0 polls the PIC.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use devices::interrupt::{EventRegistry, GsiAllocator, SharedGsiAllocator, KVM_MAX_IRQ_ROUTES};
use devices::ioapic::IoApic;
use devices::pic::Pic;
use devices::sync::lock;
use devices::{IrqLine, MsiRouting};

use crate::error::{Error, Result};
use crate::vm::GsiRouter;

pub struct SplitIrqChip {
    router: Arc<GsiRouter>,
    ioapic: Arc<Mutex<IoApic>>,
    pic: Arc<Pic>,
    msi_gsis: SharedGsiAllocator,
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
            router,
            ioapic,
            pic: Arc::new(Pic::new()),
            msi_gsis: GsiAllocator::shared(KVM_MAX_IRQ_ROUTES),
        }))
    }

    /// The line of ISA IRQ `irq`: 8259 input `irq` and the I/O APIC pin
    /// the PC wires it to (`arch::layout::isa_irq_pin`: IRQ 0 -> pin 2).
    pub fn isa_line(&self, irq: u8) -> IrqLine {
        let pin = arch::layout::isa_irq_pin(irq).unwrap_or(irq) as usize;
        IrqLine::new(self.ioapic.clone(), pin).with_pic(self.pic.clone(), irq)
    }

    /// MSI routes and one-off MSIs, for MSI-capable devices.
    pub fn routing(&self) -> Arc<dyn MsiRouting> {
        self.router.clone()
    }

    /// irqfds and ioeventfds.
    pub fn events(&self) -> Arc<dyn EventRegistry> {
        self.router.clone()
    }

    /// GSIs for MSI and MSI-X vectors (24 and up).
    pub fn msi_gsis(&self) -> SharedGsiAllocator {
        self.msi_gsis.clone()
    }

    pub fn ioapic(&self) -> &Arc<Mutex<IoApic>> {
        &self.ioapic
    }

    pub fn pic(&self) -> &Arc<Pic> {
        &self.pic
    }

    /// A KVM_EXIT_IOAPIC_EOI for `vector`: the I/O APIC clears Remote IRR
    /// of the level pins in service with it (and delivers again while a line
    /// is still high). Returns those pins as a mask, for the exit report.
    pub fn eoi_exit(&self, vector: u8) -> u32 {
        lock(&self.ioapic).end_of_interrupt(vector)
    }

    /// The userspace irqchip's state for a snapshot (the LAPICs are saved
    /// with their vCPUs).
    pub fn save(&self) -> IrqChipState {
        IrqChipState {
            ioapic: lock(&self.ioapic).save(),
            pic: self.pic.save(),
            routes: self.router.table(),
        }
    }

    /// Put back a saved state, after the vCPUs' LAPICs: the GSI table in
    /// one push (KVM rescans it for the level vectors whose EOI it must
    /// report, so an interrupt in service at the snapshot still gets its
    /// EOI exit), then the I/O APIC and the 8259 registers.
    pub fn restore(&self, s: &IrqChipState) -> Result<()> {
        let setup = |msg: String| Error::Setup {
            what: "restored interrupt routes",
            msg,
        };
        self.router
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
pub struct IrqChipState {
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
        let vm = Arc::new(crate::vm::create_vm(&kvm, &mem).unwrap());
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
    fn isa_irq_0_drives_ioapic_pin_2_and_pic_input_0() {
        let c = chip();
        assert_eq!(c.isa_line(0).pin(), 2);
        assert_eq!(c.isa_line(4).pin(), 4);
    }

    #[test]
    fn every_pin_has_a_route_from_the_start() {
        let c = chip();
        let table = c.router.table();
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
