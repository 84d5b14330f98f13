//! The exit report: its model (this file), built from per-vCPU counter
//! snapshots (src/counters.rs) and device counters; the table rendering
//! (table.rs); the comparison with `--trace-exits` (compare.rs). JSON is
//! the model serialised (docs/stats-schema.md).
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

mod compare;
pub mod sample;
mod table;

use crate::host::HostReport;
use crate::kvm_stats::KvmStatsReport;
use crate::sources::SourceReport;
use crate::trace::TraceReport;
use compare::compare;

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
    pub lost: u64,
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
    /// `split` or `kernel` (`--irqchip`; added within version 2).
    pub irqchip: &'static str,
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
    /// Per interrupt source (see src/sources/).
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
    /// The last stuck-guest report of the run (a timeout, SIGTERM/SIGINT
    /// or SIGUSR2; src/forensics/), null when none was taken.
    pub stuck: Option<crate::forensics::StuckReport>,
    /// The guest TSC's rate in kHz (KVM_GET_TSC_KHZ; added within version
    /// 2): what a guest's own TSC timings convert with.
    pub tsc_khz: Option<u32>,
    /// `--coalesced-io`: `on`, `off`, or `unavailable` (KVM cannot; the
    /// writes exit as with `off`). Added within version 2.
    pub coalesced_io: &'static str,
    /// Guest writes each port device took from KVM's coalesced ring: not
    /// exits, never counted as exits (added within version 2).
    pub coalesced_pio_per_device: BTreeMap<String, u64>,
    /// `running`, `paused` (PUT vm.pause) or `stopped` (the final report);
    /// added within version 2.
    pub state: &'static str,
    /// Of `wall_time_ms`, the time the VM spent paused: rates over running
    /// time divide by `wall_time_ms - paused_ms` (added within version 2).
    pub paused_ms: u64,
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
}

/// `--stats-series DIR`: the file of report number `sequence`.
pub fn series_file(dir: &std::path::Path, sequence: u64) -> std::path::PathBuf {
    dir.join(format!("{sequence:06}.json"))
}

/// Everything a report is built from besides the vCPU snapshots; the same
/// inputs serve interval snapshots and the final report.
pub struct ReportInputs<'a> {
    pub started: std::time::Instant,
    pub pio_names: &'a [String],
    pub mmio_names: &'a [String],
    pub irqchip: &'a dyn crate::irqchip::IrqChip,
    pub msi_injected: Option<&'a AtomicU64>,
    pub sources: &'a crate::sources::SourceRegistry,
    pub kvm_stats: Option<&'a crate::kvm_stats::KvmStats>,
    pub host: &'a HostReport,
    pub disable_exits: u32,
    pub virtio: &'a crate::virtio_setup::VirtioSetup,
    /// `splitvm run -- CMD`: `exit_status` is the command-mode status.
    pub command_mode: bool,
    /// The guest TSC's rate (KVM_GET_TSC_KHZ of vCPU 0).
    pub tsc_khz: Option<u32>,
    /// `on`, `off`, `unavailable`.
    pub coalesced_io: &'static str,
    pub coalesced: Option<&'a crate::coalesced::Coalesced>,
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
        let routes = self.irqchip.pin_routes();
        let counts = self.irqchip.pin_counts();
        report.irqchip = self.irqchip.mode().name();
        let own: &[devices::ioapic::PinStats] = match &counts {
            crate::irqchip::PinCounts::Ioapic(v) => v,
            crate::irqchip::PinCounts::Lines(_) => &[],
        };
        for (pin, p) in own.iter().enumerate() {
            if p.raised + p.delivered + p.coalesced + p.masked_drops + p.eoi + p.invalid > 0 {
                report.ioapic_pins.push(PinReport {
                    pin,
                    raised: p.raised,
                    delivered: p.delivered,
                    coalesced: p.coalesced,
                    lost: p.lost,
                    masked_drops: p.masked_drops,
                    eoi: p.eoi,
                    invalid: p.invalid,
                });
            }
        }
        let p = self
            .irqchip
            .userspace()
            .map(|u| u.pic.stats())
            .unwrap_or_default();
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
        report.tsc_khz = self.tsc_khz;
        report.coalesced_io = self.coalesced_io;
        if let Some(c) = self.coalesced {
            for (i, n) in c
                .per_device()
                .into_iter()
                .enumerate()
                .filter(|(_, n)| *n > 0)
            {
                let name = self
                    .pio_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("pio#{i}"));
                *report.coalesced_pio_per_device.entry(name).or_default() += n;
            }
        }
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
            &counts,
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
