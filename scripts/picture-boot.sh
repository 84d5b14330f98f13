#!/usr/bin/env bash
# The pictures of docs/report.md: boot the project's Linux guest (1 vCPU,
# 128 MiB) to its reset with a report every second kept in a series, then
# draw the final report's bars and the series' timeline.
#
#   scripts/picture-boot.sh [OUTDIR]     (default docs/pictures)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-docs/pictures}
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SPLITVM=$(splitvm_copy "$WORK")
KERNEL=$(guest_kernel)
INITRD=$(guest_initrd)
mkdir -p "$OUT"
"$SPLITVM" run --kernel "$KERNEL" --initrd "$INITRD" --serial none \
    --cmdline "$(scripts/guest-cmdline.sh)" --timeout 300 \
    --stats-interval 1 --stats-series "$WORK/series" --stats-json "$WORK/boot.json"
"$SPLITVM" report "$WORK/boot.json" --svg "$OUT/boot-bars.svg"
"$SPLITVM" report --stats-series "$WORK/series" --svg "$OUT/boot-timeline.svg"
echo "revision $(git rev-parse --short HEAD): $(ls "$WORK/series" | wc -l) reports;" \
    "$OUT/boot-bars.svg $OUT/boot-timeline.svg"
