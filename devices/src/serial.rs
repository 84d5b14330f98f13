//! The 8250 UART at 0x3F8 (vm-superio), interrupting on an I/O APIC pin.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};
use crate::irq_line::IrqLine;
use crate::sync::lock;

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_PIN: usize = 4;

/// Serial interrupts are edges on the UART's I/O APIC pin (ISA convention).
/// Muted while a saved state is put back: an interrupt the UART raised
/// before the snapshot is in the saved LAPIC already, and raising it again
/// would deliver it twice.
pub struct SerialIrq {
    line: IrqLine,
    muted: std::cell::Cell<bool>,
}

impl SerialIrq {
    pub fn new(line: IrqLine) -> Self {
        SerialIrq {
            line,
            muted: std::cell::Cell::new(false),
        }
    }
}

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        if !self.muted.get() {
            self.line.pulse();
        }
        Ok(())
    }
}

/// The 8250 registers and receive FIFO in a snapshot (vm-superio's
/// `SerialState`, field for field).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "vm_superio::serial::SerialState")]
struct UartStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// A UART's state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UartState(#[serde(with = "UartStateDef")] pub vm_superio::serial::SerialState);

// 16550A registers and bits (the receive side that `read_iir` fixes up).
const IIR: u8 = 2;
const LSR: u8 = 5;
const LSR_DATA_READY: u8 = 0x01;
const IER_RDA: u8 = 0x01;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO_BITS: u8 = 0xc0;

/// How many console lines [`SerialOutput`] keeps for error reports.
pub const TAIL_LINES: usize = 25;

/// What Linux prints first when it panics, and last (kernel/panic.c).
const PANIC_START: &str = "Kernel panic - not syncing";
const PANIC_END: &str = "---[ end Kernel panic";

/// Watches a Linux console for a kernel panic: the first line sets
/// `panicked`; the closing line stops the VM (a kernel without `panic=-1`
/// would otherwise hang there until the timeout).
pub struct PanicWatch {
    pub panicked: Arc<AtomicBool>,
    pub control: Arc<VmControl>,
}

/// Output sink that also remembers the last lines written, for the
/// progress indicator and for error reports, and can watch for a panic.
pub struct SerialOutput {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    last_line: Arc<Mutex<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    panic_watch: Option<PanicWatch>,
}

impl SerialOutput {
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        SerialOutput {
            inner,
            line: Vec::new(),
            last_line: Arc::new(Mutex::new(String::new())),
            tail: Arc::new(Mutex::new(VecDeque::new())),
            panic_watch: None,
        }
    }

    /// Watch this console for a Linux kernel panic.
    pub fn with_panic_watch(mut self, watch: PanicWatch) -> Self {
        self.panic_watch = Some(watch);
        self
    }

    /// Shared handle on the last complete line printed by the guest.
    pub fn last_line(&self) -> Arc<Mutex<String>> {
        self.last_line.clone()
    }

    /// Shared handle on the last [`TAIL_LINES`] lines printed by the guest.
    pub fn tail(&self) -> Arc<Mutex<VecDeque<String>>> {
        self.tail.clone()
    }

    fn complete_line(&mut self) {
        let s = String::from_utf8_lossy(&self.line).trim_end().to_string();
        self.line.clear();
        if s.is_empty() {
            return;
        }
        if let Some(w) = &self.panic_watch {
            // The closing line contains the opening text too: test it first.
            if s.contains(PANIC_END) {
                if w.panicked.load(Ordering::SeqCst) {
                    w.control.request_exit(ExitReason::GuestPanic);
                }
            } else if s.contains(PANIC_START) {
                w.panicked.store(true, Ordering::SeqCst);
            }
        }
        {
            let mut t = lock(&self.tail);
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(s.clone());
        }
        *lock(&self.last_line) = s;
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => self.complete_line(),
                _ if self.line.len() < 512 => self.line.push(b),
                _ => {}
            }
        }
        // The guest must never stop because the host side of the console
        // failed (closed pipe, full disk): drop output instead.
        let _ = self.inner.write_all(buf);
        if buf.contains(&b'\n') {
            let _ = self.inner.flush();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    serial: Serial<SerialIrq, vm_superio::serial::NoEvents, SerialOutput>,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        SerialDevice {
            serial: Serial::new(SerialIrq::new(irq), out),
        }
    }

    /// IIR as a 16550A has it: "received data available" (the highest
    /// priority after line status) for as long as the FIFO holds data and
    /// the interrupt is enabled. vm-superio clears it at every receive
    /// buffer read, so a driver that stops after a batch (Linux's 8250
    /// reads at most 256 characters per pass, then reads IIR again to see
    /// whether to go on) would leave the rest in the FIFO with no interrupt
    /// to come: a command line of 257-320 bytes on the control port hung.
    fn read_iir(&mut self) -> u8 {
        let iir = self.serial.read(IIR);
        let data_ready = self.serial.read(LSR) & LSR_DATA_READY != 0;
        let rda_enabled = self.serial.state().interrupt_enable & IER_RDA != 0;
        if data_ready && rda_enabled {
            (iir & IIR_FIFO_BITS) | IIR_RDA
        } else {
            iir
        }
    }

    /// The registers and receive FIFO.
    pub fn save(&self) -> UartState {
        UartState(self.serial.state())
    }

    /// Put back saved registers (and FIFO), raising no interrupt.
    pub fn restore(&mut self, s: &UartState) -> Result<(), crate::StateError> {
        if s.0.in_buffer.len() > self.serial.fifo_capacity() + self.serial.state().in_buffer.len() {
            return Err(crate::StateError::Mismatch(format!(
                "UART receive FIFO of {} bytes",
                s.0.in_buffer.len()
            )));
        }
        let line = self.serial.interrupt_evt().line.clone();
        let placeholder = Serial::new(
            SerialIrq::new(line.clone()),
            SerialOutput::new(Box::new(io::sink())),
        );
        let out = std::mem::replace(&mut self.serial, placeholder).into_writer();
        let irq = SerialIrq::new(line);
        irq.muted.set(true);
        let serial = Serial::from_state(&s.0, irq, vm_superio::serial::NoEvents, out)
            .map_err(|e| crate::StateError::Mismatch(format!("UART: {e:?}")))?;
        serial.interrupt_evt().muted.set(false);
        self.serial = serial;
        Ok(())
    }

    /// Queue bytes for the guest to read (host stdin).
    pub fn enqueue_input(&mut self, data: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(data).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(Some(crate::DeviceState::of("serial", &self.save())?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        self.restore(&s.get("serial")?)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < 8 {
            data[0] = match offset as u8 {
                IIR => self.read_iir(),
                o => self.serial.read(o),
            };
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            let _ = self.serial.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn uart() -> SerialDevice {
        let ioapic = Arc::new(Mutex::new(crate::ioapic::IoApic::new(
            crate::pci::testutil::FakeKvm::new(),
        )));
        SerialDevice::new(
            IrqLine::new(ioapic, 4),
            SerialOutput::new(Box::new(io::sink())),
        )
    }

    fn inb(u: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        u.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn iir_says_data_available_while_the_fifo_holds_data() {
        let mut u = uart();
        u.write(1, &[IER_RDA]);
        assert_eq!(u.enqueue_input(b"abc"), 3);
        assert_eq!(inb(&mut u, 2) & 0x0f, IIR_RDA);
        assert_eq!(inb(&mut u, 0), b'a');
        // vm-superio alone would say "no interrupt" now, with 2 bytes left.
        assert_eq!(inb(&mut u, 2) & 0x0f, IIR_RDA);
        assert_eq!(inb(&mut u, 0), b'b');
        assert_eq!(inb(&mut u, 0), b'c');
        assert_eq!(inb(&mut u, 2) & 0x01, 1, "empty FIFO: no interrupt pending");
        // With the interrupt disabled, IIR does not report it.
        u.write(1, &[0]);
        u.enqueue_input(b"d");
        assert_ne!(inb(&mut u, 2) & 0x0f, IIR_RDA);
    }

    #[test]
    fn output_remembers_last_nonempty_line() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut out = SerialOutput::new(Box::new(Shared(buf.clone())));
        let last = out.last_line();
        out.write_all(b"first\r\nsecond\n\npart").unwrap();
        assert_eq!(*lock(&last), "second");
        assert_eq!(lock(&buf).len(), 19);
        assert_eq!(lock(&out.tail()).len(), 2);
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        let mut out = SerialOutput::new(Box::new(io::sink()));
        for i in 0..TAIL_LINES + 5 {
            writeln!(out, "line {i}").unwrap();
        }
        let tail = out.tail();
        let t = lock(&tail);
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.front().unwrap(), "line 5");
    }

    #[test]
    fn kernel_panic_lines_mark_the_panic_and_stop_the_vm() {
        let control = Arc::new(VmControl::new());
        let panicked = Arc::new(AtomicBool::new(false));
        let mut out = SerialOutput::new(Box::new(io::sink())).with_panic_watch(PanicWatch {
            panicked: panicked.clone(),
            control: control.clone(),
        });
        // A guest printing the closing line alone is not a panic.
        writeln!(out, "[    1.0] ---[ end Kernel panic - not syncing: x ]---").unwrap();
        assert!(!control.is_stopping());
        writeln!(
            out,
            "[    9.1] Kernel panic - not syncing: sysrq triggered crash"
        )
        .unwrap();
        assert!(panicked.load(Ordering::SeqCst));
        assert!(!control.is_stopping());
        writeln!(
            out,
            "[    9.2] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---"
        )
        .unwrap();
        assert_eq!(control.reason(), Some(ExitReason::GuestPanic));
    }
}
