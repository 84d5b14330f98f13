//! What `splitvm top` shows: two readings of GET vm.counters
//! (crate::stats::Sample) turned into rows of per-second rates over the
//! VM's running time (a paused interval has no rate).

pub use crate::stats::sample::{Sample, SourceSample};

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
            let exits = SourceSample::userspace_exits;
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
    use serde_json::{json, Value};

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
