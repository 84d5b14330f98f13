//! "Why is it stuck": what splitvm can see of a guest that did not finish,
//! and a verdict from plain rules (docs/stuck.md).
//!
//! Taken when a run ends without the guest finishing (`--timeout`, SIGTERM
//! or SIGINT) and on demand (SIGUSR2: printed, the guest runs on). The
//! vCPUs park as they do for a snapshot (src/snapshot/pause.rs: each
//! completes the exit it was in, then reads its own registers, LAPIC, MSRs
//! and pending events); nothing is written, so a guest that goes on after
//! SIGUSR2 finishes as it would have. Then the platform: I/O APIC pins in
//! service or masked while asserted, the 8259 registers, each active
//! virtio queue's indices in guest memory (sampled twice,
//! [`PROGRESS_WINDOW`] apart), what the host-guest channel holds for the
//! guest.
//!
//! The LAPIC page is read through arch::lapic; the rules are
//! [`findings`], a pure function of the [`StuckReport`], so each is
//! unit-tested.

use std::time::Duration;

use serde::Serialize;

use devices::channel::ChannelWaiting;
use devices::ioapic::StuckPin;
use devices::pic::PicRegisters;
use devices::virtio::RingProgress;

use crate::snapshot::pause::Parked;

/// The verdict line on stderr starts with this (`splitvm test` puts what
/// follows into a failed case's detail and JUnit message).
pub const VERDICT_PREFIX: &str = "splitvm: stuck: ";

/// How long the virtio queues are watched for progress.
pub const PROGRESS_WINDOW: Duration = Duration::from_millis(100);
/// How long the vCPUs get to park (a vCPU that does not leave KVM_RUN in
/// this time is itself the finding).
pub const PARK_TIMEOUT: Duration = Duration::from_secs(2);
/// A TSC deadline that passed longer ago than this while its vCPU halts
/// with interrupts on was lost: KVM delivers an expiry within microseconds,
/// and the longest gap between two of a Linux guest's ticks here is 20 ms
/// (HZ=50, resources/guest/patches).
pub const DEADLINE_LOST_MS: f64 = 100.0;

/// IA32_TSC and IA32_TSC_DEADLINE: a stuck-guest report needs both, so
/// every pause reads them (docs/stuck.md).
pub const MSR_TSC: u32 = 0x10;
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;

const RFLAGS_IF: u64 = 1 << 9;

/// The LAPIC timer as the guest programmed it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimerView {
    /// "one-shot", "periodic", "tsc-deadline" or "reserved".
    pub mode: &'static str,
    pub masked: bool,
    pub vector: u8,
    pub initial_count: u32,
    pub current_count: u32,
    /// IA32_TSC_DEADLINE (0: disarmed or fired).
    pub tsc_deadline: u64,
    /// The guest's TSC when the state was read.
    pub tsc: u64,
    /// Milliseconds until the timer fires (negative: it passed that long
    /// ago), from the deadline and the TSC rate, or from the current
    /// count at KVM's 1 GHz APIC bus; None when nothing is armed.
    pub fires_in_ms: Option<f64>,
}

/// One vCPU.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VcpuView {
    pub id: u32,
    /// KVM's MP state: "runnable", "halted", "uninitialized", ...
    pub mp_state: &'static str,
    pub rip: u64,
    /// The instruction bytes at RIP (hex), when they could be read.
    pub code: Option<String>,
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
    /// In an interrupt shadow (after sti or mov ss).
    pub interrupt_shadow: bool,
    pub lapic_enabled: bool,
    pub tpr: u8,
    pub ppr: u8,
    pub irr_highest: Option<u8>,
    pub isr_highest: Option<u8>,
    pub timer: TimerView,
    /// Pending or injected events (KVM_GET_VCPU_EVENTS), in words.
    pub events: Vec<String>,
}

/// A virtio queue watched for [`PROGRESS_WINDOW`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueView {
    pub device: String,
    #[serde(flatten)]
    pub progress: RingProgress,
    /// The device's used index at the end of the window.
    pub used_idx_later: u16,
}

/// The 8259 pair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PicView {
    pub master: PicRegisters,
    pub slave: PicRegisters,
    /// The master's INT output (to vCPU 0's LINT0).
    pub output: bool,
}

/// Who a finding points at.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Culprit {
    Guest,
    Kvm,
    Splitvm,
    /// Not a fault: the guest is busy or waiting for something that may
    /// still come.
    Nobody,
}

impl Culprit {
    fn name(self) -> &'static str {
        match self {
            Culprit::Guest => "guest",
            Culprit::Kvm => "KVM",
            Culprit::Splitvm => "splitvm",
            Culprit::Nobody => "no fault seen",
        }
    }
}

/// One rule that matched.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub culprit: Culprit,
    pub text: String,
}

impl Finding {
    fn line(&self) -> String {
        format!("{} ({})", self.text, self.culprit.name())
    }
}

/// The report (`stuck` in the JSON report, docs/stats-schema.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StuckReport {
    /// "timeout", "signal 15", "sigusr2".
    pub trigger: String,
    /// Milliseconds since splitvm started.
    pub at_ms: u64,
    pub vcpus: Vec<VcpuView>,
    /// Why the vCPUs' state is missing (a vCPU did not park).
    pub vcpus_unavailable: Option<String>,
    pub ioapic_pins: Vec<StuckPin>,
    pub pic: PicView,
    pub virtio_queues: Vec<QueueView>,
    /// The host-guest channel (`-- CMD` only).
    pub channel: Option<ChannelWaiting>,
    /// Every rule that matched, most telling first.
    pub findings: Vec<Finding>,
    /// The first finding, as one line.
    pub verdict: String,
}

fn mp_state_name(s: u32) -> &'static str {
    match s {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "runnable",
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "uninitialized",
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "init-received",
        kvm_bindings::KVM_MP_STATE_HALTED => "halted",
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "sipi-received",
        kvm_bindings::KVM_MP_STATE_STOPPED => "stopped",
        _ => "other",
    }
}

/// The view of one parked vCPU.
pub fn vcpu_view(p: &Parked) -> VcpuView {
    use arch::lapic::{self, read as reg32};
    let s = &p.state;
    let regs = &s.lapic.regs;
    let msr = |i: u32| s.msrs.iter().find(|m| m.index == i).map(|m| m.data);
    let lvtt = reg32(regs, lapic::LVT_TIMER);
    let mode = match (lvtt >> 17) & 3 {
        0 => "one-shot",
        1 => "periodic",
        2 => "tsc-deadline",
        _ => "reserved",
    };
    let masked = lvtt & lapic::LVT_MASKED != 0;
    let (initial_count, current_count) = (
        reg32(regs, lapic::TIMER_INITIAL_COUNT),
        reg32(regs, lapic::TIMER_CURRENT_COUNT),
    );
    let tsc = msr(MSR_TSC).unwrap_or(0);
    let tsc_deadline = msr(MSR_TSC_DEADLINE).unwrap_or(0);
    let fires_in_ms = match mode {
        "tsc-deadline" if tsc_deadline != 0 && s.tsc_khz != 0 => {
            Some((tsc_deadline as i128 - tsc as i128) as f64 / f64::from(s.tsc_khz))
        }
        "one-shot" | "periodic" if current_count != 0 => {
            // TDCR bits 0, 1, 3: divide by 2, 4, ..., 128, or 1 (0b1011).
            let d = reg32(regs, lapic::TIMER_DIVIDE);
            let code = (d & 3) | ((d >> 1) & 4);
            let divide = if code == 7 { 1 } else { 2u64 << code };
            Some((u64::from(current_count) * divide) as f64 / 1e6)
        }
        _ => None,
    };
    let e = &s.events;
    let mut events = Vec::new();
    if e.exception.injected != 0 || e.exception.pending != 0 {
        events.push(format!(
            "exception {} {}",
            e.exception.nr,
            if e.exception.injected != 0 {
                "injected"
            } else {
                "pending"
            }
        ));
    }
    if e.interrupt.injected != 0 {
        events.push(format!("interrupt {:#x} injected", e.interrupt.nr));
    }
    if e.nmi.pending != 0 {
        events.push("NMI pending".into());
    }
    if e.nmi.injected != 0 {
        events.push("NMI injected".into());
    }
    if e.nmi.masked != 0 {
        events.push("NMIs masked".into());
    }
    VcpuView {
        id: s.id,
        mp_state: mp_state_name(s.mp_state.mp_state),
        rip: s.regs.rip,
        code: p.code.as_deref().map(crate::vcpu::hex_bytes),
        interrupts_enabled: s.regs.rflags & RFLAGS_IF != 0,
        interrupt_shadow: e.interrupt.shadow != 0,
        lapic_enabled: reg32(regs, lapic::SVR) & lapic::SVR_ENABLE != 0,
        tpr: reg32(regs, lapic::TPR) as u8,
        ppr: reg32(regs, lapic::PPR) as u8,
        irr_highest: lapic::highest_vector(regs, lapic::IRR),
        isr_highest: lapic::highest_vector(regs, lapic::ISR),
        timer: TimerView {
            mode,
            masked,
            vector: lvtt as u8,
            initial_count,
            current_count,
            tsc_deadline,
            tsc,
            fires_in_ms,
        },
        events,
    }
}

/// "fires in 12 ms" / "passed 3,120 ms ago".
fn when(ms: f64) -> String {
    let n = ms.abs().round() as u64;
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if ms >= 0.0 {
        format!("fires in {grouped} ms")
    } else {
        format!("passed {grouped} ms ago")
    }
}

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

impl StuckReport {
    /// Fill `findings` and `verdict` from the rest: faults first (in rule
    /// order), then what is not a fault.
    pub fn judge(mut self) -> StuckReport {
        self.findings = findings(&self);
        self.findings.sort_by_key(|f| f.culprit == Culprit::Nobody);
        self.verdict = self.findings.first().map(Finding::line).unwrap_or_default();
        self
    }

    /// The stderr rendering: what was seen, then the verdict line.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "splitvm: stuck? state at {} ({:.1} s):",
            self.trigger,
            self.at_ms as f64 / 1e3
        );
        if let Some(why) = &self.vcpus_unavailable {
            let _ = writeln!(s, "  vCPUs: state unavailable: {why}");
        }
        for v in &self.vcpus {
            let t = &v.timer;
            let timer = match t.fires_in_ms {
                Some(ms) => format!("{} vector {:#x}, {}", t.mode, t.vector, when(ms)),
                None => format!("{} vector {:#x}, not armed", t.mode, t.vector),
            };
            let opt = |v: Option<u8>| v.map_or("-".to_string(), |v| format!("{v:#x}"));
            let _ = writeln!(
                s,
                "  vCPU {}: {}, IF={}{}, RIP {:#x} [{}]; LAPIC{} TPR {:#x} PPR {:#x} IRR {} ISR {}; timer {}{}; events: {}",
                v.id,
                v.mp_state,
                u8::from(v.interrupts_enabled),
                if v.interrupt_shadow { " (shadow)" } else { "" },
                v.rip,
                v.code.as_deref().unwrap_or("unreadable"),
                if v.lapic_enabled { "" } else { " (disabled)" },
                v.tpr,
                v.ppr,
                opt(v.irr_highest),
                opt(v.isr_highest),
                timer,
                if t.masked { " (masked)" } else { "" },
                if v.events.is_empty() {
                    "none".to_string()
                } else {
                    v.events.join(", ")
                }
            );
        }
        for p in &self.ioapic_pins {
            let _ = writeln!(
                s,
                "  I/O APIC pin {}: RTE {:#018x} (vector {:#x}, {}{}), line {}, Remote IRR {}",
                p.pin,
                p.rte,
                p.vector,
                if p.level_triggered { "level" } else { "edge" },
                if p.masked { ", masked" } else { "" },
                if p.asserted { "asserted" } else { "low" },
                u8::from(p.remote_irr)
            );
        }
        let _ = writeln!(
            s,
            "  8259: master IRR {:#04x} ISR {:#04x} IMR {:#04x}, slave IRR {:#04x} ISR {:#04x} IMR {:#04x}, output {}",
            self.pic.master.irr,
            self.pic.master.isr,
            self.pic.master.imr,
            self.pic.slave.irr,
            self.pic.slave.isr,
            self.pic.slave.imr,
            if self.pic.output { "high" } else { "low" }
        );
        for q in &self.virtio_queues {
            let _ = writeln!(
                s,
                "  {} queue {}{}: size {}, avail {}, used {} ({} outstanding), used {} after {} ms",
                q.device,
                q.progress.index,
                if q.progress.receive { " (receive)" } else { "" },
                q.progress.size,
                q.progress.avail_idx,
                q.progress.used_idx,
                q.progress.outstanding(),
                q.used_idx_later,
                PROGRESS_WINDOW.as_millis()
            );
        }
        if let Some(c) = &self.channel {
            let _ = writeln!(
                s,
                "  channel: {} byte(s) in the control port's FIFO, {} queued, receive interrupt {}, guest {}",
                c.in_fifo,
                c.queued,
                if c.receive_interrupt_enabled { "on" } else { "off" },
                if c.guest_awaits_command {
                    "waits for a command"
                } else {
                    "does not wait for a command"
                }
            );
        }
        for f in self.findings.iter().skip(1) {
            let _ = writeln!(s, "  also: {}", f.line());
        }
        let _ = writeln!(s, "{VERDICT_PREFIX}{}", self.verdict);
        s
    }
}

/// What the platform offers a report besides the vCPUs.
pub struct Platform<'a> {
    pub irqchip: &'a dyn crate::irqchip::IrqChip,
    pub virtio: &'a crate::virtio_setup::VirtioSetup,
    pub mem: &'a vm_memory::GuestMemoryMmap,
    pub control_port: Option<&'a std::sync::Mutex<devices::channel::ControlPort>>,
}

/// Build the report from the parked vCPUs (or why they did not park) and
/// the platform; watches the virtio queues for [`PROGRESS_WINDOW`].
pub fn take(
    trigger: &str,
    at_ms: u64,
    vcpus: Result<Vec<Parked>, String>,
    p: &Platform,
) -> StuckReport {
    use devices::sync::lock;
    let (vcpus, vcpus_unavailable) = match vcpus {
        Ok(v) => (v.iter().map(vcpu_view).collect(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let rings = p.virtio.rings();
    let sample = || -> Vec<(String, RingProgress)> {
        rings
            .iter()
            .flat_map(|(dev, rs)| {
                rs.iter().filter_map(move |r| {
                    devices::virtio::ring_progress(p.mem, r).map(|g| (dev.clone(), g))
                })
            })
            .collect()
    };
    let first = sample();
    if !first.is_empty() {
        std::thread::sleep(PROGRESS_WINDOW);
    }
    let later = sample();
    let virtio_queues = first
        .into_iter()
        .map(|(device, progress)| {
            let used_idx_later = later
                .iter()
                .find(|(d, g)| *d == device && g.index == progress.index)
                .map_or(progress.used_idx, |(_, g)| g.used_idx);
            QueueView {
                device,
                progress,
                used_idx_later,
            }
        })
        .collect();
    let ([master, slave], output) = p.irqchip.pic_registers();
    StuckReport {
        trigger: trigger.to_string(),
        at_ms,
        vcpus,
        vcpus_unavailable,
        ioapic_pins: p.irqchip.stuck_pins(),
        pic: PicView {
            master,
            slave,
            output,
        },
        virtio_queues,
        channel: p.control_port.map(|c| lock(c).waiting()),
        findings: Vec::new(),
        verdict: String::new(),
    }
    .judge()
}

#[cfg(test)]
mod tests {
    use super::*;

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
