//! `splitvm report`: the picture of a run (docs/report.md), from a
//! micro-guest's `--stats-series` (seconds, no Linux boot).

mod common;

use std::path::PathBuf;
use std::process::Command;

fn splitvm(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("splitvm-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_stats_series_becomes_a_timeline_and_a_report_becomes_bars() {
    let dir = scratch("series");
    let series = dir.join("series");
    let report = dir.join("final.json");
    let guest = common::micro_guest("timer_stress");
    let (status, err) = splitvm(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--test-devices",
        "--serial",
        "none",
        "--cmdline",
        "iterations=300",
        "--stats-interval",
        "0.1",
        "--stats-series",
        series.to_str().unwrap(),
        "--stats-json",
        report.to_str().unwrap(),
        "--timeout",
        "60",
    ]);
    // isa-debug-exit 0: the guest passed.
    assert_eq!(status, 1, "{err}");
    let files: Vec<_> = std::fs::read_dir(&series).unwrap().collect();
    assert!(files.len() >= 2, "{} report(s) in the series", files.len());
    // The series' last file is the final report.
    let last = series.join(format!("{:06}.json", files.len() - 1));
    assert_eq!(
        std::fs::read_to_string(&last).unwrap(),
        std::fs::read_to_string(&report).unwrap()
    );
    let timeline = dir.join("timeline.svg");
    let (status, err) = splitvm(&[
        "report",
        "--stats-series",
        series.to_str().unwrap(),
        "--svg",
        timeline.to_str().unwrap(),
    ]);
    assert_eq!(status, 0, "{err}");
    let svg = std::fs::read_to_string(&timeline).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Exits per second by interrupt source"));
    assert!(svg.contains(">serial<"), "the console's source is a series");
    assert!(svg.contains(&format!("{} reports", files.len())));
    let bars = dir.join("bars.svg");
    let (status, err) = splitvm(&[
        "report",
        report.to_str().unwrap(),
        "--svg",
        bars.to_str().unwrap(),
    ]);
    assert_eq!(status, 0, "{err}");
    let svg = std::fs::read_to_string(&bars).unwrap();
    assert!(
        svg.contains("source serial") && svg.contains("pio serial"),
        "{svg}"
    );
}

#[test]
fn too_short_a_series_and_a_missing_report_are_one_line_errors() {
    let dir = scratch("errors");
    std::fs::write(dir.join("000000.json"), "{}").unwrap();
    let out = dir.join("x.svg");
    let (status, err) = splitvm(&[
        "report",
        "--stats-series",
        dir.to_str().unwrap(),
        "--svg",
        out.to_str().unwrap(),
    ]);
    assert_eq!(status, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs two or more"), "{err}");
    let (status, err) = splitvm(&[
        "report",
        "/nonexistent.json",
        "--svg",
        out.to_str().unwrap(),
    ]);
    assert_eq!(status, 1);
    assert!(err.contains("cannot read /nonexistent.json"), "{err}");
    assert!(!out.exists());
}
