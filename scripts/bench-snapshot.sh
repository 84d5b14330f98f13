#!/usr/bin/env bash
# Snapshot and restore against a cold boot (a benchmark: it prints numbers,
# it asserts nothing). Results and their meaning: docs/performance.md.
#
#   scripts/bench-snapshot.sh [RESTORES] [BOOTS]   (defaults 20 and 3)
#
# For the project's Linux guest (vmlinux + cpio, 128 MiB), 1 and 2 vCPUs:
#   cold boot + true    `splitvm run --kernel ... -- true`, execve() to reaped
#                       (BOOTS runs, 1 vCPU only: each is a whole emulated boot)
#   snapshot            one boot with --snapshot-on-ready; from splitvm's log
#                       line: vCPUs paused, snapshot written (pause + state +
#                       memory + rename); the state file's size, the memory
#                       file's size and the bytes it really takes (sparse)
#   restore             `splitvm run --restore DIR -- true`, RESTORES runs:
#                       execve() -> first KVM_RUN (a launcher reads
#                       CLOCK_MONOTONIC right before execve(), minus the
#                       report's startup.first_kvm_run_monotonic_ns),
#                       main() -> first KVM_RUN, and execve() -> reaped
#   ratio               median cold boot + true / median restore + true
#
# Environment: SPLITVM=PATH (default: cargo build --release),
# KERNEL, INITRD (default: what the build scripts print).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

restores=${1:-20}
boots=${2:-3}
[[ "$restores" =~ ^[1-9][0-9]*$ && "$boots" =~ ^[1-9][0-9]*$ ]] ||
    { echo "usage: $0 [RESTORES] [BOOTS]" >&2; exit 2; }

tmp=$(mktemp -d /tmp/splitvm-bench-snapshot.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
splitvm_copy "$tmp" >/dev/null
kernel=$(guest_kernel)
initrd=$(guest_initrd)

export BENCH_TMP="$tmp" BENCH_BIN="$tmp/splitvm" BENCH_KERNEL="$kernel" BENCH_INITRD="$initrd" \
    BENCH_RESTORES="$restores" BENCH_BOOTS="$boots"
python3 - <<'PY'
import json, os, re, statistics, subprocess, sys, time

tmp, binary = os.environ["BENCH_TMP"], os.environ["BENCH_BIN"]
kernel, initrd = os.environ["BENCH_KERNEL"], os.environ["BENCH_INITRD"]
restores, boots = int(os.environ["BENCH_RESTORES"]), int(os.environ["BENCH_BOOTS"])
report = os.path.join(tmp, "report.json")

sys.path.insert(0, "scripts")
from benchlib import loadavg, launch as launch_argv, waitstatus

def launch(args, stderr_path=None):
    """Run splitvm with `args` to its end.
    Returns (exit code, t_exec_ns, t_reaped_ns)."""
    pid, t0 = launch_argv([binary] + args, stderr_path)
    code = waitstatus(pid)
    return code, t0, time.monotonic_ns()

def row(label, unit, xs, scale=1.0):
    xs = [x / scale for x in xs]
    print(f"  {label:<40} {statistics.median(xs):>10.1f} {min(xs):>10.1f} {max(xs):>10.1f}  {unit}")

print(f"splitvm snapshot benchmark: {restores} restores per snapshot, {boots} cold boots; binary {binary}")
print(f"host: {os.cpu_count()} CPUs; load average (1/5/15 min) at start: {loadavg()}")
print(f"guest: {kernel} + {initrd}, 128 MiB")
print()
print("                                              median        min        max")
cold = []
for _ in range(boots):
    code, t0, t1 = launch(["run", "--kernel", kernel, "--initrd", initrd, "--timeout", "600",
                           "--", "true"])
    if code != 0:
        sys.exit(f"bench-snapshot: cold boot exited with {code}")
    cold.append((t1 - t0) / 1e9)
print(" cold boot, 1 vCPU")
row("execve() -> exit, boot + true", "s", cold)

for cpus in (1, 2):
    snap = os.path.join(tmp, f"snap{cpus}")
    log = os.path.join(tmp, f"snap{cpus}.log")
    code, t0, t1 = launch(["run", "--kernel", kernel, "--initrd", initrd, "--cpus", str(cpus),
                           "--timeout", "600", "--snapshot-on-ready", snap, "--log-level", "info",
                           "--", "true"], log)
    if code != 0:
        sys.exit(f"bench-snapshot: snapshot boot exited with {code}: {open(log).read()}")
    line = next((l for l in open(log) if "snapshot (ready) written" in l), "")
    m = re.search(r"paused in ([0-9.]+) ms, ([0-9.]+) ms in all", line)
    mem = next(f for f in os.listdir(snap) if f.startswith("memory-"))
    st = os.stat(os.path.join(snap, mem))
    state = os.path.getsize(os.path.join(snap, "state.json"))
    print(f" snapshot at the agent's ready, {cpus} vCPU(s)")
    print(f"  {'vCPUs paused':<40} {float(m.group(1)):>10.1f} ms")
    print(f"  {'snapshot written (in all)':<40} {float(m.group(2)):>10.1f} ms")
    print(f"  {'state file':<40} {state / 1024:>10.1f} KiB")
    print(f"  {'memory file (apparent / on disk)':<40} {st.st_size / 2**20:>10.1f} {st.st_blocks * 512 / 2**20:>10.1f}  MiB")
    e2k, m2k, e2x = [], [], []
    for _ in range(restores):
        if os.path.exists(report):
            os.unlink(report)
        code, t0, t1 = launch(["run", "--restore", snap, "--stats-json", report, "--", "true"])
        if code != 0:
            sys.exit(f"bench-snapshot: restore exited with {code}")
        s = json.load(open(report))["startup"]
        e2k.append((s["first_kvm_run_monotonic_ns"] - t0) / 1e6)
        m2k.append(s["main_to_first_kvm_run_us"] / 1e3)
        e2x.append((t1 - t0) / 1e9)
    print(f" restore + true, {cpus} vCPU(s)")
    row("execve() -> first KVM_RUN", "ms", e2k)
    row("main() -> first KVM_RUN", "ms", m2k)
    row("execve() -> exit, restore + true", "s", e2x)
    if cpus == 1:
        print(f"  {'cold boot / restore (medians)':<40} {statistics.median(cold) / statistics.median(e2x):>10.1f} x")
print()
print(f"load average at the end: {loadavg()}")
PY
