#!/usr/bin/env bash
# Lint and format checks, run first by the test command (scripts/test.sh) and by `npm run lint`:
# ESLint (eslint.config.mjs), Prettier for the TypeScript/JavaScript (.prettierrc.json) and clang-format for
# the C++ (.clang-format). `npm run format` rewrites both formats in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
npx --no-install eslint --cache --cache-location node_modules/.cache/eslint/ .
npx --no-install prettier --check --cache --cache-location node_modules/.cache/prettier/cache.json --log-level warn .
CLANG_FORMAT="$(command -v clang-format-14 || command -v clang-format || true)"
if [ -z "$CLANG_FORMAT" ]; then
  echo "lint: clang-format is missing (apt-get install clang-format-14)" >&2
  exit 1
fi
find native -name '*.cc' -o -name '*.h' | sort | xargs "$CLANG_FORMAT" --dry-run -Werror
