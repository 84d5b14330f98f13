//! virtio-blk and virtio-net in a Linux guest, over virtio-pci (MSI-X) and
//! over virtio-mmio (one I/O APIC pin per device). The guest reads a marker
//! from the disk, writes and syncs a block the host then reads back, and
//! pings the host end of a TAP that lives in a network namespace this test
//! creates (traffic stays inside the namespace).

mod common;

use std::path::Path;

use common::{boot_wrapped, is_root, proc_interrupts, run_in_guest, tail, NetNs};

const DISK_MARKER: &str = "SPLITVM-DISK-MARKER-7f3a9c";
const GUEST_WROTE: &str = "SPLITVM-GUEST-WROTE-5b21e0";
const WRITE_OFFSET: u64 = 1 << 20;

fn disk_image(path: &Path) {
    let mut d = vec![0u8; 4 << 20];
    d[..DISK_MARKER.len()].copy_from_slice(DISK_MARKER.as_bytes());
    std::fs::write(path, d).unwrap();
}

fn disk_and_net(transport: &str) {
    assert!(
        is_root(),
        "virtio tests need root (TAP devices and network namespaces); CI runs as root"
    );
    let name = format!("virtio-{transport}");
    let ns_name = format!("spvm-{transport}-{}", std::process::id());
    let tap = format!("spvmtap-{}", &transport[..1]);
    let ns = NetNs::new(&ns_name, &tap);
    let dir = std::env::temp_dir().join(format!("splitvm-disk-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    disk_image(&disk);

    let guest_cmd = format!(
        "head -c {n} /dev/vda; echo; \
         echo {GUEST_WROTE} | dd of=/dev/vda bs=512 seek={seek} conv=fsync 2>/dev/null; sync; \
         ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0 && \
         ping -c 3 -W 10 10.0.2.1 && echo NET-PING-OK; \
         echo '--- interrupts after ---'; cat /proc/interrupts",
        n = DISK_MARKER.len(),
        seek = WRITE_OFFSET / 512
    );
    let disk_arg = disk.display().to_string();
    let net_arg = format!("tap={tap}");
    let b = boot_wrapped(
        &["ip", "netns", "exec", &ns.name],
        &name,
        1,
        &[
            "--disk",
            &disk_arg,
            "--net",
            &net_arg,
            "--transport",
            transport,
        ],
        &run_in_guest(&guest_cmd),
    );
    let serial = &b.serial;
    let fail = |what: &str| -> ! {
        panic!(
            "{name}: {what}; status {}; last serial lines:\n{}",
            b.status,
            tail(serial, 50)
        )
    };
    if !serial.contains("SPLITVM-INIT-MARKER") {
        fail("init marker missing");
    }
    if !serial.contains(DISK_MARKER) {
        fail("guest did not read the disk marker");
    }
    let img = std::fs::read(&disk).unwrap();
    let at = WRITE_OFFSET as usize;
    if !img[at..at + GUEST_WROTE.len()].eq(GUEST_WROTE.as_bytes()) {
        fail("the guest's write did not reach the disk file");
    }
    if !serial.contains("NET-PING-OK") {
        fail("no ping replies from the host end of the TAP");
    }
    let after = serial
        .split("--- interrupts after ---")
        .nth(1)
        .unwrap_or("");
    eprintln!("[{name}] guest /proc/interrupts after the workload:\n{after}");
    let virtio_lines: Vec<&str> = after.lines().filter(|l| l.contains("virtio")).collect();
    if virtio_lines.is_empty() {
        fail("no virtio lines in /proc/interrupts");
    }
    for l in &virtio_lines {
        let ok = match transport {
            "pci" => l.contains("PCI-MSI"),
            _ => l.contains("IO-APIC") && l.contains("-edge"),
        };
        assert!(ok, "{name}: unexpected interrupt path: {l}");
    }
    assert!(!proc_interrupts(serial).is_empty());
    let devs = b.stats["virtio_devices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        devs.len(),
        2,
        "{name}: report lists the two devices: {devs:?}"
    );
    for d in &devs {
        assert!(d["interrupts"].as_u64().unwrap_or(0) > 0, "{name}: {d}");
        assert_eq!(
            d["notify_exits"].as_u64(),
            Some(0),
            "{name}: notifications use ioeventfds: {d}"
        );
    }
    // MSI-X costs no EOI exits; virtio-mmio pins are edge-triggered: none either.
    assert!(
        b.stats["exits"]["ioapic_eoi"].as_u64().unwrap_or(0) == 0,
        "{name}: no EOI exits expected: {}",
        b.stats["exits"]
    );
    // The report validates against docs/stats-schema.json and its table
    // rows name the serial pin and every virtio MSI-X vector or pin.
    let errors = common::schema::check_report(&b.stats);
    assert!(
        errors.is_empty(),
        "{name}: report violates the schema: {errors:#?}"
    );
    let sources = b.stats["sources"].as_array().cloned().unwrap_or_default();
    let named = |n: &str| sources.iter().any(|s| s["name"].as_str() == Some(n));
    assert!(named("serial"), "{name}: no serial source: {sources:#?}");
    for dev in ["virtio-blk0", "virtio-net0"] {
        let s = sources
            .iter()
            .find(|s| s["name"].as_str() == Some(dev))
            .unwrap_or_else(|| panic!("{name}: no source row for {dev}: {sources:#?}"));
        if transport == "pci" {
            let vectors = s["per_vector"].as_object().map_or(0, |m| m.len());
            assert!(vectors >= 2, "{name}: {dev} lists its MSI-X vectors: {s:#}");
        } else {
            assert!(
                s["pin"].as_u64().is_some(),
                "{name}: {dev} is on a pin: {s:#}"
            );
        }
    }
    assert_eq!(b.status, 0, "{name}: guest did not reboot cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn virtio_blk_and_net_over_pci_use_msix() {
    disk_and_net("pci");
}

#[test]
fn virtio_blk_and_net_over_mmio_use_ioapic_pins() {
    disk_and_net("mmio");
}
