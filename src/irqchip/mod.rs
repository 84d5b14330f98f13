//! The irqchip: everything that turns a device's line or message into a
//! LAPIC interrupt, behind one trait with two implementations (as crosvm's
//! `IrqChip`). This module is the one place that knows which mode runs;
//! devices ask for a line of a GSI or for MSI routing and never know.
//!
//! - [`split::SplitIrqChip`] (`--irqchip split`, the default): the LAPICs
//!   in KVM; the I/O APIC, the 8259 pair and every route in splitvm
//!   (KVM_CAP_SPLIT_IRQCHIP). Level EOIs come back as KVM_EXIT_IOAPIC_EOI;
//!   vCPU 0 takes the 8259's interrupts as ExtINT.
//! - [`kernel::KernelIrqChip`] (`--irqchip kernel`): KVM's own 8259 pair,
//!   I/O APIC and PIT (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2). Lines are
//!   KVM_IRQ_LINE on a GSI; the routing table holds irqchip routes for
//!   GSIs 0-23 and MSI routes above; nothing comes back to userspace.
//!
//! GSIs are wired the same way in both modes, as on a PC (and as QEMU's
//! pc-testdev sees them): GSI n below 16 is ISA IRQ n, 8259 input n and
//! I/O APIC pin `isa_irq_pin(n)` (IRQ 0 on pin 2); from 16 on, I/O APIC
//! pin n alone. MSI and MSI-X vectors own GSIs from 24 up.

pub mod kernel;
pub mod router;
pub mod split;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use devices::interrupt::{EventRegistry, SharedGsiAllocator};
use devices::ioapic::{IoApic, PinRoute, PinStats, StuckPin};
use devices::pic::{Pic, PicRegisters};
use devices::{IrqLine, MsiRouting};

use crate::error::Result;

/// `--irqchip`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqChipMode {
    /// LAPICs in KVM; I/O APIC, 8259 pair, PIT and all routing in splitvm.
    #[default]
    Split,
    /// KVM's in-kernel 8259 pair, I/O APIC and PIT.
    Kernel,
}

impl IrqChipMode {
    pub fn name(self) -> &'static str {
        match self {
            IrqChipMode::Split => "split",
            IrqChipMode::Kernel => "kernel",
        }
    }
}

/// The I/O APIC pin GSI `gsi` reaches with KVM's irqchip (module docs).
pub fn gsi_pin(gsi: u32) -> usize {
    kernel::pin_of(gsi)
}

/// The GSI routing table (src/vm.rs) and the GSIs MSI vectors take from
/// 24 up: the part of the irqchip that is the same in both modes.
pub struct Routes {
    pub router: Arc<router::GsiRouter>,
    pub msi_gsis: SharedGsiAllocator,
}

impl Routes {
    pub fn new(router: Arc<router::GsiRouter>) -> Routes {
        Routes {
            router,
            msi_gsis: devices::interrupt::GsiAllocator::shared(
                devices::interrupt::KVM_MAX_IRQ_ROUTES,
            ),
        }
    }
}

/// What an irqchip counts per I/O APIC pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCounts {
    /// The userspace I/O APIC's own counters (split).
    Ioapic(Vec<PinStats>),
    /// KVM's I/O APIC counts nothing splitvm can read: the rising edges of
    /// the lines splitvm drives, per pin (None: splitvm raised no edge
    /// there, e.g. the pin of KVM's own PIT).
    Lines(Vec<Option<u64>>),
}

impl PinCounts {
    /// Rising edges of `pin`, where known.
    pub fn raised(&self, pin: usize) -> Option<u64> {
        match self {
            PinCounts::Ioapic(v) => v.get(pin).map(|p| p.raised),
            PinCounts::Lines(v) => v.get(pin).copied().flatten(),
        }
    }
}

/// The controllers a split irqchip keeps in userspace.
pub struct Userspace<'a> {
    pub ioapic: &'a Arc<Mutex<IoApic>>,
    pub pic: &'a Arc<Pic>,
}

/// The irqchip of a VM, in either mode (module docs).
pub trait IrqChip: Send + Sync {
    fn mode(&self) -> IrqChipMode;
    /// The line of GSI `gsi` (0..24) as a PC wires it (module docs).
    fn line(&self, gsi: u32) -> IrqLine;
    /// The line of ISA IRQ `irq` (GSI `irq`).
    fn isa_line(&self, irq: u8) -> IrqLine {
        self.line(irq.into())
    }
    /// The GSI an irqfd raises I/O APIC pin `pin` with, edge-triggered
    /// (virtio-mmio): the irqchip learns that the pin is driven that way.
    fn irqfd_pin(&self, pin: usize) -> u32;
    /// The routing table and the MSI GSIs (both modes have them).
    fn routes(&self) -> &Routes;
    /// MSI routes and one-off MSIs, for MSI-capable devices.
    fn routing(&self) -> Arc<dyn MsiRouting> {
        self.routes().router.clone()
    }
    /// irqfds and ioeventfds.
    fn events(&self) -> Arc<dyn EventRegistry> {
        self.routes().router.clone()
    }
    /// GSIs for MSI and MSI-X vectors (24 and up).
    fn msi_gsis(&self) -> SharedGsiAllocator {
        self.routes().msi_gsis.clone()
    }
    /// The userspace I/O APIC and 8259 pair (split mode only).
    fn userspace(&self) -> Option<Userspace<'_>>;
    /// A KVM_EXIT_IOAPIC_EOI for `vector` (split mode: the I/O APIC ends
    /// the level interrupts in service with it). Returns those pins as a
    /// mask, for the exit report.
    fn eoi_exit(&self, vector: u8) -> u32;
    /// Every pin's programming now.
    fn pin_routes(&self) -> Vec<PinRoute>;
    /// Per-pin counters (module docs: what each mode can count).
    fn pin_counts(&self) -> PinCounts;
    /// Pins a stuck-guest report names, and the 8259 pair's registers
    /// and output (docs/stuck.md).
    fn stuck_pins(&self) -> Vec<StuckPin>;
    fn pic_registers(&self) -> ([PicRegisters; 2], bool);
    /// The state a snapshot keeps (the LAPICs are saved with their vCPUs).
    fn save(&self) -> Result<IrqChipState>;
    /// Put back a saved state, after the vCPUs' LAPICs.
    fn restore(&self, s: &IrqChipState) -> Result<()>;
}

/// The irqchip in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum IrqChipState {
    Split(split::SplitState),
    Kernel(kernel::KernelState),
}

impl IrqChipState {
    pub fn mode(&self) -> IrqChipMode {
        match self {
            IrqChipState::Split(_) => IrqChipMode::Split,
            IrqChipState::Kernel(_) => IrqChipMode::Kernel,
        }
    }
}

/// The irqchip of `mode` for `vm` (created by `vm::create_vm` in that
/// mode).
pub fn create(mode: IrqChipMode, vm: Arc<kvm_ioctls::VmFd>) -> Result<Arc<dyn IrqChip>> {
    Ok(match mode {
        IrqChipMode::Split => split::SplitIrqChip::new(vm)?,
        IrqChipMode::Kernel => kernel::KernelIrqChip::new(vm)?,
    })
}

#[cfg(test)]
mod tests {
    //! Shared tests: each runs against both modes (real /dev/kvm).
    use super::*;
    use devices::MsiMessage;

    fn chip(mode: IrqChipMode) -> (Arc<dyn IrqChip>, Arc<kvm_ioctls::VmFd>) {
        let kvm = crate::vm::open_kvm().expect("/dev/kvm (these tests need KVM)");
        let mem = crate::vm::guest_memory(16 << 20).unwrap();
        let vm = Arc::new(crate::vm::create_vm(&kvm, &mem, mode, true).unwrap());
        (create(mode, vm.clone()).unwrap(), vm)
    }

    /// vCPU 0 with its LAPIC software-enabled (a disabled one drops fixed
    /// interrupts).
    fn vcpu(vm: &kvm_ioctls::VmFd) -> kvm_ioctls::VcpuFd {
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut l = vcpu.get_lapic().unwrap();
        let svr = arch::lapic::read(&l.regs, arch::lapic::SVR);
        arch::lapic::write(&mut l.regs, arch::lapic::SVR, svr | arch::lapic::SVR_ENABLE);
        vcpu.set_lapic(&l).unwrap();
        vcpu
    }

    fn in_irr(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
        let l = vcpu.get_lapic().unwrap();
        arch::lapic::vector_set(&l.regs, arch::lapic::IRR, vector)
    }

    const MODES: [IrqChipMode; 2] = [IrqChipMode::Split, IrqChipMode::Kernel];

    #[test]
    fn an_msi_route_on_a_gsi_above_the_pins_delivers_its_vector_in_both_modes() {
        for mode in MODES {
            let (c, vm) = chip(mode);
            let v = vcpu(&vm);
            let gsi = c.msi_gsis().lock().unwrap().allocate().unwrap();
            assert!(gsi >= 24, "{mode:?}");
            let r = c.routing();
            r.set_route(gsi, Some(MsiMessage::compose(0, false, 0, 0x61, false)))
                .unwrap();
            r.signal(gsi).unwrap();
            assert!(in_irr(&v, 0x61), "{mode:?}");
            // A one-off MSI too.
            r.signal_msi(MsiMessage::compose(0, false, 0, 0x62, false))
                .unwrap();
            assert!(in_irr(&v, 0x62), "{mode:?}");
        }
    }

    #[test]
    fn isa_irq_0_is_the_line_of_ioapic_pin_2_in_both_modes() {
        for mode in MODES {
            let (c, _) = chip(mode);
            assert_eq!(c.isa_line(0).pin(), 2, "{mode:?}");
            assert_eq!(c.isa_line(4).pin(), 4, "{mode:?}");
            assert_eq!(c.line(19).pin(), 19, "{mode:?}");
        }
    }

    #[test]
    fn a_line_raised_on_an_unmasked_edge_pin_delivers_its_vector_in_both_modes() {
        for mode in MODES {
            let (c, vm) = chip(mode);
            let v = vcpu(&vm);
            // The guest programs pin 4 (ISA IRQ 4): edge, vector 0x34, APIC 0.
            program_pin(&c, &vm, 4, 0x34);
            c.isa_line(4).pulse();
            assert!(in_irr(&v, 0x34), "{mode:?}");
            let counts = c.pin_counts();
            assert_eq!(counts.raised(4), Some(1), "{mode:?}");
            assert_eq!(counts.raised(9), (mode == IrqChipMode::Split).then_some(0));
            assert_eq!(
                matches!(counts, PinCounts::Ioapic(_)),
                mode == IrqChipMode::Split
            );
            assert_eq!(c.pin_routes()[4].vector, 0x34, "{mode:?}");
        }
    }

    /// Program pin `pin` as the guest would: RTE low word = vector, fixed,
    /// edge, unmasked, physical destination 0.
    fn program_pin(c: &Arc<dyn IrqChip>, vm: &kvm_ioctls::VmFd, pin: usize, vector: u8) {
        match c.userspace() {
            Some(u) => {
                use devices::BusDevice;
                let mut io = u.ioapic.lock().unwrap();
                let reg = 0x10 + 2 * pin as u32;
                io.write(0, &(reg + 1).to_le_bytes());
                io.write(0x10, &0u32.to_le_bytes());
                io.write(0, &reg.to_le_bytes());
                io.write(0x10, &u32::from(vector).to_le_bytes());
            }
            None => kernel::tests::program_pin(vm, pin, vector),
        }
    }

    #[test]
    fn a_state_saved_restores_into_a_chip_of_the_same_mode_only() {
        for mode in MODES {
            let (c, vm) = chip(mode);
            let _v = vcpu(&vm);
            program_pin(&c, &vm, 5, 0x45);
            let s = c.save().unwrap();
            assert_eq!(s.mode(), mode);
            let (c2, vm2) = chip(mode);
            let _v2 = vcpu(&vm2);
            c2.restore(&s).unwrap();
            assert_eq!(c2.pin_routes()[5].vector, 0x45, "{mode:?}");
            let other = if mode == IrqChipMode::Split {
                IrqChipMode::Kernel
            } else {
                IrqChipMode::Split
            };
            let (c3, _vm3) = chip(other);
            assert!(c3.restore(&s).is_err(), "{mode:?} state into {other:?}");
        }
    }
}
