//! Snapshots of a running VM and restoring them (docs/snapshot.md).
//!
//! A snapshot is a directory with two files:
//! - `state.json`: one header line `splitvm-snapshot <format> crc32=<hex>
//!   bytes=<n>` and then `n` bytes of JSON ([`VmState`]) whose CRC-32 the
//!   header gives: splitvm's version, the host CPU, the machine's shape,
//!   the KVM clock, every vCPU, the split irqchip (I/O APIC, 8259 pair, GSI
//!   routes) and every device with state, by bus name and address;
//! - `memory-<id>`: guest RAM, regions back to back, written sparsely
//!   (all-zero pages stay holes), named in the state.
//!
//! Writing: the memory file under its new name, then `state.json.tmp-<id>`,
//! renamed over `state.json`; then every other memory file (the replaced
//! snapshot's, or one a failed write left) is deleted. So a reader sees
//! the old snapshot or the new one, never half of one.
//! Restoring maps the memory file MAP_PRIVATE: restores of one snapshot
//! share its pages in the page cache, and the file is never written.

pub mod pause;
pub mod vcpu_state;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;
use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use devices::state::SavedDevice;

use crate::cli::KernelFormat;
pub use crate::error::SnapshotError;
use crate::irqchip::IrqChipState;
pub use vcpu_state::VcpuState;

/// The snapshot format this splitvm writes and reads.
pub const FORMAT: u32 = 2;
const MAGIC: &str = "splitvm-snapshot";
pub const STATE_FILE: &str = "state.json";
const PAGE: usize = 4096;

type Result<T> = std::result::Result<T, SnapshotError>;

/// The host a snapshot belongs to: the CPU and what KVM offers on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// Vendor, family, model, stepping (CPUID leaves 0 and 1).
    pub cpu: String,
    /// CRC-32 of KVM_GET_SUPPORTED_CPUID: any difference in what KVM
    /// offers the guest here makes the snapshot foreign.
    pub kvm_cpuid_crc32: u32,
}

impl HostCpu {
    pub fn of(supported: &kvm_bindings::CpuId) -> HostCpu {
        // SAFETY: CPUID exists on every x86_64 CPU (the intrinsic is safe
        // from Rust 1.87 on; unsafe here for the MSRV).
        #[allow(unused_unsafe)]
        let (l0, l1) = unsafe { (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1)) };
        let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let family = ((l1.eax >> 8) & 0xf) + ((l1.eax >> 20) & 0xff);
        let model = ((l1.eax >> 4) & 0xf) | ((l1.eax >> 12) & 0xf0);
        let mut crc = crc32fast::Hasher::new();
        for e in supported.as_slice() {
            // Not the host CPU this thread happens to run on: leaf 1's
            // initial APIC ID (EBX 31:24), leaves 0xB/0x1F's x2APIC ID (EDX).
            let ebx = if e.function == 1 {
                e.ebx & 0x00ff_ffff
            } else {
                e.ebx
            };
            let edx = if matches!(e.function, 0xb | 0x1f) {
                0
            } else {
                e.edx
            };
            for v in [e.function, e.index, e.flags, e.eax, ebx, e.ecx, edx] {
                crc.update(&v.to_le_bytes());
            }
        }
        HostCpu {
            cpu: format!(
                "{} family {family} model {model} stepping {}",
                String::from_utf8_lossy(&vendor),
                l1.eax & 0xf
            ),
            kvm_cpuid_crc32: crc.finalize(),
        }
    }

    fn describe(&self) -> String {
        format!("{}, KVM CPUID {:08x}", self.cpu, self.kvm_cpuid_crc32)
    }
}

/// The machine's shape: what `splitvm run` options built it. A restore
/// builds the same machine from this, not from its own options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub kernel_format: KernelFormat,
    pub acpi: bool,
    pub pit: bool,
    pub test_devices: bool,
    /// COM2-COM4 carry the host-guest channel (`-- CMD`).
    pub channel: bool,
    pub cpu_features: Vec<String>,
    /// `--disk` specs, paths absolute; the files are opened again.
    pub disks: Vec<String>,
    /// `--net` specs; the TAP devices are opened again by name.
    pub nets: Vec<String>,
    pub transport: crate::cli::Transport,
    pub irqchip: crate::irqchip::IrqChipMode,
}

impl Machine {
    /// The shape of the machine `cfg` describes.
    pub fn of(cfg: &VmConfig) -> Machine {
        Machine {
            cpus: cfg.cpus,
            memory_bytes: cfg.mem_size,
            kernel_format: cfg.boot.format,
            acpi: cfg.has_acpi(),
            pit: cfg.pit,
            test_devices: cfg.test_devices,
            channel: cfg.channel,
            cpu_features: cfg.cpu_features.clone(),
            disks: cfg.disks.iter().map(|d| absolute_disk(d)).collect(),
            nets: cfg.nets.clone(),
            transport: cfg.transport,
            irqchip: cfg.irqchip,
        }
    }

    /// Lay this machine's shape over `cfg` (a restore's command line).
    pub fn apply(&self, cfg: &mut VmConfig) {
        cfg.cpus = self.cpus;
        cfg.mem_size = self.memory_bytes;
        cfg.boot.format = self.kernel_format;
        cfg.acpi = self.acpi;
        cfg.pit = self.pit;
        cfg.test_devices = self.test_devices;
        cfg.cpu_features = self.cpu_features.clone();
        cfg.disks = self.disks.clone();
        cfg.nets = self.nets.clone();
        cfg.transport = self.transport;
        cfg.irqchip = self.irqchip;
        cfg.channel = self.channel;
        // A guest with the channel runs a command: as in `-- CMD`, its
        // console stays out of stdout unless asked for.
        if self.channel && !cfg.run.serial_given {
            cfg.run.serial = crate::config::SerialDest::Sink;
        }
    }
}

/// A `--disk` spec with its path made absolute (a restore may run in
/// another directory).
fn absolute_disk(spec: &str) -> String {
    let (path, rest) = spec.split_at(spec.find(',').unwrap_or(spec.len()));
    match std::fs::canonicalize(path) {
        Ok(p) => format!("{}{rest}", p.display()),
        Err(_) => spec.to_string(),
    }
}

/// Everything in `state.json`.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub splitvm_version: String,
    pub host: HostCpu,
    /// Why it was taken: "ready" or "signal".
    pub trigger: String,
    pub machine: Machine,
    /// The memory file, in the snapshot directory.
    pub memory_file: String,
    /// KVM_GET_CLOCK (kvmclock's base); restored with flags cleared, so the
    /// guest's clock goes on from the snapshot instant.
    pub clock: kvm_clock_data,
    pub vcpus: Vec<VcpuState>,
    pub irqchip: IrqChipState,
    pub pio: Vec<SavedDevice>,
    pub mmio: Vec<SavedDevice>,
}

impl VmState {
    /// The guest's agent said `ready` and waits for a command.
    pub fn awaiting_command(&self) -> bool {
        self.pio.iter().any(|d| {
            d.state
                .get::<devices::channel::ControlPortState>("control_port")
                .is_ok_and(|c| c.awaiting)
        })
    }
}

/// What writing a snapshot cost.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub state_bytes: u64,
    /// Bytes of the memory file that are not holes.
    pub memory_written: u64,
    pub memory_bytes: u64,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |err| SnapshotError::Write {
        path: path.to_path_buf(),
        err,
    }
}

/// Guest RAM into `file`, regions back to back, skipping all-zero pages
/// (they stay holes). Returns the bytes written.
fn write_memory(mem: &GuestMemoryMmap, file: &File) -> std::io::Result<u64> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        // SAFETY: the region maps `len` bytes for the VM's life; every
        // vCPU is paused and no device thread writes guest memory now.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
        let mut run: Option<usize> = None;
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let zero = page.iter().all(|&b| b == 0);
            match (zero, run) {
                (false, None) => run = Some(i * PAGE),
                (true, Some(start)) => {
                    file.write_all_at(&bytes[start..i * PAGE], offset + start as u64)?;
                    written += (i * PAGE - start) as u64;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            file.write_all_at(&bytes[start..], offset + start as u64)?;
            written += (len - start) as u64;
        }
        offset += len as u64;
    }
    Ok(written)
}

/// Write `state` and `mem` into directory `dir` (created if missing),
/// replacing any snapshot there only once the new one is complete.
pub fn write(dir: &Path, mut state: VmState, mem: &GuestMemoryMmap) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let id = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    state.memory_file = format!("memory-{id}");
    let mem_path = dir.join(&state.memory_file);
    let f = File::create(&mem_path).map_err(write_err(&mem_path))?;
    let memory_written = write_memory(mem, &f).map_err(write_err(&mem_path))?;
    let memory_bytes = f.metadata().map_err(write_err(&mem_path))?.len();
    drop(f);
    let body = serde_json::to_vec(&state).map_err(|e| SnapshotError::Write {
        path: dir.to_path_buf(),
        err: std::io::Error::other(e),
    })?;
    let head = format!(
        "{MAGIC} {FORMAT} crc32={:08x} bytes={}\n",
        crc32fast::hash(&body),
        body.len()
    );
    let tmp = dir.join(format!("{STATE_FILE}.tmp-{id}"));
    let mut f = File::create(&tmp).map_err(write_err(&tmp))?;
    f.write_all(head.as_bytes())
        .and_then(|_| f.write_all(&body))
        .map_err(write_err(&tmp))?;
    drop(f);
    let final_path = dir.join(STATE_FILE);
    std::fs::rename(&tmp, &final_path).map_err(write_err(&final_path))?;
    // Now that the new state names the new memory file, no other one is
    // used: the replaced snapshot's, or files a write that failed left.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let stale_memory = name.starts_with("memory-") && name != state.memory_file.as_str();
            if stale_memory || name.starts_with(&format!("{STATE_FILE}.tmp-")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(Written {
        state_bytes: (head.len() + body.len()) as u64,
        memory_written,
        memory_bytes,
    })
}

/// Read and check `dir/state.json`: header, length, checksum, JSON.
fn read_state_file(dir: &Path) -> Result<VmState> {
    let path = dir.join(STATE_FILE);
    let snap = || dir.to_path_buf();
    let mut raw = Vec::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => SnapshotError::Missing(snap()),
            _ => SnapshotError::Read { path: snap(), err },
        })?;
    let nl = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..nl.min(200)]).to_string();
    let mut words = head.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(SnapshotError::NotSnapshot(snap()));
    }
    let format = words.next().unwrap_or("");
    if format != FORMAT.to_string() {
        return Err(SnapshotError::Format {
            path: snap(),
            found: format.to_string(),
            ours: FORMAT,
        });
    }
    let field = |name: &str| {
        head.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let want_crc = field("crc32=").and_then(|v| u32::from_str_radix(&v, 16).ok());
    let want_len = field("bytes=").and_then(|v| v.parse::<usize>().ok());
    let (Some(want_crc), Some(want_len)) = (want_crc, want_len) else {
        return Err(SnapshotError::Decode {
            path: snap(),
            msg: "its header line is damaged".into(),
        });
    };
    let body = raw.get(nl + 1..).unwrap_or(&[]);
    if body.len() < want_len {
        return Err(SnapshotError::Truncated {
            path: snap(),
            got: body.len(),
            want: want_len,
        });
    }
    let body = &body[..want_len];
    let got = crc32fast::hash(body);
    if got != want_crc {
        return Err(SnapshotError::Checksum {
            path: snap(),
            got,
            want: want_crc,
        });
    }
    serde_json::from_slice(body).map_err(|e| SnapshotError::Decode {
        path: snap(),
        msg: e.to_string(),
    })
}

/// A snapshot read and checked, ready to restore.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: VmState,
}

/// Read the snapshot in `dir` and check everything that can be checked
/// before KVM is touched: format, integrity, splitvm version, host CPU,
/// memory file size.
pub fn load(dir: &Path, host: &HostCpu) -> Result<Loaded> {
    let state = read_state_file(dir)?;
    let snap = || dir.to_path_buf();
    let ours = env!("CARGO_PKG_VERSION");
    if state.splitvm_version != ours {
        return Err(SnapshotError::Version {
            path: snap(),
            theirs: state.splitvm_version,
            ours: ours.into(),
        });
    }
    if state.host != *host {
        return Err(SnapshotError::ForeignCpu {
            path: snap(),
            theirs: state.host.describe(),
            ours: host.describe(),
        });
    }
    if state.vcpus.len() != state.machine.cpus as usize {
        return Err(SnapshotError::Decode {
            path: snap(),
            msg: format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                state.machine.cpus
            ),
        });
    }
    let mem_path = dir.join(&state.memory_file);
    let got = std::fs::metadata(&mem_path)
        .map_err(|err| SnapshotError::Read { path: snap(), err })?
        .len();
    if got != state.machine.memory_bytes {
        return Err(SnapshotError::MemorySize {
            path: snap(),
            file: state.memory_file.clone(),
            got,
            want: state.machine.memory_bytes,
        });
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
    })
}

impl Loaded {
    /// Guest RAM for `ranges` (the machine's RAM regions), mapped
    /// copy-on-write from the memory file.
    pub fn map_memory(&self, ranges: &[(u64, u64)]) -> Result<GuestMemoryMmap> {
        let path = self.dir.join(&self.state.memory_file);
        let map_err = |msg: String| SnapshotError::Map {
            path: path.clone(),
            msg,
        };
        let file = File::open(&path).map_err(|err| SnapshotError::Read {
            path: self.dir.clone(),
            err,
        })?;
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for &(base, len) in ranges {
            let fd = file.try_clone().map_err(|e| map_err(e.to_string()))?;
            let m = MmapRegion::build(
                Some(FileOffset::new(fd, offset)),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .map_err(|e| map_err(e.to_string()))?;
            let r = GuestRegionMmap::new(m, GuestAddress(base))
                .ok_or_else(|| map_err("region wraps the address space".into()))?;
            regions.push(r);
            offset += len;
        }
        GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
    }
}
