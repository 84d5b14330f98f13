//! Legacy PC ports Linux and firmware-less guests poke: the i8042 (for its
//! reset line) and ports accepted silently (CMOS/RTC index/data, POST,
//! DMA page, I/O delay, FPU). The 8259 pair is devices/src/pic.rs.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};

/// i8042 keyboard controller at 0x60 (data) / 0x64 (status/command), only
/// as far as the CPU reset line (command 0xFE) goes.
pub struct I8042 {
    control: Arc<VmControl>,
    command_byte: u8,
    pending: Option<u8>,
    last_cmd: u8,
}

pub const I8042_DATA: u64 = 0x60;
pub const I8042_CMD: u64 = 0x64;
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_RESET_CPU: u8 = 0xfe;
const STATUS_OUT_FULL: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;

impl I8042 {
    pub fn new(control: Arc<VmControl>) -> Self {
        I8042 {
            control,
            command_byte: 0,
            pending: None,
            last_cmd: 0,
        }
    }
}

/// The i8042's command byte and output buffer in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    pub command_byte: u8,
    pub pending: Option<u8>,
    pub last_cmd: u8,
}

/// Registered twice: at 0x60 (offset 0 = data) and at 0x64 (offset 4 = command).
impl BusDevice for I8042 {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let s = I8042State {
            command_byte: self.command_byte,
            pending: self.pending,
            last_cmd: self.last_cmd,
        };
        Ok(Some(crate::DeviceState::of("i8042", &s)?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: I8042State = s.get("i8042")?;
        self.command_byte = s.command_byte;
        self.pending = s.pending;
        self.last_cmd = s.last_cmd;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            0 => self.pending.take().unwrap_or(0),
            4 => {
                STATUS_SYS
                    | if self.pending.is_some() {
                        STATUS_OUT_FULL
                    } else {
                        0
                    }
            }
            _ => 0,
        };
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match (offset, byte) {
            (4, CMD_RESET_CPU) => {
                self.control.request_exit(ExitReason::Reset);
            }
            (4, CMD_READ_CTR) => self.pending = Some(self.command_byte),
            (4, c) => self.last_cmd = c,
            (0, v) if self.last_cmd == CMD_WRITE_CTR => {
                self.command_byte = v;
                self.last_cmd = 0;
            }
            _ => {}
        }
    }
}

/// Ports that are accepted silently: writes ignored, reads zero.
pub struct QuietPorts;

/// (name, base, len) of the quiet port ranges.
pub const QUIET_PORTS: &[(&str, u64, u64)] = &[
    ("cmos", 0x70, 2),
    ("post", 0x80, 1),
    ("dma-page", 0x81, 0xf),
    ("io-delay", 0xed, 1),
    ("fpu", 0xf0, 2),
];

impl BusDevice for QuietPorts {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_command_0xfe_requests_reset() {
        let c = Arc::new(VmControl::new());
        let mut k = I8042::new(c.clone());
        k.write(4, &[0xfe]);
        assert_eq!(c.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn i8042_status_reports_input_buffer_empty() {
        let mut k = I8042::new(Arc::new(VmControl::new()));
        let mut d = [0xffu8];
        k.read(4, &mut d);
        assert_eq!(d[0] & 0x2, 0, "reboot waits for bit 1 to clear");
    }

    #[test]
    fn i8042_ignores_empty_accesses() {
        let c = Arc::new(VmControl::new());
        let mut k = I8042::new(c.clone());
        k.write(4, &[0x60]);
        // Empty accesses: no command taken, no byte consumed, no reset.
        k.write(0, &[]);
        k.write(4, &[]);
        k.read(0, &mut []);
        k.read(4, &mut []);
        k.write(0, &[0x45]);
        k.write(4, &[0x20]);
        let mut d = [0u8];
        k.read(0, &mut d);
        assert_eq!(d[0], 0x45, "the command byte write still completed");
        assert_eq!(c.reason(), None);
    }

    #[test]
    fn i8042_command_byte_reads_back() {
        let mut k = I8042::new(Arc::new(VmControl::new()));
        k.write(4, &[0x60]);
        k.write(0, &[0x45]);
        k.write(4, &[0x20]);
        let mut d = [0u8];
        k.read(4, &mut d);
        assert_eq!(d[0] & 1, 1);
        k.read(0, &mut d);
        assert_eq!(d[0], 0x45);
    }
}
