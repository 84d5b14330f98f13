//! Guest physical memory layout.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (page 0 kept free)
//! 0x0000_0500  GDT, 0x0000_0520 IDT (boot), 0x0000_7000 boot_params / multiboot info
//! 0x0000_9000  PML4, PDPT, PD (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (in the last KiB of base memory)
//! 0x000a_0000  legacy video / ROM hole (reserved in e820) up to 1 MiB
//! 0x0010_0000  kernel / guest image
//! ...          RAM below the MMIO hole
//! 0xC000_0000  MMIO hole: PCI 32-bit window (up to 0xFEC0_0000)
//! 0xFEC0_0000  I/O APIC (userspace)
//! 0xFEE0_0000  LAPIC (in KVM)
//! 0xFFFB_C000  KVM identity-map page, 0xFFFB_D000 KVM TSS (3 pages)
//! 0x1_0000_0000 RAM above 4 GiB, if the guest has more than the hole allows
//! ```

/// Start of the MMIO hole below 4 GiB; RAM stops here.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End of the hole (4 GiB); RAM resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// 32-bit PCI MMIO window for BARs.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = IOAPIC_BASE;
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
