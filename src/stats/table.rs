//! The human-readable rendering of a [`Report`] (`--stats`).

use std::collections::BTreeMap;

use super::{Report, EXIT_KINDS};

impl Report {
    /// The human-readable table printed by `--stats`.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "=== splitvm exit report ===");
        if let Some(h) = &self.host {
            let _ = writeln!(s, "{}", h.summary);
        }
        if !self.disable_exits.is_empty() {
            let _ = writeln!(
                s,
                "KVM exits disabled (KVM_CAP_X86_DISABLE_EXITS): {}",
                self.disable_exits.join(", ")
            );
        }
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
        if self.coalesced_io != "off" {
            let _ = writeln!(s, "coalesced PIO (--coalesced-io): {}", self.coalesced_io);
        }
        section(
            &mut s,
            "coalesced PIO writes per device (not exits)",
            &self.coalesced_pio_per_device,
        );
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
                "I/O APIC pins   {:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                "raised", "delivered", "coalesced", "lost", "masked", "eoi"
            );
            for p in &self.ioapic_pins {
                let _ = writeln!(
                    s,
                    "  pin {:<10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    p.pin, p.raised, p.delivered, p.coalesced, p.lost, p.masked_drops, p.eoi
                );
            }
        }
        if let Some(p) = &self.pic {
            let _ = writeln!(
                s,
                "8259 PIC        {:>10}{:>10}   (EOI writes {}, IMR writes {}, other writes {}, reads {}, spurious {}, irq-window exits {})",
                "raised", "delivered", p.eoi_writes, p.imr_writes, p.other_writes, p.reads, p.spurious, p.irq_window_exits
            );
            for i in &p.irqs {
                let _ = writeln!(s, "  irq {:<10}{:>10}{:>10}", i.irq, i.raised, i.delivered);
            }
        }
        if let Some(m) = &self.msi_test_port {
            let _ = writeln!(s, "MSI test port: {} injected", m.injected);
        }
        if !self.virtio_devices.is_empty() {
            let _ = writeln!(
                s,
                "Virtio devices  {:<10}{:<24}{:>12}{:>14}  counters",
                "transport", "interrupt", "interrupts", "notify-exits"
            );
            for d in &self.virtio_devices {
                let busy: Vec<String> = d
                    .counters
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "  {:<14}{:<10}{:<24}{:>12}{:>14}  {}",
                    d.name,
                    d.transport,
                    d.interrupt,
                    d.interrupts,
                    d.notify_exits,
                    busy.join(", ")
                );
            }
        }
        self.sources_table(&mut s);
        self.kvm_stats_table(&mut s);
        self.trace_table(&mut s);
        s
    }

    fn sources_table(&self, s: &mut String) {
        use std::fmt::Write;
        if self.sources.is_empty() {
            return;
        }
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            s,
            "{:<26}{:<18}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}  in-kernel (trace)",
            "Interrupt sources",
            "routed to",
            "raised",
            "delivered",
            "coal",
            "eoi-exits",
            "reg-exits",
            "exits/int"
        );
        for r in &self.sources {
            let label = match (r.kind, r.pin) {
                (crate::sources::SourceKind::IoapicPin, Some(p)) => format!("{} (pin {p})", r.name),
                (crate::sources::SourceKind::Msi, _) => format!("{} (msi)", r.name),
                _ if r.in_kernel => format!("{} (in KVM)", r.name),
                _ => r.name.clone(),
            };
            let mut route: Vec<String> = r
                .routes
                .iter()
                .take(2)
                .map(|x| {
                    format!(
                        "{:#04x}>{}{}{}{}",
                        x.vector,
                        if x.dest_mode == "logical" { "L" } else { "" },
                        x.destination,
                        if x.trigger == "level" { " lvl" } else { "" },
                        if x.masked { " M" } else { "" }
                    )
                })
                .collect();
            if r.routes.len() > 2 {
                route.push(format!("+{}", r.routes.len() - 2));
            }
            let route = if route.is_empty() {
                "-".to_string()
            } else {
                route.join(",")
            };
            let reg = match (r.pio_exits, r.mmio_exits) {
                (Some(p), Some(m)) => Some(p + m),
                _ => None,
            };
            let per = r
                .exits_per_interrupt
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "n/a".into());
            let traced = match &r.traced {
                None => "n/a".to_string(),
                Some(t) if t.is_empty() => "-".to_string(),
                Some(t) if t.values().all(|n| *n == 0) => "0".to_string(),
                Some(t) => t
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(e, n)| format!("{} {n}", e.trim_start_matches("kvm_")))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let _ = writeln!(
                s,
                "  {:<24}{:<18}{:>8}{:>10}{:>6}{:>10}{:>10}{:>10}  {}",
                label.chars().take(23).collect::<String>(),
                route.chars().take(17).collect::<String>(),
                opt(r.raised),
                opt(r.delivered),
                opt(r.coalesced),
                opt(r.eoi_exits),
                opt(reg),
                per,
                traced
            );
        }
        if self.eoi_exits_unattributed + self.eoi_exits_shared > 0 {
            let _ = writeln!(
                s,
                "  EOI exits with no level pin on the vector: {}; completing a shared vector: {}",
                self.eoi_exits_unattributed, self.eoi_exits_shared
            );
        }
        let _ = writeln!(
            s,
            "  (eoi-exits: KVM_EXIT_IOAPIC_EOI attributed at exit time; reg-exits: userspace PIO/MMIO exits on the source's registers; exits/int = (eoi+reg)/delivered; IPIs and LAPIC timer never leave KVM: counted only by --trace-exits)"
        );
    }

    fn kvm_stats_table(&self, s: &mut String) {
        use std::fmt::Write;
        let Some(k) = &self.kvm_stats else {
            return;
        };
        if !k.available {
            let _ = writeln!(
                s,
                "KVM binary stats: not available ({})",
                k.error.as_deref().unwrap_or("no KVM_CAP_BINARY_STATS_FD")
            );
            return;
        }
        let _ = write!(s, "{:<28}", "KVM stats (vCPU, delta)");
        for v in &k.vcpus {
            let _ = write!(s, "{:>12}", format!("vcpu{}", v.id));
        }
        let _ = writeln!(s, "{:>12}", "total");
        let mut zero = 0;
        for (name, total) in &k.vcpu_total {
            if *total == 0 {
                zero += 1;
                continue;
            }
            let _ = write!(s, "  {:<26}", name.chars().take(26).collect::<String>());
            for v in &k.vcpus {
                let _ = write!(
                    s,
                    "{:>12}",
                    v.delta.cumulative.get(name).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(s, "{total:>12}");
        }
        if zero > 0 {
            let _ = writeln!(s, "  ({zero} more vCPU counters stayed 0)");
        }
        let vm: Vec<String> =
            k.vm.cumulative
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
        if !vm.is_empty() {
            let _ = writeln!(s, "KVM stats (VM, delta): {}", vm.join(", "));
        }
        if let Some(e) = &k.error {
            let _ = writeln!(s, "  KVM stats errors: {e}");
        }
    }

    fn trace_table(&self, s: &mut String) {
        use std::fmt::Write;
        let Some(t) = &self.trace else {
            return;
        };
        if !t.available {
            let _ = writeln!(
                s,
                "trace: not available ({}); per-source numbers above come from counters only",
                t.unavailable.as_deref().unwrap_or("unknown reason")
            );
            return;
        }
        let ev: Vec<String> = t
            .event_counts
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(s, "trace events: {}", ev.join(", "));
        if !t.events_silent.is_empty() {
            let _ = writeln!(
                s,
                "  did not fire (not available on this host): {}",
                t.events_silent.join(", ")
            );
        }
        if !t.events_missing.is_empty() {
            let _ = writeln!(s, "  not in this kernel: {}", t.events_missing.join(", "));
        }
        if !t.kvm_exit_reasons.is_empty() {
            let r: Vec<String> = t
                .kvm_exit_reasons
                .iter()
                .map(|(n, v)| format!("{n} {v}"))
                .collect();
            let _ = writeln!(s, "  kvm_exit reasons: {}", r.join(", "));
        }
        if t.eoi_without_isr > 0 {
            let _ = writeln!(
                s,
                "  kvm_eoi with no vector in service: {} (not attributed; on kvm_pvm each EOI write is seen twice)",
                t.eoi_without_isr
            );
        }
        let unattr = t.unattributed.total();
        if unattr > 0 {
            let _ = writeln!(
                s,
                "  unattributed: {unattr} events (kvm_msi_set_irq also fires for every route KVM scans, e.g. after KVM_SET_GSI_ROUTING)"
            );
        }
        if let Some(o) = t.overrun.filter(|o| *o > 0) {
            let _ = writeln!(s, "  WARNING: {o} trace events lost (ring buffer overrun)");
        }
        if !t.comparison.is_empty() {
            let _ = writeln!(
                s,
                "  {:<46}{:>13}  {:<26}{:>8}",
                "trace vs counters", "trace", "counter", "value"
            );
            for c in &t.comparison {
                let _ = writeln!(
                    s,
                    "  {:<46}{:>13}  {:<26}{:>8}",
                    format!("{} ({})", c.what, c.trace_event)
                        .chars()
                        .take(46)
                        .collect::<String>(),
                    c.trace
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "did not fire".into()),
                    c.counter.chars().take(26).collect::<String>(),
                    c.value
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "n/a".into())
                );
            }
        }
    }
}
