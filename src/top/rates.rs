//! What `splitvm top` shows: two readings of GET vm.counters turned into
//! rows of per-second rates over the VM's running time (a paused interval
//! has no rate).

use std::collections::BTreeMap;

use serde_json::Value;

/// One reading of vm.counters, flattened.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub wall_ms: u64,
    pub paused_ms: u64,
    pub state: String,
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
            events,
            sources,
        }
    }

    /// Seconds the VM ran since `prev` (None: it was paused throughout).
    pub fn running_secs_since(&self, prev: &Sample) -> Option<f64> {
        let wall = self.wall_ms.saturating_sub(prev.wall_ms);
        let paused = self.paused_ms.saturating_sub(prev.paused_ms);
        let ran = wall.saturating_sub(paused);
        (ran > 0).then(|| ran as f64 / 1e3)
    }
}

/// A row of the exits table.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub name: String,
    pub total: u64,
    /// Per second of running time over the interval (None: paused).
    pub rate: Option<f64>,
}

/// A row of the interrupt sources table (rates per second).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    pub name: String,
    pub raised: Option<f64>,
    pub delivered: Option<f64>,
    pub eoi_exits: Option<f64>,
    pub register_exits: Option<f64>,
    /// Userspace exits per delivered interrupt over the interval.
    pub exits_per_irq: Option<f64>,
    /// None: the source's exits are not userspace's to count (inside KVM).
    pub total_exits: Option<u64>,
    /// `x`: per-vector rates under the source: (vector, delivered/s, EOI
    /// exits/s).
    pub vectors: Vec<(u8, Option<f64>, Option<f64>)>,
}

fn rate(cur: u64, prev: u64, secs: Option<f64>) -> Option<f64> {
    secs.map(|s| cur.saturating_sub(prev) as f64 / s)
}

/// The rate of a counter that may not be counted at all.
fn opt_rate(cur: Option<u64>, prev: Option<u64>, secs: Option<f64>) -> Option<f64> {
    rate(cur?, prev.unwrap_or(0), secs)
}

/// The exits rows of `cur` against `prev`.
pub fn event_rows(prev: &Sample, cur: &Sample) -> Vec<EventRow> {
    let secs = cur.running_secs_since(prev);
    cur.events
        .iter()
        .map(|(name, &total)| EventRow {
            name: name.clone(),
            total,
            rate: rate(total, prev.events.get(name).copied().unwrap_or(0), secs),
        })
        .collect()
}

/// The interrupt source rows of `cur` against `prev`.
pub fn source_rows(prev: &Sample, cur: &Sample) -> Vec<SourceRow> {
    let secs = cur.running_secs_since(prev);
    cur.sources
        .iter()
        .map(|s| {
            let p = prev
                .sources
                .iter()
                .find(|p| p.name == s.name)
                .cloned()
                .unwrap_or_default();
            let exits = |x: &SourceSample| match (x.eoi_exits, x.register_exits) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            let d_delivered = s
                .delivered
                .unwrap_or(0)
                .saturating_sub(p.delivered.unwrap_or(0));
            let d_exits = exits(s).map(|e| e.saturating_sub(exits(&p).unwrap_or(0)));
            SourceRow {
                name: s.name.clone(),
                raised: opt_rate(s.raised, p.raised, secs),
                delivered: opt_rate(s.delivered, p.delivered, secs),
                eoi_exits: opt_rate(s.eoi_exits, p.eoi_exits, secs),
                register_exits: opt_rate(s.register_exits, p.register_exits, secs),
                exits_per_irq: d_exits
                    .filter(|_| secs.is_some() && d_delivered > 0)
                    .map(|e| e as f64 / d_delivered as f64),
                total_exits: exits(s),
                vectors: s
                    .vectors
                    .iter()
                    .map(|(&v, n)| {
                        let pv = p.vectors.get(&v).copied().unwrap_or_default();
                        (
                            v,
                            opt_rate(n.delivered, pv.delivered, secs),
                            opt_rate(n.eoi_exits, pv.eoi_exits, secs),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(wall: u64, paused: u64, serial: u64, delivered: u64, eoi: u64) -> Value {
        json!({
            "wall_time_ms": wall, "paused_ms": paused, "state": "running",
            "exits": { "io": serial + 10 },
            "pio_exits_per_device": { "serial": serial },
            "vcpus": [{ "id": 0, "exits": { "io": serial + 10 } }],
            "kvm_stats": { "vcpus": [{ "cumulative": { "exits": 3 * serial } }, { "cumulative": { "exits": 1 } }] },
            "eoi_exits_per_vector": { "34": eoi },
            "sources": [
                { "name": "serial", "kind": "ioapic_pin", "in_kernel": false, "raised": delivered, "delivered": delivered,
                  "eoi_exits": eoi, "pio_exits": serial, "mmio_exits": 0, "per_vector": {},
                  "routes": [{ "vector": 34, "trigger": "level" }] },
                { "name": "ipi", "in_kernel": true, "raised": null }
            ]
        })
    }

    #[test]
    fn rates_are_per_second_of_running_time() {
        let a = Sample::from_report(&report(1000, 0, 100, 10, 10));
        // 3 s of wall time of which 1 s paused: 2 s running.
        let b = Sample::from_report(&report(4000, 1000, 300, 30, 30));
        let rows = event_rows(&a, &b);
        let serial = rows.iter().find(|r| r.name == "pio serial").unwrap();
        assert_eq!((serial.total, serial.rate), (300, Some(100.0)));
        let kvm = rows.iter().find(|r| r.name == "kvm exits").unwrap();
        assert_eq!(kvm.total, 901, "summed over vCPUs");
        assert!(rows.iter().any(|r| r.name == "vcpu 0"));
        let s = source_rows(&a, &b);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name, "ipi");
        assert_eq!(
            (s[1].delivered, s[1].total_exits),
            (None, None),
            "inside KVM, untraced"
        );
        assert_eq!(s[0].delivered, Some(10.0));
        assert_eq!(s[0].eoi_exits, Some(10.0));
        assert_eq!(s[0].register_exits, Some(100.0));
        assert_eq!(s[0].exits_per_irq, Some(11.0));
        assert_eq!(s[0].vectors, vec![(34, Some(10.0), Some(10.0))]);
    }

    #[test]
    fn a_paused_interval_has_no_rate() {
        let a = Sample::from_report(&report(1000, 0, 100, 10, 10));
        let b = Sample::from_report(&report(2000, 1000, 100, 10, 10));
        assert_eq!(b.running_secs_since(&a), None);
        assert!(event_rows(&a, &b).iter().all(|r| r.rate.is_none()));
        assert_eq!(source_rows(&a, &b)[0].exits_per_irq, None);
    }
}
