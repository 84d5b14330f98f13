//! `--trace-exits`: KVM tracepoints for this VM, attributed to interrupt
//! sources.
//!
//! Root only. Uses a trace instance of its own (`instances/splitvm-<pid>`
//! under tracefs, mounted at /sys/kernel/tracing if it is not), so other
//! users of ftrace are not disturbed; events are filtered to this process's
//! threads with `set_event_pid` (plus `event-fork`, so vCPU threads created
//! later are included). A thread reads `trace_pipe` while the VM runs and
//! attributes each interrupt event to a source by its vector, using the
//! registry and the I/O APIC's routes *at the time the event is read* (a
//! few milliseconds after it happened). The instance is removed when the
//! tracer is finished or dropped (normal exit, Ctrl-C, guest crash, VMM
//! error), and instances left behind by dead splitvm processes are removed
//! on start.
//!
//! Some tracepoints never fire on some backends (on `kvm_pvm`: kvm_exit,
//! kvm_inj_virq); the report lists enabled events that saw nothing as
//! "did not fire" instead of claiming a count of zero happened.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use devices::ioapic::{IoApic, PinRoute};
use devices::sync::lock;

use crate::sources::{SourceRegistry, TracedCounts, SOURCE_IPI, SOURCE_LAPIC_LOCAL};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Events we ask for, if this kernel has them.
pub const EVENTS: &[&str] = &[
    "kvm_exit",
    "kvm_userspace_exit",
    "kvm_inj_virq",
    "kvm_apic_accept_irq",
    "kvm_apicv_accept_irq",
    "kvm_msi_set_irq",
    "kvm_set_irq",
    "kvm_eoi",
    "kvm_apic_ipi",
    "kvm_apicv_inhibit_changed",
    "kvm_pi_irte_update",
    // KVM's in-kernel irqchip (--irqchip kernel).
    "kvm_ioapic_set_irq",
    "kvm_pic_set_irq",
    "kvm_ioapic_delayed_eoi_inj",
];

/// What the trace saw, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraceReport {
    /// False when tracing could not be used; `unavailable` says why.
    pub available: bool,
    pub unavailable: Option<String>,
    pub instance: Option<String>,
    pub events_enabled: Vec<String>,
    /// Requested events this kernel does not have.
    pub events_missing: Vec<String>,
    /// Enabled events that never fired during the run: not available on
    /// this host (e.g. kvm_exit on kvm_pvm), not "zero happened".
    pub events_silent: Vec<String>,
    /// Events seen, by name (only events that fired).
    pub event_counts: BTreeMap<String, u64>,
    /// kvm_exit by exit reason (empty when kvm_exit did not fire).
    pub kvm_exit_reasons: BTreeMap<String, u64>,
    /// kvm_userspace_exit by reason.
    pub userspace_exit_reasons: BTreeMap<String, u64>,
    /// kvm_apicv_inhibit_changed lines, as printed by the kernel.
    pub apicv_inhibit_changes: Vec<String>,
    /// Interrupt events matched to no source (kvm_msi_set_irq also fires
    /// when KVM scans the routing table, for every route: those land here
    /// or on the pin whose route was scanned).
    pub unattributed: TracedCounts,
    /// kvm_eoi events with vector -1: an EOI write with no vector in
    /// service. On kvm_pvm every guest EOI write produces one of these right
    /// after the real one (the write reaches the LAPIC twice).
    pub eoi_without_isr: u64,
    /// Events the kernel dropped (ring buffer overrun), summed over CPUs.
    pub overrun: Option<u64>,
    /// Trace totals next to KVM binary statistics and splitvm's counters.
    pub comparison: Vec<Comparison>,
    /// Per-source counts, by source index (also copied into `sources[]`).
    #[serde(skip)]
    pub by_source: BTreeMap<usize, TracedCounts>,
}

/// One line of the trace-versus-counters comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub what: String,
    pub trace_event: String,
    /// None when the event did not fire on this host.
    pub trace: Option<u64>,
    pub counter: String,
    /// None when the counter does not exist on this host.
    pub value: Option<u64>,
}

impl TraceReport {
    /// Enabled events that fired at least once.
    pub fn event_counts_fired(&self) -> Vec<String> {
        self.event_counts.keys().cloned().collect()
    }

    pub fn unavailable(why: impl Into<String>) -> Self {
        TraceReport {
            unavailable: Some(why.into()),
            ..Default::default()
        }
    }
}

struct State {
    /// Pin routes learned from kvm_ioapic_set_irq (KVM's irqchip).
    learned: Vec<PinRoute>,
    counts: BTreeMap<String, u64>,
    exit_reasons: BTreeMap<String, u64>,
    userspace_reasons: BTreeMap<String, u64>,
    inhibits: Vec<String>,
    by_source: BTreeMap<usize, TracedCounts>,
    unattributed: TracedCounts,
    ipi_vectors: BTreeSet<u8>,
    eoi_without_isr: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            // Unknown until seen: masked, vector 0 (owns nothing).
            learned: (0..devices::ioapic::NUM_PINS)
                .map(|pin| PinRoute::of_rte(pin, 1 << 16))
                .collect(),
            counts: BTreeMap::new(),
            exit_reasons: BTreeMap::new(),
            userspace_reasons: BTreeMap::new(),
            inhibits: Vec::new(),
            by_source: BTreeMap::new(),
            unattributed: TracedCounts::default(),
            ipi_vectors: BTreeSet::new(),
            eoi_without_isr: 0,
        }
    }
}

/// A running trace session.
pub struct Tracer {
    dir: PathBuf,
    enabled: Vec<String>,
    missing: Vec<String>,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

fn write_file(p: &Path, s: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)?
        .write_all(s.as_bytes())
}

fn tids() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount tracefs at /sys/kernel/tracing if it is not there.
fn ensure_tracefs() -> Result<PathBuf, String> {
    let root = PathBuf::from(TRACEFS);
    if root.join("instances").is_dir() {
        return Ok(root);
    }
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    if root.join("instances").is_dir() {
        Ok(root)
    } else {
        Err(format!("{TRACEFS} has no instances/ directory"))
    }
}

fn remove_instance(dir: &Path) {
    let _ = write_file(&dir.join("tracing_on"), "0");
    let _ = write_file(&dir.join("events/enable"), "0");
    let _ = write_file(&dir.join("set_event_pid"), "");
    let _ = fs::remove_dir(dir);
}

/// Remove instances of splitvm processes that no longer exist.
fn remove_stale(instances: &Path) {
    let Ok(d) = fs::read_dir(instances) else {
        return;
    };
    for e in d.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix("splitvm-") {
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                remove_instance(&e.path());
            }
        }
    }
}

impl Tracer {
    /// Set up the instance, enable the events, and start the reader.
    /// Call before the vCPU threads start (they are followed through
    /// `event-fork`); [`Tracer::add_threads`] adds them explicitly too.
    /// `ioapic` is the split irqchip's: events are attributed with its
    /// routes; without it (KVM's irqchip) the pins' routes are learned
    /// from kvm_ioapic_set_irq, which names pin and vector.
    pub fn start(
        registry: Arc<SourceRegistry>,
        ioapic: Option<Arc<Mutex<IoApic>>>,
    ) -> Result<Tracer, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("--trace-exits needs root (tracefs); falling back to counters".into());
        }
        let root = ensure_tracefs()?;
        if !root.join("events/kvm").is_dir() {
            return Err("this kernel has no kvm trace events".into());
        }
        remove_stale(&root.join("instances"));
        let dir = root
            .join("instances")
            .join(format!("splitvm-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut t = Tracer {
            dir: dir.clone(),
            enabled: Vec::new(),
            missing: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(State::default())),
            thread: None,
        };
        let setup = || -> std::io::Result<()> {
            write_file(&dir.join("tracing_on"), "0")?;
            let _ = write_file(&dir.join("buffer_size_kb"), "4096");
            write_file(&dir.join("options/event-fork"), "1")?;
            write_file(&dir.join("set_event_pid"), &tids().join(" "))?;
            Ok(())
        };
        setup().map_err(|e| format!("cannot set up trace instance {}: {e}", dir.display()))?;
        for ev in EVENTS {
            let p = dir.join("events/kvm").join(ev).join("enable");
            if p.exists() && write_file(&p, "1").is_ok() {
                t.enabled.push(ev.to_string());
            } else {
                t.missing.push(ev.to_string());
            }
        }
        if t.enabled.is_empty() {
            return Err("none of the KVM interrupt trace events could be enabled".into());
        }
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("trace_pipe"))
            .map_err(|e| format!("cannot open trace_pipe: {e}"))?;
        write_file(&dir.join("tracing_on"), "1").map_err(|e| format!("tracing_on: {e}"))?;
        let (stop, state) = (t.stop.clone(), t.state.clone());
        t.thread = Some(
            std::thread::Builder::new()
                .name("trace".into())
                .spawn(move || {
                    devices::thread_start::started("trace");
                    reader(pipe, stop, state, registry, ioapic)
                })
                .map_err(|e| format!("trace thread: {e}"))?,
        );
        Ok(t)
    }

    /// Add threads (the vCPU threads) to the PID filter.
    pub fn add_threads(&self) {
        if let Ok(mut f) = OpenOptions::new()
            .append(true)
            .open(self.dir.join("set_event_pid"))
        {
            let _ = f.write_all(tids().join(" ").as_bytes());
        }
    }

    fn overrun(&self) -> Option<u64> {
        let d = fs::read_dir(self.dir.join("per_cpu")).ok()?;
        let mut total = 0;
        for e in d.filter_map(|e| e.ok()) {
            let s = fs::read_to_string(e.path().join("stats")).ok()?;
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("overrun:") {
                    total += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        Some(total)
    }

    /// What was seen so far (the reader keeps going).
    pub fn snapshot(&self) -> TraceReport {
        let st = lock(&self.state);
        let silent = self
            .enabled
            .iter()
            .filter(|e| !st.counts.contains_key(*e))
            .cloned()
            .collect();
        TraceReport {
            available: true,
            unavailable: None,
            instance: Some(self.dir.display().to_string()),
            events_enabled: self.enabled.clone(),
            events_missing: self.missing.clone(),
            events_silent: silent,
            event_counts: st.counts.clone(),
            kvm_exit_reasons: st.exit_reasons.clone(),
            userspace_exit_reasons: st.userspace_reasons.clone(),
            apicv_inhibit_changes: st.inhibits.clone(),
            unattributed: st.unattributed.clone(),
            eoi_without_isr: st.eoi_without_isr,
            overrun: self.overrun(),
            comparison: Vec::new(),
            by_source: st.by_source.clone(),
        }
    }

    /// Stop tracing, drain the pipe, remove the instance; the final counts.
    pub fn finish(mut self) -> TraceReport {
        self.stop_reader();
        let r = self.snapshot();
        remove_instance(&self.dir);
        r
    }

    fn stop_reader(&mut self) {
        let _ = write_file(&self.dir.join("tracing_on"), "0");
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop_reader();
        if self.dir.exists() {
            remove_instance(&self.dir);
        }
    }
}

fn reader(
    mut pipe: File,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    registry: Arc<SourceRegistry>,
    ioapic: Option<Arc<Mutex<IoApic>>>,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut partial = String::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        match pipe.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                partial.push_str(&String::from_utf8_lossy(&buf[..n]));
                let mut st = lock(&state);
                let mut routes = match &ioapic {
                    Some(io) => lock(io).routes(),
                    None => st.learned.clone(),
                };
                let kernel = ioapic.is_none();
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    handle_line(line.trim_end(), &mut st, &registry, &routes, kernel);
                    if kernel {
                        routes.clone_from(&st.learned);
                    }
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
        // Nothing to read: done if asked to stop (the pipe is drained).
        if stopping {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Value of `key` in a "key value key value" field list.
fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    let mut it = fields.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
    }
    None
}

fn num(s: Option<&str>) -> Option<u64> {
    let s = s?.trim_end_matches(',');
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn hex(s: Option<&str>) -> Option<u64> {
    u64::from_str_radix(s?.trim_start_matches("0x"), 16).ok()
}

/// Parse one trace_pipe line: "<comm>-<tid> [cpu] flags ts: event: fields".
fn split_line(line: &str) -> Option<(&str, &str)> {
    let i = line.find(": kvm_")?;
    let rest = &line[i + 2..];
    let j = rest.find(':')?;
    Some((&rest[..j], rest[j + 1..].trim()))
}

/// One trace line. `kernel`: KVM's own irqchip runs (GSIs below 16 are ISA
/// IRQs, pin routes are learned from kvm_ioapic_set_irq into
/// `st.learned`).
fn handle_line(
    line: &str,
    st: &mut State,
    reg: &SourceRegistry,
    routes: &[PinRoute],
    kernel: bool,
) {
    let Some((event, f)) = split_line(line) else {
        return;
    };
    *st.counts.entry(event.to_string()).or_default() += 1;
    // Source(s) owning `vector` delivered to `apic`: registry first, then
    // IPIs seen with that vector, then LAPIC-local.
    let owners = |st: &State, vector: u8, apic: Option<u32>| -> Vec<usize> {
        let o = reg.vector_owners(vector, apic, routes);
        if !o.is_empty() {
            o
        } else if st.ipi_vectors.contains(&vector) {
            vec![SOURCE_IPI]
        } else {
            vec![SOURCE_LAPIC_LOCAL]
        }
    };
    let bump = |st: &mut State, srcs: &[usize], f: fn(&mut TracedCounts)| {
        if srcs.is_empty() {
            f(&mut st.unattributed);
        }
        for s in srcs {
            f(st.by_source.entry(*s).or_default());
        }
    };
    match event {
        "kvm_exit" => {
            let reason = field(f, "reason").unwrap_or("?").to_string();
            *st.exit_reasons.entry(reason).or_default() += 1;
        }
        "kvm_userspace_exit" => {
            let reason = field(f, "reason").unwrap_or("?").to_string();
            *st.userspace_reasons.entry(reason).or_default() += 1;
        }
        "kvm_apicv_inhibit_changed" if st.inhibits.len() < 64 => {
            st.inhibits.push(f.to_string());
        }
        "kvm_set_irq" => {
            // KVM_IRQ_LINE (and KVM's PIT): GSI i < 24 is I/O APIC pin i in
            // split mode (its MSI route); with KVM's irqchip, the pin the
            // PC wires GSI i to.
            if let Some(gsi) = num(field(f, "gsi")) {
                let pin = if kernel {
                    crate::irqchip::gsi_pin(gsi as u32)
                } else {
                    gsi as usize
                };
                let srcs: Vec<usize> = reg.pin_source(pin).into_iter().collect();
                bump(st, &srcs, |c| c.set_irq += 1);
            }
        }
        "kvm_ioapic_set_irq" => {
            // "pin 4 dst 0 vec 36 (Fixed|physical|edge)": learn the route.
            if let (Some(pin), Some(vec)) = (num(field(f, "pin")), num(field(f, "vec"))) {
                let pin = pin as usize;
                if let Some(slot) = st.learned.get_mut(pin) {
                    *slot = PinRoute {
                        pin,
                        vector: vec as u8,
                        delivery_mode: 0,
                        destination: hex(field(f, "dst")).unwrap_or(0) as u32,
                        dest_logical: f.contains("|logical|"),
                        level_triggered: f.contains("|level"),
                        masked: f.contains("|masked"),
                    };
                }
                let srcs: Vec<usize> = reg.pin_source(pin).into_iter().collect();
                bump(st, &srcs, |c| c.ioapic_set_irq += 1);
            }
        }
        "kvm_pic_set_irq" => {
            // "chip 0 pin 4 (edge|masked)": ISA IRQ chip * 8 + pin.
            if let (Some(chip), Some(p)) = (num(field(f, "chip")), num(field(f, "pin"))) {
                let irq = (chip * 8 + p) as u8;
                let pin = arch::layout::isa_irq_pin(irq).map(usize::from);
                let srcs: Vec<usize> = pin.and_then(|p| reg.pin_source(p)).into_iter().collect();
                bump(st, &srcs, |c| c.pic_set_irq += 1);
            }
        }
        "kvm_ioapic_delayed_eoi_inj" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let o = reg.vector_owners(vec, None, routes);
            bump(st, &o, |c| c.ioapic_delayed_eoi_inj += 1);
        }
        "kvm_msi_set_irq" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let dst = hex(field(f, "dst")).map(|d| d as u32);
            let logical = f.contains("logical");
            let o = reg.vector_owners(vec, if logical { None } else { dst }, routes);
            bump(st, &o, |c| c.msi_set_irq += 1);
        }
        "kvm_apic_accept_irq" | "kvm_apicv_accept_irq" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let apic = hex(field(f, "apicid")).map(|a| a as u32);
            // INIT and SIPI come only from ICR writes; their "vector" is not
            // an interrupt vector.
            let o = if f.contains("(INIT|") || f.contains("(SIPI|") {
                vec![SOURCE_IPI]
            } else {
                owners(st, vec, apic)
            };
            bump(st, &o, |c| c.apic_accept_irq += 1);
        }
        // "IRQ 0x41" or "Soft/INTn 0x..": no APIC ID in this event.
        "kvm_inj_virq" if f.starts_with("IRQ") => {
            let vec = f.split_whitespace().nth(1).and_then(|v| hex(Some(v)));
            let o = owners(st, vec.unwrap_or(0) as u8, None);
            bump(st, &o, |c| c.inj_virq += 1);
        }
        "kvm_eoi" => {
            let Some(vec) = num(field(f, "vector")) else {
                st.eoi_without_isr += 1; // "vector -1"
                return;
            };
            let vec = vec as u8;
            let apic = hex(field(f, "apicid")).map(|a| a as u32);
            let o = owners(st, vec, apic);
            bump(st, &o, |c| c.kvm_eoi += 1);
        }
        "kvm_apic_ipi" => {
            if let Some(v) = num(field(f, "vec")) {
                // Fixed-mode IPIs only: INIT/SIPI vectors are not vectors.
                if f.contains("(Fixed|") || f.contains("(LowPrio|") {
                    st.ipi_vectors.insert(v as u8);
                }
            }
            bump(st, &[SOURCE_IPI], |c| c.apic_ipi += 1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_into_event_and_fields() {
        let l = "           vcpu0-4242    [001] d..1.  5123.000123: kvm_eoi: apicid 0 vector 65";
        assert_eq!(split_line(l), Some(("kvm_eoi", "apicid 0 vector 65")));
        assert_eq!(field("apicid 0 vector 65", "vector"), Some("65"));
        let l = " x-1 [000] ..... 1.0: kvm_msi_set_irq: dst 1 vec 69 (Fixed|physical|edge)";
        assert_eq!(split_line(l).unwrap().0, "kvm_msi_set_irq");
        assert_eq!(split_line("garbage"), None);
    }

    #[test]
    fn events_are_attributed_by_vector() {
        let mut reg = SourceRegistry::new();
        reg.register_msi_source("x", Arc::new(Nop), None);
        let pin11 = reg.name_pin(11, "pc-testdev").unwrap();
        let routes = vec![PinRoute {
            pin: 11,
            vector: 0x41,
            delivery_mode: 0,
            destination: 0,
            dest_logical: false,
            level_triggered: true,
            masked: false,
        }];
        let mut st = State::default();
        let l = |e: &str| format!(" vcpu0-1 [000] ..... 1.0: {e}");
        handle_line(
            &l("kvm_eoi: apicid 0 vector 65"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_apic_accept_irq: apicid 0 vec 65 (Fixed|level)"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_apic_ipi: dst 1 vec 80 (Fixed|physical|assert|edge|dst)"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 1 vector 80"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 0 vector 236"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 0 vector -1"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        assert_eq!(st.eoi_without_isr, 1);
        assert_eq!(st.by_source[&pin11].kvm_eoi, 1);
        assert_eq!(st.by_source[&pin11].apic_accept_irq, 1);
        assert_eq!(st.by_source[&SOURCE_IPI].kvm_eoi, 1);
        assert_eq!(st.by_source[&SOURCE_IPI].apic_ipi, 1);
        assert_eq!(st.by_source[&SOURCE_LAPIC_LOCAL].kvm_eoi, 1);
        assert_eq!(st.counts["kvm_eoi"], 4);
    }

    #[test]
    fn with_kvms_irqchip_pin_routes_are_learned_and_gsi_0_is_the_pit_pin() {
        let mut reg = SourceRegistry::new();
        let pit = reg.name_pin(2, "pit").unwrap();
        let serial = reg.name_pin(4, "serial").unwrap();
        let mut st = State::default();
        let l = |e: &str| format!(" vcpu0-1 [000] ..... 1.0: {e}");
        let feed = |st: &mut State, e: &str| {
            let routes = st.learned.clone();
            handle_line(&l(e), st, &reg, &routes, true);
        };
        feed(&mut st, "kvm_set_irq: gsi 0 level 1 source 0");
        feed(&mut st, "kvm_pic_set_irq: chip 0 pin 0 (edge|masked)");
        feed(
            &mut st,
            "kvm_ioapic_set_irq: pin 2 dst 0 vec 48 (Fixed|physical|edge)",
        );
        feed(&mut st, "kvm_apic_accept_irq: apicid 0 vec 48 (Fixed|edge)");
        feed(&mut st, "kvm_eoi: apicid 0 vector 48");
        feed(
            &mut st,
            "kvm_ioapic_set_irq: pin 4 dst 0 vec 36 (Fixed|physical|edge)",
        );
        feed(&mut st, "kvm_pic_set_irq: chip 0 pin 4 (edge|masked)");
        let p = &st.by_source[&pit];
        assert_eq!((p.set_irq, p.pic_set_irq, p.ioapic_set_irq), (1, 1, 1));
        assert_eq!((p.apic_accept_irq, p.kvm_eoi), (1, 1));
        assert_eq!(st.learned[2].vector, 48);
        let s = &st.by_source[&serial];
        assert_eq!((s.ioapic_set_irq, s.pic_set_irq), (1, 1));
    }

    struct Nop;
    impl devices::MsiRouting for Nop {
        fn set_route(
            &self,
            _: u32,
            _: Option<devices::MsiMessage>,
        ) -> Result<(), devices::InterruptError> {
            Ok(())
        }
        fn signal(&self, _: u32) -> Result<(), devices::InterruptError> {
            Ok(())
        }
        fn signal_msi(&self, _: devices::MsiMessage) -> Result<(), devices::InterruptError> {
            Ok(())
        }
    }
}
