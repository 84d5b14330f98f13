//! Type 0 PCI configuration space (PCI Local Bus 3.0, 6.1-6.2).
//!
//! What is modelled:
//! - Read-only identity: vendor/device, class code, revision, subsystem
//!   ids, header type 0 (single function), interrupt pin.
//! - Command register: memory space (bit 1), bus master (bit 2), parity
//!   error response (6), SERR# (8) and INTx disable (10) are writable; I/O
//!   space (bit 0) is hardwired to 0 since there are no I/O BARs. Status is
//!   read-only: bit 4 (capability list) when there are capabilities; no
//!   error bits are ever set, so there is nothing to write-1-to-clear.
//! - Cache line size and interrupt line are plain read/write bytes.
//! - Memory BARs (32-bit, or 64-bit over two slots), naturally aligned
//!   power-of-two sizes, with sizing semantics: the address bits below the
//!   size are hardwired to 0, so writing all-ones reads back the size mask
//!   (plus the read-only type bits). No I/O BARs, no expansion ROM (reads 0).
//! - A capability list from 0x40 with the MSI and MSI-X capabilities backed
//!   by [`MsiConfig`] / [`MsixConfig`], and plain (vendor) capabilities.
//!
//! Accesses are byte-granular within one dword; anything else (a 3-byte
//! access, one crossing a dword, a register past 0xFF) is ignored and reads
//! all-ones, which the config mechanism counts before it gets here.

use super::{MsiConfig, MsixConfig, PciError};

pub const NUM_BARS: usize = 6;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_MSIX: u8 = 0x11;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const COMMAND_WRITABLE: u32 =
    (COMMAND_MEMORY | COMMAND_BUS_MASTER | 1 << 6 | 1 << 8) as u32 | COMMAND_INTX_DISABLE as u32;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

const REG_COMMAND: usize = 1;
const REG_BAR0: usize = 4;
const REG_CAP_PTR: usize = 0x34 / 4;
const REG_INTERRUPT: usize = 0x3c / 4;
const CONFIG_DWORDS: usize = 64;
const FIRST_CAP: usize = 0x40;

/// Identity registers of a function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciIds {
    pub vendor_id: u16,
    pub device_id: u16,
    /// Base class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    pub revision: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 = no INTx pin, 1..4 = INTA#..INTD#.
    pub interrupt_pin: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mem32,
    /// Occupies this BAR slot and the next one (upper address dword).
    Mem64,
}

#[derive(Debug, Clone, Copy, Default)]
enum BarSlot {
    #[default]
    Unused,
    Mem {
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    },
    /// Upper dword of the 64-bit BAR in the previous slot.
    Upper,
}

enum CapHandler {
    Plain,
    Msi(MsiConfig),
    Msix(MsixConfig),
}

struct Capability {
    offset: usize,
    len: usize,
    handler: CapHandler,
}

impl Capability {
    /// Bytes (relative to the capability) whose value lives in the handler.
    fn dynamic(&self) -> std::ops::Range<usize> {
        match self.handler {
            CapHandler::Plain => 0..0,
            CapHandler::Msix(_) => 2..4,
            CapHandler::Msi(_) => 2..self.len,
        }
    }
}

/// A type 0 configuration header with capabilities.
pub struct PciConfiguration {
    regs: [u32; CONFIG_DWORDS],
    writable: [u32; CONFIG_DWORDS],
    bars: [BarSlot; NUM_BARS],
    caps: Vec<Capability>,
    next_cap: usize,
}

impl PciConfiguration {
    pub fn new(ids: PciIds) -> Self {
        let mut regs = [0u32; CONFIG_DWORDS];
        let mut writable = [0u32; CONFIG_DWORDS];
        regs[0] = u32::from(ids.device_id) << 16 | u32::from(ids.vendor_id);
        regs[2] = (ids.class_code & 0xff_ffff) << 8 | u32::from(ids.revision);
        regs[11] = u32::from(ids.subsystem_id) << 16 | u32::from(ids.subsystem_vendor_id);
        regs[REG_INTERRUPT] = u32::from(ids.interrupt_pin.min(4)) << 8;
        writable[REG_COMMAND] = COMMAND_WRITABLE;
        writable[3] = 0xff; // cache line size
        writable[REG_INTERRUPT] = 0xff; // interrupt line
        PciConfiguration {
            regs,
            writable,
            bars: [BarSlot::Unused; NUM_BARS],
            caps: Vec::new(),
            next_cap: FIRST_CAP,
        }
    }

    pub fn vendor_id(&self) -> u16 {
        self.regs[0] as u16
    }

    pub fn device_id(&self) -> u16 {
        (self.regs[0] >> 16) as u16
    }

    pub fn command(&self) -> u16 {
        self.regs[REG_COMMAND] as u16
    }

    pub fn status(&self) -> u16 {
        (self.regs[REG_COMMAND] >> 16) as u16
    }

    /// Memory space decoding (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Set command bits as firmware would (e.g. memory decoding after BAR
    /// allocation). Only writable bits take effect.
    pub fn set_command_bits(&mut self, bits: u16) {
        self.regs[REG_COMMAND] |= u32::from(bits) & COMMAND_WRITABLE;
    }

    /// Declare memory BAR `index` of `size` bytes (a power of two, at least
    /// 16; at most 2 GiB for 32-bit BARs). A 64-bit BAR also takes slot
    /// `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        let max = if kind == BarKind::Mem64 {
            1 << 63
        } else {
            1 << 31
        };
        if index + slots > NUM_BARS
            || !size.is_power_of_two()
            || !(16..=max).contains(&size)
            || (index..index + slots).any(|i| !matches!(self.bars[i], BarSlot::Unused))
        {
            return Err(PciError::InvalidBar(index));
        }
        self.bars[index] = BarSlot::Mem {
            size,
            kind,
            prefetchable,
        };
        if kind == BarKind::Mem64 {
            self.bars[index + 1] = BarSlot::Upper;
        }
        self.regs[REG_BAR0 + index] = self.bar_low_value(index, 0);
        Ok(())
    }

    /// Implemented memory BARs: (index, size, kind).
    pub fn memory_bars(&self) -> Vec<(usize, u64, BarKind)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match *b {
                BarSlot::Mem { size, kind, .. } => Some((i, size, kind)),
                _ => None,
            })
            .collect()
    }

    /// Size of memory BAR `index`, if implemented.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Mem { size, .. } => Some(*size),
            _ => None,
        }
    }

    /// The address BAR `index` is programmed with (whether or not memory
    /// decoding is on), if implemented.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Mem { kind, .. } => {
                let low = u64::from(self.regs[REG_BAR0 + index] & !0xf);
                let high = match kind {
                    BarKind::Mem64 => u64::from(self.regs[REG_BAR0 + index + 1]) << 32,
                    BarKind::Mem32 => 0,
                };
                Some(high | low)
            }
            _ => None,
        }
    }

    /// Program BAR `index` (firmware-style allocation). Address bits below
    /// the size are dropped, as a guest write would.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        if let Some(BarSlot::Mem { kind, .. }) = self.bars.get(index).copied() {
            self.regs[REG_BAR0 + index] = self.bar_low_value(index, addr as u32);
            if kind == BarKind::Mem64 {
                self.regs[REG_BAR0 + index + 1] = self.bar_high_value(index, (addr >> 32) as u32);
            }
        }
    }

    fn bar_low_value(&self, index: usize, value: u32) -> u32 {
        match self.bars[index] {
            BarSlot::Mem {
                size,
                kind,
                prefetchable,
            } => {
                let mask = !(size - 1) as u32 & !0xf;
                let ty = if kind == BarKind::Mem64 { 0b100 } else { 0 };
                (value & mask) | ty | if prefetchable { 0b1000 } else { 0 }
            }
            BarSlot::Upper => self.bar_high_value(index - 1, value),
            BarSlot::Unused => 0,
        }
    }

    fn bar_high_value(&self, low_index: usize, value: u32) -> u32 {
        match self.bars[low_index] {
            BarSlot::Mem { size, .. } => value & !((size - 1) >> 32) as u32,
            _ => 0,
        }
    }

    /// Add a capability with ID `id` whose bytes after the ID/next pointer
    /// are `body`; `writable` (same length as `body`, or empty for none)
    /// marks guest-writable bits. Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciError> {
        self.push_capability(id, body, writable, CapHandler::Plain)
    }

    /// Add the MSI-X capability for `msix`: table at `table_offset` in BAR
    /// `table_bar`, PBA at `pba_offset` in BAR `pba_bar` (offsets 8-byte
    /// aligned). Message control is backed by `msix`.
    pub fn add_msix_capability(
        &mut self,
        msix: MsixConfig,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Result<usize, PciError> {
        if table_bar as usize >= NUM_BARS
            || pba_bar as usize >= NUM_BARS
            || table_offset & 7 != 0
            || pba_offset & 7 != 0
        {
            return Err(PciError::InvalidBar(table_bar.max(pba_bar) as usize));
        }
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&msix.read_control().to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        self.push_capability(CAP_ID_MSIX, &body, &[], CapHandler::Msix(msix))
    }

    /// Add the MSI capability backed by `msi`.
    pub fn add_msi_capability(&mut self, msi: MsiConfig) -> Result<usize, PciError> {
        let body = vec![0u8; msi.cap_len() - 2];
        self.push_capability(CAP_ID_MSI, &body, &[], CapHandler::Msi(msi))
    }

    fn push_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
        handler: CapHandler,
    ) -> Result<usize, PciError> {
        let offset = self.next_cap;
        let len = body.len() + 2;
        if offset + len > CONFIG_DWORDS * 4
            || (!writable.is_empty() && writable.len() != body.len())
        {
            return Err(PciError::CapabilitySpace);
        }
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *b);
        }
        for (i, w) in writable.iter().enumerate() {
            let at = offset + 2 + i;
            self.writable[at / 4] |= u32::from(*w) << ((at % 4) * 8);
        }
        match self.caps.last() {
            Some(prev) => {
                let next_at = prev.offset + 1;
                self.set_byte(next_at, offset as u8);
            }
            None => {
                self.regs[REG_CAP_PTR] = offset as u32;
                self.regs[REG_COMMAND] |= u32::from(STATUS_CAP_LIST) << 16;
            }
        }
        self.caps.push(Capability {
            offset,
            len,
            handler,
        });
        self.next_cap = (offset + len + 3) & !3;
        Ok(offset)
    }

    fn set_byte(&mut self, at: usize, v: u8) {
        let shift = (at % 4) * 8;
        let r = &mut self.regs[at / 4];
        *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
    }

    /// Read configuration dword `reg`; past 0xFF reads all-ones.
    /// All 64 configuration dwords as they read (a snapshot's copy).
    pub fn registers(&self) -> Vec<u32> {
        self.regs.to_vec()
    }

    /// Put back saved registers as guest writes of each dword would: the
    /// writable bits and the BAR addresses; read-only bits keep this
    /// device's values. (A capability backed by a handler, MSI-X's message
    /// control, gets the write too: restore the handler's state after.)
    pub fn set_registers(&mut self, saved: &[u32]) -> Result<(), crate::StateError> {
        if saved.len() != CONFIG_DWORDS {
            return Err(crate::StateError::Mismatch(format!(
                "{} configuration dwords, not {CONFIG_DWORDS}",
                saved.len()
            )));
        }
        for (i, v) in saved.iter().enumerate() {
            self.write_reg(i, 0, &v.to_le_bytes());
        }
        Ok(())
    }

    pub fn read_reg(&self, reg: usize) -> u32 {
        let Some(&stored) = self.regs.get(reg) else {
            return u32::MAX;
        };
        let mut bytes = stored.to_le_bytes();
        let start = reg * 4;
        for cap in &self.caps {
            let dynamic = cap.dynamic();
            for (i, b) in bytes.iter_mut().enumerate() {
                let at = start + i;
                if at < cap.offset || !dynamic.contains(&(at - cap.offset)) {
                    continue;
                }
                let rel = at - cap.offset;
                let mut one = [0u8];
                match &cap.handler {
                    CapHandler::Plain => {}
                    CapHandler::Msix(m) => one[0] = m.read_control().to_le_bytes()[rel - 2],
                    CapHandler::Msi(m) => m.read_cap(rel, &mut one),
                }
                *b = one[0];
            }
        }
        u32::from_le_bytes(bytes)
    }

    /// Write `data` at byte `offset` of dword `reg`. Invalid accesses
    /// (sizes other than 1, 2, 4, crossing the dword, past 0xFF) are
    /// ignored; returns false for them.
    pub fn write_reg(&mut self, reg: usize, offset: usize, data: &[u8]) -> bool {
        if reg >= CONFIG_DWORDS
            || !matches!(data.len(), 1 | 2 | 4)
            || offset + data.len() > 4
            || !offset.is_multiple_of(data.len())
        {
            return false;
        }
        let old = self.regs[reg];
        let mut bytes = old.to_le_bytes();
        bytes[offset..offset + data.len()].copy_from_slice(data);
        let candidate = u32::from_le_bytes(bytes);
        // Only the bytes written take part.
        let touched = if data.len() == 4 {
            u32::MAX
        } else {
            ((1u32 << (data.len() * 8)) - 1) << (offset * 8)
        };

        if (REG_BAR0..REG_BAR0 + NUM_BARS).contains(&reg) {
            // Address bits below the size and the type bits are read-only.
            self.regs[reg] = self.bar_low_value(reg - REG_BAR0, candidate);
            return true;
        }

        let w = self.writable[reg] & touched;
        self.regs[reg] = (old & !w) | (candidate & w);

        // Capabilities whose registers live in a handler.
        let start = reg * 4 + offset;
        let end = start + data.len();
        for cap in &self.caps {
            let dynamic = cap.dynamic();
            let lo = start.max(cap.offset + dynamic.start);
            let hi = end.min(cap.offset + dynamic.end);
            if lo >= hi {
                continue;
            }
            let slice = &data[lo - start..hi - start];
            let rel = lo - cap.offset;
            match &cap.handler {
                CapHandler::Plain => {}
                CapHandler::Msix(m) => {
                    let mut ctrl = m.read_control().to_le_bytes();
                    ctrl[rel - 2..rel - 2 + slice.len()].copy_from_slice(slice);
                    m.write_control(u16::from_le_bytes(ctrl));
                }
                CapHandler::Msi(m) => m.write_cap(rel, slice),
            }
        }
        true
    }

    /// Offsets of the capabilities, in list order, with their IDs.
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        self.caps
            .iter()
            .map(|c| {
                (
                    c.offset,
                    self.regs[c.offset / 4].to_le_bytes()[c.offset % 4],
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class_code: 0x018000,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
        })
    }

    #[test]
    fn identity_registers_read_back() {
        let c = cfg();
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0180_0001);
        assert_eq!(c.read_reg(11), 0x1100_1af4);
        assert_eq!(c.read_reg(3) >> 16 & 0xff, 0, "header type 0");
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = cfg();
        c.write_reg(0, 0, &[0, 0, 0, 0]);
        c.write_reg(2, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(0), 0x1042_1af4);
        assert_eq!(c.read_reg(2), 0x0180_0001);
    }

    #[test]
    fn bar_sizing_reads_back_size_mask() {
        let mut c = cfg();
        c.add_bar(0, 0x4000, BarKind::Mem32, false).unwrap();
        c.write_reg(4, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(4), 0xffff_c000);
        c.write_reg(4, 0, &0xc000_1234u32.to_le_bytes());
        assert_eq!(c.read_reg(4), 0xc000_0000);
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
    }

    #[test]
    fn bar_64bit_sizing_spans_two_registers() {
        let mut c = cfg();
        c.add_bar(2, 1 << 33, BarKind::Mem64, true).unwrap();
        c.write_reg(6, 0, &[0xff; 4]);
        c.write_reg(7, 0, &[0xff; 4]);
        assert_eq!(
            c.read_reg(6),
            0x0000_000c,
            "64-bit prefetchable, low bits all size"
        );
        assert_eq!(c.read_reg(7), 0xffff_fffe);
        c.set_bar_address(2, 0x4_0000_0000);
        assert_eq!(c.bar_address(2), Some(0x4_0000_0000));
    }

    #[test]
    fn unimplemented_bar_reads_zero_after_sizing() {
        let mut c = cfg();
        c.write_reg(5, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(5), 0);
    }

    #[test]
    fn byte_write_to_bar_keeps_other_bytes() {
        let mut c = cfg();
        c.add_bar(0, 0x1000, BarKind::Mem32, false).unwrap();
        c.set_bar_address(0, 0xc000_0000);
        c.write_reg(4, 3, &[0xd0]);
        assert_eq!(c.bar_address(0), Some(0xd000_0000));
    }

    #[test]
    fn invalid_bar_declarations_are_refused() {
        let mut c = cfg();
        assert!(c.add_bar(0, 0x1001, BarKind::Mem32, false).is_err());
        assert!(c.add_bar(5, 0x1000, BarKind::Mem64, false).is_err());
        assert!(c.add_bar(6, 0x1000, BarKind::Mem32, false).is_err());
        assert!(c.add_bar(0, 8, BarKind::Mem32, false).is_err());
        c.add_bar(0, 0x1000, BarKind::Mem64, false).unwrap();
        assert!(c.add_bar(1, 0x1000, BarKind::Mem32, false).is_err());
    }

    #[test]
    fn command_register_writable_bits_only() {
        let mut c = cfg();
        c.write_reg(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.command(), 0x0546);
        assert_eq!(c.status(), 0, "status is read-only");
    }

    #[test]
    fn capability_list_is_walkable() {
        let mut c = cfg();
        let a = c.add_capability(CAP_ID_VENDOR, &[1, 2, 3], &[]).unwrap();
        let b = c.add_capability(CAP_ID_VENDOR, &[4; 14], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(c.status() & STATUS_CAP_LIST, 0);
        let mut ptr = c.read_reg(0x34 / 4) as usize & 0xff;
        let mut seen = vec![];
        while ptr != 0 {
            let dw = c.read_reg(ptr / 4) >> ((ptr % 4) * 8);
            seen.push((ptr, dw as u8));
            ptr = (dw >> 8) as usize & 0xff;
        }
        assert_eq!(seen, vec![(0x40, CAP_ID_VENDOR), (0x48, CAP_ID_VENDOR)]);
    }

    #[test]
    fn capability_without_room_is_refused() {
        let mut c = cfg();
        assert!(c.add_capability(CAP_ID_VENDOR, &[0; 190], &[]).is_ok());
        assert!(c.add_capability(CAP_ID_VENDOR, &[0; 8], &[]).is_err());
    }

    #[test]
    fn capability_writable_mask_applies() {
        let mut c = cfg();
        let off = c
            .add_capability(CAP_ID_VENDOR, &[0xaa, 0xbb], &[0xff, 0x00])
            .unwrap();
        c.write_reg(off / 4, 2, &[0x11, 0x22]);
        assert_eq!(c.read_reg(off / 4) >> 16, 0xbb11);
    }

    #[test]
    fn misaligned_or_crossing_writes_are_ignored() {
        let mut c = cfg();
        assert!(!c.write_reg(15, 3, &[1, 2]));
        assert!(!c.write_reg(15, 1, &[1, 2]));
        assert!(!c.write_reg(15, 0, &[1, 2, 3]));
        assert!(!c.write_reg(64, 0, &[1]));
        assert_eq!(c.read_reg(64), u32::MAX);
        assert!(c.write_reg(15, 0, &[9]));
        assert_eq!(c.read_reg(15) & 0xff, 9);
    }
}
