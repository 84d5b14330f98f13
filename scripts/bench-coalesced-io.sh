#!/usr/bin/env bash
# Command-channel benchmark (it prints numbers, asserts nothing): what a
# guest command's stdout costs through COM2 with the UARTs' data ports
# coalesced (`--coalesced-io on`, the default) and without (`off`).
#
#   scripts/bench-coalesced-io.sh [-n N] [-r REPS] [--forms plain,cat] [--splitvm PATH]
#
# The Linux guest (scripts/build-guest-kernel.sh, build-initramfs.sh, 1 vCPU,
# 128 MiB) boots once to its agent's ready and is snapshotted; every run
# restores that snapshot and runs one command:
#   plain  `seq 1 N`        seq writes one line per write() (its stdout is a tty)
#   cat    `seq 1 N | cat`  the same bytes, written in pipe-sized blocks
# and the same command with N = 1 (the restore, the fork and exec and the
# exit exchange), so that the difference of the two is the cost of the
# output alone: exits per byte (perf `kvm:kvm_userspace_exit` from outside;
# the report's per-device split beside it) and bytes per second of wall
# time. Every run's stdout is compared with the host's `seq 1 N`; a
# difference stops the benchmark. Modes alternate run by run (the order
# reverses each repetition). Default N = 300000 (1,988,895 bytes): on a
# kvm_pvm host the plain form takes about ten minutes per run.
#
# Needs root (perf on kvm:* tracepoints) and perf (linux-perf, installed if
# missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=300000
REPS=1
FORMS=plain,cat
SPLITVM=""
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        --forms) FORMS="$2"; shift 2 ;;
        --splitvm) SPLITVM="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "bench-coalesced-io: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
log() { printf 'bench-coalesced-io: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench-coalesced-io: needs root (perf on kvm:* tracepoints)" >&2; exit 2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ensure_packages linux-perf
WORK="$(mktemp -d /tmp/splitvm-bench-coalesced.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
splitvm_copy "$WORK" >/dev/null
KERNEL=$(guest_kernel)
INITRD=$(guest_initrd)

export BCI_WORK="$WORK" BCI_N="$N" BCI_REPS="$REPS" BCI_FORMS="$FORMS" \
    BCI_KERNEL="$KERNEL" BCI_INITRD="$INITRD"
python3 - <<'PY'
import json, os, statistics, subprocess, sys, time

sys.path.insert(0, "scripts")
from benchlib import loadavg

E = os.environ
work, n, reps = E["BCI_WORK"], int(E["BCI_N"]), int(E["BCI_REPS"])
forms = E["BCI_FORMS"].split(",")
splitvm = os.path.join(work, "splitvm")
snap = os.path.join(work, "snap")
COMMANDS = {"plain": "seq 1 {}", "cat": "seq 1 {} | cat"}
MODES = ["on", "off"]
load_start = loadavg()

def log(m):
    print(f"bench-coalesced-io: {m}", file=sys.stderr, flush=True)

log("booting the guest once for the snapshot")
subprocess.run([splitvm, "run", "--kernel", E["BCI_KERNEL"], "--initrd", E["BCI_INITRD"],
                "--cpus", "1", "--memory", "128M", "--snapshot-on-ready", snap,
                "--timeout", "600", "--progress", "never", "--", "true"],
               check=True, stdout=subprocess.DEVNULL)

def one(mode, form, count):
    report = os.path.join(work, "report.json")
    perf = os.path.join(work, "perf.out")
    t0 = time.monotonic()
    p = subprocess.run(["perf", "stat", "-x,", "-o", perf, "-e", "kvm:kvm_userspace_exit", "--",
                        splitvm, "run", "--restore", snap, "--coalesced-io", mode,
                        "--stats-json", report, "--timeout", "3600", "--progress", "never",
                        "--", "sh", "-c", COMMANDS[form].format(count)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - t0
    want = subprocess.run(["seq", "1", str(count)], capture_output=True).stdout
    if p.returncode != 0 or p.stdout != want:
        sys.exit(f"bench-coalesced-io: {mode} {form} {count}: status {p.returncode}, "
                 f"{len(p.stdout)} bytes (want {len(want)}): {p.stderr[-400:]!r}")
    r = json.load(open(report))
    u = next(int(l.split(",")[0]) for l in open(perf) if ",kvm:kvm_userspace_exit," in l)
    return {"wall": wall, "bytes": len(want), "uexits": u, "report_exits": r["total_exits"],
            "pio": r["pio_exits_per_device"], "coalesced": r["coalesced_pio_per_device"],
            "mode": r["coalesced_io"]}

res = {(m, f): [] for m in MODES for f in forms}
for rep in range(reps):
    for form in forms:
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            base = one(mode, form, 1)
            big = one(mode, form, n)
            d = {k: big[k] - base[k] for k in ("wall", "bytes", "uexits", "report_exits")}
            d["com2"] = big["pio"].get("cmd-stdout", 0) - base["pio"].get("cmd-stdout", 0)
            d["com4"] = big["pio"].get("cmd-control", 0) - base["pio"].get("cmd-control", 0)
            d["coalesced"] = big["coalesced"].get("cmd-stdout", 0) - base["coalesced"].get("cmd-stdout", 0)
            d["cross"] = (big["report_exits"], big["uexits"])
            d["reported_mode"] = big["mode"]
            res[(mode, form)].append(d)
            log(f"rep {rep + 1}/{reps} {form} {mode}: {d['bytes']} bytes, {d['uexits']} exits, "
                f"{d['wall']:.1f} s")

def med(xs):
    return statistics.median(xs)

print(f"# bench-coalesced-io: `seq 1 {n}` through the command channel (COM2), 1 vCPU, 128 MiB")
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip()
print(f"splitvm {rev}{' + local changes' if dirty else ''}; {reps} rep(s), modes alternating; "
      f"load {load_start} at the start, {loadavg()} at the end")
print("Differences between `seq 1 N` and `seq 1 1` runs from one snapshot (medians).")
print()
print("| command | --coalesced-io | bytes | exits (perf) | exits/byte | COM2 exits/byte | COM4 exits/byte | coalesced writes | wall s | bytes/s |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
summary = {}
for form in forms:
    for mode in MODES:
        s = res[(mode, form)]
        b = int(med([x["bytes"] for x in s]))
        u = med([x["uexits"] for x in s])
        w = med([x["wall"] for x in s])
        summary[(mode, form)] = (u / b, b / w)
        print(f"| `{COMMANDS[form].format(n).replace('|', chr(92) + '|')}` | {mode} ({s[0]['reported_mode']}) | {b:,} | {u:,.0f} | {u / b:.3f} | "
              f"{med([x['com2'] for x in s]) / b:.3f} | {med([x['com4'] for x in s]) / b:.3f} | "
              f"{med([x['coalesced'] for x in s]):,.0f} | {w:.1f} | {b / w:,.0f} |")
print()
for form in forms:
    (eo, bo), (ef, bf) = summary[("on", form)], summary[("off", form)]
    print(f"- `{COMMANDS[form].format(n)}`: on/off exits per byte {eo / ef:.3f}; bytes/s on/off {bo / bf:.2f}x")
print("- cross-check, splitvm's own total_exits / perf kvm_userspace_exit of each big run: " +
      ", ".join(f"{m}/{f} {x['cross'][0]}/{x['cross'][1]}" for (m, f), s in res.items() for x in s))
PY
