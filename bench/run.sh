#!/usr/bin/env bash
# Benchmark of the response worker (not a test): builds the `release`
# preset, runs bench/response_bench.py and prints the figures; with --write
# it also rewrites docs/benchmarks.md.
#   bench/run.sh [--events 200000] [--write]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
exec python3 bench/response_bench.py --build-dir build/release "$@"
