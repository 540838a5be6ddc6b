#!/usr/bin/env bash
# Benchmarks (not tests): builds the `release` preset and runs one of them,
# printing the figures; with --write it also rewrites its section of
# docs/benchmarks.md (each benchmark owns its own marked section).
#   bench/run.sh [--events 200000] [--write]          response worker
#   bench/run.sh --listsync [--members 1000000] [--write]
#                                                    list-sync full refresh
#   bench/run.sh --trigger [--n 1000000] [--lag-n 200000]
#                                                    trigger timer store (own
#                                                    redis-server, figures only)
set -euo pipefail
cd "$(dirname "$0")/.."
bench=response_bench.py
if [ "${1:-}" = "--trigger" ]; then
    shift
    bash scripts/bootstrap.sh
    cmake --preset release >/dev/null
    cmake --build --preset release -j "$(nproc)" \
        --target crmsync-bench-trigger_timers >/dev/null
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        >/dev/null 2>&1 &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null' EXIT
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    build/release/bench/crmsync-bench-trigger_timers \
        --redis "redis://127.0.0.1:$port" "$@"
    exit $?
fi
if [ "${1:-}" = "--listsync" ]; then
    bench=listsync_bench.py
    shift
fi
bash scripts/bootstrap.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" >/dev/null
exec python3 "bench/$bench" --build-dir build/release "$@"
