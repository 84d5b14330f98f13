//! virtio-blk (virtio 1.2, 5.2) backed by a host file or block device.
//!
//! One request queue of [`QUEUE_SIZE`] entries, processed on a worker
//! thread that sleeps in epoll on the queue's notify eventfd (written by
//! KVM through an ioeventfd) and a stop eventfd. Requests are done
//! synchronously with `pread`/`pwrite` through a bounce buffer; FLUSH is
//! `fdatasync`.
//!
//! Offered features: VERSION_1, BLK_F_FLUSH, BLK_F_SEG_MAX, BLK_F_SIZE_MAX,
//! RING_F_EVENT_IDX, RING_F_INDIRECT_DESC, and BLK_F_RO for a read-only
//! disk. Supported requests: IN, OUT, FLUSH, GET_ID (serial
//! `splitvm-<file name>`, truncated to 20 bytes); anything else completes
//! with VIRTIO_BLK_S_UNSUPP.
//!
//! Guest errors never panic the VMM and are each logged once:
//! - a request whose buffers lie outside guest memory, are misordered
//!   (readable after writable), whose header is missing or not
//!   device-readable, whose data length is not a multiple of 512, or which
//!   reaches past the end of the disk completes with VIRTIO_BLK_S_IOERR
//!   (counted in `bad_requests`); OUT on a read-only disk too
//!   (`ro_rejected`); host I/O errors too (`io_errors`);
//! - a request without a device-writable status byte (or whose status byte
//!   lies outside guest memory) is completed with used length 0;
//! - a chain that does not terminate (loop, more descriptors than the
//!   queue, `next` outside the table, bad indirect table) or an available
//!   ring that runs ahead of the queue size makes the device stop using the
//!   queue and ask for a reset (DEVICE_NEEDS_RESET, `broken_queue`).
//!
//! The image size is rounded down to whole 512-byte sectors.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{drain_eventfd, drain_queue, BufStream, Chain, Poller, Worker};
use super::{
    ActivateError, ActiveQueue, QueuePosition, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::sync::WarnOnce;

/// Size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

/// Feature bits (virtio 1.2, 5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Largest data segment the driver may use (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments in one request (config `seg_max`): the queue minus
/// the header and the status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

const HEADER_LEN: u64 = 16;
const BOUNCE_LEN: usize = 128 * 1024;
/// Chains handled per pass before the worker checks for a stop request.
const BUDGET: usize = 4 * QUEUE_SIZE as usize;
/// capacity (8), size_max (4), seg_max (4), geometry (4), blk_size (4).
const CONFIG_LEN: usize = 24;

const WARN_NO_STATUS: u32 = 1 << 0;
const WARN_OUT_OF_MEMORY: u32 = 1 << 1;
const WARN_MISORDERED: u32 = 1 << 2;
const WARN_HEADER: u32 = 1 << 3;
const WARN_RANGE: u32 = 1 << 4;
const WARN_IO: u32 = 1 << 5;
const WARN_RO: u32 = 1 << 6;
const WARN_BROKEN: u32 = 1 << 7;
const WARN_UNSUPP: u32 = 1 << 8;

const TOKEN_STOP: u64 = 0;
const TOKEN_QUEUE: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot get the size of disk image {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
}

#[derive(Default)]
struct Counters {
    notifications: AtomicU64,
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_id: AtomicU64,
    unsupported: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    io_errors: AtomicU64,
    ro_rejected: AtomicU64,
    bad_requests: AtomicU64,
    broken_queue: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the block device counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Queue notifications (ioeventfd signals) consumed by the worker.
    pub notifications: u64,
    /// Requests completed (any type, any status).
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub get_id: u64,
    /// Requests of an unsupported type (VIRTIO_BLK_S_UNSUPP).
    pub unsupported: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Host I/O failures (VIRTIO_BLK_S_IOERR).
    pub io_errors: u64,
    /// OUT requests refused on a read-only disk (VIRTIO_BLK_S_IOERR).
    pub ro_rejected: u64,
    /// Malformed requests (bad buffers, header, length or range).
    pub bad_requests: u64,
    /// Times the queue was found broken and a reset requested.
    pub broken_queue: u64,
}

impl BlockStats {
    /// (name, value) pairs for a statistics report.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("notifications", self.notifications),
            ("requests", self.requests),
            ("reads", self.reads),
            ("writes", self.writes),
            ("flushes", self.flushes),
            ("get_id", self.get_id),
            ("unsupported", self.unsupported),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("io_errors", self.io_errors),
            ("ro_rejected", self.ro_rejected),
            ("bad_requests", self.bad_requests),
            ("broken_queue", self.broken_queue),
        ]
    }
}

impl Counters {
    fn snapshot(&self) -> BlockStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStats {
            notifications: g(&self.notifications),
            requests: g(&self.requests),
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            get_id: g(&self.get_id),
            unsupported: g(&self.unsupported),
            bytes_read: g(&self.bytes_read),
            bytes_written: g(&self.bytes_written),
            io_errors: g(&self.io_errors),
            ro_rejected: g(&self.ro_rejected),
            bad_requests: g(&self.bad_requests),
            broken_queue: g(&self.broken_queue),
        }
    }
}

/// The request engine: everything the worker needs, minus the thread.
struct RequestHandler {
    file: Arc<File>,
    readonly: bool,
    capacity: u64,
    serial: [u8; SERIAL_LEN],
    counters: Arc<Counters>,
    warned: Arc<WarnOnce>,
    bounce: Vec<u8>,
}

impl RequestHandler {
    /// Complete one request; returns the used length (bytes written into
    /// the chain, status byte included).
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
        inc(&self.counters.requests);
        let w = BufStream::new(mem, chain, true);
        if w.is_empty() {
            inc(&self.counters.bad_requests);
            self.warned.warn(
                WARN_NO_STATUS,
                format_args!("virtio-blk: request without a device-writable status byte"),
            );
            return 0;
        }
        let status_off = w.len() - 1;
        let (status, written) = if chain.out_of_memory {
            inc(&self.counters.bad_requests);
            self.warned.warn(
                WARN_OUT_OF_MEMORY,
                format_args!("virtio-blk: request buffer outside guest memory"),
            );
            (VIRTIO_BLK_S_IOERR, 0)
        } else if chain.misordered {
            inc(&self.counters.bad_requests);
            self.warned.warn(
                WARN_MISORDERED,
                format_args!("virtio-blk: device-readable buffer after a device-writable one"),
            );
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            self.execute(mem, chain, &w, status_off)
        };
        if w.write_at(status_off, &[status]).is_err() {
            inc(&self.counters.bad_requests);
            self.warned.warn(
                WARN_NO_STATUS,
                format_args!("virtio-blk: status byte cannot be written"),
            );
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Run a well-formed request; returns its status and the data bytes
    /// written into the chain.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &Chain,
        w: &BufStream<'_>,
        data_len_in: u64,
    ) -> (u8, u64) {
        let r = BufStream::new(mem, chain, false);
        let mut hdr = [0u8; HEADER_LEN as usize];
        if r.read_at(0, &mut hdr).is_err() {
            inc(&self.counters.bad_requests);
            self.warned.warn(
                WARN_HEADER,
                format_args!("virtio-blk: request header missing, short or not device-readable"),
            );
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(s);
        match ty {
            VIRTIO_BLK_T_IN => {
                inc(&self.counters.reads);
                self.read(sector, data_len_in, w)
            }
            VIRTIO_BLK_T_OUT => {
                inc(&self.counters.writes);
                if self.readonly {
                    inc(&self.counters.ro_rejected);
                    self.warned.warn(
                        WARN_RO,
                        format_args!("virtio-blk: write to a read-only disk refused"),
                    );
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                (self.write(sector, r.len() - HEADER_LEN, &r), 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                inc(&self.counters.flushes);
                match self.file.sync_data() {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => {
                        inc(&self.counters.io_errors);
                        self.warned
                            .warn(WARN_IO, format_args!("virtio-blk: flush failed: {e}"));
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                inc(&self.counters.get_id);
                let n = (SERIAL_LEN as u64).min(data_len_in);
                match w.write_at(0, &self.serial[..n as usize]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            other => {
                inc(&self.counters.unsupported);
                self.warned.warn(
                    WARN_UNSUPP,
                    format_args!("virtio-blk: unsupported request type {other}"),
                );
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// Byte offset of `[sector, +len)` if it is whole sectors inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(off)
    }

    fn bad_range(&self, sector: u64, len: u64) -> (u8, u64) {
        inc(&self.counters.bad_requests);
        self.warned.warn(
            WARN_RANGE,
            format_args!(
                "virtio-blk: request of {len} bytes at sector {sector} is not whole sectors inside the {}-sector disk",
                self.capacity
            ),
        );
        (VIRTIO_BLK_S_IOERR, 0)
    }

    fn io_error(&self, what: &str, e: io::Error) {
        inc(&self.counters.io_errors);
        self.warned
            .warn(WARN_IO, format_args!("virtio-blk: {what} failed: {e}"));
    }

    fn read(&mut self, sector: u64, len: u64, w: &BufStream<'_>) -> (u8, u64) {
        let Some(off) = self.range(sector, len) else {
            return self.bad_range(sector, len);
        };
        let mut done = 0u64;
        while done < len {
            let n = (BOUNCE_LEN as u64).min(len - done) as usize;
            let buf = &mut self.bounce[..n];
            if let Err(e) = self.file.read_exact_at(buf, off + done) {
                self.io_error("read", e);
                return (VIRTIO_BLK_S_IOERR, done);
            }
            if w.write_at(done, buf).is_err() {
                return (VIRTIO_BLK_S_IOERR, done);
            }
            done += n as u64;
        }
        self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
        (VIRTIO_BLK_S_OK, len)
    }

    fn write(&mut self, sector: u64, len: u64, r: &BufStream<'_>) -> u8 {
        let Some(off) = self.range(sector, len) else {
            return self.bad_range(sector, len).0;
        };
        let mut done = 0u64;
        while done < len {
            let n = (BOUNCE_LEN as u64).min(len - done) as usize;
            let buf = &mut self.bounce[..n];
            if r.read_at(HEADER_LEN + done, buf).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            if let Err(e) = self.file.write_all_at(buf, off + done) {
                self.io_error("write", e);
                return VIRTIO_BLK_S_IOERR;
            }
            done += n as u64;
        }
        self.counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        VIRTIO_BLK_S_OK
    }
}

/// A virtio block device. See the module documentation.
pub struct Block {
    path: PathBuf,
    file: Arc<File>,
    readonly: bool,
    capacity: u64,
    serial: [u8; SERIAL_LEN],
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    counters: Arc<Counters>,
    warned: Arc<WarnOnce>,
    /// The request engine and its queue, on the worker thread or paused.
    worker: Worker<(RequestHandler, ActiveQueue)>,
}

impl Block {
    /// Open `path` (read-write unless `readonly`) as a virtio-blk disk.
    pub fn new(path: impl AsRef<Path>, readonly: bool) -> Result<Block, BlockError> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(BlockError::Open {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, "is a directory"),
            });
        }
        // Works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "virtio-blk: {} is not a multiple of 512 bytes; the last {} bytes are not visible",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let capacity = size / SECTOR_SIZE;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut serial = [0u8; SERIAL_LEN];
        let id = format!("splitvm-{name}");
        let n = id.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);

        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_SIZE_MAX;
        if readonly {
            avail_features |= VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Block {
            path,
            file: Arc::new(file),
            readonly,
            capacity,
            serial,
            avail_features,
            acked_features: 0,
            config,
            counters: Arc::new(Counters::default()),
            warned: Arc::new(WarnOnce::default()),
            worker: Worker::new("virtio-blk"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// The GET_ID serial (NUL-padded).
    pub fn serial(&self) -> [u8; SERIAL_LEN] {
        self.serial
    }

    pub fn stats(&self) -> BlockStats {
        self.counters.snapshot()
    }

    fn handler(&self) -> RequestHandler {
        RequestHandler {
            file: self.file.clone(),
            readonly: self.readonly,
            capacity: self.capacity,
            serial: self.serial,
            counters: self.counters.clone(),
            warned: self.warned.clone(),
            bounce: vec![0; BOUNCE_LEN],
        }
    }
}

/// The worker's loop; hands the engine and queue back when it stops.
fn run_worker(
    mut handler: RequestHandler,
    mem: GuestMemoryMmap,
    mut aq: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    stop: EventFd,
) -> (RequestHandler, ActiveQueue) {
    let poller = match Poller::new().and_then(|p| {
        p.add(stop.as_raw_fd(), TOKEN_STOP)?;
        p.add(aq.notify.as_raw_fd(), TOKEN_QUEUE)?;
        Ok(p)
    }) {
        Ok(p) => p,
        Err(e) => {
            log::error!("virtio-blk: cannot set up the worker's epoll: {e}");
            interrupt.needs_reset();
            return (handler, aq);
        }
    };
    let mut tokens = Vec::new();
    let mut broken = false;
    let mut pending = true; // the driver may have queued before DRIVER_OK
    loop {
        if pending && !broken {
            let run = drain_queue(&mut aq.queue, &mem, BUDGET, |c| handler.handle(&mem, c));
            if run.notify {
                interrupt.notify_queue(aq.index);
            }
            if let Some(e) = run.error {
                broken = true;
                inc(&handler.counters.broken_queue);
                handler.warned.warn(
                    WARN_BROKEN,
                    format_args!(
                        "virtio-blk: queue {} broken, device needs reset: {e}",
                        aq.index
                    ),
                );
                interrupt.needs_reset();
            }
            pending = run.more;
        }
        let timeout = if pending && !broken { 0 } else { -1 };
        if let Err(e) = poller.wait(&mut tokens, timeout) {
            log::error!("virtio-blk: epoll wait failed, worker exits: {e}");
            return (handler, aq);
        }
        for &t in &tokens {
            match t {
                TOKEN_STOP => return (handler, aq),
                TOKEN_QUEUE => {
                    let n = drain_eventfd(&aq.notify);
                    handler
                        .counters
                        .notifications
                        .fetch_add(n, Ordering::Relaxed);
                    pending = true;
                }
                _ => {}
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn name(&self) -> &str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        // No writable fields (no CONFIG_WCE).
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_active() {
            return Err(ActivateError::Worker("virtio-blk is already active".into()));
        }
        if queues.len() != 1 || queues[0].index != 0 {
            let bad = queues.iter().map(|q| q.index as usize).find(|&i| i != 0);
            return Err(ActivateError::BadQueue(bad.unwrap_or(0)));
        }
        let mut aq = queues.remove(0);
        aq.queue
            .set_event_idx(self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        self.worker
            .start((self.handler(), aq), move |(handler, aq), stop| {
                run_worker(handler, mem.clone(), aq, interrupt.clone(), stop)
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

    fn queue_positions(&self) -> Vec<QueuePosition> {
        self.worker
            .paused()
            .map(|(_, aq)| QueuePosition::of(aq))
            .into_iter()
            .collect()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats().pairs()
    }
}

/// Copy `config[offset..]` into `data`, zero beyond its end.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::worker::testutil::*;
    use std::sync::atomic::AtomicUsize;
    use vm_memory::{Bytes, GuestAddress};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A temporary disk image removed on drop.
    struct TempImage(PathBuf);

    impl TempImage {
        fn new(contents: &[u8]) -> TempImage {
            Self::in_dir(&std::env::temp_dir(), contents)
        }

        /// On tmpfs when available, where FLUSH (fdatasync) costs nothing.
        fn in_memory(contents: &[u8]) -> TempImage {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                Self::in_dir(shm, contents)
            } else {
                Self::new(contents)
            }
        }

        fn in_dir(dir: &Path, contents: &[u8]) -> TempImage {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = dir.join(format!("splitvm-blk-test-{}-{n}.img", std::process::id()));
            std::fs::write(&p, contents).unwrap();
            TempImage(p)
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x8000;

    fn header(mem: &GuestMemoryMmap, ty: u32, sector: u64) {
        mem.write_obj(ty, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Run the queue once, synchronously, like the worker does.
    fn run(block: &Block, mem: &GuestMemoryMmap) -> QueueRunLite {
        let mut h = block.handler();
        let mut q = queue(16);
        let r = drain_queue(&mut q, mem, BUDGET, |c| h.handle(mem, c));
        QueueRunLite {
            completed: r.completed,
            broken: r.error.is_some(),
        }
    }

    struct QueueRunLite {
        completed: usize,
        broken: bool,
    }

    #[test]
    fn block_read_returns_file_contents() {
        let data = pattern(8192);
        let img = TempImage::new(&data);
        let block = Block::new(&img.0, false).unwrap();
        assert_eq!(block.capacity_sectors(), 16);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        // Data split over two descriptors to check framing independence.
        add_chain(
            &mem,
            0,
            &[
                (HDR, 16, false),
                (BUF, 512, true),
                (BUF + 0x800, 512, true),
                (STATUS, 1, true),
            ],
        );
        assert_eq!(run(&block, &mem).completed, 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got[..512], GuestAddress(BUF)).unwrap();
        mem.read_slice(&mut got[512..], GuestAddress(BUF + 0x800))
            .unwrap();
        assert_eq!(&got[..], &data[1024..2048]);
        assert_eq!(used_idx(&mem), 1);
        assert_eq!(used_elem(&mem, 0), (0, 1025));
        let s = block.stats();
        assert_eq!((s.reads, s.bytes_read), (1, 1024));
    }

    #[test]
    fn block_write_reaches_file() {
        let img = TempImage::new(&[0u8; 4096]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        let payload = pattern(1024);
        mem.write_slice(&payload, GuestAddress(BUF)).unwrap();
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 1024, false), (STATUS, 1, true)],
        );
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let file = std::fs::read(&img.0).unwrap();
        assert_eq!(&file[1536..2560], &payload[..]);
        assert_eq!(&file[..1536], &[0u8; 1536][..]);
        assert_eq!(used_elem(&mem, 0), (0, 1));
        assert_eq!(block.stats().bytes_written, 1024);
    }

    #[test]
    fn readonly_block_rejects_writes_with_ioerr() {
        let img = TempImage::new(&[0x5a; 1024]);
        let block = Block::new(&img.0, true).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_RO, 0);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)],
        );
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&img.0).unwrap(), vec![0x5a; 1024]);
        assert_eq!(block.stats().ro_rejected, 1);
    }

    #[test]
    fn flush_calls_fsync_and_succeeds() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        assert_ne!(block.features() & VIRTIO_BLK_F_FLUSH, 0);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&mem, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        assert_eq!(block.stats().flushes, 1);
        assert_eq!(block.stats().io_errors, 0);
    }

    #[test]
    fn get_id_returns_serial() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 20, true), (STATUS, 1, true)],
        );
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        let name = img.0.file_name().unwrap().to_string_lossy().into_owned();
        let want = format!("splitvm-{name}");
        assert_eq!(&id[..], &want.as_bytes()[..20]);
        assert_eq!(used_elem(&mem, 0), (0, 21));
    }

    #[test]
    fn request_through_indirect_table_is_served() {
        let data = pattern(2048);
        let img = TempImage::new(&data);
        let block = Block::new(&img.0, false).unwrap();
        assert_ne!(block.features() & VIRTIO_RING_F_INDIRECT_DESC, 0);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        let table = DATA + 0x20000;
        for (i, (addr, len, flags)) in [
            (HDR, 16u32, F_NEXT),
            (BUF, 512, F_NEXT | F_WRITE),
            (STATUS, 1, F_WRITE),
        ]
        .into_iter()
        .enumerate()
        {
            let d = GuestAddress(table + 16 * i as u64);
            mem.write_obj(addr, d).unwrap();
            mem.write_obj(len, GuestAddress(d.0 + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d.0 + 12)).unwrap();
            mem.write_obj(i as u16 + 1, GuestAddress(d.0 + 14)).unwrap();
        }
        write_desc(&mem, 0, table, 48, F_INDIRECT, 0);
        publish(&mem, 0);
        assert_eq!(run(&block, &mem).completed, 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(&got[..], &data[512..1024]);
    }

    #[test]
    fn unsupported_request_type_completes_with_unsupp() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, 11, 0); // DISCARD, not offered
        add_chain(&mem, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn read_past_end_of_disk_fails_with_ioerr() {
        let img = TempImage::new(&[0u8; 1024]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 1024, true), (STATUS, 1, true)],
        );
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(block.stats().bad_requests, 1);
    }

    #[test]
    fn descriptor_outside_guest_memory_fails_request_without_panic() {
        let img = TempImage::new(&[0u8; 4096]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(
            &mem,
            0,
            &[
                (HDR, 16, false),
                (MEM_SIZE as u64 - 256, 512, true), // straddles the end
                (STATUS, 1, true),
            ],
        );
        header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(
            &mem,
            3,
            &[
                (HDR, 16, false),
                (0xdead_0000_0000, 512, true), // far outside
                (STATUS + 1, 1, true),
            ],
        );
        let r = run(&block, &mem);
        assert_eq!((r.completed, r.broken), (2, false));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(used_elem(&mem, 0), (0, 1));
        assert_eq!(used_elem(&mem, 1), (3, 1));
        assert_eq!(block.stats().bad_requests, 2);
        assert_eq!(block.stats().reads, 0, "no I/O for a bad request");
    }

    #[test]
    fn status_outside_guest_memory_completes_with_zero_length() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&mem, 0, &[(HDR, 16, false), (1 << 40, 1, true)]);
        let r = run(&block, &mem);
        assert_eq!((r.completed, r.broken), (1, false));
        assert_eq!(used_elem(&mem, 0), (0, 0));
    }

    #[test]
    fn header_in_writable_descriptor_fails_with_ioerr() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        add_chain(&mem, 0, &[(HDR, 16, true), (STATUS, 1, true)]);
        run(&block, &mem);
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(block.stats().flushes, 0);
    }

    #[test]
    fn looping_descriptor_chain_is_contained() {
        let img = TempImage::new(&[0u8; 512]);
        let block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 0 ...
        write_desc(&mem, 0, HDR, 16, F_NEXT, 1);
        write_desc(&mem, 1, BUF, 512, F_NEXT | F_WRITE, 2);
        write_desc(&mem, 2, STATUS, 1, F_NEXT | F_WRITE, 0);
        publish(&mem, 0);
        let r = run(&block, &mem);
        assert_eq!((r.completed, r.broken), (0, true));
        assert_eq!(used_idx(&mem), 0, "a broken chain is not completed");
        assert_eq!(block.stats().reads, 0);
    }

    #[test]
    fn broken_queue_makes_worker_request_reset() {
        let img = TempImage::new(&[0u8; 512]);
        let mut block = Block::new(&img.0, false).unwrap();
        let mem = memory();
        write_desc(&mem, 0, HDR, 16, F_NEXT, 0); // self loop
        publish(&mem, 0);
        let irq = Arc::new(RecordingInterrupt::default());
        let notify = crate::virtio::worker::new_eventfd().unwrap();
        let aq = ActiveQueue {
            index: 0,
            queue: queue(16),
            notify: notify.try_clone().unwrap(),
        };
        block.activate(mem.clone(), vec![aq], irq.clone()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !irq.needs_reset.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "no reset request");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(block.stats().broken_queue, 1);
        assert!(block.reset());
    }

    /// A read-write disk of a 4 KiB pattern, activated on one 16-entry
    /// queue with a recording interrupt: (data, image, block, memory,
    /// interrupt, the queue's notify eventfd).
    fn active_block() -> (
        Vec<u8>,
        TempImage,
        Block,
        GuestMemoryMmap,
        Arc<RecordingInterrupt>,
        EventFd,
    ) {
        let data = pattern(4096);
        let img = TempImage::new(&data);
        let mut block = Block::new(&img.0, false).unwrap();
        block.ack_features(block.features());
        let mem = memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let notify = crate::virtio::worker::new_eventfd().unwrap();
        let aq = ActiveQueue {
            index: 0,
            queue: queue(16),
            notify: notify.try_clone().unwrap(),
        };
        block.activate(mem.clone(), vec![aq], irq.clone()).unwrap();
        (data, img, block, mem, irq, notify)
    }

    #[test]
    fn worker_processes_notified_requests_and_interrupts() {
        let (data, _img, mut block, mem, irq, notify) = active_block();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
        );
        notify.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while used_idx(&mem) != 1 || irq.queue.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "request not completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(&got[..], &data[512..1024]);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        assert!(block.reset());
        assert_eq!(block.stats().notifications, 1);
        // Reactivation after reset works.
        let aq = ActiveQueue {
            index: 0,
            queue: queue(16),
            notify: notify.try_clone().unwrap(),
        };
        block.activate(mem, vec![aq], irq).unwrap();
    }

    #[test]
    fn a_paused_worker_hands_back_its_queue_and_requests_queued_meanwhile_run_on_resume() {
        let (_data, _img, mut block, mem, _irq, notify) = active_block();
        assert!(block.queue_positions().is_empty(), "running: no positions");
        block.pause().unwrap();
        let p = block.queue_positions();
        assert_eq!((p[0].index, p[0].next_avail, p[0].next_used), (0, 0, 0));

        // Queued and notified while paused: nothing happens...
        header(&mem, VIRTIO_BLK_T_IN, 1);
        add_chain(
            &mem,
            0,
            &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)],
        );
        notify.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(used_idx(&mem), 0, "paused");
        // ...until the worker resumes, where it was.
        block.resume();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while used_idx(&mem) != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "not completed after resume"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        block.pause().unwrap();
        let p = block.queue_positions();
        assert_eq!(
            (p[0].next_avail, p[0].next_used),
            (1, 1),
            "completed exactly once"
        );
        assert!(block.reset());
        assert!(block.queue_positions().is_empty());
    }

    #[test]
    fn missing_image_or_directory_is_an_open_error() {
        assert!(matches!(
            Block::new("/nonexistent/splitvm.img", false),
            Err(BlockError::Open { .. })
        ));
        assert!(matches!(
            Block::new(std::env::temp_dir(), true),
            Err(BlockError::Open { .. })
        ));
    }

    #[test]
    fn config_space_reports_capacity_and_limits() {
        let img = TempImage::new(&[0u8; 512 * 40 + 100]);
        let block = Block::new(&img.0, false).unwrap();
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 40);
        let mut seg = [0u8; 4];
        block.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        let mut tail = [0xffu8; 4];
        block.read_config(0x200, &mut tail);
        assert_eq!(tail, [0; 4]);
        let mut straddle = [0xffu8; 4];
        block.read_config(CONFIG_LEN as u64 - 2, &mut straddle);
        assert_eq!(&straddle[2..], &[0, 0]);
    }

    mod fuzz {
        //! Property-based harness for the request parser: random descriptor
        //! tables and available rings must never panic the device. The
        //! workspace has no nightly toolchain, so `cargo fuzz` (libFuzzer)
        //! is not available; this proptest harness is the equivalent fuzz
        //! harness. It runs [`CASES`] cases.

        use super::*;
        use proptest::prelude::*;

        const CASES: u32 = 10_000;

        fn addr() -> impl Strategy<Value = u64> {
            prop_oneof![
                4 => DATA..(MEM_SIZE as u64),
                2 => Just(HDR),
                1 => (MEM_SIZE as u64 - 64)..(MEM_SIZE as u64 + 64),
                1 => any::<u64>(),
                1 => 0u64..0x5000, // over the rings themselves
            ]
        }

        fn len() -> impl Strategy<Value = u32> {
            prop_oneof![
                4 => 0u32..0x1200,
                2 => Just(16u32),
                2 => Just(1u32),
                1 => any::<u32>(),
            ]
        }

        fn desc(size: u16) -> impl Strategy<Value = (u64, u32, u16, u16)> {
            (addr(), len(), 0u16..8, 0..size.saturating_mul(2).max(1))
        }

        /// Queue size, descriptors (addr, len, flags, next), avail idx,
        /// avail ring, request type, sector.
        type Case = (u16, Vec<(u64, u32, u16, u16)>, u16, Vec<u16>, u32, u64);

        fn case() -> impl Strategy<Value = Case> {
            (0u32..=8).prop_flat_map(|shift| {
                let size = 1u16 << shift;
                (
                    Just(size),
                    proptest::collection::vec(desc(size), size as usize),
                    prop_oneof![4 => 0..=size, 1 => any::<u16>()],
                    proptest::collection::vec(0..size.saturating_mul(2), size as usize),
                    prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
                    prop_oneof![0u64..40, any::<u64>()],
                )
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            #[test]
            fn random_queues_never_panic_block_parser(
                (size, descs, avail_idx, ring, ty, sector) in case()
            ) {
                thread_local! {
                    static IMG: TempImage = TempImage::in_memory(&[0u8; 16 * 1024]);
                    static BLOCK: Block = IMG.with(|img| Block::new(&img.0, false).unwrap());
                }
                BLOCK.with(|block| {
                    let mem = memory();
                    mem.write_obj(ty, GuestAddress(HDR)).unwrap();
                    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
                    for (i, &(a, l, f, n)) in descs.iter().enumerate() {
                        write_desc(&mem, i as u16, a, l, f, n);
                    }
                    for (i, &h) in ring.iter().enumerate() {
                        mem.write_obj(h, GuestAddress(AVAIL + 4 + 2 * i as u64)).unwrap();
                    }
                    mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
                    let mut h = block.handler();
                    let mut q = queue(size);
                    let r = drain_queue(&mut q, &mem, BUDGET, |c| h.handle(&mem, c));
                    // Buffers may overwrite the rings themselves, so the
                    // used index is not checked; the budget bounds the work.
                    prop_assert!(r.completed <= BUDGET);
                    Ok(())
                })?;
            }
        }
    }
}
