//! The stuck-guest verdict: plain rules over a [`StuckReport`], most
//! telling first (docs/stuck.md lists them), each unit-tested.

use super::{when, Culprit, Finding, StuckReport, DEADLINE_LOST_MS, PROGRESS_WINDOW};

/// The rules, most telling first (docs/stuck.md lists them).
pub fn findings(r: &StuckReport) -> Vec<Finding> {
    let mut f = Vec::new();
    let mut add = |culprit, text: String| f.push(Finding { culprit, text });
    if let Some(why) = &r.vcpus_unavailable {
        add(
            Culprit::Kvm,
            format!("{why}: a vCPU is stuck inside the kernel"),
        );
    }
    for v in &r.vcpus {
        let id = v.id;
        if v.mp_state != "halted" {
            continue;
        }
        if !v.interrupts_enabled {
            add(
                Culprit::Guest,
                format!("vCPU {id} halted with IF=0: nothing can wake it"),
            );
            continue;
        }
        if let Some(irr) = v.irr_highest {
            if irr & 0xf0 > v.ppr & 0xf0 {
                add(
                    Culprit::Kvm,
                    format!(
                        "vCPU {id} halted with IF=1 and vector {irr:#x} pending in IRR above PPR {:#x}: it was never delivered",
                        v.ppr
                    ),
                );
                continue;
            }
        }
        let t = &v.timer;
        match t.fires_in_ms {
            Some(ms)
                if t.mode == "tsc-deadline"
                    && !t.masked
                    && v.irr_highest.is_none()
                    && -ms > DEADLINE_LOST_MS =>
            {
                add(
                    Culprit::Kvm,
                    format!(
                        "vCPU {id} halted with IF=1, its TSC deadline {} and IRR is empty: a timer expiry was never delivered",
                        when(ms)
                    ),
                );
            }
            Some(ms) if !t.masked => add(
                Culprit::Nobody,
                format!(
                    "vCPU {id} halts with IF=1 until its timer, which {}",
                    when(ms)
                ),
            ),
            _ => {}
        }
    }
    for p in &r.ioapic_pins {
        if p.remote_irr && !p.asserted {
            add(
                Culprit::Splitvm,
                format!(
                    "I/O APIC pin {} (vector {:#x}) has Remote IRR set with its line low: the EOI that ends it never reached the I/O APIC",
                    p.pin, p.vector
                ),
            );
        }
    }
    if r.pic.output {
        if let Some(v0) = r.vcpus.iter().find(|v| v.id == 0) {
            if v0.mp_state == "halted" && v0.interrupts_enabled {
                add(
                    Culprit::Splitvm,
                    format!(
                        "the 8259's output is high (master IRR {:#04x}, IMR {:#04x}) while vCPU 0 halts with IF=1: the request was not delivered",
                        r.pic.master.irr, r.pic.master.imr
                    ),
                );
            }
        }
    }
    for q in &r.virtio_queues {
        let n = q.progress.outstanding();
        if !q.progress.receive && n > 0 && q.used_idx_later == q.progress.used_idx {
            add(
                Culprit::Splitvm,
                format!(
                    "{} queue {} holds {n} request(s) the device has not completed (no progress in {} ms)",
                    q.device,
                    q.progress.index,
                    PROGRESS_WINDOW.as_millis()
                ),
            );
        }
    }
    if let Some(c) = &r.channel {
        if c.in_fifo + c.queued > 0 && !c.receive_interrupt_enabled {
            add(
                Culprit::Guest,
                format!(
                    "the channel holds {} byte(s) for the guest, whose receive interrupt is off",
                    c.in_fifo + c.queued
                ),
            );
        }
    }
    for p in &r.ioapic_pins {
        if p.masked && p.asserted {
            add(
                Culprit::Nobody,
                format!(
                    "I/O APIC pin {} is masked with its line asserted: its interrupt waits for an unmask",
                    p.pin
                ),
            );
        }
    }
    for v in &r.vcpus {
        if v.mp_state == "runnable" {
            add(
                Culprit::Nobody,
                format!(
                    "vCPU {} is running guest code (RIP {:#x}): the guest is busy, not waiting",
                    v.id, v.rip
                ),
            );
        }
    }
    if f.is_empty() {
        f.push(Finding {
            culprit: Culprit::Nobody,
            text: "every vCPU halts with interrupts on and nothing is pending anywhere: the guest waits for an event that has not come".into(),
        });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn vcpu(id: u32, mp: &'static str, if_: bool) -> VcpuView {
        VcpuView {
            id,
            mp_state: mp,
            rip: 0x1000,
            code: Some("f4".into()),
            interrupts_enabled: if_,
            interrupt_shadow: false,
            lapic_enabled: true,
            tpr: 0,
            ppr: 0,
            irr_highest: None,
            isr_highest: None,
            timer: TimerView {
                mode: "tsc-deadline",
                masked: false,
                vector: 0xec,
                initial_count: 0,
                current_count: 0,
                tsc_deadline: 0,
                tsc: 0,
                fires_in_ms: None,
            },
            events: Vec::new(),
        }
    }

    fn report(vcpus: Vec<VcpuView>) -> StuckReport {
        StuckReport {
            trigger: "timeout".into(),
            at_ms: 0,
            vcpus,
            vcpus_unavailable: None,
            ioapic_pins: Vec::new(),
            pic: PicView {
                master: PicRegisters::default(),
                slave: PicRegisters::default(),
                output: false,
            },
            virtio_queues: Vec::new(),
            channel: None,
            findings: Vec::new(),
            verdict: String::new(),
        }
        .judge()
    }

    #[test]
    fn a_halted_vcpu_with_interrupts_off_is_the_guests_doing() {
        let r = report(vec![vcpu(0, "halted", false)]);
        assert_eq!(
            r.verdict,
            "vCPU 0 halted with IF=0: nothing can wake it (guest)"
        );
    }

    #[test]
    fn a_deadline_long_past_with_an_empty_irr_is_a_lost_timer_expiry() {
        let mut v = vcpu(0, "halted", true);
        v.timer.fires_in_ms = Some(-3120.4);
        let r = report(vec![v.clone()]);
        assert_eq!(
            r.verdict,
            "vCPU 0 halted with IF=1, its TSC deadline passed 3,120 ms ago and IRR is empty: a timer expiry was never delivered (KVM)"
        );
        // Just passed (in flight) or masked: no verdict about the timer.
        v.timer.fires_in_ms = Some(-2.0);
        assert!(!report(vec![v.clone()]).verdict.contains("deadline"));
        v.timer.fires_in_ms = Some(-3120.4);
        v.timer.masked = true;
        assert!(!report(vec![v]).verdict.contains("deadline"));
    }

    #[test]
    fn a_vector_above_ppr_in_irr_of_a_halted_vcpu_was_not_delivered() {
        let mut v = vcpu(1, "halted", true);
        v.irr_highest = Some(0x41);
        v.ppr = 0x20;
        let r = report(vec![v.clone()]);
        assert!(
            r.verdict.starts_with(
                "vCPU 1 halted with IF=1 and vector 0x41 pending in IRR above PPR 0x20"
            ),
            "{}",
            r.verdict
        );
        assert_eq!(r.findings[0].culprit, Culprit::Kvm);
        // Masked by the priority: the guest's own TPR/ISR holds it back.
        v.ppr = 0x40;
        assert!(!report(vec![v]).verdict.contains("IRR"));
    }

    #[test]
    fn a_virtio_queue_without_progress_blames_the_device_but_a_receive_queue_does_not() {
        let mut r = report(vec![vcpu(0, "halted", true)]);
        let q = |receive, later| QueueView {
            device: "virtio-blk0".into(),
            progress: RingProgress {
                index: 0,
                size: 256,
                avail_idx: 12,
                used_idx: 9,
                receive,
            },
            used_idx_later: later,
        };
        r.virtio_queues = vec![q(false, 9)];
        let r2 = r.clone().judge();
        assert_eq!(
            r2.verdict,
            "virtio-blk0 queue 0 holds 3 request(s) the device has not completed (no progress in 100 ms) (splitvm)"
        );
        r.virtio_queues = vec![q(false, 10), q(true, 9)];
        assert!(!r.judge().verdict.contains("virtio"));
    }

    #[test]
    fn remote_irr_with_the_line_low_and_a_high_pic_output_blame_splitvm() {
        let mut r = report(vec![vcpu(0, "halted", true)]);
        r.ioapic_pins = vec![StuckPin {
            pin: 11,
            rte: 0x1c041,
            vector: 0x41,
            level_triggered: true,
            masked: false,
            asserted: false,
            remote_irr: true,
        }];
        r.pic.output = true;
        let r = r.judge();
        assert!(r
            .verdict
            .starts_with("I/O APIC pin 11 (vector 0x41) has Remote IRR set"));
        assert!(r.findings[1].text.starts_with("the 8259's output is high"));
    }

    #[test]
    fn a_vcpu_waiting_for_its_timer_is_no_fault_and_faults_come_first() {
        let mut v = vcpu(0, "halted", true);
        v.timer.fires_in_ms = Some(15.0);
        let mut r = report(vec![v]);
        assert_eq!(
            r.verdict,
            "vCPU 0 halts with IF=1 until its timer, which fires in 15 ms (no fault seen)"
        );
        r.vcpus.push(vcpu(1, "halted", false));
        let r = r.judge();
        assert_eq!(r.findings[0].culprit, Culprit::Guest);
        assert_eq!(r.findings[1].culprit, Culprit::Nobody);
    }

    #[test]
    fn a_running_vcpu_is_busy_and_nothing_pending_says_so() {
        assert!(report(vec![vcpu(0, "runnable", true)])
            .verdict
            .contains("running guest code"));
        assert!(report(vec![vcpu(0, "halted", true)])
            .verdict
            .starts_with("every vCPU halts with interrupts on"));
    }

    #[test]
    fn a_vcpu_that_does_not_park_is_stuck_in_the_kernel() {
        let mut r = report(Vec::new());
        r.vcpus_unavailable = Some("vCPU(s) 1 did not leave KVM_RUN within 2s".into());
        assert!(r.judge().verdict.contains("stuck inside the kernel (KVM)"));
    }

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(when(-3120.4), "passed 3,120 ms ago");
        assert_eq!(when(12.0), "fires in 12 ms");
        assert_eq!(when(-1234567.0), "passed 1,234,567 ms ago");
    }
}
