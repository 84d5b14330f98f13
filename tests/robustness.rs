//! What a careless user or a buggy splitvm can do must not take the host
//! side down (issue 11's findings): output paths that are not regular files
//! stay what they are, out-of-range numbers are one line, FIFOs and devices
//! are refused as inputs instead of hanging, device warnings reach stderr,
//! a panicking thread still ends with the report and a documented status,
//! and a debug-exit value that does not fit the 8-bit status is said so.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

fn splitvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run splitvm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("splitvm-robust-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn hello() -> String {
    Path::new(env!("SPLITVM_MICRO_GUESTS_DIR"))
        .join("hello.elf")
        .display()
        .to_string()
}

/// A flat 64-bit guest, loaded at 0x100000.
fn raw_guest(tag: &str, code: &[u8]) -> PathBuf {
    let p = tmpdir(tag).join("guest.bin");
    fs::write(&p, code).unwrap();
    p
}

fn run_raw(p: &Path, extra: &[&str]) -> Output {
    run_raw_for(p, "60", extra)
}

/// [`run_raw`] with `--timeout SECS`.
fn run_raw_for(p: &Path, secs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--kernel",
        p.to_str().unwrap(),
        "--kernel-format",
        "raw",
        "--entry",
        "0x100000",
        "--test-devices",
        "--timeout",
        secs,
    ];
    args.extend_from_slice(extra);
    splitvm(&args)
}

fn one_line(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    assert_eq!(e.lines().count(), 1, "not one line: {e}");
    assert!(e.contains(needle), "'{needle}' not in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn stats_json_on_a_character_device_leaves_it_a_character_device() {
    if !common::needs_root(
        "stats_json_on_a_character_device_leaves_it_a_character_device",
        "mknod",
    ) {
        return;
    }
    let d = tmpdir("chr");
    let dev = d.join("null");
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; 1:3 is the null device (never the real /dev).
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
        0
    );
    let hello_to = |json: &Path| {
        let o = splitvm(&[
            "run",
            "--kernel",
            &hello(),
            "--test-devices",
            "--serial",
            "none",
            "--stats-json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    };
    hello_to(&dev);
    assert!(fs::symlink_metadata(&dev)
        .unwrap()
        .file_type()
        .is_char_device());
    // A symlink to a regular file stays a symlink; the file gets the report.
    fs::write(d.join("target.json"), "").unwrap();
    std::os::unix::fs::symlink(d.join("target.json"), d.join("link.json")).unwrap();
    hello_to(&d.join("link.json"));
    assert!(fs::symlink_metadata(d.join("link.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(d.join("target.json"))
        .unwrap()
        .contains("\"exit_reason\""));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn timeouts_and_intervals_out_of_range_are_one_line() {
    for t in [
        "inf",
        "nan",
        "1e19",
        "1e300",
        "18446744073709551615",
        "-1",
        "0",
    ] {
        let arg = format!("--timeout={t}");
        one_line(&splitvm(&["run", "--kernel", &hello(), &arg]), "timeout");
    }
    one_line(
        &splitvm(&[
            "run",
            "--kernel",
            &hello(),
            "--stats-json",
            "/tmp/x.json",
            "--stats-interval",
            "1e300",
        ]),
        "interval",
    );
}

#[test]
fn fifos_and_devices_as_inputs_are_refused_at_once() {
    let d = tmpdir("fifo");
    let fifo = d.join("k");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let started = Instant::now();
    one_line(&splitvm(&["run", "--kernel", f]), "not a regular file");
    one_line(
        &splitvm(&["run", "--kernel", &hello(), "--initrd", f]),
        "not a regular file",
    );
    one_line(
        &splitvm(&[
            "run",
            "--kernel",
            "/dev/zero",
            "--kernel-format",
            "raw",
            "--entry",
            "0x100000",
        ]),
        "not a regular file",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn device_warnings_reach_stderr() {
    // mov dx,0x40; mov ax,0x1234; out dx,ax (a 2-byte PIT access the PIT
    // warns about); then debug-exit 0.
    let g = raw_guest(
        "warn",
        b"\x66\xba\x40\x00\x66\xb8\x34\x12\x66\xef\x66\xba\xf4\x00\xb0\x00\xee\xf4",
    );
    let o = run_raw(&g, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("splitvm: warning: pit: 2-byte port access"),
        "{}",
        stderr(&o)
    );
    let quiet = run_raw(&g, &["--log-level", "off"]);
    assert!(!stderr(&quiet).contains("warning"), "{}", stderr(&quiet));
}

#[test]
fn a_panicking_vcpu_thread_still_writes_the_report_and_exits_10() {
    let g = raw_guest("panic", b"\x66\xba\xf4\x00\xb0\x00\xee\xf4");
    let json = tmpdir("panic-json").join("r.json");
    let o = run_raw(
        &g,
        &[
            "--fault-inject",
            "panic-vcpu",
            "--stats-json",
            json.to_str().unwrap(),
        ],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(10), "{e}");
    assert!(
        e.contains("splitvm: internal error: thread 'vcpu0' panicked"),
        "{e}"
    );
    let r: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["exit_reason"], "internal-error");
    assert_eq!(r["exit_status"], 10);
}

#[test]
fn a_debug_exit_value_past_8_bits_is_said_and_kept_in_the_report() {
    // mov dx,0xf4; mov al,0x80; out dx,al
    let g = raw_guest("dbg", b"\x66\xba\xf4\x00\xb0\x80\xee\xf4");
    let json = tmpdir("dbg-json").join("r.json");
    let o = run_raw(&g, &["--stats-json", json.to_str().unwrap()]);
    let e = stderr(&o);
    // (0x80 << 1 | 1) & 0xff = 1: the same status as a pass, as in QEMU.
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("keeps 8 bits"), "{e}");
    let r: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r["exit_detail"].as_str().unwrap().contains("0x80"), "{r}");
}

#[test]
fn a_system_call_outside_a_threads_allow_list_ends_the_vm_with_one_line_and_status_12() {
    let g = raw_guest("seccomp", b"\x66\xba\xf4\x00\xb0\x00\xee\xf4");
    // Waited for with a deadline: a hang must fail this test, not CI.
    let err = tmpdir("seccomp-err").join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .args([
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--kernel-format",
            "raw",
        ])
        .args([
            "--entry",
            "0x100000",
            "--test-devices",
            "--fault-inject",
            "seccomp-vcpu",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "splitvm did not end within 60 s after the seccomp violation"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let e = fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(12), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("splitvm: seccomp: thread 'vcpu0' made system call 110,"),
        "{e}"
    );
    // With the filters off the same guest runs to its own status.
    let o = run_raw(&g, &["--fault-inject", "seccomp-vcpu", "--seccomp", "off"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn a_guest_that_never_stops_ends_at_timeout_with_status_6_and_says_why() {
    // cli; hlt; jmp back: nothing can wake it.
    let p = raw_guest("timeout", &[0xfa, 0xf4, 0xeb, 0xfd]);
    let d = tmpdir("timeout-report");
    let json = d.join("r.json");
    let o = run_raw_for(&p, "1", &["--stats-json", json.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(6), "{e}");
    let r: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["exit_reason"], "timeout");
    assert_eq!(r["exit_status"], 6);
    // Why: the stuck-guest report, on stderr and in the JSON.
    let verdict = "splitvm: stuck: vCPU 0 halted with IF=0: nothing can wake it (guest)";
    assert!(e.lines().any(|l| l == verdict), "{e}");
    let s = &r["stuck"];
    assert_eq!(s["trigger"], "timeout");
    assert_eq!(s["vcpus"][0]["mp_state"], "halted");
    assert_eq!(s["vcpus"][0]["interrupts_enabled"], false);
    assert_eq!(s["vcpus"][0]["rip"], 0x100002, "past the hlt");
    assert_eq!(s["findings"][0]["culprit"], "guest");
    let _ = fs::remove_dir_all(&d);
    let _ = fs::remove_dir_all(p.parent().unwrap());
}

/// A vCPU thread that shrinks its malloc arena under the default filter
/// (glibc then opens /proc/sys/vm/overcommit_memory once; a guest could
/// make that happen): the VM runs on to the guest's own status.
#[test]
fn a_vcpu_thread_shrinking_its_malloc_arena_does_not_end_the_vm() {
    let o = splitvm(&[
        "run",
        "--kernel",
        &hello(),
        "--test-devices",
        "--serial",
        "none",
        "--timeout",
        "60",
        "--seccomp",
        "kill",
        "--fault-inject",
        "arena-shrink-vcpu",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("seccomp"), "{}", stderr(&o));
}
