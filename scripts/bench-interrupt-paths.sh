#!/usr/bin/env bash
# Interrupt-path benchmark: VM exits per interrupt for each delivery path
# splitvm has today, with and without --disable-exits hlt, from splitvm's
# per-source report and KVM's binary statistics. Writes a Markdown table
# (default docs/interrupt-paths.md) with a description of the machine.
#
#   scripts/bench-interrupt-paths.sh [-n COUNT] [-o OUT.md] [--splitvm PATH]
#                                    [--no-qemu] [--before PATH] [--reps R]
#
# Paths (one run each, COUNT interrupts, a raw 32-bit guest that waits for
# each interrupt with sti;hlt):
#   level  I/O APIC pin 11, level-triggered, line driven by pc-testdev
#          (assert, handler deasserts, EOI -> KVM_EXIT_IOAPIC_EOI)
#   edge   I/O APIC pin 10, edge-triggered, pc-testdev pulse (assert+deassert)
#   msi    MSI through the MSI test port (one port write per interrupt)
# Virtio MSI-X and a Linux guest are not measured yet (not ready).
#
# Side by side with QEMU (needs root for perf's kvm:* tracepoints and
# qemu-system-x86; skipped with a message otherwise, or with --no-qemu):
# the same workloads as one multiboot ELF that runs unchanged under both
# VMMs (pc-testdev lines, isa-debug-exit; MSI from QEMU's `edu` device or
# splitvm's MSI test port, one device write per interrupt either way), plus
# the floor: the same loop with a bare port write (pc-testdev scratch 0xe0)
# and no interrupt. QEMU: -machine pc,kernel-irqchip=split (userspace I/O
# APIC), -cpu host,-arch-capabilities, SeaBIOS. Each run is counted by
# `perf stat -e kvm:kvm_userspace_exit`; two guest sizes (N1, N2 operations)
# are run R times each: userspace exits/op = (median exits N2 - median exits
# N1) / (N2-N1), so start-up (SeaBIOS runs for seconds here) cancels; rates
# come from the guest's own TSC timing of its N2-operation loop (printed on
# COM1), fastest of the R runs, converted with the host's TSC frequency.
# --before PATH adds a column for another splitvm binary (e.g. an older
# build) measured the same way.
#
# Counts are meaningful on every host; wall times are reported but on a
# kvm_pvm host (guest CPL0 emulated) they say little about real hardware.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COUNT=1000
OUT=docs/interrupt-paths.md
SPLITVM=""
QEMU=1
BEFORE=""
REPS=5
while [ $# -gt 0 ]; do
    case "$1" in
        -n) COUNT="$2"; shift 2 ;;
        -o) OUT="$2"; shift 2 ;;
        --splitvm) SPLITVM="$2"; shift 2 ;;
        --no-qemu) QEMU=0; shift ;;
        --before) BEFORE="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "bench-interrupt-paths: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$SPLITVM" ]; then
    cargo build --release --quiet
    SPLITVM="${CARGO_TARGET_DIR:-target}/release/splitvm"
fi
for t in as ld python3; do
    command -v "$t" >/dev/null || { echo "bench-interrupt-paths: needs $t" >&2; exit 2; }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The guest (scripts/bench-interrupt-guest.S): MODE 1 = level pin 11,
# 2 = edge pin 10, 3 = MSI vector 0x45, 4 = the floor (no interrupt); a
# multiboot ELF, so the same image runs under QEMU below.

build() { # MODE COUNT -> $WORK/g<MODE>-<COUNT>.elf
    sed "s/COUNT/$2/" scripts/bench-interrupt-guest.S > "$WORK/g$1-$2.S"
    as --32 --defsym MODE="$1" -o "$WORK/g$1-$2.o" "$WORK/g$1-$2.S"
    ld -m elf_i386 -Ttext 0x100000 -o "$WORK/g$1-$2.elf" "$WORK/g$1-$2.o"
}

run() { # MODE NAME DISABLE
    local extra=()
    [ -n "$3" ] && extra=(--disable-exits "$3")
    local json="$WORK/$2-${3:-none}.json"
    local st=0
    "$SPLITVM" run --kernel "$WORK/g$1-$COUNT.elf" --test-devices --serial none --timeout 300 \
        --stats-json "$json" "${extra[@]}" 2>"$WORK/err" || st=$?
    if [ "$st" != 1 ]; then
        echo "bench-interrupt-paths: $2 (${3:-no disable}) ended with status $st:" >&2
        cat "$WORK/err" >&2
        return 1
    fi
    echo "$json"
}

for m in 1 2 3; do build $m "$COUNT"; done
RESULTS=()
for dis in "" hlt; do
    RESULTS+=("$(run 1 level "$dis")" "$(run 2 edge "$dis")" "$(run 3 msi "$dis")")
done

python3 - "$OUT" "$COUNT" "$SPLITVM" "${RESULTS[@]}" <<'PY'
import json, os, platform, subprocess, sys
out, count, splitvm, files = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def cpu_model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return "unknown"
src_id = {"level": "ioapic-pin-11", "edge": "ioapic-pin-10", "msi": "msi:msi-test-port"}
rows, host = [], None
for f in files:
    name, dis = os.path.basename(f)[:-5].split("-", 1)
    r = json.load(open(f))
    host = r["host"]
    s = next(x for x in r["sources"] if x["id"] == src_id[name])
    k = r["kvm_stats"]["vcpu_total"] if r["kvm_stats"] and r["kvm_stats"]["available"] else {}
    d = s["delivered"] or 0
    per = lambda v: "n/a" if v is None or d == 0 else f"{v / d:.2f}"
    rows.append([
        name, "hlt" if dis == "hlt" else "-", str(d),
        per(s["eoi_exits"]), per(s["pio_exits"]), per(r["total_exits"]),
        per(k.get("exits")), per(k.get("halt_exits")), per(k.get("irq_injections")),
        per(k.get("irq_window_exits")), per(k.get("insn_emulation")),
        f"{r['wall_time_ms'] / d * 1000:.1f}" if d else "n/a",
    ])
hdr = ["path", "disabled exits", "interrupts", "EOI exits/int", "source PIO exits/int",
       "all userspace exits/int", "KVM exits/int", "halt_exits/int", "irq_injections/int",
       "irq_window_exits/int", "insn_emulation/int", "wall µs/int"]
kvm_mod = ", ".join(host["kvm_modules"]) if host else "unknown"
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
lines = [
    "# Interrupt paths: VM exits per interrupt",
    "",
    "Generated by `scripts/bench-interrupt-paths.sh` (do not edit by hand; rerun it).",
    "Each path delivers the given number of interrupts to a small multiboot guest",
    "(scripts/bench-interrupt-guest.S) that waits for each one with `sti; hlt`; its set-up",
    "(GDT, IDT, masking the 8259s, for MSI a PCI scan) and its closing TSC line on COM1 add",
    "a few dozen exits, spread over the run in the \"all userspace exits\" column. Per-interrupt numbers",
    "divide each counter by the interrupts the source delivered. \"source PIO exits\" are",
    "the writes that trigger the interrupt (pc-testdev line, MSI test port); \"KVM exits\"",
    "and the other KVM columns come from KVM's binary statistics (KVM_GET_STATS_FD).",
    "",
    "## Machine",
    "",
    f"- CPU: {cpu_model()}, {os.cpu_count()} CPUs; kernel {platform.release()}",
    f"- KVM module: {kvm_mod}",
    f"- {host['summary'] if host else 'APICv: unknown'}",
    f"- splitvm {rev or 'unknown revision'}, {count} interrupts per run",
    "",
    "## Results",
    "",
    "| " + " | ".join(hdr) + " |",
    "| " + " | ".join("---" for _ in hdr) + " |",
]
lines += ["| " + " | ".join(r) + " |" for r in rows]
lines += [
    "",
    "## Reading it",
    "",
    "- level: every interrupt costs one KVM_EXIT_IOAPIC_EOI (the userspace I/O APIC must",
    "  clear Remote IRR) plus the two pc-testdev writes that drive the line.",
    "- edge: no EOI exit; the pulse is two port writes.",
    "- msi: no EOI exit and one port write per interrupt (the MSI test port).",
    "- KVM's `exits` statistic counts guest exits, not returns to userspace: the",
    "  KVM_EXIT_IOAPIC_EOI of the level path is raised from a KVM request before VM entry,",
    "  so level shows 2 port I/O + 1 HLT exits in `exits` but 3 userspace exits.",
    "- `--disable-exits hlt` (KVM_CAP_X86_DISABLE_EXITS): compare halt_exits/int of the",
    "  two halves of the table; on VMX/SVM hosts the guest's HLT then runs natively.",
    "- Wall times are one run each and include VMM start-up: indicative only.",
    "- Virtio block I/O (MSI-X against an I/O APIC pin): docs/virtio-paths.md",
    "  (scripts/bench-virtio.sh).",
]
if host and "kvm_pvm" in host["kvm_modules"]:
    lines += [
        "- This host is kvm_pvm: guest kernel code is emulated instruction by instruction",
        "  (insn_emulation/int), HLT included, so halt exits stay with `--disable-exits hlt`",
        "  and wall times say nothing about VMX/SVM hosts. There is no APICv here, so every",
        "  interrupt is injected on VM entry (irq_injections/int = 1.00) and needs an",
        "  interrupt window (irq_window_exits/int).",
    ]
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# ---- side by side with QEMU ----------------------------------------------
if [ "$QEMU" = 1 ]; then
    why=""
    [ "$(id -u)" = 0 ] || why="needs root (perf on kvm:* tracepoints)"
    command -v qemu-system-x86_64 >/dev/null || why="${why:+$why; }qemu-system-x86_64 not installed (Debian: qemu-system-x86)"
    command -v perf >/dev/null || why="${why:+$why; }perf not installed (Debian: linux-perf)"
    if [ -n "$why" ]; then
        echo "bench-interrupt-paths: side-by-side with QEMU skipped: $why" >&2
        QEMU=0
    fi
fi
if [ "$QEMU" = 1 ]; then
N1=2000
N2=22000
for m in 1 2 3 4; do
    for n in $N1 $N2; do build "$m" "$n"; done
done
python3 - "$OUT" "$WORK" "$N1" "$N2" "$REPS" "$SPLITVM" "$BEFORE" <<'PY'
import os, statistics, subprocess, sys, time
out, work, n1, n2, reps, splitvm, before = sys.argv[1:8]
n1, n2, reps = int(n1), int(n2), int(reps)
modes = {1: "level (pin 11)", 2: "edge (pin 10)", 3: "MSI", 4: "floor (port write, no interrupt)"}
def tsc_mhz():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("cpu MHz"):
                return float(l.split(":")[1])
    except OSError:
        pass
    return None
MHZ = tsc_mhz()
SERIAL = os.path.join(work, "serial.txt")
def argv(vmm, path):
    if vmm == "qemu":
        return ["qemu-system-x86_64", "-accel", "kvm", "-machine", "pc,kernel-irqchip=split",
                "-cpu", "host,-arch-capabilities", "-m", "128", "-smp", "1", "-display", "none",
                "-serial", "file:" + SERIAL, "-monitor", "none", "-no-reboot", "-kernel", path,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-device", "pc-testdev",
                "-device", "edu"]
    return [vmm, "run", "--kernel", path, "--test-devices", "--serial", "file:" + SERIAL,
            "--timeout", "300"]
def loop_ticks():
    """The guest's own measurement of its loop (TSC ticks), from COM1."""
    for l in open(SERIAL, errors="replace"):
        if l.startswith("TSC "):
            return int(l[4:20], 16)
    sys.exit("bench-interrupt-paths: the guest printed no TSC line")
def one(vmm, path):
    pf = os.path.join(work, "perf.out")
    if os.path.exists(SERIAL):
        os.unlink(SERIAL)
    p = subprocess.run(["perf", "stat", "-x,", "-o", pf, "-e", "kvm:kvm_userspace_exit", "--"] + argv(vmm, path),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 1:
        sys.exit(f"bench-interrupt-paths: {vmm} {path} ended with {p.returncode}: {p.stderr[-500:]}")
    t = loop_ticks()
    for l in open(pf):
        f = l.strip().split(",")
        if len(f) > 2 and f[2] == "kvm:kvm_userspace_exit":
            return t, int(f[0])
    sys.exit(f"bench-interrupt-paths: no kvm_userspace_exit count for {vmm}")
vmms = [("splitvm", splitvm)] + ([("splitvm (before)", before)] if before else []) + [("QEMU 7.2 split", "qemu")]
res = {}
for m in modes:
    for label, vmm in vmms:
        runs = {n: [] for n in (n1, n2)}
        for _ in range(reps):
            for n in (n1, n2):
                runs[n].append(one(vmm, os.path.join(work, f"g{m}-{n}.elf")))
        med = lambda n, i: statistics.median(r[i] for r in runs[n])
        # Time: the guest's TSC over its loop of n2 operations, fastest run
        # (load only ever adds time); start-up is outside the loop.
        ticks = min(r[0] for r in runs[n2])
        rate = n2 * MHZ * 1e6 / ticks if MHZ and ticks else float("nan")
        exits = (med(n2, 1) - med(n1, 1)) / (n2 - n1)
        res[(m, label)] = (rate, exits)
        print(f"side-by-side: {modes[m]:34} {label:18} {rate:10.0f}/s {exits:6.2f} exits/op", file=sys.stderr)
load = open("/proc/loadavg").read().split()[:3]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
labels = [l for l, _ in vmms]
hdr = ["path"] + [f"{l}: ops/s" for l in labels] + [f"{l}: userspace exits/op" for l in labels] + ["ops/s splitvm ÷ QEMU", "exits/op splitvm ÷ QEMU"]
L = ["", "## Side by side with QEMU (split irqchip)", "",
     f"`scripts/bench-interrupt-paths.sh` (splitvm {rev}), the same multiboot guest under both VMMs;",
     f"{reps} runs each of a {n1}- and a {n2}-operation guest. Rates: the guest times its own loop",
     f"of {n2} operations with the TSC (host TSC {MHZ} MHz), fastest run; exits per operation:",
     f"the difference of the two sizes' median counts over {n2 - n1} operations;",
     f"load average at the end {' '.join(load)}. An operation is one interrupt (one trigger,",
     "`sti; hlt`, handler, EOI) or, for the floor, one port write. QEMU: `-machine",
     "pc,kernel-irqchip=split -cpu host,-arch-capabilities`, MSI from its `edu` device (one",
     "MMIO write per interrupt); splitvm: MSI from its MSI test port (one port write).",
     "Userspace exits counted by `perf stat -e kvm:kvm_userspace_exit` for both.", "",
     "| " + " | ".join(hdr) + " |", "| " + " | ".join("---" for _ in hdr) + " |"]
for m in modes:
    r = [res[(m, l)] for l in labels]
    q = res[(m, labels[-1])]
    s0 = res[(m, labels[0])]
    L.append("| " + " | ".join([modes[m]] + [f"{x[0]:,.0f}" for x in r] + [f"{x[1]:.2f}" for x in r]
             + [f"{s0[0] / q[0]:.2f}", f"{s0[1] / q[1]:.2f}" if q[1] else "n/a"]) + " |")
L += ["", "On this kvm_pvm host every guest instruction at CPL0 is emulated and there is no",
      "APICv: the rates measure the VMMs' userspace paths plus KVM's emulation, not what a",
      "VMX/SVM host would show; the exit counts are meaningful everywhere."]
with open(out, "a") as f:
    f.write("\n".join(L) + "\n")
print("\n".join(L))
PY
fi
