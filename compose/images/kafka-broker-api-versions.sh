#!/usr/bin/env bash
# Stand-in for the official image's bin/kafka-broker-api-versions.sh, enough for a health check:
# `--bootstrap-server HOST:PORT` -> one real Metadata request (metadata.py); exit 0 when ready.
set -euo pipefail
server=
while [ $# -gt 0 ]; do
    case $1 in --bootstrap-server) server=$2; shift 2 ;; *) shift ;; esac
done
[ -n "$server" ] || { echo "usage: $0 --bootstrap-server HOST:PORT" >&2; exit 2; }
exec python3 /opt/kafka/metadata.py "${server%:*}" "${server##*:}" 10
