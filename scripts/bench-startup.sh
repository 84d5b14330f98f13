#!/usr/bin/env bash
# splitvm startup time and memory overhead (a benchmark: it prints numbers,
# it asserts nothing). Results and their meaning: docs/performance.md.
#
#   scripts/bench-startup.sh [RUNS]        (default 20 runs per configuration)
#
# (a) Startup, for 1 vCPU / 128 MiB and 4 vCPUs / 1 GiB, booting
#     target/micro-guests/hello.elf (--test-devices: it prints three lines
#     and writes port 0xf4 at once), and the Linux guest (vmlinux + cpio,
#     stopped with --timeout after 0.3 s), per run:
#       main->KVM_RUN   top of main() to the first vCPU thread entering KVM_RUN
#                       (the report's startup.main_to_first_kvm_run_us)
#       exec->KVM_RUN   a launcher reads CLOCK_MONOTONIC right before execve();
#                       minus startup.first_kvm_run_monotonic_ns
#       cpu<main        process CPU time at main() (startup.cpu_time_before_main_us)
#       cpu main->KVM_RUN  process CPU time (all threads) spent from main() to the first
#                       KVM_RUN: the setup work itself, which waiting for a CPU on a
#                       busy host does not inflate (unlike the wall times above)
#       exec->exit      the whole hello.elf run, execve() to reaped (an upper bound)
# (b) Memory, while a guest that only executes `hlt` runs (raw 64-bit binary,
#     sampled 0.5 s after start, then SIGTERM): /proc/PID/smaps_rollup Rss and
#     Pss, the Rss of the guest RAM mapping (the anonymous mapping whose size
#     is the guest RAM), and splitvm's overhead = Rss - guest Rss, split into
#     file-backed (binary, libc: shared text) and anonymous pages.
#
# Environment:
#   SPLITVM=PATH   binary to measure (default: cargo build --release, target/release/splitvm)
#   RT=1           run splitvm as SCHED_FIFO priority 1 (root): what the wall times would be
#                  without waiting behind other processes on a busy host
#   LINUX=0        skip the Linux row of (a) (it needs the cached guest kernel + initramfs,
#                  built by scripts/build-guest-kernel.sh / build-initramfs.sh if missing)
#   KERNEL, INITRD use these instead of what those two scripts print
#   SPLITVM_ARGS   extra arguments for every run, e.g. "--seccomp off" to
#                  measure what the seccomp filters cost
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-20}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }

tmp=$(mktemp -d /tmp/splitvm-bench-startup.XXXXXX)
child=
cleanup() {
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        kill "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
splitvm_copy "$tmp" >/dev/null
hello=target/micro-guests/hello.elf
[[ -f "$hello" ]] || { echo "bench-startup: missing $hello (cargo build builds it)" >&2; exit 1; }

kernel="" initrd=""
if [[ "${LINUX:-1}" != 0 ]]; then
    kernel=${KERNEL:-$(scripts/build-guest-kernel.sh 2>"$tmp/kbuild.log" | tail -n1)} || kernel=
    initrd=${INITRD:-$(scripts/build-initramfs.sh 2>"$tmp/ibuild.log" | tail -n1)} || initrd=
    if [[ ! -f "$kernel" || ! -f "$initrd" ]]; then
        echo "bench-startup: no guest kernel/initramfs; skipping the Linux row:" >&2
        cat "$tmp/kbuild.log" "$tmp/ibuild.log" >&2 2>/dev/null || true
        kernel="" initrd=""
    fi
fi
cmdline=$(scripts/guest-cmdline.sh)

# The hlt guest: `1: hlt; jmp 1b`, entered in 64-bit mode at 0x100000.
printf '\xf4\xeb\xfd' >"$tmp/hlt.bin"

export BENCH_TMP="$tmp" BENCH_RUNS="$runs" BENCH_BIN="$tmp/splitvm" BENCH_HELLO="$hello" \
    BENCH_KERNEL="$kernel" BENCH_INITRD="$initrd" BENCH_CMDLINE="$cmdline" BENCH_RT="${RT:-0}" \
    BENCH_EXTRA="${SPLITVM_ARGS:-}"
python3 - <<'PY'
import json, os, signal, statistics, subprocess, sys, time

tmp, runs, binary = os.environ["BENCH_TMP"], int(os.environ["BENCH_RUNS"]), os.environ["BENCH_BIN"]
hello, kernel, initrd = os.environ["BENCH_HELLO"], os.environ["BENCH_KERNEL"], os.environ["BENCH_INITRD"]
report = os.path.join(tmp, "report.json")
rt = os.environ["BENCH_RT"] == "1"

sys.path.insert(0, "scripts")
from benchlib import loadavg, launch as launch_argv, waitstatus

def launch(args):
    """splitvm with `args` (and SPLITVM_ARGS). Returns (pid, t_exec_ns)."""
    extra = os.environ.get("BENCH_EXTRA", "").split()
    return launch_argv([binary] + args + extra, sched_fifo=rt)

def stats(xs):
    return statistics.median(xs), min(xs), max(xs)

def row(label, unit, xs, width=44):
    med, lo, hi = stats(xs)
    print(f"  {label:<{width}} {med:>10.0f} {lo:>10.0f} {hi:>10.0f}  {unit}")

print(f"splitvm startup benchmark: {runs} runs per configuration; binary {binary}"
      + ("; SCHED_FIFO 1" if rt else ""))
print(f"host: {os.cpu_count()} CPUs; load average (1/5/15 min) at start: {loadavg()}")
print()
print("(a) startup                                        median        min        max")

configs = [("hello.elf", hello, 1, "128M"), ("hello.elf", hello, 4, "1G")]
if kernel:
    mib = lambda f: os.path.getsize(f) / 2**20
    lname = f"Linux vmlinux ({mib(kernel):.1f} MiB) + cpio ({mib(initrd):.1f} MiB)"
    configs += [(lname, kernel, 1, "128M"), (lname, kernel, 4, "1G")]
for name, image, cpus, mem in configs:
    m2k, e2k, cpu, work, e2x = [], [], [], [], []
    for _ in range(runs):
        args = ["run", "--kernel", image, "--cpus", str(cpus), "--memory", mem,
                "--serial", "none", "--stats-json", report]
        linux = image != hello
        if linux:
            args += ["--initrd", initrd, "--cmdline", os.environ["BENCH_CMDLINE"], "--timeout", "0.3"]
        else:
            args += ["--test-devices"]
        if os.path.exists(report):
            os.unlink(report)
        pid, t0 = launch(args)
        code = waitstatus(pid)
        t1 = time.monotonic_ns()
        want = 6 if linux else 1   # timeout / debug-exit with value 0
        if code != want:
            sys.exit(f"bench-startup: {name} exited with {code}, expected {want}")
        s = json.load(open(report))["startup"]
        m2k.append(s["main_to_first_kvm_run_us"])
        e2k.append((s["first_kvm_run_monotonic_ns"] - t0) / 1000)
        cpu.append(s["cpu_time_before_main_us"])
        work.append(s["cpu_time_at_first_kvm_run_us"] - s["cpu_time_before_main_us"])
        e2x.append((t1 - t0) / 1000)
    print(f" {name}, {cpus} vCPU(s) / {mem}")
    row("main() -> first KVM_RUN", "us", m2k)
    row("execve() -> first KVM_RUN", "us", e2k)
    row("CPU time before main()", "us", cpu)
    row("CPU time main() -> first KVM_RUN", "us", work)
    if not linux:
        row("execve() -> exit (whole run)", "us", e2x)

def smaps(pid, guest_kb):
    """(total Rss, Pss, guest Rss, overhead file Rss, overhead anon Rss) in KiB."""
    rollup = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            rollup[parts[0][:-1]] = int(parts[1])
    guest = file_rss = anon_rss = 0
    path, size = None, 0
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):
            path = parts[5] if len(parts) > 5 else ""
        elif parts[0] == "Size:":
            size = int(parts[1])
        elif parts[0] == "Rss:":
            rss = int(parts[1])
            if path == "" and size == guest_kb:
                guest += rss
            elif path.startswith("/"):
                file_rss += rss
            else:
                anon_rss += rss
    return rollup["Rss"], rollup["Pss"], guest, file_rss, anon_rss

print()
print("(b) memory while a hlt guest runs (KiB)            median        min        max")
for cpus, mem, mb in [(1, "128M", 128), (4, "1G", 1024)]:
    cols = [[] for _ in range(6)]
    for _ in range(runs):
        pid, _ = launch(["run", "--kernel", os.path.join(tmp, "hlt.bin"), "--kernel-format", "raw",
                         "--entry", "0x100000", "--entry-mode", "64", "--cpus", str(cpus),
                         "--memory", mem, "--serial", "none", "--timeout", "30"])
        try:
            time.sleep(0.5)
            # main + PIT thread + one thread per vCPU
            threads = len(os.listdir(f"/proc/{pid}/task"))
            if threads < cpus + 1:
                sys.exit(f"bench-startup: only {threads} threads after 0.5 s")
            rss, pss, guest, frss, arss = smaps(pid, mb * 1024)
        finally:
            os.kill(pid, signal.SIGTERM)
            waitstatus(pid)
        for c, v in zip(cols, (rss, pss, guest, rss - guest, frss, arss)):
            c.append(v)
    print(f" hlt guest, {cpus} vCPU(s) / {mem}")
    for label, c in zip(("Rss (total)", "Pss (total)", "guest RAM mapping Rss",
                         "overhead = Rss - guest Rss", "  of which file-backed (binary, libs)",
                         "  of which anonymous (heap, stacks, kvm_run)"), cols):
        row(label, "KiB", c)
print()
print(f"load average (1/5/15 min) at end: {loadavg()}")
PY
