#!/usr/bin/env bash
# compose/docker-compose.yml on whatever container engine answers (Docker, or the podman service
# of compose/engine.sh), with whichever Compose client is installed: `docker compose` (v2), else
# Debian's `docker-compose` (v1, installed by compose/engine.sh). Images: the local ones of
# compose/images.sh unless KAFKA_IMAGE / REDIS_IMAGE / AGENT_BASE are set.
#
#   bash compose/compose.sh demo         the demo (profile demo) in containers against the stack's
#                                        Kafka and Redis; prints the report and RESULT: PASS/FAIL,
#                                        exits with the demo's status; everything removed after
#   bash compose/compose.sh agents       the reference agents (profile agents) for AGENTS_SECONDS
#                                        (default 60), then the auditor's log; removed after
#   bash compose/compose.sh -- ARGS...   the Compose client with this file and the image
#                                        variables (e.g. `-- ps`, `-- logs kafka`)
#
# The stack publishes Kafka and Redis on free loopback ports (KAFKA_HOST_PORT, REDIS_HOST_PORT),
# so it runs beside compose/local.sh's services on 9092/6379. Project name: COMPOSE_PROJECT
# (default signed-bus-<pid>, so parallel runs do not meet).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=$here/docker-compose.yml

say() { printf 'compose.sh: %s\n' "$*"; }
die() { printf 'compose.sh: ERROR: %s\n' "$*" >&2; exit 1; }

[ -n "${DOCKER_HOST:-}" ] || eval "$(bash "$here/engine.sh" env)"
export DOCKER_HOST
if docker compose version >/dev/null 2>&1; then
    client=(docker compose)
elif command -v docker-compose >/dev/null; then
    client=(docker-compose)
else
    die "no Compose client: install Docker's compose plugin, or run bash compose/engine.sh up (Debian's docker-compose)"
fi
if [ -z "${KAFKA_IMAGE:-}${REDIS_IMAGE:-}${AGENT_BASE:-}" ]; then
    bash "$here/images.sh" build
    eval "$(bash "$here/images.sh" env)"
fi
export KAFKA_IMAGE=${KAFKA_IMAGE:-apache/kafka:4.1.2} REDIS_IMAGE=${REDIS_IMAGE:-redis:7} \
    AGENT_BASE=${AGENT_BASE:-python:3.11-slim}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export KAFKA_HOST_PORT=${KAFKA_HOST_PORT:-$(free_port)} REDIS_HOST_PORT=${REDIS_HOST_PORT:-$(free_port)}
project=${COMPOSE_PROJECT:-signed-bus-$$}
dc() { "${client[@]}" -p "$project" -f "$file" "$@"; }

# the agent image's wheels, built here with the host's pip (its index settings and certificates)
wheels() {
    local dir=$here/wheels log
    log=$dir/pip.log
    rm -f "$dir"/*.whl
    say "building the agent image's wheels into $dir (pip, from PyPI; log: $log)"
    "${PYTHON:-python3}" -m pip wheel --disable-pip-version-check -q -w "$dir" "$here/.." >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "pip wheel failed; full log: $log"; }
}

teardown() {
    say "removing project $project (containers, network, volumes)"
    dc --profile demo --profile agents down -v --remove-orphans >/dev/null 2>&1 \
        || say "WARNING: down failed; see: ${client[*]} -p $project -f $file ps"
}

say "${client[*]} on $DOCKER_HOST; KAFKA_IMAGE=$KAFKA_IMAGE REDIS_IMAGE=$REDIS_IMAGE AGENT_BASE=$AGENT_BASE; project $project; Kafka 127.0.0.1:$KAFKA_HOST_PORT, Redis 127.0.0.1:$REDIS_HOST_PORT"
case ${1:-} in
    demo)
        trap teardown EXIT
        wheels
        dc --profile demo build demo
        say "starting kafka and redis, then the demo (it waits for both to be healthy)"
        set +e
        dc --profile demo run --rm demo
        rc=$?
        set -e
        if [ $rc -ne 0 ]; then
            dc logs --tail 40 kafka >&2 || true
        fi
        exit $rc
        ;;
    agents)
        trap teardown EXIT
        wheels
        keys=$here/keys
        if [ ! -s "$keys/public.keyring" ]; then
            # the agents' keys (docs/PIPELINES.md): generated here by the agent image itself
            say "generating agent keys into $keys"
            mkdir -p "$keys"
            dc --profile agents build topics
            for agent in inference-agent planner; do
                dc --profile agents run --rm --no-deps -v "$keys:/keys" -w /keys --user "$(id -u):$(id -g)" \
                    topics signed-bus keygen --alg ed25519 --kid "$agent-1" --issuer "$agent" \
                    --out "$agent.keyring" --public-out public.keyring --append
            done
        fi
        export AGENT_UID=${AGENT_UID:-$(id -u)} AGENT_GID=${AGENT_GID:-$(id -g)} \
            PROMPT_COUNT=${PROMPT_COUNT:-200} PROMPT_RATE=${PROMPT_RATE:-10}
        dc --profile agents up --build -d
        sleep "${AGENTS_SECONDS:-60}"
        dc --profile agents ps
        dc --profile agents logs --tail 20 auditor planner action-agent
        ;;
    --)
        shift
        dc "$@"
        ;;
    *) sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
