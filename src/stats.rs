//! Exit counters: one `VcpuStats` per vCPU thread (no sharing on the hot
//! path), merged into a `Report` at VM exit. The per-source report of a
//! later stage grows from here.

use std::collections::BTreeMap;

use serde::Serialize;

/// KVM_RUN exit reasons we count, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Io,
    Mmio,
    IoapicEoi,
    Hlt,
    Intr,
    Shutdown,
    SystemEvent,
    InternalError,
    FailEntry,
    Exception,
    Other,
}

pub const EXIT_KINDS: [ExitKind; 11] = [
    ExitKind::Io,
    ExitKind::Mmio,
    ExitKind::IoapicEoi,
    ExitKind::Hlt,
    ExitKind::Intr,
    ExitKind::Shutdown,
    ExitKind::SystemEvent,
    ExitKind::InternalError,
    ExitKind::FailEntry,
    ExitKind::Exception,
    ExitKind::Other,
];

impl ExitKind {
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::Io => "io",
            ExitKind::Mmio => "mmio",
            ExitKind::IoapicEoi => "ioapic_eoi",
            ExitKind::Hlt => "hlt",
            ExitKind::Intr => "intr",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::Exception => "exception",
            ExitKind::Other => "other",
        }
    }
}

/// Counters owned by one vCPU thread.
#[derive(Debug, Clone)]
pub struct VcpuStats {
    pub id: u32,
    pub exits: [u64; EXIT_KINDS.len()],
    pub eoi_vectors: [u64; 256],
    pub pio_device: Vec<u64>,
    pub mmio_device: Vec<u64>,
    pub unhandled_pio: BTreeMap<u16, u64>,
    pub unhandled_mmio: BTreeMap<u64, u64>,
}

impl VcpuStats {
    pub fn new(id: u32, pio_devices: usize, mmio_devices: usize) -> Self {
        VcpuStats {
            id,
            exits: [0; EXIT_KINDS.len()],
            eoi_vectors: [0; 256],
            pio_device: vec![0; pio_devices],
            mmio_device: vec![0; mmio_devices],
            unhandled_pio: BTreeMap::new(),
            unhandled_mmio: BTreeMap::new(),
        }
    }

    #[inline]
    pub fn exit(&mut self, kind: ExitKind) {
        self.exits[kind as usize] += 1;
    }

    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }
}

#[derive(Debug, Serialize, Default)]
pub struct VcpuReport {
    pub id: u32,
    pub exits: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct PinReport {
    pub pin: usize,
    pub raised: u64,
    pub delivered: u64,
    pub coalesced: u64,
    pub masked_drops: u64,
    pub eoi: u64,
    pub invalid: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct MsiPortReport {
    pub injected: u64,
}

/// The exit report, as printed by `--stats` and written by `--stats-json`.
#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub schema_version: u32,
    pub exit_status: i32,
    pub exit_reason: String,
    pub exit_detail: Option<String>,
    pub wall_time_ms: u64,
    pub exits: BTreeMap<&'static str, u64>,
    pub total_exits: u64,
    pub vcpus: Vec<VcpuReport>,
    pub eoi_exits_per_vector: BTreeMap<String, u64>,
    pub pio_exits_per_device: BTreeMap<String, u64>,
    pub mmio_exits_per_device: BTreeMap<String, u64>,
    pub unhandled_pio: BTreeMap<String, u64>,
    pub unhandled_mmio: BTreeMap<String, u64>,
    pub ioapic_pins: Vec<PinReport>,
    pub msi_test_port: Option<MsiPortReport>,
}

fn kinds_map(exits: &[u64; EXIT_KINDS.len()]) -> BTreeMap<&'static str, u64> {
    EXIT_KINDS
        .iter()
        .zip(exits.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.name(), *n))
        .collect()
}

impl Report {
    /// Merge per-vCPU counters; device names index the per-device vectors.
    pub fn from_vcpus(vcpus: &[VcpuStats], pio_names: &[String], mmio_names: &[String]) -> Self {
        let mut r = Report {
            schema_version: 1,
            ..Default::default()
        };
        let mut totals = [0u64; EXIT_KINDS.len()];
        for v in vcpus {
            for (t, n) in totals.iter_mut().zip(v.exits.iter()) {
                *t += n;
            }
            r.vcpus.push(VcpuReport {
                id: v.id,
                exits: kinds_map(&v.exits),
            });
            for (vec, n) in v.eoi_vectors.iter().enumerate().filter(|(_, n)| **n > 0) {
                *r.eoi_exits_per_vector.entry(vec.to_string()).or_default() += n;
            }
            for (i, n) in v.pio_device.iter().enumerate().filter(|(_, n)| **n > 0) {
                let name = pio_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("pio#{i}"));
                *r.pio_exits_per_device.entry(name).or_default() += n;
            }
            for (i, n) in v.mmio_device.iter().enumerate().filter(|(_, n)| **n > 0) {
                let name = mmio_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("mmio#{i}"));
                *r.mmio_exits_per_device.entry(name).or_default() += n;
            }
            for (port, n) in &v.unhandled_pio {
                *r.unhandled_pio.entry(format!("{port:#06x}")).or_default() += n;
            }
            for (addr, n) in &v.unhandled_mmio {
                *r.unhandled_mmio.entry(format!("{addr:#x}")).or_default() += n;
            }
        }
        r.total_exits = totals.iter().sum();
        r.exits = kinds_map(&totals);
        r
    }

    /// The human-readable table printed by `--stats`.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "=== splitvm exit report ===");
        let _ = writeln!(
            s,
            "exit: {} (status {}){}, wall time {} ms",
            self.exit_reason,
            self.exit_status,
            self.exit_detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            self.wall_time_ms
        );
        let _ = write!(s, "{:<16}", "KVM exits");
        for v in &self.vcpus {
            let _ = write!(s, "{:>12}", format!("vcpu{}", v.id));
        }
        let _ = writeln!(s, "{:>12}", "total");
        for k in EXIT_KINDS {
            let total = self.exits.get(k.name()).copied().unwrap_or(0);
            if total == 0 {
                continue;
            }
            let _ = write!(s, "{:<16}", k.name());
            for v in &self.vcpus {
                let _ = write!(s, "{:>12}", v.exits.get(k.name()).copied().unwrap_or(0));
            }
            let _ = writeln!(s, "{total:>12}");
        }
        let _ = writeln!(s, "{:<16}{:>12}", "all", self.total_exits);
        let section = |s: &mut String, title: &str, m: &BTreeMap<String, u64>| {
            if !m.is_empty() {
                let _ = writeln!(s, "{title}");
                for (k, v) in m {
                    let _ = writeln!(s, "  {k:<22}{v:>12}");
                }
            }
        };
        section(&mut s, "PIO exits per device", &self.pio_exits_per_device);
        section(&mut s, "MMIO exits per device", &self.mmio_exits_per_device);
        section(
            &mut s,
            "I/O APIC EOI exits per vector",
            &self.eoi_exits_per_vector,
        );
        section(&mut s, "unhandled PIO (read all-ones)", &self.unhandled_pio);
        section(
            &mut s,
            "unhandled MMIO (read all-ones)",
            &self.unhandled_mmio,
        );
        if !self.ioapic_pins.is_empty() {
            let _ = writeln!(
                s,
                "I/O APIC pins   {:>10}{:>10}{:>10}{:>10}{:>10}",
                "raised", "delivered", "coalesced", "masked", "eoi"
            );
            for p in &self.ioapic_pins {
                let _ = writeln!(
                    s,
                    "  pin {:<10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    p.pin, p.raised, p.delivered, p.coalesced, p.masked_drops, p.eoi
                );
            }
        }
        if let Some(m) = &self.msi_test_port {
            let _ = writeln!(s, "MSI test port: {} injected", m.injected);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_merges_vcpus_and_names_devices() {
        let mut a = VcpuStats::new(0, 2, 1);
        a.exit(ExitKind::Io);
        a.exit(ExitKind::IoapicEoi);
        a.eoi_vectors[0x40] += 1;
        a.pio_device[1] += 1;
        let mut b = VcpuStats::new(1, 2, 1);
        b.exit(ExitKind::Io);
        b.unhandled_pio.insert(0x1234, 2);
        let r = Report::from_vcpus(
            &[a, b],
            &["serial".into(), "pc-testdev".into()],
            &["ioapic".into()],
        );
        assert_eq!(r.exits["io"], 2);
        assert_eq!(r.exits["ioapic_eoi"], 1);
        assert_eq!(r.total_exits, 3);
        assert_eq!(r.eoi_exits_per_vector["64"], 1);
        assert_eq!(r.pio_exits_per_device["pc-testdev"], 1);
        assert_eq!(r.unhandled_pio["0x1234"], 2);
        assert!(r.table().contains("ioapic_eoi"));
    }
}
