//! Per-vCPU CPUID: what KVM supports, with the topology and APIC bits that
//! make each vCPU's APIC ID visible and consistent.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_V2_TOPOLOGY: u32 = 0x1f;
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// KVM paravirtual features that need hypercalls (`vmcall`/`vmmcall`) or
/// async page-fault delivery. splitvm hides them: hypercalls never complete
/// on some hosts (the PVM backend re-executes `vmcall` forever), and none
/// of them is needed for a small guest. Bits from Documentation/virt/kvm/
/// x86/cpuid.rst: ASYNC_PF 4, PV_UNHALT 7, ASYNC_PF_VMEXIT 10,
/// PV_SEND_IPI 11, PV_SCHED_YIELD 13, ASYNC_PF_INT 14.
pub const KVM_HYPERCALL_FEATURES: u32 =
    (1 << 4) | (1 << 7) | (1 << 10) | (1 << 11) | (1 << 13) | (1 << 14);

const ECX_X2APIC: u32 = 1 << 21;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_APIC: u32 = 1 << 9;
const EDX_HTT: u32 = 1 << 28;

/// Options that shape the CPUID of every vCPU.
#[derive(Debug, Clone, Copy)]
pub struct CpuidConfig {
    pub num_cpus: u32,
    pub tsc_deadline: bool,
    /// Advertise x2APIC (CPUID.1:ECX[21]); off for xAPIC-only guests
    /// (`--cpu-features -x2apic`). KVM then refuses the x2APIC enable bit.
    pub x2apic: bool,
}

/// Patch `cpuid` (from KVM_GET_SUPPORTED_CPUID) for the vCPU with `apic_id`.
pub fn patch_cpuid(cpuid: &mut CpuId, apic_id: u32, cfg: CpuidConfig) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: APIC ID 31:24, logical CPU count 23:16, CLFLUSH 15:8.
                let count = cfg.num_cpus.min(255);
                e.ebx = (apic_id << 24) | (count << 16) | (8 << 8);
                e.ecx |= ECX_HYPERVISOR;
                if cfg.x2apic {
                    e.ecx |= ECX_X2APIC;
                } else {
                    e.ecx &= !ECX_X2APIC;
                }
                if cfg.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                e.edx |= EDX_APIC;
                if cfg.num_cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_TOPOLOGY | LEAF_V2_TOPOLOGY => {
                // One thread per core, all cores in one package.
                let shift = 32 - cfg.num_cpus.saturating_sub(1).leading_zeros();
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = cfg.num_cpus;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = apic_id;
            }
            KVM_FEATURES_LEAF => e.eax &= !KVM_HYPERCALL_FEATURES,
            KVM_SIGNATURE_LEAF => {
                // "KVMKVMKVM\0\0\0"
                e.ebx = 0x4b4d_564b;
                e.ecx = 0x564b_4d56;
                e.edx = 0x4d;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod x2apic_tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn hiding_x2apic_clears_cpuid_1_ecx_bit_21() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            ecx: ECX_X2APIC,
            ..Default::default()
        }])
        .unwrap();
        let cfg = CpuidConfig {
            num_cpus: 1,
            tsc_deadline: true,
            x2apic: false,
        };
        patch_cpuid(&mut c, 0, cfg);
        assert_eq!(c.as_slice()[0].ecx & ECX_X2APIC, 0);
        patch_cpuid(
            &mut c,
            0,
            CpuidConfig {
                x2apic: true,
                ..cfg
            },
        );
        assert_ne!(c.as_slice()[0].ecx & ECX_X2APIC, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entries() -> CpuId {
        let mk = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        };
        CpuId::from_entries(&[
            mk(1, 0),
            mk(0xb, 0),
            mk(0xb, 1),
            mk(0x4000_0000, 0),
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0xffff_ffff,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn leaf1_ebx_and_leaf_b_edx_carry_the_apic_id() {
        let mut c = entries();
        patch_cpuid(
            &mut c,
            3,
            CpuidConfig {
                num_cpus: 4,
                tsc_deadline: true,
                x2apic: true,
            },
        );
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_ne!(s[0].ecx & ECX_X2APIC, 0);
        assert_ne!(s[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[2].edx, 3);
        assert_eq!(s[2].ebx, 4);
    }

    #[test]
    fn kvm_signature_leaf_says_kvmkvmkvm() {
        let mut c = entries();
        patch_cpuid(
            &mut c,
            0,
            CpuidConfig {
                num_cpus: 1,
                tsc_deadline: false,
                x2apic: true,
            },
        );
        let e = c.as_slice()[3];
        let mut sig = Vec::new();
        for r in [e.ebx, e.ecx, e.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig[..9], b"KVMKVMKVM");
    }

    #[test]
    fn kvm_hypercall_features_are_hidden() {
        let mut c = entries();
        patch_cpuid(
            &mut c,
            0,
            CpuidConfig {
                num_cpus: 2,
                tsc_deadline: true,
                x2apic: true,
            },
        );
        let eax = c.as_slice()[4].eax;
        assert_eq!(eax & KVM_HYPERCALL_FEATURES, 0);
        assert_ne!(eax & 1, 0, "kvmclock stays");
    }
}
