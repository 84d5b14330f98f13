//! ACPI fixed hardware of the PM1a blocks and the PM timer, as the FADT
//! splitvm writes describes them (arch::acpi; ports 0x600..0x60C):
//!
//! | offset | register                         | behaviour                                  |
//! |--------|----------------------------------|--------------------------------------------|
//! | 0      | PM1a_STS (16 bits)               | write 1 to clear; nothing ever sets a bit  |
//! | 2      | PM1a_EN (16 bits)                | read/write                                 |
//! | 4      | PM1a_CNT (16 bits)               | SCI_EN (bit 0) reads 1; SLP_EN (bit 13)    |
//! |        |                                  | with SLP_TYP (12:10) = 5 powers off        |
//! | 8      | PM_TMR (32 bits, 24 significant) | 3.579545 MHz free-running counter          |
//!
//! A power-off ends the VM with exit reason `poweroff` (status 0). Other
//! sleep types are not supported: the write is ignored and logged once
//! (the `\_S5_` object is the only sleep state the DSDT offers).

use std::sync::Arc;
use std::time::Instant;

use crate::control::{ExitReason, VmControl};
use crate::sync::WarnOnce;
use crate::BusDevice;

/// Offsets inside the device's 12 ports.
const STS: u64 = 0;
const EN: u64 = 2;
const CNT: u64 = 4;
const TMR: u64 = 8;
/// PM1_CNT bits.
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 7;
/// PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// The PM1a event/control blocks and the PM timer.
pub struct AcpiPm {
    control: Arc<VmControl>,
    s5_slp_typ: u8,
    status: u16,
    enable: u16,
    cnt: u16,
    start: Instant,
    warned: WarnOnce,
}

impl AcpiPm {
    /// A device that powers the VM off on SLP_EN with SLP_TYP = `s5_slp_typ`.
    pub fn new(control: Arc<VmControl>, s5_slp_typ: u8) -> Self {
        AcpiPm {
            control,
            s5_slp_typ,
            status: 0,
            enable: 0,
            cnt: SCI_EN,
            start: Instant::now(),
            warned: WarnOnce::default(),
        }
    }

    fn timer(&self) -> u32 {
        let ns = self.start.elapsed().as_nanos();
        ((ns * PM_TIMER_HZ as u128 / 1_000_000_000) as u32) & 0x00ff_ffff
    }

    fn read16(&self, reg: u64) -> u16 {
        match reg {
            STS => self.status,
            EN => self.enable,
            CNT => self.cnt | SCI_EN,
            _ => 0,
        }
    }

    fn write16(&mut self, reg: u64, v: u16) {
        match reg {
            STS => self.status &= !v,
            EN => self.enable = v,
            CNT => {
                // SLP_EN is write-only (reads 0).
                self.cnt = (v & !SLP_EN) | SCI_EN;
                if v & SLP_EN != 0 {
                    let typ = ((v >> SLP_TYP_SHIFT) & SLP_TYP_MASK) as u8;
                    if typ == self.s5_slp_typ {
                        self.control.request_exit(ExitReason::Poweroff);
                    } else {
                        self.warned.warn(1, format_args!("ACPI: guest asked for sleep type {typ}; only S5 (soft off) is supported, ignored"));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The PM1a registers and the PM timer's time in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmState {
    pub status: u16,
    pub enable: u16,
    pub cnt: u16,
    /// Nanoseconds the PM timer had counted (it goes on from there).
    pub timer_ns: u64,
}

impl BusDevice for AcpiPm {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(Some(crate::DeviceState::of(
            "acpi_pm",
            &AcpiPmState {
                status: self.status,
                enable: self.enable,
                cnt: self.cnt,
                timer_ns: self.start.elapsed().as_nanos() as u64,
            },
        )?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: AcpiPmState = s.get("acpi_pm")?;
        self.status = s.status;
        self.enable = s.enable;
        self.cnt = s.cnt;
        let now = Instant::now();
        self.start = now
            .checked_sub(std::time::Duration::from_nanos(s.timer_ns))
            .unwrap_or(now);
        Ok(())
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if (TMR..TMR + 4).contains(&offset) {
            let v = self.timer().to_le_bytes();
            let k = (offset - TMR) as usize;
            let n = data.len().min(4 - k);
            data[..n].copy_from_slice(&v[k..k + n]);
            return;
        }
        // 16-bit registers, byte or word access.
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            if at >= TMR {
                break;
            }
            let reg = at & !1;
            *b = self.read16(reg).to_le_bytes()[(at & 1) as usize];
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= TMR {
            return; // the timer is read-only
        }
        let reg = offset & !1;
        let mut v = self.read16(reg).to_le_bytes();
        if reg == STS {
            // Write-1-to-clear: bytes not written must not clear anything.
            v = [0, 0];
        }
        for (i, b) in data.iter().enumerate() {
            let k = (offset & 1) as usize + i;
            if k < 2 {
                v[k] = *b;
            }
        }
        self.write16(reg, u16::from_le_bytes(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm() -> (AcpiPm, Arc<VmControl>) {
        let c = Arc::new(VmControl::new());
        (AcpiPm::new(c.clone(), 5), c)
    }

    #[test]
    fn slp_en_with_s5_type_powers_off() {
        let (mut p, c) = pm();
        // Linux writes SLP_TYP first, then SLP_TYP | SLP_EN.
        p.write(CNT, &(5u16 << 10).to_le_bytes());
        assert_eq!(c.reason(), None);
        p.write(CNT, &((5u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(c.reason(), Some(ExitReason::Poweroff));
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (mut p, c) = pm();
        p.write(CNT, &((3u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(c.reason(), None);
    }

    #[test]
    fn sci_en_always_reads_set_and_slp_en_reads_clear() {
        let (mut p, _) = pm();
        p.write(CNT, &[0, 0]);
        let mut d = [0u8; 2];
        p.read(CNT, &mut d);
        assert_eq!(u16::from_le_bytes(d) & SCI_EN, SCI_EN);
        p.write(CNT, &((3u16 << 10) | SLP_EN).to_le_bytes());
        p.read(CNT, &mut d);
        assert_eq!(u16::from_le_bytes(d) & SLP_EN, 0);
    }

    #[test]
    fn status_is_write_one_to_clear_and_enable_keeps_its_value() {
        let (mut p, _) = pm();
        p.status = 0x0101;
        p.write(STS, &[0x01, 0x00]);
        let mut d = [0u8; 2];
        p.read(STS, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x0100);
        p.write(EN, &[0x20, 0x01]);
        p.read(EN, &mut d);
        assert_eq!(d, [0x20, 0x01]);
    }

    #[test]
    fn pm_timer_advances_and_keeps_24_bits() {
        let (mut p, _) = pm();
        let mut a = [0u8; 4];
        p.read(TMR, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut b = [0u8; 4];
        p.read(TMR, &mut b);
        assert_eq!(a[3], 0);
        assert_ne!(a, b);
        p.write(TMR, &[1, 2, 3, 4]);
    }

    #[test]
    fn odd_sized_accesses_read_defined_values_and_change_nothing_written_back() {
        let (mut p, c) = pm();
        for off in 0..12u64 {
            for len in [1usize, 2, 3, 4, 8] {
                let mut d = vec![0xaau8; len];
                p.read(off, &mut d);
                for (i, b) in d.iter().enumerate() {
                    let at = off + i as u64;
                    let want = match at {
                        0..=3 => Some(0),        // STS, EN: nothing set
                        4 => Some(SCI_EN as u8), // CNT low byte
                        5..=7 => Some(0),        // CNT high byte, reserved
                        8..=10 => None,          // the timer's 24 bits
                        _ => Some(0),            // timer bits 24-31, past the block
                    };
                    if let Some(w) = want {
                        assert_eq!(*b, w, "read {len} at {off}: byte at {at}");
                    }
                }
                // Writing back what was read changes no register and
                // never powers the VM off.
                p.write(off, &d);
                assert_eq!((p.status, p.enable, p.cnt), (0, 0, SCI_EN), "{off}/{len}");
            }
        }
        assert_eq!(c.reason(), None);
    }
}
