//! The host-guest channel of `splitvm run -- CMD` (docs/ci-runner.md).
//!
//! Three more 8250 UARTs at the PC's legacy addresses, which any Linux
//! kernel with the 8250 driver registers as ttyS1-ttyS3 without ACPI or a
//! special driver:
//!
//! | port | base  | ISA IRQ | carries                                   |
//! |------|-------|---------|-------------------------------------------|
//! | COM2 | 0x2F8 | 3       | the command's stdout (raw bytes)          |
//! | COM3 | 0x3E8 | 4       | the command's stderr (raw bytes)          |
//! | COM4 | 0x2E8 | 3       | control: text lines in both directions    |
//!
//! COM3 shares IRQ 4 with the console and COM4 shares IRQ 3 with COM2, as
//! on a PC; both are edges, and Linux's 8250 driver serves every port of a
//! shared IRQ from one handler.
//!
//! The control protocol is the only message format of the channel and lives
//! here alone. Guest to host: `ready` (the guest waits for a command),
//! `exit N` (the command ended with status N, after its output was drained).
//! Host to guest: `run B64`, where B64 is the base64 of the command's argv,
//! each argument followed by a NUL byte. Unknown lines are ignored and
//! counted; a line longer than [`MAX_LINE`] is dropped.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::BusDevice;
use crate::control::{ExitReason, VmControl};
use crate::irq_line::IrqLine;
use crate::serial::{SerialDevice, SerialOutput};
use crate::sync::lock;

pub const COM2_BASE: u64 = 0x2f8;
pub const COM3_BASE: u64 = 0x3e8;
pub const COM4_BASE: u64 = 0x2e8;
/// ISA IRQ 3 (COM2, COM4) is I/O APIC pin 3.
pub const COM2_PIN: usize = 3;
/// ISA IRQ 4 (COM1, COM3) is I/O APIC pin 4.
pub const COM3_PIN: usize = 4;
pub const COM4_PIN: usize = 3;
/// Longest control line either side accepts (the guest reads in a 64 KiB buffer).
pub const MAX_LINE: usize = 60 * 1024;

/// A message on the control port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Guest: waiting for a command.
    Ready,
    /// Guest: the command ended with this status (0-255; 128+n for signal n).
    Exit(i32),
    /// Host: run this argv.
    Run(Vec<String>),
}

impl Message {
    /// The line for this message, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let s = match self {
            Message::Ready => "ready".to_string(),
            Message::Exit(n) => format!("exit {n}"),
            Message::Run(argv) => {
                let mut raw = Vec::new();
                for a in argv {
                    raw.extend_from_slice(a.as_bytes());
                    raw.push(0);
                }
                format!("run {}", base64_encode(&raw))
            }
        };
        let mut v = s.into_bytes();
        v.push(b'\n');
        v
    }

    /// Parse one line (without its newline; a trailing `\r` is ignored).
    pub fn decode(line: &[u8]) -> Option<Message> {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        if line == "ready" {
            return Some(Message::Ready);
        }
        if let Some(n) = line.strip_prefix("exit ") {
            return n
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|n| (0..=255).contains(n))
                .map(Message::Exit);
        }
        if let Some(b) = line.strip_prefix("run ") {
            let raw = base64_decode(b.trim())?;
            if raw.last() != Some(&0) {
                return None;
            }
            let argv = raw[..raw.len() - 1]
                .split(|&c| c == 0)
                .map(|a| String::from_utf8(a.to_vec()).ok())
                .collect::<Option<Vec<_>>>()?;
            return Some(Message::Run(argv));
        }
        None
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648).
pub fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decode standard base64 with padding; None on any bad character or length.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() & 3 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (ci, chunk) in b.chunks(4).enumerate() {
        let last = ci == b.len() / 4 - 1;
        let mut n = 0u32;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'=' if last && i >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return None,
                _ => B64.iter().position(|&x| x == c)? as u32,
            };
            n = n << 6 | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// What the control port has seen, for the VMM and the report.
#[derive(Debug, Default)]
pub struct ChannelState {
    /// The argv to send when the guest says `ready` (sent once).
    command: Option<Vec<String>>,
    /// Bytes waiting to enter the control port's receive FIFO.
    to_guest: VecDeque<u8>,
    /// The guest's line being written (up to its newline).
    line: Vec<u8>,
    /// The line being written is longer than [`MAX_LINE`] (dropped).
    overlong: bool,
    /// The guest said `ready` and has not been sent a command since.
    awaiting: bool,
    /// The guest said `ready` (at least once).
    pub ready_seen: bool,
    /// The status the guest reported, if any.
    pub exit_status: Option<i32>,
    /// Lines that were not a message of the protocol.
    pub bad_lines: u64,
}

/// The control side of the channel, shared by the control port and the VMM.
pub struct Channel {
    state: Mutex<ChannelState>,
    control: Arc<VmControl>,
    /// Bytes the guest wrote to the stdout and stderr ports.
    pub stdout_bytes: AtomicU64,
    pub stderr_bytes: AtomicU64,
}

impl Channel {
    /// A channel that sends `command` when the guest is ready and ends the
    /// VM with the status the guest reports.
    pub fn new(control: Arc<VmControl>, command: Option<Vec<String>>) -> Arc<Self> {
        Arc::new(Channel {
            state: Mutex::new(ChannelState {
                command,
                ..Default::default()
            }),
            control,
            stdout_bytes: AtomicU64::new(0),
            stderr_bytes: AtomicU64::new(0),
        })
    }

    /// The guest's exit status, if it reported one.
    pub fn exit_status(&self) -> Option<i32> {
        lock(&self.state).exit_status
    }

    pub fn ready_seen(&self) -> bool {
        lock(&self.state).ready_seen
    }

    pub fn bad_lines(&self) -> u64 {
        lock(&self.state).bad_lines
    }

    /// Handle one complete line the guest wrote on the control port.
    fn guest_line(&self, line: &[u8]) {
        let mut st = lock(&self.state);
        match Message::decode(line) {
            Some(Message::Ready) => {
                st.ready_seen = true;
                st.awaiting = true;
                // `--snapshot-on-ready`: the command goes out after the
                // snapshot (ControlPort::send_command), so the snapshot's
                // guest still waits for one.
                if !self.control.guest_ready() {
                    Self::send_command(&mut st);
                }
            }
            Some(Message::Exit(n)) => {
                if st.exit_status.is_none() {
                    st.exit_status = Some(n);
                    drop(st);
                    self.control.request_exit(ExitReason::CommandExit(n));
                }
            }
            _ => st.bad_lines += 1,
        }
    }

    /// Queue the command for a guest that waits for one.
    fn send_command(st: &mut ChannelState) {
        if st.awaiting {
            if let Some(argv) = st.command.take() {
                st.awaiting = false;
                st.to_guest.extend(Message::Run(argv).encode());
            }
        }
    }

    /// Take the guest's output bytes: complete lines are handled as
    /// protocol messages.
    fn guest_bytes(&self, buf: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut st = lock(&self.state);
            for &b in buf {
                if b == b'\n' {
                    let line = std::mem::take(&mut st.line);
                    if std::mem::take(&mut st.overlong) {
                        st.bad_lines += 1;
                    } else {
                        lines.push(line);
                    }
                } else if st.line.len() < MAX_LINE {
                    st.line.push(b);
                } else {
                    st.overlong = true;
                }
            }
        }
        for l in lines {
            self.guest_line(&l);
        }
    }

    /// Take up to `max` bytes that wait to go to the guest.
    fn take_input(&self, max: usize) -> Vec<u8> {
        let mut st = lock(&self.state);
        let n = max.min(st.to_guest.len());
        st.to_guest.drain(..n).collect()
    }

    fn push_back_input(&self, bytes: &[u8]) {
        let mut st = lock(&self.state);
        for &b in bytes.iter().rev() {
            st.to_guest.push_front(b);
        }
    }
}

/// The control port's output sink: the guest's bytes go to the channel.
struct ControlSink {
    channel: Arc<Channel>,
}

impl Write for ControlSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.channel.guest_bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The control UART (COM4): a UART whose output is parsed as protocol
/// lines and whose receive FIFO is topped up from the channel at every
/// guest access, so a message longer than the 64-byte FIFO arrives whole.
pub struct ControlPort {
    uart: SerialDevice,
    channel: Arc<Channel>,
}

impl ControlPort {
    pub fn new(irq: IrqLine, channel: Arc<Channel>) -> Self {
        let sink = ControlSink {
            channel: channel.clone(),
        };
        ControlPort {
            uart: SerialDevice::new(irq, SerialOutput::new(Box::new(sink))),
            channel,
        }
    }

    fn feed(&mut self) {
        let bytes = self.channel.take_input(64);
        if bytes.is_empty() {
            return;
        }
        let taken = self.uart.enqueue_input(&bytes);
        if taken < bytes.len() {
            self.channel.push_back_input(&bytes[taken..]);
        }
    }
}

/// What the channel holds for the guest, for a stuck-guest report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelWaiting {
    /// Bytes in the control port's receive FIFO (the guest has not read).
    pub in_fifo: usize,
    /// Bytes queued behind the FIFO.
    pub queued: usize,
    /// The guest enabled the receive interrupt (IER bit 0).
    pub receive_interrupt_enabled: bool,
    /// The guest said `ready` and waits for a command.
    pub guest_awaits_command: bool,
}

impl ControlPort {
    /// What waits for the guest on the control port.
    pub fn waiting(&self) -> ChannelWaiting {
        let uart = self.uart.save();
        let st = lock(&self.channel.state);
        ChannelWaiting {
            in_fifo: uart.0.in_buffer.len(),
            queued: st.to_guest.len(),
            receive_interrupt_enabled: uart.0.interrupt_enable & 1 != 0,
            guest_awaits_command: st.awaiting,
        }
    }

    /// Send the command to a guest that waits for one (after a snapshot
    /// taken at its `ready`, or after a restore), raising the port's
    /// receive interrupt.
    pub fn send_command(&mut self) {
        Channel::send_command(&mut lock(&self.channel.state));
        self.feed();
    }
}

/// The control port in a snapshot: its UART and the channel's protocol
/// state (bytes still to go to the guest, the line being written, whether
/// the guest waits for a command). The command itself is not state: a
/// restored VM gets the one its `splitvm run --restore` names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlPortState {
    pub uart: crate::serial::UartState,
    pub to_guest: Vec<u8>,
    pub line: Vec<u8>,
    pub overlong: bool,
    pub awaiting: bool,
    pub ready_seen: bool,
}

impl BusDevice for ControlPort {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        let st = lock(&self.channel.state);
        Ok(Some(crate::DeviceState::of(
            "control_port",
            &ControlPortState {
                uart: self.uart.save(),
                to_guest: st.to_guest.iter().copied().collect(),
                line: st.line.clone(),
                overlong: st.overlong,
                awaiting: st.awaiting,
                ready_seen: st.ready_seen,
            },
        )?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        let s: ControlPortState = s.get("control_port")?;
        self.uart.restore(&s.uart)?;
        let mut st = lock(&self.channel.state);
        st.to_guest = s.to_guest.iter().copied().collect();
        st.line = s.line.clone();
        st.overlong = s.overlong;
        st.awaiting = s.awaiting;
        st.ready_seen = s.ready_seen;
        Ok(())
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.uart.read(offset, data);
        self.feed();
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.uart.write(offset, data);
        self.feed();
    }
}

/// A byte counter in front of a stream port's sink (stdout, stderr).
pub struct CountingSink {
    inner: Box<dyn Write + Send>,
    channel: Arc<Channel>,
    stderr: bool,
}

impl CountingSink {
    pub fn new(inner: Box<dyn Write + Send>, channel: Arc<Channel>, stderr: bool) -> Self {
        CountingSink {
            inner,
            channel,
            stderr,
        }
    }
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let c = if self.stderr {
            &self.channel.stderr_bytes
        } else {
            &self.channel.stdout_bytes
        };
        c.fetch_add(buf.len() as u64, Ordering::Relaxed);
        // The command's output is the product: flush every write, and never
        // let a closed pipe on the host stop the guest.
        let _ = self.inner.write_all(buf);
        let _ = self.inner.flush();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = base64_encode(&data);
            assert_eq!(base64_decode(&s), Some(data));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
    }

    #[test]
    fn base64_rejects_bad_input() {
        assert_eq!(base64_decode("abc"), None);
        assert_eq!(base64_decode("ab!d"), None);
        assert_eq!(base64_decode("a=bc"), None);
        assert_eq!(base64_decode("ab=c"), None);
    }

    #[test]
    fn run_message_carries_argv_with_spaces_and_quotes() {
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "echo 'a b' \"c\"; exit 3".into(),
        ];
        let line = Message::Run(argv.clone()).encode();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            Message::decode(&line[..line.len() - 1]),
            Some(Message::Run(argv))
        );
    }

    #[test]
    fn guest_messages_parse_and_garbage_does_not() {
        assert_eq!(Message::decode(b"ready"), Some(Message::Ready));
        assert_eq!(Message::decode(b"ready\r"), Some(Message::Ready));
        assert_eq!(Message::decode(b"exit 3"), Some(Message::Exit(3)));
        assert_eq!(Message::decode(b"exit 256"), None);
        assert_eq!(Message::decode(b"exit -1"), None);
        assert_eq!(Message::decode(b"exit"), None);
        assert_eq!(Message::decode(b"run !!!!"), None);
        assert_eq!(Message::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn ready_queues_the_command_once_and_exit_stops_the_vm() {
        let control = Arc::new(VmControl::new());
        let ch = Channel::new(control.clone(), Some(vec!["true".into()]));
        ch.guest_line(b"ready");
        let sent = ch.take_input(usize::MAX);
        assert_eq!(sent, Message::Run(vec!["true".into()]).encode());
        ch.guest_line(b"ready");
        assert!(ch.take_input(usize::MAX).is_empty());
        assert!(!control.is_stopping());
        ch.guest_line(b"exit 7");
        assert_eq!(ch.exit_status(), Some(7));
        assert_eq!(control.reason(), Some(ExitReason::CommandExit(7)));
        ch.guest_line(b"nonsense");
        assert_eq!(ch.bad_lines(), 1);
    }

    #[test]
    fn control_sink_drops_overlong_lines() {
        let control = Arc::new(VmControl::new());
        let ch = Channel::new(control, None);
        let mut sink = ControlSink {
            channel: ch.clone(),
        };
        sink.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        sink.write_all(b"\nready\n").unwrap();
        assert_eq!(ch.bad_lines(), 1);
        assert!(ch.ready_seen());
    }
}
