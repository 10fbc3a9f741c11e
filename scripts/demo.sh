#!/usr/bin/env bash
# Quick start, part 1 (`iptlb demo`, which also runs from an installed package: sudo npx iptlb demo): inside a throwaway network namespace, start 3 real backends, apply a real
# profile with the iptlb CLI, send 600 real connections through the virtual address, print the split.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec node bin/iptlb.cjs demo "$@"
