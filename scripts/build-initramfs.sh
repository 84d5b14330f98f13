#!/usr/bin/env bash
# Build the splitvm guest initramfs: an UNCOMPRESSED newc cpio holding Debian's
# static busybox (with its applet links), resources/guest/init as /init and
# the splitvm agent (resources/guest/splitvm-agent.c, built static) as
# /bin/splitvm-agent. The agent is also left beside the cpio as
# splitvm-agent-<hash>, for users who put it into their own initramfs.
# (Uncompressed because decompressing in the guest kernel is very slow when the
# host emulates guest kernel code.)
#
# Output: ${SPLITVM_CACHE:-$HOME/.cache/splitvm}/initramfs-<hash>.cpio, where
# <hash> covers /init, the busybox package version and this script.
# The last line printed on stdout is the absolute path of the cpio; everything
# else goes to stderr. A second run with the same inputs only prints the path.
#
# Installs busybox-static and cpio with apt-get if missing (needs root or
# password-less sudo).
set -euo pipefail

SCRIPT_VERSION=1

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"
init_script="$repo_root/resources/guest/init"
agent_src="$repo_root/resources/guest/splitvm-agent.c"
cache_root=$(cache_root_outside "$repo_root")
busybox=/bin/busybox

[[ -f "$init_script" ]] || die "missing $init_script"


ensure_packages busybox-static cpio gcc libc6-dev
[[ -x "$busybox" ]] || die "$busybox not found after installing busybox-static"

bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
hash=$(
    {
        printf 'script-version %s\nbusybox-static %s\n' "$SCRIPT_VERSION" "$bb_version"
        printf 'init\n'; cat "$init_script"
        printf 'agent\n'; cat "$agent_src"
        printf 'script\n'; cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
out="$cache_root/initramfs-$hash.cpio"

if [[ -f "$out" ]]; then
    log "up to date: $out"
    printf '%s\n' "$out"
    exit 0
fi

mkdir -p "$cache_root"
stage=$(mktemp -d "$cache_root/initramfs-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
cp "$busybox" "$stage/bin/busybox"
chmod 0755 "$stage/bin/busybox"
# One symlink per applet, at the path busybox itself reports (bin/sh, sbin/reboot, ...).
while IFS= read -r applet; do
    applet=${applet#/}
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    [[ -e "$stage/$applet" || -L "$stage/$applet" ]] && continue
    mkdir -p "$stage/$(dirname "$applet")"
    ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)
install -m 0755 "$init_script" "$stage/init"
gcc -static -Os -Wall -o "$stage/bin/splitvm-agent" "$agent_src" >&2 \
    || die "cannot build $agent_src"
strip "$stage/bin/splitvm-agent"
cp "$stage/bin/splitvm-agent" "$out.agent.tmp"
# /init mounts these with a single `mount -a` (one fork+exec instead of three).
cat >"$stage/etc/fstab" <<'EOF'
proc      /proc  proc      defaults  0 0
sysfs     /sys   sysfs     defaults  0 0
devtmpfs  /dev   devtmpfs  defaults  0 0
EOF
chmod 1777 "$stage/tmp"
# The kernel's built-in default initramfs already has /dev/console; add it here
# too when we can (mknod needs root), so the cpio also works on its own.
if [[ $(id -u) -eq 0 ]]; then
    mknod -m 0600 "$stage/dev/console" c 5 1
fi

find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) >"$out.tmp"
mv "$out.agent.tmp" "$cache_root/splitvm-agent-$hash"
mv "$out.tmp" "$out"
log "built $out ($(du -h "$out" | cut -f1), busybox $bb_version)"
printf '%s\n' "$out"
