#!/usr/bin/env bash
# Command-mode runs of mixed shapes under host contention, counting hangs
# (a stress test: it prints numbers and each hang's verdict; status 1 if any
# run hung or failed). docs/host-limits.md has the last results.
#
#   scripts/stress-runs.sh RUNS JOBS [HOGS]
#     RUNS  runs in all (default 300)
#     JOBS  runs at a time (default 3)
#     HOGS  busy-looping host processes started first (default: host CPUs)
#
# Run i has shape i mod 6, and is a cold boot when i mod 5 == 0 (else a
# restore from a snapshot of that shape's machine, taken once at start):
#   sleep     `sleep 1; echo slept`
#   ping      `ping -c 3 -W 1 10.0.2.1` over virtio-net to a TAP in a network
#             namespace (the host end answers)
#   dd        dd of 1 MiB with fsync and O_DIRECT to a virtio-blk disk, read
#             back and checksummed
#   idle      `sleep 30` (a guest idle for half a minute must be woken)
#   cmdline   `echo LEN` padded to a command line of LEN bytes, LEN running
#             through 1..4096 (run i: 1 + (i * 613) mod 4096)
#   seq       `seq 1 5000` through the channel (stdout checked)
# A run hangs when splitvm's own --timeout ends it (status 124): its
# stuck-guest verdict is printed. Needs root (network namespace, TAP).
#
# Environment: SPLITVM=PATH (default: cargo build --release), KERNEL, INITRD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-300}
jobs=${2:-3}
hogs=${3:-$(nproc)}
[[ "$runs" =~ ^[1-9][0-9]*$ && "$jobs" =~ ^[1-9][0-9]*$ && "$hogs" =~ ^[0-9]+$ ]] ||
    { echo "usage: $0 [RUNS] [JOBS] [HOGS]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "stress-runs: needs root (network namespace, TAP)" >&2; exit 2; }

tmp=$(mktemp -d /tmp/splitvm-stress.XXXXXX)
ns=spvm-stress-$$
hog_pids=()
cleanup() {
    for p in "${hog_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
splitvm_copy "$tmp" >/dev/null
kernel=$(guest_kernel)
initrd=$(guest_initrd)

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev spvmst0 mode tap vnet_hdr
ip -n "$ns" addr add 10.0.2.1/24 dev spvmst0
ip -n "$ns" link set spvmst0 up

for ((h = 0; h < hogs; h++)); do
    ( while :; do :; done ) &
    hog_pids+=($!)
done

export ST_TMP="$tmp" ST_BIN="$tmp/splitvm" ST_KERNEL="$kernel" ST_INITRD="$initrd" \
    ST_RUNS="$runs" ST_JOBS="$jobs" ST_HOGS="$hogs" ST_NS="$ns"
python3 - <<'PY'
import concurrent.futures, os, subprocess, sys, threading, time

sys.path.insert(0, "scripts")
from benchlib import loadavg

E = os.environ
tmp, binary, ns = E["ST_TMP"], E["ST_BIN"], E["ST_NS"]
kernel, initrd = E["ST_KERNEL"], E["ST_INITRD"]
runs, jobs, hogs = int(E["ST_RUNS"]), int(E["ST_JOBS"]), int(E["ST_HOGS"])
SHAPES = ["sleep", "ping", "dd", "idle", "cmdline", "seq"]
ip_cmd = "ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up"

def disk(path):
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    return path

def machine(shape, d):
    """splitvm arguments for the shape's machine (no kernel: boot adds it)."""
    if shape == "ping":
        return ["--net", "tap=spvmst0"]
    if shape == "dd":
        return ["--disk", disk(os.path.join(d, "disk.img"))]
    return []

def command(shape, i):
    if shape == "sleep":
        return "sleep 1; echo slept", "slept\n"
    if shape == "ping":
        return f"{ip_cmd}; ping -c 3 -W 1 10.0.2.1 >/dev/null && echo pong", "pong\n"
    if shape == "dd":
        return (f"yes run-{i} | head -c 1048576 > /tmp/a; "
                "dd if=/tmp/a of=/dev/vda bs=65536 oflag=direct conv=fsync 2>/dev/null; "
                "dd if=/dev/vda bs=65536 count=16 iflag=direct 2>/dev/null | md5sum > /tmp/b; "
                "md5sum < /tmp/a | cmp -s - /tmp/b && echo same"), "same\n"
    if shape == "idle":
        return "sleep 30; echo woke", "woke\n"
    if shape == "seq":
        return "seq 1 5000", "".join(f"{n}\n" for n in range(1, 5001))
    n = 1 + (i * 613) % 4096
    base = f"echo {n} #"
    return base + "x" * max(0, n - len(base)), f"{n}\n"

def wrap(argv, shape):
    return ["ip", "netns", "exec", ns] + argv if shape == "ping" else argv

def boot_args(shape, d):
    return ["run", "--kernel", kernel, "--initrd", initrd] + machine(shape, d)

# One snapshot per shape, at the agent's ready.
snaps = {}
t0 = time.monotonic()
for shape in SHAPES:
    d = os.path.join(tmp, f"snap-{shape}")
    os.makedirs(d)
    argv = [binary] + boot_args(shape, d) + ["--snapshot-on-ready", os.path.join(d, "snap"),
            "--timeout", "600", "--", "true"]
    r = subprocess.run(wrap(argv, shape), stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"stress-runs: snapshot of {shape} failed ({r.returncode}): {r.stderr.strip()}")
    snaps[shape] = os.path.join(d, "snap")
print(f"stress-runs: 6 snapshots in {time.monotonic() - t0:.0f} s; load {loadavg()}", flush=True)

# The TAP opens once at a time, and restores of the dd snapshot share its
# disk file: runs of those shapes take turns.
turns = {"ping": threading.Lock(), "dd": threading.Lock()}

def one(i):
    shape = SHAPES[i % len(SHAPES)]
    cold = i % 5 == 0
    d = os.path.join(tmp, f"run-{i}")
    os.makedirs(d)
    cmd, want = command(shape, i)
    timeout = 420 if cold else 180
    if cold:
        argv = [binary] + boot_args(shape, d)
    else:
        argv = [binary, "run", "--restore", snaps[shape]]
    argv += ["--timeout", str(timeout), "--", "sh", "-c", cmd]
    lock = turns.get(shape) if (shape == "ping" or not cold) else None
    if lock:
        lock.acquire()
    try:
        t = time.monotonic()
        r = subprocess.run(wrap(argv, shape), stdin=subprocess.DEVNULL, capture_output=True)
        secs = time.monotonic() - t
    finally:
        if lock:
            lock.release()
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    verdict = next((l for l in reversed(err.splitlines()) if l.startswith("splitvm: stuck: ")), "")
    if r.returncode == 124:
        kind = "hang"
    elif r.returncode != 0 or out != want:
        kind = "fail"
    else:
        kind = "ok"
    detail = f"status {r.returncode}" + ("" if out == want else f", stdout {out[:60]!r}")
    last = (err.strip().splitlines() or [""])[-1]
    return i, shape, "boot" if cold else "restore", kind, secs, detail, verdict, last

t0 = time.monotonic()
results = []
with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
    for res in ex.map(one, range(runs)):
        i, shape, how, kind, secs, detail, verdict, last = res
        results.append(res)
        line = f"{i:4} {shape:8} {how:8} {kind:5} {secs:6.1f} s"
        if kind != "ok":
            line += f"  {detail}; {verdict or last}"
        print(line, flush=True)
wall = time.monotonic() - t0
hangs = [r for r in results if r[3] == "hang"]
fails = [r for r in results if r[3] == "fail"]
print()
print(f"stress-runs: {runs} runs ({sum(r[2] == 'boot' for r in results)} cold boots, "
      f"{sum(r[2] == 'restore' for r in results)} restores), {jobs} at a time, {hogs} CPU hog(s), "
      f"{wall / 60:.1f} min; load at end {loadavg()}")
for shape in SHAPES:
    rs = [r for r in results if r[1] == shape]
    if rs:
        secs = sorted(r[4] for r in rs)
        print(f"  {shape:8} {len(rs):4} runs, median {secs[len(secs) // 2]:6.1f} s, max {secs[-1]:6.1f} s")
print(f"hangs: {len(hangs)}")
for r in hangs:
    print(f"  run {r[0]} ({r[1]}, {r[2]}): {r[6] or 'no verdict printed'}")
print(f"failures: {len(fails)}")
for r in fails:
    print(f"  run {r[0]} ({r[1]}, {r[2]}): {r[5]}; {r[7]}")
sys.exit(1 if hangs or fails else 0)
PY
