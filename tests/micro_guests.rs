//! Micro-guest tests: each test boots one tiny Multiboot guest from
//! `tests/guests` (assembled by build.rs) under the real splitvm binary on
//! /dev/kvm, and checks
//!  - the process exit status: 1, i.e. the guest wrote 0 to the
//!    isa-debug-exit port 0xf4 after all its own checks passed (a failing
//!    guest writes a code that names the check; see docs/micro-guests.md);
//!  - splitvm's own counters from `--stats-json`: EOI exits (none for edge
//!    interrupts and MSIs, exactly one per level-triggered delivery), and
//!    per-pin `raised` / `delivered` counts equal to what the guest did.
//!
//! No /dev/kvm is a failure, not a skip: CI has KVM.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;

/// Wall-clock limit per guest run; guests take well under a second here.
/// Each micro-guest finishes in 25-150 ms here (2026-12-07, 2 threads);
/// 10 s is a hang, even on a loaded CI machine.
const TIMEOUT: Duration = Duration::from_secs(10);

fn guest_path(name: &str) -> PathBuf {
    common::micro_guest(name)
}

fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        panic!(
            "/dev/kvm does not exist: the micro-guest tests run guests under KVM and \
             cannot pass without it (load the kvm module or run on a KVM-capable host)"
        );
    }
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(kvm) {
        panic!("/dev/kvm cannot be opened read-write ({e}): the micro-guest tests need KVM");
    }
}

struct GuestRun {
    name: String,
    serial: String,
    stderr: String,
    stats: Json,
}

impl GuestRun {
    fn context(&self) -> String {
        format!(
            "--- guest {} serial ---\n{}--- splitvm stderr ---\n{}",
            self.name, self.serial, self.stderr
        )
    }

    /// `exits.<kind>` (totals over vCPUs), 0 when absent.
    fn exits(&self, kind: &str) -> u64 {
        self.stats
            .get("exits")
            .and_then(|e| e.get(kind))
            .map_or(0, JsonExt::num)
    }

    /// `eoi_exits_per_vector["<vector>"]`, 0 when absent.
    fn eoi_exits(&self, vector: u8) -> u64 {
        self.stats
            .get("eoi_exits_per_vector")
            .and_then(|e| e.get(vector.to_string()))
            .map_or(0, JsonExt::num)
    }

    /// A field of `ioapic_pins[pin == n]`, 0 when the pin is not listed.
    fn pin(&self, n: u64, field: &str) -> u64 {
        self.stats
            .get("ioapic_pins")
            .map(JsonExt::items)
            .unwrap_or_default()
            .iter()
            .find(|p| p.get("pin").map(JsonExt::num) == Some(n))
            .and_then(|p| p.get(field))
            .map_or(0, JsonExt::num)
    }

    /// Pins with any delivery.
    fn delivering_pins(&self) -> Vec<u64> {
        self.stats
            .get("ioapic_pins")
            .map(JsonExt::items)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.get("delivered").map_or(0, JsonExt::num) > 0)
            .filter_map(|p| p.get("pin").map(JsonExt::num))
            .collect()
    }

    /// N from the guest's "count: vector V taken N" line.
    fn guest_count(&self, vector: u8) -> u64 {
        let prefix = format!("count: vector {vector} taken ");
        self.serial
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("guest printed no '{prefix}N' line\n{}", self.context()))
    }

    /// `msi_test_port.injected`, 0 when absent.
    fn msi_injected(&self) -> u64 {
        self.stats
            .get("msi_test_port")
            .and_then(|m| m.get("injected"))
            .map_or(0, JsonExt::num)
    }

    /// The guest printed exactly this line.
    fn expect_line(&self, want: &str) {
        assert!(
            self.serial.lines().any(|l| l.trim_end() == want),
            "expected the line '{want}'\n{}",
            self.context()
        );
    }

    fn expect(&self, what: &str, got: u64, want: u64) {
        assert_eq!(
            got,
            want,
            "{what}: got {got}, expected {want}\n{}",
            self.context()
        );
    }
}

/// Runs `name` with `cpus` vCPUs and the test devices; fails unless the
/// guest passed (exit status 1) and splitvm wrote a sane stats file.
fn run_guest(name: &str, cpus: u32) -> GuestRun {
    run_guest_with(name, cpus, &[])
}

/// [`run_guest`] with more `splitvm run` arguments.
fn run_guest_with(name: &str, cpus: u32, extra: &[&str]) -> GuestRun {
    require_kvm();
    let kernel = guest_path(name);
    assert!(
        kernel.is_file(),
        "micro-guest {} was not built",
        kernel.display()
    );
    // One directory per run: tests run in parallel and may boot the same guest.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run_no = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "splitvm-micro-{name}-{}-{run_no}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temporary directory");
    let serial_path = dir.join("serial.txt");
    let stats_path = dir.join("stats.json");

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitvm"))
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--cpus")
        .arg(cpus.to_string())
        .arg("--test-devices")
        .arg("--serial")
        .arg(format!("file:{}", serial_path.display()))
        .arg("--stats-json")
        .arg(&stats_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning splitvm");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));

    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for splitvm") {
            break Some(status);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = out.join().unwrap_or_default();
    let stderr = format!("{}{}", stdout, err.join().unwrap_or_default());
    let serial = fs::read_to_string(&serial_path).unwrap_or_default();
    let context =
        format!("--- guest {name} serial ---\n{serial}--- splitvm stdout+stderr ---\n{stderr}");

    let Some(status) = status else {
        panic!("guest {name} did not finish within {TIMEOUT:?}; splitvm killed\n{context}");
    };
    match status.code() {
        Some(1) => {}
        Some(code) if code & 1 == 1 => panic!(
            "guest {name} failed: exit status {code} = guest exit code {:#x} (see the FAIL line)\n{context}",
            code >> 1
        ),
        Some(code) => panic!("splitvm exited with status {code} (not a guest exit)\n{context}"),
        None => panic!("splitvm was killed by a signal ({status})\n{context}"),
    }
    assert!(
        serial.contains("PASS"),
        "guest {name} exited 0 without printing PASS\n{context}"
    );

    let text = fs::read_to_string(&stats_path)
        .unwrap_or_else(|e| panic!("no stats file {}: {e}\n{context}", stats_path.display()));
    let stats = serde_json::from_str::<Json>(&text)
        .unwrap_or_else(|e| panic!("stats JSON does not parse: {e}\n{text}"));
    let _ = fs::remove_dir_all(&dir);
    eprintln!("micro-guest {name}: passed in {elapsed:?}");

    let run = GuestRun {
        name: name.to_string(),
        serial,
        stderr,
        stats,
    };
    let version = run.stats.get("schema_version").map_or(0, JsonExt::num);
    assert!(
        version >= 1,
        "stats schema_version {version}\n{}",
        run.context()
    );
    assert_eq!(
        run.stats.get("exit_reason").and_then(Json::as_str),
        Some("debug-exit"),
        "exit_reason\n{}",
        run.context()
    );
    run.expect(
        "stats exit_status",
        run.stats.get("exit_status").map_or(0, JsonExt::num),
        1,
    );
    let vcpus = run
        .stats
        .get("vcpus")
        .map(JsonExt::items)
        .unwrap_or_default()
        .len();
    run.expect("vcpus in the stats", vcpus as u64, u64::from(cpus));
    run
}

/// No level-triggered interrupt: no EOI exit at all.
fn expect_no_eoi_exits(run: &GuestRun) {
    run.expect("EOI exits (exits.ioapic_eoi)", run.exits("ioapic_eoi"), 0);
    let per_vector = run
        .stats
        .get("eoi_exits_per_vector")
        .map(JsonExt::entries)
        .unwrap_or_default();
    assert!(
        per_vector.is_empty(),
        "EOI exits per vector: {per_vector:?}\n{}",
        run.context()
    );
}

#[test]
fn hello() {
    let run = run_guest("hello", 1);
    assert!(
        run.serial.contains("Hello from a splitvm micro-guest!"),
        "{}",
        run.context()
    );
    expect_no_eoi_exits(&run);
}

#[test]
fn edge_ioapic_vcpu0() {
    let run = run_guest("edge_ioapic_vcpu0", 1);
    // One pulse unmasked, one pulse masked.
    run.expect("pin 10 raised", run.pin(10, "raised"), 2);
    run.expect("pin 10 delivered", run.pin(10, "delivered"), 1);
    run.expect("pin 10 masked_drops", run.pin(10, "masked_drops"), 1);
    run.expect("pin 10 eoi", run.pin(10, "eoi"), 0);
    expect_no_eoi_exits(&run);
}

#[test]
fn edge_ioapic_other_vcpu() {
    let run = run_guest("edge_ioapic_other_vcpu", 2);
    run.expect("pin 10 raised", run.pin(10, "raised"), 1);
    run.expect("pin 10 delivered", run.pin(10, "delivered"), 1);
    expect_no_eoi_exits(&run);
}

/// Every delivery of a level pin costs exactly one EOI exit for its vector.
fn expect_level_accounting(run: &GuestRun, pin: u64, vector: u8, taken: u64) {
    run.expect(&format!("pin {pin} raised"), run.pin(pin, "raised"), 1);
    run.expect(
        &format!("pin {pin} delivered (= interrupts the guest took)"),
        run.pin(pin, "delivered"),
        taken,
    );
    run.expect(&format!("pin {pin} eoi"), run.pin(pin, "eoi"), taken);
    run.expect(
        &format!("EOI exits for vector {vector}"),
        run.eoi_exits(vector),
        taken,
    );
    run.expect(
        "EOI exits in all (exits.ioapic_eoi)",
        run.exits("ioapic_eoi"),
        taken,
    );
}

#[test]
fn level_ioapic() {
    let run = run_guest("level_ioapic", 1);
    let taken = run.guest_count(0x41);
    // 2 where the guest controls the EOI; at least 2 where KVM EOIs at
    // injection (kvm_pvm): see tests/guests/level_ioapic.S.
    assert!(
        taken >= 2,
        "guest took {taken} level interrupts, expected at least 2\n{}",
        run.context()
    );
    expect_level_accounting(&run, 11, 0x41, taken);
}

#[test]
fn mask_unmask_level() {
    let run = run_guest("mask_unmask_level", 1);
    let taken = run.guest_count(0x43);
    assert!(
        (1..=2).contains(&taken),
        "guest took {taken} interrupts\n{}",
        run.context()
    );
    expect_level_accounting(&run, 5, 0x43, taken);
}

#[test]
fn ioapic_directed_eoi() {
    let run = run_guest("ioapic_directed_eoi", 1);
    // Two assertions delivered to no CPU, each completed through the I/O
    // APIC's EOI register, never by a LAPIC EOI.
    run.expect("pin 7 raised", run.pin(7, "raised"), 2);
    run.expect("pin 7 delivered", run.pin(7, "delivered"), 2);
    run.expect(
        "pin 7 eoi (EOI-register writes that matched)",
        run.pin(7, "eoi"),
        2,
    );
    expect_no_eoi_exits(&run);
}

#[test]
fn logical_dest() {
    let run = run_guest("logical_dest", 2);
    run.expect("pin 3 raised", run.pin(3, "raised"), 3);
    run.expect("pin 3 delivered", run.pin(3, "delivered"), 3);
    expect_no_eoi_exits(&run);
}

#[test]
fn msi_test_port() {
    let run = run_guest("msi_test_port", 2);
    run.expect("msi_test_port.injected", run.msi_injected(), 2);
    assert!(
        run.delivering_pins().is_empty(),
        "I/O APIC pins delivered\n{}",
        run.context()
    );
    expect_no_eoi_exits(&run);
}

#[test]
fn ipi() {
    let run = run_guest("ipi", 3);
    assert!(
        run.delivering_pins().is_empty(),
        "I/O APIC pins delivered\n{}",
        run.context()
    );
    expect_no_eoi_exits(&run);
}

#[test]
fn lapic_timer() {
    let run = run_guest("lapic_timer", 1);
    if run.serial.contains("SKIP") {
        common::skip(
            "lapic_timer (TSC-deadline part)",
            "the guest found no TSC-deadline timer in CPUID",
        );
    }
    expect_no_eoi_exits(&run);
}

#[test]
fn x2apic() {
    let run = run_guest("x2apic", 1);
    expect_no_eoi_exits(&run);
}

// ---- reading the stats JSON ---------------------------------------------

type Json = serde_json::Value;

/// Lenient accessors: missing or mistyped values read as 0 / empty.
trait JsonExt {
    fn num(&self) -> u64;
    fn items(&self) -> Vec<Json>;
    fn entries(&self) -> Vec<(String, Json)>;
}

impl JsonExt for Json {
    fn num(&self) -> u64 {
        self.as_u64().unwrap_or(0)
    }
    fn items(&self) -> Vec<Json> {
        self.as_array().cloned().unwrap_or_default()
    }
    fn entries(&self) -> Vec<(String, Json)> {
        self.as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

#[test]
fn multiboot_cmdline_starts_with_the_image_path_as_qemu_writes_it() {
    let run = run_guest_with("cmdline", 1, &["--cmdline", "a b"]);
    let want = format!("cmdline: [{} a b]", guest_path("cmdline").display());
    run.expect_line(&want);
}

impl GuestRun {
    /// `pic.irqs[irq == n].<field>`, 0 when the IRQ is not listed.
    fn pic_irq(&self, n: u64, field: &str) -> u64 {
        self.stats
            .get("pic")
            .and_then(|p| p.get("irqs"))
            .map(JsonExt::items)
            .unwrap_or_default()
            .iter()
            .find(|p| p.get("irq").map(JsonExt::num) == Some(n))
            .and_then(|p| p.get(field))
            .map_or(0, JsonExt::num)
    }

    /// `pic.<field>`, 0 when absent.
    fn pic(&self, field: &str) -> u64 {
        self.stats
            .get("pic")
            .and_then(|p| p.get(field))
            .map_or(0, JsonExt::num)
    }
}

#[test]
fn pic_extint_uses_the_icw2_vector_base_and_honours_eoi_and_imr() {
    let run = run_guest("pic_extint", 1);
    run.expect("IRQ 5 raised", run.pic_irq(5, "raised"), 2);
    run.expect("IRQ 5 delivered", run.pic_irq(5, "delivered"), 2);
    run.expect("guest's count of vector 0x35", run.guest_count(53), 2);
    run.expect(
        "EOI writes (one non-specific, one specific)",
        run.pic("eoi_writes"),
        2,
    );
    run.expect(
        "IMR writes (2 in pic_init, unmask, mask, unmask)",
        run.pic("imr_writes"),
        5,
    );
    run.expect("spurious", run.pic("spurious"), 0);
    // The I/O APIC pin of the same line stayed masked: it saw both edges
    // and delivered nothing.
    run.expect("I/O APIC pin 5 delivered", run.pin(5, "delivered"), 0);
    expect_no_eoi_exits(&run);
}

#[test]
fn pic_elcr_level_input_on_the_slave_is_delivered_again_while_high() {
    let run = run_guest("pic_level", 1);
    run.expect("IRQ 10 raised", run.pic_irq(10, "raised"), 1);
    run.expect("IRQ 10 delivered", run.pic_irq(10, "delivered"), 2);
    run.expect("guest's count of vector 0x3a", run.guest_count(58), 2);
    run.expect(
        "EOI writes (slave + master, twice)",
        run.pic("eoi_writes"),
        4,
    );
    expect_no_eoi_exits(&run);
}

/// Automatic EOI with two requests pending: after the INTA of the first the
/// output stays high, and vCPU 0 must ask for another interrupt window
/// (nothing else wakes it: the handlers do no port I/O).
#[test]
fn pic_in_auto_eoi_mode_delivers_a_second_pending_request_to_a_halted_vcpu() {
    let run = run_guest("pic_aeoi", 1);
    for irq in [3, 4] {
        run.expect(&format!("IRQ {irq} raised"), run.pic_irq(irq, "raised"), 50);
        run.expect(
            &format!("IRQ {irq} delivered"),
            run.pic_irq(irq, "delivered"),
            50,
        );
    }
    run.expect("guest's count of vector 0x33", run.guest_count(0x33), 50);
    run.expect("guest's count of vector 0x34", run.guest_count(0x34), 50);
    run.expect("EOI writes (automatic EOI)", run.pic("eoi_writes"), 0);
    run.expect("spurious", run.pic("spurious"), 0);
}

#[test]
fn pic_delivers_pending_requests_by_priority_and_the_slave_through_the_cascade() {
    let run = run_guest("pic_priority", 1);
    for irq in [3, 6, 12] {
        run.expect(&format!("IRQ {irq} raised"), run.pic_irq(irq, "raised"), 1);
        run.expect(
            &format!("IRQ {irq} delivered"),
            run.pic_irq(irq, "delivered"),
            1,
        );
    }
    let windows = run.pic("irq_window_exits");
    assert!(
        windows >= 1,
        "the requests came with interrupts off: delivery needs interrupt-window exits (got {windows})\n{}",
        run.context()
    );
    run.expect(
        "exits.irq_window = pic.irq_window_exits",
        run.exits("irq_window"),
        windows,
    );
}

#[test]
fn a_guest_that_never_programs_the_pic_gets_nothing_from_it() {
    // hello never touches the PIC; the firmware state masks every input.
    let run = run_guest("hello", 1);
    assert!(
        run.stats.get("pic").is_none_or(|p| p.is_null()),
        "no PIC section expected\n{}",
        run.context()
    );
}

#[test]
fn hidden_x2apic_leaves_cpuid_bit_21_clear_and_logical_ipis_work_in_xapic_mode() {
    let run = run_guest_with("xapic_only", 2, &["--cpu-features=-x2apic"]);
    assert!(
        run.serial.contains("ok: CPUID.1:ECX[21] (x2APIC) is clear"),
        "{}",
        run.context()
    );
}

#[test]
fn an_absent_device_has_no_row_in_the_table_or_the_json() {
    let run = run_guest_with("hello", 1, &["--no-pit", "--stats"]);
    let names: Vec<String> = run
        .stats
        .get("sources")
        .map(JsonExt::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    assert!(
        names.iter().all(|n| !n.split('+').any(|x| x == "pit")),
        "--no-pit left a pit source in the JSON: {names:?}\n{}",
        run.context()
    );
    assert!(
        names.iter().any(|n| n == "serial"),
        "the serial port (present) lost its row: {names:?}"
    );
    assert!(
        !run.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("pit (")),
        "--no-pit left a pit row in the table\n{}",
        run.context()
    );
    // With the PIT present, its row is there.
    let with = run_guest_with("hello", 1, &["--stats"]);
    assert!(
        with.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("pit (pin 2)")),
        "{}",
        with.context()
    );
}

/// A short run of the timer stress guest (scripts/stress-timer.sh runs
/// 100,000 iterations under load, beside QEMU): every TSC-deadline expiry
/// reaches the halted vCPU, and the PIT watchdog runs beside it.
#[test]
fn timer_stress_short_run_loses_no_tsc_deadline_expiry() {
    let run = run_guest_with("timer_stress", 1, &["--cmdline", "iterations=300"]);
    run.expect_line("iterations 300");
    run.expect_line("lost 0");
    assert!(
        run.pin(2, "delivered") > 0,
        "the PIT watchdog ticked\n{}",
        run.context()
    );
    expect_no_eoi_exits(&run);
}

// ---- the same guests with KVM's in-kernel irqchip (--irqchip kernel) -----
//
// The guests assert their own behaviour either way. What splitvm's report
// can say differs: KVM's I/O APIC and 8259 count nothing splitvm reads, so
// the kernel-mode equivalent of the userspace counters is the guest's own
// count, the rising edges splitvm drives on each pin's line (the source
// rows' `raised`), and the absence of any EOI exit. ioapic_directed_eoi
// runs in split mode only: it tests the EOI register of splitvm's version
// 0x20 I/O APIC, which KVM's (0x11, checked by edge_ioapic_vcpu0) has not.

impl GuestRun {
    /// `sources[id == "ioapic-pin-N"].raised` (None when absent or null).
    fn source_raised(&self, pin: u64) -> Option<u64> {
        let id = format!("ioapic-pin-{pin}");
        self.stats
            .get("sources")
            .map(JsonExt::items)
            .unwrap_or_default()
            .iter()
            .find(|s| s.get("id").and_then(|i| i.as_str()) == Some(&id))
            .and_then(|s| s.get("raised"))
            .and_then(Json::as_u64)
    }
}

/// Run `name` with `--irqchip kernel` and check what holds for every guest
/// there: the report names the mode, no EOI exit happened, and there are
/// no userspace I/O APIC or 8259 counters.
fn run_kernel(name: &str, cpus: u32, extra: &[&str]) -> GuestRun {
    let mut args = vec!["--irqchip", "kernel"];
    args.extend_from_slice(extra);
    let run = run_guest_with(name, cpus, &args);
    assert_eq!(
        run.stats.get("irqchip").and_then(|m| m.as_str()),
        Some("kernel"),
        "{}",
        run.context()
    );
    expect_no_eoi_exits(&run);
    assert!(
        run.stats
            .get("ioapic_pins")
            .map(JsonExt::items)
            .unwrap_or_default()
            .is_empty(),
        "KVM's I/O APIC has no userspace counters\n{}",
        run.context()
    );
    assert!(
        run.stats.get("pic").is_none_or(|p| p.is_null()),
        "{}",
        run.context()
    );
    run
}

#[test]
fn kernel_irqchip_edge_pins_deliver_and_splitvm_counts_the_edges_it_drives() {
    // KVM's I/O APIC is version 0x11 (17).
    let run = run_kernel("edge_ioapic_vcpu0", 1, &["--cmdline", "ioapic_version=17"]);
    run.expect("pin 10 edges driven", run.source_raised(10).unwrap_or(0), 2);
    let run = run_kernel("edge_ioapic_other_vcpu", 2, &[]);
    run.expect("pin 10 edges driven", run.source_raised(10).unwrap_or(0), 1);
    let run = run_kernel("logical_dest", 2, &[]);
    run.expect("pin 3 edges driven", run.source_raised(3).unwrap_or(0), 3);
}

#[test]
fn kernel_irqchip_level_pins_end_in_kvm_without_eoi_exits() {
    let run = run_kernel("level_ioapic", 1, &[]);
    assert!(run.guest_count(0x41) >= 2, "{}", run.context());
    run.expect("pin 11 edges driven", run.source_raised(11).unwrap_or(0), 1);
    let run = run_kernel("mask_unmask_level", 1, &[]);
    assert!(
        (1..=2).contains(&run.guest_count(0x43)),
        "{}",
        run.context()
    );
    run.expect("pin 5 edges driven", run.source_raised(5).unwrap_or(0), 1);
}

#[test]
fn kernel_irqchip_8259_guests_take_their_interrupts_from_kvms_pic() {
    let run = run_kernel("pic_extint", 1, &[]);
    run.expect("guest's count of vector 0x35", run.guest_count(53), 2);
    run.expect("IRQ 5 edges driven", run.source_raised(5).unwrap_or(0), 2);
    let run = run_kernel("pic_level", 1, &[]);
    run.expect("guest's count of vector 0x3a", run.guest_count(58), 2);
    let run = run_kernel("pic_priority", 1, &[]);
    for pin in [3, 6, 12] {
        run.expect(
            &format!("IRQ {pin} edges driven"),
            run.source_raised(pin).unwrap_or(0),
            1,
        );
    }
    let run = run_kernel("pic_aeoi", 1, &[]);
    run.expect("guest's count of vector 0x33", run.guest_count(0x33), 50);
    run.expect("guest's count of vector 0x34", run.guest_count(0x34), 50);
}

#[test]
fn kernel_irqchip_msi_ipi_lapic_and_timer_guests_pass() {
    let run = run_kernel("msi_test_port", 2, &[]);
    run.expect("msi_test_port.injected", run.msi_injected(), 2);
    run_kernel("ipi", 3, &[]);
    run_kernel("lapic_timer", 1, &[]);
    run_kernel("x2apic", 1, &[]);
    run_kernel("xapic_only", 2, &["--cpu-features=-x2apic"]);
    run_kernel("hello", 1, &[]);
    // KVM's own PIT is the watchdog here; splitvm drives no pin 2 line.
    let run = run_kernel("timer_stress", 1, &["--cmdline", "iterations=300"]);
    run.expect_line("lost 0");
    assert_eq!(run.source_raised(2), None, "{}", run.context());
}
