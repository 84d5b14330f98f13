//! The per-vCPU exit counters: the only statistics code the vCPU loop
//! touches. Each vCPU thread owns a [`VcpuCounters`] (atomics with a single
//! writer: an increment is a plain load and store, no lock prefix and no
//! lock), so the supervisor can take a [`VcpuStats`] snapshot at any time
//! while the vCPUs run and at VM exit. The report (src/stats.rs) is built
//! from snapshots; this module knows nothing of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// KVM_RUN exit reasons we count, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Io,
    Mmio,
    IoapicEoi,
    Hlt,
    IrqWindow,
    Intr,
    Shutdown,
    SystemEvent,
    InternalError,
    FailEntry,
    Exception,
    Other,
}

pub const EXIT_KINDS: [ExitKind; 12] = [
    ExitKind::Io,
    ExitKind::Mmio,
    ExitKind::IoapicEoi,
    ExitKind::Hlt,
    ExitKind::IrqWindow,
    ExitKind::Intr,
    ExitKind::Shutdown,
    ExitKind::SystemEvent,
    ExitKind::InternalError,
    ExitKind::FailEntry,
    ExitKind::Exception,
    ExitKind::Other,
];

impl ExitKind {
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Io => "io",
            ExitKind::Mmio => "mmio",
            ExitKind::IoapicEoi => "ioapic_eoi",
            ExitKind::Hlt => "hlt",
            ExitKind::IrqWindow => "irq_window",
            ExitKind::Intr => "intr",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::Exception => "exception",
            ExitKind::Other => "other",
        }
    }
}

/// A counter with one writer (its vCPU thread) and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one. Only the owning thread may call this: load and store are
    /// separate (no read-modify-write), which is what makes it cheap.
    #[inline]
    pub fn inc(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn counters(n: usize) -> Vec<Counter> {
    (0..n).map(|_| Counter::default()).collect()
}

fn read_all(c: &[Counter]) -> Vec<u64> {
    c.iter().map(Counter::get).collect()
}

/// How many distinct unclaimed addresses a vCPU counts one by one (and
/// the report lists); accesses to further addresses go to an `other`
/// bucket, so a guest cannot make the VMM allocate without bound.
pub const UNCLAIMED_ADDRESSES: usize = 64;

/// Counts per address, for at most [`UNCLAIMED_ADDRESSES`] addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundedCounts<K: Ord> {
    pub by_address: BTreeMap<K, u64>,
    /// Accesses to addresses past the first [`UNCLAIMED_ADDRESSES`].
    pub other: u64,
}

impl<K: Ord> BoundedCounts<K> {
    pub fn add(&mut self, key: K, n: u64) {
        if let Some(c) = self.by_address.get_mut(&key) {
            *c += n;
        } else if self.by_address.len() < UNCLAIMED_ADDRESSES {
            self.by_address.insert(key, n);
        } else {
            self.other += n;
        }
    }
}

/// Merge per-vCPU counts into the report's map: the [`UNCLAIMED_ADDRESSES`]
/// most-used addresses by name, everything else under `other`.
pub(crate) fn merge_unclaimed<K: Ord + Copy>(
    parts: &[&BoundedCounts<K>],
    name: impl Fn(K) -> String,
) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<K, u64> = BTreeMap::new();
    let mut other = 0;
    for p in parts {
        for (k, n) in &p.by_address {
            *all.entry(*k).or_default() += n;
        }
        other += p.other;
    }
    let mut v: Vec<(K, u64)> = all.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = BTreeMap::new();
    for (i, (k, n)) in v.into_iter().enumerate() {
        if i < UNCLAIMED_ADDRESSES {
            out.insert(name(k), n);
        } else {
            other += n;
        }
    }
    if other > 0 {
        out.insert("other".to_string(), other);
    }
    out
}

/// Live counters of one vCPU, written only by its thread. The unhandled
/// maps sit behind a mutex that only that thread and snapshots take
/// (uncontended; only on exits no device claims).
#[derive(Debug)]
pub struct VcpuCounters {
    pub id: u32,
    pub exits: Vec<Counter>,
    pub eoi_vectors: Vec<Counter>,
    pub pio_device: Vec<Counter>,
    pub mmio_device: Vec<Counter>,
    /// Per interrupt source (index in the `SourceRegistry`).
    pub source_eoi: Vec<Counter>,
    pub source_pio: Vec<Counter>,
    pub source_mmio: Vec<Counter>,
    /// EOI exits whose vector no level pin carried at the time.
    pub eoi_unattributed: Counter,
    /// EOI exits that completed more than one pin (shared vector).
    pub eoi_shared: Counter,
    pub unhandled_pio: Mutex<BoundedCounts<u16>>,
    pub unhandled_mmio: Mutex<BoundedCounts<u64>>,
}

impl VcpuCounters {
    pub fn new(id: u32, pio_devices: usize, mmio_devices: usize, sources: usize) -> Self {
        VcpuCounters {
            id,
            exits: counters(EXIT_KINDS.len()),
            eoi_vectors: counters(256),
            pio_device: counters(pio_devices),
            mmio_device: counters(mmio_devices),
            source_eoi: counters(sources),
            source_pio: counters(sources),
            source_mmio: counters(sources),
            eoi_unattributed: Counter::default(),
            eoi_shared: Counter::default(),
            unhandled_pio: Mutex::new(BoundedCounts::default()),
            unhandled_mmio: Mutex::new(BoundedCounts::default()),
        }
    }

    #[inline]
    pub fn exit(&self, kind: ExitKind) {
        self.exits[kind as usize].inc();
    }

    /// Exits so far, all reasons (for the progress line).
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(Counter::get).sum()
    }

    #[inline]
    pub fn source_pio(&self, source: Option<usize>) {
        if let Some(c) = source.and_then(|s| self.source_pio.get(s)) {
            c.inc();
        }
    }

    #[inline]
    pub fn source_mmio(&self, source: Option<usize>) {
        if let Some(c) = source.and_then(|s| self.source_mmio.get(s)) {
            c.inc();
        }
    }

    /// Count one EOI exit against the sources of the pins in `pins` (a bit
    /// mask from `sources::eoi_pins`).
    pub fn eoi_exit(&self, pins: u32, pin_source: impl Fn(usize) -> Option<usize>) {
        if pins == 0 {
            self.eoi_unattributed.inc();
            return;
        }
        if pins.count_ones() > 1 {
            self.eoi_shared.inc();
        }
        for pin in 0..32 {
            if pins & (1 << pin) != 0 {
                if let Some(c) = pin_source(pin).and_then(|s| self.source_eoi.get(s)) {
                    c.inc();
                }
            }
        }
    }

    pub fn unhandled_pio(&self, port: u16) {
        devices::sync::lock(&self.unhandled_pio).add(port, 1);
    }

    pub fn unhandled_mmio(&self, addr: u64) {
        devices::sync::lock(&self.unhandled_mmio).add(addr, 1);
    }

    /// A consistent-enough copy (each counter read once; counters keep
    /// moving while the vCPU runs).
    pub fn snapshot(&self) -> VcpuStats {
        let mut exits = [0u64; EXIT_KINDS.len()];
        for (d, c) in exits.iter_mut().zip(&self.exits) {
            *d = c.get();
        }
        let mut eoi_vectors = [0u64; 256];
        for (d, c) in eoi_vectors.iter_mut().zip(&self.eoi_vectors) {
            *d = c.get();
        }
        VcpuStats {
            id: self.id,
            exits,
            eoi_vectors,
            pio_device: read_all(&self.pio_device),
            mmio_device: read_all(&self.mmio_device),
            source_eoi: read_all(&self.source_eoi),
            source_pio: read_all(&self.source_pio),
            source_mmio: read_all(&self.source_mmio),
            eoi_unattributed: self.eoi_unattributed.get(),
            eoi_shared: self.eoi_shared.get(),
            unhandled_pio: devices::sync::lock(&self.unhandled_pio).clone(),
            unhandled_mmio: devices::sync::lock(&self.unhandled_mmio).clone(),
        }
    }
}

/// A snapshot of one vCPU's counters.
#[derive(Debug, Clone)]
pub struct VcpuStats {
    pub id: u32,
    pub exits: [u64; EXIT_KINDS.len()],
    pub eoi_vectors: [u64; 256],
    pub pio_device: Vec<u64>,
    pub mmio_device: Vec<u64>,
    pub source_eoi: Vec<u64>,
    pub source_pio: Vec<u64>,
    pub source_mmio: Vec<u64>,
    pub eoi_unattributed: u64,
    pub eoi_shared: u64,
    pub unhandled_pio: BoundedCounts<u16>,
    pub unhandled_mmio: BoundedCounts<u64>,
}

impl VcpuStats {
    pub fn new(id: u32, pio_devices: usize, mmio_devices: usize) -> Self {
        VcpuStats {
            id,
            exits: [0; EXIT_KINDS.len()],
            eoi_vectors: [0; 256],
            pio_device: vec![0; pio_devices],
            mmio_device: vec![0; mmio_devices],
            source_eoi: Vec::new(),
            source_pio: Vec::new(),
            source_mmio: Vec::new(),
            eoi_unattributed: 0,
            eoi_shared: 0,
            unhandled_pio: BoundedCounts::default(),
            unhandled_mmio: BoundedCounts::default(),
        }
    }

    #[inline]
    pub fn exit(&mut self, kind: ExitKind) {
        self.exits[kind as usize] += 1;
    }

    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }
}
