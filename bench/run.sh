#!/usr/bin/env bash
# Benchmarks (not tests): builds the `release` preset and runs one of them,
# printing the figures; with --write it also rewrites its section of
# docs/benchmarks.md (each benchmark owns its own marked section).
#   bench/run.sh [--events 200000] [--write]          response worker
#   bench/run.sh --listsync [--members 1000000] [--write]
#                                                    list-sync full refresh
set -euo pipefail
cd "$(dirname "$0")/.."
bench=response_bench.py
if [ "${1:-}" = "--listsync" ]; then
    bench=listsync_bench.py
    shift
fi
bash scripts/bootstrap.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
exec python3 "bench/$bench" --build-dir build/release "$@"
