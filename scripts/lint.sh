#!/usr/bin/env bash
# Lint and format checks, run first by the test command (scripts/test.sh) and by `npm run lint`:
# ESLint (eslint.config.mjs), Prettier for the TypeScript/JavaScript (.prettierrc.json) and clang-format for
# the C++ (.clang-format). `npm run format` rewrites both formats in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# ESLint and Prettier side by side (each about 15 s of CPU on a clean checkout, where neither has a
# cache yet: one after the other they took 24 s on this 2-core machine, side by side 18-21 s).
# Both run to the end, whatever the other says; either failing fails the script.
npx --no-install prettier --check --cache --cache-location node_modules/.cache/prettier/cache.json --log-level warn . &
prettier=$!
eslint_status=0
npx --no-install eslint --cache --cache-location node_modules/.cache/eslint/ . || eslint_status=$?
prettier_status=0
wait "$prettier" || prettier_status=$?
if [ "$eslint_status" != 0 ] || [ "$prettier_status" != 0 ]; then exit 1; fi
CLANG_FORMAT="$(command -v clang-format-14 || command -v clang-format || true)"
if [ -z "$CLANG_FORMAT" ]; then
  echo "lint: clang-format is missing (apt-get install clang-format-14)" >&2
  exit 1
fi
find native -name '*.cc' -o -name '*.h' | sort | xargs "$CLANG_FORMAT" --dry-run -Werror
