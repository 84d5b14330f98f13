//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (page 0 kept free)
//! 0x0000_0500  GDT, 0x0000_0520 IDT (boot), 0x0000_7000 boot_params / multiboot info
//! 0x0000_9000  PML4, PDPT, PD (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (in the last KiB of base memory)
//! 0x000a_0000  legacy video / ROM hole (reserved in e820) up to 1 MiB
//! 0x000e_0000  ACPI tables (RSDP first), up to 0xF0000 (arch::acpi)
//! 0x000f_0000  MP configuration table when it does not fit at 0x9fc00
//! 0x0010_0000  kernel / guest image
//! ...          RAM below the MMIO hole
//! 0xC000_0000  MMIO hole: PCI 32-bit BAR window (256 MiB)
//! 0xD000_0000  virtio-mmio device windows (4 KiB each)
//! 0xE000_0000  PCI ECAM (bus 0: 1 MiB; reserved in e820, named in MCFG)
//! 0xFEC0_0000  I/O APIC (userspace)
//! 0xFEE0_0000  LAPIC (in KVM)
//! 0xFFFB_C000  KVM identity-map page, 0xFFFB_D000 KVM TSS (3 pages)
//! 0x1_0000_0000 RAM above 4 GiB, if the guest has more than the hole allows
//! ```

/// Start of the MMIO hole below 4 GiB; RAM stops here.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the hole (4 GiB); RAM resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// 32-bit PCI MMIO window for BARs (the host bridge's `_CRS` window).
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = VIRTIO_MMIO_START;
/// virtio-mmio device windows, one [`VIRTIO_MMIO_SIZE`] each, outside the
/// PCI window (the PCI segment decodes all of its window).
pub const VIRTIO_MMIO_START: u64 = 0xD000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_END: u64 = 0xD010_0000;
/// PCI Express enhanced configuration (ECAM) for bus 0: 32 devices x 8
/// functions x 4 KiB.
pub const PCI_ECAM_START: u64 = 0xE000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// Addresses KVM needs on Intel hosts (KVM_SET_IDENTITY_MAP_ADDR / TSS_ADDR).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;

pub const BOOT_GDT_ADDR: u64 = 0x500;
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// Linux zero page, or the multiboot information structure.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xA000;
/// Four page directories (0xB000..0xF000) map 4 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0xB000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Multiboot module list and strings.
pub const MB_MODS_ADDR: u64 = 0x3_0000;
/// Start of the EBDA-like area that holds the MP table.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// End of base memory (640 KiB); 0xA0000-0xFFFFF is reserved.
pub const EBDA_END: u64 = 0xA_0000;
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// The I/O APIC pin an ISA IRQ is wired to on this PC: IRQ 0 (the PIT) goes
/// to pin 2, IRQ 2 is the 8259 cascade and reaches no pin, IRQ n goes to pin
/// n. The MP table, the MADT and the devices all follow this one rule.
pub fn isa_irq_pin(irq: u8) -> Option<u8> {
    match irq {
        0 => Some(2),
        2 => None,
        1..=15 => Some(irq),
        _ => None,
    }
}

/// Smallest guest we accept (the boot structures plus a kernel need room).
pub const MIN_MEMORY: u64 = 16 << 20;

/// Guest RAM regions for `mem_size` bytes of RAM: below the hole, then
/// above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn isa_irq_0_reaches_pin_2_and_the_cascade_no_pin() {
        assert_eq!(isa_irq_pin(0), Some(2));
        assert_eq!(isa_irq_pin(2), None);
        assert_eq!(isa_irq_pin(4), Some(4));
        assert_eq!(isa_irq_pin(16), None);
    }

    #[test]
    fn mmio_windows_do_not_overlap() {
        let w = [
            (PCI_MMIO_START, PCI_MMIO_END),
            (VIRTIO_MMIO_START, VIRTIO_MMIO_END),
            (PCI_ECAM_START, PCI_ECAM_START + PCI_ECAM_SIZE),
            (IOAPIC_BASE, IOAPIC_BASE + 0x1000),
            (LAPIC_BASE, LAPIC_BASE + 0x1000),
        ];
        for (i, a) in w.iter().enumerate() {
            assert!(a.0 >= MMIO_HOLE_START && a.1 <= MMIO_HOLE_END);
            for b in &w[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }
}
