#!/usr/bin/env bash
# Installs the Debian 12 packages crmsync needs to build, test and run its
# local stack, plus any packages named as arguments (scripts/fuzz.sh adds
# clang). Idempotent: only missing packages are installed.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git clang-format
  librdkafka-dev libavro-dev libhiredis-dev libcurl4-openssl-dev
  libjansson-dev libmicrohttpd-dev libcmocka-dev libyaml-dev libxml2-dev
  libssl-dev openssl redis-server redis-tools kcat curl prometheus
  "$@"
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
echo "bootstrap: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
