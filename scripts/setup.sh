#!/usr/bin/env bash
# Installs what splitvm's build and tests need on a fresh Debian 12 machine:
# the commands listed in TEST_TOOLS (scripts/lib.sh: binutils, util-linux,
# iproute2, qemu-storage-daemon for the failing-disk test, fuse3, acpica-tools,
# ...), by the package that holds each, and the rustfmt/clippy toolchain
# components. Idempotent; quiet when all is there. The guest kernel and
# initramfs scripts install their own build packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

mapfile -t need < <(missing_test_packages)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq </dev/null >&2
    as_root apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >&2
fi
for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$comp" >&2 || log "could not add $comp"
    fi
done
if [ ! -e /dev/kvm ]; then
    log "warning: /dev/kvm is missing; the VM tests will fail"
fi
