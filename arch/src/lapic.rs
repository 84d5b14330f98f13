//! The local APIC's register page as KVM_GET_LAPIC / KVM_SET_LAPIC carry
//! it (the xAPIC layout, Intel SDM vol. 3, table 11-1): the one place that
//! knows its offsets. The LAPIC itself is KVM's; splitvm sets LINT0/LINT1
//! up at creation and reads the page for stuck-guest reports.

use std::os::raw::c_char;

/// The register page (`kvm_lapic_state.regs`).
pub type Regs = [c_char; 1024];

pub const TPR: usize = 0x80;
pub const PPR: usize = 0xa0;
/// Spurious-interrupt vector register; bit 8 enables the APIC in software.
pub const SVR: usize = 0xf0;
pub const SVR_ENABLE: u32 = 1 << 8;
pub const ISR: usize = 0x100;
pub const IRR: usize = 0x200;
pub const LVT_TIMER: usize = 0x320;
pub const LVT_LINT0: usize = 0x350;
pub const LVT_LINT1: usize = 0x360;
pub const TIMER_INITIAL_COUNT: usize = 0x380;
pub const TIMER_CURRENT_COUNT: usize = 0x390;
pub const TIMER_DIVIDE: usize = 0x3e0;

/// LVT bits.
pub const LVT_MASKED: u32 = 1 << 16;
pub const LVT_DELIVERY_MODE_SHIFT: u32 = 8;
pub const DELIVERY_NMI: u32 = 4;
pub const DELIVERY_EXTINT: u32 = 7;

/// The 32-bit register at `off`.
pub fn read(regs: &Regs, off: usize) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| regs[off + i] as u8))
}

/// Write the 32-bit register at `off`.
pub fn write(regs: &mut Regs, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as c_char;
    }
}

/// Set an LVT entry's delivery mode (bits 10:8), keeping the rest.
pub fn set_lvt_delivery_mode(regs: &mut Regs, off: usize, mode: u32) {
    let v = read(regs, off) & !(7 << LVT_DELIVERY_MODE_SHIFT);
    write(regs, off, v | mode << LVT_DELIVERY_MODE_SHIFT);
}

/// The highest vector set in the 256-bit register at `base` (ISR, IRR:
/// eight 32-bit words 16 bytes apart).
pub fn highest_vector(regs: &Regs, base: usize) -> Option<u8> {
    (0..8).rev().find_map(|w| {
        let v = read(regs, base + w * 0x10);
        (v != 0).then(|| (w * 32 + 31 - v.leading_zeros() as usize) as u8)
    })
}

/// Whether `vector` is set in the 256-bit register at `base`.
pub fn vector_set(regs: &Regs, base: usize, vector: u8) -> bool {
    read(regs, base + usize::from(vector / 32) * 0x10) >> (vector % 32) & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_vector_of_irr_is_found_across_words() {
        let mut r: Regs = [0; 1024];
        assert_eq!(highest_vector(&r, IRR), None);
        write(&mut r, IRR + 0x20, 1 << 1); // vector 0x41
        write(&mut r, IRR + 0x70, 1 << 31); // vector 0xff
        assert_eq!(highest_vector(&r, IRR), Some(0xff));
        assert!(vector_set(&r, IRR, 0x41) && !vector_set(&r, IRR, 0x40));
        write(&mut r, IRR + 0x70, 0);
        assert_eq!(highest_vector(&r, IRR), Some(0x41));
    }

    #[test]
    fn an_lvt_delivery_mode_change_keeps_the_other_bits() {
        let mut r: Regs = [0; 1024];
        write(&mut r, LVT_LINT0, LVT_MASKED | 0x30);
        set_lvt_delivery_mode(&mut r, LVT_LINT0, DELIVERY_EXTINT);
        assert_eq!(read(&r, LVT_LINT0), LVT_MASKED | 0x700 | 0x30);
    }
}
