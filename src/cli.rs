//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "splitvm",
    version,
    about = "KVM microVMs with a split irqchip: LAPIC in the kernel, I/O APIC and MSI routing in userspace"
)]
pub struct Cli {
    /// Which of splitvm's own messages go to stderr: off, error, warn,
    /// info, debug, trace (each place in the code prints at most 5).
    #[arg(long, global = true, value_name = "LEVEL", default_value = "warn", value_parser = crate::logger::parse_level)]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest and run it until it stops; with `-- CMD ARGS...`, run
    /// CMD in the guest and exit with its status.
    Run(Box<RunArgs>),
    /// Run a manifest of guest test cases in parallel (docs/ci-runner.md).
    Test(TestArgs),
    /// Measure the life of an interrupt on every delivery path (8259, I/O
    /// APIC edge and level, MSI, MSI-X, IPI, LAPIC timer) in each irqchip
    /// mode: exits and latency side by side (docs/interrupt-paths.md).
    Paths(crate::paths::PathsArgs),
    /// A live view of a running VM's exits by reason, device, interrupt
    /// source and vCPU, from its API socket, as kvm_stat shows KVM's
    /// (docs/top.md).
    Top(crate::top::TopArgs),
    /// A picture of a run: `REPORT.json --svg OUT.svg` draws its exits by
    /// interrupt source and device; `--stats-series DIR --svg OUT.svg` the
    /// timeline of exits per source over the run (docs/report.md).
    Report(crate::picture::ReportArgs),
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// The manifest (TOML, docs/ci-runner.md).
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
    /// Cases run at once (default: the host's CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Run only shard K of N (1-based): the cases whose position in the
    /// manifest is K-1 modulo N. Every case runs in exactly one shard.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Where each case's console log, output and exit report go.
    #[arg(long, value_name = "DIR", default_value = "splitvm-test-out")]
    pub output: PathBuf,
    /// Run only the cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Run a case that timed out or errored up to N more times; a case
    /// that passes on a retry is reported as flaky (its detail says so).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Print the names of the cases that would run (after --shard and
    /// --filter), one a line, and run nothing.
    #[arg(long)]
    pub list: bool,
    /// Progress line on stderr: auto (when stderr is a terminal), always, never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub progress: String,
    /// Give every case's VM an API socket, DIR/CASE.sock (a case's own
    /// `api_socket` key wins), for `splitvm top` or curl (docs/api.md).
    #[arg(long, value_name = "DIR")]
    pub api_sockets: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    /// Multiboot header, else ELF vmlinux, else bzImage.
    Auto,
    /// Multiboot v1 (ELF32/ELF64 with a multiboot header, or a.out kludge).
    Multiboot,
    /// Linux ELF vmlinux.
    Elf,
    /// Linux bzImage.
    Bzimage,
    /// Flat binary loaded at --load-addr, started at --entry.
    Raw,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// virtio-pci with MSI-X (one GSI and irqfd per vector).
    Pci,
    /// virtio-mmio, each device on its own I/O APIC pin (5, 6, ...).
    Mmio,
}

/// An option that is on or off.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    On,
    Off,
}

/// Faults a test can inject (hidden option `--fault-inject`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultInject {
    PanicVcpu,
    SeccompVcpu,
    /// Not a fault: vCPU 0 allocates and frees 4 MiB in small blocks, so
    /// glibc shrinks its thread arena (which once ended the VM under
    /// seccomp, docs/security.md).
    ArenaShrinkVcpu,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, first 4 GiB identity-mapped.
    #[value(name = "64")]
    Long,
    /// 32-bit protected mode, paging off.
    #[value(name = "32")]
    Protected,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Guest kernel image.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (Linux) or module (multiboot).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. Without it a Linux guest gets
    /// `console=ttyS0 reboot=k panic=-1` (plus what this host needs, see
    /// docs/host-limits.md); a multiboot guest gets an empty one.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Do not write ACPI tables (RSDP, XSDT, FADT, DSDT, MADT, MCFG) for a
    /// Linux guest; the ACPI power-management ports go away with them.
    #[arg(long)]
    pub no_acpi: bool,
    /// Do not write the Intel MP table for a Linux guest.
    #[arg(long)]
    pub no_mptable: bool,
    /// CPU features to take away from the guest, comma-separated: `-x2apic`
    /// (CPUID.1:ECX[21] clear, so the guest stays in xAPIC mode; KVM refuses
    /// the x2APIC enable bit), `-tsc-deadline` (CPUID.1:ECX[24] clear: Linux
    /// then needs a PIT or LAPIC-timer calibration).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_cpu_feature)]
    pub cpu_features: Vec<String>,
    /// Number of vCPUs (vCPU id = APIC ID), up to KVM's limit; a Linux guest
    /// with more than 254 gets ACPI tables only (docs/acpi.md).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Guest RAM, e.g. 128M, 1G.
    #[arg(long, value_name = "SIZE", default_value = "128M")]
    pub memory: String,
    /// Where the guest's serial console goes: stdout, stderr, none or
    /// file:PATH. Default: stdout; with `-- CMD`, none (the last lines are
    /// printed on stderr if the command does not report a status).
    #[arg(long, value_name = "DEST")]
    pub serial: Option<String>,
    /// Put a host file or directory into the guest at GUESTPATH (default:
    /// /NAME), by appending a cpio archive to --initrd. Repeatable.
    #[arg(long, value_name = "HOSTPATH[:GUESTPATH]")]
    pub add: Vec<String>,
    /// Add the test devices (isa-debug-exit, pc-testdev, fw_cfg, MSI test port).
    #[arg(long)]
    pub test_devices: bool,
    /// Print the exit report table on stderr when the VM stops.
    #[arg(long)]
    pub stats: bool,
    /// Write the exit report as JSON (docs/stats-schema.md).
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,
    /// How to read --kernel.
    #[arg(long, value_enum, default_value_t = KernelFormat::Auto)]
    pub kernel_format: KernelFormat,
    /// Entry point for --kernel-format raw (hex with 0x, or decimal).
    #[arg(long, value_name = "ADDR", value_parser = parse_u64)]
    pub entry: Option<u64>,
    /// Load address for --kernel-format raw.
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, default_value = "0x100000")]
    pub load_addr: u64,
    /// CPU mode at the raw entry point.
    #[arg(long, value_enum, default_value_t = EntryMode::Long)]
    pub entry_mode: EntryMode,
    /// Enter an ELF vmlinux through its PVH entry point (32-bit) instead of
    /// the 64-bit Linux boot protocol.
    #[arg(long)]
    pub pvh: bool,
    /// A virtio-blk disk backed by a host file: PATH[,readonly]. Repeatable.
    #[arg(long, value_name = "PATH[,readonly]")]
    pub disk: Vec<String>,
    /// A virtio-net device on a host TAP: tap=NAME[,mac=XX:XX:XX:XX:XX:XX]. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// Transport for --disk and --net devices.
    #[arg(long, value_enum, default_value_t = Transport::Pci)]
    pub transport: Transport,
    /// The UARTs' transmit registers through KVM's coalesced PIO ring: on
    /// (the default: a guest's writes there do not exit, docs/coalesced-io.md)
    /// or off (every write exits, as before).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Toggle::On)]
    pub coalesced_io: Toggle,
    /// The irqchip: split (the default: KVM's LAPICs; splitvm's I/O APIC,
    /// 8259 pair, PIT and every route) or kernel (KVM's own 8259 pair,
    /// I/O APIC and PIT). With --restore, only the snapshot's own mode.
    #[arg(long, value_enum, value_name = "MODE")]
    pub irqchip: Option<crate::irqchip::IrqChipMode>,
    /// Leave out the i8254 PIT (pin 2). Linux guests with kvmclock and the
    /// TSC-deadline timer do not need it; see docs/guest-kernel.md.
    #[arg(long)]
    pub no_pit: bool,
    /// Pin vCPU i to the i-th host CPU this process may use (wrapping).
    #[arg(long)]
    pub pin_vcpus: bool,
    /// Stop the VM after this many seconds (exit status 6).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// Progress line on stderr while the guest runs: auto (when stderr is a terminal), always, never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub progress: String,
    /// With --stats-json: rewrite the JSON file every SECS seconds while the
    /// VM runs (atomically: a temporary file renamed over it); with
    /// --stats-series: add one file per interval.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    pub stats_interval: Option<f64>,
    /// Tell KVM not to exit on these guest instructions
    /// (KVM_CAP_X86_DISABLE_EXITS): comma-separated hlt, pause, mwait, cstate.
    #[arg(long, value_name = "LIST", value_parser = crate::host::parse_disable_exits)]
    pub disable_exits: Option<u32>,
    /// Trace KVM's interrupt and exit events for this VM (root, tracefs) and
    /// attribute them to interrupt sources in the report.
    #[arg(long)]
    pub trace_exits: bool,
    /// seccomp filters on every thread (docs/security.md): kill (a call
    /// outside a thread's allow-list stops splitvm, status 12), log (the
    /// kernel logs it, the call goes through), off.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = crate::seccomp::Mode::Kill)]
    pub seccomp: crate::seccomp::Mode,
    /// Test-only fault injection (docs/security.md): `panic-vcpu` panics
    /// vCPU 0's thread at its first exit; `seccomp-vcpu` makes vCPU 0 call
    /// a system call outside its seccomp allow-list; `arena-shrink-vcpu`
    /// makes vCPU 0 shrink its malloc arena.
    #[arg(long, hide = true, value_name = "FAULT")]
    pub fault_inject: Option<FaultInject>,
    /// Take a snapshot into DIR when the guest first says it is ready (the
    /// agent's `ready` with `-- CMD`, or a write to the test devices'
    /// ready port), then go on (docs/snapshot.md).
    #[arg(long, value_name = "DIR")]
    pub snapshot_on_ready: Option<PathBuf>,
    /// Take a snapshot into DIR each time splitvm gets SIGUSR1 (the VM goes
    /// on; a later snapshot replaces the earlier one).
    #[arg(long, value_name = "DIR")]
    pub snapshot_on_signal: Option<PathBuf>,
    /// Start from the snapshot in DIR instead of booting: the machine
    /// (vCPUs, memory, devices) is the snapshot's; with `-- CMD` the
    /// restored guest's agent runs CMD.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "cpus", "memory", "initrd", "cmdline", "add", "disk", "net", "transport", "test_devices", "no_pit", "no_acpi", "no_mptable", "cpu_features", "pvh", "entry", "disable_exits"])]
    pub restore: Option<PathBuf>,
    /// Run this command in the guest (through the splitvm agent of the
    /// initramfs, docs/ci-runner.md), stream its stdout and stderr, and exit
    /// with its status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Serve the VM's API on this Unix socket while it runs: HTTP/1.1 in
    /// Cloud Hypervisor's style (`curl --unix-socket PATH
    /// http://localhost/api/v1/vm.counters`; docs/api.md). Mode 0600,
    /// removed at exit; an existing file that is not a socket is refused.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// With --stats-interval: keep every interval's report in DIR
    /// (000000.json, 000001.json, ...; the final report too), for
    /// `splitvm report --stats-series DIR` (a timeline).
    #[arg(long, value_name = "DIR", requires = "stats_interval")]
    pub stats_series: Option<PathBuf>,
}

impl RunArgs {
    /// The kernel image (empty when restoring a snapshot, which needs none).
    pub fn kernel(&self) -> &PathBuf {
        static NONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        self.kernel
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(PathBuf::new))
    }

    /// True in `splitvm run ... -- CMD` (command mode).
    pub fn command_mode(&self) -> bool {
        !self.command.is_empty()
    }
}

pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16)
    } else {
        s.replace('_', "").parse()
    };
    r.map_err(|_| format!("'{s}' is not a number"))
}

/// The longest `--timeout` and `--stats-interval` (one year): anything
/// longer is a mistake, and it keeps every `Duration` conversion in range.
pub const MAX_SECONDS: f64 = 365.0 * 86_400.0;

fn seconds_in(s: &str, min: f64, what: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= min && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "'{s}' is not {what} in seconds (from {min} to {MAX_SECONDS})"
        )),
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.05, "an interval")
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    seconds_in(s, 0.001, "a timeout")
}

/// Parse "128M", "1G", "65536", "512K" into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_cpu_feature(s: &str) -> Result<String, String> {
    match s {
        "-x2apic" | "-tsc-deadline" => Ok(s.to_string()),
        _ => Err(format!(
            "unknown CPU feature change '{s}' (known: -x2apic, -tsc-deadline)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_k_m_g_suffixes() {
        assert_eq!(parse_size("128M"), Some(128 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn timeouts_and_intervals_out_of_range_are_refused() {
        for bad in [
            "inf",
            "-inf",
            "nan",
            "NaN",
            "1e19",
            "1e300",
            "18446744073709551615",
            "0",
            "-1",
            "x",
        ] {
            assert!(parse_timeout(bad).is_err(), "--timeout {bad}");
            assert!(parse_interval(bad).is_err(), "--stats-interval {bad}");
        }
        assert_eq!(parse_timeout("2.5"), Ok(2.5));
        assert_eq!(parse_interval("0.05"), Ok(0.05));
        assert!(parse_interval("0.01").is_err());
        assert_eq!(parse_timeout("31536000"), Ok(MAX_SECONDS));
    }

    #[test]
    fn numbers_accept_hex_and_decimal() {
        assert_eq!(parse_u64("0x100000"), Ok(0x100000));
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert!(parse_u64("zz").is_err());
    }
}
