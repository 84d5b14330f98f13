#!/usr/bin/env bash
# Does every TSC-deadline expiry reach a halted vCPU, under host CPU
# contention, in splitvm and in QEMU alike? (A stress test: it prints
# numbers; status 1 if any run lost an expiry or failed.)
#
#   scripts/stress-timer.sh [ITERATIONS] [ROUNDS] [HOGS]
#     ITERATIONS  timer expiries per run (default 100000: ~2 min per run)
#     ROUNDS      runs of each VMM, alternating (default 2)
#     HOGS        busy-looping host processes started first (default: host CPUs)
#
# The guest is the micro-guest timer_stress (tests/guests/timer_stress.S):
# N times it arms IA32_TSC_DEADLINE 1 ms ahead and halts with interrupts
# on; a 100 Hz PIT is a watchdog that counts an expiry 50 ms overdue as
# lost. Both VMMs run the same image with the split irqchip:
#   splitvm run --kernel timer_stress.elf --test-devices --cmdline iterations=N
#   qemu-system-x86_64 -accel kvm -machine pc,kernel-irqchip=split
#     -cpu host,-arch-capabilities -m 128 -kernel timer_stress.elf
#     -append iterations=N -device isa-debug-exit,iobase=0xf4,iosize=4 ...
# Installs qemu-system-x86 if missing. Environment: SPLITVM=PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

iterations=${1:-100000}
rounds=${2:-2}
hogs=${3:-$(nproc)}
[[ "$iterations" =~ ^[1-9][0-9]*$ && "$rounds" =~ ^[1-9][0-9]*$ && "$hogs" =~ ^[0-9]+$ ]] ||
    { echo "usage: $0 [ITERATIONS] [ROUNDS] [HOGS]" >&2; exit 2; }
log() { printf 'stress-timer: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ensure_packages qemu-system-x86

guest="${CARGO_TARGET_DIR:-target}/micro-guests/timer_stress.elf"
[[ -f "$guest" ]] || die "$guest missing (cargo build builds it)"
tmp=$(mktemp -d /tmp/splitvm-stress-timer.XXXXXX)
hog_pids=()
cleanup() {
    for p in "${hog_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
splitvm_copy "$tmp" >/dev/null
cp "$guest" "$tmp/guest.elf"
for ((h = 0; h < hogs; h++)); do
    ( while :; do :; done ) &
    hog_pids+=($!)
done

export STT_TMP="$tmp" STT_N="$iterations" STT_ROUNDS="$rounds" STT_HOGS="$hogs"
python3 - <<'PY'
import os, subprocess, sys, time

sys.path.insert(0, "scripts")
from benchlib import loadavg

E = os.environ
tmp, n, rounds, hogs = E["STT_TMP"], int(E["STT_N"]), int(E["STT_ROUNDS"]), int(E["STT_HOGS"])
guest = os.path.join(tmp, "guest.elf")
serial = os.path.join(tmp, "serial.txt")
timeout = max(600, n // 100)

def argv(vmm):
    if vmm == "qemu":
        return ["qemu-system-x86_64", "-accel", "kvm", "-machine", "pc,kernel-irqchip=split",
                "-cpu", "host,-arch-capabilities", "-m", "128", "-smp", "1", "-display", "none",
                "-nodefaults", "-no-reboot", "-serial", "file:" + serial, "-kernel", guest,
                "-append", f"iterations={n}", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    return [os.path.join(tmp, "splitvm"), "run", "--kernel", guest, "--test-devices",
            "--cmdline", f"iterations={n}", "--serial", "file:" + serial,
            "--timeout", str(timeout), "--progress", "never"]

print(f"stress-timer: {n} TSC-deadline expiries per run, {rounds} round(s), {hogs} CPU hog(s); "
      f"load {loadavg()} at the start", flush=True)
print(f"{'vmm':<8} {'round':>5} {'status':>6} {'iterations':>10} {'lost':>5} "
      f"{'late>1ms':>9} {'max_late_us':>11} {'wall_s':>7}  load", flush=True)
bad = 0
for r in range(rounds):
    for vmm in (("splitvm", "qemu") if r % 2 == 0 else ("qemu", "splitvm")):
        if os.path.exists(serial):
            os.unlink(serial)
        t = time.monotonic()
        try:
            p = subprocess.run(argv(vmm), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, timeout=timeout + 60)
            status = p.returncode
        except subprocess.TimeoutExpired:
            status = "hung"
        wall = time.monotonic() - t
        out = open(serial, errors="replace").read() if os.path.exists(serial) else ""
        v = {}
        for line in out.splitlines():
            k, _, x = line.rpartition(" ")
            if k in ("iterations", "lost", "late_over_1ms", "max_late_us") and x.isdigit():
                v[k] = int(x)
        if status != 1 or "PASS" not in out:
            bad += 1
        print(f"{vmm:<8} {r:>5} {status:>6} {v.get('iterations', '-'):>10} {v.get('lost', '-'):>5} "
              f"{v.get('late_over_1ms', '-'):>9} {v.get('max_late_us', '-'):>11} {wall:>7.1f}  {loadavg()}",
              flush=True)
print(f"stress-timer: {bad} run(s) lost an expiry or failed; load {loadavg()} at the end")
sys.exit(1 if bad else 0)
PY
