//! The boot GDT splitvm writes into guest memory, and its KVM segments.

use kvm_bindings::kvm_segment;

/// Selectors in the boot GDT. 0x10/0x18 are Linux's `__BOOT_CS`/`__BOOT_DS`.
pub const CODE32_SEL: u16 = 0x08;
pub const CODE64_SEL: u16 = 0x10;
pub const DATA_SEL: u16 = 0x18;
pub const TSS_SEL: u16 = 0x20;

/// Build a descriptor from flags (G, D/B, L, AVL + access byte), base, limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, flat 32-bit code, 64-bit code, flat data, TSS.
pub const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB, accessed
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code (L=1)
    gdt_entry(0xc093, 0, 0xfffff), // data, 4 GiB, accessed
    gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
];

/// Decode a descriptor into the segment KVM wants for `selector`.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        ((limit_raw as u32) << 12) | 0xfff
    } else {
        limit_raw as u32
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if present == 1 { 0 } else { 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_long_mode_present_flat() {
        let s = kvm_segment_from_gdt(BOOT_GDT[2], CODE64_SEL);
        assert_eq!((s.l, s.db, s.present, s.s, s.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
    }

    #[test]
    fn code32_segment_is_default_32bit() {
        let s = kvm_segment_from_gdt(BOOT_GDT[1], CODE32_SEL);
        assert_eq!((s.l, s.db, s.g), (0, 1, 1));
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0x67);
        let s = kvm_segment_from_gdt(e, 0x20);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x67);
        assert_eq!(s.type_, 0xb);
    }
}
