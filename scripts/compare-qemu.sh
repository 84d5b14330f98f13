#!/usr/bin/env bash
# Boot the project's guest kernel + initramfs + command line in QEMU (microvm,
# split irqchip: the reference VMM), in splitvm (coalesced UART writes, the
# default) and in splitvm --coalesced-io off, alternately (the order reverses
# every run), and print for each run the wall time to the init marker, the
# wall time to the guest's reset, VM exits counted from outside every VMM,
# and the VMM's memory at the marker; then medians, min, max and the ratios
# splitvm/QEMU, splitvm-off/QEMU and splitvm/splitvm-off. A benchmark: it
# prints numbers, it asserts nothing. Results and their meaning:
# docs/performance.md, docs/coalesced-io.md.
#
#   scripts/compare-qemu.sh [RUNS]          (default 3 runs of each VMM)
#
# Needs root (perf counting kvm:* tracepoints). Installs qemu-system-x86 and
# linux-perf with apt-get if missing. Each boot is bounded by TIMEOUT seconds
# (default 300); QEMU, perf and splitvm are killed on exit or interrupt.
#
# QEMU: -machine microvm,kernel-irqchip=split,pit=on,pic=on,rtc=off,isa-serial=on
# -nodefaults -serial stdio -device i8042: the devices splitvm's guest sees too (PIT,
# 8259 pair, I/O APIC, COM1, i8042: the guest resets through it with reboot=k, and
# without one it would poll port 0x64 and fall back to a triple fault). What differs:
# splitvm also has a PCI host bridge at 0xcf8 (the guest's PCI scan costs it ~430 port
# exits QEMU microvm does not pay), COM2-COM4 and ACPI PM ports; QEMU microvm has none.
# splitvm: run --cpus 1 --memory 128M --serial stdout --stats-json [--coalesced-io off].
#
# What is measured, per run (every VMM is started as `perf stat -e EVENTS -- VMM`):
#   marker_s   seconds from just before starting perf to the moment the line
#              SPLITVM-INIT-MARKER arrives on the VMM's serial output (stdout pipe)
#   reset_s    seconds to the guest's reset (reboot -f -> i8042 0xFE): splitvm
#              exits then; QEMU runs with -action reboot=shutdown,shutdown=pause and
#              the time is that of its QMP SHUTDOWN event (QEMU is then asked for its
#              KVM statistics and told to quit)
#   uexits     perf's count of kvm:kvm_userspace_exit (every return from KVM_RUN to
#              the VMM) over all the VMM's threads: the outside exit counter used for
#              the ratio. kvm:kvm_exit (every exit, incl. those handled in the kernel)
#              is counted too, but never fires on kvm_pvm hosts (shown as 0).
#   kvm_exits  KVM's own binary statistic "exits" summed over vCPUs, read through the
#              VMM (splitvm: --stats-json kvm_stats.vcpu_total.exits; QEMU: QMP
#              query-stats, provider kvm): all exits, including those KVM handles itself
#   cpu_s      perf's task-clock: CPU time of all the VMM's threads, KVM's emulation of
#              guest code included (less sensitive to other load than the wall times)
#   pio, mmio, msi  kvm:kvm_pio, kvm:kvm_mmio, kvm:kvm_msi_set_irq counts
#   rss, guest_rss  the VMM's Rss and its guest-RAM mapping's Rss at the marker (MiB)
#
# Environment: SPLITVM=PATH (binary; default: cargo build --release),
# KERNEL, INITRD (default: scripts/build-guest-kernel.sh, build-initramfs.sh),
# TIMEOUT (300), QEMU_CPU (default host,-arch-capabilities: the host's CPUID as KVM
# offers it, like splitvm's; plain `host` aborts on kvm_pvm hosts setting MSR 0x10a;
# e.g. qemu64,+x2apic,+tsc-deadline gives the guest other code paths), KEEP=DIR (keep serial
# logs, perf outputs and reports there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-3}
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "compare-qemu: needs root (perf on kvm:* tracepoints)" >&2; exit 2; }

log() { printf 'compare-qemu: %s\n' "$*" >&2; }

ensure() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
ensure qemu-system-x86_64 qemu-system-x86
ensure perf linux-perf
perf stat -x, -e kvm:kvm_userspace_exit -- true >/dev/null 2>&1 ||
    { log "perf cannot count kvm:kvm_userspace_exit here"; exit 1; }

tmp=$(mktemp -d /tmp/splitvm-compare-qemu.XXXXXX)
driver=
cleanup() {
    # The driver kills its own process groups; this catches an interrupted driver.
    if [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        wait "$driver" 2>/dev/null || true
    fi
    if [[ -n "${KEEP:-}" ]]; then
        { mkdir -p "$KEEP" && cp -r "$tmp"/. "$KEEP"/; } 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
splitvm_copy "$tmp" >/dev/null
kernel=$(guest_kernel)
initrd=$(guest_initrd)
cmdline=$(scripts/guest-cmdline.sh)

export CMP_TMP="$tmp" CMP_RUNS="$runs" CMP_SPLITVM="$tmp/splitvm" CMP_KERNEL="$kernel" \
    CMP_INITRD="$initrd" CMP_CMDLINE="$cmdline" CMP_TIMEOUT="${TIMEOUT:-300}" \
    CMP_QEMU_CPU="${QEMU_CPU:-host,-arch-capabilities}"
python3 - <<'PY' &
import json, os, selectors, signal, socket, statistics, subprocess, sys, time

E = os.environ
tmp, runs, timeout = E["CMP_TMP"], int(E["CMP_RUNS"]), float(E["CMP_TIMEOUT"])
kernel, initrd, cmdline = E["CMP_KERNEL"], E["CMP_INITRD"], E["CMP_CMDLINE"]
MARKER = b"SPLITVM-INIT-MARKER"
MEM, MEM_KB = "128M", 128 * 1024
EVENTS = ["kvm:kvm_userspace_exit", "kvm:kvm_exit", "kvm:kvm_pio", "kvm:kvm_mmio",
          "kvm:kvm_msi_set_irq", "task-clock"]
live = []  # process groups to kill on the way out

def bye(*_):
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(130)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)

def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])

def child_of(ppid):
    for tid in os.listdir(f"/proc/{ppid}/task"):
        kids = open(f"/proc/{ppid}/task/{tid}/children").read().split()
        if kids:
            return int(kids[0])
    return None

def memory(pid):
    """(Rss, guest RAM mapping Rss) in KiB."""
    total = int(next(l.split()[1] for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Rss:")))
    guest, path, size = 0, None, 0
    for line in open(f"/proc/{pid}/smaps"):
        f = line.split()
        if "-" in f[0] and not f[0].endswith(":"):
            path = f[5] if len(f) > 5 else ""
        elif f[0] == "Size:":
            size = int(f[1])
        elif f[0] == "Rss:" and path == "" and size == MEM_KB:
            guest += int(f[1])
    return total, guest

class Qmp:
    def __init__(self, path, deadline):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("QMP socket did not appear")
                time.sleep(0.01)
        self.buf = b""
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")
    def read(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)
    def poll_events(self):
        """Non-blocking: collect whatever events arrived."""
        self.s.setblocking(False)
        try:
            while True:
                self.buf += self.s.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self.s.setblocking(True)
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            m = json.loads(line)
            if "event" in m:
                self.events.append(m)
    def cmd(self, name, **args):
        self.s.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise RuntimeError(f"QMP {name}: {m['error']}")
            else:
                return m["return"]

def qemu_kvm_stats(q):
    """KVM's binary vCPU statistics through QMP query-stats, summed over vCPUs (numbers only)."""
    total = {}
    for v in q.cmd("query-stats", target="vcpu", providers=[{"provider": "kvm"}]):
        for s in v["stats"]:
            if isinstance(s["value"], int):
                total[s["name"]] = total.get(s["name"], 0) + s["value"]
    return total

def run(vmm, i):
    tag = f"{vmm}-{i}"
    perf_out, serial_log = f"{tmp}/{tag}.perf", f"{tmp}/{tag}.serial"
    if vmm == "qemu":
        qmp_path = f"{tmp}/{tag}.qmp"
        argv = ["qemu-system-x86_64", "-accel", "kvm",
                "-machine", "microvm,kernel-irqchip=split,pit=on,pic=on,rtc=off,isa-serial=on",
                "-cpu", E["CMP_QEMU_CPU"], "-m", MEM, "-smp", "1",
                "-nographic", "-nodefaults", "-serial", "stdio", "-device", "i8042",
                "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
                "-qmp", f"unix:{qmp_path},server=on,wait=off",
                "-action", "reboot=shutdown,shutdown=pause"]
    else:
        report = f"{tmp}/{tag}.json"
        argv = [E["CMP_SPLITVM"], "run", "--kernel", kernel, "--initrd", initrd,
                "--cmdline", cmdline, "--cpus", "1", "--memory", MEM, "--serial", "stdout",
                "--progress", "never", "--stats-json", report, "--timeout", str(timeout)]
        if vmm == "splitvm-off":
            argv += ["--coalesced-io", "off"]
    t0 = time.monotonic()
    deadline = t0 + timeout
    p = subprocess.Popen(["perf", "stat", "-x,", "-o", perf_out, "-e", ",".join(EVENTS), "--"] + argv,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=open(f"{tmp}/{tag}.stderr", "wb"), start_new_session=True)
    live.append(p)
    r = {"vmm": vmm, "run": i}
    q = None
    try:
        if vmm == "qemu":
            q = Qmp(qmp_path, deadline)
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        if q:
            sel.register(q.s, selectors.EVENT_READ)
        out, pending = open(serial_log, "wb"), b""
        while "reset_s" not in r:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"{tag}: no reset within {timeout:.0f} s")
            for key, _ in sel.select(timeout=min(1.0, deadline - now)):
                if key.fileobj is p.stdout:
                    d = os.read(p.stdout.fileno(), 65536)
                    if not d:
                        # Only once perf and the VMM have both exited.
                        sel.unregister(p.stdout)
                        p.wait(timeout=30)
                        if vmm != "qemu":
                            r["reset_s"] = time.monotonic() - t0
                        else:
                            raise RuntimeError(f"{tag}: QEMU exited before the guest reset "
                                               f"(see {tmp}/{tag}.stderr)")
                        break
                    out.write(d)
                    pending += d
                    if "marker_s" not in r and MARKER in pending:
                        r["marker_s"] = time.monotonic() - t0
                        vmm_pid = child_of(p.pid)
                        r["rss_kib"], r["guest_rss_kib"] = memory(vmm_pid)
                    pending = pending[-len(MARKER):]
                elif q:
                    q.poll_events()
                    if any(e["event"] == "SHUTDOWN" for e in q.events):
                        r["reset_s"] = time.monotonic() - t0
        out.close()
        if q:
            r["kvm"] = qemu_kvm_stats(q)
            r["kvm_exits"] = r["kvm"].get("exits")
            try:
                q.cmd("quit")
            except EOFError:
                pass
        status = p.wait(timeout=30)
        if vmm != "qemu":
            if status != 0:
                raise RuntimeError(f"{tag}: splitvm exited with status {status}")
            rep = json.load(open(report))
            r["kvm"] = rep["kvm_stats"]["vcpu_total"]
            r["kvm_exits"] = r["kvm"].get("exits")
            r["splitvm_counted"] = rep["total_exits"]
            r["coalesced"] = sum(rep["coalesced_pio_per_device"].values())
            r["coalesced_io"] = rep["coalesced_io"]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        live.remove(p)
    if "marker_s" not in r:
        raise RuntimeError(f"{tag}: the guest reset without printing the marker (see {serial_log})")
    for line in open(perf_out):
        f = line.strip().split(",")
        if len(f) > 2 and f[2] == "task-clock":
            r["cpu_s"] = float(f[0]) / 1000 if f[0].replace(".", "", 1).isdigit() else None
        elif len(f) > 2 and f[2] in EVENTS:
            r[f[2].split(":")[1]] = int(f[0]) if f[0].isdigit() else None
    r["load"] = loadavg()
    return r

def fmt(v, spec):
    if v is None:
        return "-"
    if spec == "d":
        return format(int(v), "d") if float(v).is_integer() else format(v, ".1f")
    return format(v, spec)

COLS = [("marker_s", "marker_s", ".1f"), ("reset_s", "reset_s", ".1f"), ("cpu_s", "cpu_s", ".1f"),
        ("kvm_userspace_exit", "uexits", "d"), ("kvm_exit", "kvm_exit", "d"),
        ("kvm_exits", "kvm_exits", "d"), ("kvm_pio", "pio", "d"), ("kvm_mmio", "mmio", "d"),
        ("kvm_msi_set_irq", "msi", "d"), ("rss_mib", "rss_MiB", ".1f"),
        ("guest_rss_mib", "guest_MiB", ".1f")]
VMMS = ("qemu", "splitvm", "splitvm-off")
header = f"{'vmm':<11} {'run':>3} " + " ".join(f"{h:>10}" for _, h, _ in COLS) + "  load(1/5/15)"
print(f"compare-qemu: {runs} run(s) each, alternating; 1 vCPU, {MEM}; QEMU -cpu {E['CMP_QEMU_CPU']}")
print(f"kernel {kernel}; initrd {initrd}")
print(f"cmdline: {cmdline}")
print(f"load average at start: {loadavg()}")
t = time.monotonic()
subprocess.run(["perf", "stat", "-x,", "-o", "/dev/null", "-e", ",".join(EVENTS), "--", "true"], check=True)
print(f"(perf stat start-up + exit alone: {time.monotonic() - t:.3f} s, included in every wall time)")
print()
print(header)
results = []
for i in range(runs):
    for vmm in (VMMS if i % 2 == 0 else VMMS[::-1]):
        try:
            r = run(vmm, i)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            sys.exit(f"compare-qemu: {e}")
        r["rss_mib"] = r["rss_kib"] / 1024
        r["guest_rss_mib"] = r["guest_rss_kib"] / 1024
        results.append(r)
        print(f"{vmm:<11} {i:>3} " + " ".join(f"{fmt(r.get(k), s):>10}" for k, _, s in COLS)
              + f"  {r['load']}", flush=True)

print()
print("median, min, max")
print(header.rsplit("  load", 1)[0])
med = {}
for vmm in VMMS:
    med[vmm] = {}
    for what, f in (("med", statistics.median), ("min", min), ("max", max)):
        vals = {}
        for k, _, s in COLS:
            xs = [r[k] for r in results if r["vmm"] == vmm and r.get(k) is not None]
            vals[k] = f(xs) if xs else None
        if what == "med":
            med[vmm] = vals
        print(f"{vmm:<11} {what:>3} " + " ".join(f"{fmt(vals[k], s):>10}" for k, _, s in COLS))
print()
print(f"ratios of medians            {'splitvm/QEMU':>13} {'off/QEMU':>9} {'splitvm/off':>12}")
for k, label in [("marker_s", "wall time to marker"), ("reset_s", "wall time to reset"),
                 ("cpu_s", "VMM CPU time (task-clock)"),
                 ("kvm_userspace_exit", "userspace exits (perf)"),
                 ("kvm_exits", "all exits (KVM stat)"), ("rss_mib", "Rss at marker")]:
    def ratio(a, b):
        a, b = med[a][k], med[b][k]
        return a / b if a is not None and b else None
    print(f"  {label:<26} {fmt(ratio('splitvm', 'qemu'), '.3f'):>13} "
          f"{fmt(ratio('splitvm-off', 'qemu'), '.3f'):>9} {fmt(ratio('splitvm', 'splitvm-off'), '.3f'):>12}")
sv = [r for r in results if r["vmm"] != "qemu"]
print()
print("KVM vCPU statistics, medians (cumulative counters both VMMs report, nonzero in either)")
print(f"  {'statistic':<28} " + " ".join(f"{v:>12}" for v in VMMS))
names = sorted(set().union(*(r["kvm"].keys() for r in sv)))
for n in names:
    m = {}
    for vmm in VMMS:
        xs = [r["kvm"][n] for r in results if r["vmm"] == vmm and n in r["kvm"]]
        m[vmm] = statistics.median(xs) if xs else None
    if any(m.values()):
        print(f"  {n:<28} " + " ".join(f"{fmt(m[v], 'd'):>12}" for v in VMMS))
print()
print("cross-check: splitvm's own count of KVM_RUN returns (report total_exits) vs perf kvm_userspace_exit:",
      ", ".join(f"{r['vmm']} {r['splitvm_counted']}/{r.get('kvm_userspace_exit')}" for r in sv))
print("coalesced UART writes (not exits; report coalesced_pio_per_device):",
      ", ".join(f"{r['vmm']} {r['coalesced']} ({r['coalesced_io']})" for r in sv))
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip()
print(f"splitvm revision {rev}{' + local changes' if dirty else ''}")
print(f"load average at end: {loadavg()}")
PY
driver=$!
wait "$driver"
