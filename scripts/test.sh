#!/usr/bin/env bash
# Quick start, part 2: the whole test suite (unit tests, and kernel tests in throwaway namespaces).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Lint and format checks first (scripts/lint.sh: about 20 s on a clean checkout, a few seconds once
# their caches in node_modules/.cache are made), then the tests.
bash scripts/lint.sh
exec node scripts/run-tests.js "$@"
