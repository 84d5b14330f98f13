//! `splitvm report`: a picture of a run. From one exit report, bars of
//! the userspace exits by interrupt source and by device (with the UARTs'
//! coalesced writes beside them); from a `--stats-series` directory, a
//! timeline of exits per second by interrupt source over the run.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use crate::stats::sample::Sample;
use crate::svg::{bar_chart, timeline, Bar, Panel};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// An exit report (`--stats-json`, or GET vm.counters).
    #[arg(
        value_name = "REPORT.json",
        required_unless_present = "stats_series",
        conflicts_with = "stats_series"
    )]
    pub report: Option<PathBuf>,
    /// A `--stats-series` directory: draw the timeline of its reports.
    #[arg(long, value_name = "DIR")]
    pub stats_series: Option<PathBuf>,
    /// Write the SVG picture here.
    #[arg(long, value_name = "OUT.svg")]
    pub svg: PathBuf,
    /// Sources (and devices) drawn; the rest are summed as "other".
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub top: usize,
}

fn read_report(p: &Path) -> Result<Sample, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JSON report: {e}", p.display()))?;
    Ok(Sample::from_report(&v))
}

/// Each source's userspace exits (EOI and register exits), by name.
fn source_exits(r: &Sample) -> Vec<(String, u64)> {
    r.sources
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.userspace_exits()?)))
        .collect()
}

/// The exit report's subtitle: what ran and how it ended.
fn subtitle(r: &Sample) -> String {
    format!(
        "{} userspace exits in {:.1} s ({} irqchip, coalesced I/O {}), ended: {}",
        r.total_exits,
        r.running_secs(),
        r.irqchip,
        r.coalesced_io,
        r.exit_reason,
    )
}

/// Bars: the `top` busiest sources and devices, the rest as "other".
pub fn bars(r: &Sample, top: usize) -> String {
    let mut sources = source_exits(r);
    sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut devices: Vec<(String, u64, u64)> = Vec::new();
    for (name, &n) in &r.events {
        if name.starts_with("pio ") || name.starts_with("mmio ") {
            let coalesced = name
                .strip_prefix("pio ")
                .and_then(|d| r.events.get(&format!("coalesced {d}")))
                .copied()
                .unwrap_or(0);
            devices.push((name.clone(), n, coalesced));
        }
    }
    devices.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(&b.0)));
    // A zero bar gets no label: only devices with coalesced writes show
    // that second bar.
    let bar = |v: u64| Bar {
        value: v as f64,
        whisker: None,
        label: if v > 0 { v.to_string() } else { String::new() },
    };
    let mut groups = Vec::new();
    let (shown, rest) = sources.split_at(sources.len().min(top));
    for (name, n) in shown.iter().filter(|(_, n)| *n > 0) {
        groups.push((format!("source {name}"), vec![bar(*n), bar(0)]));
    }
    let other: u64 = rest.iter().map(|(_, n)| n).sum();
    if other > 0 {
        groups.push(("other sources".into(), vec![bar(other), bar(0)]));
    }
    let (shown, rest) = devices.split_at(devices.len().min(top));
    for (name, n, c) in shown {
        groups.push((name.clone(), vec![bar(*n), bar(*c)]));
    }
    let (n, c) = rest.iter().fold((0, 0), |(a, b), d| (a + d.1, b + d.2));
    if n + c > 0 {
        groups.push(("other devices".into(), vec![bar(n), bar(c)]));
    }
    let panel = Panel {
        title: "Where the exits went: interrupt sources, then devices".into(),
        unit: "count".into(),
        log: false,
        groups,
    };
    bar_chart(
        "splitvm exit report",
        &subtitle(r),
        &[
            "userspace exits".into(),
            "coalesced writes (not exits)".into(),
        ],
        &[panel],
    )
}

/// The reports of a `--stats-series` directory, in order.
fn series(dir: &Path) -> Result<Vec<Sample>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.len() < 2 {
        return Err(format!(
            "{} holds {} report(s); a timeline needs two or more (--stats-interval with --stats-series)",
            dir.display(),
            files.len()
        ));
    }
    files.iter().map(|p| read_report(p)).collect()
}

/// A timeline's series, sample times (s of running time) and rates.
type Rates = (Vec<String>, Vec<f64>, Vec<Vec<f64>>);

/// Exits per second of running time between reports, by source (the
/// busiest `top` at the end, then "other sources"), and the exits no
/// source owns; the series add up to the total exit rate.
pub fn timeline_rates(reports: &[Sample], top: usize) -> Rates {
    let Some(last) = reports.last() else {
        return Default::default();
    };
    let mut names: Vec<(String, u64)> = source_exits(last);
    names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    names.retain(|(_, n)| *n > 0);
    let keep: Vec<String> = names.iter().take(top).map(|(n, _)| n.clone()).collect();
    let mut series = keep.clone();
    series.push("other sources".into());
    series.push("no source (devices, halts, ...)".into());
    let running = Sample::running_secs;
    // Cumulative counts per series at each report.
    let cumulative: Vec<Vec<u64>> = reports
        .iter()
        .map(|r| {
            let by: std::collections::BTreeMap<String, u64> = source_exits(r).into_iter().collect();
            let mine: Vec<u64> = keep
                .iter()
                .map(|k| by.get(k).copied().unwrap_or(0))
                .collect();
            let all_sources: u64 = by.values().sum();
            let other = all_sources - mine.iter().sum::<u64>();
            let unowned = r.total_exits.saturating_sub(all_sources);
            mine.into_iter().chain([other, unowned]).collect()
        })
        .collect();
    let mut xs = Vec::new();
    let mut ys: Vec<Vec<f64>> = vec![Vec::new(); series.len()];
    for t in 1..reports.len() {
        let dt = running(&reports[t]) - running(&reports[t - 1]);
        xs.push(running(&reports[t]));
        for (i, y) in ys.iter_mut().enumerate() {
            let d = cumulative[t][i].saturating_sub(cumulative[t - 1][i]) as f64;
            y.push(if dt > 0.0 { d / dt } else { 0.0 });
        }
    }
    (series, xs, ys)
}

/// The timeline picture of a series of reports.
pub fn timeline_of(reports: &[Sample], top: usize) -> String {
    let (series, xs, ys) = timeline_rates(reports, top);
    let last = reports.last().cloned().unwrap_or_default();
    timeline(
        "Exits per second by interrupt source",
        &format!("{} reports; {}", reports.len(), subtitle(&last)),
        &series,
        &xs,
        &ys,
    )
}

/// `splitvm report`: returns the process status.
pub fn run(args: &ReportArgs) -> Result<i32, String> {
    let svg = match (&args.report, &args.stats_series) {
        (Some(p), _) => bars(&read_report(p)?, args.top),
        (None, Some(dir)) => timeline_of(&series(dir)?, args.top),
        (None, None) => return Err("give a REPORT.json or --stats-series DIR".into()),
    };
    std::fs::write(&args.svg, svg)
        .map_err(|e| format!("cannot write {}: {e}", args.svg.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(wall: u64, serial: u64, pit: u64, total: u64) -> Sample {
        Sample::from_report(&json!({
            "wall_time_ms": wall, "paused_ms": 0, "total_exits": total, "irqchip": "split",
            "coalesced_io": "on", "exit_reason": "running",
            "pio_exits_per_device": { "serial": serial, "pit": pit },
            "coalesced_pio_per_device": { "serial": 7 },
            "sources": [
                { "name": "serial", "eoi_exits": 0, "pio_exits": serial, "mmio_exits": 0 },
                { "name": "pit", "eoi_exits": 0, "pio_exits": pit, "mmio_exits": 0 },
                { "name": "ipi", "in_kernel": true, "eoi_exits": null, "pio_exits": null }
            ]
        }))
    }

    #[test]
    fn bars_name_each_busy_source_and_device_with_its_count() {
        let s = bars(&report(1000, 40, 3, 50), 8);
        assert!(
            s.contains("source serial") && s.contains("pio serial"),
            "{s}"
        );
        assert!(
            s.contains(">40<") && s.contains(">7<"),
            "the counts are labelled"
        );
        assert!(
            !s.contains("source ipi"),
            "in-kernel sources have no userspace exits"
        );
        let s = bars(&report(1000, 40, 3, 50), 1);
        assert!(
            s.contains("other sources") && !s.contains("source pit"),
            "{s}"
        );
    }

    #[test]
    fn the_timeline_stacks_per_second_rates_that_add_up_to_the_total() {
        let r = [
            report(0, 0, 0, 0),
            report(2000, 20, 4, 30),
            report(3000, 40, 4, 60),
        ];
        let (series, xs, ys) = timeline_rates(&r, 8);
        assert_eq!(
            series,
            [
                "serial",
                "pit",
                "other sources",
                "no source (devices, halts, ...)"
            ]
        );
        assert_eq!(xs, [2.0, 3.0]);
        assert_eq!(
            ys,
            [
                vec![10.0, 20.0],
                vec![2.0, 0.0],
                vec![0.0, 0.0],
                vec![3.0, 10.0]
            ]
        );
        let s = timeline_of(&r, 8);
        assert!(s.starts_with("<svg ") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("no source"));
        assert!(s.contains("3 reports"));
    }
}
