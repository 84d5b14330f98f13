//! Plumbing shared by the virtio device workers (block, net):
//!
//! - [`WorkerThread`]: a named thread plus a stop eventfd; `stop()` (or
//!   drop) signals it and joins.
//! - [`Poller`]: a small level-triggered epoll wrapper that retries `EINTR`.
//! - [`pop_chain`] and [`walk_chain`]: the only places a device looks at a
//!   guest-controlled available ring or descriptor chain. They never panic;
//!   a chain the device cannot trust (loops, runs past the queue size,
//!   points at descriptors outside the table) comes back as an error that
//!   the device answers with NEEDS_RESET, while buffers that merely point
//!   outside guest memory or have the wrong direction are reported in
//!   [`Chain`] so the request can fail with a virtio error status.
//! - [`BufStream`]: the device-readable or device-writable part of a chain
//!   as one byte stream, so devices make no assumption about how the driver
//!   split a request into descriptors (virtio 1.2, 2.7.4 "Message Framing").

use std::fmt;
use std::io;
use std::num::Wrapping;
use std::os::unix::io::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::ActivateError;

/// A device worker thread and the eventfd that tells it to stop; the
/// worker may hand something back when it ends (its queues, to be
/// resumed after a snapshot).
pub struct WorkerThread<T: Send + 'static = ()> {
    stop: EventFd,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> WorkerThread<T> {
    /// Spawn `body` on a thread called `name`; it receives the stop eventfd
    /// (non-blocking) and must return soon after it becomes readable.
    pub fn spawn<F>(name: &str, body: F) -> Result<WorkerThread<T>, ActivateError>
    where
        F: FnOnce(EventFd) -> T + Send + 'static,
    {
        let stop = new_eventfd().map_err(|e| ActivateError::Worker(e.to_string()))?;
        let theirs = stop
            .try_clone()
            .map_err(|e| ActivateError::Worker(e.to_string()))?;
        let thread_name = name.to_string();
        let handle = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::thread_start::started(&thread_name);
                body(theirs)
            })
            .map_err(|e| ActivateError::Worker(e.to_string()))?;
        Ok(WorkerThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Signal the worker and wait for it; returns what it handed back
    /// (None if it was stopped before or panicked). Idempotent.
    pub fn stop(&mut self) -> Option<T> {
        let handle = self.handle.take()?;
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot signal the virtio worker to stop: {e}");
        }
        match handle.join() {
            Ok(v) => Some(v),
            Err(_) => {
                log::error!("virtio worker thread panicked");
                None
            }
        }
    }
}

impl<T: Send + 'static> Drop for WorkerThread<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A device's worker across snapshot pauses: the running thread, or what
/// a paused one handed back (its queues and whatever else it carries), and
/// the loop to start again on it. One owner for the thread-or-state pair
/// every device with a worker would otherwise keep itself.
pub struct Worker<T: Send + 'static> {
    name: &'static str,
    body: Option<Arc<WorkerBody<T>>>,
    thread: Option<WorkerThread<T>>,
    paused: Option<T>,
}

/// A worker's loop: runs on `T` until the stop eventfd is readable, then
/// hands `T` back.
type WorkerBody<T> = dyn Fn(T, EventFd) -> T + Send + Sync;

impl<T: Send + 'static> Worker<T> {
    /// No worker yet; its thread will be called `name`.
    pub fn new(name: &'static str) -> Self {
        Worker {
            name,
            body: None,
            thread: None,
            paused: None,
        }
    }

    /// Running, or paused for a snapshot.
    pub fn is_active(&self) -> bool {
        self.thread.is_some() || self.paused.is_some()
    }

    /// Start `body` on `state` (device activation).
    pub fn start(
        &mut self,
        state: T,
        body: impl Fn(T, EventFd) -> T + Send + Sync + 'static,
    ) -> Result<(), ActivateError> {
        self.body = Some(Arc::new(body));
        self.spawn(state)
    }

    fn spawn(&mut self, state: T) -> Result<(), ActivateError> {
        let Some(body) = self.body.clone() else {
            return Err(ActivateError::Worker(format!(
                "{} is not active",
                self.name
            )));
        };
        self.thread = Some(WorkerThread::spawn(self.name, move |stop| {
            body(state, stop)
        })?);
        Ok(())
    }

    /// Stop the thread at its next check and keep what it hands back.
    pub fn pause(&mut self) {
        if let Some(mut t) = self.thread.take() {
            self.paused = t.stop();
        }
    }

    /// Start the loop again on what a pause kept.
    pub fn resume(&mut self) {
        if let Some(state) = self.paused.take() {
            if let Err(e) = self.spawn(state) {
                log::error!(
                    "{}: cannot restart the worker after a snapshot: {e}",
                    self.name
                );
            }
        }
    }

    /// What a paused worker handed back.
    pub fn paused(&self) -> Option<&T> {
        self.paused.as_ref()
    }

    /// Stop for good (device reset): nothing is kept.
    pub fn stop(&mut self) {
        if let Some(mut t) = self.thread.take() {
            t.stop();
        }
        self.paused = None;
        self.body = None;
    }
}

/// A non-blocking, close-on-exec eventfd.
pub fn new_eventfd() -> io::Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

/// Drain an eventfd and return its count (0 if it was not signalled).
pub fn drain_eventfd(fd: &EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

/// Level-triggered epoll on a few file descriptors, each with a token.
pub struct Poller {
    epoll: Epoll,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new()?,
        })
    }

    /// Watch `fd` for readability, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Stop watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Wait up to `timeout_ms` (-1: forever) for events, retrying on
    /// `EINTR`. Returns the tokens of ready descriptors in `tokens`.
    pub fn wait(&self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        let mut events = [EpollEvent::default(); 8];
        tokens.clear();
        loop {
            match self.epoll.wait(timeout_ms, &mut events) {
                Ok(n) => {
                    tokens.extend(events[..n].iter().map(|e| e.data()));
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub write: bool,
}

/// A descriptor chain whose structure is sound (it ends, within the queue
/// size), with what is wrong about its buffers.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub head: u16,
    pub bufs: Vec<Buf>,
    /// Some buffer lies (partly) outside guest memory.
    pub out_of_memory: bool,
    /// A device-readable buffer follows a device-writable one (virtio 1.2,
    /// 2.7.4.2: drivers must place writable buffers after readable ones).
    pub misordered: bool,
}

impl Chain {
    /// Total length of the readable (`write == false`) or writable buffers.
    pub fn len(&self, write: bool) -> u64 {
        self.bufs
            .iter()
            .filter(|b| b.write == write)
            .map(|b| u64::from(b.len))
            .sum()
    }

    /// True when some buffer is readable (`write == false`) or writable.
    pub fn has(&self, write: bool) -> bool {
        self.bufs.iter().any(|b| b.write == write)
    }
}

/// Why a chain or a queue cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// The chain did not end: a loop, more descriptors than the queue
    /// size, a `next` index outside the table, an unreadable descriptor or
    /// a bad indirect table.
    Unterminated,
    /// The chain yielded no descriptor at all.
    Empty,
    /// The available ring announces more entries than the queue holds, or
    /// cannot be read.
    AvailRing,
    /// The head index is outside the descriptor table.
    HeadIndex(u16),
    /// The used ring (or the notification fields) cannot be written.
    UsedRing,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Unterminated => write!(
                f,
                "descriptor chain does not terminate within the queue (loop, bad next index or bad indirect table)"
            ),
            ChainError::Empty => write!(f, "descriptor chain is empty"),
            ChainError::AvailRing => write!(f, "available ring index is invalid or unreadable"),
            ChainError::HeadIndex(h) => write!(f, "chain head {h} is outside the descriptor table"),
            ChainError::UsedRing => write!(f, "used ring cannot be written"),
        }
    }
}

/// The next available chain of `queue`, if any. Errors mean the driver
/// broke the available ring; the queue should not be used further.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, ChainError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| ChainError::AvailRing)?;
    let pending = avail - Wrapping(queue.next_avail());
    if pending.0 == 0 {
        return Ok(None);
    }
    if pending.0 > queue.size() {
        return Err(ChainError::AvailRing);
    }
    match queue.pop_descriptor_chain(mem) {
        Some(chain) if chain.head_index() >= queue.size() => {
            Err(ChainError::HeadIndex(chain.head_index()))
        }
        Some(chain) => Ok(Some(chain)),
        None => Err(ChainError::AvailRing),
    }
}

/// Walk a chain, checking its structure and its buffers.
///
/// virtio-queue's iterator stops silently on loops (after `queue size`
/// descriptors), on `next` indexes outside the table, on unreadable
/// descriptors and on bad indirect tables; in each case the last descriptor
/// it yielded still has `VIRTQ_DESC_F_NEXT` set, which is how an
/// unterminated chain is told from a complete one.
pub fn walk_chain(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Chain, ChainError> {
    let handle = chain.clone();
    let mem = handle.memory();
    let mut out = Chain {
        head: chain.head_index(),
        ..Chain::default()
    };
    let mut last_has_next = false;
    let mut seen_write = false;
    for desc in chain {
        last_has_next = desc.has_next();
        let buf = Buf {
            addr: desc.addr(),
            len: desc.len(),
            write: desc.is_write_only(),
        };
        if buf.len > 0 && !GuestMemoryBackend::check_range(mem, buf.addr, buf.len as usize) {
            out.out_of_memory = true;
        }
        if buf.write {
            seen_write = true;
        } else if seen_write {
            out.misordered = true;
        }
        out.bufs.push(buf);
    }
    if last_has_next {
        return Err(ChainError::Unterminated);
    }
    if out.bufs.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(out)
}

/// Result of one [`drain_queue`] pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains completed (added to the used ring).
    pub completed: usize,
    /// The driver should be interrupted (used buffers were added and the
    /// driver's event index / flags ask for it).
    pub notify: bool,
    /// The budget ran out with chains left: run again soon.
    pub more: bool,
    /// The queue is broken; the device should ask for a reset and stop
    /// using it.
    pub error: Option<ChainError>,
}

/// Complete available chains of `queue` with `handle` (which returns the
/// used length) until the ring is empty with notifications re-enabled,
/// `budget` chains were handled, or the driver broke the ring.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    budget: usize,
    mut handle: impl FnMut(&Chain) -> u32,
) -> QueueRun {
    let mut run = QueueRun::default();
    let result = (|| -> Result<(), ChainError> {
        loop {
            queue
                .disable_notification(mem)
                .map_err(|_| ChainError::UsedRing)?;
            while let Some(dc) = pop_chain(queue, mem)? {
                let chain = walk_chain(dc)?;
                let len = handle(&chain);
                queue
                    .add_used(mem, chain.head, len)
                    .map_err(|_| ChainError::UsedRing)?;
                run.completed += 1;
                if run.completed >= budget {
                    run.more = true;
                    return Ok(());
                }
            }
            if !queue
                .enable_notification(mem)
                .map_err(|_| ChainError::AvailRing)?
            {
                return Ok(());
            }
        }
    })();
    run.error = result.err();
    if run.completed > 0 {
        run.notify = queue.needs_notification(mem).unwrap_or(true);
    }
    run
}

/// The readable or writable buffers of a chain as one byte stream.
pub struct BufStream<'a> {
    mem: &'a GuestMemoryMmap,
    bufs: Vec<Buf>,
    len: u64,
}

/// A stream access outside the stream or outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamError;

impl<'a> BufStream<'a> {
    /// The buffers of `chain` with direction `write`.
    pub fn new(mem: &'a GuestMemoryMmap, chain: &Chain, write: bool) -> BufStream<'a> {
        let bufs: Vec<Buf> = chain
            .bufs
            .iter()
            .filter(|b| b.write == write && b.len > 0)
            .copied()
            .collect();
        let len = bufs.iter().map(|b| u64::from(b.len)).sum();
        BufStream { mem, bufs, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Visit the guest ranges covering `[offset, offset + count)`.
    fn for_each_range(
        &self,
        offset: u64,
        count: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let end = offset.checked_add(count as u64).ok_or(StreamError)?;
        if end > self.len {
            return Err(StreamError);
        }
        let mut pos = 0u64; // stream offset of the current buffer
        let mut done = 0usize; // bytes of the caller's slice handled
        for b in &self.bufs {
            if done == count {
                break;
            }
            let blen = u64::from(b.len);
            let cur = offset + done as u64;
            if cur < pos + blen {
                let inner = cur - pos;
                let n = ((blen - inner) as usize).min(count - done);
                let addr = b.addr.checked_add(inner).ok_or(StreamError)?;
                f(addr, done..done + n)?;
                done += n;
            }
            pos += blen;
        }
        if done == count {
            Ok(())
        } else {
            Err(StreamError)
        }
    }

    /// Read `out.len()` bytes at stream offset `offset`.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), StreamError> {
        let mem = self.mem;
        self.for_each_range(offset, out.len(), |addr, r| {
            mem.read_slice(&mut out[r], addr).map_err(|_| StreamError)
        })
    }

    /// Write `data` at stream offset `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StreamError> {
        let mem = self.mem;
        self.for_each_range(offset, data.len(), |addr, r| {
            mem.write_slice(&data[r], addr).map_err(|_| StreamError)
        })
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A driver-side view of a split queue written by hand, and an interrupt
    //! recorder, for the device and transport tests.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use crate::virtio::VirtioInterrupt;

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    pub const F_INDIRECT: u16 = 4;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x3000;
    pub const USED: u64 = 0x4000;
    /// Buffers live from here on.
    pub const DATA: u64 = 0x10000;
    pub const MEM_SIZE: usize = 0x40000;

    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// A ready queue of `size` entries at the fixed addresses above.
    pub fn queue(size: u16) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    pub fn write_desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = GuestAddress(DESC + 16 * u64::from(i));
        mem.write_obj(addr.to_le(), base).unwrap();
        mem.write_obj(len.to_le(), base.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), base.unchecked_add(12))
            .unwrap();
        mem.write_obj(next.to_le(), base.unchecked_add(14)).unwrap();
    }

    use vm_memory::Address;

    /// Write a chain of (addr, len, writable) buffers at descriptor indexes
    /// `first..`, and publish its head in the available ring.
    pub fn add_chain(mem: &GuestMemoryMmap, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if w { F_WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            write_desc(mem, i, addr, len, flags, i + 1);
        }
        publish(mem, first);
    }

    /// Append `head` to the available ring and bump its index.
    pub fn publish(mem: &GuestMemoryMmap, head: u16) {
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let slot = u64::from(idx % 256);
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    pub fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// (id, len) of used element `i`.
    pub fn used_elem(mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let base = USED + 4 + 8 * u64::from(i);
        (
            mem.read_obj(GuestAddress(base)).unwrap(),
            mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    #[derive(Default)]
    pub struct RecordingInterrupt {
        pub queue: AtomicU64,
        pub config: AtomicU64,
        pub needs_reset: AtomicBool,
    }

    impl VirtioInterrupt for RecordingInterrupt {
        fn notify_queue(&self, _queue: u16) {
            self.queue.fetch_add(1, Ordering::SeqCst);
        }
        fn notify_config(&self) {
            self.config.fetch_add(1, Ordering::SeqCst);
        }
        fn needs_reset(&self) {
            self.needs_reset.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn stream_spans_buffers_in_order() {
        let mem = memory();
        add_chain(
            &mem,
            0,
            &[
                (DATA, 3, false),
                (DATA + 0x100, 5, false),
                (DATA + 0x200, 4, true),
            ],
        );
        let mut q = queue(16);
        let c = walk_chain(pop_chain(&mut q, &mem).unwrap().unwrap()).unwrap();
        mem.write_slice(&[1, 2, 3], GuestAddress(DATA)).unwrap();
        mem.write_slice(&[4, 5, 6, 7, 8], GuestAddress(DATA + 0x100))
            .unwrap();
        let r = BufStream::new(&mem, &c, false);
        assert_eq!(r.len(), 8);
        let mut out = [0u8; 4];
        r.read_at(2, &mut out).unwrap();
        assert_eq!(out, [3, 4, 5, 6]);
        assert!(r.read_at(6, &mut out).is_err());
        let w = BufStream::new(&mem, &c, true);
        w.write_at(1, &[9, 9, 9]).unwrap();
        assert!(w.write_at(2, &[9, 9, 9]).is_err());
    }

    #[test]
    fn self_referencing_descriptor_is_unterminated() {
        let mem = memory();
        write_desc(&mem, 0, DATA, 16, F_NEXT, 0);
        publish(&mem, 0);
        let mut q = queue(8);
        let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
        assert_eq!(walk_chain(chain).unwrap_err(), ChainError::Unterminated);
    }

    #[test]
    fn next_index_outside_table_is_unterminated() {
        let mem = memory();
        write_desc(&mem, 0, DATA, 16, F_NEXT, 200);
        publish(&mem, 0);
        let mut q = queue(8);
        let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
        assert_eq!(walk_chain(chain).unwrap_err(), ChainError::Unterminated);
    }

    #[test]
    fn avail_index_running_ahead_of_queue_size_is_refused() {
        let mem = memory();
        mem.write_obj(100u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut q = queue(8);
        assert_eq!(pop_chain(&mut q, &mem).unwrap_err(), ChainError::AvailRing);
    }

    #[test]
    fn readable_after_writable_is_flagged_misordered() {
        let mem = memory();
        add_chain(&mem, 0, &[(DATA, 4, true), (DATA + 16, 4, false)]);
        let mut q = queue(8);
        let c = walk_chain(pop_chain(&mut q, &mem).unwrap().unwrap()).unwrap();
        assert!(c.misordered);
        assert!(!c.out_of_memory);
    }
}
