//! The UARTs' transmit registers through KVM's coalesced PIO ring
//! (`--coalesced-io on`, the default; docs/coalesced-io.md).
//!
//! Each UART's data port (base + 0) is a coalesced zone
//! (KVM_REGISTER_COALESCED_MMIO with the PIO flag, 1 byte): a guest write
//! there does not exit; KVM appends it to one ring per VM, a page of the
//! vCPU mapping at KVM_COALESCED_MMIO_PAGE_OFFSET. Reads still exit, and so
//! does a write that finds the ring full.
//!
//! Base + 0 is three registers (THR; DLL while LCR.DLAB is set; a byte the
//! guest reads back in loopback), so the ring is drained, in order, into
//! the port bus before anything else can see the UART: before every port
//! or MMIO exit a vCPU handles, before a snapshot is saved, when the VM
//! stops, before the supervisor touches a UART, and by the supervisor at
//! least every 10 ms (an idle guest's last line). One consumer at a time
//! (a lock); each drained write is counted per device as `coalesced_pio`,
//! never as an exit.
//!
//! The ring (linux/kvm.h): `struct kvm_coalesced_mmio_ring { u32 first,
//! last; struct kvm_coalesced_mmio entries[]; }` with 24-byte entries
//! `{ u64 phys_addr; u32 len; u32 pio; u8 data[8]; }`, as many as fit in
//! the page. KVM writes an entry, then advances `last` (write barrier); the
//! consumer reads `last`, then the entries, then advances `first`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use devices::sync::lock;

const PAGE: usize = 4096;
const HEADER: usize = 8;
const ENTRY: usize = 24;
/// Entries in the ring (KVM_COALESCED_MMIO_MAX).
pub const RING_ENTRIES: u32 = ((PAGE - HEADER) / ENTRY) as u32;

/// One drained write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub addr: u64,
    pub pio: bool,
    pub len: usize,
    pub data: [u8; 8],
}

/// The VM's ring page.
pub struct Ring {
    page: std::ptr::NonNull<u8>,
    /// Unmapped on drop (a mapping of the vCPU fd), or test memory.
    mapped: bool,
    lock: Mutex<()>,
}

// SAFETY: the page is shared memory KVM writes concurrently; every access
// goes through atomics or volatile reads, and the consumer side is
// serialised by `lock`.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// Map the ring page of `vcpu`'s mapping (one ring per VM: any vCPU's
    /// fd gives the same page).
    pub fn map(vcpu: &kvm_ioctls::VcpuFd) -> std::io::Result<Ring> {
        use std::os::unix::io::AsRawFd;
        let offset =
            kvm_bindings::KVM_COALESCED_MMIO_PAGE_OFFSET as libc::off_t * PAGE as libc::off_t;
        // SAFETY: a fresh shared mapping of one page of the vCPU fd at the
        // offset KVM documents for the ring; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ring {
            page: std::ptr::NonNull::new(p.cast()).ok_or_else(std::io::Error::last_os_error)?,
            mapped: true,
            lock: Mutex::new(()),
        })
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is 0 or 4, inside the page, 4-byte aligned; the
        // page lives as long as `self`.
        unsafe { &*(self.page.as_ptr().add(off) as *const AtomicU32) }
    }

    /// Entries KVM appended that nobody has drained.
    pub fn pending(&self) -> bool {
        self.word(0).load(Ordering::Acquire) != self.word(4).load(Ordering::Acquire)
    }

    /// Take every entry, in order, handing each to `f`; returns how many.
    pub fn drain(&self, mut f: impl FnMut(Write)) -> usize {
        if !self.pending() {
            return 0;
        }
        let _one = lock(&self.lock);
        let mut first = self.word(0).load(Ordering::Acquire);
        let last = self.word(4).load(Ordering::Acquire);
        let mut n = 0;
        // A `last` beyond the ring would be KVM's bug: take nothing.
        while first != last && first < RING_ENTRIES && last < RING_ENTRIES {
            let at = HEADER + first as usize * ENTRY;
            // SAFETY: `first` < RING_ENTRIES, so the entry lies inside the
            // page; KVM finished writing it before it advanced `last`.
            let w = unsafe {
                let p = self.page.as_ptr().add(at);
                let mut data = [0u8; 8];
                for (i, d) in data.iter_mut().enumerate() {
                    *d = p.add(16 + i).read_volatile();
                }
                Write {
                    addr: (p as *const u64).read_volatile(),
                    len: ((p.add(8) as *const u32).read_volatile() as usize).min(8),
                    pio: (p.add(12) as *const u32).read_volatile() != 0,
                    data,
                }
            };
            f(w);
            n += 1;
            first = (first + 1) % RING_ENTRIES;
        }
        self.word(0).store(first, Ordering::Release);
        n
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the page was mapped by `map` and is not used after.
            unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE) };
        }
    }
}

/// The ring and where its writes go: the port bus, with a count of the
/// writes each device took from it.
pub struct Coalesced {
    ring: Ring,
    pio: std::sync::Arc<devices::Bus>,
    per_device: Vec<AtomicU64>,
}

impl Coalesced {
    pub fn new(ring: Ring, pio: std::sync::Arc<devices::Bus>) -> Coalesced {
        let per_device = (0..pio.device_names().len())
            .map(|_| AtomicU64::new(0))
            .collect();
        Coalesced {
            ring,
            pio,
            per_device,
        }
    }

    /// Drain the ring into the port bus (cheap when it is empty: two
    /// loads).
    pub fn drain(&self) {
        self.ring.drain(|w| {
            let dev = if w.pio {
                self.pio.write(w.addr, &w.data[..w.len])
            } else {
                None
            };
            // The zones are the UARTs' data ports: a write always has its
            // device (the bus counts the others as unclaimed anyway).
            if let Some(c) = dev.and_then(|i| self.per_device.get(i)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Writes each port device took from the ring, by bus index.
    pub fn per_device(&self) -> Vec<u64> {
        self.per_device
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
impl Ring {
    /// A ring in ordinary memory, for tests (never unmapped).
    fn test() -> Ring {
        let page: &'static mut [u8] = Box::leak(vec![0u8; PAGE].into_boxed_slice());
        Ring {
            page: std::ptr::NonNull::new(page.as_mut_ptr()).unwrap(),
            mapped: false,
            lock: Mutex::new(()),
        }
    }

    /// What KVM does for a coalesced write: the entry, then `last`.
    fn produce(&self, addr: u64, data: &[u8]) -> bool {
        let last = self.word(4).load(Ordering::Acquire);
        let next = (last + 1) % RING_ENTRIES;
        if next == self.word(0).load(Ordering::Acquire) {
            return false; // full: KVM exits instead
        }
        // SAFETY: `last` < RING_ENTRIES: inside the test page.
        unsafe {
            let p = self.page.as_ptr().add(HEADER + last as usize * ENTRY);
            (p as *mut u64).write_volatile(addr);
            (p.add(8) as *mut u32).write_volatile(data.len() as u32);
            (p.add(12) as *mut u32).write_volatile(1);
            for (i, b) in data.iter().enumerate() {
                p.add(16 + i).write_volatile(*b);
            }
        }
        self.word(4).store(next, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(r: &Ring) -> Vec<(u64, u8)> {
        let mut v = Vec::new();
        r.drain(|w| v.push((w.addr, w.data[0])));
        v
    }

    #[test]
    fn the_ring_holds_170_entries_as_kvm_computes_it() {
        assert_eq!(RING_ENTRIES, 170);
        assert_eq!(
            std::mem::size_of::<kvm_bindings::kvm_coalesced_mmio>(),
            ENTRY
        );
    }

    #[test]
    fn writes_are_drained_once_in_the_order_they_were_made() {
        let r = Ring::test();
        assert!(!r.pending());
        for (i, b) in b"hello".iter().enumerate() {
            assert!(r.produce(0x3f8 + (i as u64 % 2) * 0x100, &[*b]));
        }
        assert!(r.pending());
        let got = drained(&r);
        assert_eq!(
            got,
            vec![
                (0x3f8, b'h'),
                (0x4f8, b'e'),
                (0x3f8, b'l'),
                (0x4f8, b'l'),
                (0x3f8, b'o')
            ]
        );
        assert!(!r.pending());
        assert!(drained(&r).is_empty());
    }

    #[test]
    fn a_full_ring_refuses_the_next_write_and_wraps_after_a_drain() {
        let r = Ring::test();
        let mut n = 0u32;
        while r.produce(0x3f8, &[n as u8]) {
            n += 1;
        }
        assert_eq!(n, RING_ENTRIES - 1, "one slot stays empty, as in KVM");
        let got = drained(&r);
        assert_eq!(got.len(), n as usize);
        assert!(got.iter().enumerate().all(|(i, (_, b))| *b == i as u8));
        // Around the end of the page and back.
        for i in 0..10u8 {
            assert!(r.produce(0x2f8, &[i]));
        }
        let got = drained(&r);
        assert_eq!(
            got.iter().map(|x| x.1).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }

    /// A port device that records what it is written.
    struct Recorder(std::sync::Arc<Mutex<Vec<(u64, u8)>>>);

    impl devices::BusDevice for Recorder {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data[0]));
        }
    }

    #[test]
    fn drained_writes_reach_their_device_in_order_and_are_counted_per_device() {
        let com1 = std::sync::Arc::new(Mutex::new(Vec::new()));
        let com2 = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut bus = devices::Bus::new();
        let dev = |r: &std::sync::Arc<Mutex<Vec<(u64, u8)>>>| {
            std::sync::Arc::new(Mutex::new(Recorder(r.clone())))
                as std::sync::Arc<Mutex<dyn devices::BusDevice>>
        };
        bus.insert("com2", 0x2f8, 8, dev(&com2)).unwrap();
        bus.insert("com1", 0x3f8, 8, dev(&com1)).unwrap();
        let c = Coalesced::new(Ring::test(), std::sync::Arc::new(bus));
        for (port, b) in [(0x3f8, b'a'), (0x2f8, b'x'), (0x3f8, b'b'), (0x3f8, b'c')] {
            assert!(c.ring.produce(port, &[b]));
        }
        c.drain();
        assert_eq!(*com1.lock().unwrap(), vec![(0, b'a'), (0, b'b'), (0, b'c')]);
        assert_eq!(*com2.lock().unwrap(), vec![(0, b'x')]);
        // Bus indexes follow insertion: com2 is 0, com1 is 1.
        assert_eq!(c.per_device(), vec![1, 3]);
        c.drain();
        assert_eq!(c.per_device(), vec![1, 3], "a second drain finds nothing");
    }

    #[test]
    fn a_corrupt_last_index_takes_nothing() {
        let r = Ring::test();
        r.word(4).store(RING_ENTRIES + 5, Ordering::Release);
        assert!(drained(&r).is_empty());
    }
}
