#!/usr/bin/env bash
# Prints the kernel command line splitvm uses for the project's guest kernel,
# followed by any arguments given. Why each part is there:
# docs/guest-kernel.md ("Command line"). The host-specific part is
# resources/guest/cmdline-kvm-pvm, which splitvm itself also adds to its
# default command line on kvm_pvm hosts (one copy of the list).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
echo "console=ttyS0 reboot=k panic=-1 $(cat "$here/resources/guest/cmdline-kvm-pvm") $*"
