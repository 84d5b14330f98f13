//! virtio-net (virtio 1.2, 5.1) on a host TAP interface.
//!
//! Two queues of [`QUEUE_SIZE`] entries: receive (index [`RX_QUEUE`] = 0)
//! and transmit ([`TX_QUEUE`] = 1); no control queue, no multiqueue.
//! Offered features: VERSION_1, NET_F_MAC, NET_F_STATUS (link always up),
//! RING_F_EVENT_IDX, RING_F_INDIRECT_DESC. No checksum or segmentation
//! offloads and no MRG_RXBUF: with VERSION_1 every frame carries the
//! 12-byte `virtio_net_hdr_v1`, the same header the tap is configured with,
//! so frames pass between the queues and the tap unchanged (the device
//! sets `num_buffers` to 1 on receive). The Linux driver then posts
//! receive buffers of 1518 + 12 bytes, so the tap's MTU must stay at 1500
//! (frames that do not fit the posted buffer are dropped and counted).
//!
//! One worker thread waits in epoll on the stop eventfd, both queue notify
//! eventfds and the tap. TX: each chain is gathered and written to the tap
//! as one frame. RX: a frame read from the tap is written into the next
//! receive chain; when the driver has posted no buffer the frame is kept,
//! the tap is removed from the epoll set (so the kernel queues or drops
//! further frames) and reading resumes on the next receive-queue
//! notification.
//!
//! Guest errors never panic and are logged once each: chains with buffers
//! outside guest memory or of the wrong direction (a device-writable
//! buffer in a TX chain, a device-readable one in an RX chain) are
//! completed with used length 0 and counted in `bad_chains` (a TX frame is
//! dropped; an RX frame waits for the next buffer). Chains that do not
//! terminate and available rings that run ahead make the device stop
//! using that queue and request DEVICE_NEEDS_RESET (`broken_queue`).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::block::read_config_bytes;
use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::worker::{
    drain_eventfd, drain_queue, pop_chain, walk_chain, BufStream, Chain, ChainError, Poller,
    QueueRun, Worker,
};
use super::{
    ActivateError, ActiveQueue, QueuePosition, VirtioDevice, VirtioInterrupt, TYPE_NET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::sync::WarnOnce;

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;

/// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Largest frame handled, vnet header included (a 64 KiB IP packet plus
/// Ethernet and VLAN headers).
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

/// Frames or chains handled per pass before checking for a stop request.
const BUDGET: usize = 4 * QUEUE_SIZE as usize;
/// mac (6), status (2).
const CONFIG_LEN: usize = 8;

const WARN_BAD_CHAIN: u32 = 1 << 0;
const WARN_TX: u32 = 1 << 1;
const WARN_RX: u32 = 1 << 2;
const WARN_BROKEN: u32 = 1 << 3;
const WARN_TOO_BIG: u32 = 1 << 4;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_TAP: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
}

#[derive(Default)]
struct Counters {
    notifications: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_errors: AtomicU64,
    tx_dropped: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_errors: AtomicU64,
    rx_dropped: AtomicU64,
    rx_no_buffers: AtomicU64,
    bad_chains: AtomicU64,
    broken_queue: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the net device counters. Byte counts exclude the vnet
/// header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Queue notifications (ioeventfd signals) consumed, both queues.
    pub notifications: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the tap refused.
    pub tx_errors: u64,
    /// Frames dropped before the tap (runt or oversized).
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Tap read failures and runt frames from the tap.
    pub rx_errors: u64,
    /// Frames larger than the receive buffer the driver posted.
    pub rx_dropped: u64,
    /// Times reception paused because the driver had posted no buffer.
    pub rx_no_buffers: u64,
    /// Chains with buffers outside guest memory or of the wrong direction.
    pub bad_chains: u64,
    /// Times a queue was found broken and a reset requested.
    pub broken_queue: u64,
}

impl NetStats {
    /// (name, value) pairs for a statistics report.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("notifications", self.notifications),
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("tx_errors", self.tx_errors),
            ("tx_dropped", self.tx_dropped),
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
            ("rx_errors", self.rx_errors),
            ("rx_dropped", self.rx_dropped),
            ("rx_no_buffers", self.rx_no_buffers),
            ("bad_chains", self.bad_chains),
            ("broken_queue", self.broken_queue),
        ]
    }
}

impl Counters {
    fn snapshot(&self) -> NetStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            notifications: g(&self.notifications),
            tx_packets: g(&self.tx_packets),
            tx_bytes: g(&self.tx_bytes),
            tx_errors: g(&self.tx_errors),
            tx_dropped: g(&self.tx_dropped),
            rx_packets: g(&self.rx_packets),
            rx_bytes: g(&self.rx_bytes),
            rx_errors: g(&self.rx_errors),
            rx_dropped: g(&self.rx_dropped),
            rx_no_buffers: g(&self.rx_no_buffers),
            bad_chains: g(&self.bad_chains),
            broken_queue: g(&self.broken_queue),
        }
    }
}

/// Parse a MAC address written as six colon-separated hex bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A stable locally administered unicast MAC derived from the tap name
/// (52:54:00:xx:xx:xx).
pub fn default_mac(tap_name: &str) -> [u8; 6] {
    // FNV-1a.
    let mut h: u32 = 0x811c_9dc5;
    for b in tap_name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_le_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// Result of one receive pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RxRun {
    completed: usize,
    notify: bool,
    /// A frame waits and the driver has posted no buffer: stop polling
    /// the tap until the next receive-queue notification.
    no_buffers: bool,
    /// The tap failed: stop polling it for a while (a deleted tap reports
    /// an error at every poll), then try again by itself
    /// ([`TapRetry`]): the guest may have posted every buffer already, so
    /// no notification would ever come.
    tap_error: bool,
    /// The budget ran out: run again soon.
    more: bool,
    error: Option<ChainError>,
}

/// When to poll a failed tap again: 10 ms after the first error, doubling
/// up to 1 s while reads keep failing, back to 10 ms after one succeeds.
#[derive(Debug, Default)]
struct TapRetry {
    at: Option<std::time::Instant>,
    backoff: Option<std::time::Duration>,
}

impl TapRetry {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);

    fn failed(&mut self) {
        let b = self.backoff.map_or(Self::FIRST, |b| (b * 2).min(Self::MAX));
        self.backoff = Some(b);
        self.at = Some(std::time::Instant::now() + b);
    }

    fn succeeded(&mut self) {
        self.backoff = None;
    }

    /// The epoll timeout until the retry (ms, at least 1), or `idle`.
    fn timeout_ms(&self, idle: i32) -> i32 {
        match self.at {
            Some(at) => {
                let left = at.saturating_duration_since(std::time::Instant::now());
                (left.as_millis() as i32).clamp(1, 1000)
            }
            None => idle,
        }
    }

    /// True once, when the retry is due.
    fn due(&mut self) -> bool {
        match self.at {
            Some(at) if std::time::Instant::now() >= at => {
                self.at = None;
                true
            }
            _ => false,
        }
    }
}

/// Queue processing state, apart from the thread and its epoll.
struct NetEngine {
    tap: Arc<Tap>,
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    counters: Arc<Counters>,
    warned: Arc<WarnOnce>,
    rx_frame: Vec<u8>,
    /// Length of a frame read from the tap and not yet delivered.
    rx_pending: Option<usize>,
    tx_frame: Vec<u8>,
}

impl NetEngine {
    fn new(
        tap: Arc<Tap>,
        mem: GuestMemoryMmap,
        rx: ActiveQueue,
        tx: ActiveQueue,
        counters: Arc<Counters>,
        warned: Arc<WarnOnce>,
    ) -> NetEngine {
        NetEngine {
            tap,
            mem,
            rx,
            tx,
            counters,
            warned,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: None,
            tx_frame: vec![0; MAX_FRAME],
        }
    }

    fn bad_chain(&self, what: &str) {
        inc(&self.counters.bad_chains);
        self.warned
            .warn(WARN_BAD_CHAIN, format_args!("virtio-net: {what}"));
    }

    fn process_tx(&mut self) -> QueueRun {
        let NetEngine {
            tap,
            mem,
            tx,
            counters,
            warned,
            tx_frame,
            ..
        } = self;
        let bad = |what: &str| {
            inc(&counters.bad_chains);
            warned.warn(WARN_BAD_CHAIN, format_args!("virtio-net: {what}"));
        };
        drain_queue(&mut tx.queue, mem, BUDGET, |chain: &Chain| {
            if chain.out_of_memory {
                bad("TX buffer outside guest memory");
                return 0;
            }
            if chain.has(true) {
                bad("device-writable buffer in a TX chain");
                return 0;
            }
            let len = chain.len(false);
            if len <= VNET_HDR_LEN as u64 || len > MAX_FRAME as u64 {
                inc(&counters.tx_dropped);
                warned.warn(
                    WARN_TOO_BIG,
                    format_args!("virtio-net: TX frame of {len} bytes (header included) dropped"),
                );
                return 0;
            }
            let len = len as usize;
            let r = BufStream::new(mem, chain, false);
            if r.read_at(0, &mut tx_frame[..len]).is_err() {
                bad("TX buffer unreadable");
                return 0;
            }
            match tap.write_frame(&tx_frame[..len]) {
                Ok(_) => {
                    inc(&counters.tx_packets);
                    counters
                        .tx_bytes
                        .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    inc(&counters.tx_errors);
                    warned.warn(
                        WARN_TX,
                        format_args!("virtio-net: tap {} write failed: {e}", tap.name()),
                    );
                }
            }
            0
        })
    }

    fn process_rx(&mut self) -> RxRun {
        let mut run = RxRun::default();
        let mut steps = 0;
        loop {
            if steps == BUDGET {
                run.more = true;
                break;
            }
            steps += 1;
            let n = match self.rx_pending {
                Some(n) => n,
                None => match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        inc(&self.counters.rx_errors);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        inc(&self.counters.rx_errors);
                        self.warned.warn(
                            WARN_RX,
                            format_args!("virtio-net: tap {} read failed: {e}", self.tap.name()),
                        );
                        run.tap_error = true;
                        break;
                    }
                },
            };
            self.rx_pending = Some(n);
            let dc = match pop_chain(&mut self.rx.queue, &self.mem) {
                Ok(Some(dc)) => dc,
                Ok(None) => match self.rx.queue.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => {
                        inc(&self.counters.rx_no_buffers);
                        run.no_buffers = true;
                        break;
                    }
                    Err(_) => {
                        run.error = Some(ChainError::UsedRing);
                        break;
                    }
                },
                Err(e) => {
                    run.error = Some(e);
                    break;
                }
            };
            let chain = match walk_chain(dc) {
                Ok(c) => c,
                Err(e) => {
                    run.error = Some(e);
                    break;
                }
            };
            let used = if chain.out_of_memory {
                self.bad_chain("RX buffer outside guest memory");
                0
            } else if chain.has(false) {
                self.bad_chain("device-readable buffer in an RX chain");
                0
            } else if chain.len(true) < n as u64 {
                // Drop the frame, keep the buffer for the next one.
                inc(&self.counters.rx_dropped);
                self.warned.warn(
                    WARN_TOO_BIG,
                    format_args!(
                        "virtio-net: RX frame of {n} bytes does not fit a {}-byte buffer; dropped",
                        chain.len(true)
                    ),
                );
                self.rx_pending = None;
                self.rx.queue.go_to_previous_position();
                continue;
            } else {
                // num_buffers = 1 (no MRG_RXBUF).
                self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                let w = BufStream::new(&self.mem, &chain, true);
                if w.write_at(0, &self.rx_frame[..n]).is_ok() {
                    self.rx_pending = None;
                    inc(&self.counters.rx_packets);
                    self.counters
                        .rx_bytes
                        .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                    n as u32
                } else {
                    self.bad_chain("RX buffer not writable");
                    0
                }
            };
            if self.rx.queue.add_used(&self.mem, chain.head, used).is_err() {
                run.error = Some(ChainError::UsedRing);
                break;
            }
            run.completed += 1;
        }
        if run.completed > 0 {
            run.notify = self.rx.queue.needs_notification(&self.mem).unwrap_or(true);
        }
        run
    }

    fn broken(&self, interrupt: &dyn VirtioInterrupt, queue: u16, e: ChainError) {
        inc(&self.counters.broken_queue);
        self.warned.warn(
            WARN_BROKEN,
            format_args!("virtio-net: queue {queue} broken, device needs reset: {e}"),
        );
        interrupt.needs_reset();
    }

    /// The worker's loop; hands the engine (its queues) back when it stops.
    fn run(mut self, interrupt: Arc<dyn VirtioInterrupt>, stop: EventFd) -> NetEngine {
        let tap_fd = self.tap.as_raw_fd();
        let poller = match Poller::new().and_then(|p| {
            p.add(stop.as_raw_fd(), TOKEN_STOP)?;
            p.add(self.rx.notify.as_raw_fd(), TOKEN_RX)?;
            p.add(self.tx.notify.as_raw_fd(), TOKEN_TX)?;
            p.add(tap_fd, TOKEN_TAP)?;
            Ok(p)
        }) {
            Ok(p) => p,
            Err(e) => {
                log::error!("virtio-net: cannot set up the worker's epoll: {e}");
                interrupt.needs_reset();
                return self;
            }
        };
        let mut tap_polled = true;
        let pause_tap = |poller: &Poller, polled: &mut bool| {
            if *polled {
                if let Err(e) = poller.remove(tap_fd) {
                    log::error!("virtio-net: cannot stop polling the tap: {e}");
                }
                *polled = false;
            }
        };
        let (mut rx_broken, mut tx_broken) = (false, false);
        let (mut rx_more, mut tx_more) = (true, true);
        let mut retry = TapRetry::default();
        let mut tokens = Vec::new();
        loop {
            if tx_more && !tx_broken {
                let run = self.process_tx();
                if run.notify {
                    interrupt.notify_queue(self.tx.index);
                }
                if let Some(e) = run.error {
                    tx_broken = true;
                    self.broken(interrupt.as_ref(), self.tx.index, e);
                }
                tx_more = run.more;
            }
            if rx_more && !rx_broken {
                let run = self.process_rx();
                if run.notify {
                    interrupt.notify_queue(self.rx.index);
                }
                if let Some(e) = run.error {
                    rx_broken = true;
                    self.broken(interrupt.as_ref(), self.rx.index, e);
                }
                if run.no_buffers || run.tap_error || rx_broken {
                    pause_tap(&poller, &mut tap_polled);
                }
                if run.tap_error {
                    retry.failed();
                } else if tap_polled {
                    retry.succeeded();
                }
                rx_more = run.more;
            }
            let busy = (tx_more && !tx_broken) || (rx_more && !rx_broken);
            let timeout = if busy { 0 } else { retry.timeout_ms(-1) };
            if let Err(e) = poller.wait(&mut tokens, timeout) {
                log::error!("virtio-net: epoll wait failed, worker exits: {e}");
                return self;
            }
            if retry.due() && !rx_broken {
                if !tap_polled {
                    match poller.add(tap_fd, TOKEN_TAP) {
                        Ok(()) => tap_polled = true,
                        Err(e) => log::error!("virtio-net: cannot poll the tap: {e}"),
                    }
                }
                rx_more = true;
            }
            for &t in &tokens {
                match t {
                    TOKEN_STOP => return self,
                    TOKEN_RX => {
                        let n = drain_eventfd(&self.rx.notify);
                        self.counters.notifications.fetch_add(n, Ordering::Relaxed);
                        if !tap_polled && !rx_broken {
                            match poller.add(tap_fd, TOKEN_TAP) {
                                Ok(()) => tap_polled = true,
                                Err(e) => log::error!("virtio-net: cannot poll the tap: {e}"),
                            }
                        }
                        rx_more = true;
                    }
                    TOKEN_TX => {
                        let n = drain_eventfd(&self.tx.notify);
                        self.counters.notifications.fetch_add(n, Ordering::Relaxed);
                        tx_more = true;
                    }
                    TOKEN_TAP => rx_more = true,
                    _ => {}
                }
            }
        }
    }
}

/// A virtio network device. See the module documentation.
pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    counters: Arc<Counters>,
    warned: Arc<WarnOnce>,
    /// The engine (queues, a frame read from the tap and not yet
    /// delivered), on the worker thread or paused.
    worker: Worker<NetEngine>,
}

impl Net {
    /// Open tap interface `tap_name` and build a device with `mac` (default:
    /// [`default_mac`] of the name).
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        Ok(Net::with_tap(Tap::open(tap_name)?, mac))
    }

    /// A device on an already opened tap.
    pub fn with_tap(tap: Tap, mac: Option<[u8; 6]>) -> Net {
        let mac = mac.unwrap_or_else(|| default_mac(tap.name()));
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Net {
            tap: Arc::new(tap),
            mac,
            avail_features: VIRTIO_F_VERSION_1
                | VIRTIO_RING_F_EVENT_IDX
                | VIRTIO_RING_F_INDIRECT_DESC
                | VIRTIO_NET_F_MAC
                | VIRTIO_NET_F_STATUS,
            acked_features: 0,
            config,
            counters: Arc::new(Counters::default()),
            warned: Arc::new(WarnOnce::default()),
            worker: Worker::new("virtio-net"),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn name(&self) -> &str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (and
        // legacy drivers are not supported).
    }

    fn is_receive_queue(&self, index: u16) -> bool {
        index == RX_QUEUE
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_active() {
            return Err(ActivateError::Worker("virtio-net is already active".into()));
        }
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE if rx.is_none() => rx = Some(q),
                TX_QUEUE if tx.is_none() => tx = Some(q),
                i => return Err(ActivateError::BadQueue(i as usize)),
            }
        }
        let mut rx = rx.ok_or(ActivateError::BadQueue(RX_QUEUE as usize))?;
        let mut tx = tx.ok_or(ActivateError::BadQueue(TX_QUEUE as usize))?;
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.queue.set_event_idx(event_idx);
        tx.queue.set_event_idx(event_idx);
        let engine = NetEngine::new(
            self.tap.clone(),
            mem,
            rx,
            tx,
            self.counters.clone(),
            self.warned.clone(),
        );
        self.worker.start(engine, move |engine, stop| {
            engine.run(interrupt.clone(), stop)
        })
    }

    fn reset(&mut self) -> bool {
        self.worker.stop();
        self.acked_features = 0;
        true
    }

    fn pause(&mut self) -> Result<(), crate::StateError> {
        self.worker.pause();
        Ok(())
    }

    fn resume(&mut self) {
        self.worker.resume();
    }

    /// RX and TX positions. A frame the worker read from the tap and had
    /// not yet delivered is not part of a snapshot: a restored guest never
    /// sees it, as a network may drop a frame.
    fn queue_positions(&self) -> Vec<QueuePosition> {
        self.worker
            .paused()
            .into_iter()
            .flat_map(|e| [QueuePosition::of(&e.rx), QueuePosition::of(&e.tx)])
            .collect()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats().pairs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::tap::testutil::tap_or_skip;
    use crate::virtio::worker::new_eventfd;
    use crate::virtio::worker::testutil::*;
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    use virtio_queue::Queue;
    use vm_memory::{Address, Bytes, GuestAddress};

    // The RX and TX queues share the descriptor/avail/used layout of
    // `testutil` but live 0x8000 apart for the TX queue.
    const TX_OFF: u64 = 0x8000;

    fn tx_queue(size: u16) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some((DESC + TX_OFF) as u32), Some(0));
        q.set_avail_ring_address(Some((AVAIL + TX_OFF) as u32), Some(0));
        q.set_used_ring_address(Some((USED + TX_OFF) as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn tx_chain(mem: &GuestMemoryMmap, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if w { F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let base = GuestAddress(DESC + TX_OFF + 16 * u64::from(i));
            mem.write_obj(addr, base).unwrap();
            mem.write_obj(len, base.unchecked_add(8)).unwrap();
            mem.write_obj(flags, base.unchecked_add(12)).unwrap();
            mem.write_obj(i + 1, base.unchecked_add(14)).unwrap();
        }
        let avail = AVAIL + TX_OFF;
        let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
        mem.write_obj(first, GuestAddress(avail + 4 + 2 * u64::from(idx % 256)))
            .unwrap();
        mem.write_obj(idx + 1, GuestAddress(avail + 2)).unwrap();
    }

    /// A tap stand-in: our end of a non-blocking datagram socket pair.
    fn fake_tap() -> (Tap, UnixDatagram) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let file = File::from(OwnedFd::from(ours));
        (Tap::from_file(file, "fake0"), peer)
    }

    fn engine(tap: Tap, mem: &GuestMemoryMmap) -> NetEngine {
        let rx = ActiveQueue {
            index: RX_QUEUE,
            queue: queue(16),
            notify: new_eventfd().unwrap(),
        };
        let tx = ActiveQueue {
            index: TX_QUEUE,
            queue: tx_queue(16),
            notify: new_eventfd().unwrap(),
        };
        NetEngine::new(
            Arc::new(tap),
            mem.clone(),
            rx,
            tx,
            Arc::default(),
            Arc::default(),
        )
    }

    fn frame(ethertype: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&[0xff; 6]); // dst: broadcast
        f.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        while f.len() < VNET_HDR_LEN + len {
            f.push(f.len() as u8);
        }
        f
    }

    #[test]
    fn net_tx_frame_reaches_tap() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        let f = frame(0x88b5, 60);
        mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(DATA))
            .unwrap();
        mem.write_slice(&f[VNET_HDR_LEN..], GuestAddress(DATA + 0x100))
            .unwrap();
        tx_chain(&mem, 0, &[(DATA, 12, false), (DATA + 0x100, 60, false)]);
        let run = e.process_tx();
        assert_eq!((run.completed, run.error), (1, None));
        let mut got = vec![0u8; 200];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        let s = e.counters.snapshot();
        assert_eq!((s.tx_packets, s.tx_bytes), (1, 60));
    }

    #[test]
    fn net_tx_chain_with_writable_buffer_is_dropped() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        tx_chain(&mem, 0, &[(DATA, 12, false), (DATA + 0x100, 60, true)]);
        let run = e.process_tx();
        assert_eq!(run.completed, 1);
        assert!(peer.recv(&mut [0u8; 100]).is_err(), "nothing sent");
        assert_eq!(e.counters.snapshot().bad_chains, 1);
    }

    #[test]
    fn net_rx_frame_reaches_guest_with_header() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        add_chain(&mem, 0, &[(DATA, 1530, true)]);
        let mut f = frame(0x88b5, 100);
        f[10] = 0x77; // num_buffers garbage from the tap: overwritten
        peer.send(&f).unwrap();
        let run = e.process_rx();
        assert_eq!((run.completed, run.no_buffers), (1, false));
        assert!(run.notify);
        assert_eq!(used_elem(&mem, 0), (0, f.len() as u32));
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }

    #[test]
    fn net_rx_without_buffers_waits_for_guest() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        let f = frame(0x88b5, 60);
        peer.send(&f).unwrap();
        let run = e.process_rx();
        assert!(run.no_buffers);
        assert_eq!(run.completed, 0);
        assert_eq!(e.rx_pending, Some(f.len()));
        add_chain(&mem, 0, &[(DATA, 1530, true)]);
        let run = e.process_rx();
        assert_eq!(run.completed, 1);
        assert_eq!(e.rx_pending, None);
        assert_eq!(e.counters.snapshot().rx_no_buffers, 1);
    }

    #[test]
    fn net_rx_frame_too_big_for_buffer_is_dropped_and_buffer_kept() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        add_chain(&mem, 0, &[(DATA, 64, true)]);
        peer.send(&frame(0x88b5, 200)).unwrap();
        peer.send(&frame(0x88b5, 40)).unwrap();
        let run = e.process_rx();
        assert_eq!(run.completed, 1);
        assert_eq!(used_elem(&mem, 0), (0, 52));
        assert_eq!(e.counters.snapshot().rx_dropped, 1);
    }

    #[test]
    fn net_looping_rx_chain_requests_reset() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut e = engine(tap, &mem);
        write_desc(&mem, 0, DATA, 100, F_WRITE | F_NEXT, 0);
        publish(&mem, 0);
        peer.send(&frame(0x88b5, 60)).unwrap();
        let run = e.process_rx();
        assert_eq!(run.error, Some(ChainError::Unterminated));
        assert_eq!(used_idx(&mem), 0);
    }

    #[test]
    fn net_config_reports_mac_and_link_up() {
        let (tap, _peer) = fake_tap();
        let net = Net::with_tap(tap, Some([2, 0, 0, 0xaa, 0xbb, 0xcc]));
        let mut cfg = [0u8; 8];
        net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[2, 0, 0, 0xaa, 0xbb, 0xcc]);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), VIRTIO_NET_S_LINK_UP);
        let f = net.features();
        assert_ne!(f & VIRTIO_NET_F_MAC, 0);
        assert_ne!(f & VIRTIO_NET_F_STATUS, 0);
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    }

    #[test]
    fn mac_parsing_and_default() {
        assert_eq!(
            parse_mac("52:54:00:12:ab:Cd"),
            Some([0x52, 0x54, 0, 0x12, 0xab, 0xcd])
        );
        assert_eq!(parse_mac("52:54:00:12:ab"), None);
        assert_eq!(parse_mac("52:54:00:12:ab:cd:ef"), None);
        assert_eq!(parse_mac("52:54:00:12:ab:xyz"), None);
        let m = default_mac("tap0");
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(m, default_mac("tap0"));
        assert_ne!(m, default_mac("tap1"));
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn activate(
        net: &mut Net,
        mem: &GuestMemoryMmap,
    ) -> (EventFd, EventFd, Arc<RecordingInterrupt>) {
        let rx_kick = new_eventfd().unwrap();
        let tx_kick = new_eventfd().unwrap();
        let irq = Arc::new(RecordingInterrupt::default());
        net.ack_features(net.features());
        net.activate(
            mem.clone(),
            vec![
                ActiveQueue {
                    index: RX_QUEUE,
                    queue: queue(16),
                    notify: rx_kick.try_clone().unwrap(),
                },
                ActiveQueue {
                    index: TX_QUEUE,
                    queue: tx_queue(16),
                    notify: tx_kick.try_clone().unwrap(),
                },
            ],
            irq.clone(),
        )
        .unwrap();
        (rx_kick, tx_kick, irq)
    }

    #[test]
    fn net_worker_resumes_rx_after_guest_posts_buffers() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        let mut net = Net::with_tap(tap, None);
        let (rx_kick, tx_kick, irq) = activate(&mut net, &mem);
        // A frame arrives before any buffer: held, tap paused.
        let f = frame(0x88b5, 60);
        peer.send(&f).unwrap();
        wait_until("rx pause", || net.stats().rx_no_buffers == 1);
        add_chain(&mem, 0, &[(DATA, 1530, true)]);
        rx_kick.write(1).unwrap();
        wait_until("rx delivery", || used_idx(&mem) == 1);
        assert_eq!(used_elem(&mem, 0), (0, f.len() as u32));
        wait_until("rx interrupt", || irq.queue.load(Ordering::SeqCst) >= 1);
        // And TX through the worker.
        tx_chain(&mem, 0, &[(DATA + 0x2000, 72, false)]);
        tx_kick.write(1).unwrap();
        let mut got = [0u8; 128];
        wait_until("tx frame", || peer.recv(&mut got).is_ok());
        assert!(net.reset());
        assert_eq!(net.stats().notifications, 2);
    }

    /// A read error on the tap while the guest has posted every RX buffer
    /// (so no RX notification will come): the worker polls the tap again
    /// by itself, and the next frame reaches the guest.
    #[test]
    fn net_rx_resumes_after_a_tap_read_error_with_every_buffer_posted() {
        let mem = memory();
        let (tap, peer) = fake_tap();
        tap.fail_reads.store(1, Ordering::SeqCst);
        let mut net = Net::with_tap(tap, None);
        for i in 0..16u16 {
            add_chain(&mem, i, &[(DATA + 0x800 * u64::from(i), 1530, true)]);
        }
        let (_rx_kick, _tx_kick, _irq) = activate(&mut net, &mem);
        let f = frame(0x88b5, 60);
        peer.send(&f).unwrap();
        wait_until("the read error", || net.stats().rx_errors == 1);
        wait_until("rx delivery after the error", || used_idx(&mem) == 1);
        assert_eq!(used_elem(&mem, 0), (0, f.len() as u32));
        // And the next frame too, with no kick from the guest.
        peer.send(&f).unwrap();
        wait_until("the next frame", || used_idx(&mem) == 2);
        assert_eq!(net.stats().rx_packets, 2);
        assert!(net.reset());
    }

    /// Real tap (root with CAP_NET_ADMIN only): a guest TX frame shows up
    /// on the host interface, and a frame sent on the host interface
    /// reaches a guest RX buffer.
    #[test]
    fn net_frames_cross_a_real_tap() {
        if !tap_or_skip("net_frames_cross_a_real_tap") {
            return;
        }
        const NAME: &str = "spvmtest1";
        const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
        let mut net = Net::new(NAME, None).unwrap();
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{NAME}/disable_ipv6"), "1");
        let host = host::PacketSocket::bind(NAME, ETHERTYPE).unwrap();
        host::set_up(NAME).unwrap();
        let mem = memory();
        let (rx_kick, tx_kick, _irq) = activate(&mut net, &mem);

        // Guest -> host.
        let f = frame(ETHERTYPE, 60);
        mem.write_slice(&f, GuestAddress(DATA + 0x2000)).unwrap();
        tx_chain(&mem, 0, &[(DATA + 0x2000, f.len() as u32, false)]);
        tx_kick.write(1).unwrap();
        let mut got = [0u8; 256];
        let mut n = 0;
        wait_until("frame on the host side", || {
            n = host.recv(&mut got).unwrap_or(0);
            n > 0
        });
        assert_eq!(&got[..n], &f[VNET_HDR_LEN..]);

        // Host -> guest (other traffic, e.g. IPv6 noise, may come first).
        for i in 0..16 {
            add_chain(&mem, i, &[(DATA + 0x1000 * u64::from(i + 4), 1530, true)]);
        }
        rx_kick.write(1).unwrap();
        let sent = frame(ETHERTYPE, 80);
        host.send(&sent[VNET_HDR_LEN..]).unwrap();
        wait_until("frame in a guest buffer", || {
            (0..used_idx(&mem)).any(|u| {
                let (id, len) = used_elem(&mem, u);
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(DATA + 0x1000 * u64::from(id + 4)))
                    .unwrap();
                len as usize == sent.len() && buf[VNET_HDR_LEN..] == sent[VNET_HDR_LEN..]
            })
        });
        assert!(net.reset());
        drop(net);
        assert!(!std::path::Path::new(&format!("/sys/class/net/{NAME}")).exists());
    }

    mod host {
        //! Host-side helpers for the real-tap test (AF_PACKET).
        use std::io;

        pub struct PacketSocket {
            fd: libc::c_int,
            ifindex: libc::c_int,
            ethertype: u16,
        }

        fn ifindex(name: &str) -> io::Result<libc::c_int> {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: `c` is a valid NUL-terminated string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if i == 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(i as libc::c_int)
            }
        }

        fn addr(ifindex: libc::c_int, ethertype: u16) -> libc::sockaddr_ll {
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            a.sll_family = libc::AF_PACKET as u16;
            a.sll_protocol = ethertype.to_be();
            a.sll_ifindex = ifindex;
            a.sll_halen = 6;
            a.sll_addr[..6].fill(0xff);
            a
        }

        impl PacketSocket {
            pub fn bind(name: &str, ethertype: u16) -> io::Result<PacketSocket> {
                let ifindex = ifindex(name)?;
                // SAFETY: plain socket creation.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        i32::from(ethertype.to_be()),
                    )
                };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let s = PacketSocket {
                    fd,
                    ifindex,
                    ethertype,
                };
                let a = addr(ifindex, ethertype);
                // SAFETY: `a` is a valid sockaddr_ll of the given size.
                let r = unsafe {
                    libc::bind(
                        fd,
                        &a as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(s)
            }

            pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }

            pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
                let a = addr(self.ifindex, self.ethertype);
                // SAFETY: frame and `a` are valid for the call.
                let n = unsafe {
                    libc::sendto(
                        self.fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        &a as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }
        }

        impl Drop for PacketSocket {
            fn drop(&mut self) {
                // SAFETY: we own the fd.
                unsafe { libc::close(self.fd) };
            }
        }

        /// Bring interface `name` up (SIOCSIFFLAGS |= IFF_UP).
        pub fn set_up(name: &str) -> io::Result<()> {
            #[repr(C)]
            struct IfReq {
                name: [u8; 16],
                flags: i16,
                _pad: [u8; 22],
            }
            let mut ifr = IfReq {
                name: [0; 16],
                flags: 0,
                _pad: [0; 22],
            };
            ifr.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: plain socket creation.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write a struct ifreq.
            let r = unsafe {
                if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
                    -1
                } else {
                    ifr.flags |= libc::IFF_UP as i16;
                    libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut ifr)
                }
            };
            let err = io::Error::last_os_error();
            // SAFETY: we own the fd.
            unsafe { libc::close(fd) };
            if r < 0 {
                Err(err)
            } else {
                Ok(())
            }
        }
    }

    mod fuzz {
        //! Property-based harness for the RX/TX chain handling (the
        //! workspace has no nightly toolchain, so `cargo fuzz` is not
        //! available; proptest is the equivalent fuzz harness): random
        //! descriptor tables and available rings on both queues must never
        //! panic. Runs [`CASES`] cases.
        use super::*;
        use proptest::prelude::*;

        const CASES: u32 = 2_000;

        fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
            (
                prop_oneof![3 => DATA..(MEM_SIZE as u64), 1 => any::<u64>(), 1 => 0u64..0x10000],
                prop_oneof![3 => 0u32..2000, 1 => any::<u32>()],
                0u16..8,
                0u16..40,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            #[test]
            fn random_queues_never_panic_net_engine(
                descs in proptest::collection::vec(desc(), 32),
                avail in prop_oneof![3 => 0u16..20, 1 => any::<u16>()],
                ring in proptest::collection::vec(0u16..40, 16),
                frames in proptest::collection::vec(0usize..2000, 0..4),
            ) {
                let mem = memory();
                let (tap, peer) = fake_tap();
                let mut e = engine(tap, &mem);
                for (i, &(a, l, f, n)) in descs.iter().enumerate() {
                    let off = if i < 16 { 0 } else { TX_OFF };
                    let base = GuestAddress(DESC + off + 16 * (i as u64 % 16));
                    mem.write_obj(a, base).unwrap();
                    mem.write_obj(l, base.unchecked_add(8)).unwrap();
                    mem.write_obj(f, base.unchecked_add(12)).unwrap();
                    mem.write_obj(n, base.unchecked_add(14)).unwrap();
                }
                for off in [0, TX_OFF] {
                    for (i, &h) in ring.iter().enumerate() {
                        mem.write_obj(h, GuestAddress(AVAIL + off + 4 + 2 * i as u64)).unwrap();
                    }
                    mem.write_obj(avail, GuestAddress(AVAIL + off + 2)).unwrap();
                }
                for len in frames {
                    let _ = peer.send(&vec![0xab; len]);
                }
                let tx = e.process_tx();
                let rx = e.process_rx();
                prop_assert!(tx.completed <= BUDGET && rx.completed <= BUDGET);
            }
        }
    }
}
