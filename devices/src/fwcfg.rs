//! QEMU fw_cfg, legacy I/O interface: selector at 0x510 (16-bit write),
//! data at 0x511 (byte reads). Only the keys kvm-unit-tests needs.

use crate::bus::BusDevice;

pub const FW_CFG_PORT: u64 = 0x510;
pub const FW_CFG_LEN: u64 = 2;

const KEY_SIGNATURE: u16 = 0x00;
const KEY_ID: u16 = 0x01;
const KEY_RAM_SIZE: u16 = 0x03;
const KEY_NB_CPUS: u16 = 0x05;
const KEY_MAX_CPUS: u16 = 0x0f;

pub struct FwCfg {
    nb_cpus: u16,
    ram_size: u64,
    selected: Vec<u8>,
    pos: usize,
}

impl FwCfg {
    pub fn new(nb_cpus: u16, ram_size: u64) -> Self {
        let mut f = FwCfg {
            nb_cpus,
            ram_size,
            selected: Vec::new(),
            pos: 0,
        };
        f.select(KEY_SIGNATURE);
        f
    }

    fn select(&mut self, key: u16) {
        self.pos = 0;
        self.selected = match key {
            KEY_SIGNATURE => b"QEMU".to_vec(),
            KEY_ID => 1u32.to_le_bytes().to_vec(),
            KEY_RAM_SIZE => self.ram_size.to_le_bytes().to_vec(),
            KEY_NB_CPUS | KEY_MAX_CPUS => self.nb_cpus.to_le_bytes().to_vec(),
            _ => Vec::new(),
        };
    }
}

/// The selected item and read position in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FwCfgState {
    pub selected: Vec<u8>,
    pub pos: usize,
}

impl BusDevice for FwCfg {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let s = FwCfgState {
            selected: self.selected.clone(),
            pos: self.pos,
        };
        Ok(Some(crate::DeviceState::of("fw_cfg", &s)?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: FwCfgState = s.get("fw_cfg")?;
        self.selected = s.selected;
        self.pos = s.pos;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 1 {
            for d in data.iter_mut() {
                *d = self.selected.get(self.pos).copied().unwrap_or(0);
                self.pos = self.pos.saturating_add(1);
            }
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() >= 2 {
            self.select(u16::from_le_bytes([data[0], data[1]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_n(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(0, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn nb_cpus_and_ram_size_read_little_endian() {
        let mut f = FwCfg::new(3, 128 << 20);
        assert_eq!(read_n(&mut f, 0x05, 2), vec![3, 0]);
        assert_eq!(
            u64::from_le_bytes(read_n(&mut f, 0x03, 8).try_into().unwrap()),
            128 << 20
        );
    }

    #[test]
    fn signature_is_qemu_and_unknown_keys_read_zero() {
        let mut f = FwCfg::new(1, 0);
        assert_eq!(read_n(&mut f, 0, 4), b"QEMU".to_vec());
        assert_eq!(read_n(&mut f, 0x1234, 3), vec![0, 0, 0]);
    }
}
