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

mod verdict;
pub use verdict::findings;

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
