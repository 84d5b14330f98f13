#!/usr/bin/env bash
# Runs every test of splitvm: formatting, lints, unit tests, the micro-guests
# through the real /dev/kvm, and the Linux boot tests (which build the guest
# kernel and initramfs first; both are cached outside the tree).
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (packages, toolchain components)"
scripts/setup.sh

step "what the tests need is here"
# One line per missing command, naming its package, before any test runs.
# shellcheck source=scripts/lib.sh
log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
source scripts/lib.sh
missing=0
for t in "${TEST_TOOLS[@]}"; do
    if ! command -v "${t%%:*}" >/dev/null 2>&1; then
        log "missing: ${t%%:*} (Debian package ${t#*:}; scripts/setup.sh installs it)"
        missing=1
    fi
done
for dev in /dev/kvm:"KVM (the VM tests)" /dev/fuse:"FUSE (the failing-disk test)"; do
    [[ -e ${dev%%:*} ]] || { log "missing: ${dev%%:*} (${dev#*:})"; missing=1; }
done
((missing == 0)) || die "the tests cannot run here; see above"

step "guest kernels (MP table; ACPI-only) and initramfs (cached after the first build)"
SPLITVM_GUEST_KERNEL=$(scripts/build-guest-kernel.sh | tail -n1)
SPLITVM_GUEST_KERNEL_ACPI=$(scripts/build-guest-kernel.sh acpi | tail -n1)
SPLITVM_GUEST_INITRD=$(scripts/build-initramfs.sh | tail -n1)
export SPLITVM_GUEST_KERNEL SPLITVM_GUEST_KERNEL_ACPI SPLITVM_GUEST_INITRD

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, micro-guests, Linux boots)"
cargo test --workspace --no-fail-fast -- --nocapture --test-threads=2 2>&1
