#!/usr/bin/env bash
# Regenerates the configuration reference in README.md from a worker's
# config table: runs `<worker-binary> --help-markdown` and replaces the text
# between the markers
#   <!-- config-reference:begin -->
#   <!-- config-reference:end -->
# (the markers stay). Creates no other files.
#
# Usage: scripts/gen-config-doc.sh BUILD/workers/crmsync-response [README.md]
set -euo pipefail

begin='<!-- config-reference:begin -->'
end='<!-- config-reference:end -->'

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 WORKER_BINARY [README.md]" >&2
    exit 2
fi
bin=$1
readme=${2:-"$(cd "$(dirname "$0")/.." && pwd)/README.md"}

if [ ! -x "$bin" ]; then
    echo "$0: $bin is not an executable worker binary" >&2
    exit 1
fi
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

"$bin" --help-markdown >"$reference"

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
