#!/bin/sh
# Entrypoint of the crmsync image: the first argument chooses the program,
# the rest is passed on unchanged. exec: the program becomes PID 1 and gets
# SIGTERM from `docker stop` / the kubelet directly (the workers drain,
# commit and exit on it; nothing here needs to forward signals or reap).
#
#   crmsync-entrypoint response --config /etc/crmsync/config.yaml
#   crmsync-entrypoint crmsync lag --watch ...
#
# CRMSYNC_BIN_DIR (default /usr/local/bin) exists for the tests.
set -eu
bin="${CRMSYNC_BIN_DIR:-/usr/local/bin}"

usage() {
    cat <<'USAGE'
usage: <program> [arguments...]
programs:
  response | bounce | listsync | trigger   a worker (crmsync-<name>)
  crmsync                                  operator CLI (lag, dlq)
  produce                                  crmsync-produce (list-sync schedule)
  kafka-offsets                            crmsync-kafka-offsets
A program's own help: <program> --help
USAGE
}

if [ "$#" -eq 0 ]; then
    usage >&2
    exit 64
fi
prog="$1"
shift
case "$prog" in
    response | bounce | listsync | trigger | produce | kafka-offsets)
        exec "$bin/crmsync-$prog" "$@" ;;
    crmsync | crmsync-*)
        exec "$bin/$prog" "$@" ;;
    -h | --help | help)
        usage
        exit 0 ;;
    *)
        echo "crmsync-entrypoint: unknown program '$prog'" >&2
        usage >&2
        exit 64 ;;
esac
