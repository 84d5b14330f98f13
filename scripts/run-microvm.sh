#!/usr/bin/env bash
# The main job: set up everything a fresh machine needs (packages, the guest
# kernel, the initramfs, splitvm itself), boot a Linux microVM that prints
# its /proc/interrupts, and print splitvm's exit report when it reboots.
# Re-running skips whatever is already built.
#
#   scripts/run-microvm.sh [extra splitvm run options...]
#   CPUS=1 MEM=256M scripts/run-microvm.sh --trace-exits
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "run-microvm: building splitvm (release)" >&2
cargo build --release --quiet
kernel=$(scripts/build-guest-kernel.sh | tail -n1)
initrd=$(scripts/build-initramfs.sh | tail -n1)
echo "run-microvm: booting $kernel with ${CPUS:-2} vCPUs (guest kernel code is emulated on kvm_pvm hosts: expect a minute or two)" >&2
exec target/release/splitvm run \
    --kernel "$kernel" --initrd "$initrd" \
    --cmdline "$(scripts/guest-cmdline.sh)" \
    --cpus "${CPUS:-2}" --memory "${MEM:-128M}" \
    --stats "$@"
