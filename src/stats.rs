//! Exit counters and the exit report.
//!
//! Each vCPU thread owns a [`VcpuCounters`] (atomics with a single writer:
//! an increment is a plain load and store, no lock prefix and no lock), so
//! the supervisor can take a [`VcpuStats`] snapshot at any time while the
//! vCPUs run (`--stats-interval`) and at VM exit. Snapshots merge into a
//! [`Report`], printed by `--stats` and written by `--stats-json`
//! (docs/stats-schema.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::host::HostReport;
use crate::kvm_stats::KvmStatsReport;
use crate::sources::SourceReport;
use crate::trace::TraceReport;

/// Version of the JSON report. 2 added `sources`, `kvm_stats`, `host`,
/// `trace`, `disable_exits`, `snapshot` and the EOI attribution totals; every
/// version-1 field is still there with the same name and meaning.
pub const SCHEMA_VERSION: u32 = 2;

use crate::counters::merge_unclaimed;
pub use crate::counters::{
    BoundedCounts, Counter, ExitKind, VcpuCounters, VcpuStats, EXIT_KINDS, UNCLAIMED_ADDRESSES,
};

#[derive(Debug, Serialize, Default)]
pub struct VcpuReport {
    pub id: u32,
    pub exits: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct PinReport {
    pub pin: usize,
    pub raised: u64,
    pub delivered: u64,
    pub coalesced: u64,
    pub masked_drops: u64,
    pub eoi: u64,
    pub invalid: u64,
}

/// The 8259 pair: requests and deliveries per ISA IRQ (IRQs with activity
/// only), and what the guest's port accesses cost.
#[derive(Debug, Serialize, Default, Clone)]
pub struct PicReport {
    pub irqs: Vec<PicIrqReport>,
    /// Acknowledges that found no request (IRQ 7 / 15 vectors).
    pub spurious: u64,
    /// Guest writes of OCW2 (EOI and rotation commands): one port exit each.
    pub eoi_writes: u64,
    /// Guest writes of the IMR (OCW1).
    pub imr_writes: u64,
    /// Other writes (ICWs, OCW3, ELCR) and all reads.
    pub other_writes: u64,
    pub reads: u64,
    /// Interrupt-window exits vCPU 0 took to deliver PIC interrupts.
    pub irq_window_exits: u64,
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct PicIrqReport {
    pub irq: usize,
    pub raised: u64,
    pub delivered: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct MsiPortReport {
    pub injected: u64,
}

/// Which snapshot of the run a report is.
#[derive(Debug, Serialize, Default, Clone)]
pub struct SnapshotInfo {
    /// True for the report written when the VM stopped; false for a
    /// `--stats-interval` snapshot taken while it runs.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// 0, 1, 2, ... for interval snapshots; the final report carries the
    /// next number.
    pub sequence: u64,
    /// Milliseconds since the VMM started.
    pub elapsed_ms: u64,
}

/// The exit report, as printed by `--stats` and written by `--stats-json`.
/// Fields up to `msi_test_port` are schema version 1 and keep their names
/// and meaning; the rest came with version 2 (docs/stats-schema.md).
#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub schema_version: u32,
    pub exit_status: i32,
    pub exit_reason: String,
    pub exit_detail: Option<String>,
    pub wall_time_ms: u64,
    pub exits: BTreeMap<&'static str, u64>,
    pub total_exits: u64,
    pub vcpus: Vec<VcpuReport>,
    pub eoi_exits_per_vector: BTreeMap<String, u64>,
    pub pio_exits_per_device: BTreeMap<String, u64>,
    pub mmio_exits_per_device: BTreeMap<String, u64>,
    pub unhandled_pio: BTreeMap<String, u64>,
    pub unhandled_mmio: BTreeMap<String, u64>,
    pub ioapic_pins: Vec<PinReport>,
    /// The 8259 pair (absent when no interrupt went through it).
    pub pic: Option<PicReport>,
    pub msi_test_port: Option<MsiPortReport>,
    // ---- schema version 2 ----
    pub snapshot: SnapshotInfo,
    pub host: Option<HostReport>,
    /// Exits KVM was told not to take (KVM_CAP_X86_DISABLE_EXITS).
    pub disable_exits: Vec<String>,
    /// Per interrupt source (see src/sources.rs).
    pub sources: Vec<SourceReport>,
    /// EOI exits no level pin carried the vector of at the time.
    pub eoi_exits_unattributed: u64,
    /// EOI exits that completed several pins sharing one vector (counted
    /// once per pin in `sources`).
    pub eoi_exits_shared: u64,
    pub kvm_stats: Option<KvmStatsReport>,
    pub trace: Option<TraceReport>,
    /// Virtio devices and their counters (`--disk`, `--net`).
    pub virtio_devices: Vec<crate::virtio_setup::VirtioDeviceReport>,
    /// Startup timing (src/startup.rs).
    pub startup: crate::startup::StartupReport,
}

fn kinds_map(exits: &[u64; EXIT_KINDS.len()]) -> BTreeMap<&'static str, u64> {
    EXIT_KINDS
        .iter()
        .zip(exits.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.name(), *n))
        .collect()
}

impl Report {
    /// Merge per-vCPU counters; device names index the per-device vectors.
    pub fn from_vcpus(vcpus: &[VcpuStats], pio_names: &[String], mmio_names: &[String]) -> Self {
        let mut r = Report {
            schema_version: SCHEMA_VERSION,
            ..Default::default()
        };
        let mut totals = [0u64; EXIT_KINDS.len()];
        for v in vcpus {
            for (t, n) in totals.iter_mut().zip(v.exits.iter()) {
                *t += n;
            }
            r.vcpus.push(VcpuReport {
                id: v.id,
                exits: kinds_map(&v.exits),
            });
            for (vec, n) in v.eoi_vectors.iter().enumerate().filter(|(_, n)| **n > 0) {
                *r.eoi_exits_per_vector.entry(vec.to_string()).or_default() += n;
            }
            for (i, n) in v.pio_device.iter().enumerate().filter(|(_, n)| **n > 0) {
                let name = pio_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("pio#{i}"));
                *r.pio_exits_per_device.entry(name).or_default() += n;
            }
            for (i, n) in v.mmio_device.iter().enumerate().filter(|(_, n)| **n > 0) {
                let name = mmio_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("mmio#{i}"));
                *r.mmio_exits_per_device.entry(name).or_default() += n;
            }
            r.eoi_exits_unattributed += v.eoi_unattributed;
            r.eoi_exits_shared += v.eoi_shared;
        }
        let pio: Vec<_> = vcpus.iter().map(|v| &v.unhandled_pio).collect();
        r.unhandled_pio = merge_unclaimed(&pio, |p| format!("{p:#06x}"));
        let mmio: Vec<_> = vcpus.iter().map(|v| &v.unhandled_mmio).collect();
        r.unhandled_mmio = merge_unclaimed(&mmio, |a| format!("{a:#x}"));
        r.total_exits = totals.iter().sum();
        r.exits = kinds_map(&totals);
        r
    }

    /// The human-readable table printed by `--stats`.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "=== splitvm exit report ===");
        if let Some(h) = &self.host {
            let _ = writeln!(s, "{}", h.summary);
        }
        if !self.disable_exits.is_empty() {
            let _ = writeln!(
                s,
                "KVM exits disabled (KVM_CAP_X86_DISABLE_EXITS): {}",
                self.disable_exits.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "exit: {} (status {}){}, wall time {} ms",
            self.exit_reason,
            self.exit_status,
            self.exit_detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            self.wall_time_ms
        );
        let _ = write!(s, "{:<16}", "KVM exits");
        for v in &self.vcpus {
            let _ = write!(s, "{:>12}", format!("vcpu{}", v.id));
        }
        let _ = writeln!(s, "{:>12}", "total");
        for k in EXIT_KINDS {
            let total = self.exits.get(k.name()).copied().unwrap_or(0);
            if total == 0 {
                continue;
            }
            let _ = write!(s, "{:<16}", k.name());
            for v in &self.vcpus {
                let _ = write!(s, "{:>12}", v.exits.get(k.name()).copied().unwrap_or(0));
            }
            let _ = writeln!(s, "{total:>12}");
        }
        let _ = writeln!(s, "{:<16}{:>12}", "all", self.total_exits);
        let section = |s: &mut String, title: &str, m: &BTreeMap<String, u64>| {
            if !m.is_empty() {
                let _ = writeln!(s, "{title}");
                for (k, v) in m {
                    let _ = writeln!(s, "  {k:<22}{v:>12}");
                }
            }
        };
        section(&mut s, "PIO exits per device", &self.pio_exits_per_device);
        section(&mut s, "MMIO exits per device", &self.mmio_exits_per_device);
        section(
            &mut s,
            "I/O APIC EOI exits per vector",
            &self.eoi_exits_per_vector,
        );
        section(&mut s, "unhandled PIO (read all-ones)", &self.unhandled_pio);
        section(
            &mut s,
            "unhandled MMIO (read all-ones)",
            &self.unhandled_mmio,
        );
        if !self.ioapic_pins.is_empty() {
            let _ = writeln!(
                s,
                "I/O APIC pins   {:>10}{:>10}{:>10}{:>10}{:>10}",
                "raised", "delivered", "coalesced", "masked", "eoi"
            );
            for p in &self.ioapic_pins {
                let _ = writeln!(
                    s,
                    "  pin {:<10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    p.pin, p.raised, p.delivered, p.coalesced, p.masked_drops, p.eoi
                );
            }
        }
        if let Some(p) = &self.pic {
            let _ = writeln!(
                s,
                "8259 PIC        {:>10}{:>10}   (EOI writes {}, IMR writes {}, other writes {}, reads {}, spurious {}, irq-window exits {})",
                "raised", "delivered", p.eoi_writes, p.imr_writes, p.other_writes, p.reads, p.spurious, p.irq_window_exits
            );
            for i in &p.irqs {
                let _ = writeln!(s, "  irq {:<10}{:>10}{:>10}", i.irq, i.raised, i.delivered);
            }
        }
        if let Some(m) = &self.msi_test_port {
            let _ = writeln!(s, "MSI test port: {} injected", m.injected);
        }
        if !self.virtio_devices.is_empty() {
            let _ = writeln!(
                s,
                "Virtio devices  {:<10}{:<24}{:>12}{:>14}  counters",
                "transport", "interrupt", "interrupts", "notify-exits"
            );
            for d in &self.virtio_devices {
                let busy: Vec<String> = d
                    .counters
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "  {:<14}{:<10}{:<24}{:>12}{:>14}  {}",
                    d.name,
                    d.transport,
                    d.interrupt,
                    d.interrupts,
                    d.notify_exits,
                    busy.join(", ")
                );
            }
        }
        self.sources_table(&mut s);
        self.kvm_stats_table(&mut s);
        self.trace_table(&mut s);
        s
    }

    fn sources_table(&self, s: &mut String) {
        use std::fmt::Write;
        if self.sources.is_empty() {
            return;
        }
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            s,
            "{:<26}{:<18}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}  in-kernel (trace)",
            "Interrupt sources",
            "routed to",
            "raised",
            "delivered",
            "coal",
            "eoi-exits",
            "reg-exits",
            "exits/int"
        );
        for r in &self.sources {
            let label = match (r.kind, r.pin) {
                (crate::sources::SourceKind::IoapicPin, Some(p)) => format!("{} (pin {p})", r.name),
                (crate::sources::SourceKind::Msi, _) => format!("{} (msi)", r.name),
                _ if r.in_kernel => format!("{} (in KVM)", r.name),
                _ => r.name.clone(),
            };
            let mut route: Vec<String> = r
                .routes
                .iter()
                .take(2)
                .map(|x| {
                    format!(
                        "{:#04x}>{}{}{}{}",
                        x.vector,
                        if x.dest_mode == "logical" { "L" } else { "" },
                        x.destination,
                        if x.trigger == "level" { " lvl" } else { "" },
                        if x.masked { " M" } else { "" }
                    )
                })
                .collect();
            if r.routes.len() > 2 {
                route.push(format!("+{}", r.routes.len() - 2));
            }
            let route = if route.is_empty() {
                "-".to_string()
            } else {
                route.join(",")
            };
            let reg = match (r.pio_exits, r.mmio_exits) {
                (Some(p), Some(m)) => Some(p + m),
                _ => None,
            };
            let per = r
                .exits_per_interrupt
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "n/a".into());
            let traced = match &r.traced {
                None => "n/a".to_string(),
                Some(t) if t.is_empty() => "-".to_string(),
                Some(t) if t.values().all(|n| *n == 0) => "0".to_string(),
                Some(t) => t
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(e, n)| format!("{} {n}", e.trim_start_matches("kvm_")))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let _ = writeln!(
                s,
                "  {:<24}{:<18}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}  {}",
                label.chars().take(23).collect::<String>(),
                route.chars().take(17).collect::<String>(),
                opt(r.raised),
                opt(r.delivered),
                opt(r.coalesced),
                opt(r.eoi_exits),
                opt(reg),
                per,
                traced
            );
        }
        if self.eoi_exits_unattributed + self.eoi_exits_shared > 0 {
            let _ = writeln!(
                s,
                "  EOI exits with no level pin on the vector: {}; completing a shared vector: {}",
                self.eoi_exits_unattributed, self.eoi_exits_shared
            );
        }
        let _ = writeln!(
            s,
            "  (eoi-exits: KVM_EXIT_IOAPIC_EOI attributed at exit time; reg-exits: userspace PIO/MMIO exits on the source's registers; exits/int = (eoi+reg)/delivered; IPIs and LAPIC timer never leave KVM: counted only by --trace-exits)"
        );
    }

    fn kvm_stats_table(&self, s: &mut String) {
        use std::fmt::Write;
        let Some(k) = &self.kvm_stats else {
            return;
        };
        if !k.available {
            let _ = writeln!(
                s,
                "KVM binary stats: not available ({})",
                k.error.as_deref().unwrap_or("no KVM_CAP_BINARY_STATS_FD")
            );
            return;
        }
        let _ = write!(s, "{:<28}", "KVM stats (vCPU, delta)");
        for v in &k.vcpus {
            let _ = write!(s, "{:>12}", format!("vcpu{}", v.id));
        }
        let _ = writeln!(s, "{:>12}", "total");
        let mut zero = 0;
        for (name, total) in &k.vcpu_total {
            if *total == 0 {
                zero += 1;
                continue;
            }
            let _ = write!(s, "  {:<26}", name.chars().take(26).collect::<String>());
            for v in &k.vcpus {
                let _ = write!(
                    s,
                    "{:>12}",
                    v.delta.cumulative.get(name).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(s, "{total:>12}");
        }
        if zero > 0 {
            let _ = writeln!(s, "  ({zero} more vCPU counters stayed 0)");
        }
        let vm: Vec<String> =
            k.vm.cumulative
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
        if !vm.is_empty() {
            let _ = writeln!(s, "KVM stats (VM, delta): {}", vm.join(", "));
        }
        if let Some(e) = &k.error {
            let _ = writeln!(s, "  KVM stats errors: {e}");
        }
    }

    fn trace_table(&self, s: &mut String) {
        use std::fmt::Write;
        let Some(t) = &self.trace else {
            return;
        };
        if !t.available {
            let _ = writeln!(
                s,
                "trace: not available ({}); per-source numbers above come from counters only",
                t.unavailable.as_deref().unwrap_or("unknown reason")
            );
            return;
        }
        let ev: Vec<String> = t
            .event_counts
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(s, "trace events: {}", ev.join(", "));
        if !t.events_silent.is_empty() {
            let _ = writeln!(
                s,
                "  did not fire (not available on this host): {}",
                t.events_silent.join(", ")
            );
        }
        if !t.events_missing.is_empty() {
            let _ = writeln!(s, "  not in this kernel: {}", t.events_missing.join(", "));
        }
        if !t.kvm_exit_reasons.is_empty() {
            let r: Vec<String> = t
                .kvm_exit_reasons
                .iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
            let _ = writeln!(s, "  kvm_exit reasons: {}", r.join(", "));
        }
        if t.eoi_without_isr > 0 {
            let _ = writeln!(
                s,
                "  kvm_eoi with no vector in service: {} (not attributed; on kvm_pvm each EOI write is seen twice)",
                t.eoi_without_isr
            );
        }
        let unattr = t.unattributed.total();
        if unattr > 0 {
            let _ = writeln!(
                s,
                "  unattributed: {unattr} events (kvm_msi_set_irq also fires for every route KVM scans, e.g. after KVM_SET_GSI_ROUTING)"
            );
        }
        if let Some(o) = t.overrun.filter(|o| *o > 0) {
            let _ = writeln!(s, "  WARNING: {o} trace events lost (ring buffer overrun)");
        }
        if !t.comparison.is_empty() {
            let _ = writeln!(
                s,
                "  {:<46}{:>13}  {:<26}{:>8}",
                "trace vs counters", "trace", "counter", "value"
            );
            for c in &t.comparison {
                let _ = writeln!(
                    s,
                    "  {:<46}{:>13}  {:<26}{:>8}",
                    format!("{} ({})", c.what, c.trace_event)
                        .chars()
                        .take(46)
                        .collect::<String>(),
                    c.trace
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "did not fire".into()),
                    c.counter.chars().take(26).collect::<String>(),
                    c.value
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "n/a".into())
                );
            }
        }
    }
}

/// Everything a report is built from besides the vCPU snapshots; the same
/// inputs serve interval snapshots and the final report.
pub struct ReportInputs<'a> {
    pub started: std::time::Instant,
    pub pio_names: &'a [String],
    pub mmio_names: &'a [String],
    pub ioapic: &'a std::sync::Mutex<devices::ioapic::IoApic>,
    pub pic: &'a devices::pic::Pic,
    pub msi_injected: Option<&'a AtomicU64>,
    pub sources: &'a crate::sources::SourceRegistry,
    pub kvm_stats: Option<&'a crate::kvm_stats::KvmStats>,
    pub host: &'a HostReport,
    pub disable_exits: u32,
    pub virtio: &'a crate::virtio_setup::VirtioSetup,
    /// `splitvm run -- CMD`: `exit_status` is the command-mode status.
    pub command_mode: bool,
}

impl ReportInputs<'_> {
    /// Build a report. `reason` is None for a snapshot of a running VM
    /// (then `exit_reason` is "running" and `exit_status` -1).
    pub fn build(
        &self,
        vcpus: &[VcpuStats],
        reason: Option<&devices::ExitReason>,
        snapshot: SnapshotInfo,
        mut trace: Option<TraceReport>,
    ) -> Report {
        use devices::ExitReason;
        let mut report = Report::from_vcpus(vcpus, self.pio_names, self.mmio_names);
        match reason {
            Some(reason) => {
                report.exit_status = if self.command_mode {
                    reason.command_status()
                } else {
                    reason.status()
                };
                report.exit_reason = reason.name().to_string();
                report.exit_detail = match reason {
                    ExitReason::GuestError(m)
                    | ExitReason::VmmError(m)
                    | ExitReason::InternalError(m) => Some(m.clone()),
                    ExitReason::DebugExit(v) => Some(format!(
                        "guest wrote {v:#x} to port 0xf4 (status keeps 8 bits: ({v:#x} << 1 | 1) & 0xff)"
                    )),
                    ExitReason::Signal(s) => Some(format!("signal {s}")),
                    ExitReason::CommandExit(n) => {
                        Some(format!("the command exited with status {n}"))
                    }
                    _ => None,
                };
            }
            None => {
                report.exit_status = -1;
                report.exit_reason = "running".to_string();
            }
        }
        report.wall_time_ms = self.started.elapsed().as_millis() as u64;
        let (routes, pins) = {
            let io = devices::sync::lock(self.ioapic);
            (io.routes(), io.pin_stats().to_vec())
        };
        for (pin, p) in pins.iter().enumerate() {
            if p.raised + p.delivered + p.coalesced + p.masked_drops + p.eoi + p.invalid > 0 {
                report.ioapic_pins.push(PinReport {
                    pin,
                    raised: p.raised,
                    delivered: p.delivered,
                    coalesced: p.coalesced,
                    masked_drops: p.masked_drops,
                    eoi: p.eoi,
                    invalid: p.invalid,
                });
            }
        }
        let p = self.pic.stats();
        let irqs: Vec<PicIrqReport> = (0..p.raised.len())
            .filter(|&i| p.raised[i] + p.delivered[i] > 0)
            .map(|irq| PicIrqReport {
                irq,
                raised: p.raised[irq],
                delivered: p.delivered[irq],
            })
            .collect();
        if !irqs.is_empty() || p.spurious > 0 {
            report.pic = Some(PicReport {
                irqs,
                spurious: p.spurious,
                eoi_writes: p.eoi_writes,
                imr_writes: p.imr_writes,
                other_writes: p.other_writes,
                reads: p.reads,
                irq_window_exits: report.exits.get("irq_window").copied().unwrap_or(0),
            });
        }
        report.msi_test_port = self.msi_injected.map(|c| MsiPortReport {
            injected: c.load(Ordering::Relaxed),
        });
        report.virtio_devices = self.virtio.reports();
        report.startup = crate::startup::report();
        report.snapshot = snapshot;
        report.host = Some(self.host.clone());
        report.disable_exits = crate::host::disable_exits_names(self.disable_exits);
        report.kvm_stats = self.kvm_stats.map(|k| k.report());
        let fired: Vec<String> = trace
            .as_ref()
            .filter(|t| t.available)
            .map(|t| t.event_counts_fired())
            .unwrap_or_default();
        report.sources = self.sources.report(
            &routes,
            &pins,
            vcpus,
            trace
                .as_ref()
                .filter(|t| t.available)
                .map(|t| (&t.by_source, &fired[..])),
        );
        if let Some(t) = trace.as_mut().filter(|t| t.available) {
            t.comparison = compare(&report, t);
        }
        report.trace = trace;
        report
    }
}

/// Trace totals next to KVM binary statistics and splitvm's own counters.
fn compare(r: &Report, t: &TraceReport) -> Vec<crate::trace::Comparison> {
    use crate::trace::Comparison;
    let ev = |n: &str| -> Option<u64> {
        if t.events_enabled.iter().any(|e| e == n) {
            t.event_counts.get(n).copied()
        } else {
            None
        }
    };
    let kvm = |n: &str| -> Option<u64> {
        r.kvm_stats
            .as_ref()
            .filter(|k| k.available)
            .and_then(|k| k.vcpu_total.get(n).copied())
    };
    let delivered_userspace: u64 = r
        .sources
        .iter()
        .filter(|s| !s.in_kernel)
        .filter_map(|s| s.delivered)
        .sum();
    let row =
        |what: &str, e: &str, trace: Option<u64>, counter: &str, value: Option<u64>| Comparison {
            what: what.into(),
            trace_event: e.into(),
            trace,
            counter: counter.into(),
            value,
        };
    let accepted = match (ev("kvm_apic_accept_irq"), ev("kvm_apicv_accept_irq")) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    let in_kernel_accepted: u64 = r
        .sources
        .iter()
        .filter(|s| s.in_kernel)
        .filter_map(|s| s.traced.as_ref())
        .filter_map(|t| t.get("kvm_apic_accept_irq"))
        .sum();
    let eoi_with_vector = ev("kvm_eoi").map(|n| n.saturating_sub(t.eoi_without_isr));
    let exit_reason = |reason: &str| {
        t.kvm_exit_reasons
            .get(reason)
            .copied()
            .or(ev("kvm_exit").map(|_| 0))
    };
    vec![
        row(
            "all exits",
            "kvm_exit",
            ev("kvm_exit"),
            "kvm: exits",
            kvm("exits"),
        ),
        row(
            "returns to userspace",
            "kvm_userspace_exit",
            ev("kvm_userspace_exit"),
            "splitvm: KVM_RUN exits",
            Some(r.total_exits),
        ),
        row(
            "interrupts injected",
            "kvm_inj_virq",
            ev("kvm_inj_virq"),
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "accepted by a LAPIC, from userspace",
            "kvm_apic_accept_irq",
            accepted.map(|a| a.saturating_sub(in_kernel_accepted)),
            "splitvm: delivered",
            Some(delivered_userspace),
        ),
        row(
            "accepted by a LAPIC, all",
            "kvm_apic_accept_irq",
            accepted,
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "EOIs of an in-service vector",
            "kvm_eoi",
            eoi_with_vector,
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "external-interrupt exits",
            "kvm_exit EXTERNAL_INTERRUPT",
            exit_reason("EXTERNAL_INTERRUPT"),
            "kvm: irq_exits",
            kvm("irq_exits"),
        ),
        row(
            "HLT exits",
            "kvm_exit HLT",
            exit_reason("HLT"),
            "kvm: halt_exits",
            kvm("halt_exits"),
        ),
    ]
}

/// Write `report` as JSON to `path` (atomically for regular files; see
/// `crate::output`).
pub fn write_json_atomic(path: &std::path::Path, report: &Report) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)? + "\n";
    crate::output::write_output(path, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_touching_many_unclaimed_addresses_gets_a_bounded_report() {
        let c = VcpuCounters::new(0, 0, 0, 0);
        for addr in 0..100_000u64 {
            c.unhandled_mmio(0xd000_0000 + addr * 8);
        }
        for _ in 0..5 {
            c.unhandled_mmio(0xd000_0000);
        }
        let mut other = VcpuStats::new(1, 0, 0);
        for port in 0..=u16::MAX {
            other.unhandled_pio.add(port, 1);
        }
        let snap = c.snapshot();
        assert_eq!(snap.unhandled_mmio.by_address.len(), UNCLAIMED_ADDRESSES);
        let r = Report::from_vcpus(&[snap, other], &[], &[]);
        assert_eq!(r.unhandled_mmio.len(), UNCLAIMED_ADDRESSES + 1);
        assert_eq!(r.unhandled_mmio["0xd0000000"], 6);
        assert_eq!(r.unhandled_mmio.values().sum::<u64>(), 100_005);
        assert_eq!(r.unhandled_pio.len(), UNCLAIMED_ADDRESSES + 1);
        assert_eq!(
            r.unhandled_pio["other"],
            65_536 - UNCLAIMED_ADDRESSES as u64
        );
        assert!(
            r.table().len() < 20_000,
            "table is {} bytes",
            r.table().len()
        );
    }

    #[test]
    fn report_merges_vcpus_and_names_devices() {
        let mut a = VcpuStats::new(0, 2, 1);
        a.exit(ExitKind::Io);
        a.exit(ExitKind::IoapicEoi);
        a.eoi_vectors[0x40] += 1;
        a.pio_device[1] += 1;
        let mut b = VcpuStats::new(1, 2, 1);
        b.exit(ExitKind::Io);
        b.unhandled_pio.add(0x1234, 2);
        let r = Report::from_vcpus(
            &[a, b],
            &["serial".into(), "pc-testdev".into()],
            &["ioapic".into()],
        );
        assert_eq!(r.exits["io"], 2);
        assert_eq!(r.exits["ioapic_eoi"], 1);
        assert_eq!(r.total_exits, 3);
        assert_eq!(r.eoi_exits_per_vector["64"], 1);
        assert_eq!(r.pio_exits_per_device["pc-testdev"], 1);
        assert_eq!(r.unhandled_pio["0x1234"], 2);
        assert!(r.table().contains("ioapic_eoi"));
    }
}
