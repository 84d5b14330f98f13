//! Intel 8254 programmable interval timer (PIT), emulated in userspace.
//!
//! # Registration (VMM side)
//! ```ignore
//! // Spawns the "pit-timer" thread that pulses I/O APIC pin 2 for counter 0.
//! let pit = Pit::new(IrqLine::new(ioapic.clone(), PIT_IRQ_PIN))?;
//! let port61 = pit.port61(); // shares state with `pit`
//! let stats = pit.stats(); // ticks_delivered / ticks_skipped
//! io_bus.insert("pit", PIT_BASE.into(), PIT_LEN, Arc::new(Mutex::new(pit)))?;
//! io_bus.insert("pit", PORT61.into(), 1, Arc::new(Mutex::new(port61)))?;
//! ```
//! Dropping the `Pit` (i.e. the bus) stops and joins the timer thread;
//! `PitPort61` keeps the state alive but not the thread.
//!
//! # Model
//! Counters are clocked at [`PIT_HZ`] derived from a [`Clock`] (host
//! `CLOCK_MONOTONIC` in production, a fake in tests): nothing is counted
//! until the guest looks, the count is computed from elapsed time. As in
//! the datasheet, a written count is loaded into the counting element on
//! the next clock (null count stays set until then; reads before that
//! return the old contents), and in mode 0 an initial count N makes OUT
//! rise N+1 clocks after the write. Gates of counters 0 and 1 are tied high,
//! the gate of counter 2 is port 0x61 bit 0: it pauses modes 0/4, pauses and
//! forces OUT high in modes 2/3 (a rising edge restarts them), and triggers
//! modes 1/5. Simplification: while the gate is low the load clock is
//! paused too. BCD counting is implemented (counts modulo 10000; invalid
//! BCD digits are decoded positionally, the chip leaves them undefined).
//! Mode 3 with an odd count reads 0 on the last clock of its high half.
//!
//! # Interrupts
//! Counter 0 drives [`PitOutput::tick`] (an edge on I/O APIC pin 2) on each
//! rising edge of OUT in modes 2/3 and at terminal count in modes 0/4 (Linux
//! uses mode 4 for its one-shot clock event). The timer thread sleeps on a
//! condvar until the next expiry or a guest reprogramming of counter 0. If it
//! wakes late and several expiries have passed, it delivers one tick and
//! counts the rest in [`PitStats::ticks_skipped`] (Linux copes with lost PIT
//! ticks). It sleeps at least [`MIN_WAIT`] per wakeup, so a guest cannot make
//! it spin: unless the guest keeps reprogramming counter 0, interrupts are
//! capped at 10 kHz (and short one-shots may fire up to 100 us late).
//! The thread never holds the PIT lock while calling the output; vCPU threads
//! take the PIT lock on port access only, so there is no lock-order cycle
//! with the I/O APIC.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::irq_line::IrqLine;
use crate::sync::lock;

/// First port of the PIT (counter 0); counters 0-2 and the control word.
pub const PIT_BASE: u16 = 0x40;
/// Number of ports at [`PIT_BASE`].
pub const PIT_LEN: u64 = 4;
/// NMI status and control / speaker port.
pub const PORT61: u16 = 0x61;
/// I/O APIC pin counter 0 is wired to (ISA IRQ 0 is overridden to pin 2).
pub const PIT_IRQ_PIN: usize = 2;
/// Input clock of the three counters, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Minimum sleep of the timer thread between two wakeups.
pub const MIN_WAIT: Duration = Duration::from_micros(100);
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Time source of the PIT, injectable for tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The host's `CLOCK_MONOTONIC`.
pub struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Where counter 0's interrupts go.
pub trait PitOutput: Send + Sync {
    /// One interrupt (an edge).
    fn tick(&self);
}

impl PitOutput for IrqLine {
    fn tick(&self) {
        self.pulse();
    }
}

/// Interrupt statistics of counter 0.
#[derive(Debug, Default)]
pub struct PitStats {
    pub ticks_delivered: AtomicU64,
    pub ticks_skipped: AtomicU64,
}

fn ticks(d: Duration) -> i64 {
    (d.as_nanos() * u128::from(PIT_HZ) / 1_000_000_000) as i64
}

/// The shortest duration that contains `t` PIT clocks.
fn ticks_to_duration(t: i64) -> Duration {
    let t = t.max(0) as u128;
    Duration::from_nanos(((t * 1_000_000_000).div_ceil(u128::from(PIT_HZ))) as u64)
}

fn from_bcd(v: u16) -> i64 {
    (0..4)
        .rev()
        .fold(0, |acc, i| acc * 10 + i64::from((v >> (4 * i)) & 0xf))
}

fn to_bcd(v: i64) -> u16 {
    (0..4).fold(0, |acc, i| {
        acc | (((v / 10i64.pow(i)) % 10) as u16) << (4 * i)
    })
}

/// A clock count that advances only while running (gate high). Saved as
/// its count at the snapshot and whether it runs: the guest's time stands
/// still between snapshot and restore, and so does the PIT's.
#[derive(Clone, Copy, Default, Debug, serde::Serialize, serde::Deserialize)]
#[serde(into = "SavedClock", from = "SavedClock")]
struct GatedClock {
    acc: i64,
    since: Option<Instant>,
}

#[derive(Clone, Copy, serde::Serialize, serde::Deserialize)]
struct SavedClock {
    count: i64,
    running: bool,
}

impl From<GatedClock> for SavedClock {
    /// Of a clock rebased with [`GatedClock::rebase`] (count up to now).
    fn from(c: GatedClock) -> Self {
        SavedClock {
            count: c.acc,
            running: c.since.is_some(),
        }
    }
}

impl From<SavedClock> for GatedClock {
    /// Running from "now"; [`PitState::rebase`] sets the PIT clock's now.
    fn from(c: SavedClock) -> Self {
        GatedClock {
            acc: c.count,
            since: c.running.then(Instant::now),
        }
    }
}

impl GatedClock {
    /// The same count from `now` on.
    fn rebase(&mut self, now: Instant) {
        self.acc = self.at(now);
        self.since = self.since.map(|_| now);
    }

    fn at(&self, now: Instant) -> i64 {
        self.acc
            + self
                .since
                .map_or(0, |s| ticks(now.saturating_duration_since(s)))
    }
    fn set_running(&mut self, now: Instant, run: bool) {
        if run != self.since.is_some() {
            self.acc = self.at(now);
            self.since = run.then_some(now);
        }
    }
    fn instant_of(&self, clk: i64) -> Option<Instant> {
        self.since.map(|s| s + ticks_to_duration(clk - self.acc))
    }
}

/// A counting sequence: count `n` is in the counting element from clock
/// `origin` on (elapsed clocks `e = clk - origin`).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Seq {
    origin: i64,
    n: i64,
}

impl Seq {
    /// Number of interrupt events at clocks in `(from, to]`.
    fn events(&self, periodic: bool, from: i64, to: i64) -> i64 {
        if periodic {
            let k = |x: i64| (x - self.origin).div_euclid(self.n).max(0);
            (k(to) - k(from)).max(0)
        } else {
            let c = self.origin + self.n;
            i64::from(from < c && c <= to)
        }
    }
    /// First interrupt event after clock `after`.
    fn next_event(&self, periodic: bool, after: i64) -> Option<i64> {
        if periodic {
            let k = ((after - self.origin).div_euclid(self.n) + 1).max(1);
            Some(self.origin + k * self.n)
        } else {
            let c = self.origin + self.n;
            (c > after).then_some(c)
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Counter {
    mode_raw: u8,
    access: u8, // 1 = LSB, 2 = MSB, 3 = LSB then MSB
    bcd: bool,
    gate: bool,
    clock: GatedClock,
    seq: Option<Seq>,
    /// Modes 2/3: count written while counting, loaded at clock `.0`.
    pending: Option<(i64, Seq)>,
    /// Last complete count written since the control word (decoded, 1..=M).
    cr: Option<i64>,
    /// Counting element contents before `seq` was loaded.
    stale: u16,
    /// Null count is set until this clock.
    null_until: i64,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    latch: Option<u16>,
    status: Option<u8>,
}

impl Counter {
    fn new(now: Instant, gate: bool) -> Self {
        // As if firmware had written a mode 3 control word but no count.
        let mut c = Counter {
            mode_raw: 3,
            access: 3,
            bcd: false,
            gate,
            clock: GatedClock::default(),
            seq: None,
            pending: None,
            cr: None,
            stale: 0,
            null_until: i64::MAX,
            write_lsb: None,
            read_msb_next: false,
            latch: None,
            status: None,
        };
        c.update_clock(now);
        c
    }

    fn mode(&self) -> u8 {
        if self.mode_raw >= 6 {
            self.mode_raw - 4
        } else {
            self.mode_raw
        }
    }

    fn modulus(&self) -> i64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    fn update_clock(&mut self, now: Instant) {
        let run = self.gate || matches!(self.mode(), 1 | 5);
        self.clock.set_running(now, run);
    }

    /// Current clock, after loading a pending count that became due.
    fn sync(&mut self, now: Instant) -> i64 {
        let clk = self.clock.at(now);
        if let Some((at, seq)) = self.pending {
            if clk >= at {
                self.seq = Some(seq);
                self.pending = None;
            }
        }
        clk
    }

    /// `(elapsed, count)` if a count is loaded at `clk`.
    fn running(&self, clk: i64) -> Option<(i64, i64)> {
        let s = self.seq.filter(|s| clk >= s.origin)?;
        Some((clk - s.origin, s.n))
    }

    fn value_at(&self, clk: i64) -> u16 {
        let Some((e, n)) = self.running(clk) else {
            return self.stale;
        };
        let m = self.modulus();
        let v = match self.mode() {
            2 => n - e % n,
            3 => {
                let (p, hh) = (e % n, (n + 1) / 2);
                (n & !1) - 2 * if p < hh { p } else { p - hh }
            }
            _ => n - e % m, // modes 0, 1, 4, 5 keep counting past zero
        }
        .rem_euclid(m);
        if self.bcd {
            to_bcd(v)
        } else {
            v as u16
        }
    }

    fn out_at(&self, clk: i64) -> bool {
        let mode = self.mode();
        if matches!(mode, 2 | 3) && !self.gate {
            return true;
        }
        match (mode, self.running(clk)) {
            (0, None) => false,
            (_, None) => true,
            (0 | 1, Some((e, n))) => e >= n,
            (2, Some((e, n))) => e % n != n - 1,
            (3, Some((e, n))) => e % n < (n + 1) / 2,
            (_, Some((e, n))) => e != n,
        }
    }

    fn status_at(&self, clk: i64) -> u8 {
        (u8::from(self.out_at(clk)) << 7)
            | (u8::from(clk < self.null_until) << 6)
            | (self.access << 4)
            | (self.mode_raw << 1)
            | u8::from(self.bcd)
    }

    fn control(&mut self, now: Instant, mode_raw: u8, access: u8, bcd: bool) {
        let clk = self.sync(now);
        self.stale = self.value_at(clk);
        (self.mode_raw, self.access, self.bcd) = (mode_raw, access, bcd);
        (self.seq, self.pending, self.cr) = (None, None, None);
        (self.latch, self.status, self.write_lsb) = (None, None, None);
        self.read_msb_next = false;
        self.null_until = i64::MAX;
        self.update_clock(now);
    }

    /// Load count `n` into the counting element on the next clock.
    fn start(&mut self, clk: i64, n: i64) {
        self.stale = self.value_at(clk);
        self.seq = Some(Seq { origin: clk + 1, n });
        self.pending = None;
        self.null_until = clk + 1;
    }

    fn load(&mut self, now: Instant, raw: u16) {
        let clk = self.sync(now);
        let m = self.modulus();
        let v = if self.bcd {
            from_bcd(raw)
        } else {
            i64::from(raw)
        };
        let n = if v % m == 0 { m } else { v % m };
        self.cr = Some(n);
        // Modes 2/3: a new count does not disturb the current cycle.
        let boundary = match (self.mode(), self.running(clk)) {
            (1 | 5, _) => return, // loaded by the next gate trigger
            (2, Some((e, old))) => Some((clk + old - e % old, old)),
            (3, Some((e, old))) => {
                let (p, hh) = (e % old, (old + 1) / 2);
                // Loaded at the end of the current half cycle; after a falling
                // edge the new sequence starts in its low half.
                Some(if p < hh {
                    (clk + hh - p, (n + 1) / 2)
                } else {
                    (clk + old - p, n)
                })
            }
            _ => None,
        };
        match boundary {
            Some((at, back)) => {
                self.pending = Some((
                    at,
                    Seq {
                        origin: at - back,
                        n,
                    },
                ));
                self.null_until = at;
            }
            None => self.start(clk, n),
        }
    }

    fn write(&mut self, now: Instant, b: u8) {
        self.null_until = i64::MAX;
        let raw = match self.access {
            1 => u16::from(b),
            2 => u16::from(b) << 8,
            _ => match self.write_lsb.take() {
                Some(lo) => u16::from(lo) | u16::from(b) << 8,
                None => {
                    self.write_lsb = Some(b);
                    if self.mode() == 0 {
                        // Writing the first byte stops counting, OUT goes low.
                        let clk = self.sync(now);
                        self.stale = self.value_at(clk);
                        self.seq = None;
                    }
                    return;
                }
            },
        };
        self.load(now, raw);
    }

    fn read(&mut self, now: Instant) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let v = match self.latch {
            Some(l) => l,
            None => {
                let clk = self.sync(now);
                self.value_at(clk)
            }
        };
        let msb = match self.access {
            1 => false,
            2 => true,
            _ => {
                self.read_msb_next = !self.read_msb_next;
                !self.read_msb_next
            }
        };
        if self.access != 3 || !self.read_msb_next {
            self.latch = None; // access sequence complete
        }
        v.to_le_bytes()[usize::from(msb)]
    }

    fn latch_count(&mut self, now: Instant) {
        if self.latch.is_none() {
            let clk = self.sync(now);
            self.latch = Some(self.value_at(clk));
        }
    }

    fn latch_status(&mut self, now: Instant) {
        if self.status.is_none() {
            let clk = self.sync(now);
            self.status = Some(self.status_at(clk));
        }
    }

    fn set_gate(&mut self, now: Instant, level: bool) {
        if level == self.gate {
            return;
        }
        let clk = self.sync(now);
        self.gate = level;
        self.update_clock(now);
        if level && matches!(self.mode(), 1 | 2 | 3 | 5) {
            if let Some(n) = self.cr {
                self.start(clk, n); // trigger (1, 5) or restart (2, 3)
            }
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PitState {
    counters: [Counter; 3],
    port61: u8,
    refresh: bool,
    /// Counter 0 clock up to which interrupt events are accounted for.
    irq_seen: i64,
    /// Bumped whenever counter 0 may need a different wakeup.
    #[serde(skip)]
    generation: u64,
    /// A snapshot is being taken: no interrupt events are accounted for
    /// (they are delivered, merged, after it).
    #[serde(skip)]
    paused: bool,
}

/// The PIT's state in a snapshot: every counter (mode, count sequence,
/// latches, clock count), port 0x61 and the last counter 0 clock whose
/// interrupt was delivered, so a periodic timer goes on ticking from where
/// it was, with no tick lost or doubled.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PitSnapshot(PitState);

impl PitState {
    fn new(now: Instant) -> Self {
        PitState {
            counters: [true, true, false].map(|gate| Counter::new(now, gate)),
            port61: 0,
            refresh: false,
            irq_seen: 0,
            generation: 0,
            paused: false,
        }
    }

    fn read(&mut self, now: Instant, port: u64) -> u8 {
        match port {
            0..=2 => self.counters[port as usize].read(now),
            _ => 0xff, // the control word register is write-only
        }
    }

    /// Returns true if the timer thread must recompute its deadline.
    fn write(&mut self, now: Instant, port: u64, v: u8) -> bool {
        match port {
            0..=2 => self.counters[port as usize].write(now, v),
            3 => self.control(now, v),
            _ => return false,
        }
        let wake = port == 0 || (port == 3 && v >> 6 == 0);
        self.generation += u64::from(wake);
        wake
    }

    fn control(&mut self, now: Instant, v: u8) {
        let (sc, rw) = (usize::from(v >> 6), (v >> 4) & 3);
        if sc == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, c) in self.counters.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        c.latch_count(now);
                    }
                    if v & 0x10 == 0 {
                        c.latch_status(now);
                    }
                }
            }
        } else if rw == 0 {
            self.counters[sc].latch_count(now);
        } else {
            self.counters[sc].control(now, (v >> 1) & 7, rw, v & 1 != 0);
        }
    }

    /// Every count within what a guest could have programmed: modes 0-7,
    /// access 1-3, counts 1..=modulus.
    fn check(&self) -> Result<(), String> {
        for (i, c) in self.counters.iter().enumerate() {
            let m = c.modulus();
            let count_ok = |n: i64| (1..=m).contains(&n);
            let ok = c.mode_raw <= 7
                && (1..=3).contains(&c.access)
                && c.seq.is_none_or(|s| count_ok(s.n))
                && c.pending.is_none_or(|(_, s)| count_ok(s.n))
                && c.cr.is_none_or(count_ok);
            if !ok {
                return Err(format!(
                    "PIT counter {i}: mode, access or count out of range"
                ));
            }
        }
        Ok(())
    }

    fn read_port61(&mut self, now: Instant) -> u8 {
        self.refresh = !self.refresh;
        let c = &mut self.counters[2];
        let clk = c.sync(now);
        self.port61 | u8::from(self.refresh) << 4 | u8::from(c.out_at(clk)) << 5
    }

    fn write_port61(&mut self, now: Instant, v: u8) {
        self.port61 = v & 0x0f;
        self.counters[2].set_gate(now, v & 1 != 0);
    }

    /// Counter 0 events since the last step, and the next expiry.
    fn timer_step(&mut self, now: Instant) -> (i64, Option<Instant>) {
        if self.paused {
            return (0, None);
        }
        let c = &mut self.counters[0];
        let clk = c.sync(now);
        let from = self.irq_seen;
        self.irq_seen = clk.max(from);
        let Some(seq) = c.seq else {
            return (0, None);
        };
        let periodic = matches!(c.mode(), 2 | 3);
        let next = match (seq.next_event(periodic, clk), c.pending) {
            (Some(t), Some((at, p))) if t >= at => p.next_event(periodic, clk.max(at - 1)),
            (t, _) => t,
        };
        let expired = seq.events(periodic, from, clk);
        (expired, next.and_then(|t| c.clock.instant_of(t)))
    }
}

struct Shared {
    state: Mutex<PitState>,
    wake: Condvar,
    clock: Arc<dyn Clock>,
    out: Arc<dyn PitOutput>,
    stop: AtomicBool,
    stats: Arc<PitStats>,
}

impl Shared {
    /// One timer step: deliver at most one tick, without the state lock held.
    /// Returns the next deadline and the generation it was computed for.
    fn poll(&self) -> (Option<Instant>, u64) {
        let (expired, next, generation) = {
            let mut st = lock(&self.state);
            let (expired, next) = st.timer_step(self.clock.now());
            (expired, next, st.generation)
        };
        if expired > 0 {
            self.out.tick();
            self.stats.ticks_delivered.fetch_add(1, Ordering::Relaxed);
            self.stats
                .ticks_skipped
                .fetch_add(expired as u64 - 1, Ordering::Relaxed);
        }
        (next, generation)
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let (next, generation) = self.poll();
            let st = lock(&self.state);
            if self.stop.load(Ordering::Acquire) || st.generation != generation {
                continue;
            }
            let now = self.clock.now();
            let wait = next.map_or(IDLE_WAIT, |t| t.saturating_duration_since(now));
            drop(self.wake.wait_timeout(st, wait.max(MIN_WAIT)));
        }
    }
}

/// The 8254 on ports 0x40-0x43 (a [`BusDevice`] registered at [`PIT_BASE`]).
pub struct Pit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Port 0x61 (a [`BusDevice`] registered at [`PORT61`], length 1): bit 0
/// gate of counter 2, bit 1 speaker data enable, bits 2-3 stored, bit 4
/// refresh toggle (flips on every read), bit 5 OUT of counter 2.
pub struct PitPort61 {
    shared: Arc<Shared>,
}

impl Pit {
    /// A PIT on the host clock whose counter 0 pulses `irq`; the timer
    /// thread is running when this returns.
    pub fn new(irq: IrqLine) -> std::io::Result<Pit> {
        let mut pit = Pit::with_clock(Arc::new(irq), Arc::new(HostClock));
        pit.start()?;
        Ok(pit)
    }

    /// A PIT with an explicit output and time source; no thread is started.
    pub fn with_clock(out: Arc<dyn PitOutput>, clock: Arc<dyn Clock>) -> Pit {
        let state = Mutex::new(PitState::new(clock.now()));
        let shared = Shared {
            state,
            wake: Condvar::new(),
            clock,
            out,
            stop: AtomicBool::new(false),
            stats: Arc::default(),
        };
        Pit {
            shared: Arc::new(shared),
            thread: None,
        }
    }

    /// Start the timer thread (no-op if it runs).
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.thread.is_none() {
            self.shared.stop.store(false, Ordering::Release);
            let shared = self.shared.clone();
            let t = std::thread::Builder::new().name("pit-timer".into());
            self.thread = Some(t.spawn(move || {
                crate::thread_start::started("pit-timer");
                shared.run()
            })?);
        }
        Ok(())
    }

    /// Stop and join the timer thread; counter 0 interrupts cease.
    pub fn stop(&mut self) {
        {
            let _st = lock(&self.shared.state);
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::warn!("pit: timer thread panicked");
            }
        }
    }

    /// The port 0x61 device sharing this PIT's state.
    pub fn port61(&self) -> PitPort61 {
        PitPort61 {
            shared: self.shared.clone(),
        }
    }

    /// Interrupt statistics of counter 0.
    pub fn stats(&self) -> Arc<PitStats> {
        self.shared.stats.clone()
    }
}

impl Drop for Pit {
    fn drop(&mut self) {
        self.stop();
    }
}

static WIDE_ACCESS_WARNED: AtomicBool = AtomicBool::new(false);

fn warn_wide(len: usize) {
    if len > 1 && !WIDE_ACCESS_WARNED.swap(true, Ordering::Relaxed) {
        log::warn!("pit: {len}-byte port access, handled as byte accesses to consecutive ports");
    }
}

impl Pit {
    /// The state a snapshot keeps, clocks counted up to now.
    pub fn save(&self) -> PitSnapshot {
        let mut st = lock(&self.shared.state).clone();
        let now = self.shared.clock.now();
        for c in &mut st.counters {
            c.clock.rebase(now);
        }
        PitSnapshot(st)
    }

    /// Put back a saved state: the clocks go on from their saved counts
    /// now, and the timer thread recomputes its deadline.
    /// A state whose counts are out of range (a snapshot edited by hand)
    /// is refused: the timer thread divides by them.
    pub fn restore(&self, s: &PitSnapshot) -> Result<(), crate::StateError> {
        s.0.check().map_err(crate::StateError::Mismatch)?;
        let now = self.shared.clock.now();
        {
            let mut st = lock(&self.shared.state);
            let generation = st.generation + 1;
            *st = s.0.clone();
            for c in &mut st.counters {
                c.clock.since = c.clock.since.map(|_| now);
            }
            st.generation = generation;
        }
        self.shared.wake.notify_all();
        Ok(())
    }

    fn set_paused(&self, paused: bool) {
        {
            let mut st = lock(&self.shared.state);
            st.paused = paused;
            st.generation += 1;
        }
        self.shared.wake.notify_all();
    }
}

impl BusDevice for Pit {
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(Some(crate::DeviceState::of("pit", &Pit::save(self))?))
    }

    fn restore_state(&mut self, s: &crate::DeviceState) -> Result<(), crate::StateError> {
        Pit::restore(self, &s.get("pit")?)
    }

    fn pause(&mut self, paused: bool) {
        self.set_paused(paused);
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        warn_wide(data.len());
        let mut st = lock(&self.shared.state);
        let now = self.shared.clock.now();
        for (port, b) in (offset..).zip(data.iter_mut()) {
            *b = st.read(now, port);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        warn_wide(data.len());
        let wake = {
            let mut st = lock(&self.shared.state);
            let now = self.shared.clock.now();
            (offset..)
                .zip(data)
                .fold(false, |w, (port, &b)| st.write(now, port, b) | w)
        };
        if wake {
            self.shared.wake.notify_all();
        }
    }
}

impl BusDevice for PitPort61 {
    /// Saved with the PIT (one state).
    fn save_state(&self) -> Result<Option<crate::DeviceState>, crate::StateError> {
        Ok(None)
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (0, Some(b)) = (offset, data.first_mut()) {
            let mut st = lock(&self.shared.state);
            *b = st.read_port61(self.shared.clock.now());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(&b)) = (offset, data.first()) {
            let mut st = lock(&self.shared.state);
            st.write_port61(self.shared.clock.now(), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeClock {
        base: Instant,
        offset: Mutex<Duration>,
    }

    impl FakeClock {
        fn advance(&self, d: Duration) {
            *lock(&self.offset) += d;
        }
        /// Advance to exactly `n` clocks later in the clock's own frame.
        fn advance_ticks(&self, n: i64) {
            let mut o = lock(&self.offset);
            *o = ticks_to_duration(ticks(*o) + n);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.base + *lock(&self.offset)
        }
    }

    #[derive(Default)]
    struct CountingOut(AtomicU64);

    impl PitOutput for CountingOut {
        fn tick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl CountingOut {
        fn count(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    struct Rig {
        pit: Pit,
        p61: PitPort61,
        clock: Arc<FakeClock>,
        out: Arc<CountingOut>,
    }

    fn rig() -> Rig {
        let clock = Arc::new(FakeClock {
            base: Instant::now(),
            offset: Mutex::default(),
        });
        let out = Arc::new(CountingOut::default());
        let pit = Pit::with_clock(out.clone(), clock.clone());
        Rig {
            p61: pit.port61(),
            pit,
            clock,
            out,
        }
    }

    impl Rig {
        fn outb(&mut self, port: u16, v: u8) {
            match port {
                PORT61 => self.p61.write(0, &[v]),
                _ => self.pit.write(u64::from(port - PIT_BASE), &[v]),
            }
        }
        fn inb(&mut self, port: u16) -> u8 {
            let mut d = [0u8];
            match port {
                PORT61 => self.p61.read(0, &mut d),
                _ => self.pit.read(u64::from(port - PIT_BASE), &mut d),
            }
            d[0]
        }
        /// Program `counter` with control word `ctrl` and a 16-bit count.
        fn program(&mut self, counter: u16, ctrl: u8, count: u16) {
            self.outb(0x43, ctrl);
            self.outb(0x40 + counter, count as u8);
            self.outb(0x40 + counter, (count >> 8) as u8);
        }
        fn read16(&mut self, counter: u16) -> u16 {
            let lo = self.inb(0x40 + counter);
            u16::from(lo) | u16::from(self.inb(0x40 + counter)) << 8
        }
        fn latched16(&mut self, counter: u16) -> u16 {
            self.outb(0x43, (counter as u8) << 6);
            self.read16(counter)
        }
        fn status(&mut self, counter: u16) -> u8 {
            self.outb(0x43, 0xe0 | 2 << counter);
            self.inb(0x40 + counter)
        }
        fn out2(&mut self) -> bool {
            self.inb(PORT61) & 0x20 != 0
        }
        fn poll(&self) -> Option<Instant> {
            self.pit.shared.poll().0
        }
    }

    /// Clocks from now until counter 0's clock reads `clk`.
    fn ticks_to_go(r: &Rig, clk: i64) -> i64 {
        clk - ticks(*lock(&r.clock.offset))
    }

    #[test]
    fn mode2_count_decrements_at_1_193182_mhz() {
        let mut r = rig();
        r.program(0, 0x34, 50_000);
        r.clock.advance(Duration::from_millis(10));
        // 10 ms = 11931.82 clocks: the first loads the count, 11930 decrement it.
        assert_eq!(r.latched16(0), 50_000 - 11_930);
    }

    #[test]
    fn a_restored_periodic_counter_goes_on_from_its_saved_count_without_a_lost_or_doubled_tick() {
        let mut a = rig();
        a.program(0, 0x34, 1000); // counter 0, mode 2
        a.clock.advance_ticks(2500);
        a.poll();
        assert_eq!(a.out.count(), 1, "two periods merge into one delivery");
        let before = a.latched16(0);
        let saved = a.pit.save();
        a.pit.set_paused(true);
        a.clock.advance_ticks(5000);
        assert!(a.poll().is_none(), "a paused PIT accounts no tick");
        assert_eq!(a.out.count(), 1);

        // A new PIT, its clock elsewhere in time: the count is where it was.
        let mut b = rig();
        b.clock.advance(Duration::from_secs(7));
        b.pit.restore(&saved).unwrap();
        assert_eq!(b.latched16(0), before);
        b.poll();
        assert_eq!(
            b.out.count(),
            0,
            "the ticks before the snapshot were delivered there"
        );
        b.clock.advance_ticks(498);
        b.poll();
        assert_eq!(b.out.count(), 0, "not before the period ends");
        b.clock.advance_ticks(3);
        b.poll();
        assert_eq!(b.out.count(), 1, "the next period ends on time");
        assert_eq!(b.status(0) & 0x0e, 0x04, "mode 2 kept");
        // A count no guest could program (a snapshot edited by hand).
        let mut bad = saved.clone();
        bad.0.counters[0].seq = Some(Seq { origin: 0, n: 0 });
        assert!(b.pit.restore(&bad).is_err());
    }

    #[test]
    fn latch_command_freezes_read_value() {
        let mut r = rig();
        r.program(0, 0x34, 1000);
        r.clock.advance_ticks(10);
        r.outb(0x43, 0x00);
        r.clock.advance_ticks(100);
        r.outb(0x43, 0x00); // ignored: already latched
        assert_eq!(r.read16(0), 991);
        assert_eq!(r.read16(0), 891, "latch released after both bytes");
    }

    #[test]
    fn lsb_msb_access_reads_two_bytes_in_order() {
        let mut r = rig();
        r.program(1, 0x70, 0x1234);
        r.clock.advance_ticks(1);
        assert_eq!((r.inb(0x41), r.inb(0x41)), (0x34, 0x12));
        r.outb(0x43, 0x50); // LSB only
        r.outb(0x41, 0x80);
        r.clock.advance_ticks(1);
        assert_eq!((r.inb(0x41), r.inb(0x41)), (0x80, 0x80));
        r.outb(0x43, 0x60); // MSB only
        r.outb(0x41, 0x12);
        r.clock.advance_ticks(1);
        assert_eq!((r.inb(0x41), r.inb(0x41)), (0x12, 0x12));
    }

    #[test]
    fn readback_reports_status_and_null_count() {
        let mut r = rig();
        r.outb(PORT61, 0x01);
        r.outb(0x43, 0xb0); // counter 2, LSB/MSB, mode 0, binary
        assert_eq!(r.status(2), 0x70, "OUT low, null count, RW=3, mode 0");
        r.outb(0x42, 100);
        r.outb(0x42, 0);
        assert_eq!(r.status(2), 0x70, "count not loaded before the next clock");
        r.clock.advance_ticks(1);
        r.outb(0x43, 0xc8); // latch count and status of counter 2
        assert_eq!(r.inb(0x42), 0x30, "status first, null count clear");
        assert_eq!(r.read16(2), 100);
        r.clock.advance_ticks(100);
        assert_eq!(r.status(2), 0xb0, "OUT high at terminal count");
    }

    #[test]
    fn counter2_out_visible_in_port61_bit5() {
        let mut r = rig();
        r.outb(PORT61, 0x03);
        r.program(2, 0xb0, 100);
        let (a, b) = (r.inb(PORT61), r.inb(PORT61));
        assert_eq!((a & 0x2f, b & 0x2f), (0x03, 0x03));
        assert_ne!(a & 0x10, b & 0x10, "refresh bit toggles");
        r.clock.advance_ticks(100);
        assert!(!r.out2());
        r.clock.advance_ticks(1);
        assert!(r.out2());
    }

    #[test]
    fn gate_low_stops_counter2_in_mode0() {
        let mut r = rig();
        r.outb(PORT61, 0x01);
        r.program(2, 0xb0, 1000);
        r.clock.advance_ticks(101);
        assert_eq!(r.latched16(2), 900);
        r.outb(PORT61, 0x00);
        r.clock.advance_ticks(5000);
        assert_eq!(r.latched16(2), 900);
        assert!(!r.out2());
        r.outb(PORT61, 0x01);
        r.clock.advance_ticks(100);
        let v = r.latched16(2);
        assert!((799..=801).contains(&v), "resumed counting: {v}");
    }

    #[test]
    fn reload_zero_means_65536() {
        let mut r = rig();
        r.program(0, 0x34, 0);
        r.clock.advance_ticks(1);
        assert_eq!(r.latched16(0), 0);
        r.clock.advance_ticks(1);
        assert_eq!(r.latched16(0), 0xffff);
        r.clock.advance_ticks(65_534); // e = 65535
        r.poll();
        assert_eq!(r.out.count(), 0);
        r.clock.advance_ticks(1);
        r.poll();
        assert_eq!(r.out.count(), 1, "period is 65536 clocks");
    }

    #[test]
    fn mode3_square_wave_out_toggles_at_half_period() {
        for (count, high) in [(10, 5), (5, 3)] {
            let mut r = rig();
            r.outb(PORT61, 0x01);
            r.program(2, 0xb6, count);
            r.clock.advance_ticks(1);
            assert_eq!(r.latched16(2), count & !1);
            for e in 0..3 * i64::from(count) {
                let want = e % i64::from(count) < high;
                assert_eq!(r.out2(), want, "count {count}, clock {e}");
                r.clock.advance_ticks(1);
            }
        }
        let mut r = rig();
        r.program(0, 0x36, 10);
        for (e, ticks) in [(9, 0), (10, 1), (15, 1), (19, 1), (20, 2)] {
            r.clock.advance_ticks(ticks_to_go(&r, 1 + e));
            r.poll();
            assert_eq!(
                r.out.count(),
                ticks,
                "one interrupt per rising edge, e = {e}"
            );
        }
    }

    #[test]
    fn new_count_in_mode2_takes_effect_at_end_of_period() {
        let mut r = rig();
        r.program(0, 0x34, 100);
        r.clock.advance_ticks(1 + 30);
        r.outb(0x40, 50);
        r.outb(0x40, 0);
        assert_eq!(r.status(0) & 0x40, 0x40, "null count until reload");
        r.clock.advance_ticks(1);
        assert_eq!(r.latched16(0), 69);
        r.clock.advance_ticks(69); // e = 100: end of the period
        assert_eq!(r.latched16(0), 50);
        assert_eq!(r.status(0) & 0x40, 0);
        r.clock.advance_ticks(1);
        assert_eq!(r.latched16(0), 49);
    }

    #[test]
    fn mode1_is_retriggered_by_counter2_gate_edge() {
        let mut r = rig();
        r.program(2, 0xb2, 10);
        r.clock.advance_ticks(50);
        assert!(r.out2(), "waits for a trigger");
        r.outb(PORT61, 0x01);
        r.clock.advance_ticks(1);
        assert!(!r.out2());
        r.clock.advance_ticks(5);
        r.outb(PORT61, 0x00);
        r.outb(PORT61, 0x01); // retrigger: reload 10
        r.clock.advance_ticks(10);
        assert!(!r.out2());
        r.clock.advance_ticks(1);
        assert!(r.out2());
    }

    #[test]
    fn bcd_counting_reads_decimal_digits() {
        let mut r = rig();
        r.program(1, 0x71, 0x0100);
        r.clock.advance_ticks(2);
        assert_eq!(r.latched16(1), 0x0099);
        r.program(1, 0x71, 0);
        r.clock.advance_ticks(2);
        assert_eq!(r.latched16(1), 0x9999, "0 means 10000 in BCD");
    }

    #[test]
    fn one_shot_mode0_fires_once() {
        for ctrl in [0x30, 0x38] {
            // Mode 0 (interrupt on terminal count) and mode 4 (Linux one-shot).
            let mut r = rig();
            r.program(0, ctrl, 100);
            let deadline = r.poll().expect("armed");
            assert_eq!(deadline, r.clock.base + ticks_to_duration(101));
            r.clock.advance_ticks(100);
            r.poll();
            assert_eq!(r.out.count(), 0);
            r.clock.advance_ticks(1);
            assert!(r.poll().is_none());
            r.clock.advance_ticks(200_000);
            r.poll();
            assert_eq!(r.out.count(), 1);
        }
    }

    #[test]
    fn late_wakeup_delivers_one_tick_and_counts_skipped() {
        let mut r = rig();
        r.program(0, 0x34, 100);
        r.clock.advance_ticks(1 + 1000);
        r.poll();
        let stats = r.pit.stats();
        assert_eq!(r.out.count(), 1);
        assert_eq!(stats.ticks_delivered.load(Ordering::Relaxed), 1);
        assert_eq!(stats.ticks_skipped.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn guest_garbage_never_panics() {
        let mut r = rig();
        let mut x = 0x1234_5678u32;
        let mut rnd = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        };
        for ctrl in 0..=255u8 {
            r.outb(0x43, ctrl);
            for _ in 0..8 {
                let port = [0x40, 0x41, 0x42, 0x43, PORT61][usize::from(rnd() % 5)];
                if rnd() & 1 == 0 {
                    let v = rnd();
                    r.outb(port, v);
                } else {
                    r.inb(port);
                }
                r.clock.advance_ticks(i64::from(rnd()));
                r.poll();
            }
        }
        let mut wide = [0u8; 8];
        r.pit.read(0, &mut wide);
        r.pit.write(2, &wide);
        r.p61.read(1, &mut wide[..2]);
        assert_eq!(r.inb(0x43), 0xff);
    }

    #[test]
    fn periodic_timer_thread_pulses_irq() {
        let out = Arc::new(CountingOut::default());
        let mut pit = Pit::with_clock(out.clone(), Arc::new(HostClock));
        pit.start().unwrap();
        pit.write(3, &[0x34]);
        pit.write(0, &[0xa9]); // 1193 clocks: 1 ms
        pit.write(0, &[0x04]);
        let stats = pit.stats();
        let t0 = Instant::now();
        while out.count() < 3 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(out.count() >= 1);
        drop(pit); // joins the thread
        let n = out.count();
        assert_eq!(stats.ticks_delivered.load(Ordering::Relaxed), n);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(out.count(), n, "no ticks after drop");
    }
}
