//! Identity page tables for 64-bit boot: the first 4 GiB with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Write PML4, PDPT and four page directories identity-mapping 0..4 GiB.
/// Returns the value for CR3.
pub fn setup_identity_paging(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT_ADDR + i * 8))?;
        let mut table = [0u64; 512];
        for (j, e) in table.iter_mut().enumerate() {
            *e = ((i << 30) + ((j as u64) << 21)) | PRESENT_RW | PAGE_SIZE_2M;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_map_covers_4gib_with_2mib_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(setup_identity_paging(&mem).unwrap(), PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 0x3000) | 3);
        // Last 2 MiB page: 0xFFE0_0000.
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xFFE0_0000 | 0x83);
    }
}
