//! Reading an exit report back (a `--stats-json` file, a series file, GET
//! vm.counters): the one place that knows the JSON's field names on the
//! reading side, for `splitvm top` and `splitvm report`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One exit report, flattened.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub wall_ms: u64,
    pub paused_ms: u64,
    pub state: String,
    /// `running`, or how the VM ended.
    pub exit_reason: String,
    pub irqchip: String,
    pub coalesced_io: String,
    pub total_exits: u64,
    /// Exit counts by row name: `exit io`, `pio serial`, `mmio ioapic`,
    /// `vcpu 0`, `kvm exits`, ...
    pub events: BTreeMap<String, u64>,
    pub sources: Vec<SourceSample>,
}

/// What went through one vector of a source.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VectorCounts {
    pub delivered: Option<u64>,
    pub eoi_exits: Option<u64>,
}

/// One interrupt source's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceSample {
    pub name: String,
    /// None: not counted (a source inside KVM without `--trace-exits`).
    pub raised: Option<u64>,
    pub delivered: Option<u64>,
    pub eoi_exits: Option<u64>,
    /// Port and MMIO exits on the source's own registers.
    pub register_exits: Option<u64>,
    /// By vector: deliveries (an MSI source's own count; a pin's go to its
    /// unmasked route's vector) and EOI exits (level routes).
    pub vectors: BTreeMap<u8, VectorCounts>,
}

impl SourceSample {
    /// EOI and register exits together (None: not userspace's to count).
    pub fn userspace_exits(&self) -> Option<u64> {
        match (self.eoi_exits, self.register_exits) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn counts(v: &Value) -> impl Iterator<Item = (&String, u64)> {
    v.as_object().into_iter().flatten().map(|(k, n)| (k, u(n)))
}

impl Sample {
    /// Read a report (the `--stats-json` schema).
    pub fn from_report(r: &Value) -> Sample {
        let mut events = BTreeMap::new();
        for (k, n) in counts(&r["exits"]) {
            events.insert(format!("exit {k}"), n);
        }
        for (k, n) in counts(&r["pio_exits_per_device"]) {
            events.insert(format!("pio {k}"), n);
        }
        for (k, n) in counts(&r["mmio_exits_per_device"]) {
            events.insert(format!("mmio {k}"), n);
        }
        for (k, n) in counts(&r["coalesced_pio_per_device"]) {
            events.insert(format!("coalesced {k}"), n);
        }
        for v in r["vcpus"].as_array().into_iter().flatten() {
            let total: u64 = counts(&v["exits"]).map(|(_, n)| n).sum();
            events.insert(format!("vcpu {}", u(&v["id"])), total);
        }
        // KVM's own counters, summed over the vCPUs (what kvm_stat shows).
        for v in r["kvm_stats"]["vcpus"].as_array().into_iter().flatten() {
            for (k, n) in counts(&v["cumulative"]) {
                *events.entry(format!("kvm {k}")).or_default() += n;
            }
        }
        let eoi_by_vector: BTreeMap<u8, u64> = counts(&r["eoi_exits_per_vector"])
            .filter_map(|(k, n)| k.parse().ok().map(|v| (v, n)))
            .collect();
        let sources = r["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let mut vectors: BTreeMap<u8, VectorCounts> = counts(&s["per_vector"])
                    .filter_map(|(k, n)| {
                        let c = VectorCounts {
                            delivered: Some(n),
                            eoi_exits: None,
                        };
                        k.parse().ok().map(|v| (v, c))
                    })
                    .collect();
                if s["kind"] == "ioapic_pin" {
                    for route in s["routes"].as_array().into_iter().flatten() {
                        let vector = route["vector"].as_u64().and_then(|v| u8::try_from(v).ok());
                        let Some(v) = vector.filter(|_| route["masked"] != true) else {
                            continue;
                        };
                        let level = route["trigger"] == "level";
                        vectors.insert(
                            v,
                            VectorCounts {
                                delivered: s["delivered"].as_u64(),
                                eoi_exits: level
                                    .then(|| eoi_by_vector.get(&v).copied().unwrap_or(0)),
                            },
                        );
                    }
                }
                let opt = |v: &Value| v.as_u64();
                let traced = |e: &str| s["traced"][e].as_u64();
                let in_kernel = s["in_kernel"].as_bool().unwrap_or(false);
                SourceSample {
                    name: s["name"].as_str().unwrap_or("?").to_string(),
                    // Inside KVM only `--trace-exits` sees them: an IPI is
                    // raised by an ICR write, either is delivered on entry.
                    raised: if in_kernel {
                        traced("kvm_apic_ipi")
                    } else {
                        opt(&s["raised"])
                    },
                    delivered: if in_kernel {
                        traced("kvm_inj_virq").or_else(|| traced("kvm_apic_accept_irq"))
                    } else {
                        opt(&s["delivered"])
                    },
                    eoi_exits: opt(&s["eoi_exits"]),
                    register_exits: match (opt(&s["pio_exits"]), opt(&s["mmio_exits"])) {
                        (None, None) => None,
                        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                    },
                    vectors,
                }
            })
            .collect();
        Sample {
            wall_ms: u(&r["wall_time_ms"]),
            paused_ms: u(&r["paused_ms"]),
            state: r["state"].as_str().unwrap_or("?").to_string(),
            exit_reason: r["exit_reason"].as_str().unwrap_or("?").to_string(),
            irqchip: r["irqchip"].as_str().unwrap_or("?").to_string(),
            coalesced_io: r["coalesced_io"].as_str().unwrap_or("?").to_string(),
            total_exits: u(&r["total_exits"]),
            events,
            sources,
        }
    }

    /// Seconds the VM ran in all (wall time less paused time).
    pub fn running_secs(&self) -> f64 {
        self.wall_ms.saturating_sub(self.paused_ms) as f64 / 1e3
    }

    /// Seconds the VM ran since `prev` (None: it was paused throughout).
    pub fn running_secs_since(&self, prev: &Sample) -> Option<f64> {
        let wall = self.wall_ms.saturating_sub(prev.wall_ms);
        let paused = self.paused_ms.saturating_sub(prev.paused_ms);
        let ran = wall.saturating_sub(paused);
        (ran > 0).then(|| ran as f64 / 1e3)
    }
}
