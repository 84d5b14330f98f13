//! Virtio devices (virtio 1.x) and their transports.
//!
//! A device (block, net) implements [`VirtioDevice`] and knows nothing of
//! its transport. A transport (virtio-pci with MSI-X, or virtio-mmio on an
//! I/O APIC pin) owns the feature negotiation and queue registers, registers
//! one ioeventfd per queue for notifications, and hands the device ready
//! queues plus a [`VirtioInterrupt`] on activation. Devices process queues
//! on their own worker thread: no vCPU exit per notification, no userspace
//! exit per interrupt (irqfd).

pub mod block;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod tap;
pub mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// How a device tells the guest about used buffers or config changes. The
/// transport implements it (MSI-X vector per queue through an irqfd, or the
/// ISR bit plus an I/O APIC pin edge).
pub trait VirtioInterrupt: Send + Sync {
    /// Used buffers were added to queue `queue`.
    fn notify_queue(&self, queue: u16);
    /// The device configuration space changed.
    fn notify_config(&self);
    /// The device hit an unrecoverable error: set DEVICE_NEEDS_RESET and
    /// send a config interrupt (virtio 1.2, 2.1.2).
    fn needs_reset(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not valid (size, alignment or addresses outside guest memory)")]
    BadQueue(usize),
    #[error("cannot start the device worker: {0}")]
    Worker(String),
    #[error("driver did not accept required feature(s) {0:#x}")]
    Features(u64),
}

/// Where a queue is: the next available entry the device will take and
/// the next used entry it will write (a snapshot's part of a queue; its
/// size and ring addresses are the transport's registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePosition {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    pub fn of(q: &ActiveQueue) -> QueuePosition {
        use virtio_queue::QueueT;
        QueuePosition {
            index: q.index,
            next_avail: q.queue.next_avail(),
            next_used: q.queue.next_used(),
        }
    }
}

impl QueuePosition {
    /// Start `queue` (index `index`) where `at` says it was, if it names it.
    pub(crate) fn place(at: &[QueuePosition], index: usize, queue: &mut Queue) {
        use virtio_queue::QueueT;
        if let Some(p) = at.iter().find(|p| p.index as usize == index) {
            queue.set_next_avail(p.next_avail);
            queue.set_next_used(p.next_used);
        }
    }
}

// The snapshot rules both transports (virtio-pci, virtio-mmio) follow.

/// The queue positions of `device` for its transport's saved state: an
/// active device must have been paused (it then has them).
pub(crate) fn saved_positions(
    device: &dyn VirtioDevice,
    active: bool,
    who: &str,
) -> Result<Vec<QueuePosition>, crate::StateError> {
    let positions = device.queue_positions();
    if active && positions.is_empty() {
        return Err(crate::StateError::Mismatch(format!(
            "{who} is active but not paused"
        )));
    }
    Ok(positions)
}

/// A transport state saved with `saved_queues` queues may be put into one
/// with `queues`: the same number, and not active yet.
pub(crate) fn check_restorable(
    who: &str,
    saved_queues: usize,
    queues: usize,
    active: bool,
) -> Result<(), crate::StateError> {
    let mismatch = |m: String| crate::StateError::Mismatch(format!("{who}: {m}"));
    if saved_queues != queues {
        return Err(mismatch(format!(
            "{saved_queues} queues saved, {queues} here"
        )));
    }
    if active {
        return Err(mismatch("restored into an active device".into()));
    }
    Ok(())
}

/// Pause (or resume) an active device's worker for a snapshot.
pub(crate) fn pause_device(
    device: &mut dyn VirtioDevice,
    active: bool,
    paused: bool,
) -> Result<(), crate::StateError> {
    match (active, paused) {
        (false, _) => Ok(()),
        (true, true) => device.pause(),
        (true, false) => {
            device.resume();
            Ok(())
        }
    }
}

/// Where an active queue's rings are, for a stuck-guest report: the
/// transport's registers, no device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    pub index: u16,
    pub size: u16,
    /// The available ring (the driver area).
    pub avail: u64,
    /// The used ring (the device area).
    pub used: u64,
    /// The driver posts empty buffers for the device to fill (a network
    /// receive queue): outstanding entries are normal there.
    pub receive: bool,
}

/// The rings of an active device's queues, from a transport's registers:
/// (size, enabled, driver area, device area) per queue, in index order.
pub(crate) fn active_rings(
    active: bool,
    device: &dyn VirtioDevice,
    queues: impl Iterator<Item = (u16, bool, u64, u64)>,
) -> Vec<RingAddrs> {
    if !active {
        return Vec::new();
    }
    queues
        .enumerate()
        .filter(|(_, q)| q.1)
        .map(|(i, (size, _, avail, used))| RingAddrs {
            index: i as u16,
            size,
            avail,
            used,
            receive: device.is_receive_queue(i as u16),
        })
        .collect()
}

/// A queue's progress as guest memory shows it: the driver's available
/// index and the device's used index (virtio 1.2, 2.7.6 and 2.7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RingProgress {
    pub index: u16,
    pub size: u16,
    pub avail_idx: u16,
    pub used_idx: u16,
    pub receive: bool,
}

impl RingProgress {
    /// Entries the driver made available that the device has not used.
    pub fn outstanding(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_idx)
    }
}

/// Read `r`'s indices from guest memory (None when a ring is not in it).
pub fn ring_progress(mem: &GuestMemoryMmap, r: &RingAddrs) -> Option<RingProgress> {
    use vm_memory::{Bytes, GuestAddress};
    let idx = |ring: u64| {
        mem.read_obj::<u16>(GuestAddress(ring.checked_add(2)?))
            .ok()
            .map(u16::from_le)
    };
    Some(RingProgress {
        index: r.index,
        size: r.size,
        avail_idx: idx(r.avail)?,
        used_idx: idx(r.used)?,
        receive: r.receive,
    })
}

/// A ready queue handed to the device on activation.
pub struct ActiveQueue {
    /// Queue index as the guest numbers it.
    pub index: u16,
    pub queue: Queue,
    /// Written by KVM (ioeventfd) when the guest notifies this queue.
    pub notify: EventFd,
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// Device type (TYPE_NET, TYPE_BLOCK, ...).
    fn device_type(&self) -> u32;
    /// Short name for statistics ("virtio-blk", "virtio-net").
    fn name(&self) -> &str;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (including VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    /// Features the driver accepted (a subset of `features()`).
    fn ack_features(&mut self, features: u64);
    /// Device-specific configuration space reads/writes; out of range reads
    /// return zero, writes are ignored.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing the given ready queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// Stop processing (join the worker) and return to the pre-activation
    /// state. Returns false if the device cannot be reset.
    fn reset(&mut self) -> bool;
    /// Stop processing at a request boundary and keep the queues: a
    /// snapshot is being taken. Every chain the device took is completed
    /// (in the used ring, its interrupt sent); chains it has not taken
    /// stay in the available ring. Does nothing if the device is not
    /// active. Default: the device cannot be snapshotted.
    fn pause(&mut self) -> Result<(), crate::StateError> {
        Err(crate::StateError::Unsupported)
    }
    /// Go on after [`pause`](VirtioDevice::pause).
    fn resume(&mut self) {}
    /// Where each queue of a paused device is.
    fn queue_positions(&self) -> Vec<QueuePosition> {
        Vec::new()
    }
    /// Whether queue `index` takes empty buffers for the device to fill
    /// (a network receive queue; see [`RingAddrs::receive`]).
    fn is_receive_queue(&self, _index: u16) -> bool {
        false
    }
    /// Device counters for a statistics report, as (name, value) pairs.
    /// Devices with a worker report at least "notifications" (queue
    /// notifications consumed from the ioeventfds). Default: none.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn ring_progress_reads_both_indices_and_outstanding_wraps() {
        let mem = worker::testutil::memory();
        let r = RingAddrs {
            index: 1,
            size: 8,
            avail: 0x3000,
            used: 0x4000,
            receive: false,
        };
        mem.write_obj(3u16.to_le(), GuestAddress(0x3002)).unwrap();
        mem.write_obj(65534u16.to_le(), GuestAddress(0x4002))
            .unwrap();
        let p = ring_progress(&mem, &r).unwrap();
        assert_eq!((p.index, p.avail_idx, p.used_idx), (1, 3, 65534));
        assert_eq!(p.outstanding(), 5);
        // A ring outside guest memory gives nothing.
        let out = RingAddrs {
            used: u64::MAX - 1,
            ..r
        };
        assert!(ring_progress(&mem, &out).is_none());
    }
}
