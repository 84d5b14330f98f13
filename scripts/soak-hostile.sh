#!/usr/bin/env bash
# Runs the hostile micro-guest (tests/guests/hostile.S) over many seeds for
# as long as asked and writes a summary; every run must end with the guest's
# own status (1), under seccomp, with the read-only disk unchanged.
#
#   scripts/soak-hostile.sh [SECONDS] [FIRST_SEED] [OUT_DIR]
#     SECONDS     how long to keep starting runs (default 600)
#     FIRST_SEED  first seed (default 1000); seeds count up from it
#     OUT_DIR     where failing runs' logs and the summary go (default
#                 ./hostile-soak)
# Two runs at a time (one per core); transports alternate mmio/pci.
# SPLITVM=PATH uses that binary instead of building target/release/splitvm;
# CPUS=N gives each guest N vCPUs (default 2, the shape of the run that once
# ended with status 12: a vCPU thread shrinking its malloc arena).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-600}
seed=${2:-1000}
out=${3:-hostile-soak}
cpus=${CPUS:-2}
mkdir -p "$out"
if [[ -n "${SPLITVM:-}" ]]; then
    bin=$SPLITVM
else
    cargo build --release --quiet
    bin=target/release/splitvm
fi
guest=target/micro-guests/hostile.elf
[[ -f $guest ]] || { echo "soak-hostile: $guest missing" >&2; exit 1; }

one() { # seed transport
    local s=$1 t=$2 d
    d=$(mktemp -d)
    head -c 1M /dev/urandom >"$d/ro.img"
    cp "$d/ro.img" "$d/ro.orig"
    truncate -s 1M "$d/rw.img"
    local st=0
    /usr/bin/env time -f '%M' -o "$d/rss" "$bin" run --kernel "$guest" --test-devices --serial none \
        --log-level off --timeout 300 --transport "$t" --cmdline "seed=$s" --memory 64M --cpus "$cpus" \
        --disk "$d/ro.img,readonly" --disk "$d/rw.img" >"$d/out" 2>"$d/err" || st=$?
    local rss; rss=$(tail -n1 "$d/rss" 2>/dev/null || echo 0)
    local ok=1
    [[ $st -eq 1 ]] || ok=0
    cmp -s "$d/ro.img" "$d/ro.orig" || ok=0
    [[ $(stat -c %s "$d/rw.img") -eq 1048576 ]] || ok=0
    if [[ $ok -eq 1 ]]; then
        echo "ok $s $t $rss"
    else
        cp "$d/err" "$out/seed-$s-$t.err"
        echo "FAIL $s $t $rss status=$st"
    fi
    rm -rf "$d"
}

command -v time >/dev/null || [[ -x /usr/bin/time ]] || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
start=$SECONDS
results="$out/results.txt"
: >"$results"
while (( SECONDS - start < secs )); do
    one "$seed" mmio >>"$results" &
    one "$((seed + 1))" pci >>"$results" &
    wait
    seed=$((seed + 2))
done
runs=$(wc -l <"$results")
fails=$(grep -c '^FAIL' "$results" || true)
maxrss=$(awk '{print $4}' "$results" | sort -n | tail -n1)
{
    echo "hostile soak: $runs runs, seeds ${2:-1000}..$((seed - 1)), $cpus vCPUs, $((SECONDS - start)) s"
    echo "failures: $fails (logs in $out/seed-*.err)"
    echo "max RSS: ${maxrss:-0} KiB"
} | tee "$out/summary.txt"
[[ $fails -eq 0 ]]
