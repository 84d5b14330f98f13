//! One machine description (as Cloud Hypervisor's `VmConfig` and
//! Firecracker's `VmResources`): built once from `splitvm run`'s command
//! line (a manifest case becomes one), with a snapshot's machine laid over
//! it for a restore (snapshot::Machine::apply). The stages (platform,
//! loader, vCPUs, supervisor) read this, never the command line.

use std::path::PathBuf;

use arch::layout::MIN_MEMORY;

use crate::cli::{parse_size, EntryMode, FaultInject, KernelFormat, RunArgs, Toggle, Transport};
use crate::error::{Error, Result};
use crate::irqchip::IrqChipMode;

/// Most vCPUs `--cpus` takes before asking KVM (x86 KVM allows at most 4096
/// with CONFIG_MAXSMP; the host's own limit, KVM_CAP_MAX_VCPUS, is checked
/// next). Past 254 only ACPI can describe them (the MP table has 8-bit IDs).
pub const MAX_CPUS: u32 = 4096;

/// Where `--serial` sends the guest's console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialDest {
    Stdout,
    Stderr,
    Sink,
    File(PathBuf),
}

impl SerialDest {
    pub fn parse(spec: &str) -> Result<SerialDest> {
        match spec {
            "stdout" => Ok(SerialDest::Stdout),
            "stderr" => Ok(SerialDest::Stderr),
            "none" => Ok(SerialDest::Sink),
            s => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialDest::File(p.into())),
                _ => Err(Error::SerialSyntax(s.to_string())),
            },
        }
    }
}

/// The guest image and how it starts (a boot; a restore has none).
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub kernel: PathBuf,
    /// `--kernel-format` (Auto until [`VmConfig::detect_format`]).
    pub format: KernelFormat,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// `--add HOSTPATH[:GUESTPATH]`, appended to the initrd.
    pub add: Vec<String>,
    pub entry: Option<u64>,
    pub load_addr: u64,
    pub entry_mode: EntryMode,
    pub pvh: bool,
    pub mptable: bool,
}

/// How the VM is run, watched and reported (nothing the guest sees).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub serial: SerialDest,
    /// `--serial` was given (a restored channel guest's console otherwise
    /// goes nowhere, as in `-- CMD`).
    pub serial_given: bool,
    /// `-- CMD` for the guest's agent (empty: no command).
    pub command: Vec<String>,
    pub stats: bool,
    pub stats_json: Option<PathBuf>,
    pub stats_interval: Option<f64>,
    /// `--stats-series DIR`: every interval's report kept, numbered.
    pub stats_series: Option<PathBuf>,
    pub timeout: Option<f64>,
    pub progress: bool,
    pub disable_exits: Option<u32>,
    pub trace_exits: bool,
    pub seccomp: crate::seccomp::Mode,
    pub pin_vcpus: bool,
    pub fault_inject: Option<FaultInject>,
    pub snapshot_on_ready: Option<PathBuf>,
    pub snapshot_on_signal: Option<PathBuf>,
    pub restore: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
}

/// The machine: its shape (what a snapshot records), its guest, its run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub cpus: u32,
    pub mem_size: u64,
    pub irqchip: IrqChipMode,
    pub pit: bool,
    /// ACPI tables for a Linux guest (`--no-acpi` turns them off).
    pub acpi: bool,
    pub test_devices: bool,
    pub cpu_features: Vec<String>,
    pub disks: Vec<String>,
    pub nets: Vec<String>,
    pub transport: Transport,
    /// COM2-COM4 carry the host-guest channel.
    pub channel: bool,
    pub coalesced_io: bool,
    pub boot: BootConfig,
    pub run: RunConfig,
}

fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages.max(0) as u64).saturating_mul(page.max(0) as u64)
}

impl VmConfig {
    /// The machine `splitvm run` describes, with what a user can get wrong
    /// checked before KVM is touched.
    pub fn from_args(args: &RunArgs) -> Result<VmConfig> {
        let command_mode = args.command_mode();
        // In command mode the console must not mix into the command's stdout.
        let default_serial = if command_mode { "none" } else { "stdout" };
        let serial = SerialDest::parse(args.serial.as_deref().unwrap_or(default_serial))?;
        let mem =
            parse_size(&args.memory).ok_or_else(|| Error::MemorySyntax(args.memory.clone()))?;
        let progress = match args.progress.as_str() {
            "always" => true,
            "never" => false,
            _ => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let cfg = VmConfig {
            cpus: args.cpus,
            mem_size: mem & !0xfff,
            irqchip: args.irqchip.unwrap_or_default(),
            pit: !args.no_pit,
            acpi: !args.no_acpi,
            test_devices: args.test_devices,
            cpu_features: args.cpu_features.clone(),
            disks: args.disk.clone(),
            nets: args.net.clone(),
            transport: args.transport,
            channel: command_mode,
            coalesced_io: args.coalesced_io == Toggle::On,
            boot: BootConfig {
                kernel: args.kernel().clone(),
                format: args.kernel_format,
                initrd: args.initrd.clone(),
                cmdline: args.cmdline.clone(),
                add: args.add.clone(),
                entry: args.entry,
                load_addr: args.load_addr,
                entry_mode: args.entry_mode,
                pvh: args.pvh,
                mptable: !args.no_mptable,
            },
            run: RunConfig {
                serial,
                serial_given: args.serial.is_some(),
                command: args.command.clone(),
                stats: args.stats,
                stats_json: args.stats_json.clone(),
                stats_interval: args.stats_interval,
                stats_series: args.stats_series.clone(),
                timeout: args.timeout,
                progress,
                disable_exits: args.disable_exits,
                trace_exits: args.trace_exits,
                seccomp: args.seccomp,
                pin_vcpus: args.pin_vcpus,
                fault_inject: args.fault_inject,
                snapshot_on_ready: args.snapshot_on_ready.clone(),
                snapshot_on_signal: args.snapshot_on_signal.clone(),
                restore: args.restore.clone(),
                api_socket: args.api_socket.clone(),
            },
        };
        cfg.check()?;
        if cfg.run.restore.is_none() && !cfg.boot.kernel.exists() {
            return Err(Error::File {
                what: "kernel",
                path: cfg.boot.kernel.clone(),
                err: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        if cfg.run.snapshot_on_ready.is_some() && !cfg.command_mode() && !cfg.test_devices {
            return Err(Error::DeviceSpec(
                "--snapshot-on-ready needs a guest that says it is ready: `-- CMD` (the agent) or --test-devices (the ready port)".into(),
            ));
        }
        if cfg.run.stats_interval.is_some()
            && cfg.run.stats_json.is_none()
            && cfg.run.stats_series.is_none()
        {
            return Err(Error::DeviceSpec(
                "--stats-interval needs --stats-json or --stats-series: where the reports go"
                    .into(),
            ));
        }
        if let Some(dir) = &cfg.run.stats_series {
            std::fs::create_dir_all(dir).map_err(|err| Error::Output {
                what: "--stats-series directory",
                path: dir.clone(),
                err,
            })?;
        }
        if !cfg.boot.add.is_empty() && cfg.boot.initrd.is_none() {
            return Err(Error::DeviceSpec(
                "--add needs --initrd: the files are appended to it as a cpio archive".into(),
            ));
        }
        Ok(cfg)
    }

    /// The shape's limits (again after a snapshot's machine is laid over).
    pub fn check(&self) -> Result<()> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(Error::Cpus {
                got: self.cpus,
                max: MAX_CPUS,
            });
        }
        if self.mem_size < MIN_MEMORY {
            return Err(Error::MemoryTooSmall {
                got: self.mem_size >> 20,
                min: MIN_MEMORY >> 20,
            });
        }
        let host = host_memory_bytes();
        if self.mem_size > host {
            return Err(Error::MemoryTooLarge {
                got: self.mem_size >> 20,
                host: host >> 20,
            });
        }
        Ok(())
    }

    /// True when the guest's agent runs a command (`-- CMD`).
    pub fn command_mode(&self) -> bool {
        !self.run.command.is_empty()
    }

    /// A Linux kernel: it gets the MP table, ACPI tables and a default
    /// command line.
    pub fn is_linux(&self) -> bool {
        matches!(self.boot.format, KernelFormat::Elf | KernelFormat::Bzimage)
    }

    /// ACPI tables are written (and the PM device they name is placed).
    pub fn has_acpi(&self) -> bool {
        self.is_linux() && self.acpi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(extra: &[&str]) -> Result<VmConfig> {
        let mut argv = vec!["splitvm", "run", "--kernel", "/proc/self/exe"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(a) => VmConfig::from_args(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn command_mode_defaults_the_console_to_none_and_opens_the_channel() {
        let c = cfg(&["--", "true"]).unwrap();
        assert_eq!(c.run.serial, SerialDest::Sink);
        assert!(c.channel && c.command_mode());
        let c = cfg(&[]).unwrap();
        assert_eq!(c.run.serial, SerialDest::Stdout);
        assert!(!c.channel);
    }

    #[test]
    fn memory_is_rounded_down_to_a_page_and_checked() {
        assert_eq!(cfg(&["--memory", "64M"]).unwrap().mem_size, 64 << 20);
        assert!(matches!(
            cfg(&["--memory", "1M"]),
            Err(Error::MemoryTooSmall { .. })
        ));
        assert!(matches!(cfg(&["--cpus", "0"]), Err(Error::Cpus { .. })));
    }

    #[test]
    fn serial_spec_is_parsed_or_refused() {
        assert_eq!(
            SerialDest::parse("file:/x").unwrap(),
            SerialDest::File("/x".into())
        );
        assert!(SerialDest::parse("file:").is_err());
        assert!(SerialDest::parse("tty").is_err());
    }
}
