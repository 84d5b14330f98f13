//! KVM's binary statistics (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst
//! "KVM_GET_STATS_FD"): per vCPU and per VM, with the kernel's own names
//! (exits, irq_exits, halt_exits, irq_window_exits, irq_injections,
//! io_exits, mmio_exits, request_irq_exits, signal_exits, insn_emulation,
//! ...: whatever this kernel offers).
//!
//! The file is a header, then `num_desc` descriptors (16 bytes each followed
//! by a `name_size`-byte name), then the data block. The descriptors do not
//! change for the life of the fd, so they are read once; each read of the
//! data block is one `pread`. splitvm reads at start, at end and per
//! `--stats-interval`, and reports deltas of cumulative statistics, the end
//! value of instant and peak ones, and bucket deltas of histograms.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW2, KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
    KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_BYTES, KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_SECONDS,
};
use serde::Serialize;

/// _IO(KVMIO, 0xce): vm ioctl and vcpu ioctl.
const KVM_GET_STATS_FD: libc::c_ulong = (0xae << 8) | 0xce;

const HEADER_SIZE: usize = 24;
const DESC_SIZE: usize = 16;

/// What kind of value a statistic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatType {
    Cumulative,
    Instant,
    Peak,
    LinearHist,
    LogHist,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct StatDesc {
    pub name: String,
    pub kind: StatType,
    /// "", "bytes", "seconds", "cycles", "boolean".
    pub unit: &'static str,
    /// Value = raw * base^exponent (base 10 or 2).
    pub exponent: i16,
    pub base2: bool,
    /// Number of u64s.
    pub size: u16,
    pub offset: u32,
}

/// An open KVM statistics file with its descriptors.
pub struct StatsFd {
    file: File,
    pub id: String,
    pub descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

/// One reading: values by descriptor index.
#[derive(Debug, Clone, Default)]
pub struct StatsSample(pub Vec<Vec<u64>>);

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}

impl StatsFd {
    /// KVM_GET_STATS_FD on a VM or vCPU fd.
    pub fn open(fd: &impl AsRawFd) -> std::io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: r is a new fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(r) };
        Self::parse(file)
    }

    fn parse(file: File) -> std::io::Result<Self> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut h = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut h, 0)?;
        let name_size = u32_at(&h, 4) as usize;
        let num_desc = u32_at(&h, 8) as usize;
        let id_offset = u32_at(&h, 12) as u64;
        let desc_offset = u32_at(&h, 16) as u64;
        let data_offset = u32_at(&h, 20) as u64;
        if num_desc > 100_000 || name_size > 4096 {
            return Err(bad("implausible KVM stats header"));
        }
        let mut id = vec![0u8; name_size];
        file.read_exact_at(&mut id, id_offset)?;
        let id = String::from_utf8_lossy(&id)
            .trim_end_matches('\0')
            .to_string();
        let stride = DESC_SIZE + name_size;
        let mut raw = vec![0u8; stride * num_desc];
        file.read_exact_at(&mut raw, desc_offset)?;
        let mut descs = Vec::with_capacity(num_desc);
        let mut data_len = 0usize;
        for d in raw.chunks_exact(stride) {
            let flags = u32_at(d, 0);
            let exponent = i16::from_le_bytes([d[4], d[5]]);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = u32_at(d, 8);
            let name = String::from_utf8_lossy(&d[DESC_SIZE..])
                .split('\0')
                .next()
                .unwrap_or("")
                .to_string();
            let kind = match flags & KVM_STATS_TYPE_MASK {
                KVM_STATS_TYPE_CUMULATIVE => StatType::Cumulative,
                KVM_STATS_TYPE_INSTANT => StatType::Instant,
                KVM_STATS_TYPE_PEAK => StatType::Peak,
                KVM_STATS_TYPE_LINEAR_HIST => StatType::LinearHist,
                KVM_STATS_TYPE_LOG_HIST => StatType::LogHist,
                _ => StatType::Unknown,
            };
            let unit = match flags & KVM_STATS_UNIT_MASK {
                KVM_STATS_UNIT_BYTES => "bytes",
                KVM_STATS_UNIT_SECONDS => "seconds",
                KVM_STATS_UNIT_CYCLES => "cycles",
                KVM_STATS_UNIT_BOOLEAN => "boolean",
                _ => "",
            };
            data_len = data_len.max(offset as usize + 8 * size as usize);
            descs.push(StatDesc {
                name,
                kind,
                unit,
                exponent,
                base2: flags & KVM_STATS_BASE_MASK == KVM_STATS_BASE_POW2,
                size,
                offset,
            });
        }
        Ok(StatsFd {
            file,
            id,
            descs,
            data_offset,
            data_len,
        })
    }

    /// Read every statistic now.
    pub fn read(&self) -> std::io::Result<StatsSample> {
        let mut buf = vec![0u8; self.data_len];
        self.file.read_exact_at(&mut buf, self.data_offset)?;
        Ok(StatsSample(
            self.descs
                .iter()
                .map(|d| {
                    (0..d.size as usize)
                        .map(|i| {
                            let o = d.offset as usize + 8 * i;
                            u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]))
                        })
                        .collect()
                })
                .collect(),
        ))
    }

    /// What changed between `start` and `end`: deltas of cumulative
    /// statistics (all of them, zeros included: a zero was measured),
    /// end values of instant/peak ones, bucket deltas of histograms
    /// (only when some bucket moved).
    pub fn delta(&self, start: &StatsSample, end: &StatsSample) -> StatsDelta {
        let mut out = StatsDelta::default();
        for (i, d) in self.descs.iter().enumerate() {
            let (Some(a), Some(b)) = (start.0.get(i), end.0.get(i)) else {
                continue;
            };
            let name = d.name.clone();
            if !(d.unit.is_empty() || d.unit == "boolean") || d.exponent != 0 {
                let unit = if d.unit.is_empty() { "count" } else { d.unit };
                out.units.insert(
                    name.clone(),
                    if d.exponent == 0 {
                        unit.to_string()
                    } else {
                        format!("{unit} x{}^{}", if d.base2 { 2 } else { 10 }, d.exponent)
                    },
                );
            }
            match d.kind {
                StatType::Cumulative if d.size == 1 => {
                    out.cumulative
                        .insert(name, b[0].wrapping_sub(a.first().copied().unwrap_or(0)));
                }
                StatType::Instant | StatType::Peak if d.size == 1 => {
                    out.instant.insert(name, b[0]);
                }
                StatType::LinearHist | StatType::LogHist | StatType::Cumulative => {
                    let v: Vec<u64> = b
                        .iter()
                        .zip(a.iter())
                        .map(|(y, x)| y.wrapping_sub(*x))
                        .collect();
                    if v.iter().any(|x| *x != 0) {
                        out.histograms.insert(name, v);
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Changes over a period, by the kernel's statistic names.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatsDelta {
    /// Cumulative counters: end minus start.
    pub cumulative: BTreeMap<String, u64>,
    /// Instant and peak values at the end.
    pub instant: BTreeMap<String, u64>,
    /// Histogram bucket deltas (only histograms that moved).
    pub histograms: BTreeMap<String, Vec<u64>>,
    /// Units of statistics that are not plain counts, e.g.
    /// "halt_wait_ns": "seconds x10^-9".
    pub units: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VcpuKvmStats {
    pub id: u32,
    #[serde(flatten)]
    pub delta: StatsDelta,
}

/// `kvm_stats` in the JSON report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KvmStatsReport {
    /// False when the host has no KVM_CAP_BINARY_STATS_FD (then everything
    /// else is empty: not measured).
    pub available: bool,
    pub error: Option<String>,
    pub vm: StatsDelta,
    pub vcpus: Vec<VcpuKvmStats>,
    /// Sum over vCPUs of each cumulative vCPU counter.
    pub vcpu_total: BTreeMap<String, u64>,
}

/// The VM's and every vCPU's stats fd with their start readings.
pub struct KvmStats {
    vm: Option<(StatsFd, StatsSample)>,
    vcpus: Vec<(u32, StatsFd, StatsSample)>,
    errors: Vec<String>,
}

impl KvmStats {
    /// Open the VM's stats fd and read its start values.
    pub fn new(vm: &impl AsRawFd) -> Self {
        let mut s = KvmStats {
            vm: None,
            vcpus: Vec::new(),
            errors: Vec::new(),
        };
        match StatsFd::open(vm).and_then(|f| Ok((f.read()?, f))) {
            Ok((start, f)) => s.vm = Some((f, start)),
            Err(e) => s.errors.push(format!("VM stats fd: {e}")),
        }
        s
    }

    /// Open vCPU `id`'s stats fd (right after creating it) and read its
    /// start values.
    pub fn add_vcpu(&mut self, id: u32, vcpu: &impl AsRawFd) {
        match StatsFd::open(vcpu).and_then(|f| Ok((f.read()?, f))) {
            Ok((start, f)) => self.vcpus.push((id, f, start)),
            Err(e) => self.errors.push(format!("vCPU {id} stats fd: {e}")),
        }
    }

    /// Deltas since the start, read now (the fds stay readable after the
    /// vCPU threads end, as long as the vCPU fds lived: KVM keeps the stats
    /// with the VM).
    pub fn report(&self) -> KvmStatsReport {
        let mut r = KvmStatsReport {
            available: self.vm.is_some() || !self.vcpus.is_empty(),
            ..Default::default()
        };
        let mut errors = self.errors.clone();
        if let Some((f, start)) = &self.vm {
            match f.read() {
                Ok(now) => r.vm = f.delta(start, &now),
                Err(e) => errors.push(format!("VM stats read: {e}")),
            }
        }
        for (id, f, start) in &self.vcpus {
            match f.read() {
                Ok(now) => {
                    let delta = f.delta(start, &now);
                    for (k, v) in &delta.cumulative {
                        *r.vcpu_total.entry(k.clone()).or_default() += v;
                    }
                    r.vcpus.push(VcpuKvmStats { id: *id, delta });
                }
                Err(e) => errors.push(format!("vCPU {id} stats read: {e}")),
            }
        }
        if !errors.is_empty() {
            r.error = Some(errors.join("; "));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stats file laid out as api.rst describes: header, id, descriptors
    /// (name_size 8), data.
    fn fake_file(values: [u64; 3]) -> File {
        let name_size = 8usize;
        let num_desc = 2u32;
        let id_offset = HEADER_SIZE as u32;
        let desc_offset = id_offset + name_size as u32;
        let data_offset = desc_offset + (num_desc as usize * (DESC_SIZE + name_size)) as u32;
        let mut b = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            num_desc,
            id_offset,
            desc_offset,
            data_offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"kvm-1\0\0\0");
        // exits: cumulative, size 1, offset 0
        let mut d = |flags: u32, size: u16, offset: u32, name: &[u8]| {
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.to_vec();
            n.resize(name_size, 0);
            b.extend_from_slice(&n);
        };
        d(KVM_STATS_TYPE_CUMULATIVE, 1, 0, b"exits");
        d(KVM_STATS_TYPE_LINEAR_HIST, 2, 8, b"hist");
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let path = std::env::temp_dir().join(format!(
            "splitvm-kvmstats-{}-{}",
            std::process::id(),
            values[0]
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(&b).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn parses_header_descriptors_and_data() {
        let s = StatsFd::parse(fake_file([10, 1, 2])).unwrap();
        assert_eq!(s.id, "kvm-1");
        assert_eq!(s.descs.len(), 2);
        assert_eq!(s.descs[0].name, "exits");
        assert_eq!(s.descs[1].kind, StatType::LinearHist);
        let a = s.read().unwrap();
        assert_eq!(a.0, vec![vec![10], vec![1, 2]]);
        let later = StatsSample(vec![vec![15], vec![1, 5]]);
        let d = s.delta(&a, &later);
        assert_eq!(d.cumulative["exits"], 5);
        assert_eq!(d.histograms["hist"], vec![0, 3]);
    }
}
