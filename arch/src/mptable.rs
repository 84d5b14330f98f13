//! Intel MultiProcessor Specification 1.4 table: tells a guest without ACPI
//! how many CPUs there are, where the I/O APIC is and how ISA (and PCI)
//! interrupt lines reach its pins.
//!
//! # Placement
//!
//! The 16-byte floating pointer structure ("_MP_") always sits at
//! [`MPTABLE_START`] (0x9FC00), the last KiB of base memory, one of the places
//! Linux scans (`smp_scan_config(639 * 0x400, 0x400)`). The configuration
//! table ("PCMP") follows it directly when both fit below 0xA0000: with the
//! fixed entries below that is up to [`MAX_CPUS_IN_BASE_MEMORY`] (40) vCPUs.
//! A larger table goes to [`MPTABLE_HIGH_START`] (0xF0000), the system BIOS
//! area where real firmware keeps it; it is reserved in the e820 map and
//! Linux reserves the table wherever the floating pointer says it is.
//!
//! Sizes: floating pointer 16 bytes; configuration table = 44 (header)
//! + 20 per CPU + 2 * 8 (buses) + 8 (I/O APIC) + 15 * 8 (ISA IRQs)
//! + 2 * 8 (LINT0, LINT1) + 8 per PCI interrupt = 204 + 20 * n (+ 8 * pci).
//!
//! # Bus numbering
//!
//! Linux compares the MP bus ID of a PCI interrupt entry directly with the
//! PCI bus number (`IO_APIC_get_PCI_irq_vector`), so the PCI bus gets MP bus
//! ID 0 (= PCI bus 0) and ISA gets ID 1 (as crosvm does).
//!
//! # I/O APIC ID
//!
//! The caller chooses it; it should be what the userspace I/O APIC reports in
//! its ID register. The MP spec wants APIC IDs unique on the APIC bus, so the
//! conventional choice is `num_cpus` (above every CPU's APIC ID). x86-64
//! Linux accepts any ID here (it only keeps I/O APIC IDs unique among I/O
//! APICs) and does not compare it with the register; note the register of a
//! real 82093AA (and KVM's in-kernel model) keeps only 4 bits.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA_END, IOAPIC_BASE, LAPIC_BASE, MPTABLE_START};

/// Where the configuration table goes when it does not fit in base memory.
pub const MPTABLE_HIGH_START: u64 = 0xF_0000;
/// End of the BIOS area (1 MiB).
pub const MPTABLE_HIGH_END: u64 = 0x10_0000;
/// Most vCPUs: APIC IDs are 8 bits, 0xFF is the broadcast ID, and one more ID
/// is left for an I/O APIC above the CPUs.
pub const MAX_CPUS: u8 = 254;
/// Most vCPUs whose table fits between MPTABLE_START and 0xA0000.
pub const MAX_CPUS_IN_BASE_MEMORY: u8 = 40;

/// Local APIC version (integrated APIC, as KVM's LAPIC reports).
pub const APIC_VERSION: u8 = 0x14;
/// I/O APIC version (matches the VER register of our I/O APIC).
pub const IOAPIC_VERSION: u8 = 0x20;
/// MP bus ID of PCI bus 0.
pub const PCI_BUS_ID: u8 = 0;
/// MP bus ID of the ISA bus.
pub const ISA_BUS_ID: u8 = 1;

const FPS_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const ENTRY_LEN: usize = 8;
const ISA_IRQS: usize = 15; // 0..=15 without IRQ 2 (the cascade)
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INT: u8 = 3;
const ENTRY_LOCAL_INT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
/// Family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IOAPIC_ENABLED: u8 = 1 << 0;
/// "Conforms to the bus": ISA = edge/active high, PCI = level/active low.
const FLAGS_CONFORMING: u16 = 0;

/// One PCI INTx line routed to an I/O APIC pin (bus 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIrq {
    /// PCI device number, 0..=31.
    pub device: u8,
    /// Interrupt pin, 0 = INTA# .. 3 = INTD#.
    pub pin: u8,
    /// I/O APIC input the line is wired to, 0..=23.
    pub ioapic_pin: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table needs at least one CPU")]
    NoCpus,
    #[error("{requested} vCPUs do not fit in an MP table (at most {max})")]
    TooManyCpus { requested: u8, max: u8 },
    #[error("I/O APIC ID {0:#x} is the APIC broadcast ID")]
    InvalidIoapicId(u8),
    #[error(
        "PCI interrupt device {device} pin {pin} -> I/O APIC pin {ioapic_pin} is out of range"
    )]
    InvalidPciIrq { device: u8, pin: u8, ioapic_pin: u8 },
    #[error(
        "MP configuration table of {size} bytes does not fit in the {room} bytes reserved for it"
    )]
    TableTooLarge { size: usize, room: usize },
    #[error("guest memory does not cover the MP table: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Size in bytes of the configuration table (header and entries).
pub fn config_table_size(num_cpus: u8, num_pci_irqs: usize) -> usize {
    HEADER_LEN
        + CPU_ENTRY_LEN * num_cpus as usize
        + ENTRY_LEN * (2 + 1 + ISA_IRQS + 2 + num_pci_irqs)
}

/// Guest address of the configuration table for this many entries.
pub fn config_table_addr(num_cpus: u8, num_pci_irqs: usize) -> u64 {
    let inline = MPTABLE_START + FPS_LEN as u64;
    if inline + config_table_size(num_cpus, num_pci_irqs) as u64 <= EBDA_END {
        inline
    } else {
        MPTABLE_HIGH_START
    }
}

/// Write the MP table for `num_cpus` vCPUs (APIC IDs 0..num_cpus, CPU 0 the
/// BSP) and an I/O APIC with ID `ioapic_id` at 0xFEC00000.
pub fn setup_mptable(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    ioapic_id: u8,
) -> Result<(), MptableError> {
    setup_mptable_with_pci(mem, num_cpus, ioapic_id, &[])
}

/// [`setup_mptable`] plus I/O interrupt entries for PCI INTx lines on bus 0.
pub fn setup_mptable_with_pci(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    ioapic_id: u8,
    pci_irqs: &[PciIrq],
) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: num_cpus,
            max: MAX_CPUS,
        });
    }
    if ioapic_id == 0xFF {
        return Err(MptableError::InvalidIoapicId(ioapic_id));
    }
    if let Some(bad) = pci_irqs
        .iter()
        .find(|p| p.device > 31 || p.pin > 3 || p.ioapic_pin > 23)
    {
        return Err(MptableError::InvalidPciIrq {
            device: bad.device,
            pin: bad.pin,
            ioapic_pin: bad.ioapic_pin,
        });
    }

    let size = config_table_size(num_cpus, pci_irqs.len());
    let table_addr = config_table_addr(num_cpus, pci_irqs.len());
    let room = if table_addr == MPTABLE_HIGH_START {
        (MPTABLE_HIGH_END - MPTABLE_HIGH_START) as usize
    } else {
        (EBDA_END - table_addr) as usize
    };
    if size > room {
        return Err(MptableError::TableTooLarge { size, room });
    }

    let table = build_config_table(num_cpus, ioapic_id, pci_irqs);
    debug_assert_eq!(table.len(), size);
    let fps = build_floating_pointer(table_addr as u32);
    mem.write_slice(&table, GuestAddress(table_addr))?;
    mem.write_slice(&fps, GuestAddress(MPTABLE_START))?;
    Ok(())
}

/// Byte that makes the sum of `bytes` zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

fn build_floating_pointer(table_addr: u32) -> [u8; FPS_LEN] {
    let mut f = [0u8; FPS_LEN];
    f[0..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&table_addr.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = SPEC_REV;
    // f[10] checksum; f[11] feature 1 = 0: a configuration table is present;
    // f[12] feature 2 bit 7 (IMCR) clear: virtual wire mode, no PIC mode.
    f[10] = checksum(&f);
    f
}

fn build_config_table(num_cpus: u8, ioapic_id: u8, pci_irqs: &[PciIrq]) -> Vec<u8> {
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };

    // Entries in ascending type order, as the spec requires.
    for id in 0..num_cpus {
        let mut e = [0u8; CPU_ENTRY_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id; // local APIC ID = vCPU index
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        push(&e);
    }
    for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
        let mut e = [0u8; ENTRY_LEN];
        e[0] = ENTRY_BUS;
        e[1] = id;
        e[2..8].copy_from_slice(name);
        push(&e);
    }
    {
        let mut e = [0u8; ENTRY_LEN];
        e[0] = ENTRY_IOAPIC;
        e[1] = ioapic_id;
        e[2] = IOAPIC_VERSION;
        e[3] = IOAPIC_ENABLED;
        e[4..8].copy_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
        push(&e);
    }
    let io_int = |bus: u8, bus_irq: u8, pin: u8| {
        let mut e = [0u8; ENTRY_LEN];
        e[0] = ENTRY_IO_INT;
        e[1] = INT_TYPE_INT;
        e[2..4].copy_from_slice(&FLAGS_CONFORMING.to_le_bytes());
        e[4] = bus;
        e[5] = bus_irq;
        e[6] = ioapic_id;
        e[7] = pin;
        e
    };
    // ISA IRQ 0 (the PIT) is wired to pin 2; IRQ 2 is the 8259 cascade and
    // has no entry; every other ISA IRQ n goes to pin n.
    for irq in 0u8..16 {
        if let Some(pin) = crate::layout::isa_irq_pin(irq) {
            push(&io_int(ISA_BUS_ID, irq, pin));
        }
    }
    for p in pci_irqs {
        push(&io_int(PCI_BUS_ID, (p.device << 2) | p.pin, p.ioapic_pin));
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        let mut e = [0u8; ENTRY_LEN];
        e[0] = ENTRY_LOCAL_INT;
        e[1] = kind;
        e[2..4].copy_from_slice(&FLAGS_CONFORMING.to_le_bytes());
        e[4] = ISA_BUS_ID;
        e[5] = 0;
        e[6] = 0xFF; // all local APICs
        e[7] = lint;
        push(&e);
    }

    let mut t = vec![0u8; HEADER_LEN];
    t[0..4].copy_from_slice(b"PCMP");
    let len = (HEADER_LEN + entries.len()) as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[6] = SPEC_REV;
    // t[7] checksum below
    t[8..16].copy_from_slice(b"SPLITVM ");
    t[16..28].copy_from_slice(b"SPLITVM     ");
    // t[28..32] OEM table pointer, t[32..34] OEM table size: none
    t[34..36].copy_from_slice(&count.to_le_bytes());
    t[36..40].copy_from_slice(&(LAPIC_BASE as u32).to_le_bytes());
    // t[40..42] extended table length, t[42] its checksum, t[43] reserved
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Floating pointer, configuration table, and the entries split up.
    fn parse(m: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
        let fps = read(m, MPTABLE_START, FPS_LEN);
        let addr = u32::from_le_bytes(fps[4..8].try_into().unwrap()) as u64;
        let hdr = read(m, addr, HEADER_LEN);
        let len = u16::from_le_bytes(hdr[4..6].try_into().unwrap()) as usize;
        let table = read(m, addr, len);
        let mut entries = Vec::new();
        let mut off = HEADER_LEN;
        while off < len {
            let n = if table[off] == ENTRY_PROCESSOR {
                CPU_ENTRY_LEN
            } else {
                ENTRY_LEN
            };
            entries.push(table[off..off + n].to_vec());
            off += n;
        }
        (fps, table, entries)
    }

    #[test]
    fn floating_pointer_and_config_table_checksums_are_zero() {
        for cpus in [1, 4, 40, 41, 64, MAX_CPUS] {
            let m = mem();
            setup_mptable(&m, cpus, cpus).unwrap();
            let (fps, table, _) = parse(&m);
            assert_eq!(&fps[0..4], b"_MP_");
            assert_eq!((fps[8], fps[9]), (1, 4));
            assert_eq!(sum(&fps), 0, "floating pointer, {cpus} cpus");
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(table[6], 4);
            assert_eq!(sum(&table), 0, "config table, {cpus} cpus");
            assert_eq!(&table[8..16], b"SPLITVM ");
            assert_eq!(&table[16..28], b"SPLITVM     ");
            let lapic = u32::from_le_bytes(table[36..40].try_into().unwrap());
            assert_eq!(lapic, 0xFEE0_0000);
        }
    }

    #[test]
    fn small_table_follows_the_floating_pointer_below_640k() {
        let m = mem();
        setup_mptable(&m, MAX_CPUS_IN_BASE_MEMORY, 0).unwrap();
        let fps = read(&m, MPTABLE_START, FPS_LEN);
        let addr = u32::from_le_bytes(fps[4..8].try_into().unwrap()) as u64;
        assert_eq!(addr, MPTABLE_START + 16);
        let size = config_table_size(MAX_CPUS_IN_BASE_MEMORY, 0) as u64;
        assert!(addr + size <= EBDA_END);
        assert_eq!(
            config_table_addr(MAX_CPUS_IN_BASE_MEMORY + 1, 0),
            MPTABLE_HIGH_START
        );
    }

    #[test]
    fn sixty_four_cpus_fit_with_the_config_table_in_the_bios_area() {
        let m = mem();
        setup_mptable(&m, 64, 64).unwrap();
        let (fps, _, entries) = parse(&m);
        let addr = u32::from_le_bytes(fps[4..8].try_into().unwrap()) as u64;
        assert_eq!(addr, MPTABLE_HIGH_START);
        let cpus = entries.iter().filter(|e| e[0] == ENTRY_PROCESSOR).count();
        assert_eq!(cpus, 64);
    }

    #[test]
    fn entry_count_matches_the_entries_written() {
        let m = mem();
        setup_mptable(&m, 3, 3).unwrap();
        let (_, table, entries) = parse(&m);
        let count = u16::from_le_bytes(table[34..36].try_into().unwrap());
        assert_eq!(count as usize, entries.len());
        // 3 CPUs, 2 buses, 1 I/O APIC, 15 ISA IRQs, 2 local interrupts
        assert_eq!(entries.len(), 3 + 2 + 1 + 15 + 2);
        assert_eq!(table.len(), config_table_size(3, 0));
        // Types are in ascending order.
        assert!(entries.windows(2).all(|w| w[0][0] <= w[1][0]));
    }

    #[test]
    fn cpu_entries_carry_apic_ids_in_order_and_only_cpu0_is_bsp() {
        let m = mem();
        setup_mptable(&m, 8, 8).unwrap();
        let (_, _, entries) = parse(&m);
        let cpus: Vec<_> = entries.iter().filter(|e| e[0] == ENTRY_PROCESSOR).collect();
        assert_eq!(cpus.len(), 8);
        for (i, e) in cpus.iter().enumerate() {
            assert_eq!(e[1] as usize, i, "APIC ID");
            assert_eq!(e[2], APIC_VERSION);
            assert_ne!(e[3] & CPU_ENABLED, 0);
            assert_eq!(e[3] & CPU_BSP != 0, i == 0);
        }
    }

    #[test]
    fn isa_irq0_is_routed_to_ioapic_pin2_and_irq2_is_absent() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let (_, _, entries) = parse(&m);
        let isa: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INT && e[4] == ISA_BUS_ID)
            .collect();
        assert_eq!(isa.len(), 15);
        for e in &isa {
            let (irq, pin) = (e[5], e[7]);
            assert_eq!(e[1], INT_TYPE_INT);
            assert_eq!(e[6], 1, "destination I/O APIC ID");
            assert_eq!(u16::from_le_bytes([e[2], e[3]]), 0, "conforming");
            assert_ne!(irq, 2);
            assert_eq!(pin, if irq == 0 { 2 } else { irq });
        }
        assert!(isa.iter().any(|e| e[5] == 0 && e[7] == 2));
    }

    #[test]
    fn buses_are_pci_0_and_isa_1() {
        let m = mem();
        setup_mptable(&m, 1, 1).unwrap();
        let (_, _, entries) = parse(&m);
        let buses: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_BUS)
            .map(|e| (e[1], e[2..8].to_vec()))
            .collect();
        assert_eq!(
            buses,
            vec![(0, b"PCI   ".to_vec()), (1, b"ISA   ".to_vec())]
        );
    }

    #[test]
    fn ioapic_entry_has_the_given_id_version_and_address() {
        let m = mem();
        setup_mptable(&m, 2, 2).unwrap();
        let (_, _, entries) = parse(&m);
        let io: Vec<_> = entries.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
        assert_eq!(io.len(), 1);
        assert_eq!((io[0][1], io[0][2], io[0][3]), (2, IOAPIC_VERSION, 1));
        let addr = u32::from_le_bytes(io[0][4..8].try_into().unwrap());
        assert_eq!(addr, 0xFEC0_0000);
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi_to_all_local_apics() {
        let m = mem();
        setup_mptable(&m, 2, 2).unwrap();
        let (_, _, entries) = parse(&m);
        let lints: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INT)
            .map(|e| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(
            lints,
            vec![(INT_TYPE_EXTINT, 0xFF, 0), (INT_TYPE_NMI, 0xFF, 1)]
        );
    }

    #[test]
    fn pci_irq_entries_use_pci_bus_and_device_pin_encoding() {
        let m = mem();
        let pci = [PciIrq {
            device: 3,
            pin: 1,
            ioapic_pin: 17,
        }];
        setup_mptable_with_pci(&m, 1, 1, &pci).unwrap();
        let (_, table, entries) = parse(&m);
        assert_eq!(sum(&table), 0);
        let e: Vec<_> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INT && e[4] == PCI_BUS_ID)
            .collect();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0][5], e[0][7]), ((3 << 2) | 1, 17));
        let bad = [PciIrq {
            device: 32,
            pin: 0,
            ioapic_pin: 16,
        }];
        assert!(matches!(
            setup_mptable_with_pci(&m, 1, 1, &bad),
            Err(MptableError::InvalidPciIrq { .. })
        ));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            setup_mptable(&mem(), 255, 0),
            Err(MptableError::TooManyCpus { requested: 255, .. })
        ));
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(
            setup_mptable(&mem(), 0, 0),
            Err(MptableError::NoCpus)
        ));
    }

    #[test]
    fn broadcast_ioapic_id_is_an_error() {
        assert!(matches!(
            setup_mptable(&mem(), 1, 0xFF),
            Err(MptableError::InvalidIoapicId(0xFF))
        ));
    }

    #[test]
    fn guest_memory_that_does_not_cover_the_table_is_an_error() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1, 1),
            Err(MptableError::GuestMemory(_))
        ));
    }
}
