#!/usr/bin/env bash
# Prints the kernel command line splitvm uses for the project's guest kernel,
# followed by any arguments given. Why each part is there:
# docs/guest-kernel.md ("Command line").
set -euo pipefail
echo "console=ttyS0 reboot=k panic=-1 no-kvmapf noreplace-smp random.trust_cpu=on clearcpuid=cx16,popcnt,fsgsbase,xsave,avx,avx2,avx512f,rdpid,invpcid,pcid,smap,pku,ospke,erms,fsrm $*"
