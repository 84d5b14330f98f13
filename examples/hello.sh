#!/bin/sh
# Put into the guest by examples/ci.toml and smoke.toml (`add`); prints its
# arguments and the guest's host name (shell built-ins only: every exec costs
# seconds of emulated guest kernel on the project's development hosts).
read -r host </proc/sys/kernel/hostname
echo "hello $* (from $host)"
