#!/usr/bin/env bash
# The same block workload over virtio-pci (MSI-X) and virtio-mmio (I/O APIC
# pin), in the project's Linux guest: reads 4 MiB from /dev/vda with O_DIRECT
# in 4 KiB requests, writes 1 MiB and syncs. Prints, from splitvm's own
# counters, the interrupts per vector, the userspace exits per interrupt and
# the total exits of each run. A benchmark, not a test.
#
#   scripts/bench-virtio.sh [splitvm run options, e.g. --disable-exits hlt]
# (release build; builds what is missing). The "base" boot without the
# workload is subtracted from the workload boot, so the numbers are the
# workload's own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$(splitvm_copy "$work")
kernel=$(guest_kernel)
initrd=$(guest_initrd)

# Requests the guest makes: 1024 reads of 4 KiB, 256 writes of 4 KiB, a flush.
workload='dd if=/dev/vda of=/dev/null bs=4096 count=1024 iflag=direct 2>/dev/null; dd if=/dev/zero of=/dev/vda bs=4096 count=256 oflag=direct 2>/dev/null; sync; echo BENCH-DONE'
run64=$(printf '%s' "$workload" | base64 -w0)

printf '%-6s %10s %12s %14s %12s %12s %10s  %s\n' transport requests interrupts "user exits" "KVM exits" "EOI exits" "wall s" "interrupts per vector/pin"
for transport in pci mmio; do
    truncate -s 8M "$work/disk.img"
    # A baseline boot without the workload, to subtract the boot's own exits.
    for mode in base work; do
        extra=""
        [[ $mode == work ]] && extra="splitvm.run64=$run64"
        status=0
        "$bin" run --kernel "$kernel" --initrd "$initrd" \
            --cmdline "$(scripts/guest-cmdline.sh) $extra" --memory 128M \
            --disk "$work/disk.img" --transport "$transport" \
            --serial "file:$work/$transport-$mode.log" --stats-json "$work/$transport-$mode.json" \
            --progress never --timeout 900 "$@" >/dev/null 2>"$work/$transport-$mode.err" || status=$?
        # The guest's /init ends with `reboot -f`: splitvm exits 0.
        if [[ $status -ne 0 ]]; then
            echo "bench-virtio: $transport $mode run ended with status $status:" >&2
            tail -n 5 "$work/$transport-$mode.err" >&2
            exit 1
        fi
    done
    grep -q BENCH-DONE "$work/$transport-work.log" || { echo "bench-virtio: $transport workload did not finish" >&2; exit 1; }
    python3 - "$transport" "$work/$transport-base.json" "$work/$transport-work.json" <<'PY'
import json, sys
t, base, work = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
def dev(r):
    return next(d for d in r["virtio_devices"] if d["name"] == "virtio-blk0")
def src(r):
    return next(s for s in r["sources"] if s["name"] == "virtio-blk0")
d, d0 = dev(work), dev(base)
reqs = d["counters"].get("requests", 0) - d0["counters"].get("requests", 0)
ints = d["interrupts"] - d0["interrupts"]
user = work["total_exits"] - base["total_exits"]
def kvm_exits(r):
    k = r.get("kvm_stats") or {}
    return (k.get("vcpu_total") or {}).get("exits", 0)
allx = kvm_exits(work) - kvm_exits(base)
eoi = work["exits"].get("ioapic_eoi", 0) - base["exits"].get("ioapic_eoi", 0)
s = src(work)
if t == "pci":
    per = ", ".join(f"vector {k}: {v}" for k, v in (s.get("per_vector") or {}).items() if v)
else:
    how = "irqfd, raised in KVM" if s.get("in_kernel") else "raised by splitvm"
    per = f"pin {s.get('pin')}: {ints} ({how})"
wall = (work["wall_time_ms"] - base["wall_time_ms"]) / 1000
print(f"{t:<6} {reqs:>10} {ints:>12} {user:>14} {allx:>12} {eoi:>12} {wall:>10.1f}  {per}")
print(f"{'':<6} user exits per interrupt: {user/ints if ints else float('nan'):.2f} (userspace exits include the serial console's)")
PY
done
