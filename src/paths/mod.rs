//! `splitvm paths`: the life of an interrupt on every delivery path, in
//! each irqchip mode, measured (docs/interrupt-paths.md).
//!
//! The guest is tests/guests/paths.S, built by build.rs and embedded in the
//! binary. For each path and mode splitvm runs it twice, with N and 2N
//! interrupts (alternating the modes, so a drift in host load hits both):
//! its output does not depend on N, so the difference of the two runs'
//! counters is the cost of exactly N interrupts, set-up and printing
//! cancelled out. Userspace exits come from splitvm's report, KVM exits
//! from KVM's binary statistics (`exits`), latencies from the guest's own
//! TSC histograms (trigger to the handler's first instruction, and the
//! handler to its end of interrupt), converted with the TSC rate the guest
//! calibrated.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::irqchip::IrqChipMode;

mod render;
pub use render::{svg, table};

/// The guest, built by build.rs.
const GUEST: &[u8] = include_bytes!(concat!(env!("SPLITVM_MICRO_GUESTS_DIR"), "/paths.elf"));

/// The delivery paths, as the guest numbers them (path=1..7).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathName {
    /// 8259 IRQ 5, ExtINT through LINT0.
    Pic,
    /// I/O APIC pin 10, edge.
    IoapicEdge,
    /// I/O APIC pin 11, level.
    IoapicLevel,
    /// An MSI (splitvm's MSI test port).
    Msi,
    /// An MSI-X vector (the MSI-X test function's doorbell).
    Msix,
    /// A fixed IPI (in the LAPIC).
    Ipi,
    /// The TSC-deadline timer (in the LAPIC).
    LapicTimer,
}

pub const ALL_PATHS: [PathName; 7] = [
    PathName::Pic,
    PathName::IoapicEdge,
    PathName::IoapicLevel,
    PathName::Msi,
    PathName::Msix,
    PathName::Ipi,
    PathName::LapicTimer,
];

impl PathName {
    fn number(self) -> u32 {
        ALL_PATHS.iter().position(|p| *p == self).unwrap_or(0) as u32 + 1
    }
    pub fn name(self) -> &'static str {
        match self {
            PathName::Pic => "pic",
            PathName::IoapicEdge => "ioapic-edge",
            PathName::IoapicLevel => "ioapic-level",
            PathName::Msi => "msi",
            PathName::Msix => "msix",
            PathName::Ipi => "ipi",
            PathName::LapicTimer => "lapic-timer",
        }
    }
    /// Paths that reach vCPU 0 only.
    fn vcpu0_only(self) -> bool {
        matches!(self, PathName::Pic | PathName::LapicTimer)
    }
}

#[derive(Args, Debug)]
pub struct PathsArgs {
    /// Irqchip modes to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "split,kernel"
    )]
    pub irqchip: Vec<IrqChipMode>,
    /// Paths to measure, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Vec<PathName>,
    /// Interrupts per measurement: runs of N and 2N interrupts.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
    /// 1: interrupts go to vCPU 0, which waits halted; 2: to vCPU 1 while
    /// vCPU 0 waits (the pic and lapic-timer paths are vCPU 0's and are
    /// left out).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub cpus: u32,
    /// Measurements of each path and mode (medians are reported).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reps: u32,
    /// Write the rows as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Draw the results as an SVG chart here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// (For scripts/bench-interrupt-paths.sh, which runs the guest under
    /// QEMU too.) Read the guest's serial output in FILE and print its
    /// latency percentiles as JSON, converted at --tsc-khz; measure nothing.
    #[arg(long, hide = true, value_name = "FILE", requires = "tsc_khz")]
    pub summarize: Option<PathBuf>,
    #[arg(long, hide = true, value_name = "KHZ")]
    pub tsc_khz: Option<u64>,
}

/// Median and 99th percentile, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub median: f64,
    pub p99: f64,
}

/// One row: a path in a mode.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: PathName,
    pub irqchip: &'static str,
    pub interrupts: u64,
    pub userspace_exits_per_interrupt: f64,
    pub eoi_exits_per_interrupt: f64,
    /// KVM's own count (binary statistics `exits`); null where KVM has none.
    pub kvm_exits_per_interrupt: Option<f64>,
    pub latency_ns: Percentiles,
    pub handler_to_eoi_ns: Percentiles,
}

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
pub struct PathsReport {
    pub count: u32,
    pub cpus: u32,
    pub reps: u32,
    pub tsc_khz: u64,
    pub host: crate::host::HostReport,
    pub rows: Vec<Row>,
}

/// One guest run's numbers.
struct Run {
    userspace: u64,
    eoi: u64,
    kvm: Option<u64>,
    tsc_khz: u64,
    latency: Vec<u64>,
    to_eoi: Vec<u64>,
}

const BUCKETS: usize = 240;

/// The middle of histogram bucket `b` in TSC cycles (tests/guests/paths.S:
/// 16 linear buckets, then 8 per power of two).
fn bucket_mid(b: usize) -> f64 {
    if b < 16 {
        return b as f64;
    }
    let e = (b - 16) / 8 + 4;
    let m = ((b - 16) % 8) as f64;
    let step = (1u64 << (e - 3)) as f64;
    (8.0 + m + 0.5) * step
}

/// The `q` quantile of a histogram, in cycles (None if it is empty).
fn quantile(h: &[u64], q: f64) -> Option<f64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (b, n) in h.iter().enumerate() {
        acc += n;
        if acc >= want {
            return Some(bucket_mid(b));
        }
    }
    None
}

fn parse_hist(serial: &str, name: &str) -> Option<Vec<u64>> {
    let line = serial.lines().find(|l| l.starts_with(name))?;
    let v: Vec<u64> = line[name.len()..]
        .split_whitespace()
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect::<Option<_>>()?;
    (v.len() == BUCKETS).then_some(v)
}

fn run_guest(
    exe: &Path,
    dir: &Path,
    guest: &Path,
    path: PathName,
    mode: IrqChipMode,
    cpus: u32,
    count: u32,
) -> Result<Run, String> {
    let serial = dir.join("serial.txt");
    let json = dir.join("report.json");
    let _ = std::fs::remove_file(&serial);
    let out = Command::new(exe)
        .args(["run", "--kernel"])
        .arg(guest)
        .args(["--test-devices", "--irqchip", mode.name()])
        .args(["--cpus", &cpus.to_string()])
        .args([
            "--cmdline",
            &format!("path={} count={count} cpus={cpus}", path.number()),
        ])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--stats-json")
        .arg(&json)
        .args(["--timeout", "600", "--progress", "never"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = std::fs::read_to_string(&serial).unwrap_or_default();
    if out.status.code() != Some(1) || !text.contains("PASS") {
        let why = text
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .map(str::to_string)
            .or_else(|| {
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        return Err(format!(
            "path {} with --irqchip {} failed (status {:?}): {why}",
            path.name(),
            mode.name(),
            out.status.code()
        ));
    }
    let r: serde_json::Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or("no report")?;
    let num = |v: &serde_json::Value| v.as_u64();
    // The guest TSC's rate as KVM runs it; the guest's own calibration
    // (against its 1 ms LAPIC tick) only if KVM gave none.
    let tsc_khz = num(&r["tsc_khz"])
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("tsc_khz "))
                .and_then(|h| u64::from_str_radix(h.trim().trim_start_matches("0x"), 16).ok())
        })
        .ok_or("no TSC rate")?;
    Ok(Run {
        userspace: num(&r["total_exits"]).unwrap_or(0),
        eoi: num(&r["exits"]["ioapic_eoi"]).unwrap_or(0),
        kvm: num(&r["kvm_stats"]["vcpu_total"]["exits"]),
        tsc_khz,
        latency: parse_hist(&text, "hist_latency").ok_or("no latency histogram")?,
        to_eoi: parse_hist(&text, "hist_handler_to_eoi").ok_or("no EOI histogram")?,
    })
}

/// One path and mode's measurements over the repetitions: exits per
/// interrupt of each pair of runs, and the histograms of every run.
#[derive(Default)]
struct Samples {
    userspace: Vec<f64>,
    eoi: Vec<f64>,
    kvm: Vec<f64>,
    latency: Vec<u64>,
    to_eoi: Vec<u64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The guest's two histograms in `serial` as percentiles in ns.
fn summarize(serial: &str, tsc_khz: u64) -> Result<serde_json::Value, String> {
    let ns = |c: Option<f64>| c.map(|c| c * 1e6 / tsc_khz.max(1) as f64);
    let p = |name: &str| -> Result<serde_json::Value, String> {
        let h = parse_hist(serial, name).ok_or_else(|| format!("no {name} in the output"))?;
        Ok(serde_json::json!({
            "median": ns(quantile(&h, 0.5)),
            "p99": ns(quantile(&h, 0.99)),
            "samples": h.iter().sum::<u64>(),
        }))
    };
    Ok(serde_json::json!({
        "latency_ns": p("hist_latency")?,
        "handler_to_eoi_ns": p("hist_handler_to_eoi")?,
    }))
}

/// `splitvm paths`: returns the process status.
pub fn run(args: &PathsArgs) -> Result<i32, String> {
    if let (Some(f), Some(khz)) = (&args.summarize, args.tsc_khz) {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        println!("{}", summarize(&text, khz)?);
        return Ok(0);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find splitvm itself: {e}"))?;
    let paths: Vec<PathName> = if args.paths.is_empty() {
        ALL_PATHS.to_vec()
    } else {
        args.paths.clone()
    };
    let paths: Vec<PathName> = paths
        .into_iter()
        .filter(|p| args.cpus == 1 || !p.vcpu0_only())
        .collect();
    let mut modes = args.irqchip.clone();
    modes.dedup();
    let dir = std::env::temp_dir().join(format!("splitvm-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let guest = dir.join("paths.elf");
    std::fs::write(&guest, GUEST).map_err(|e| format!("{}: {e}", guest.display()))?;
    let result = measure(args, &exe, &dir, &guest, &paths, &modes);
    let _ = std::fs::remove_dir_all(&dir);
    let (rows, tsc_khz) = result?;
    let report = PathsReport {
        count: args.count,
        cpus: args.cpus,
        reps: args.reps,
        tsc_khz,
        host: crate::host::detect(),
        rows,
    };
    print!("{}", table(&report, &modes));
    if let Some(p) = &args.json {
        let j = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
        crate::output::write_output(p, j.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.svg {
        crate::output::write_output(p, svg(&report, &modes).as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(0)
}

fn measure(
    args: &PathsArgs,
    exe: &Path,
    dir: &Path,
    guest: &Path,
    paths: &[PathName],
    modes: &[IrqChipMode],
) -> Result<(Vec<Row>, u64), String> {
    let n = args.count;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tsc = 0;
    let mut rows = Vec::new();
    for &path in paths {
        // per mode: exits/int samples and merged histograms
        let mut acc: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
        for rep in 0..args.reps {
            // Alternate which mode goes first, run after run.
            let order: Vec<usize> = if rep % 2 == 0 {
                (0..modes.len()).collect()
            } else {
                (0..modes.len()).rev().collect()
            };
            for mi in order {
                let mode = modes[mi];
                if progress {
                    eprint!(
                        "\r\x1b[Ksplitvm paths: {} ({}), run {}/{}",
                        path.name(),
                        mode.name(),
                        rep + 1,
                        args.reps
                    );
                }
                let a = run_guest(exe, dir, guest, path, mode, args.cpus, n)?;
                let b = run_guest(exe, dir, guest, path, mode, args.cpus, 2 * n)?;
                tsc = b.tsc_khz;
                let per = |x: u64, y: u64| (y as f64 - x as f64) / f64::from(n);
                let e = &mut acc[mi];
                e.userspace.push(per(a.userspace, b.userspace));
                e.eoi.push(per(a.eoi, b.eoi));
                if let (Some(x), Some(y)) = (a.kvm, b.kvm) {
                    e.kvm.push(per(x, y));
                }
                if e.latency.is_empty() {
                    e.latency = vec![0; BUCKETS];
                    e.to_eoi = vec![0; BUCKETS];
                }
                for h in [&a, &b] {
                    for i in 0..BUCKETS {
                        e.latency[i] += h.latency[i];
                        e.to_eoi[i] += h.to_eoi[i];
                    }
                }
            }
        }
        for (mi, mode) in modes.iter().enumerate() {
            let Samples {
                userspace: u,
                eoi: eo,
                kvm: k,
                latency: lat,
                to_eoi: toe,
            } = &mut acc[mi];
            let ns = |c: Option<f64>| c.map_or(f64::NAN, |c| c * 1e6 / tsc.max(1) as f64);
            rows.push(Row {
                path,
                irqchip: mode.name(),
                interrupts: u64::from(n),
                userspace_exits_per_interrupt: median(u),
                eoi_exits_per_interrupt: median(eo),
                kvm_exits_per_interrupt: (!k.is_empty()).then(|| median(k)),
                latency_ns: Percentiles {
                    median: ns(quantile(lat, 0.5)),
                    p99: ns(quantile(lat, 0.99)),
                },
                handler_to_eoi_ns: Percentiles {
                    median: ns(quantile(toe, 0.5)),
                    p99: ns(quantile(toe, 0.99)),
                },
            });
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    Ok((rows, tsc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_guests_histogram() {
        // Linear below 16; then 8 per power of two: bucket 16 is [16, 18).
        assert_eq!(bucket_mid(5), 5.0);
        assert_eq!(bucket_mid(16), 17.0);
        assert_eq!(bucket_mid(24), 34.0);
        // 1000 cycles: top bit 9, next three bits 111 -> 16 + 5*8 + 7.
        let b = 16 + (9 - 4) * 8 + ((1000 >> 6) & 7);
        let mid = bucket_mid(b);
        assert!((mid - 1000.0).abs() / 1000.0 < 0.07, "{mid}");
    }

    #[test]
    fn quantiles_come_from_cumulative_counts() {
        let mut h = vec![0u64; BUCKETS];
        h[10] = 98;
        h[100] = 2;
        assert_eq!(quantile(&h, 0.5), Some(10.0));
        assert_eq!(quantile(&h, 0.98), Some(10.0));
        assert_eq!(quantile(&h, 0.99), Some(bucket_mid(100)));
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    #[test]
    fn histograms_are_read_from_the_guests_fixed_width_line() {
        let mut line = String::from("hist_latency");
        for i in 0..BUCKETS {
            line.push_str(&format!(" 0x{:08x}", i % 3));
        }
        let h = parse_hist(&format!("x\n{line}\ny"), "hist_latency").unwrap();
        assert_eq!(h[4], 1);
        assert!(parse_hist("hist_latency 0x1", "hist_latency").is_none());
    }
}
