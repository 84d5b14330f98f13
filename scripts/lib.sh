# Shared by the build scripts (source it after defining log() and die()).

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
