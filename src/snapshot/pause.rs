//! Pausing every vCPU at one consistent instant for a snapshot.
//!
//! The supervisor asks ([`Pause::pause_all`]) and kicks the vCPU threads;
//! each one, at the top of its run loop, completes the exit it was
//! handling (a KVM_RUN with `immediate_exit` set finishes a pending port
//! or MMIO read without running guest code, so the saved RIP is past the
//! instruction) and parks. Only when all are parked, so no guest code runs
//! anywhere and no IPI is in flight, does each save its state
//! ([`Pause::capture`]); then they wait for [`Pause::resume`].
//!
//! The same pause serves a stuck-guest report (src/forensics/): the
//! vCPUs' state is read the same way, and with it the bytes of the
//! instruction at each RIP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::sync::lock;
use kvm_ioctls::VcpuFd;

use super::vcpu_state::VcpuState;

/// What a parked vCPU saved: its state, and the instruction bytes at its
/// RIP when they could be read.
pub struct Parked {
    pub state: VcpuState,
    pub code: Option<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    /// vCPUs parked in this round, by id.
    parked: Vec<bool>,
    /// Bumped each time the supervisor asks the parked vCPUs to save their
    /// state (a paused VM may be saved or inspected more than once).
    capture: u64,
    states: Vec<Option<Result<Parked, String>>>,
    /// Bumped by every resume: a parked vCPU waits for it to change.
    round: u64,
}

pub struct Pause {
    requested: AtomicBool,
    inner: Mutex<Inner>,
    cond: Condvar,
    /// MSRs to save (KVM_GET_MSR_INDEX_LIST, read once at start-up).
    msr_indices: Vec<u32>,
}

impl Pause {
    pub fn new(vcpus: usize, msr_indices: Vec<u32>) -> Pause {
        Pause {
            requested: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                parked: vec![false; vcpus],
                states: (0..vcpus).map(|_| None).collect(),
                ..Default::default()
            }),
            cond: Condvar::new(),
            msr_indices,
        }
    }

    /// A pause is asked for: the vCPU thread calls [`Pause::park`].
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Ask for a pause from a vCPU thread (a guest's "ready" asked for a
    /// snapshot): every vCPU parks at its next loop; the supervisor then
    /// takes the snapshot, or, if the VM is stopping, resumes them.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// vCPU side: complete the current exit, park, save the state (and
    /// `code`'s instruction bytes) when asked, and return once the
    /// supervisor resumes.
    pub fn park(&self, vcpu: &mut VcpuFd, id: u32, code: impl Fn(&VcpuFd) -> Option<Vec<u8>>) {
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        let mut g = lock(&self.inner);
        if !self.requested() {
            return; // resumed (given up) before this vCPU got here
        }
        let round = g.round;
        if let Some(p) = g.parked.get_mut(id as usize) {
            *p = true;
        }
        self.cond.notify_all();
        let mut saved_for = 0;
        loop {
            while g.round == round && g.capture == saved_for {
                g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.round != round {
                return;
            }
            saved_for = g.capture;
            drop(g);
            let s = VcpuState::save(vcpu, id, &self.msr_indices).map(|state| Parked {
                state,
                code: code(vcpu),
            });
            g = lock(&self.inner);
            if let Some(slot) = g.states.get_mut(id as usize) {
                *slot = Some(s);
            }
            self.cond.notify_all();
        }
    }

    /// Supervisor side: ask every vCPU to park and wait until they have
    /// (`kick` makes them leave KVM_RUN; it is repeated while waiting).
    /// Fails if `stopping` turns true or they do not park in `timeout`.
    pub fn pause_all(
        &self,
        kick: impl Fn(),
        stopping: impl Fn() -> bool,
        timeout: Duration,
    ) -> Result<(), String> {
        self.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        while g.parked.iter().any(|p| !p) {
            if stopping() {
                drop(g);
                self.resume();
                return Err("the VM stopped".into());
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = (0..g.parked.len())
                    .filter(|&i| !g.parked[i])
                    .map(|i| i.to_string())
                    .collect();
                drop(g);
                self.resume();
                return Err(format!(
                    "vCPU(s) {} did not leave KVM_RUN within {timeout:?}",
                    missing.join(", ")
                ));
            }
            kick();
            g = self
                .cond
                .wait_timeout(g, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Supervisor side, all parked: every vCPU's state, by vCPU id.
    pub fn capture(&self) -> Result<Vec<VcpuState>, String> {
        Ok(self
            .capture_parked()?
            .into_iter()
            .map(|p| p.state)
            .collect())
    }

    /// [`Pause::capture`] with the instruction bytes at each RIP.
    pub fn capture_parked(&self) -> Result<Vec<Parked>, String> {
        let mut g = lock(&self.inner);
        g.capture += 1;
        self.cond.notify_all();
        while g.states.iter().any(|s| s.is_none()) {
            g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.states
            .iter_mut()
            .map(|s| s.take().unwrap_or_else(|| Err("no state".into())))
            .collect()
    }

    /// Let every vCPU run again.
    pub fn resume(&self) {
        let mut g = lock(&self.inner);
        self.requested.store(false, Ordering::Release);
        g.parked.iter_mut().for_each(|p| *p = false);
        g.capture = 0;
        for s in &mut g.states {
            *s = None;
        }
        g.round += 1;
        self.cond.notify_all();
    }
}
