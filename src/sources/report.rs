//! The per-source part of the exit report: what each interrupt source
//! cost, built from the registry, the irqchip's pin counters and the
//! merged per-vCPU counters.

use std::collections::BTreeMap;

use serde::Serialize;

use devices::ioapic::PinRoute;
use devices::MsiMessage;

use super::{SourceKind, SourceRegistry};
use crate::counters::VcpuStats;

impl SourceRegistry {
    /// Build the per-source report from the I/O APIC's current routes and
    /// counters and the merged per-vCPU counters. `trace` adds what
    /// `--trace-exits` saw, by source index.
    pub fn report(
        &self,
        routes: &[PinRoute],
        pins: &crate::irqchip::PinCounts,
        vcpus: &[VcpuStats],
        trace: Option<(&BTreeMap<usize, TracedCounts>, &[String])>,
    ) -> Vec<SourceReport> {
        let sum = |f: &dyn Fn(&VcpuStats) -> &Vec<u64>, i: usize| -> u64 {
            vcpus
                .iter()
                .map(|v| f(v).get(i).copied().unwrap_or(0))
                .sum()
        };
        let mut out = Vec::new();
        for (i, s) in self.iter() {
            let eoi_exits = sum(&|v| &v.source_eoi, i);
            let pio_exits = sum(&|v| &v.source_pio, i);
            let mmio_exits = sum(&|v| &v.source_mmio, i);
            let traced = trace.map(|(by, fired)| {
                by.get(&i)
                    .cloned()
                    .unwrap_or_default()
                    .by_event(fired, s.kind)
            });
            let mut r = SourceReport {
                id: s.id(),
                name: s.display_name(),
                kind: s.kind,
                pin: s.pin,
                in_kernel: s.in_kernel(),
                routes: Vec::new(),
                raised: None,
                delivered: None,
                coalesced: None,
                masked_drops: None,
                eoi_exits: (!s.in_kernel()).then_some(eoi_exits),
                pio_exits: (!s.in_kernel()).then_some(pio_exits),
                mmio_exits: (!s.in_kernel()).then_some(mmio_exits),
                userspace_exits: (!s.in_kernel()).then_some(eoi_exits + pio_exits + mmio_exits),
                exits_per_interrupt: None,
                eoi_exits_per_interrupt: None,
                per_vector: BTreeMap::new(),
                traced,
            };
            match s.kind {
                SourceKind::IoapicPin => {
                    let pin = s.pin.unwrap_or(0);
                    if let Some(rt) = routes.get(pin) {
                        r.routes.push(RouteReport::from_pin(rt));
                    }
                    match pins {
                        crate::irqchip::PinCounts::Ioapic(v) => {
                            let p = v.get(pin).copied().unwrap_or_default();
                            r.raised = Some(p.raised);
                            r.delivered = Some(p.delivered);
                            r.coalesced = Some(p.coalesced);
                            r.masked_drops = Some(p.masked_drops);
                        }
                        // KVM's I/O APIC: only the edges splitvm drove.
                        crate::irqchip::PinCounts::Lines(_) => r.raised = pins.raised(pin),
                    }
                }
                SourceKind::Msi => {
                    if let Some(d) = &s.device_counters {
                        let v = d.vectors();
                        for x in &v {
                            r.routes.push(RouteReport::from_msi(
                                MsiMessage {
                                    address: x.address,
                                    data: x.data,
                                },
                                x.masked,
                            ));
                            *r.per_vector.entry(x.data as u8).or_default() += x.delivered;
                        }
                        r.raised = Some(v.iter().map(|x| x.raised).sum());
                        r.delivered = Some(v.iter().map(|x| x.delivered).sum());
                        r.masked_drops = Some(v.iter().map(|x| x.pending).sum());
                    } else if let Some(m) = &s.msi {
                        for msg in m.messages() {
                            r.routes.push(RouteReport::from_msi(msg, false));
                        }
                        // Every signal is one raise; MSIs never coalesce in
                        // userspace.
                        r.raised = Some(m.delivered() + m.failed());
                        r.delivered = Some(m.delivered());
                        r.coalesced = Some(0);
                        r.per_vector = m.per_vector();
                    }
                }
                SourceKind::IoapicMmio => r.eoi_exits = None,
                SourceKind::Ipi | SourceKind::LapicLocal => {}
            }
            if let (Some(d), Some(u)) = (r.delivered, r.userspace_exits) {
                if d > 0 {
                    r.exits_per_interrupt = Some(u as f64 / d as f64);
                    r.eoi_exits_per_interrupt = Some(eoi_exits as f64 / d as f64);
                }
            }
            let active = r.raised.unwrap_or(0)
                + r.delivered.unwrap_or(0)
                + r.masked_drops.unwrap_or(0)
                + r.userspace_exits.unwrap_or(0)
                + r.traced.as_ref().map(|t| t.values().sum()).unwrap_or(0)
                > 0;
            // Every source that did something, every named source, and
            // every pin the guest programmed; idle pc-testdev pins are noise.
            let show = active
                || s.in_kernel()
                || match s.kind {
                    SourceKind::IoapicPin => {
                        s.name.as_deref().is_some_and(|n| n != "pc-testdev")
                            || routes.get(s.pin.unwrap_or(0)).is_some_and(|rt| !rt.masked)
                    }
                    _ => s.name.is_some(),
                };
            if show {
                out.push(r);
            }
        }
        out
    }
}

/// Events `--trace-exits` attributed to one source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TracedCounts {
    /// kvm_set_irq: KVM_IRQ_LINE on the pin's GSI (pins only).
    pub set_irq: u64,
    /// kvm_msi_set_irq: MSIs (and I/O APIC pin deliveries) KVM received.
    pub msi_set_irq: u64,
    /// kvm_apic_accept_irq / kvm_apicv_accept_irq: accepted by a LAPIC.
    pub apic_accept_irq: u64,
    /// kvm_inj_virq: injected into the guest on VM entry.
    pub inj_virq: u64,
    /// kvm_eoi: guest EOIs seen by KVM's LAPIC (in-kernel).
    pub kvm_eoi: u64,
    /// kvm_apic_ipi: ICR writes (IPI source only).
    pub apic_ipi: u64,
    /// kvm_ioapic_set_irq: KVM's in-kernel I/O APIC sent the pin's
    /// interrupt (`--irqchip kernel`).
    pub ioapic_set_irq: u64,
    /// kvm_pic_set_irq: KVM's in-kernel 8259 saw the pin's ISA IRQ.
    pub pic_set_irq: u64,
    /// kvm_ioapic_delayed_eoi_inj: KVM's I/O APIC delayed a level
    /// interrupt's re-delivery after its EOI.
    pub ioapic_delayed_eoi_inj: u64,
}

impl TracedCounts {
    /// Counts by kernel event name, keeping only events in `fired` (an
    /// event that never fired on this host was not measured) that apply to
    /// a source of `kind`.
    pub fn by_event(&self, fired: &[String], kind: SourceKind) -> BTreeMap<String, u64> {
        let pin = kind == SourceKind::IoapicPin;
        let irq = kind != SourceKind::IoapicMmio;
        let all = [
            ("kvm_set_irq", self.set_irq, pin),
            (
                "kvm_msi_set_irq",
                self.msi_set_irq,
                pin || kind == SourceKind::Msi,
            ),
            ("kvm_apic_accept_irq", self.apic_accept_irq, irq),
            ("kvm_inj_virq", self.inj_virq, irq),
            ("kvm_eoi", self.kvm_eoi, irq),
            ("kvm_apic_ipi", self.apic_ipi, kind == SourceKind::Ipi),
            ("kvm_ioapic_set_irq", self.ioapic_set_irq, pin),
            ("kvm_pic_set_irq", self.pic_set_irq, pin),
            (
                "kvm_ioapic_delayed_eoi_inj",
                self.ioapic_delayed_eoi_inj,
                pin,
            ),
        ];
        all.iter()
            .filter(|(e, _, applies)| *applies && fired.iter().any(|f| f == e))
            .map(|(e, n, _)| (e.to_string(), *n))
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.set_irq
            + self.msi_set_irq
            + self.apic_accept_irq
            + self.inj_virq
            + self.kvm_eoi
            + self.apic_ipi
            + self.ioapic_set_irq
            + self.pic_set_irq
            + self.ioapic_delayed_eoi_inj
    }
}

/// Where a source's interrupts go now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteReport {
    pub vector: u8,
    pub destination: u32,
    pub dest_mode: &'static str,
    pub trigger: &'static str,
    pub delivery_mode: u8,
    pub masked: bool,
}

impl RouteReport {
    fn from_pin(r: &PinRoute) -> Self {
        RouteReport {
            vector: r.vector,
            destination: r.destination,
            dest_mode: if r.dest_logical {
                "logical"
            } else {
                "physical"
            },
            trigger: if r.level_triggered { "level" } else { "edge" },
            delivery_mode: r.delivery_mode,
            masked: r.masked,
        }
    }
    fn from_msi(m: MsiMessage, masked: bool) -> Self {
        RouteReport {
            vector: m.vector(),
            destination: m.destination(),
            dest_mode: if m.logical() { "logical" } else { "physical" },
            trigger: if m.level_triggered() { "level" } else { "edge" },
            delivery_mode: m.delivery_mode(),
            masked,
        }
    }
}

/// One row of the per-source report (JSON `sources[]`). `None` (JSON null)
/// means "not measured", never zero.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub id: String,
    pub name: String,
    pub kind: SourceKind,
    pub pin: Option<usize>,
    /// Handled entirely inside KVM: userspace counters do not apply.
    pub in_kernel: bool,
    pub routes: Vec<RouteReport>,
    pub raised: Option<u64>,
    pub delivered: Option<u64>,
    pub coalesced: Option<u64>,
    pub masked_drops: Option<u64>,
    /// KVM_EXIT_IOAPIC_EOI exits attributed to this source.
    pub eoi_exits: Option<u64>,
    /// Userspace port I/O exits on the source's registers.
    pub pio_exits: Option<u64>,
    /// Userspace MMIO exits on the source's registers.
    pub mmio_exits: Option<u64>,
    /// eoi_exits + pio_exits + mmio_exits.
    pub userspace_exits: Option<u64>,
    /// userspace_exits / delivered.
    pub exits_per_interrupt: Option<f64>,
    /// eoi_exits / delivered.
    pub eoi_exits_per_interrupt: Option<f64>,
    /// Deliveries per vector (MSI sources).
    pub per_vector: BTreeMap<u8, u64>,
    /// What `--trace-exits` attributed to this source (null without it).
    /// What `--trace-exits` attributed to this source, by kernel event name;
    /// only events that fired on this host (null without tracing).
    pub traced: Option<BTreeMap<String, u64>>,
}
