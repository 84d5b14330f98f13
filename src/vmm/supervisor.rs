//! Stage 4 of `splitvm run`: watch the VM until it stops (signals, panics,
//! the timeout, `--snapshot-*` triggers, `--stats-interval` reports, API
//! requests), then join the vCPUs, write the report and give the status.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::register_signal_handler;

use devices::channel::Channel;
use devices::sync::lock;
use devices::ExitReason;

use super::control::Running;
use crate::api::{self, ApiError, ApiRequest};
use crate::config::{SerialDest, VmConfig};
use crate::error::{Error, Result};
use crate::kvm_stats::KvmStats;
use crate::stats::{Report, ReportInputs, SnapshotInfo, VcpuStats};
use crate::trace::TraceReport;

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// The first panic of any splitvm thread: "thread 'NAME' panicked at FILE:LINE: MSG".
static PANICKED: Mutex<Option<String>> = Mutex::new(None);

/// SIGUSR1 with `--snapshot-on-signal`: the supervisor takes a snapshot.
static SNAPSHOT_SIGNALLED: AtomicBool = AtomicBool::new(false);

/// SIGUSR2: print a stuck-guest report (src/forensics/); the VM goes on.
static STUCK_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

extern "C" fn on_snapshot_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SNAPSHOT_SIGNALLED.store(true, Ordering::SeqCst);
}

extern "C" fn on_stuck_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STUCK_SIGNALLED.store(true, Ordering::SeqCst);
}

fn handler(
    sig: libc::c_int,
    f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<()> {
    register_signal_handler(sig, f).map_err(|e| Error::Setup {
        what: "signal handler",
        msg: e.to_string(),
    })
}

/// First thing: the panic hook, and SIGUSR1/SIGUSR2 taken (sent early they
/// must not end the process, their default action; they act once the VM
/// runs).
pub(super) fn install_early(cfg: &VmConfig) -> Result<()> {
    install_panic_hook();
    if cfg.run.snapshot_on_signal.is_some() {
        handler(libc::SIGUSR1, on_snapshot_signal)?;
    }
    handler(libc::SIGUSR2, on_stuck_signal)
}

/// Once the vCPUs are about to run: SIGINT and SIGTERM stop the VM.
pub(super) fn install_stop_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        handler(sig, on_terminate)?;
    }
    Ok(())
}

/// The panic of a splitvm thread, if one panicked.
pub(super) fn panicked() -> Option<String> {
    lock(&PANICKED).clone()
}

/// Report a panic of any thread in one line and remember it, so the
/// supervisor stops the VM with status 10 and still writes the report.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("thread '{name}' panicked{at}: {msg}");
        eprintln!("splitvm: internal error: {line} (a bug in splitvm; please report it)");
        let mut p = lock(&PANICKED);
        if p.is_none() {
            *p = Some(line);
        }
    }));
}

/// What the supervisor holds while the VM runs.
struct Supervisor<'a, 'r> {
    cfg: &'a VmConfig,
    started: Instant,
    r: &'r Running,
    inputs: ReportInputs<'a>,
    api: Option<&'a api::ApiServer>,
    /// Interval reports written so far (the final report's sequence number).
    sequence: u64,
    stuck: Option<crate::forensics::StuckReport>,
}

/// Watch the VM until it stops, then join the vCPUs, write the report and
/// return the exit status.
pub(super) fn supervise(
    cfg: &VmConfig,
    started: Instant,
    r: Running,
    kvm_stats: &KvmStats,
    host_report: &crate::host::HostReport,
    api: Option<api::ApiServer>,
) -> Result<i32> {
    let mut s = Supervisor {
        cfg,
        started,
        r: &r,
        inputs: ReportInputs {
            started,
            pio_names: &r.pio_names,
            mmio_names: &r.mmio_names,
            irqchip: &*r.irqchip,
            msi_injected: r.msi_injected.as_deref(),
            sources: &r.sources,
            kvm_stats: Some(kvm_stats),
            host: host_report,
            disable_exits: cfg.run.disable_exits.unwrap_or(0),
            virtio: &r.virtio,
            command_mode: cfg.command_mode(),
            tsc_khz: r.tsc_khz,
            coalesced_io: r.coalesced_io,
            coalesced: r.coalesced.as_deref(),
        },
        api: api.as_ref(),
        sequence: 0,
        stuck: None,
    };
    s.watch();
    let (sequence, stuck) = (s.sequence, s.stuck.take());
    let inputs = s.inputs;
    let mut stats: Vec<VcpuStats> = Vec::new();
    for h in r.handles {
        match h.join() {
            Ok(s) => stats.push(s),
            Err(_) => {
                r.control.request_exit(ExitReason::InternalError(
                    panicked().unwrap_or_else(|| "a vCPU thread panicked".into()),
                ));
            }
        }
    }
    // The guest's last writes (before a poweroff, a panic, a timeout, a
    // signal) reach the console and the channel.
    if let Some(c) = &r.coalesced {
        c.drain();
    }
    let mut reason = r
        .control
        .reason()
        .unwrap_or_else(|| ExitReason::VmmError("VM stopped without a reason".into()));
    // A panic with panic=-1 reboots before its closing line: still a panic.
    if r.console.panicked.load(Ordering::SeqCst)
        && matches!(
            reason,
            ExitReason::Reset | ExitReason::TripleFault | ExitReason::Timeout
        )
    {
        reason = ExitReason::GuestPanic;
    }
    // The tracer is finished (instance removed) before anything is printed.
    let trace = match r.tracer {
        Some(t) => Some(t.finish()),
        None => r.trace_unavailable.clone().map(TraceReport::unavailable),
    };
    let snap = SnapshotInfo {
        is_final: true,
        sequence,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let mut report = inputs.build(&stats, Some(&reason), snap, trace);
    report.stuck = stuck;
    report.state = "stopped";
    report.paused_ms = r.paused_before.get().as_millis() as u64;
    // The API answers its last requests (a shutdown's 204) and its socket
    // goes, before the report is out.
    if let Some(a) = api {
        a.stop();
    }
    if let ExitReason::GuestError(m) | ExitReason::VmmError(m) = &reason {
        eprintln!("splitvm: {m}");
    }
    if let ExitReason::DebugExit(v) = &reason {
        if *v > 0x7f {
            eprintln!(
                "splitvm: the guest wrote {v:#x} to the debug-exit port; the exit status keeps 8 bits of ({v:#x} << 1) | 1, so it is {} (as QEMU's isa-debug-exit)",
                reason.status()
            );
        }
    }
    if let Some(ch) = &r.channel {
        if !matches!(reason, ExitReason::CommandExit(_)) {
            report_missing_status(&reason, ch, &r.console.tail, &cfg.run.serial);
        }
    }
    if cfg.run.stats {
        eprint!("{}", report.table());
    }
    write_report(cfg, &report, sequence, true)?;
    Ok(if r.channel.is_some() {
        reason.command_status()
    } else {
        reason.status()
    })
}

/// `--stats-json` (replaced atomically) and `--stats-series DIR` (one file
/// per report: NNNNNN.json, the final one too).
fn write_report(cfg: &VmConfig, report: &Report, sequence: u64, is_final: bool) -> Result<()> {
    let out = |path: &std::path::Path| {
        crate::stats::write_json_atomic(path, report).map_err(|err| Error::Output {
            what: "stats JSON",
            path: path.to_path_buf(),
            err,
        })
    };
    let mut result = Ok(());
    if let Some(path) = &cfg.run.stats_json {
        result = out(path);
    }
    if let Some(dir) = &cfg.run.stats_series {
        let r = out(&crate::stats::series_file(dir, sequence));
        if result.is_ok() {
            result = r;
        }
    }
    if !is_final {
        if let Err(e) = &result {
            log::warn!("--stats-interval: {e}");
        }
        return Ok(());
    }
    result
}

impl Supervisor<'_, '_> {
    /// A report of the running VM: counters now, state and paused time.
    fn report_now(&self, sequence: u64) -> Report {
        let r = self.r;
        let snaps: Vec<VcpuStats> = r.counters.iter().map(|c| c.snapshot()).collect();
        let snap = SnapshotInfo {
            is_final: false,
            sequence,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        };
        let trace = match &r.tracer {
            Some(t) => Some(t.snapshot()),
            None => r.trace_unavailable.clone().map(TraceReport::unavailable),
        };
        let mut report = self.inputs.build(&snaps, None, snap, trace);
        report.state = if r.is_paused() { "paused" } else { "running" };
        report.paused_ms = r.paused_time().as_millis() as u64;
        report
    }

    /// Until every vCPU thread has ended: turn signals, panics, the timeout
    /// and dead vCPU threads into stop requests (a timeout or a signal first
    /// takes a stuck-guest report, as SIGUSR2 does), kick the vCPUs while
    /// stopping, answer API requests, show progress, write
    /// `--stats-interval` reports.
    fn watch(&mut self) {
        let (cfg, r) = (self.cfg, self.r);
        let control = &r.control;
        let interval = cfg.run.stats_interval.map(Duration::from_secs_f64);
        let mut last_interval = Instant::now();
        // --timeout counts running time: a paused VM does not time out.
        let timeout = cfg.run.timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        let mut last_progress = Instant::now();
        // Every thread is started: from here on the main thread only supervises.
        if let Err(msg) = crate::seccomp::install(
            crate::seccomp::ThreadKind::Supervisor,
            cfg.run.seccomp,
            "main",
        ) {
            control.request_exit(ExitReason::VmmError(msg));
        }
        loop {
            let tick = Instant::now();
            // An idle guest's last line appears within 10 ms.
            r.drain_coalesced();
            if r.handles.iter().all(|h| h.is_finished()) {
                break;
            }
            if control.is_stopping() {
                // vCPUs parked for a snapshot that will not be taken now,
                // or for a pause.
                control.take_snapshot_request();
                if r.is_paused() {
                    let _ = r.resume();
                }
                r.snap.pause.resume();
                r.kick_vcpus();
            } else {
                let sig = SIGNALLED.load(Ordering::SeqCst);
                let running_for = self.started.elapsed().saturating_sub(r.paused_time());
                if let Some(p) = panicked() {
                    r.stop(ExitReason::InternalError(p));
                } else if sig != 0 {
                    // The guest did not finish: say what it was doing first.
                    self.stuck = Some(r.take_stuck(&format!("signal {sig}"), self.started));
                    r.stop(ExitReason::Signal(sig));
                } else if timeout.is_some_and(|t| running_for >= t) {
                    self.stuck = Some(r.take_stuck("timeout", self.started));
                    r.stop(ExitReason::Timeout);
                } else if STUCK_SIGNALLED.swap(false, Ordering::SeqCst) {
                    self.stuck = Some(r.take_stuck("SIGUSR2", self.started));
                } else if r.handles.iter().any(|h| h.is_finished()) {
                    r.stop(ExitReason::VmmError(
                        "a vCPU thread ended unexpectedly".into(),
                    ));
                } else {
                    self.snapshot_triggers();
                    self.serve_api();
                }
            }
            if cfg.run.progress && last_progress.elapsed() >= Duration::from_millis(500) {
                last_progress = Instant::now();
                let line = lock(&r.console.last_line).clone();
                let line: String = line.chars().take(60).collect();
                eprint!(
                    "\r\x1b[K[splitvm {:6.1}s] exits {:>9} | {}",
                    self.started.elapsed().as_secs_f64(),
                    r.counters.iter().map(|c| c.total_exits()).sum::<u64>(),
                    line
                );
            }
            if let Some(iv) = interval {
                if !control.is_stopping() && last_interval.elapsed() >= iv {
                    last_interval = Instant::now();
                    let report = self.report_now(self.sequence);
                    let _ = write_report(cfg, &report, self.sequence, false);
                    self.sequence += 1;
                }
            }
            let period = Duration::from_millis(if control.is_stopping() { 2 } else { 10 });
            let left = period.saturating_sub(tick.elapsed());
            match self.api {
                // An API request wakes the loop at once.
                Some(a) => a.wait(left),
                None => thread::sleep(left),
            }
        }
        if cfg.run.progress {
            eprint!("\r\x1b[K");
        }
    }

    /// Answer every API request waiting (src/api.rs), through the same
    /// paths signals and options take.
    fn serve_api(&mut self) {
        let Some(a) = self.api else { return };
        while let Some(call) = a.next_call() {
            let reply = self.answer(&call.request);
            call.reply(reply);
        }
    }

    fn answer(&mut self, req: &ApiRequest) -> std::result::Result<api::Body, ApiError> {
        let r = self.r;
        let conflict = ApiError::conflict;
        match req {
            ApiRequest::Info => Ok(api::Body::Json(super::info::vm_info(self.cfg, r))),
            ApiRequest::Counters => {
                let report = self.report_now(self.sequence);
                serde_json::to_value(&report)
                    .map(api::Body::Json)
                    .map_err(|e| ApiError::internal(e.to_string()))
            }
            ApiRequest::Pause => r.pause().map(|()| api::Body::Empty).map_err(conflict),
            ApiRequest::Resume => r.resume().map(|()| api::Body::Empty).map_err(conflict),
            ApiRequest::Snapshot(dir) => r
                .take_snapshot(dir, "api")
                .map(|()| api::Body::Empty)
                .map_err(ApiError::internal),
            ApiRequest::Shutdown => {
                // As SIGTERM: a stuck-guest report first, status 143.
                SIGNALLED.store(libc::SIGTERM, Ordering::SeqCst);
                Ok(api::Body::Empty)
            }
        }
    }

    /// Take the snapshots asked for: at the guest's first ready
    /// (`--snapshot-on-ready`: a failure stops the VM, the snapshot was the
    /// point; then the waiting guest gets its command) and on SIGUSR1
    /// (`--snapshot-on-signal`: a failure is reported, the VM goes on).
    fn snapshot_triggers(&self) {
        let (cfg, r) = (self.cfg, self.r);
        if r.control.take_snapshot_request() {
            if let Some(dir) = &cfg.run.snapshot_on_ready {
                match r.take_snapshot(dir, "ready") {
                    Ok(()) => {
                        if let Some(port) = &r.control_port {
                            r.drain_coalesced();
                            lock(port).send_command();
                        }
                    }
                    Err(e) => {
                        r.stop(ExitReason::VmmError(format!("--snapshot-on-ready: {e}")));
                    }
                }
            }
        }
        if SNAPSHOT_SIGNALLED.swap(false, Ordering::SeqCst) {
            if let Some(dir) = &cfg.run.snapshot_on_signal {
                if let Err(e) = r.take_snapshot(dir, "signal") {
                    eprintln!("splitvm: --snapshot-on-signal: {e}");
                }
            }
        }
    }
}

/// a request boundary, their last interrupts landing in the LAPICs); only
/// then do the vCPUs save their state, so no tick or completion can fall
fn report_missing_status(
    reason: &ExitReason,
    ch: &Channel,
    tail: &Mutex<std::collections::VecDeque<String>>,
    serial: &SerialDest,
) {
    let why = match reason {
        ExitReason::GuestPanic => "the guest kernel panicked".to_string(),
        ExitReason::Timeout => "--timeout passed before the command ended".to_string(),
        ExitReason::Signal(s) => format!("splitvm was stopped by signal {s}"),
        ExitReason::GuestError(_) | ExitReason::VmmError(_) => {
            "the VM stopped on an error".to_string()
        }
        r => format!(
            "the VM stopped ({}) without reporting the command's status",
            r.name()
        ),
    };
    let hint = if ch.ready_seen() {
        ""
    } else {
        " (the guest never reached the splitvm agent: is it in the initramfs? see docs/ci-runner.md)"
    };
    eprintln!("splitvm: {why}{hint}; status {}", reason.command_status());
    if matches!(serial, SerialDest::Sink) {
        let t = lock(tail);
        if !t.is_empty() {
            eprintln!("splitvm: last {} console lines:", t.len());
            for l in t.iter() {
                eprintln!("  | {l}");
            }
        }
    }
}
