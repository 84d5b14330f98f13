//! What the host offers for interrupt virtualization (APICv / AVIC /
//! posted interrupts), and `--disable-exits` (KVM_CAP_X86_DISABLE_EXITS).
//!
//! splitvm configures nothing that inhibits APICv: the LAPIC is in KVM, the
//! x2APIC API is enabled, there is no in-kernel PIT (so no PIT
//! reinjection inhibit) and no ExtINT (no PIC: its ports read 0, so Linux
//! picks the NULL legacy PIC). Whether APICv is then *used* depends on the
//! host, which this module detects and reports.

use std::path::Path;

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_X86_DISABLE_EXITS, KVM_X86_DISABLE_EXITS_CSTATE,
    KVM_X86_DISABLE_EXITS_HLT, KVM_X86_DISABLE_EXITS_MWAIT, KVM_X86_DISABLE_EXITS_PAUSE,
};
use kvm_ioctls::VmFd;
use serde::Serialize;

/// The KVM vendor module backing /dev/kvm, with its interrupt-virtualization
/// parameters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostReport {
    /// "kvm_intel", "kvm_amd", "kvm_pvm", ... (modules loaded under /sys/module).
    pub kvm_modules: Vec<String>,
    /// CPU has VMX (Intel) / SVM (AMD) in /proc/cpuinfo.
    pub cpu_vmx: bool,
    pub cpu_svm: bool,
    /// kvm_intel.enable_apicv (None when kvm_intel is not loaded).
    pub enable_apicv: Option<bool>,
    /// kvm_amd.avic (None when kvm_amd is not loaded).
    pub avic: Option<bool>,
    /// kvm_intel.enable_ipiv (IPI virtualization), when present.
    pub enable_ipiv: Option<bool>,
    /// APICv-related CPU flags found ("vmx flags" line and flags line):
    /// posted_intr, apicv, virtual_intr_delivery, avic, x2avic, vnmi, ...
    pub cpu_apicv_flags: Vec<String>,
    /// APICv / AVIC in use for this VM as far as the host tells.
    pub apicv_active: bool,
    /// One line for the report.
    pub summary: String,
}

/// Flags that tell about interrupt virtualization.
const APICV_FLAGS: &[&str] = &[
    "apicv",
    "posted_intr",
    "virtual_intr_delivery",
    "virtual_apic",
    "flexpriority",
    "apic_reg_virt",
    "ipi_virt",
    "avic",
    "x2avic",
    "vnmi",
    "vgif",
];

/// Detect what this host offers (reads /sys/module and /proc/cpuinfo).
pub fn detect() -> HostReport {
    detect_from(Path::new("/sys/module"), "/proc/cpuinfo")
}

fn detect_from(sys_module: &Path, cpuinfo: &str) -> HostReport {
    let mut r = HostReport::default();
    for m in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        if sys_module.join(m).exists() {
            r.kvm_modules.push(m.to_string());
        }
    }
    let info = std::fs::read_to_string(cpuinfo).unwrap_or_default();
    let mut flags: Vec<&str> = Vec::new();
    for line in info.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if k == "flags" || k == "vmx flags" {
            flags.extend(v.split_whitespace());
        }
        if k == "processor" && v.trim() != "0" {
            break; // the first CPU is enough
        }
    }
    r.cpu_vmx = flags.contains(&"vmx");
    r.cpu_svm = flags.contains(&"svm");
    for f in APICV_FLAGS {
        if flags.contains(f) {
            r.cpu_apicv_flags.push(f.to_string());
        }
    }
    let param = |m: &str, p: &str| {
        if sys_module.join(m).exists() {
            let s = std::fs::read_to_string(sys_module.join(m).join("parameters").join(p)).ok()?;
            Some(matches!(s.trim(), "Y" | "y" | "1"))
        } else {
            None
        }
    };
    r.enable_apicv = param("kvm_intel", "enable_apicv");
    r.enable_ipiv = param("kvm_intel", "enable_ipiv");
    r.avic = param("kvm_amd", "avic");
    r.apicv_active = r.enable_apicv == Some(true) || r.avic == Some(true);
    let backend = r
        .kvm_modules
        .first()
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    r.summary = if r.kvm_modules.iter().any(|m| m == "kvm_pvm") && !r.cpu_vmx && !r.cpu_svm {
        "APICv: not available on this host (kvm_pvm backend, no VMX/SVM): no posted interrupts, \
         every interrupt is injected by KVM on VM entry"
            .to_string()
    } else if r.enable_apicv == Some(true) {
        format!(
            "APICv: enabled (kvm_intel enable_apicv=Y{}){}",
            match r.enable_ipiv {
                Some(true) => ", IPI virtualization on",
                Some(false) => ", IPI virtualization off",
                None => "",
            },
            if r.cpu_apicv_flags.is_empty() {
                String::new()
            } else {
                format!("; CPU: {}", r.cpu_apicv_flags.join(" "))
            }
        )
    } else if r.avic == Some(true) {
        format!(
            "AVIC: enabled (kvm_amd avic=1){}",
            if r.cpu_apicv_flags.is_empty() {
                String::new()
            } else {
                format!("; CPU: {}", r.cpu_apicv_flags.join(" "))
            }
        )
    } else if r.enable_apicv == Some(false) {
        "APICv: disabled (kvm_intel enable_apicv=N)".to_string()
    } else if r.avic == Some(false) {
        "AVIC: disabled (kvm_amd avic=0)".to_string()
    } else {
        format!("APICv: not available on this host ({backend} backend)")
    };
    r
}

/// Parse `--disable-exits hlt,pause,mwait,cstate` into KVM's bit mask.
pub fn parse_disable_exits(s: &str) -> Result<u32, String> {
    let mut mask = 0;
    for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        mask |= match w {
            "hlt" => KVM_X86_DISABLE_EXITS_HLT,
            "pause" => KVM_X86_DISABLE_EXITS_PAUSE,
            "mwait" => KVM_X86_DISABLE_EXITS_MWAIT,
            "cstate" => KVM_X86_DISABLE_EXITS_CSTATE,
            _ => {
                return Err(format!(
                    "'{w}' is not an exit splitvm can disable (use hlt, pause, mwait, cstate)"
                ))
            }
        };
    }
    if mask == 0 {
        return Err("--disable-exits needs at least one of hlt, pause, mwait, cstate".into());
    }
    Ok(mask)
}

/// Names of the exits in `mask`, in KVM's bit order.
pub fn disable_exits_names(mask: u32) -> Vec<String> {
    [
        (KVM_X86_DISABLE_EXITS_MWAIT, "mwait"),
        (KVM_X86_DISABLE_EXITS_HLT, "hlt"),
        (KVM_X86_DISABLE_EXITS_PAUSE, "pause"),
        (KVM_X86_DISABLE_EXITS_CSTATE, "cstate"),
    ]
    .iter()
    .filter(|(b, _)| mask & b != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// Enable KVM_CAP_X86_DISABLE_EXITS with `mask` on `vm`. Must run before any
/// vCPU is created. Fails with one line naming what the host does not allow.
pub fn disable_exits(vm: &VmFd, mask: u32) -> Result<(), String> {
    let allowed = vm.check_extension_raw(KVM_CAP_X86_DISABLE_EXITS as libc::c_ulong);
    let allowed = if allowed < 0 { 0 } else { allowed as u32 };
    let refused = mask & !allowed;
    if refused != 0 {
        return Err(format!(
            "this host's KVM does not allow disabling {} exits (it allows: {})",
            disable_exits_names(refused).join(", "),
            match disable_exits_names(allowed) {
                v if v.is_empty() => "none".to_string(),
                v => v.join(", "),
            }
        ));
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_DISABLE_EXITS,
        ..Default::default()
    };
    cap.args[0] = mask as u64;
    vm.enable_cap(&cap)
        .map_err(|e| format!("KVM refused KVM_CAP_X86_DISABLE_EXITS {mask:#x}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_exits_parse_and_name() {
        assert_eq!(
            parse_disable_exits("hlt,pause").unwrap(),
            KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_PAUSE
        );
        assert!(parse_disable_exits("hlt,bogus").is_err());
        assert!(parse_disable_exits("").is_err());
        assert_eq!(
            disable_exits_names(0xf),
            ["mwait", "hlt", "pause", "cstate"]
        );
    }

    #[test]
    fn detects_from_fake_sysfs() {
        let d = std::env::temp_dir().join(format!("splitvm-host-{}", std::process::id()));
        let p = d.join("kvm_intel/parameters");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("enable_apicv"), "Y\n").unwrap();
        std::fs::write(p.join("enable_ipiv"), "N\n").unwrap();
        let ci = d.join("cpuinfo");
        std::fs::write(
            &ci,
            "processor\t: 0\nflags\t\t: fpu vmx x2apic\nvmx flags\t: vnmi posted_intr apicv\n",
        )
        .unwrap();
        let r = detect_from(&d, ci.to_str().unwrap());
        assert!(r.cpu_vmx && r.apicv_active);
        assert_eq!(r.enable_apicv, Some(true));
        assert_eq!(r.cpu_apicv_flags, ["apicv", "posted_intr", "vnmi"]);
        assert!(r.summary.starts_with("APICv: enabled"), "{}", r.summary);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
