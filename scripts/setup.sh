#!/usr/bin/env bash
# Installs what splitvm's build and tests need on a fresh Debian 12 machine:
# binutils (as/ld for the micro-guests), util-linux (unshare/setpriv for the
# error tests), iproute2 (network namespaces for virtio-net tests),
# qemu-utils (qemu-storage-daemon: the failing-disk test's FUSE file),
# acpica-tools (iasl: the DSDT disassembly test), and the
# rustfmt/clippy toolchain components. Idempotent; quiet when all is there.
set -euo pipefail

need=()
for cmd_pkg in as:binutils ld:binutils unshare:util-linux setpriv:util-linux ip:iproute2 \
    qemu-storage-daemon:qemu-utils iasl:acpica-tools; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need+=("${cmd_pkg#*:}")
done
if ((${#need[@]})); then
    as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
    echo "setup: installing ${need[*]}" >&2
    as_root apt-get update -qq </dev/null >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >&2
fi
for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$comp" >&2 || echo "setup: could not add $comp" >&2
    fi
done
if [ ! -e /dev/kvm ]; then
    echo "setup: warning: /dev/kvm is missing; the VM tests will fail" >&2
fi
