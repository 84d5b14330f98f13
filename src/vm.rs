//! The KVM VM: capability checks, the irqchip's KVM side (split, or KVM's
//! own) and guest memory. (The GSI routing table that carries every
//! interrupt splitvm delivers is src/irqchip/router.rs.)

use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use arch::layout;

use crate::error::{kvm, Error, Result};
use crate::irqchip::IrqChipMode;

/// I/O APIC pins reserved with KVM_CAP_SPLIT_IRQCHIP; pin i is GSI i.
pub const IOAPIC_PINS: u64 = devices::interrupt::IOAPIC_PINS as u64;

/// Capabilities splitvm cannot run without, with the name we report.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI"),
    (Cap::X2ApicApi, "KVM_CAP_X2APIC_API"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// What the host's KVM offers beyond the required set.
#[derive(Debug, Clone, Copy)]
pub struct HostCaps {
    pub tsc_deadline: bool,
    pub max_vcpus: usize,
}

pub fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|e| {
        let hint = match e.errno() {
            libc::ENOENT => " (no KVM on this host: is the kvm module loaded?)",
            libc::EACCES | libc::EPERM => " (permission denied: run as root or join the kvm group)",
            _ => "",
        };
        Error::KvmOpen(format!(
            "{}{}",
            std::io::Error::from_raw_os_error(e.errno()),
            hint
        ))
    })?;
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(Error::KvmApiVersion(v));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// The capabilities an irqchip mode needs beyond [`REQUIRED_CAPS`].
pub fn check_irqchip_caps(kvm: &Kvm, mode: IrqChipMode) -> Result<()> {
    let need: &[(Cap, &'static str)] = match mode {
        IrqChipMode::Split => &[(Cap::SplitIrqchip, "KVM_CAP_SPLIT_IRQCHIP")],
        IrqChipMode::Kernel => &[
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ],
    };
    for (cap, name) in need {
        if !kvm.check_extension(*cap) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(())
}

pub fn host_caps(kvm: &Kvm) -> HostCaps {
    HostCaps {
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        max_vcpus: kvm.get_max_vcpus(),
    }
}

/// Create the VM with the irqchip of `mode` (and, in kernel mode, KVM's
/// PIT when `pit`) and the x2APIC API, and map guest RAM.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap, mode: IrqChipMode, pit: bool) -> Result<VmFd> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;

    // The irqchip must exist before any vCPU. Split: LAPICs in KVM, the
    // I/O APIC (24 pins = GSIs 0..23) in userspace, no KVM_CREATE_IRQCHIP
    // and no KVM_CREATE_PIT2. Kernel: KVM's 8259 pair, I/O APIC and PIT
    // (its speaker port a dummy, as QEMU and Firecracker have it).
    match mode {
        IrqChipMode::Split => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = IOAPIC_PINS;
            vm.enable_cap(&cap)
                .map_err(kvm_err("KVM_CAP_SPLIT_IRQCHIP"))?;
        }
        IrqChipMode::Kernel => {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
            if pit {
                let cfg = kvm_bindings::kvm_pit_config {
                    flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                    ..Default::default()
                };
                vm.create_pit2(cfg).map_err(kvm_err("KVM_CREATE_PIT2"))?;
            }
        }
    }

    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        ..Default::default()
    };
    cap.args[0] = (KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK) as u64;
    vm.enable_cap(&cap).map_err(kvm_err("KVM_CAP_X2APIC_API"))?;

    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region stays mapped for the life of the VM (the
        // GuestMemoryMmap outlives every vCPU thread) and is not aliased.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    kvm(what)
}

/// Allocate guest RAM (MAP_NORESERVE: the host pays only for touched pages).
pub fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(b, l)| (GuestAddress(b), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory(e.to_string()))
}
