//! Snapshot and restore (docs/snapshot.md), end to end through the
//! `splitvm` binary on /dev/kvm:
//! - the micro-guest `snapshot_mid_test` takes a snapshot at its ready port
//!   with a level interrupt in flight (Remote IRR set), a masked level pin
//!   with its line high, the LAPIC timer armed and the PIT periodic; each
//!   restore must pass the guest's own checks and show, in splitvm's exit
//!   report (which counts from the restore), exactly the EOI exit the
//!   in-flight interrupt still owed and no delivery of it;
//! - every kind of bad snapshot is refused with one line and status 2
//!   before a vCPU exists;
//! - the project's Linux guest, snapshotted at its agent's ready (1 and 2
//!   vCPUs, the first taken by `splitvm test` from a manifest), is restored
//!   20 times in a row, each run a different command returning its status;
//!   a snapshot taken by SIGUSR1 in the middle of a command finishes that
//!   command when restored.
//!
//! No /dev/kvm is a failure, not a skip: CI has KVM.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

fn splitvm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_splitvm"));
    c.stdin(Stdio::null());
    c
}

/// A fresh directory under the system temp dir.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("splitvm-snap-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn context(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn json(path: &Path) -> Value {
    let s = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap()
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_u64().unwrap_or(0)
}

/// `ioapic_pins[pin == n].field`, 0 when absent.
fn pin(report: &Value, n: u64, field: &str) -> u64 {
    report["ioapic_pins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pin"].as_u64() == Some(n))
        .map_or(0, |p| p[field].as_u64().unwrap_or(0))
}

/// "count: vector V taken N" from a micro-guest's console.
fn guest_count(serial: &str, vector: u8) -> u64 {
    let prefix = format!("count: vector {vector} taken ");
    serial
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{prefix}N' line in:\n{serial}"))
}

/// Boot `snapshot_mid_test` with `cpus` vCPUs, snapshot at its ready port,
/// then restore it `restores` times; every run must pass.
fn mid_test_snapshot_and_restores(cpus: u32, restores: usize) {
    let dir = scratch(&format!("mid-{cpus}"));
    let snap = dir.join("snap");
    let serial = dir.join("boot.txt");
    let o = splitvm()
        .args(["run", "--kernel"])
        .arg(common::micro_guest("snapshot_mid_test"))
        .args(["--test-devices", "--cpus", &cpus.to_string()])
        .arg("--snapshot-on-ready")
        .arg(&snap)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .output()
        .unwrap();
    let console = fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(o.status.code(), Some(1), "{}\n{console}", context(&o));
    assert!(console.contains("PASS"), "{console}");
    assert!(snap.join("state.json").is_file(), "no snapshot written");

    for i in 0..restores {
        let serial = dir.join(format!("restore-{i}.txt"));
        let report = dir.join(format!("restore-{i}.json"));
        let o = splitvm()
            .args(["run", "--restore"])
            .arg(&snap)
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--stats-json")
            .arg(&report)
            .output()
            .unwrap();
        let console = fs::read_to_string(&serial).unwrap_or_default();
        let why = format!("restore {i}: {}\n--- console ---\n{console}", context(&o));
        assert_eq!(o.status.code(), Some(1), "{why}");
        assert!(console.contains("PASS"), "{why}");
        assert!(
            !console.lines().any(|l| l.trim_end() == "snapshot point"),
            "a restored guest starts after the snapshot point: {why}"
        );
        let r = json(&report);
        assert_eq!(r["exit_reason"], "debug-exit", "{why}");
        assert_eq!(r["vcpus"].as_array().map(Vec::len), Some(cpus as usize));
        // The level interrupt in flight (pin 11, vector 0x41): it was
        // raised and delivered before the snapshot, so not here; its EOI
        // happens here, exactly once (the guest lowered the line first).
        assert_eq!(pin(&r, 11, "raised"), 0, "pin 11 raised: {why}");
        assert_eq!(pin(&r, 11, "delivered"), 0, "pin 11 delivered: {why}");
        assert_eq!(pin(&r, 11, "eoi"), 1, "pin 11 EOI: {why}");
        assert_eq!(num(&r, &["eoi_exits_per_vector", "65"]), 1, "{why}");
        assert_eq!(guest_count(&console, 0x41), 1, "{why}");
        // The masked pin whose line stayed high: delivered on unmask.
        assert!(pin(&r, 12, "delivered") >= 1, "pin 12 delivered: {why}");
        assert_eq!(pin(&r, 12, "raised"), 0, "pin 12 raised: {why}");
        assert_eq!(pin(&r, 12, "eoi"), pin(&r, 12, "delivered"), "{why}");
        // The periodic PIT: at least the 15 ticks the guest waited for.
        assert!(pin(&r, 2, "delivered") >= 15, "PIT ticks: {why}");
        assert_eq!(guest_count(&console, 0x60), 1, "LAPIC timer: {why}");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_micro_guest_snapshot_with_interrupts_in_flight_restores_with_nothing_lost_or_doubled() {
    mid_test_snapshot_and_restores(1, 3);
}

#[test]
fn a_two_vcpu_micro_guest_snapshot_restores() {
    mid_test_snapshot_and_restores(2, 2);
}

/// A valid snapshot of the micro-guest to damage, taken once.
fn good_snapshot() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch("good").join("snap");
        let o = splitvm()
            .args(["run", "--kernel"])
            .arg(common::micro_guest("snapshot_mid_test"))
            .args(["--test-devices", "--serial", "none", "--snapshot-on-ready"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", context(&o));
        dir
    })
}

/// A copy of the good snapshot in a new directory.
fn copy_of_good(name: &str) -> PathBuf {
    let dst = scratch(name);
    for e in fs::read_dir(good_snapshot()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// The state file's JSON body, edited by `f`, written back with a header
/// whose length and CRC-32 match (a well-formed snapshot that lies).
fn rewrite_state(dir: &Path, f: impl FnOnce(&mut Value)) {
    let raw = fs::read(dir.join("state.json")).unwrap();
    let nl = raw.iter().position(|&b| b == b'\n').unwrap();
    let mut v: Value = serde_json::from_slice(&raw[nl + 1..]).unwrap();
    f(&mut v);
    let body = serde_json::to_vec(&v).unwrap();
    let head = format!(
        "splitvm-snapshot 2 crc32={:08x} bytes={}\n",
        crc32fast::hash(&body),
        body.len()
    );
    fs::write(dir.join("state.json"), [head.as_bytes(), &body].concat()).unwrap();
}

/// Restore `dir`: status 2, one stderr line containing `want`, quickly.
fn refused(dir: &Path, want: &str) -> String {
    let t = Instant::now();
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(dir)
        .args(["--serial", "none"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", context(&o));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("splitvm: "), "{err}");
    assert!(err.contains(want), "'{want}' not in: {err}");
    assert!(
        text(&o.stdout).is_empty(),
        "no guest output: {}",
        context(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    eprintln!("refused as expected: {}", err.trim_end());
    err
}

#[test]
fn bad_snapshots_are_refused_with_one_line_before_any_vcpu_runs() {
    // Truncated state.
    let d = copy_of_good("truncated");
    let raw = fs::read(d.join("state.json")).unwrap();
    fs::write(d.join("state.json"), &raw[..raw.len() / 2]).unwrap();
    refused(&d, "is truncated");

    // One byte flipped in the body.
    let d = copy_of_good("corrupted");
    let mut raw = fs::read(d.join("state.json")).unwrap();
    let i = raw.len() - 100;
    raw[i] ^= 0x01;
    fs::write(d.join("state.json"), &raw).unwrap();
    refused(&d, "is corrupted");

    // Another splitvm's snapshot, and another format.
    let d = copy_of_good("version");
    rewrite_state(&d, |v| v["splitvm_version"] = "0.0.0-elsewhere".into());
    refused(&d, "was written by splitvm 0.0.0-elsewhere");
    let d = copy_of_good("format");
    let raw = fs::read(d.join("state.json")).unwrap();
    let body = &raw[raw.iter().position(|&b| b == b'\n').unwrap()..];
    fs::write(
        d.join("state.json"),
        [b"splitvm-snapshot 3 crc32=0 bytes=0".as_slice(), body].concat(),
    )
    .unwrap();
    refused(&d, "has format 3");

    // Taken on another CPU.
    let d = copy_of_good("cpu");
    rewrite_state(&d, |v| {
        v["host"]["cpu"] = "GenuineIntel family 6 model 143 stepping 8".into()
    });
    refused(&d, "was taken on another CPU");

    // A TSC rate this host does not have (KVM may scale to it on hosts
    // with TSC scaling; here, and wherever it cannot, the restore refuses).
    let d = copy_of_good("tsc");
    rewrite_state(&d, |v| {
        let khz = v["vcpus"][0]["tsc_khz"].as_u64().unwrap();
        v["vcpus"][0]["tsc_khz"] = (khz - 1000).into();
    });
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(&d)
        .args(["--serial", "none"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    if err.contains("KVM cannot scale it") {
        refused(&d, "the snapshot's TSC runs at");
    } else {
        assert_eq!(
            o.status.code(),
            Some(1),
            "scaled: the guest passes; {}",
            context(&o)
        );
    }

    // A memory file that does not match the guest's memory size.
    let d = copy_of_good("memory");
    let mem = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("memory-")
        })
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    refused(&d, "is 67108864 bytes, the snapshot's guest has 134217728");

    // No snapshot at all, and something else.
    refused(&scratch("empty"), "no snapshot in");
    let d = scratch("other");
    fs::write(d.join("state.json"), "{\"hello\": 1}\n").unwrap();
    refused(&d, "is not a splitvm snapshot");

    // A micro-guest snapshot has no channel: no command to run.
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(good_snapshot())
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("has no host-guest channel"), "{err}");
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn restore_conflicts_with_options_that_shape_the_machine() {
    // Every option that shapes a machine is the snapshot's to say: each one
    // given with --restore is refused by name, before anything runs.
    for opt in [
        &["--kernel", "/bin/true"][..],
        &["--cpus", "2"],
        &["--memory", "256M"],
        &["--transport", "mmio"],
        &["--transport", "pci"],
        &["--disk", "/dev/null"],
        &["--no-pit"],
        &["--test-devices"],
    ] {
        let o = splitvm()
            .args(["run", "--restore", "/nonexistent"])
            .args(opt)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{opt:?}");
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{opt:?}: {err}");
        assert!(err.contains(opt[0]), "{opt:?}: {err}");
    }
}

// ---- the project's Linux guest ----------------------------------------

/// `splitvm test MANIFEST --output OUT [EXTRA...]`.
fn run_manifest(manifest: &Path, out: &Path, extra: &[&str]) -> Output {
    splitvm()
        .arg("test")
        .arg(manifest)
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// A snapshot of the Linux guest at its agent's ready with `cpus` vCPUs,
/// taken once per test binary. The 1-vCPU one is taken by `splitvm test`
/// itself from a manifest naming a snapshot directory that does not exist
/// yet (one boot), which then runs that manifest's case from it.
fn linux_snapshot(cpus: u32) -> PathBuf {
    static ONE: OnceLock<PathBuf> = OnceLock::new();
    static TWO: OnceLock<PathBuf> = OnceLock::new();
    let cell = if cpus == 1 { &ONE } else { &TWO };
    cell.get_or_init(|| {
        let (kernel, initrd) = common::guest();
        let dir = scratch(&format!("linux-{cpus}"));
        let snap = dir.join("snap");
        let _one = common::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let t = Instant::now();
        if cpus == 1 {
            let manifest = dir.join("m.toml");
            fs::write(
                &manifest,
                format!(
                    "[defaults]\nkernel = '{}'\ninitrd = '{}'\nsnapshot = 'snap'\ntimeout = 600\n\n[[case]]\nname = 'first'\ncommand = 'echo first; exit 5'\nexpect = 5\n",
                    kernel.display(),
                    initrd.display()
                ),
            )
            .unwrap();
            let o = run_manifest(&manifest, &dir.join("out"), &[]);
            let out = text(&o.stdout);
            assert_eq!(o.status.code(), Some(0), "{}", context(&o));
            assert!(out.contains("taking snapshot"), "{out}");
            assert!(out.contains("1 pass"), "{out}");
            let first = fs::read_to_string(dir.join("out/first/stdout")).unwrap();
            assert_eq!(first, "first\n");
        } else {
            let o = common::output({
                // isolcpus=1: the open 2-vCPU host limit (docs/host-limits.md).
                let mut c = common::guest_command(
                    &[
                        "--cpus".into(),
                        cpus.to_string(),
                        "--cmdline".into(),
                        common::cmdline("isolcpus=1"),
                        "--snapshot-on-ready".into(),
                        snap.display().to_string(),
                    ],
                    &["sh", "-c", "echo booted"],
                );
                c.stdin(Stdio::null());
                c
            });
            assert_eq!(o.status.code(), Some(0), "{}", context(&o));
            assert_eq!(text(&o.stdout), "booted\n");
        }
        assert!(snap.join("state.json").is_file());
        eprintln!(
            "[snapshot] Linux guest, {cpus} vCPU(s): booted and snapshotted in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        snap
    })
    .clone()
}

/// Restore `snap` and run `argv`; returns (status, stdout, report).
/// (A run that timed out is retried once, loudly: the open idle-guest
/// problem of docs/host-limits.md.)
fn restore_run(snap: &Path, report: &Path, argv: &[&str]) -> (i32, String, Value, Output) {
    let o = common::output({
        let mut c = splitvm();
        c.args(["run", "--restore"])
            .arg(snap)
            .args(["--timeout", "120", "--stats-json"])
            .arg(report)
            .arg("--")
            .args(argv);
        c
    });
    let r = fs::read_to_string(report)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), text(&o.stdout), r, o)
}

fn restore_twenty_times(cpus: u32) {
    let snap = linux_snapshot(cpus);
    let dir = scratch(&format!("runs-{cpus}"));
    let t = Instant::now();
    for i in 0..20u32 {
        let status = (i * 7 + cpus) % 11;
        // Padded so the control line's length runs from about 90 to 700
        // bytes: lines of 257-320 bytes once hung (a UART receive bug).
        let pad = "x".repeat(i as usize * 21);
        let cmd = format!(
            "echo run {i} on $(grep -c ^processor /proc/cpuinfo) cpus; exit {status} # {pad}"
        );
        let (code, out, r, o) =
            restore_run(&snap, &dir.join(format!("r{i}.json")), &["sh", "-c", &cmd]);
        let why = context(&o);
        assert_eq!(code, status as i32, "restore {i}: {why}");
        assert_eq!(
            out,
            format!("run {i} on {cpus} cpus\n"),
            "restore {i}: {why}"
        );
        assert_eq!(r["exit_reason"], "command-exit", "{why}");
        // Counted from the restore: a command's worth of exits, not a boot's.
        let io = num(&r, &["exits", "io"]);
        assert!(io > 0 && io < 20_000, "io exits {io}: {why}");
    }
    eprintln!(
        "[snapshot] 20 restores + commands, {cpus} vCPU(s): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn linux_snapshot_at_ready_restores_twenty_times_with_one_vcpu() {
    restore_twenty_times(1);
}

#[test]
fn linux_snapshot_at_ready_restores_twenty_times_with_two_vcpus() {
    restore_twenty_times(2);
}

#[test]
fn a_manifest_runs_its_cases_from_a_snapshot_and_retries_only_when_asked() {
    let snap = linux_snapshot(1);
    let dir = scratch("manifest");
    let manifest = dir.join("m.toml");
    fs::write(
        &manifest,
        format!(
            "[defaults]\nsnapshot = '{}'\ntimeout = 300\n\n[[case]]\nname = 'ok'\ncommand = 'true'\n\n[[case]]\nname = 'three'\ncommand = 'exit 3'\nexpect = 3\n\n[[case]]\nname = 'argv'\ncommand = ['echo', 'a b']\n\n[[case]]\nname = 'hangs'\ncommand = 'sleep 1000'\ntimeout = 4\n",
            snap.display()
        ),
    )
    .unwrap();
    // Without --retries a timed-out case runs once and is a timeout.
    let o = run_manifest(&manifest, &dir.join("out"), &[]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", context(&o));
    assert!(!out.contains("taking snapshot"), "it exists: {out}");
    assert!(out.contains("3 pass, 0 fail, 1 timeout"), "{out}");
    assert!(!out.contains("retry"), "{out}");
    // The timed-out case says what its guest was doing.
    let line = out.lines().find(|l| l.contains(" hangs ")).unwrap_or("");
    assert!(line.contains("; stuck: "), "{out}");
    let err = fs::read_to_string(dir.join("out/hangs/stderr")).unwrap();
    assert!(err.contains("splitvm: stuck? state at timeout"), "{err}");
    assert_eq!(
        fs::read_to_string(dir.join("out/argv/stdout")).unwrap(),
        "a b\n"
    );
    // --retries 1: the case runs once more and says so; still a timeout.
    let o = run_manifest(
        &manifest,
        &dir.join("out2"),
        &["--retries", "1", "--filter", "hangs"],
    );
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", context(&o));
    assert!(out.contains("0 pass, 0 fail, 1 timeout"), "{out}");
    assert!(out.contains("(retry 1; before:"), "{out}");
    let _ = fs::remove_dir_all(&dir);
}

/// Restore `snap` running `argv` (with `--snapshot-on-signal mid` when
/// given); once the command has printed "start", send `sig` (SIGUSR1
/// without `mid`: SIGUSR2) after each of `waits_ms`. Returns splitvm's
/// output and everything the command printed.
fn restore_and_signal(
    snap: &Path,
    mid: Option<&Path>,
    argv: &[&str],
    waits_ms: &[u64],
) -> (Output, String) {
    let sig = if mid.is_some() {
        libc::SIGUSR1
    } else {
        libc::SIGUSR2
    };
    let mut c = splitvm();
    c.args(["run", "--restore"]).arg(snap);
    if let Some(mid) = mid {
        c.arg("--snapshot-on-signal").arg(mid);
    }
    let mut child = c
        .args(["--timeout", "300", "--"])
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 256];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&text(&b[..n]));
            }
        })
    };
    let t = Instant::now();
    while !seen.lock().unwrap().contains("start") && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &wait in waits_ms {
        std::thread::sleep(Duration::from_millis(wait));
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    eprintln!("[snapshot] by signal after {:?}", t.elapsed());
    let o = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    (o, out)
}

/// SIGUSR2 prints what the guest is doing (src/forensics/) without
/// disturbing it: the command runs on to its own status and output.
#[test]
fn sigusr2_prints_a_running_linux_guests_state_and_its_command_still_ends_with_its_status() {
    let snap = linux_snapshot(1);
    let (o, out) = restore_and_signal(
        &snap,
        None,
        &["sh", "-c", "echo start; sleep 3; echo slept; exit 6"],
        &[300, 700],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{}", context(&o));
    assert_eq!(out, "start\nslept\n");
    assert_eq!(
        err.matches("splitvm: stuck? state at SIGUSR2").count(),
        2,
        "{err}"
    );
    assert_eq!(err.matches("\nsplitvm: stuck: ").count(), 2, "{err}");
    assert!(err.contains("  vCPU 0: "), "{err}");
    assert!(err.contains("  channel: "), "{err}");
}

#[test]
fn a_snapshot_taken_by_signal_mid_command_finishes_that_command_when_restored() {
    let snap = linux_snapshot(1);
    let dir = scratch("signal");
    let sig_snap = dir.join("mid");
    let (o, out) = restore_and_signal(
        &snap,
        Some(&sig_snap),
        &["sh", "-c", "echo start; sleep 4; echo slept; exit 4"],
        &[300],
    );
    assert_eq!(o.status.code(), Some(4), "{}", context(&o));
    assert_eq!(out, "start\nslept\n");
    assert!(sig_snap.join("state.json").is_file(), "{}", context(&o));

    // The command is not run again: only its end is left.
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(&sig_snap)
        .args(["--timeout", "300", "--serial", "none"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", context(&o));
    assert_eq!(text(&o.stdout), "slept\n", "{}", context(&o));
    // And it takes no new command.
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(&sig_snap)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("restore it without `-- CMD`"),
        "{}",
        context(&o)
    );
    let _ = fs::remove_dir_all(&dir);
}

// ---- virtio-blk ------------------------------------------------------------

/// md5sum of the first 2 MiB of `path`, by the host's md5sum.
fn host_md5_2m(path: &Path) -> String {
    let data = fs::read(path).unwrap();
    let n = data.len().min(2 << 20);
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    use std::io::Write;
    c.stdin.take().unwrap().write_all(&data[..n]).unwrap();
    let o = c.wait_with_output().unwrap();
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A snapshot of the Linux guest at ready with a read-only virtio-blk disk
/// (a copy of the initramfs) on `transport`; returns it and the disk.
fn disk_snapshot(transport: &str) -> (PathBuf, PathBuf) {
    static PCI: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    static MMIO: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let cell = if transport == "pci" { &PCI } else { &MMIO };
    cell.get_or_init(|| {
        let (_, initrd) = common::guest();
        let dir = scratch(&format!("disk-{transport}"));
        let disk = dir.join("disk.img");
        fs::copy(initrd, &disk).unwrap();
        let snap = dir.join("snap");
        let _one = common::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let o = common::output({
            common::guest_command(
                &[
                    "--disk".into(),
                    format!("{},readonly", disk.display()),
                    "--transport".into(),
                    transport.into(),
                    "--snapshot-on-ready".into(),
                    snap.display().to_string(),
                ],
                &["true"],
            )
        });
        assert_eq!(o.status.code(), Some(0), "{}", context(&o));
        (snap, disk)
    })
    .clone()
}

const READ_2M: &str = "dd if=/dev/vda bs=64k count=32 2>/dev/null | md5sum";

#[test]
fn a_linux_snapshot_with_a_virtio_blk_disk_restores_over_pci_and_mmio() {
    for transport in ["pci", "mmio"] {
        let (snap, disk) = disk_snapshot(transport);
        let want = host_md5_2m(&disk);
        let dir = scratch(&format!("disk-runs-{transport}"));
        for i in 0..3 {
            let (code, out, r, o) = restore_run(
                &snap,
                &dir.join(format!("r{i}.json")),
                &["sh", "-c", &format!("{READ_2M}; exit {}", 4 + i)],
            );
            let why = format!("{transport} restore {i}: {}", context(&o));
            assert_eq!(code, 4 + i, "{why}");
            assert_eq!(out.split_whitespace().next(), Some(want.as_str()), "{why}");
            assert_eq!(r["exit_reason"], "command-exit", "{why}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn virtio_blk_requests_in_flight_at_signal_snapshots_complete_exactly_once() {
    let (snap, disk) = disk_snapshot("pci");
    let want = host_md5_2m(&disk);
    let dir = scratch("disk-signal");
    let mid = dir.join("mid");
    // Eight uncached 2 MiB reads; two snapshots are taken while they run.
    let cmd = format!(
        "echo start; i=0; while [ $i -lt 8 ]; do echo 3 > /proc/sys/vm/drop_caches; \
         {READ_2M} >> /tmp/sums; i=$((i+1)); done; sort -u /tmp/sums; wc -l < /tmp/sums; exit 7"
    );
    let (o, out) = restore_and_signal(&snap, Some(&mid), &["sh", "-c", &cmd], &[1500, 1300]);
    assert_eq!(o.status.code(), Some(7), "{out}\n{}", context(&o));
    assert_eq!(out, format!("start\n{want}  -\n8\n"), "{}", context(&o));
    assert!(mid.join("state.json").is_file());

    // The second snapshot, restored: the reads left finish, each once.
    let report = dir.join("r.json");
    let o = common::output({
        let mut c = splitvm();
        c.args(["run", "--restore"])
            .arg(&mid)
            .args(["--timeout", "300", "--stats-json"])
            .arg(&report);
        c
    });
    assert_eq!(o.status.code(), Some(7), "{}", context(&o));
    assert_eq!(
        text(&o.stdout),
        format!("{want}  -\n8\n"),
        "{}",
        context(&o)
    );
    let _ = fs::remove_dir_all(&dir);
}

// ---- virtio-net ------------------------------------------------------------

#[test]
fn a_linux_snapshot_with_virtio_net_restores_and_the_network_works() {
    assert!(
        common::is_root(),
        "the virtio-net snapshot test needs root (a TAP in a network namespace); CI runs as root"
    );
    let ns = common::NetNs::new(&format!("spvm-snap-{}", std::process::id()), "spvmtap-s");
    let dir = scratch("net");
    let snap = dir.join("snap");
    let in_ns = |args: &[String]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_splitvm"))
            .args(args)
            .stdin(Stdio::null());
        c
    };
    {
        let (kernel, initrd) = common::guest();
        let _one = common::ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let o = common::output({
            in_ns(&[
                "run".into(),
                "--kernel".into(),
                kernel.display().to_string(),
                "--initrd".into(),
                initrd.display().to_string(),
                "--net".into(),
                "tap=spvmtap-s".into(),
                "--snapshot-on-ready".into(),
                snap.display().to_string(),
                "--timeout".into(),
                "300".into(),
                "--".into(),
                "true".into(),
            ])
        });
        assert_eq!(o.status.code(), Some(0), "{}", context(&o));
    }
    for i in 0..2 {
        let o = common::output({
            in_ns(&[
                "run".into(),
                "--restore".into(),
                snap.display().to_string(),
                "--timeout".into(),
                "120".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0 && \
                 ping -c 2 -W 10 10.0.2.1 >/dev/null && echo NET-OK"
                    .into(),
            ])
        });
        assert_eq!(o.status.code(), Some(0), "restore {i}: {}", context(&o));
        assert_eq!(text(&o.stdout), "NET-OK\n", "restore {i}: {}", context(&o));
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A snapshot of a guest on KVM's in-kernel irqchip (KVM_GET_IRQCHIP for
/// both 8259s and the I/O APIC, KVM_GET_PIT2) restores with its commands'
/// statuses and output; a restore that names the other mode is one line
/// (status 2 for a micro-guest, 253 with `-- CMD`) before any vCPU runs.
#[test]
fn a_kernel_irqchip_snapshot_restores_and_a_restore_in_the_other_mode_is_refused() {
    let dir = scratch("kernel-irqchip");
    let snap = dir.join("snap");
    let o = common::output({
        let mut c = common::guest_command(
            &[
                "--irqchip".into(),
                "kernel".into(),
                "--snapshot-on-ready".into(),
                snap.display().to_string(),
            ],
            &["sh", "-c", "echo booted"],
        );
        c.stdin(Stdio::null());
        c
    });
    assert_eq!(o.status.code(), Some(0), "{}", context(&o));
    for i in 0..5u32 {
        let cmd = format!("grep -c ttyS /proc/interrupts; exit {}", i + 3);
        let (code, out, r, o) =
            restore_run(&snap, &dir.join(format!("r{i}.json")), &["sh", "-c", &cmd]);
        assert_eq!(code, i as i32 + 3, "restore {i}: {}", context(&o));
        assert_eq!(out, "2\n", "restore {i}: {}", context(&o));
        assert_eq!(r["irqchip"], "kernel");
    }
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(&snap)
        .args(["--irqchip", "split", "--", "true"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(253), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("was taken with --irqchip kernel"), "{err}");
    // A split-mode micro-guest snapshot asked for in kernel mode.
    let o = splitvm()
        .args(["run", "--restore"])
        .arg(good_snapshot())
        .args(["--irqchip", "kernel"])
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("was taken with --irqchip split"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
