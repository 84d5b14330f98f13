#!/usr/bin/env bash
# Map guest kernel addresses (RIPs) to symbols with the guest kernel's System.map.
#
# Usage: scripts/sym.sh [-m SYSTEM_MAP] ADDR...
#        ... | scripts/sym.sh [-m SYSTEM_MAP]        (addresses read from stdin)
#
# ADDR is hex, with or without 0x (e.g. ffffffff81400040). Output, one line per
# address: "ADDR SYMBOL+0xOFF/0xSIZE" (size = distance to the next symbol), or
# "ADDR ?" when it is outside the map. Without -m the System.map next to the
# vmlinux that scripts/build-guest-kernel.sh builds is used (this builds the
# kernel first if needed), or $SPLITVM_SYSTEM_MAP if set.
# Addresses can also be pulled out of free text on stdin, e.g.
#   grep -o 'rip 0x[0-9a-f]*' trace.txt | scripts/sym.sh
set -euo pipefail

map="${SPLITVM_SYSTEM_MAP:-}"
if [[ "${1:-}" == -m ]]; then
    [[ $# -ge 2 ]] || { echo "usage: $0 [-m SYSTEM_MAP] ADDR..." >&2; exit 2; }
    map=$2
    shift 2
fi
if [[ -z "$map" ]]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    vmlinux=$("$here/build-guest-kernel.sh" | tail -n 1)
    map="$(dirname "$vmlinux")/System.map"
fi
[[ -f "$map" ]] || { echo "sym.sh: no System.map at $map" >&2; exit 1; }

addrs() {
    if [[ $# -gt 0 ]]; then
        printf '%s\n' "$@"
    else
        grep -oiE '(0x)?[0-9a-f]{8,16}'
    fi
}

# awk with 64-bit addresses: compare as fixed-width (16 digit) lower-case hex
# strings, compute offsets with two 32-bit halves (awk numbers are doubles).
addrs "$@" | awk -v map="$map" '
function pad(h) { h = tolower(h); sub(/^0x/, "", h); while (length(h) < 16) h = "0" h; return h }
function hexval(h,   i, v, c) { v = 0; for (i = 1; i <= length(h); i++) { c = index("0123456789abcdef", substr(h, i, 1)) - 1; v = v * 16 + c } return v }
function diff(a, b) { return (hexval(substr(a, 1, 8)) - hexval(substr(b, 1, 8))) * 4294967296 + hexval(substr(a, 9)) - hexval(substr(b, 9)) }
BEGIN {
    n = 0
    while ((getline line < map) > 0) {
        split(line, f, " ")
        if (f[2] ~ /^[bBdDrRtTwWvV]$/) { n++; A[n] = pad(f[1]); S[n] = f[3] }
    }
    # System.map is sorted by address already; keep it that way.
}
{
    a = pad($1); lo = 1; hi = n; best = 0
    while (lo <= hi) { mid = int((lo + hi) / 2); if (A[mid] <= a) { best = mid; lo = mid + 1 } else hi = mid - 1 }
    if (best == 0 || best == n) { printf "%s ?\n", $1; next }
    j = best + 1; while (j <= n && A[j] == A[best]) j++
    printf "%s %s+0x%x/0x%x\n", $1, S[best], diff(a, A[best]), (j <= n ? diff(A[j], A[best]) : 0)
}'
