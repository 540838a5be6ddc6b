#!/bin/bash
# HEALTHCHECK of the crmsync image: GET /healthz on the worker's metrics
# port (CRMSYNC_METRICS_PORT, default 9464) over bash's /dev/tcp, because
# debian:12-slim has no curl/wget and the workers have no client mode.
# Exit 0 on "HTTP/1.x 200", 1 otherwise (connection refused, other status,
# no answer within CRMSYNC_HEALTHCHECK_TIMEOUT seconds, default 3).
# Kubernetes does not use this (its probes are in the manifests).
set -u
port="${CRMSYNC_METRICS_PORT:-9464}"
host="${CRMSYNC_HEALTHCHECK_HOST:-127.0.0.1}"
limit="${CRMSYNC_HEALTHCHECK_TIMEOUT:-3}"

case "$port" in
    '' | *[!0-9]*) echo "healthcheck: bad port '$port'" >&2; exit 1 ;;
esac
if [ "$port" -eq 0 ]; then
    # metrics.port 0 disables the endpoint: nothing to check.
    exit 0
fi

# timeout(1) bounds connect + read; the subshell owns fd 3.
status=$(timeout "$limit" bash -c '
    exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$0" >&3
    IFS= read -r line <&3 || exit 1
    printf "%s" "$line"
' "$host" "$port" 2>/dev/null) || { echo "healthcheck: no answer on $host:$port" >&2; exit 1; }

case "$status" in
    "HTTP/1."[01]" 200"*) exit 0 ;;
    *) echo "healthcheck: /healthz answered '${status%$'\r'}'" >&2; exit 1 ;;
esac
