#!/usr/bin/env bash
# Prints the kernel command line splitvm uses for the project's guest kernel.
# Why each part is there: docs/guest-kernel.md.
set -euo pipefail
echo "console=ttyS0 reboot=k panic=-1 nopvspin no-kvmapf no-kvmclock-vsyscall tsc=reliable lpj=1000000 clearcpuid=cx16,popcnt,fsgsbase,xsave,avx,avx2,avx512f,rdpid,invpcid,pcid,smap,pku,ospke $*"
