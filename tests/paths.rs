//! `splitvm paths`: every delivery path in both irqchip modes, with the
//! exit counts the two modes must show (docs/interrupt-paths.md): a level
//! interrupt costs exactly one EOI exit more in split mode, nothing else
//! differs but the 8259's own port traffic, and MSI/MSI-X cost only their
//! trigger in either mode. Latencies are the guest's; they are checked for
//! sanity, never for speed.

use std::process::Command;

use serde_json::Value;

fn paths(args: &[&str]) -> (Value, String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("splitvm-paths-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("paths.json");
    let svg = dir.join("paths.svg");
    let o = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .arg("paths")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run splitvm paths");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (v, stdout, s)
}

fn row<'a>(r: &'a Value, path: &str, mode: &str) -> &'a Value {
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["path"] == path && x["irqchip"] == mode)
        .unwrap_or_else(|| panic!("no row {path} {mode} in {r:#}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn every_path_in_both_modes_costs_what_each_irqchip_must() {
    let (r, table, svg) = paths(&["--count", "50"]);
    for path in [
        "pic",
        "ioapic-edge",
        "ioapic-level",
        "msi",
        "msix",
        "ipi",
        "lapic-timer",
    ] {
        for mode in ["split", "kernel"] {
            let x = row(&r, path, mode);
            assert_eq!(x["interrupts"], 50, "{x}");
            let lat = &x["latency_ns"];
            assert!(
                f(lat, "median") > 0.0 && f(lat, "p99") >= f(lat, "median"),
                "{x}"
            );
            let eoi = &x["handler_to_eoi_ns"];
            assert!(
                f(eoi, "median") > 0.0 && f(eoi, "p99") >= f(eoi, "median"),
                "{x}"
            );
            assert!(f(x, "kvm_exits_per_interrupt") > 0.0, "{x}");
            assert!(table.contains(path), "{table}");
        }
        assert!(
            svg.contains(&format!(">{path}</text>")),
            "{path} not in the chart"
        );
    }
    let u = |p: &str, m: &str| f(row(&r, p, m), "userspace_exits_per_interrupt");
    let e = |p: &str, m: &str| f(row(&r, p, m), "eoi_exits_per_interrupt");
    // Level: one KVM_EXIT_IOAPIC_EOI per interrupt in split mode, none in
    // kernel mode; the trigger's own two port writes in both.
    assert_eq!(e("ioapic-level", "split"), 1.0);
    assert_eq!(e("ioapic-level", "kernel"), 0.0);
    assert_eq!(u("ioapic-level", "split"), 3.0);
    assert_eq!(u("ioapic-level", "kernel"), 2.0);
    // Edge: the pulse (two port writes) in both, no EOI exit.
    assert_eq!(u("ioapic-edge", "split"), 2.0);
    assert_eq!(u("ioapic-edge", "kernel"), 2.0);
    // MSI and MSI-X: the trigger only (a port write, an MMIO write).
    for p in ["msi", "msix"] {
        for m in ["split", "kernel"] {
            assert_eq!(u(p, m), 1.0, "{p} {m}");
            assert_eq!(e(p, m), 0.0, "{p} {m}");
        }
    }
    // In the LAPIC: nothing reaches userspace in either mode.
    for p in ["ipi", "lapic-timer"] {
        for m in ["split", "kernel"] {
            assert_eq!(u(p, m), 0.0, "{p} {m}");
        }
    }
    // The 8259: KVM's takes the trigger's two writes; splitvm's also exits
    // for the guest's EOI and to inject (interrupt window).
    assert_eq!(u("pic", "kernel"), 2.0);
    assert!(u("pic", "split") >= 4.0, "{}", u("pic", "split"));
    assert!(table.contains("kernel ÷ split"), "{table}");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn to_another_vcpu_the_level_pin_still_costs_one_eoi_exit_in_split_mode() {
    // Three repetitions and their median (`--reps 3`). OPEN PROBLEM, not
    // explained: about one run in ten (20 single runs on a quiet machine,
    // 2026-12-07) carries one extra delivery of the level pin, 1.033 EOI
    // exits per interrupt, and the median of three then fails too (seen in a
    // clean-clone CI run at 76e9a3a). It is splitvm's own I/O APIC that
    // delivers it: the run's report has the pin raised 30 times, delivered
    // 31, 31 EOIs, and the guest lowered the line 31 times; so the line was
    // high at an EOI with no new rising edge. Not a host limit until shown
    // to be one; the expectation stays 1.0.
    let (r, _, _) = paths(&[
        "--reps",
        "3",
        "--count",
        "30",
        "--cpus",
        "2",
        "--paths",
        "ioapic-level,msix,pic",
    ]);
    assert_eq!(r["cpus"], 2);
    assert_eq!(
        f(row(&r, "ioapic-level", "split"), "eoi_exits_per_interrupt"),
        1.0
    );
    assert_eq!(
        f(row(&r, "ioapic-level", "kernel"), "eoi_exits_per_interrupt"),
        0.0
    );
    assert_eq!(
        f(row(&r, "msix", "split"), "userspace_exits_per_interrupt"),
        1.0
    );
    // The 8259 reaches vCPU 0 only: left out with --cpus 2.
    assert!(r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["path"] != "pic"));
}

#[test]
fn an_unknown_mode_or_path_is_one_line_and_status_2() {
    for args in [
        &["--irqchip", "userspace"][..],
        &["--paths", "nmi"],
        &["--count", "0"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_splitvm"))
            .arg("paths")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}
