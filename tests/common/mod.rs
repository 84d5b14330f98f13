//! Helpers shared by the integration tests: booting the project's guest
//! kernel (resources/guest, built by scripts/build-guest-kernel.sh) with its
//! busybox initramfs, reading what the guest's /init printed, running
//! commands in the guest, and checking reports against the JSON schema.
//!
//! On this project's development hosts guest kernel code is emulated, so a
//! boot takes 25-50 s: each boot is bounded (SPLITVM_BOOT_TIMEOUT, default
//! 300 s) and prints progress every 15 s.

#![allow(dead_code)]

pub mod schema;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path printed on the last stdout line of a build script (cached builds
/// are instant). The environment can name prebuilt files instead.
fn built(var: &str, script: &str) -> PathBuf {
    built_with(var, script, &[])
}

fn built_with(var: &str, script: &str, args: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    eprintln!("[linux_boot] {var} not set: running {script} {args:?} (first build takes minutes)");
    let out = Command::new(repo().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("script printed a path").trim())
}

pub fn guest() -> &'static (PathBuf, PathBuf) {
    static G: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    G.get_or_init(|| {
        (
            built("SPLITVM_GUEST_KERNEL", "scripts/build-guest-kernel.sh"),
            built("SPLITVM_GUEST_INITRD", "scripts/build-initramfs.sh"),
        )
    })
}

/// The ACPI variant of the guest kernel (ACPI on, MP table parser off):
/// `scripts/build-guest-kernel.sh acpi`, or SPLITVM_GUEST_KERNEL_ACPI.
pub fn acpi_kernel() -> &'static PathBuf {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        built_with(
            "SPLITVM_GUEST_KERNEL_ACPI",
            "scripts/build-guest-kernel.sh",
            &["acpi"],
        )
    })
}

/// A micro-guest of tests/guests, as build.rs assembled it.
pub fn micro_guest(name: &str) -> PathBuf {
    PathBuf::from(env!("SPLITVM_MICRO_GUESTS_DIR")).join(format!("{name}.elf"))
}

pub fn cmdline(extra: &str) -> String {
    let out = Command::new(repo().join("scripts/guest-cmdline.sh"))
        .arg(extra)
        .output()
        .expect("run scripts/guest-cmdline.sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Boots run one at a time: two emulated kernels on a 2-core host would
/// just slow each other down.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Boot {
    pub status: i32,
    pub serial: String,
    pub stats: serde_json::Value,
    pub secs: f64,
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn boot(name: &str, cpus: u32, extra_args: &[&str], extra_cmdline: &str) -> Boot {
    boot_wrapped(&[], name, cpus, extra_args, extra_cmdline)
}

/// [`boot`] with splitvm started through `wrapper` (e.g. `ip netns exec NS`).
pub fn boot_wrapped(
    wrapper: &[&str],
    name: &str,
    cpus: u32,
    extra_args: &[&str],
    extra_cmdline: &str,
) -> Boot {
    boot_kernel(wrapper, &guest().0, name, cpus, extra_args, extra_cmdline)
}

/// [`boot_wrapped`] of another guest kernel (with the same initramfs).
pub fn boot_kernel(
    wrapper: &[&str],
    kernel: &std::path::Path,
    name: &str,
    cpus: u32,
    extra_args: &[&str],
    extra_cmdline: &str,
) -> Boot {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("splitvm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let serial = dir.join("serial.log");
    let json = dir.join("stats.json");
    let timeout: u64 = std::env::var("SPLITVM_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        // Boots take 25-50 s here (2026-12-07); 300 s is a hang.
        .unwrap_or(300);
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_splitvm"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_splitvm")),
    };
    cmd.args(["run", "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", &cmdline(extra_cmdline)])
        .args(["--cpus", &cpus.to_string(), "--memory", "256M"])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--stats-json")
        .arg(&json)
        .args(["--timeout", &timeout.to_string(), "--progress", "never"])
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn splitvm");
    let mut last = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait splitvm") {
            break st;
        }
        if last.elapsed() >= Duration::from_secs(15) {
            last = Instant::now();
            let log = std::fs::read_to_string(&serial).unwrap_or_default();
            eprintln!(
                "[{name} {:5.0}s] {}",
                start.elapsed().as_secs_f64(),
                log.lines().last().unwrap_or("(no serial output yet)")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let secs = start.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let stats = std::fs::read_to_string(&json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let code = status.code().unwrap_or(-1);
    eprintln!("[{name}] splitvm exited with status {code} after {secs:.1} s");
    if code == 6 {
        panic!(
            "{name}: no reboot within {timeout} s; last serial lines:\n{}\nsplitvm stderr:\n{stderr}",
            tail(&log, 40)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Boot {
        status: code,
        serial: log,
        stats,
        secs,
    }
}

/// The guest's /proc/interrupts, as printed by the project's /init.
pub fn proc_interrupts(serial: &str) -> String {
    let start = serial.find("--- /proc/interrupts ---").map(|i| i + 25);
    let end = serial.find("--- end ---");
    match (start, end) {
        (Some(s), Some(e)) if e > s => serial[s..e].to_string(),
        _ => String::new(),
    }
}

/// Standard base64, for `splitvm.run64=` guest commands.
pub fn base64(data: &[u8]) -> String {
    devices::channel::base64_encode(data)
}

/// Kernel command-line argument that makes the project's /init run `cmd`.
pub fn run_in_guest(cmd: &str) -> String {
    format!("splitvm.run64={}", base64(cmd.as_bytes()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub use devices::test_env::skip;

/// [`skip`] unless the test runs as root; returns whether it may go on.
pub fn needs_root(test: &str, what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root ({what})"));
    false
}

/// `splitvm run` of the project's guest kernel and initramfs in command
/// mode: `--timeout 300`, then `extra`, then `-- argv`, stdin closed.
pub fn guest_command(extra: &[String], argv: &[&str]) -> Command {
    let (kernel, initrd) = guest();
    let mut c = Command::new(env!("CARGO_BIN_EXE_splitvm"));
    c.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--timeout", "300"])
        .args(extra)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null());
    c
}

/// Run `c` to its end and collect its output. No retry: a run that hangs
/// ends with `--timeout`, its status and splitvm's account of why on
/// stderr, and the test that made it fails with that in its message.
pub fn output(mut c: Command) -> std::process::Output {
    c.output().expect("run splitvm")
}

pub fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A network namespace with a TAP at 10.0.2.1/24, removed on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str, tap: &str) -> NetNs {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        let ns = NetNs { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", name, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ]);
        ip(&["-n", name, "addr", "add", "10.0.2.1/24", "dev", tap]);
        ip(&["-n", name, "link", "set", tap, "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
