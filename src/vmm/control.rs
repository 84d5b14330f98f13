//! The running VM and the one path for each thing done to it: pause,
//! resume, snapshot, stuck-guest report, stop. Signals, `--snapshot-*`
//! options, the timeout and the API socket (src/api.rs) all call these,
//! from the supervisor thread only (src/vmm/supervisor.rs).

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use devices::channel::{Channel, ControlPort};
use devices::{Bus, ExitReason, VmControl};

use crate::irqchip::IrqChip;
use crate::snapshot::{self, pause::Pause, HostCpu, Machine};
use crate::sources::SourceRegistry;
use crate::stats::{VcpuCounters, VcpuStats};
use crate::trace::Tracer;
use crate::virtio_setup;

/// The guest's console: its last line (progress), its tail (why a command
/// got no status) and whether it printed a kernel panic.
pub(super) struct Console {
    pub(super) last_line: Arc<Mutex<String>>,
    pub(super) tail: Arc<Mutex<std::collections::VecDeque<String>>>,
    pub(super) panicked: Arc<AtomicBool>,
}

/// How long the vCPUs get to park for a pause or a snapshot.
const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// What taking a snapshot needs besides the buses and the irqchip.
pub(super) struct SnapshotSetup {
    pub(super) vm: Arc<kvm_ioctls::VmFd>,
    pub(super) host: HostCpu,
    pub(super) machine: Machine,
    pub(super) pause: Arc<Pause>,
}

/// A running VM: what supervision and control need of it.
pub(super) struct Running {
    pub(super) control: Arc<VmControl>,
    pub(super) irqchip: Arc<dyn IrqChip>,
    pub(super) pio_names: Vec<String>,
    pub(super) mmio_names: Vec<String>,
    pub(super) pio: Arc<Bus>,
    pub(super) mmio: Arc<Bus>,
    pub(super) mem: vm_memory::GuestMemoryMmap,
    pub(super) snap: SnapshotSetup,
    pub(super) control_port: Option<Arc<Mutex<ControlPort>>>,
    pub(super) sources: Arc<SourceRegistry>,
    pub(super) console: Console,
    pub(super) channel: Option<Arc<Channel>>,
    pub(super) msi_injected: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub(super) virtio: virtio_setup::VirtioSetup,
    pub(super) handles: Vec<thread::JoinHandle<VcpuStats>>,
    pub(super) counters: Vec<Arc<VcpuCounters>>,
    pub(super) tracer: Option<Tracer>,
    pub(super) trace_unavailable: Option<String>,
    pub(super) tsc_khz: Option<u32>,
    /// The UARTs' coalesced writes (`--coalesced-io on`).
    pub(super) coalesced: Option<Arc<crate::coalesced::Coalesced>>,
    /// What the report says of them: `on`, `off`, `unavailable`.
    pub(super) coalesced_io: &'static str,
    /// Paused (PUT vm.pause) since this instant.
    pub(super) paused_since: Cell<Option<Instant>>,
    /// Time spent paused before the current pause.
    pub(super) paused_before: Cell<Duration>,
}

impl Running {
    /// Hand the UARTs every write waiting in the coalesced ring (a no-op
    /// with `--coalesced-io off`).
    pub(super) fn drain_coalesced(&self) {
        if let Some(c) = &self.coalesced {
            c.drain();
        }
    }

    /// Kick every live vCPU thread out of KVM_RUN (or keep it from entering).
    pub(super) fn kick_vcpus(&self) {
        for h in self.handles.iter().filter(|h| !h.is_finished()) {
            // SAFETY: the thread is alive (not finished) so its pthread_t is valid.
            unsafe { libc::pthread_kill(h.as_pthread_t(), crate::signals::kick_signal()) };
        }
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused_since.get().is_some()
    }

    /// Time spent paused so far (wall time minus this is running time).
    pub(super) fn paused_time(&self) -> Duration {
        self.paused_before.get()
            + self
                .paused_since
                .get()
                .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Every vCPU parked (no guest code runs, no register is written), then
    /// the devices' own activity stopped (the PIT's ticks, virtio workers
    /// at a request boundary, their last interrupts landing in the LAPICs).
    fn park(&self) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.snap.pause.pause_all(
            || self.kick_vcpus(),
            || self.control.is_stopping(),
            PARK_TIMEOUT,
        )?;
        self.pio.pause(true);
        self.mmio.pause(true);
        Ok(t0.elapsed())
    }

    /// The devices, then the vCPUs, run again.
    fn unpark(&self) {
        self.pio.pause(false);
        self.mmio.pause(false);
        self.snap.pause.resume();
    }

    /// PUT vm.pause: park the VM until [`Running::resume`]; the paused time
    /// counts neither in the report's rates nor against `--timeout`.
    pub(super) fn pause(&self) -> Result<(), String> {
        if self.is_paused() {
            return Err("the VM is already paused".into());
        }
        let took = self.park()?;
        self.paused_since.set(Some(Instant::now()));
        log::info!(
            "VM paused (vCPUs parked in {:.1} ms)",
            took.as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// PUT vm.resume (and a stop while paused).
    pub(super) fn resume(&self) -> Result<(), String> {
        let Some(since) = self.paused_since.take() else {
            return Err("the VM is not paused".into());
        };
        self.paused_before
            .set(self.paused_before.get() + since.elapsed());
        self.unpark();
        Ok(())
    }

    /// Stop the VM for `reason` (a paused VM is resumed so its vCPUs can
    /// leave): the supervisor then joins them and writes the report.
    pub(super) fn stop(&self, reason: ExitReason) {
        self.control.request_exit(reason);
        if self.is_paused() {
            let _ = self.resume();
        }
    }

    /// Pause the VM at one consistent instant (it may be paused already),
    /// save it into `dir`, and let it run again if it was running. Only
    /// once the vCPUs and devices are parked do the vCPUs save their state,
    /// so no tick or completion can fall between the LAPICs' state and a
    /// device's.
    pub(super) fn take_snapshot(&self, dir: &std::path::Path, trigger: &str) -> Result<(), String> {
        let t0 = Instant::now();
        let was_paused = self.is_paused();
        let parked_in = if was_paused {
            Duration::ZERO
        } else {
            self.park()?
        };
        let saved = self.save_paused(dir, trigger);
        if !was_paused {
            self.unpark();
        }
        let w = saved?;
        log::info!(
            "snapshot ({trigger}) written to {}: vCPUs paused in {:.1} ms, {:.1} ms in all; state {} KiB, memory {} of {} MiB written",
            dir.display(),
            parked_in.as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3,
            w.state_bytes >> 10,
            w.memory_written >> 20,
            w.memory_bytes >> 20
        );
        Ok(())
    }

    /// A stuck-guest report (src/forensics/), printed on stderr: the
    /// vCPUs park as for a snapshot, read their state, and run on (a
    /// paused VM's are read where they are parked).
    pub(super) fn take_stuck(
        &self,
        trigger: &str,
        started: Instant,
    ) -> crate::forensics::StuckReport {
        let pause = &self.snap.pause;
        let vcpus = if self.is_paused() {
            pause.capture_parked()
        } else {
            pause
                .pause_all(
                    || self.kick_vcpus(),
                    || self.control.is_stopping(),
                    crate::forensics::PARK_TIMEOUT,
                )
                .and_then(|()| {
                    let v = pause.capture_parked();
                    pause.resume();
                    v
                })
        };
        let report = crate::forensics::take(
            trigger,
            started.elapsed().as_millis() as u64,
            vcpus,
            &crate::forensics::Platform {
                irqchip: &*self.irqchip,
                virtio: &self.virtio,
                mem: &self.mem,
                control_port: self.control_port.as_deref(),
            },
        );
        eprint!("{}", report.render());
        report
    }

    /// With every vCPU parked: collect the state and write the snapshot.
    fn save_paused(
        &self,
        dir: &std::path::Path,
        trigger: &str,
    ) -> Result<snapshot::Written, String> {
        // Bytes in the ring belong to the UARTs' saved state.
        self.drain_coalesced();
        let vcpus = self.snap.pause.capture()?;
        let clock = self
            .snap
            .vm
            .get_clock()
            .map_err(|e| format!("KVM_GET_CLOCK: {e}"))?;
        let state = snapshot::VmState {
            splitvm_version: env!("CARGO_PKG_VERSION").into(),
            host: self.snap.host.clone(),
            trigger: trigger.into(),
            machine: self.snap.machine.clone(),
            memory_file: String::new(),
            clock,
            vcpus,
            irqchip: self.irqchip.save().map_err(|e| e.to_string())?,
            pio: self.pio.save().map_err(|e| e.to_string())?,
            mmio: self.mmio.save().map_err(|e| e.to_string())?,
        };
        snapshot::write(dir, state, &self.mem).map_err(|e| e.to_string())
    }
}
