#!/usr/bin/env bash
# Build the splitvm guest kernel (an ELF vmlinux) from Debian's linux-source-6.1.
#
# Usage: build-guest-kernel.sh [VARIANT]
#   no VARIANT: the MP-table kernel (ACPI off), the project's default guest;
#   acpi:       the same kernel with ACPI on and the MP table parser off, as
#               popular microVM kernel configs are (resources/guest/kernel.acpi.config
#               is merged over kernel.config).
#
# Inputs (all in this repository):
#   resources/guest/kernel.config      config fragment (merged over allnoconfig)
#   resources/guest/kernel.VARIANT.config  the variant's fragment (merged last)
#   resources/guest/patches/*.patch    the project's own patches, applied in order
# Output: ${SPLITVM_CACHE:-$HOME/.cache/splitvm}/kernel-<hash>/vmlinux (+ System.map,
# config, build.log), where <hash> covers the fragment, the patches, the kernel
# source package version and this script's version. The last line printed on
# stdout is the absolute path of vmlinux; everything else goes to stderr.
# A second run with the same inputs only prints the path.
#
# Environment:
#   SPLITVM_CACHE              cache root (default $HOME/.cache/splitvm)
#   SPLITVM_KEEP_KERNEL_SRC=1  keep the unpacked, built source tree in the cache
#   SPLITVM_JOBS               make -j value (default: nproc)
#
# Installs missing Debian packages with apt-get (needs root or password-less sudo).
set -euo pipefail

SCRIPT_VERSION=1
ARCH_MAKE=(ARCH=x86_64)
KERNEL_TARBALL=/usr/src/linux-source-6.1.tar.xz
PACKAGES=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev
          xz-utils cpio patch util-linux)

log() { printf 'build-guest-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"
guest_dir="$repo_root/resources/guest"
fragment="$guest_dir/kernel.config"
patch_dir="$guest_dir/patches"
cache_root=$(cache_root_outside "$repo_root")
jobs="${SPLITVM_JOBS:-$(nproc)}"

[[ -f "$fragment" ]] || die "missing $fragment"
fragments=("$fragment")
if [[ $# -gt 0 && -n "$1" ]]; then
    [[ "$1" =~ ^[a-z0-9-]+$ ]] || die "bad variant name '$1'"
    [[ -f "$guest_dir/kernel.$1.config" ]] || die "unknown variant '$1' (no $guest_dir/kernel.$1.config)"
    fragments+=("$guest_dir/kernel.$1.config")
fi


ensure_packages "${PACKAGES[@]}"
[[ -f "$KERNEL_TARBALL" ]] || die "$KERNEL_TARBALL not found after installing linux-source-6.1"

shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
hash=$(
    {
        printf 'script-version %s\nlinux-source-6.1 %s\n' "$SCRIPT_VERSION" "$src_version"
        # Only the settings count (editing comments does not force a rebuild).
        for f in "${fragments[@]}"; do
            printf 'fragment\n'; grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$f"
        done
        for p in "${patches[@]}"; do
            printf 'patch %s\n' "$(basename "$p")"; cat "$p"
        done
    } | sha256sum | cut -c1-16
)
out="$cache_root/kernel-$hash"

if [[ -f "$out/.done" && -f "$out/vmlinux" ]]; then
    log "up to date: $out"
    printf '%s\n' "$out/vmlinux"
    exit 0
fi

mkdir -p "$out"
# Serialise concurrent builds of the same inputs.
exec 9>"$out/.lock"
flock 9
if [[ -f "$out/.done" && -f "$out/vmlinux" ]]; then
    printf '%s\n' "$out/vmlinux"
    exit 0
fi

# The fragments' setting lines, the last one of each option winning.
merged_lines() {
    awk '
        /^CONFIG_[A-Za-z0-9_]+=/ { k = $0; sub(/=.*/, "", k); v[k] = $0; if (!(k in o)) { o[k] = ++n; ks[n] = k } }
        /^# CONFIG_[A-Za-z0-9_]+ is not set$/ { k = $2; v[k] = $0; if (!(k in o)) { o[k] = ++n; ks[n] = k } }
        END { for (i = 1; i <= n; i++) print v[ks[i]] }
    ' "$@"
}

SECONDS=0
src="$out/src"
buildlog="$out/build.log"
log "building in $out (log: $buildlog)"

if [[ ! -f "$src/.splitvm-patched" ]]; then
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    log "unpacking $KERNEL_TARBALL ($src_version)"
    tar -xf "$KERNEL_TARBALL" -C "$src.tmp" --strip-components=1
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$src.tmp" -p1 --forward --batch --quiet <"$p" >&2 \
            || die "patch $(basename "$p") does not apply"
    done
    touch "$src.tmp/.splitvm-patched"
    mv "$src.tmp" "$src"
fi

export KBUILD_BUILD_USER=splitvm KBUILD_BUILD_HOST=splitvm
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
mk() { make -C "$src" "${ARCH_MAKE[@]}" "$@" </dev/null >>"$buildlog" 2>&1; }

if [[ ! -f "$src/.splitvm-configured" ]]; then
    log "configuring (allnoconfig + ${fragments[*]##*/})"
    : >"$buildlog"
    mk allnoconfig || die "make allnoconfig failed (see $buildlog)"
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "${fragments[@]}") \
        >>"$buildlog" 2>&1 || die "merge_config.sh failed (see $buildlog)"
    mk olddefconfig || die "make olddefconfig failed (see $buildlog)"
    # Every option in the fragments must have survived Kconfig's dependency
    # rules (a later fragment's line wins over an earlier one's).
    bad=0
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            if ! grep -qxF -- "$line" "$src/.config"; then
                log "config: wanted '$line', got '$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$src/.config" || echo unset)'"
                bad=1
            fi
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            if grep -qE "^${BASH_REMATCH[1]}=" "$src/.config"; then
                log "config: wanted '$line', got '$(grep -E "^${BASH_REMATCH[1]}=" "$src/.config")'"
                bad=1
            fi
        fi
    done < <(merged_lines "${fragments[@]}")
    [[ $bad -eq 0 ]] || die "the config fragment does not hold after olddefconfig"
    touch "$src/.splitvm-configured"
fi

log "make -j$jobs vmlinux (a few minutes)"
if ! mk -j"$jobs" vmlinux; then
    tail -n 40 "$buildlog" >&2
    die "kernel build failed (see $buildlog)"
fi

cp "$src/vmlinux" "$out/vmlinux.tmp"
cp "$src/System.map" "$out/System.map"
cp "$src/.config" "$out/config"
mv "$out/vmlinux.tmp" "$out/vmlinux"
if [[ "${SPLITVM_KEEP_KERNEL_SRC:-0}" != 1 ]]; then
    rm -rf "$src"
fi
touch "$out/.done"
log "built $(uname -m) vmlinux in ${SECONDS}s ($src_version, $(du -h "$out/vmlinux" | cut -f1))"
printf '%s\n' "$out/vmlinux"
