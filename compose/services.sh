#!/usr/bin/env bash
# Kafka and Redis for `make`: the no-Docker launcher (compose/local.sh) where Java is installed,
# Docker Compose (compose/docker-compose.yml) where only a Docker engine is.
#
#   bash compose/services.sh up              start (or reuse) both and wait until they serve
#   bash compose/services.sh down            stop them
#   bash compose/services.sh status
#   bash compose/services.sh env             print `export KAFKA_BOOTSTRAP_SERVERS=... REDIS_URL=...`
#   bash compose/services.sh run -- CMD...   up, run CMD with the variables exported, then stop
#                                            only what this call started; exits with CMD's code
#
# SERVICES_BACKEND=local|docker|auto (default auto: local when `java` is on PATH, else docker when
# a Docker engine answers, else local, which then says what is missing).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
compose_file=$here/docker-compose.yml

backend=${SERVICES_BACKEND:-auto}
if [ "$backend" = auto ]; then
    if command -v java >/dev/null; then
        backend=local
    elif command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
        backend=docker
    else
        backend=local
    fi
fi
case $backend in local|docker) ;; *) echo "services.sh: SERVICES_BACKEND=$backend? (local|docker|auto)" >&2; exit 2 ;; esac

# -p: the project name in the command, not the file (Debian's docker-compose v1 rejects `name:`)
dc() { docker compose -p signed-bus -f "$compose_file" "$@"; }

# up [RECORD_FILE]: the record file gets one line per service this call started
up() {
    local record=${1:-}
    if [ "$backend" = local ]; then
        if [ -n "$record" ]; then
            bash "$here/local.sh" up --record "$record"
        else
            bash "$here/local.sh" up
        fi
    else
        local before
        before=$(dc ps --status running -q kafka redis 2>/dev/null | wc -l)
        echo "services.sh: docker compose up kafka redis (logs: docker compose -f $compose_file logs)"
        dc up -d --wait kafka redis
        if [ "$before" -lt 2 ] && [ -n "$record" ]; then echo docker >>"$record"; fi
    fi
}

# down [LIST]: LIST (comma separated, from a record file) limits what stops; default everything
down() {
    local only=${1:-}
    if [ "$backend" = local ]; then
        if [ -n "$only" ]; then
            bash "$here/local.sh" down --only "$only"
        else
            bash "$here/local.sh" down
        fi
    else
        dc down
    fi
}

env_line() {
    if [ "$backend" = local ]; then
        bash "$here/local.sh" env
    else
        echo "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 REDIS_URL=redis://127.0.0.1:6379/0"
    fi
}

# run: stop what this call started (an EXIT trap)
# shellcheck disable=SC2317
stop_started() {
    local started
    started=$(paste -sd, "$record")
    rm -f "$record"
    if [ -n "$started" ]; then
        echo "services.sh: stopping what this run started ($started)"
        if [ "$started" = docker ]; then
            down || echo "services.sh: WARNING: could not stop the containers" >&2
        else
            down "$started" || echo "services.sh: WARNING: could not stop $started" >&2
        fi
    else
        echo "services.sh: the services were already running before this run; left running"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    up) up ;;
    down) down ;;
    status)
        if [ "$backend" = local ]; then bash "$here/local.sh" status; else dc ps; fi
        ;;
    env) env_line ;;
    run)
        [ "${1:-}" = -- ] && shift
        [ $# -gt 0 ] || { echo "services.sh run -- CMD..." >&2; exit 2; }
        record=$(mktemp)
        trap stop_started EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        up "$record"
        eval "$(env_line)"
        echo "services.sh: KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS REDIS_URL=$REDIS_URL"
        set +e
        "$@"
        rc=$?
        set -e
        exit "$rc"
        ;;
    *) sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
