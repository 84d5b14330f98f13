//! ACPI tables describing the machine splitvm builds, generated at start
//! with rust-vmm's `acpi_tables` crate (tables and AML).
//!
//! What is written (docs/acpi.md has the full list and the reasons):
//! - RSDP (revision 2) at [`RSDP_ADDR`], inside the legacy scan area
//!   0xE0000-0xFFFFF, and also given to Linux in the zero page;
//! - XSDT pointing at FADT, MADT, MCFG;
//! - FADT (full, not hardware-reduced: splitvm is a PC with an 8259 pair,
//!   a PIT and an SCI): PM1a event and control blocks and the PM timer at
//!   [`PM_BASE`], SCI on ISA IRQ 9, no SMI command port (ACPI mode is always
//!   on), the reset register at 0xCF9 (value 6, as PC chipsets), a FACS, and
//!   the DSDT;
//! - DSDT: the PCI host bridge (PNP0A08/PNP0A03 with bus 0, the 0xCF8 ports
//!   and the 32-bit memory window in `_CRS`), a motherboard resource device
//!   (PNP0C02) holding the ECAM window and the PM ports, each serial port
//!   (PNP0501), each virtio-mmio device (LNRO0005), and `\_S5_`;
//! - MADT: one local APIC entry per vCPU (local x2APIC entries for APIC IDs
//!   of 255 and above), the I/O APIC with GSI base 0, interrupt source
//!   overrides for ISA IRQ 0 (to GSI 2) and the SCI (IRQ 9, level,
//!   active high), local APIC NMI on LINT1, and PCAT_COMPAT (8259s present);
//! - MCFG: the ECAM window of segment 0, bus 0.
//!
//! The MP table (`mptable`) describes the same machine for kernels without
//! ACPI. The tables live between [`ACPI_START`] and [`ACPI_END`] (reserved
//! in the e820 map, like the rest of 0x9FC00-0xFFFFF).

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name,
    Package, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{facs::FACS, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{self, IOAPIC_BASE, LAPIC_BASE};

/// First byte of the ACPI area; the RSDP is here (16-byte aligned, inside
/// the 0xE0000-0xFFFFF area Linux scans).
pub const ACPI_START: u64 = 0xE_0000;
/// End of the ACPI area (the MP table's high copy starts at 0xF0000).
pub const ACPI_END: u64 = 0xF_0000;
pub const RSDP_ADDR: u64 = ACPI_START;

/// PM1a event block (status 2 bytes, enable 2 bytes).
pub const PM_BASE: u16 = 0x600;
pub const PM1A_EVT: u16 = PM_BASE;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block (2 bytes).
pub const PM1A_CNT: u16 = PM_BASE + 4;
pub const PM1_CNT_LEN: u8 = 2;
/// ACPI PM timer (24-bit, 3.579545 MHz; 4 bytes).
pub const PM_TMR: u16 = PM_BASE + 8;
pub const PM_TMR_LEN: u8 = 4;
/// Ports 0x600..0x60C belong to the PM device.
pub const PM_LEN: u16 = 12;
/// ISA IRQ of the SCI (level, active high, as PC chipsets wire it).
pub const SCI_IRQ: u8 = 9;
/// SLP_TYP value of S5 (soft off) in `\_S5_` and in PM1a_CNT writes.
pub const S5_SLP_TYP: u8 = 5;
/// Reset register (0xCF9, the PC chipset's reset control) and its value.
pub const RESET_PORT: u16 = 0xCF9;
pub const RESET_VALUE: u8 = 0x6;

const OEM_ID: [u8; 6] = *b"SPLTVM";
const OEM_TABLE_ID: [u8; 8] = *b"SPLITVM ";
const OEM_REVISION: u32 = 1;

/// MADT entry types (ACPI 6.5, 5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_ISO: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_LOCAL_X2APIC_NMI: u8 = 0xA;
/// MADT flag: the machine also has dual 8259s.
const MADT_PCAT_COMPAT: u32 = 1;
/// Local APIC flags: enabled.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: polarity (bits 1:0) 01 = active high, 11 = active low;
/// trigger (bits 3:2) 01 = edge, 11 = level.
pub const INTI_EDGE_HIGH: u16 = 0b0101;
pub const INTI_LEVEL_HIGH: u16 = 0b1101;
/// The largest APIC ID a (non-x2) local APIC entry can name.
const MAX_XAPIC_ID: u32 = 254;

/// One serial port: base port and ISA IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialPort {
    pub base: u16,
    pub irq: u8,
}

/// One virtio-mmio device: window and I/O APIC pin (GSI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs; vCPU i has APIC ID i (and ACPI processor UID i).
    pub num_cpus: u32,
    /// I/O APIC ID (the same one the MP table names).
    pub ioapic_id: u8,
    /// The PCI host bridge's 32-bit memory window `[start, end)`.
    pub pci_mmio: (u64, u64),
    /// ECAM window of bus 0 `(base, size)`.
    pub ecam: (u64, u64),
    pub serial: Vec<SerialPort>,
    pub virtio_mmio: Vec<VirtioMmio>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need at least one CPU")]
    NoCpus,
    #[error("ACPI tables of {size} bytes do not fit in the {room} bytes reserved for them")]
    TooLarge { size: u64, room: u64 },
    #[error("guest memory does not cover the ACPI tables: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The tables, each with the guest address it is written at.
#[derive(Debug, Clone)]
pub struct Tables {
    pub rsdp: Vec<u8>,
    pub xsdt: (u64, Vec<u8>),
    pub fadt: (u64, Vec<u8>),
    pub facs: (u64, Vec<u8>),
    pub dsdt: (u64, Vec<u8>),
    pub madt: (u64, Vec<u8>),
    pub mcfg: (u64, Vec<u8>),
}

impl Tables {
    /// Every table but the RSDP, with its address.
    pub fn all(&self) -> [&(u64, Vec<u8>); 6] {
        [
            &self.xsdt, &self.fadt, &self.facs, &self.dsdt, &self.madt, &self.mcfg,
        ]
    }
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Generate the tables for `cfg`, laid out from [`ACPI_START`].
pub fn build(cfg: &AcpiConfig) -> Result<Tables, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let dsdt = dsdt(cfg);
    let madt = madt(cfg);
    let mcfg = {
        let mut m = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        let buses = (cfg.ecam.1 >> 20).clamp(1, 256);
        m.add_ecam(cfg.ecam.0, 0, 0, (buses - 1) as u8);
        bytes_of(&m)
    };
    let facs = bytes_of(&FACS::new());

    // Layout: RSDP (36 bytes), then FACS (64-byte aligned), then the rest
    // 8-byte aligned; the XSDT last, once every address is known.
    let align = |a: u64, n: u64| (a + n - 1) & !(n - 1);
    let facs_at = align(RSDP_ADDR + Rsdp::len() as u64, 64);
    let dsdt_at = align(facs_at + facs.len() as u64, 8);
    let fadt_at = align(dsdt_at + dsdt.len() as u64, 8);
    let fadt = fadt(dsdt_at, facs_at);
    let madt_at = align(fadt_at + fadt.len() as u64, 8);
    let mcfg_at = align(madt_at + madt.len() as u64, 8);
    let xsdt_at = align(mcfg_at + mcfg.len() as u64, 8);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for a in [fadt_at, madt_at, mcfg_at] {
        xsdt.add_entry(a);
    }
    let xsdt = bytes_of(&xsdt);
    let end = xsdt_at + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            size: end - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }
    Ok(Tables {
        rsdp: bytes_of(&Rsdp::new(OEM_ID, xsdt_at)),
        xsdt: (xsdt_at, xsdt),
        fadt: (fadt_at, fadt),
        facs: (facs_at, facs),
        dsdt: (dsdt_at, dsdt),
        madt: (madt_at, madt),
        mcfg: (mcfg_at, mcfg),
    })
}

/// Generate the tables and write them to guest memory. Returns the RSDP's
/// address (for the zero page).
pub fn setup_acpi(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let t = build(cfg)?;
    mem.write_slice(&t.rsdp, GuestAddress(RSDP_ADDR))?;
    for (addr, bytes) in t.all() {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(RSDP_ADDR)
}

fn io_gas(port: u16, bits: u8) -> GAS {
    let size = match bits {
        8 => AccessSize::ByteAccess,
        16 => AccessSize::WordAccess,
        _ => AccessSize::DwordAccess,
    };
    GAS::new(GasSpace::SystemIo, bits, 0, size, port.into())
}

fn fadt(dsdt_at: u64, facs_at: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_at)
        .firmware_ctrl_64(facs_at)
        // WBINVD works; C1 (hlt) on every CPU; a reset register; no
        // power/sleep buttons (fixed-feature buttons absent).
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        // The legacy 32-bit DSDT/FACS fields stay zero: X_DSDT/X_FIRMWARE_CTRL
        // are used (ACPI 2.0+).
        ;
    f.sci_int = u16::from(SCI_IRQ).into();
    // smi_cmd = 0: no SMI command port, the machine is always in ACPI mode.
    f.pm1a_evt_blk = u32::from(PM1A_EVT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT).into();
    f.pm_tmr_blk = u32::from(PM_TMR).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT, PM1_EVT_LEN * 8);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT, PM1_CNT_LEN * 8);
    f.x_pm_tmr_blk = io_gas(PM_TMR, PM_TMR_LEN * 8);
    // C2/C3 not supported (latencies above 100 / 1000 us say so).
    f.p_lvl2_lat = 101u16.into();
    f.p_lvl3_lat = 1001u16.into();
    // IA-PC boot architecture: legacy devices (bit 0) and an 8042 (bit 1,
    // the reset line); no VGA (bit 2); MSI works (bit 3 clear); no CMOS
    // RTC (bit 5).
    f.iapc_boot_arch = (1u16 | 1 << 1 | 1 << 2 | 1 << 5).into();
    f.reset_reg = io_gas(RESET_PORT, 8);
    f.reset_value = RESET_VALUE;
    bytes_of(&f.finalize())
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_BASE as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cfg.num_cpus {
        if id <= MAX_XAPIC_ID {
            let mut e = [0u8; 8];
            e[0] = MADT_LOCAL_APIC;
            e[1] = 8;
            e[2] = id as u8; // ACPI processor UID
            e[3] = id as u8; // APIC ID
            e[4..8].copy_from_slice(&LAPIC_ENABLED.to_le_bytes());
            t.append_slice(&e);
        } else {
            let mut e = [0u8; 16];
            e[0] = MADT_LOCAL_X2APIC;
            e[1] = 16;
            e[4..8].copy_from_slice(&id.to_le_bytes()); // x2APIC ID
            e[8..12].copy_from_slice(&LAPIC_ENABLED.to_le_bytes());
            e[12..16].copy_from_slice(&id.to_le_bytes()); // UID
            t.append_slice(&e);
        }
    }
    let mut io = [0u8; 12];
    io[0] = MADT_IO_APIC;
    io[1] = 12;
    io[2] = cfg.ioapic_id;
    io[4..8].copy_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    // GSI base 0: pin n is GSI n.
    t.append_slice(&io);
    for (irq, flags) in [(0u8, INTI_EDGE_HIGH), (SCI_IRQ, INTI_LEVEL_HIGH)] {
        let gsi = layout::isa_irq_pin(irq).unwrap_or(irq) as u32;
        let mut e = [0u8; 10];
        e[0] = MADT_ISO;
        e[1] = 10;
        e[2] = 0; // bus: ISA
        e[3] = irq;
        e[4..8].copy_from_slice(&gsi.to_le_bytes());
        e[8..10].copy_from_slice(&flags.to_le_bytes());
        t.append_slice(&e);
    }
    // NMI on LINT1 of every local APIC (UID 0xFF / 0xFFFFFFFF: all).
    t.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xFF, INTI_EDGE_HIGH as u8, 0, 1]);
    if cfg.num_cpus > MAX_XAPIC_ID + 1 {
        let mut e = [0u8; 12];
        e[0] = MADT_LOCAL_X2APIC_NMI;
        e[1] = 12;
        e[2..4].copy_from_slice(&INTI_EDGE_HIGH.to_le_bytes());
        e[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        e[8] = 1; // LINT1
        t.append_slice(&e);
    }
    t.as_slice().to_vec()
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut sb: Vec<Vec<u8>> = Vec::new();

    // PCI host bridge: bus 0, config mechanism #1 ports, the BAR window.
    let (mmio_start, mmio_end) = cfg.pci_mmio;
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = IO::new(0xCF8, 0xCF8, 1, 8);
    let window = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio_start as u32,
        (mmio_end - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg_io, &window]);
    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    sb.push(bytes_of(&Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_CID".into(), &cid),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    )));

    // Motherboard resources: the ECAM window and the PM ports, so the OS
    // knows they are taken (Linux checks MCFG windows against these).
    let ecam = Memory32Fixed::new(false, cfg.ecam.0 as u32, cfg.ecam.1 as u32);
    let pm = IO::new(PM_BASE, PM_BASE, 1, PM_LEN as u8);
    let crs = ResourceTemplate::new(vec![&ecam, &pm]);
    let hid = EISAName::new("PNP0C02");
    sb.push(bytes_of(&Device::new(
        "MBRD".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    )));

    for (i, s) in cfg.serial.iter().enumerate() {
        let io = IO::new(s.base, s.base, 1, 8);
        let irq = Interrupt::new(true, true, false, false, s.irq.into());
        let crs = ResourceTemplate::new(vec![&io, &irq]);
        let hid = EISAName::new("PNP0501");
        let uid = i as u32;
        sb.push(bytes_of(&Device::new(
            format!("COM{}", i + 1).as_str().into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CRS".into(), &crs),
            ],
        )));
    }

    for (i, v) in cfg.virtio_mmio.iter().enumerate() {
        let mem = Memory32Fixed::new(true, v.base as u32, v.size as u32);
        let irq = Interrupt::new(true, true, false, false, v.gsi);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        let hid = "LNRO0005";
        let uid = i as u32;
        sb.push(bytes_of(&Device::new(
            format!("VR{i:02X}").as_str().into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CRS".into(), &crs),
            ],
        )));
    }

    let children: Vec<RawAml> = sb.into_iter().map(RawAml).collect();
    let refs: Vec<&dyn Aml> = children.iter().map(|c| c as &dyn Aml).collect();
    let scope = Scope::new("_SB_".into(), refs);
    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5_typ = S5_SLP_TYP;
    let s5 = Package::new(vec![&s5_typ, &s5_typ, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5);

    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&bytes_of(&scope));
    t.append_slice(&bytes_of(&s5));
    t.as_slice().to_vec()
}

/// Already-encoded AML, so devices built in a loop can share one scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cpus: u32) -> AcpiConfig {
        AcpiConfig {
            num_cpus: cpus,
            ioapic_id: cpus.min(254) as u8,
            pci_mmio: (0xC000_0000, 0xD000_0000),
            ecam: (0xE000_0000, 1 << 20),
            serial: vec![SerialPort {
                base: 0x3F8,
                irq: 4,
            }],
            virtio_mmio: vec![VirtioMmio {
                base: 0xD000_0000,
                size: 0x1000,
                gsi: 5,
            }],
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn length_field(t: &[u8]) -> usize {
        u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize
    }

    /// (type, bytes) of each MADT entry.
    fn madt_entries(t: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < t.len() {
            let (ty, len) = (t[off], t[off + 1] as usize);
            out.push((ty, t[off..off + len].to_vec()));
            off += len;
        }
        out
    }

    #[test]
    fn every_table_has_a_zero_checksum_and_its_own_length() {
        let t = build(&cfg(2)).unwrap();
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[0..20]), 0, "RSDP checksum (first 20 bytes)");
        assert_eq!(sum(&t.rsdp), 0, "RSDP extended checksum");
        for (sig, (_, bytes)) in [
            (b"XSDT", &t.xsdt),
            (b"FACP", &t.fadt),
            (b"DSDT", &t.dsdt),
            (b"APIC", &t.madt),
            (b"MCFG", &t.mcfg),
        ] {
            assert_eq!(&bytes[0..4], sig);
            assert_eq!(length_field(bytes), bytes.len(), "{sig:?} length");
            assert_eq!(sum(bytes), 0, "{sig:?} checksum");
        }
        assert_eq!(&t.facs.1[0..4], b"FACS");
        assert_eq!(length_field(&t.facs.1), 64);
        assert_eq!(t.facs.0 % 64, 0, "FACS is 64-byte aligned");
    }

    #[test]
    fn rsdp_and_xsdt_point_at_every_table() {
        let t = build(&cfg(1)).unwrap();
        let xsdt_addr = u64::from_le_bytes(t.rsdp[24..32].try_into().unwrap());
        assert_eq!(xsdt_addr, t.xsdt.0);
        let entries: Vec<u64> = t.xsdt.1[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![t.fadt.0, t.madt.0, t.mcfg.0]);
        // FADT: X_FIRMWARE_CTRL at 132, X_DSDT at 140.
        let f = &t.fadt.1;
        assert_eq!(
            u64::from_le_bytes(f[132..140].try_into().unwrap()),
            t.facs.0
        );
        assert_eq!(
            u64::from_le_bytes(f[140..148].try_into().unwrap()),
            t.dsdt.0
        );
        for (a, b) in t.all() {
            assert!(*a >= ACPI_START && a + b.len() as u64 <= ACPI_END);
        }
    }

    #[test]
    fn fadt_names_the_pm_ports_the_sci_and_the_reset_register() {
        let t = build(&cfg(1)).unwrap();
        let f = &t.fadt.1;
        let u16_at = |o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        assert_eq!(u16_at(46), SCI_IRQ as u16, "SCI_INT");
        assert_eq!(u32_at(48), 0, "no SMI command port: always in ACPI mode");
        assert_eq!(u32_at(56), PM1A_EVT as u32);
        assert_eq!(u32_at(64), PM1A_CNT as u32);
        assert_eq!(u32_at(76), PM_TMR as u32);
        assert_eq!(
            (f[88], f[89], f[91]),
            (4, 2, 4),
            "PM1 evt/cnt, timer lengths"
        );
        let flags = u32_at(112);
        assert_eq!(flags & Flags::HwReducedAcpi as u32, 0, "a full FADT");
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // RESET_REG: GAS at 116 (system I/O, 8 bits, 0xCF9), value at 128.
        assert_eq!(f[116], 1);
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0xCF9);
        assert_eq!(f[128], RESET_VALUE);
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu_the_ioapic_and_the_overrides() {
        let t = build(&cfg(3)).unwrap();
        let m = &t.madt.1;
        assert_eq!(
            u32::from_le_bytes(m[36..40].try_into().unwrap()),
            0xFEE0_0000
        );
        assert_eq!(u32::from_le_bytes(m[40..44].try_into().unwrap()), 1);
        let e = madt_entries(m);
        let lapics: Vec<_> = e.iter().filter(|(t, _)| *t == MADT_LOCAL_APIC).collect();
        assert_eq!(lapics.len(), 3);
        for (i, (_, b)) in lapics.iter().enumerate() {
            assert_eq!((b[2], b[3], b[4]), (i as u8, i as u8, 1));
        }
        let io: Vec<_> = e.iter().filter(|(t, _)| *t == MADT_IO_APIC).collect();
        assert_eq!(io.len(), 1);
        assert_eq!(io[0].1[2], 3, "I/O APIC ID");
        assert_eq!(&io[0].1[4..8], &0xFEC0_0000u32.to_le_bytes());
        assert_eq!(&io[0].1[8..12], &0u32.to_le_bytes(), "GSI base");
        let isos: Vec<(u8, u32, u16)> = e
            .iter()
            .filter(|(t, _)| *t == MADT_ISO)
            .map(|(_, b)| {
                (
                    b[3],
                    u32::from_le_bytes(b[4..8].try_into().unwrap()),
                    u16::from_le_bytes(b[8..10].try_into().unwrap()),
                )
            })
            .collect();
        assert_eq!(isos, vec![(0, 2, 0b0101), (9, 9, 0b1101)]);
        let nmi: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == MADT_LOCAL_APIC_NMI)
            .collect();
        assert_eq!(nmi.len(), 1);
        assert_eq!((nmi[0].1[2], nmi[0].1[5]), (0xFF, 1), "all CPUs, LINT1");
        assert!(!e.iter().any(|(t, _)| *t == MADT_LOCAL_X2APIC));
    }

    #[test]
    fn apic_ids_from_255_get_local_x2apic_entries() {
        let t = build(&cfg(300)).unwrap();
        let e = madt_entries(&t.madt.1);
        let xapic = e.iter().filter(|(t, _)| *t == MADT_LOCAL_APIC).count();
        let x2: Vec<u32> = e
            .iter()
            .filter(|(t, _)| *t == MADT_LOCAL_X2APIC)
            .map(|(_, b)| u32::from_le_bytes(b[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(xapic, 255, "APIC IDs 0..=254");
        assert_eq!(x2, (255..300).collect::<Vec<u32>>());
        assert_eq!(
            e.iter()
                .filter(|(t, _)| *t == MADT_LOCAL_X2APIC_NMI)
                .count(),
            1
        );
        assert_eq!(sum(&t.madt.1), 0);
    }

    #[test]
    fn mcfg_names_the_ecam_window_of_bus_0() {
        let t = build(&cfg(1)).unwrap();
        let m = &t.mcfg.1;
        assert_eq!(m.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(m[44..52].try_into().unwrap()),
            0xE000_0000
        );
        assert_eq!((m[54], m[55]), (0, 0), "segment 0, buses 0..=0");
    }

    #[test]
    fn dsdt_holds_the_host_bridge_serial_virtio_and_s5() {
        let t = build(&cfg(1)).unwrap();
        let d = &t.dsdt.1;
        let has = |s: &[u8]| d.windows(s.len()).any(|w| w == s);
        for name in [
            &b"PCI0"[..],
            b"MBRD",
            b"COM1",
            b"VR00",
            b"_S5_",
            b"LNRO0005",
            b"_CRS",
        ] {
            assert!(has(name), "DSDT lacks {}", String::from_utf8_lossy(name));
        }
        // EISA IDs are compressed: PNP0A08 = 41 D0 0A 08.
        assert!(has(&[0x41, 0xD0, 0x0A, 0x08]), "PNP0A08");
        assert!(has(&[0x41, 0xD0, 0x05, 0x01]), "PNP0501");
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(build(&cfg(0)), Err(AcpiError::NoCpus)));
    }

    #[test]
    fn too_many_cpus_for_the_area_is_an_error_not_a_panic() {
        assert!(matches!(
            build(&cfg(10_000)),
            Err(AcpiError::TooLarge { .. })
        ));
    }
}

#[cfg(test)]
mod iasl {
    use super::*;

    /// The DSDT disassembles with ACPICA's `iasl -d` (Debian's acpica-tools,
    /// installed by scripts/setup.sh) without errors.
    #[test]
    fn dsdt_disassembles_with_iasl_without_errors() {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            panic!("iasl not found: run scripts/setup.sh (installs acpica-tools)");
        }
        let cfg = AcpiConfig {
            num_cpus: 2,
            ioapic_id: 2,
            pci_mmio: (0xC000_0000, 0xD000_0000),
            ecam: (0xE000_0000, 1 << 20),
            serial: vec![
                SerialPort {
                    base: 0x3F8,
                    irq: 4,
                },
                SerialPort {
                    base: 0x2F8,
                    irq: 3,
                },
            ],
            virtio_mmio: (0..3)
                .map(|i| VirtioMmio {
                    base: 0xD000_0000 + i * 0x1000,
                    size: 0x1000,
                    gsi: 5 + i as u32,
                })
                .collect(),
        };
        let t = build(&cfg).unwrap();
        let dir = std::env::temp_dir().join(format!("splitvm-iasl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, (_, bytes)) in [
            ("dsdt", &t.dsdt),
            ("facp", &t.fadt),
            ("apic", &t.madt),
            ("mcfg", &t.mcfg),
        ] {
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(&dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {text}");
            assert!(
                !text.contains("Error") && !text.contains("Warning"),
                "iasl -d {name}: {text}"
            );
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            if name == "dsdt" {
                for want in [
                    "PNP0A08", "PNP0A03", "PNP0501", "LNRO0005", "PNP0C02", "_S5_", "0x0CF8",
                ] {
                    assert!(dsl.contains(want), "DSDT lacks {want}:\n{dsl}");
                }
            }
        }
        if std::env::var_os("SPLITVM_KEEP_IASL").is_none() {
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}
