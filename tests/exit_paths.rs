//! How a VM ends: an i8042 reset and a triple fault end it cleanly with
//! status 0; a vCPU that KVM cannot run (an instruction fetch from the MMIO
//! hole) ends it with status 4 and one line naming the vCPU, RIP,
//! instruction bytes and suberror. Guests: tests/guests/{i8042_reset,
//! triple_fault,exec_from_mmio}.S.

use std::path::Path;
use std::process::Command;

struct Run {
    status: i32,
    stderr: String,
    stats: serde_json::Value,
}

fn run(guest: &str) -> Run {
    let kernel = Path::new(env!("SPLITVM_MICRO_GUESTS_DIR")).join(format!("{guest}.elf"));
    let json =
        std::env::temp_dir().join(format!("splitvm-exit-{guest}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args([
            "run",
            "--test-devices",
            "--serial",
            "none",
            "--timeout",
            "60",
            "--kernel",
        ])
        .arg(&kernel)
        .arg("--stats-json")
        .arg(&json)
        .output()
        .expect("run splitvm");
    let stats = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json);
    Run {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stats,
    }
}

#[test]
fn i8042_reset_ends_the_vm_with_status_0() {
    let r = run("i8042_reset");
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stats["exit_reason"], "reset");
    assert!(
        r.stats["pio_exits_per_device"]["i8042"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    );
}

#[test]
fn triple_fault_ends_the_vm_with_status_0() {
    let r = run("triple_fault");
    assert_eq!(r.status, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stats["exit_reason"], "triple-fault");
    assert_eq!(r.stats["exits"]["shutdown"], 1);
}

#[test]
fn unrunnable_guest_code_is_reported_in_one_line_with_status_4() {
    let r = run("exec_from_mmio");
    assert_eq!(r.status, 4, "stderr: {}", r.stderr);
    assert_eq!(r.stats["exit_reason"], "guest-error");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
    let l = lines[0];
    assert!(
        l.starts_with("splitvm: vCPU 0 stopped: KVM internal error"),
        "{l}"
    );
    assert!(l.contains("RIP 0xe0000000"), "{l}");
    assert!(l.contains("suberror"), "{l}");
    assert!(l.contains("instruction bytes"), "{l}");
    assert!(!r.stderr.contains("panicked"));
}
