#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (libFuzzer,
# clang, ASan + UBSan): builds the `fuzz` preset and runs each target of
# tests/fuzz/ for N seconds, starting from its checked-in seed corpus
# (tests/fuzz/corpus/<target>/). Prints executions, coverage and crashes
# per target. A crash input is written to build/fuzz/crashes/; copy it into
# tests/fuzz/corpus/<target>/ and the dev/asan ctest runs replay it from
# then on (a regression test), then fix the parser.
#   scripts/fuzz.sh [--seconds N] [target ...]    (default: all, 60 s each)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
    esac
done
bash scripts/bootstrap.sh clang
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        t=$(basename "$f" .c)
        targets+=("${t#fuzz_}")
    done
fi
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)" \
    --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null
mkdir -p build/fuzz/crashes
printf '%-22s %12s %10s %8s %s\n' target executions exec/s cov crashes
rc=0
for t in "${targets[@]}"; do
    work="build/fuzz/corpus/$t"
    mkdir -p "$work"
    log="build/fuzz/$t.log"
    set +e
    "build/fuzz/tests/fuzz_$t" "$work" "tests/fuzz/corpus/$t" \
        -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="build/fuzz/crashes/$t-" >"$log" 2>&1
    status=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(find build/fuzz/crashes -name "$t-*" | wc -l)
    printf '%-22s %12s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "$crashes"
    if [ "$status" -ne 0 ]; then
        rc=1
        echo "  $t failed (exit $status): see $log" >&2
    fi
done
exit $rc
