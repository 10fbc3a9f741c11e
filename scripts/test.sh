#!/usr/bin/env bash
# Quick start, part 2: the whole test suite (unit tests, and kernel tests in throwaway namespaces).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Lint first (a few seconds), then the tests.
npx --no-install eslint .
exec node scripts/run-tests.js "$@"
