//! `--trace-exits` totals next to KVM's binary statistics and splitvm's
//! own counters.

use super::Report;
use crate::trace::TraceReport;

/// Trace totals next to KVM binary statistics and splitvm's own counters.
pub(super) fn compare(r: &Report, t: &TraceReport) -> Vec<crate::trace::Comparison> {
    use crate::trace::Comparison;
    let ev = |n: &str| -> Option<u64> {
        if t.events_enabled.iter().any(|e| e == n) {
            t.event_counts.get(n).copied()
        } else {
            None
        }
    };
    let kvm = |n: &str| -> Option<u64> {
        r.kvm_stats
            .as_ref()
            .filter(|k| k.available)
            .and_then(|k| k.vcpu_total.get(n).copied())
    };
    let delivered_userspace: u64 = r
        .sources
        .iter()
        .filter(|s| !s.in_kernel)
        .filter_map(|s| s.delivered)
        .sum();
    let row =
        |what: &str, e: &str, trace: Option<u64>, counter: &str, value: Option<u64>| Comparison {
            what: what.into(),
            trace_event: e.into(),
            trace,
            counter: counter.into(),
            value,
        };
    let accepted = match (ev("kvm_apic_accept_irq"), ev("kvm_apicv_accept_irq")) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    let in_kernel_accepted: u64 = r
        .sources
        .iter()
        .filter(|s| s.in_kernel)
        .filter_map(|s| s.traced.as_ref())
        .filter_map(|t| t.get("kvm_apic_accept_irq"))
        .sum();
    let eoi_with_vector = ev("kvm_eoi").map(|n| n.saturating_sub(t.eoi_without_isr));
    let exit_reason = |reason: &str| {
        t.kvm_exit_reasons
            .get(reason)
            .copied()
            .or(ev("kvm_exit").map(|_| 0))
    };
    vec![
        row(
            "all exits",
            "kvm_exit",
            ev("kvm_exit"),
            "kvm: exits",
            kvm("exits"),
        ),
        row(
            "returns to userspace",
            "kvm_userspace_exit",
            ev("kvm_userspace_exit"),
            "splitvm: KVM_RUN exits",
            Some(r.total_exits),
        ),
        row(
            "interrupts injected",
            "kvm_inj_virq",
            ev("kvm_inj_virq"),
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "accepted by a LAPIC, from userspace",
            "kvm_apic_accept_irq",
            accepted.map(|a| a.saturating_sub(in_kernel_accepted)),
            "splitvm: delivered",
            Some(delivered_userspace),
        ),
        row(
            "accepted by a LAPIC, all",
            "kvm_apic_accept_irq",
            accepted,
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "EOIs of an in-service vector",
            "kvm_eoi",
            eoi_with_vector,
            "kvm: irq_injections",
            kvm("irq_injections"),
        ),
        row(
            "external-interrupt exits",
            "kvm_exit EXTERNAL_INTERRUPT",
            exit_reason("EXTERNAL_INTERRUPT"),
            "kvm: irq_exits",
            kvm("irq_exits"),
        ),
        row(
            "HLT exits",
            "kvm_exit HLT",
            exit_reason("HLT"),
            "kvm: halt_exits",
            kvm("halt_exits"),
        ),
    ]
}
