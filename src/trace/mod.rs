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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use devices::ioapic::IoApic;
use devices::sync::lock;

use crate::sources::{SourceRegistry, TracedCounts};

mod attribute;
use attribute::{handle_line, State};

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
