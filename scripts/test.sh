#!/usr/bin/env bash
# The test command: installs what is missing, builds with the `dev` preset
# (-Werror) and the `asan` preset (ASan + UBSan), and runs every test
# (cmocka units + integration tests against the real local stack) in both.
#   scripts/test.sh            # everything
#   scripts/test.sh --dev-only # skip the sanitizer build
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh

presets=(dev asan)
[ "${1:-}" = "--dev-only" ] && presets=(dev)

# Formatting is part of the contract: the checked-in .clang-format.
if command -v clang-format >/dev/null 2>&1; then
  bad=$(git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror 2>&1 | grep -c "error:" || true)
  if [ "$bad" != "0" ]; then
    git ls-files '*.c' '*.h' | xargs clang-format --dry-run --Werror 2>&1 | head -20
    echo "clang-format: $bad formatting differences (run clang-format -i)" >&2
    exit 1
  fi
fi

for p in "${presets[@]}"; do
  echo "== preset $p: configure + build"
  cmake --preset "$p" >/dev/null
  cmake --build --preset "$p" -j "$(nproc)"
  echo "== preset $p: tests"
  ctest --preset "$p" --timeout 900
done
