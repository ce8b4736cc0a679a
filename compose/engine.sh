#!/usr/bin/env bash
# A container engine with a Docker-compatible API where none answers: Debian's podman (rootful,
# runc) and its API service on a unix socket, for testcontainers (docker-py), the docker CLI and
# docker-compose. Nothing here pulls from a container registry.
#
#   bash compose/engine.sh up       install what is missing, configure, start the API service
#                                   (or reuse an engine that already answers); idempotent
#   bash compose/engine.sh env      print `export DOCKER_HOST=...` for the engine that answers
#   bash compose/engine.sh status   exit 0 when the engine answers, 3 when not
#   bash compose/engine.sh down     stop the API service this script started (packages and
#                                   configuration stay)
#   bash compose/engine.sh run -- CMD...   up, run CMD with DOCKER_HOST exported, then down if
#                                   this call started the service; exits with CMD's code
#
# What `up` installs (apt-get, only when missing): podman, runc, docker-compose (the v1 client,
# which speaks the Docker API), debootstrap (compose/images.sh builds the images with it).
# What it writes: /etc/containers/containers.conf.d/signed-bus.conf: runtime runc (crun fails
# on cgroups hybrid mode) and default ulimits within this machine's hard limits (podman's
# defaults, nofile 1048576 / nproc 32768, are refused where the hard limits are lower).
# An engine that already answers on DOCKER_HOST (or /var/run/docker.sock) is used as it is.
# Podman runs container health checks from systemd timers; where systemd is not running (this
# kind of machine), `up` also starts a small loop that runs `podman healthcheck run` on every
# running container every 3 s, so Compose's `condition: service_healthy` works.
#
# Knobs: ENGINE_SOCKET (default /run/signed-bus-engine/podman.sock), ENGINE_DIR (pid file and
# log, default /run/signed-bus-engine).
set -euo pipefail

engine_dir=${ENGINE_DIR:-/run/signed-bus-engine}
socket=${ENGINE_SOCKET:-$engine_dir/podman.sock}
pidfile=$engine_dir/service.pid
health_pidfile=$engine_dir/health.pid
log=$engine_dir/service.log
conf=/etc/containers/containers.conf.d/signed-bus.conf

say() { printf 'engine.sh: %s\n' "$*"; }
die() { printf 'engine.sh: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ping SOCKET_PATH: the Docker API answers GET /_ping with 200
ping() {
    [ -S "$1" ] || return 1
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
    sys.exit(0 if s.recv(64).split(b" ")[1:2] == [b"200"] else 1)
except OSError:
    sys.exit(1)
' "$1"
}

# an engine that answers already (Docker, or a podman service someone else runs)?
existing() {
    local host=${DOCKER_HOST:-}
    if [ -n "$host" ]; then
        case $host in
            unix://*) ping "${host#unix://}" && { echo "$host"; return 0; } ;;
            *) timeout 10 docker -H "$host" info >/dev/null 2>&1 && { echo "$host"; return 0; } ;;
        esac
    fi
    if ping /var/run/docker.sock; then echo unix:///var/run/docker.sock; return 0; fi
    return 1
}

service_pid() {
    [ -s "$pidfile" ] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "system service .*unix://$socket" || return 1
    echo "$pid"
}

# install_packages [clients]: with "clients", only what Compose and images.sh need (an engine
# answers already)
install_packages() {
    local missing=() engine_pkgs=()
    if [ "${1:-}" != clients ]; then
        command -v podman >/dev/null || missing+=(podman)
        command -v runc >/dev/null || missing+=(runc)
        engine_pkgs=(uidmap netavark aardvark-dns iptables slirp4netns)
    fi
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root (apt-get install -y ${missing[*]})"
    say "installing ${missing[*]} with apt-get (log: $engine_dir/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$engine_dir/apt.log" 2>&1 \
        || { tail -20 "$engine_dir/apt.log" >&2; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" "${engine_pkgs[@]}" >>"$engine_dir/apt.log" 2>&1 \
        || { tail -20 "$engine_dir/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

configure() {
    local nofile nproc want
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] && nofile=1048576
    [ "$nproc" = unlimited ] && nproc=4096
    [ "$nofile" -gt 1048576 ] && nofile=1048576
    [ "$nproc" -gt 4096 ] && nproc=4096   # plenty per container; 32768 was refused here
    want="# written by signed-bus compose/engine.sh: podman's defaults are refused on this machine
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
runtime = \"runc\"
"
    if [ "$(cat "$conf" 2>/dev/null)" != "$(printf '%s' "$want")" ]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s' "$want" >"$conf"
        say "wrote $conf (runc; ulimits nofile=$nofile nproc=$nproc)"
    fi
}

health_pid() {
    [ -s "$health_pidfile" ] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$health_pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "engine.sh health-loop" || return 1
    echo "$pid"
}

# what systemd's timers would do: run each running container's health check
health_loop() {
    local id
    while :; do
        for id in $(podman ps -q 2>/dev/null); do
            podman healthcheck run "$id" >/dev/null 2>&1 &
        done
        wait
        sleep 3
    done
}

start_health_loop() {
    [ -d /run/systemd/system ] && return 0   # systemd runs podman's health-check timers
    health_pid >/dev/null && return 0
    setsid nohup bash "${BASH_SOURCE[0]}" health-loop >>"$engine_dir/health.log" 2>&1 </dev/null 9>&- &
    echo $! >"$health_pidfile"
    say "no systemd: health checks run by a loop (pid $!)"
}

started=no
up() {
    local host pid deadline
    mkdir -p "$engine_dir"
    if pid=$(service_pid) && ping "$socket"; then
        say "podman API service already running (pid $pid) on unix://$socket"
        start_health_loop
        return 0
    fi
    if host=$(existing); then
        say "a container engine already answers on $host; using it"
        # compose/compose.sh and compose/images.sh may still want docker-compose and debootstrap
        if [ "$(id -u)" = 0 ]; then install_packages clients; fi
        return 0
    fi
    install_packages
    configure
    rm -f "$pidfile"
    if [ -S "$socket" ]; then rm -f "$socket"; fi
    say "starting podman system service on unix://$socket (log: $log)"
    # setsid: the service outlives the shell that started it; 9>&-: no lock held by it
    setsid nohup podman system service --time=0 "unix://$socket" >>"$log" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$pidfile"
    deadline=$((SECONDS + 30))
    until ping "$socket"; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; rm -f "$pidfile"; die "podman system service exited"; }
        [ $SECONDS -ge $deadline ] && { tail -20 "$log" >&2; die "no answer on $socket after 30s"; }
        sleep 0.2
    done
    started=yes
    start_health_loop
    say "engine ready: export DOCKER_HOST=unix://$socket"
}

down() {
    local pid
    if pid=$(health_pid); then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        rm -f "$health_pidfile"
    fi
    if pid=$(service_pid); then
        say "stopping podman API service (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile" "$socket"
        say "stopped (packages and $conf left in place)"
    else
        rm -f "$pidfile"
        say "no API service started by this script is running"
    fi
}

env_line() {
    local host
    if ping "$socket"; then echo "export DOCKER_HOST=unix://$socket"; return 0; fi
    if host=$(existing); then echo "export DOCKER_HOST=$host"; return 0; fi
    die "no container engine answers; run: bash compose/engine.sh up"
}

lock() {
    mkdir -p "$engine_dir"
    exec 9>"$engine_dir/.lock"
    flock -w 600 9 || die "another engine.sh holds $engine_dir/.lock"
}

case ${1:-} in
    up) lock; up ;;
    down) lock; down ;;
    env) env_line ;;
    status)
        if ping "$socket" || existing >/dev/null; then env_line; else say "no engine answers"; exit 3; fi
        ;;
    health-loop) health_loop ;;
    run)
        shift
        [ "${1:-}" = -- ] && shift
        [ $# -gt 0 ] || { echo "engine.sh run -- CMD..." >&2; exit 2; }
        lock
        up
        exec 9>&-
        if [ $started = yes ]; then
            trap 'lock; down' EXIT
        else
            say "the engine was running before this call; left running"
        fi
        trap 'exit 130' INT
        trap 'exit 143' TERM
        eval "$(env_line)"
        set +e
        "$@"
        rc=$?
        set -e
        exit "$rc"
        ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
