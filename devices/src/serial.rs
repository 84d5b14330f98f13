//! The 8250 UART at 0x3F8 (vm-superio), interrupting on an I/O APIC pin.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use crate::bus::BusDevice;
use crate::interrupt::{lock, IrqLine};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_PIN: usize = 4;

/// Serial interrupts are edges on the UART's I/O APIC pin (ISA convention).
pub struct SerialIrq(pub IrqLine);

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.pulse();
        Ok(())
    }
}

/// Output sink that also remembers the last complete line written, for the
/// progress indicator and for error reports.
pub struct SerialOutput {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    last_line: Arc<Mutex<String>>,
}

impl SerialOutput {
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        SerialOutput {
            inner,
            line: Vec::new(),
            last_line: Arc::new(Mutex::new(String::new())),
        }
    }

    /// Shared handle on the last complete line printed by the guest.
    pub fn last_line(&self) -> Arc<Mutex<String>> {
        self.last_line.clone()
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => {
                    let s = String::from_utf8_lossy(&self.line).trim_end().to_string();
                    if !s.is_empty() {
                        *lock(&self.last_line) = s;
                    }
                    self.line.clear();
                }
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
            serial: Serial::new(SerialIrq(irq), out),
        }
    }

    /// Queue bytes for the guest to read (host stdin).
    pub fn enqueue_input(&mut self, data: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(data).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
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

    #[test]
    fn output_remembers_last_nonempty_line() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut out = SerialOutput::new(Box::new(Shared(buf.clone())));
        let last = out.last_line();
        out.write_all(b"first\r\nsecond\n\npart").unwrap();
        assert_eq!(*lock(&last), "second");
        assert_eq!(lock(&buf).len(), 19);
    }
}
