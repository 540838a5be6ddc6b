#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts the whole local
# stack (mock Kafka cluster, redis-server, Dataverse emulator) and every
# worker that exists, produces a realistic sample stream (with duplicates and
# poison messages), waits until consumer lag is 0 and prints what landed in
# the CRM and in the dead-letter queue. Ctrl-C stops everything it started.
#   scripts/demo.sh [--events N] [--exit]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cmake --preset dev >/dev/null
cmake --build --preset dev -j "$(nproc)" >/dev/null
exec python3 scripts/demo.py --build-dir build/dev "$@"
