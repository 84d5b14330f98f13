//! `splitvm paths`' outputs: the table on stdout and the SVG chart.

use super::{PathName, PathsReport, Row, ALL_PATHS};
use crate::irqchip::IrqChipMode;

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}"))
}

/// The table on stdout: one row per path and mode, then kernel ÷ split.
pub fn table(r: &PathsReport, modes: &[IrqChipMode]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "splitvm paths: {} interrupts per measurement (runs of {} and {}), {} rep(s), to vCPU {}; TSC {} kHz; {}",
        r.count,
        r.count,
        2 * r.count,
        r.reps,
        r.cpus - 1,
        r.tsc_khz,
        r.host.summary
    );
    let _ = writeln!(
        s,
        "{:<13} {:<7} {:>10} {:>13} {:>9} {:>9} {:>21} {:>21}",
        "path",
        "irqchip",
        "interrupts",
        "userspace/int",
        "EOI/int",
        "KVM/int",
        "latency ns med/p99",
        "handler->EOI med/p99"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<13} {:<7} {:>10} {:>13.2} {:>9.2} {:>9} {:>21} {:>21}",
            row.path.name(),
            row.irqchip,
            row.interrupts,
            row.userspace_exits_per_interrupt,
            row.eoi_exits_per_interrupt,
            fmt_opt(row.kvm_exits_per_interrupt),
            format!("{:.0}/{:.0}", row.latency_ns.median, row.latency_ns.p99),
            format!(
                "{:.0}/{:.0}",
                row.handler_to_eoi_ns.median, row.handler_to_eoi_ns.p99
            ),
        );
    }
    if modes.contains(&IrqChipMode::Split) && modes.contains(&IrqChipMode::Kernel) {
        let _ = writeln!(s, "\nkernel ÷ split:");
        let _ = writeln!(
            s,
            "{:<13} {:>13} {:>9} {:>14} {:>17}",
            "path", "userspace/int", "KVM/int", "latency (med)", "handler->EOI (med)"
        );
        for p in ALL_PATHS {
            let get = |m: &str| r.rows.iter().find(|x| x.path == p && x.irqchip == m);
            if let (Some(k), Some(sp)) = (get("kernel"), get("split")) {
                let ratio = |a: f64, b: f64| {
                    if b > 0.0 {
                        format!("{:.2}", a / b)
                    } else {
                        "n/a".into()
                    }
                };
                let _ = writeln!(
                    s,
                    "{:<13} {:>13} {:>9} {:>14} {:>17}",
                    p.name(),
                    ratio(
                        k.userspace_exits_per_interrupt,
                        sp.userspace_exits_per_interrupt
                    ),
                    match (k.kvm_exits_per_interrupt, sp.kvm_exits_per_interrupt) {
                        (Some(a), Some(b)) => ratio(a, b),
                        _ => "n/a".into(),
                    },
                    ratio(k.latency_ns.median, sp.latency_ns.median),
                    ratio(k.handler_to_eoi_ns.median, sp.handler_to_eoi_ns.median),
                );
            }
        }
    }
    s
}

/// The chart: exits per interrupt and latency, one group per path, one
/// bar per mode.
pub fn svg(r: &PathsReport, modes: &[IrqChipMode]) -> String {
    use crate::svg::{bar_chart, Bar, Panel};
    let mut paths: Vec<PathName> = Vec::new();
    for row in &r.rows {
        if !paths.contains(&row.path) {
            paths.push(row.path);
        }
    }
    let group = |f: &dyn Fn(&Row) -> Bar| -> Vec<(String, Vec<Bar>)> {
        paths
            .iter()
            .map(|p| {
                let bars = modes
                    .iter()
                    .filter_map(|m| {
                        r.rows
                            .iter()
                            .find(|x| x.path == *p && x.irqchip == m.name())
                    })
                    .map(f)
                    .collect();
                (p.name().to_string(), bars)
            })
            .collect()
    };
    let exits = Panel {
        title: "userspace exits per interrupt".into(),
        unit: "EOI exits in brackets".into(),
        log: false,
        groups: group(&|x: &Row| Bar {
            value: x.userspace_exits_per_interrupt,
            whisker: None,
            label: format!(
                "{:.2} ({:.2} EOI)",
                x.userspace_exits_per_interrupt, x.eoi_exits_per_interrupt
            ),
        }),
    };
    let latency = Panel {
        title: "trigger to handler".into(),
        unit: "ns, log; median, whisker p99".into(),
        log: true,
        groups: group(&|x: &Row| Bar {
            value: x.latency_ns.median,
            whisker: Some(x.latency_ns.p99),
            label: format!("{:.0} / {:.0}", x.latency_ns.median, x.latency_ns.p99),
        }),
    };
    let series: Vec<String> = modes
        .iter()
        .map(|m| format!("--irqchip {}", m.name()))
        .collect();
    bar_chart(
        "splitvm paths: the cost of one interrupt, per path and irqchip mode",
        &format!(
            "{} interrupts per measurement to vCPU {}; {}",
            r.count,
            r.cpus - 1,
            r.host.summary
        ),
        &series,
        &[exits, latency],
    )
}
