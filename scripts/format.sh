#!/usr/bin/env bash
# Rewrites the code in the project's formats: Prettier (.prettierrc.json) and clang-format (.clang-format).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
npx --no-install prettier --write --log-level warn .
CLANG_FORMAT="$(command -v clang-format-14 || command -v clang-format)"
find native -name '*.cc' -o -name '*.h' | sort | xargs "$CLANG_FORMAT" -i
