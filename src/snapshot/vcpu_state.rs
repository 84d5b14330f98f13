//! One vCPU's architectural state in a snapshot: everything KVM keeps for
//! it (registers, FPU/SSE/AVX in XSAVE form, XCR0, MSRs including the TSC,
//! kvmclock and APIC base, the local APIC page, pending events, MP state,
//! debug registers), read and written with the KVM_GET/SET ioctls.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// IA32_TSC_DEADLINE: restored after IA32_TSC and the LAPIC (a deadline
/// is a TSC value, and KVM ignores it unless LVTT is in deadline mode).
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u32,
    /// The guest TSC's rate (KVM_GET_TSC_KHZ): the saved TSC values count
    /// at this rate.
    pub tsc_khz: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

fn fail(what: &'static str, id: u32) -> impl FnOnce(kvm_ioctls::Error) -> String {
    move |e| format!("vCPU {id}: {what}: {e}")
}

fn msr_list(indices: &[u32], id: u32) -> Result<Msrs, String> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|e| format!("vCPU {id}: MSR list: {e:?}"))
}

/// Read every MSR of `indices` that KVM lets this vCPU read (KVM_GET_MSRS
/// stops at the first it refuses: that one is left out and the rest read).
fn read_msrs(vcpu: &VcpuFd, id: u32, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, String> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let mut m = msr_list(rest, id)?;
        let n = vcpu.get_msrs(&mut m).map_err(fail("KVM_GET_MSRS", id))?;
        out.extend_from_slice(&m.as_slice()[..n]);
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    // Deadline last, see MSR_IA32_TSC_DEADLINE.
    out.sort_by_key(|e| e.index == MSR_IA32_TSC_DEADLINE);
    Ok(out)
}

impl VcpuState {
    /// Read vCPU `id`'s state. It must be out of KVM_RUN with any pending
    /// I/O completed (see `Pause::park`).
    pub fn save(vcpu: &VcpuFd, id: u32, msr_indices: &[u32]) -> Result<VcpuState, String> {
        Ok(VcpuState {
            id,
            tsc_khz: vcpu.get_tsc_khz().map_err(fail("KVM_GET_TSC_KHZ", id))?,
            regs: vcpu.get_regs().map_err(fail("KVM_GET_REGS", id))?,
            sregs: vcpu.get_sregs().map_err(fail("KVM_GET_SREGS", id))?,
            xsave: vcpu.get_xsave().map_err(fail("KVM_GET_XSAVE", id))?,
            xcrs: vcpu.get_xcrs().map_err(fail("KVM_GET_XCRS", id))?,
            debugregs: vcpu
                .get_debug_regs()
                .map_err(fail("KVM_GET_DEBUGREGS", id))?,
            lapic: vcpu.get_lapic().map_err(fail("KVM_GET_LAPIC", id))?,
            msrs: read_msrs(vcpu, id, msr_indices)?,
            events: vcpu
                .get_vcpu_events()
                .map_err(fail("KVM_GET_VCPU_EVENTS", id))?,
            mp_state: vcpu.get_mp_state().map_err(fail("KVM_GET_MP_STATE", id))?,
        })
    }

    /// Write the state into a new vCPU (created with the same CPUID), in
    /// the order KVM needs: MP state, registers, XSAVE, XCRs, debug
    /// registers, the LAPIC, the MSRs (TSC before the deadline), and last
    /// the pending events.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), String> {
        let id = self.id;
        // The same TSC rate, or KVM scales to it, or the guest's clock
        // would run off (checked before anything is written).
        let here = vcpu.get_tsc_khz().map_err(fail("KVM_GET_TSC_KHZ", id))?;
        if here != self.tsc_khz {
            vcpu.set_tsc_khz(self.tsc_khz).map_err(|e| {
                format!(
                    "vCPU {id}: the snapshot's TSC runs at {} kHz, this host's at {here} kHz, and KVM cannot scale it here (KVM_SET_TSC_KHZ: {e})",
                    self.tsc_khz
                )
            })?;
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(fail("KVM_SET_MP_STATE", id))?;
        vcpu.set_regs(&self.regs)
            .map_err(fail("KVM_SET_REGS", id))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(fail("KVM_SET_SREGS", id))?;
        // SAFETY: a whole kvm_xsave (4 KiB) that KVM gave for this kind of
        // vCPU; KVM reads no more than its size.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(fail("KVM_SET_XSAVE", id))?;
        vcpu.set_xcrs(&self.xcrs)
            .map_err(fail("KVM_SET_XCRS", id))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(fail("KVM_SET_DEBUGREGS", id))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(fail("KVM_SET_LAPIC", id))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|e| format!("vCPU {id}: MSRs: {e:?}"))?;
        let n = vcpu.set_msrs(&msrs).map_err(fail("KVM_SET_MSRS", id))?;
        if n != self.msrs.len() {
            return Err(format!(
                "vCPU {id}: KVM refused MSR {:#x} ({} of {} set)",
                self.msrs[n].index,
                n,
                self.msrs.len()
            ));
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(fail("KVM_SET_VCPU_EVENTS", id))?;
        Ok(())
    }
}
