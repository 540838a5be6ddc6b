#!/usr/bin/env bash
# Regenerates the configuration reference in README.md from the workers'
# config tables: runs `<worker-binary> --help-markdown` for each given
# binary (one table per worker, in the order given) and replaces the text
# between the markers
#   <!-- config-reference:begin -->
#   <!-- config-reference:end -->
# (the markers stay). Creates no other files.
#
# Usage: scripts/gen-config-doc.sh WORKER_BINARY... [README.md]
#   e.g. scripts/gen-config-doc.sh build/dev/workers/crmsync-*
set -euo pipefail

begin='<!-- config-reference:begin -->'
end='<!-- config-reference:end -->'

if [ $# -lt 1 ]; then
    echo "usage: $0 WORKER_BINARY... [README.md]" >&2
    exit 2
fi
bins=()
readme="$(cd "$(dirname "$0")/.." && pwd)/README.md"
for arg in "$@"; do
    case $arg in
    *.md) readme=$arg ;;
    *) bins+=("$arg") ;;
    esac
done
for bin in "${bins[@]}"; do
    if [ ! -x "$bin" ] || [ -d "$bin" ]; then
        echo "$0: $bin is not an executable worker binary" >&2
        exit 1
    fi
done
if [ ! -f "$readme" ]; then
    echo "$0: $readme not found" >&2
    exit 1
fi
if ! grep -qF -- "$begin" "$readme" || ! grep -qF -- "$end" "$readme"; then
    echo "$0: markers '$begin' and '$end' not found in $readme" >&2
    exit 1
fi

reference=$(mktemp)
updated=$(mktemp)
trap 'rm -f "$reference" "$updated"' EXIT

first=1
for bin in "${bins[@]}"; do
    [ $first = 1 ] || echo >>"$reference"
    first=0
    "$bin" --help-markdown >>"$reference"
done

# Copy everything outside the markers; between them, the fresh reference.
awk -v begin="$begin" -v end="$end" -v ref="$reference" '
    index($0, begin) {
        print
        print ""
        while ((getline line < ref) > 0) print line
        close(ref)
        print ""
        skipping = 1
        next
    }
    index($0, end) && skipping { skipping = 0; done = 1 }
    !skipping { print }
    END { exit(done ? 0 : 1) }
' "$readme" >"$updated" || {
    echo "$0: no '$end' after '$begin' in $readme" >&2
    exit 1
}

# Write in place (keeps the README's permissions and inode).
cat "$updated" >"$readme"
echo "updated the config reference in $readme"
