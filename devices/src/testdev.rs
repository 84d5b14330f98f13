//! Test devices (enabled with `--test-devices`), following the conventions
//! of QEMU's isa-debug-exit and pc-testdev so kvm-unit-tests can run, plus
//! splitvm's MSI test port. See docs/test-devices.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};
use crate::interrupt::{MsiMessage, MsiRouting};
use crate::irq_line::IrqLine;

pub const DEBUG_EXIT_PORT: u64 = 0xf4;
pub const TESTDEV_IRQ_BASE: u64 = 0x2000;
pub const TESTDEV_IRQ_LINES: u64 = 24;
pub const TESTDEV_SCRATCH: u64 = 0xe0;
pub const MSI_TEST_PORT: u64 = 0x2200;
pub const MSI_TEST_LEN: u64 = 0x10;
/// The ready port: a guest write says "ready" (`--snapshot-on-ready`).
pub const READY_PORT: u64 = 0x2210;

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn put_le(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}

/// isa-debug-exit: a write of `v` stops the VM with status `(v << 1) | 1`.
pub struct DebugExit(pub Arc<VmControl>);

impl BusDevice for DebugExit {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0
            .request_exit(ExitReason::DebugExit(le_value(data) as u32));
    }
}

/// pc-testdev IRQ lines: port base+n sets the level of GSI n as QEMU's
/// pc-testdev does (below 16 an ISA IRQ: 8259 input n and I/O APIC pin
/// `isa_irq_pin(n)`; from 16 on I/O APIC pin n); a read returns the level
/// last written. The VMM hands it the 24 lines of its irqchip.
pub struct IrqLines {
    lines: Vec<IrqLine>,
    /// Bit n: the level last written to line n.
    levels: u32,
}

impl IrqLines {
    pub fn new(lines: Vec<IrqLine>) -> Self {
        IrqLines { lines, levels: 0 }
    }
}

impl BusDevice for IrqLines {
    /// The levels written (the controllers' own state has the lines).
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(Some(crate::DeviceState::of(
            "pc_testdev_lines",
            &self.levels,
        )?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        self.levels = s.get("pc_testdev_lines")?;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let level = offset < self.lines.len() as u64 && self.levels >> offset & 1 == 1;
        put_le(data, level as u64);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(line) = self.lines.get(offset as usize) {
            let level = data.first().is_some_and(|b| *b != 0);
            self.levels = self.levels & !(1 << offset) | u32::from(level) << offset;
            line.set_level(level);
        }
    }
}

/// pc-testdev scratch register at 0xE0..0xE3.
#[derive(Default)]
pub struct Scratch(u32);

impl BusDevice for Scratch {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(Some(crate::DeviceState::of("scratch", &self.0)?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        self.0 = s.get("scratch")?;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        put_le(data, (self.0 as u64) >> (8 * offset.min(3)));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = self.0.to_le_bytes();
        for (i, v) in data.iter().enumerate() {
            if let Some(slot) = b.get_mut(offset as usize + i) {
                *slot = *v;
            }
        }
        self.0 = u32::from_le_bytes(b);
    }
}

/// The ready port (1 byte at [`READY_PORT`]): a write of any value tells
/// splitvm the guest is ready, the micro-guests' form of the agent's
/// `ready` line; with `--snapshot-on-ready` the first one takes a snapshot
/// before the vCPU goes on. Reads return all-ones.
pub struct ReadyPort(pub Arc<VmControl>);

impl BusDevice for ReadyPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.guest_ready();
    }
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }
}

/// MSI test port (16 bytes, 32-bit accesses):
/// +0x0 address low, +0x4 address high, +0x8 data (read/write);
/// +0xC write = inject the MSI now; read = number injected so far.
pub struct MsiTestPort {
    routing: Arc<dyn MsiRouting>,
    address: u64,
    data: u32,
    injected: Arc<AtomicU64>,
    failed: u64,
}

impl MsiTestPort {
    pub fn new(routing: Arc<dyn MsiRouting>) -> Self {
        MsiTestPort {
            routing,
            address: 0,
            data: 0,
            injected: Arc::new(AtomicU64::new(0)),
            failed: 0,
        }
    }
    /// Shared counter of MSIs injected, for the stats report.
    pub fn injected_counter(&self) -> Arc<AtomicU64> {
        self.injected.clone()
    }
}

/// The MSI test port's address and data registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsiTestPortState {
    pub address: u64,
    pub data: u32,
}

impl BusDevice for MsiTestPort {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let s = MsiTestPortState {
            address: self.address,
            data: self.data,
        };
        Ok(Some(crate::DeviceState::of("msi_test_port", &s)?))
    }
    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: MsiTestPortState = s.get("msi_test_port")?;
        self.address = s.address;
        self.data = s.data;
        Ok(())
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.address & 0xffff_ffff,
            4 => self.address >> 32,
            8 => self.data as u64,
            0xc => self.injected.load(Ordering::Relaxed),
            _ => 0,
        };
        put_le(data, v);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let v = le_value(data);
        match offset {
            0 => self.address = (self.address & !0xffff_ffff) | (v & 0xffff_ffff),
            4 => self.address = (self.address & 0xffff_ffff) | (v << 32),
            8 => self.data = v as u32,
            0xc => {
                let msg = MsiMessage {
                    address: self.address,
                    data: self.data,
                };
                match self.routing.signal_msi(msg) {
                    Ok(()) => {
                        self.injected.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if self.failed == 0 {
                            log::warn!("msi-test-port: injection failed: {e}");
                        }
                        self.failed += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::InterruptError;
    use crate::ioapic::IoApic;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<MsiMessage>>);
    impl MsiRouting for Rec {
        fn set_route(&self, _: u32, _: Option<MsiMessage>) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal(&self, _: u32) -> Result<(), InterruptError> {
            Ok(())
        }
        fn signal_msi(&self, m: MsiMessage) -> Result<(), InterruptError> {
            self.0.lock().unwrap().push(m);
            Ok(())
        }
    }

    #[test]
    fn debug_exit_write_requests_exit_with_value() {
        let c = Arc::new(VmControl::new());
        DebugExit(c.clone()).write(0, &[3, 0, 0, 0]);
        assert_eq!(c.reason(), Some(ExitReason::DebugExit(3)));
        assert_eq!(c.reason().unwrap().status(), 7);
    }

    #[test]
    fn irq_line_write_drives_the_ioapic_pin_and_reads_back() {
        let io = Arc::new(Mutex::new(IoApic::new(Arc::new(Rec::default()))));
        let mut lines = IrqLines::new(
            (0..TESTDEV_IRQ_LINES as usize)
                .map(|p| IrqLine::new(io.clone(), p))
                .collect(),
        );
        lines.write(11, &[1]);
        assert!(io.lock().unwrap().line_level(11));
        let mut d = [0u8; 1];
        lines.read(11, &mut d);
        assert_eq!(d[0], 1);
        lines.write(11, &[0]);
        lines.read(11, &mut d);
        assert_eq!(d[0], 0);
        lines.read(99, &mut d);
        assert_eq!(d[0], 0, "beyond the 24 lines reads 0");
    }

    #[test]
    fn scratch_reads_back_bytes_written() {
        let mut s = Scratch::default();
        s.write(0, &[0x78, 0x56, 0x34, 0x12]);
        let mut d = [0u8; 4];
        s.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5678);
        let mut b = [0u8; 1];
        s.read(2, &mut b);
        assert_eq!(b[0], 0x34);
    }

    #[test]
    fn msi_port_injects_programmed_message_and_counts() {
        let rec = Arc::new(Rec::default());
        let mut p = MsiTestPort::new(rec.clone());
        p.write(0, &0xfee0_1000u32.to_le_bytes());
        p.write(8, &0x41u32.to_le_bytes());
        p.write(0xc, &1u32.to_le_bytes());
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![MsiMessage {
                address: 0xfee0_1000,
                data: 0x41
            }]
        );
        let mut d = [0u8; 4];
        p.read(0xc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
    }
}
