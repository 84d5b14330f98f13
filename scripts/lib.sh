# Shared by the build and benchmark scripts (source it after defining log()
# and die(); the helpers below need neither).

# Run a command as root: directly, or through password-less sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Install the Debian packages that are not installed yet.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$p")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >&2 </dev/null
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 </dev/null
}

# The build cache (default ~/.cache/splitvm); refuses a place inside the tree.
cache_root_outside() {
    local repo_root=$1 cache_root="${SPLITVM_CACHE:-${HOME:-/root}/.cache/splitvm}"
    case "$cache_root" in
        "$repo_root"|"$repo_root"/*) die "SPLITVM_CACHE must be outside the source tree ($cache_root)" ;;
    esac
    printf '%s\n' "$cache_root"
}

# What the test suite runs besides cargo, as COMMAND:PACKAGE (the Debian 12
# package that holds it). One list: scripts/setup.sh installs the missing
# packages, scripts/test.sh checks every command is there before the tests.
#   as, ld                binutils       the micro-guests (build.rs), raw test guests
#   unshare, setpriv,     util-linux,    /dev/kvm error tests, host-fault disks
#   mount, umount         mount
#   ip                    iproute2       TAPs and network namespaces (virtio-net)
#   qemu-storage-daemon   qemu-system-common on Debian 12 (qemu-utils holds it
#                         only from QEMU 8 on, as in bookworm-backports): the
#                         failing disk's FUSE export (tests/host_faults.rs)
#   iasl                  acpica-tools   the DSDT disassembly test
#   md5sum                coreutils      snapshot disk checksums
#   tmux                  tmux           `splitvm top`'s terminal view (tests/api.rs)
TEST_TOOLS=(as:binutils ld:binutils unshare:util-linux setpriv:util-linux
            mount:mount umount:mount ip:iproute2
            qemu-storage-daemon:qemu-system-common tmux:tmux
            iasl:acpica-tools md5sum:coreutils)

# The packages of TEST_TOOLS whose command is missing (one per line, once).
missing_test_packages() {
    local t
    for t in "${TEST_TOOLS[@]}"; do
        command -v "${t%%:*}" >/dev/null 2>&1 || printf '%s\n' "${t#*:}"
    done | sort -u
}

# The splitvm a script runs, copied into DIR (other builds may replace
# target/release/splitvm meanwhile): $SPLITVM if set, else a release build.
# Prints the copy's path.
splitvm_copy() {
    local dir=$1 bin=${SPLITVM:-}
    if [[ -z $bin ]]; then
        cargo build --release --quiet >&2
        bin="${CARGO_TARGET_DIR:-target}/release/splitvm"
    fi
    cp "$bin" "$dir/splitvm"
    printf '%s\n' "$dir/splitvm"
}

# The project's guest kernel and initramfs: $KERNEL / $INITRD, else
# $SPLITVM_GUEST_KERNEL / $SPLITVM_GUEST_INITRD, else what the build
# scripts print (they build what is missing).
guest_kernel() {
    printf '%s\n' "${KERNEL:-${SPLITVM_GUEST_KERNEL:-$(scripts/build-guest-kernel.sh | tail -n1)}}"
}
guest_initrd() {
    printf '%s\n' "${INITRD:-${SPLITVM_GUEST_INITRD:-$(scripts/build-initramfs.sh | tail -n1)}}"
}
