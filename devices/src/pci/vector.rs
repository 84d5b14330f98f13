//! What MSI and MSI-X share: one GSI per vector with an irqfd registered
//! once, the KVM route kept in step with the guest's message, validity
//! rules and per-vector counters.
//!
//! Route policy (both capabilities): while a vector is *deliverable*
//! (enabled and unmasked), its KVM route is `Some(message)` if the message
//! is valid and `None` (no route) if it is not; each guest write that
//! changes the message of a deliverable vector, and each unmask, brings the
//! route in step. While a vector is masked its route is left as it was:
//! masking is enforced in userspace by `trigger()`, which never writes the
//! irqfd of a masked vector, so a stale route cannot deliver anything. This
//! saves a full-table `KVM_SET_GSI_ROUTING` per mask/unmask pair and per
//! dword of a message rewritten under mask (Linux masks an MSI-X entry
//! around every address/data update).

use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::PciError;
use crate::interrupt::{EventRegistry, MsiMessage, MsiRouting, SharedGsiAllocator};
use crate::sync::lock;

/// Per-vector counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VectorStats {
    /// Times the device signalled the vector.
    pub signalled: u64,
    /// Interrupts sent through the irqfd (including pending ones released
    /// by an unmask).
    pub delivered: u64,
    /// Signals held as a pending bit: vector or function masked, or MSI-X
    /// disabled.
    pub pended: u64,
    /// Signals (or pending releases) not sent because the message was
    /// invalid: address outside 0xFEEx_xxxx, delivery mode 3 or 6, or a
    /// fixed/lowest-priority vector below 16.
    pub dropped_invalid: u64,
    /// Signals dropped because MSI was disabled or the vector is beyond the
    /// enabled count (MSI capability only; MSI-X pends instead).
    pub dropped_disabled: u64,
    /// Signals not sent because KVM refused the route or the irqfd write
    /// failed.
    pub dropped_error: u64,
}

/// One vector as a statistics report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorReport {
    /// Vector index within the capability (MSI-X table entry).
    pub index: u16,
    pub gsi: u32,
    /// The message the guest programmed (address with the high dword).
    pub message: MsiMessage,
    /// The guest's interrupt vector (message data bits 7:0).
    pub guest_vector: u8,
    /// Destination APIC ID: address bits 19:12, plus extended bits 11:5
    /// (as 14:8) and `address >> 32` (as 31:8).
    pub destination: u32,
    pub valid: bool,
    /// Masked (vector or function) or the capability disabled.
    pub masked: bool,
    pub pending: bool,
    pub stats: VectorStats,
}

pub(crate) struct IrqfdVector {
    pub(crate) gsi: u32,
    irqfd: EventFd,
    /// The route KVM has for `gsi`, as far as we know.
    route: Option<MsiMessage>,
    pub(crate) stats: VectorStats,
}

/// The vectors of one MSI or MSI-X capability.
pub(crate) struct IrqfdVectors {
    pub(crate) vectors: Vec<IrqfdVector>,
    routing: Arc<dyn MsiRouting>,
    events: Arc<dyn EventRegistry>,
    gsis: SharedGsiAllocator,
    /// Route updates KVM refused.
    pub(crate) route_errors: u64,
    warned: bool,
}

impl IrqfdVectors {
    /// Allocate `n` GSIs and register one irqfd on each.
    pub(crate) fn new(
        n: usize,
        routing: Arc<dyn MsiRouting>,
        events: Arc<dyn EventRegistry>,
        gsis: SharedGsiAllocator,
    ) -> Result<Self, PciError> {
        let mut v = IrqfdVectors {
            vectors: Vec::with_capacity(n),
            routing,
            events,
            gsis,
            route_errors: 0,
            warned: false,
        };
        if lock(&v.gsis).available() < n {
            return Err(PciError::GsiExhausted(n));
        }
        for _ in 0..n {
            // On any error, Drop releases what was set up so far.
            let gsi = lock(&v.gsis).allocate().ok_or(PciError::GsiExhausted(n))?;
            let irqfd = match EventFd::new(EFD_NONBLOCK) {
                Ok(fd) => fd,
                Err(e) => {
                    lock(&v.gsis).free(gsi);
                    return Err(PciError::EventFd(e));
                }
            };
            if let Err(e) = v.events.register_irqfd(&irqfd, gsi) {
                lock(&v.gsis).free(gsi);
                return Err(e.into());
            }
            v.vectors.push(IrqfdVector {
                gsi,
                irqfd,
                route: None,
                stats: VectorStats::default(),
            });
        }
        Ok(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Bring KVM's route for deliverable vector `i` in step with `msg`.
    /// Returns true if the vector now has a valid route installed.
    pub(crate) fn sync(&mut self, i: usize, msg: MsiMessage) -> bool {
        let Some(v) = self.vectors.get_mut(i) else {
            return false;
        };
        let want = msg.valid().then_some(msg);
        if v.route != want {
            match self.routing.set_route(v.gsi, want) {
                Ok(()) => v.route = want,
                Err(e) => {
                    self.route_errors += 1;
                    if !self.warned {
                        self.warned = true;
                        log::warn!("MSI route for GSI {} not updated: {e}", v.gsi);
                    }
                    return false;
                }
            }
        }
        want.is_some()
    }

    /// Send vector `i` now (it is deliverable): route in step, irqfd write.
    pub(crate) fn deliver(&mut self, i: usize, msg: MsiMessage) -> bool {
        if i >= self.vectors.len() {
            return false;
        }
        if !msg.valid() {
            // Still bring the route in step (removing it).
            self.sync(i, msg);
            self.vectors[i].stats.dropped_invalid += 1;
            return false;
        }
        if !self.sync(i, msg) {
            self.vectors[i].stats.dropped_error += 1;
            return false;
        }
        let v = &mut self.vectors[i];
        match v.irqfd.write(1) {
            Ok(()) => {
                v.stats.delivered += 1;
                true
            }
            Err(e) => {
                v.stats.dropped_error += 1;
                if !self.warned {
                    self.warned = true;
                    log::warn!("irqfd write for GSI {} failed: {e}", v.gsi);
                }
                false
            }
        }
    }

    pub(crate) fn report(
        &self,
        i: usize,
        message: MsiMessage,
        masked: bool,
        pending: bool,
    ) -> Option<VectorReport> {
        let v = self.vectors.get(i)?;
        Some(VectorReport {
            index: i as u16,
            gsi: v.gsi,
            message,
            guest_vector: message.vector(),
            destination: message.destination(),
            valid: message.valid(),
            masked,
            pending,
            stats: v.stats,
        })
    }
}

impl Drop for IrqfdVectors {
    fn drop(&mut self) {
        for v in &self.vectors {
            let _ = self.events.unregister_irqfd(&v.irqfd, v.gsi);
            if v.route.is_some() {
                let _ = self.routing.set_route(v.gsi, None);
            }
            lock(&self.gsis).free(v.gsi);
        }
    }
}
