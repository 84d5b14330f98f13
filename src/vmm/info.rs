//! GET /api/v1/vm.info: the machine, in Cloud Hypervisor's shape where it
//! has one (`config.cpus.boot_vcpus`, `config.memory.size`,
//! `config.payload`, `state`), with what splitvm adds (irqchip mode,
//! devices on each bus, interrupt sources).

use serde_json::{json, Value};

use super::control::Running;
use crate::config::VmConfig;

pub(super) fn vm_info(cfg: &VmConfig, r: &Running) -> Value {
    let disks: Vec<Value> = cfg
        .disks
        .iter()
        .map(|d| {
            let (path, opts) = d.split_once(',').unwrap_or((d, ""));
            json!({ "path": path, "readonly": opts.split(',').any(|o| o == "readonly") })
        })
        .collect();
    let nets: Vec<Value> = cfg.nets.iter().map(|n| json!({ "spec": n })).collect();
    let sources: Vec<String> = r.sources.iter().map(|(_, s)| s.display_name()).collect();
    let mut pio = r.pio_names.clone();
    pio.dedup();
    let mut mmio = r.mmio_names.clone();
    mmio.dedup();
    json!({
        "state": if r.is_paused() { "Paused" } else { "Running" },
        "config": {
            "cpus": { "boot_vcpus": cfg.cpus, "max_vcpus": cfg.cpus },
            "memory": { "size": cfg.mem_size },
            "payload": {
                "kernel": cfg.run.restore.is_none().then(|| cfg.boot.kernel.display().to_string()),
                "initramfs": cfg.boot.initrd.as_ref().map(|p| p.display().to_string()),
                "cmdline": cfg.boot.cmdline,
            },
            "restored_from": cfg.run.restore.as_ref().map(|p| p.display().to_string()),
            "disks": disks,
            "net": nets,
            "transport": format!("{:?}", cfg.transport).to_lowercase(),
            "irqchip": cfg.irqchip.name(),
            "pit": cfg.pit,
            "acpi": cfg.has_acpi(),
            "test_devices": cfg.test_devices,
            "coalesced_io": r.coalesced_io,
            "command": cfg.run.command,
        },
        "memory_actual_size": cfg.mem_size,
        "devices": { "pio": pio, "mmio": mmio },
        "interrupt_sources": sources,
        "paused_ms": r.paused_time().as_millis() as u64,
    })
}
