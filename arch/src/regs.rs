//! Boot-time register state for the boot vCPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::gdt::{self, BOOT_GDT};
use crate::layout::{BOOT_GDT_ADDR, BOOT_IDT_ADDR};
use crate::paging::setup_identity_paging;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CPU mode the boot vCPU starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, flat segments, paging off (multiboot).
    Protected32,
    /// 64-bit long mode with the first 4 GiB identity-mapped.
    Long64,
}

/// Write the boot GDT and an empty IDT into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
}

/// Fill `sregs` for `mode`; writes GDT, IDT and (for long mode) page tables.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), vm_memory::GuestMemoryError> {
    write_boot_tables(mem)?;
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;

    let (code_idx, code_sel) = match mode {
        EntryMode::Protected32 => (1, gdt::CODE32_SEL),
        EntryMode::Long64 => (2, gdt::CODE64_SEL),
    };
    sregs.cs = gdt::kvm_segment_from_gdt(BOOT_GDT[code_idx], code_sel);
    let data = gdt::kvm_segment_from_gdt(BOOT_GDT[3], gdt::DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::kvm_segment_from_gdt(BOOT_GDT[4], gdt::TSS_SEL);

    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE;
    match mode {
        EntryMode::Protected32 => {
            sregs.cr0 &= !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Long64 => {
            sregs.cr3 = setup_identity_paging(mem)?;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// General registers at entry.
pub fn boot_regs(entry: u64, stack: u64, rsi: u64, eax: u64, ebx: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: stack,
        rbp: stack,
        rsi,
        rax: eax,
        rbx: ebx,
        ..Default::default()
    }
}

/// FPU state after reset (x87 control word, MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn long_mode_entry_enables_paging_pae_and_lma() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mem(), EntryMode::Long64, &mut s).unwrap();
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, gdt::CODE64_SEL);
    }

    #[test]
    fn protected_mode_entry_has_paging_off_and_32bit_cs() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mem(), EntryMode::Protected32, &mut s).unwrap();
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
    }
}
