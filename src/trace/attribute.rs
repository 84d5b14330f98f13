//! Reading trace lines: each KVM event parsed and attributed to the
//! interrupt source that owns its vector (the registry's, then the I/O
//! APIC routes at the time it is read).

use std::collections::{BTreeMap, BTreeSet};

use devices::ioapic::PinRoute;

use crate::sources::{SourceRegistry, TracedCounts, SOURCE_IPI, SOURCE_LAPIC_LOCAL};

pub(super) struct State {
    /// Pin routes learned from kvm_ioapic_set_irq (KVM's irqchip).
    pub(super) learned: Vec<PinRoute>,
    pub(super) counts: BTreeMap<String, u64>,
    pub(super) exit_reasons: BTreeMap<String, u64>,
    pub(super) userspace_reasons: BTreeMap<String, u64>,
    pub(super) inhibits: Vec<String>,
    pub(super) by_source: BTreeMap<usize, TracedCounts>,
    pub(super) unattributed: TracedCounts,
    pub(super) ipi_vectors: BTreeSet<u8>,
    pub(super) eoi_without_isr: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            // Unknown until seen: masked, vector 0 (owns nothing).
            learned: (0..devices::ioapic::NUM_PINS)
                .map(|pin| PinRoute::of_rte(pin, 1 << 16))
                .collect(),
            counts: BTreeMap::new(),
            exit_reasons: BTreeMap::new(),
            userspace_reasons: BTreeMap::new(),
            inhibits: Vec::new(),
            by_source: BTreeMap::new(),
            unattributed: TracedCounts::default(),
            ipi_vectors: BTreeSet::new(),
            eoi_without_isr: 0,
        }
    }
}

/// Value of `key` in a "key value key value" field list.
fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    let mut it = fields.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
    }
    None
}

fn num(s: Option<&str>) -> Option<u64> {
    let s = s?.trim_end_matches(',');
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn hex(s: Option<&str>) -> Option<u64> {
    u64::from_str_radix(s?.trim_start_matches("0x"), 16).ok()
}

/// Parse one trace_pipe line: "<comm>-<tid> [cpu] flags ts: event: fields".
fn split_line(line: &str) -> Option<(&str, &str)> {
    let i = line.find(": kvm_")?;
    let rest = &line[i + 2..];
    let j = rest.find(':')?;
    Some((&rest[..j], rest[j + 1..].trim()))
}

/// One trace line. `kernel`: KVM's own irqchip runs (GSIs below 16 are ISA
/// IRQs, pin routes are learned from kvm_ioapic_set_irq into
/// `st.learned`).
pub(super) fn handle_line(
    line: &str,
    st: &mut State,
    reg: &SourceRegistry,
    routes: &[PinRoute],
    kernel: bool,
) {
    let Some((event, f)) = split_line(line) else {
        return;
    };
    *st.counts.entry(event.to_string()).or_default() += 1;
    // Source(s) owning `vector` delivered to `apic`: registry first, then
    // IPIs seen with that vector, then LAPIC-local.
    let owners = |st: &State, vector: u8, apic: Option<u32>| -> Vec<usize> {
        let o = reg.vector_owners(vector, apic, routes);
        if !o.is_empty() {
            o
        } else if st.ipi_vectors.contains(&vector) {
            vec![SOURCE_IPI]
        } else {
            vec![SOURCE_LAPIC_LOCAL]
        }
    };
    let bump = |st: &mut State, srcs: &[usize], f: fn(&mut TracedCounts)| {
        if srcs.is_empty() {
            f(&mut st.unattributed);
        }
        for s in srcs {
            f(st.by_source.entry(*s).or_default());
        }
    };
    match event {
        "kvm_exit" => {
            let reason = field(f, "reason").unwrap_or("?").to_string();
            *st.exit_reasons.entry(reason).or_default() += 1;
        }
        "kvm_userspace_exit" => {
            let reason = field(f, "reason").unwrap_or("?").to_string();
            *st.userspace_reasons.entry(reason).or_default() += 1;
        }
        "kvm_apicv_inhibit_changed" if st.inhibits.len() < 64 => {
            st.inhibits.push(f.to_string());
        }
        "kvm_set_irq" => {
            // KVM_IRQ_LINE (and KVM's PIT): GSI i < 24 is I/O APIC pin i in
            // split mode (its MSI route); with KVM's irqchip, the pin the
            // PC wires GSI i to.
            if let Some(gsi) = num(field(f, "gsi")) {
                let pin = if kernel {
                    crate::irqchip::gsi_pin(gsi as u32)
                } else {
                    gsi as usize
                };
                let srcs: Vec<usize> = reg.pin_source(pin).into_iter().collect();
                bump(st, &srcs, |c| c.set_irq += 1);
            }
        }
        "kvm_ioapic_set_irq" => {
            // "pin 4 dst 0 vec 36 (Fixed|physical|edge)": learn the route.
            if let (Some(pin), Some(vec)) = (num(field(f, "pin")), num(field(f, "vec"))) {
                let pin = pin as usize;
                if let Some(slot) = st.learned.get_mut(pin) {
                    *slot = PinRoute {
                        pin,
                        vector: vec as u8,
                        delivery_mode: 0,
                        destination: hex(field(f, "dst")).unwrap_or(0) as u32,
                        dest_logical: f.contains("|logical|"),
                        level_triggered: f.contains("|level"),
                        masked: f.contains("|masked"),
                    };
                }
                let srcs: Vec<usize> = reg.pin_source(pin).into_iter().collect();
                bump(st, &srcs, |c| c.ioapic_set_irq += 1);
            }
        }
        "kvm_pic_set_irq" => {
            // "chip 0 pin 4 (edge|masked)": ISA IRQ chip * 8 + pin.
            if let (Some(chip), Some(p)) = (num(field(f, "chip")), num(field(f, "pin"))) {
                let irq = (chip * 8 + p) as u8;
                let pin = arch::layout::isa_irq_pin(irq).map(usize::from);
                let srcs: Vec<usize> = pin.and_then(|p| reg.pin_source(p)).into_iter().collect();
                bump(st, &srcs, |c| c.pic_set_irq += 1);
            }
        }
        "kvm_ioapic_delayed_eoi_inj" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let o = reg.vector_owners(vec, None, routes);
            bump(st, &o, |c| c.ioapic_delayed_eoi_inj += 1);
        }
        "kvm_msi_set_irq" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let dst = hex(field(f, "dst")).map(|d| d as u32);
            let logical = f.contains("logical");
            let o = reg.vector_owners(vec, if logical { None } else { dst }, routes);
            bump(st, &o, |c| c.msi_set_irq += 1);
        }
        "kvm_apic_accept_irq" | "kvm_apicv_accept_irq" => {
            let vec = num(field(f, "vec")).unwrap_or(0) as u8;
            let apic = hex(field(f, "apicid")).map(|a| a as u32);
            // INIT and SIPI come only from ICR writes; their "vector" is not
            // an interrupt vector.
            let o = if f.contains("(INIT|") || f.contains("(SIPI|") {
                vec![SOURCE_IPI]
            } else {
                owners(st, vec, apic)
            };
            bump(st, &o, |c| c.apic_accept_irq += 1);
        }
        // "IRQ 0x41" or "Soft/INTn 0x..": no APIC ID in this event.
        "kvm_inj_virq" if f.starts_with("IRQ") => {
            let vec = f.split_whitespace().nth(1).and_then(|v| hex(Some(v)));
            let o = owners(st, vec.unwrap_or(0) as u8, None);
            bump(st, &o, |c| c.inj_virq += 1);
        }
        "kvm_eoi" => {
            let Some(vec) = num(field(f, "vector")) else {
                st.eoi_without_isr += 1; // "vector -1"
                return;
            };
            let vec = vec as u8;
            let apic = hex(field(f, "apicid")).map(|a| a as u32);
            let o = owners(st, vec, apic);
            bump(st, &o, |c| c.kvm_eoi += 1);
        }
        "kvm_apic_ipi" => {
            if let Some(v) = num(field(f, "vec")) {
                // Fixed-mode IPIs only: INIT/SIPI vectors are not vectors.
                if f.contains("(Fixed|") || f.contains("(LowPrio|") {
                    st.ipi_vectors.insert(v as u8);
                }
            }
            bump(st, &[SOURCE_IPI], |c| c.apic_ipi += 1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn lines_are_split_into_event_and_fields() {
        let l = "           vcpu0-4242    [001] d..1.  5123.000123: kvm_eoi: apicid 0 vector 65";
        assert_eq!(split_line(l), Some(("kvm_eoi", "apicid 0 vector 65")));
        assert_eq!(field("apicid 0 vector 65", "vector"), Some("65"));
        let l = " x-1 [000] ..... 1.0: kvm_msi_set_irq: dst 1 vec 69 (Fixed|physical|edge)";
        assert_eq!(split_line(l).unwrap().0, "kvm_msi_set_irq");
        assert_eq!(split_line("garbage"), None);
    }

    #[test]
    fn events_are_attributed_by_vector() {
        let mut reg = SourceRegistry::new();
        reg.register_msi_source("x", Arc::new(Nop), None);
        let pin11 = reg.name_pin(11, "pc-testdev").unwrap();
        let routes = vec![PinRoute {
            pin: 11,
            vector: 0x41,
            delivery_mode: 0,
            destination: 0,
            dest_logical: false,
            level_triggered: true,
            masked: false,
        }];
        let mut st = State::default();
        let l = |e: &str| format!(" vcpu0-1 [000] ..... 1.0: {e}");
        handle_line(
            &l("kvm_eoi: apicid 0 vector 65"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_apic_accept_irq: apicid 0 vec 65 (Fixed|level)"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_apic_ipi: dst 1 vec 80 (Fixed|physical|assert|edge|dst)"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 1 vector 80"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 0 vector 236"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        handle_line(
            &l("kvm_eoi: apicid 0 vector -1"),
            &mut st,
            &reg,
            &routes,
            false,
        );
        assert_eq!(st.eoi_without_isr, 1);
        assert_eq!(st.by_source[&pin11].kvm_eoi, 1);
        assert_eq!(st.by_source[&pin11].apic_accept_irq, 1);
        assert_eq!(st.by_source[&SOURCE_IPI].kvm_eoi, 1);
        assert_eq!(st.by_source[&SOURCE_IPI].apic_ipi, 1);
        assert_eq!(st.by_source[&SOURCE_LAPIC_LOCAL].kvm_eoi, 1);
        assert_eq!(st.counts["kvm_eoi"], 4);
    }

    #[test]
    fn with_kvms_irqchip_pin_routes_are_learned_and_gsi_0_is_the_pit_pin() {
        let mut reg = SourceRegistry::new();
        let pit = reg.name_pin(2, "pit").unwrap();
        let serial = reg.name_pin(4, "serial").unwrap();
        let mut st = State::default();
        let l = |e: &str| format!(" vcpu0-1 [000] ..... 1.0: {e}");
        let feed = |st: &mut State, e: &str| {
            let routes = st.learned.clone();
            handle_line(&l(e), st, &reg, &routes, true);
        };
        feed(&mut st, "kvm_set_irq: gsi 0 level 1 source 0");
        feed(&mut st, "kvm_pic_set_irq: chip 0 pin 0 (edge|masked)");
        feed(
            &mut st,
            "kvm_ioapic_set_irq: pin 2 dst 0 vec 48 (Fixed|physical|edge)",
        );
        feed(&mut st, "kvm_apic_accept_irq: apicid 0 vec 48 (Fixed|edge)");
        feed(&mut st, "kvm_eoi: apicid 0 vector 48");
        feed(
            &mut st,
            "kvm_ioapic_set_irq: pin 4 dst 0 vec 36 (Fixed|physical|edge)",
        );
        feed(&mut st, "kvm_pic_set_irq: chip 0 pin 4 (edge|masked)");
        let p = &st.by_source[&pit];
        assert_eq!((p.set_irq, p.pic_set_irq, p.ioapic_set_irq), (1, 1, 1));
        assert_eq!((p.apic_accept_irq, p.kvm_eoi), (1, 1));
        assert_eq!(st.learned[2].vector, 48);
        let s = &st.by_source[&serial];
        assert_eq!((s.ioapic_set_irq, s.pic_set_irq), (1, 1));
    }

    struct Nop;
    impl devices::MsiRouting for Nop {
        fn set_route(
            &self,
            _: u32,
            _: Option<devices::MsiMessage>,
        ) -> Result<(), devices::InterruptError> {
            Ok(())
        }
        fn signal(&self, _: u32) -> Result<(), devices::InterruptError> {
            Ok(())
        }
        fn signal_msi(&self, _: devices::MsiMessage) -> Result<(), devices::InterruptError> {
            Ok(())
        }
    }
}
