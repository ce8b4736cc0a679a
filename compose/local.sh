#!/usr/bin/env bash
# A real Apache Kafka broker (one KRaft broker+controller) and a real Redis server on loopback,
# for machines without Docker. Kafka's jars come from Maven Central (compose/kafka/pom.xml, cached
# in ~/.m2); redis-server comes from apt when it is missing.
#
#   bash compose/local.sh up       start both (or reuse what already runs) and wait until they serve
#   bash compose/local.sh status   what runs, where, and where the logs are (exit 3 if not serving)
#   bash compose/local.sh env      print `export KAFKA_BOOTSTRAP_SERVERS=... REDIS_URL=...`
#   bash compose/local.sh down     stop what this launcher started (pid files), nothing else
#   bash compose/local.sh clean    down, then delete the instances' data and logs (keeps the jars)
#   bash compose/local.sh jars     only fetch the Kafka jars (compose/images.sh puts them in an image)
#
# Options (any command):
#   --kafka-port N        broker port             (env KAFKA_PORT, default 9092)
#   --controller-port N   KRaft controller port   (env KAFKA_CONTROLLER_PORT, default kafka port + 1)
#   --redis-port N        Redis port              (env REDIS_PORT, default 6379)
#   --dir DIR             state folder            (env SERVICES_DIR, default <repo>/.services)
#   --only kafka|redis|kafka,redis                which services (default both)
#   --record FILE         up: append the names of the services this call started to FILE
#   --no-reuse            up: fail instead of reusing a port served by a process not started here
# Extra instances for fault tests: `up --dir .services/extra --kafka-port 19092
# --controller-port 19093 --redis-port 6390` (tests/integration/services.py drives exactly that).
#
# Layout: <dir>/kafka/<port>/{server.properties,data/,logs/server.log,logs/kafka.out,kafka.pid}
#         <dir>/redis/<port>/{redis.log,redis.pid}
#         jars: <repo>/.services/kafka/lib (env KAFKA_LIB_DIR), shared by every instance.
# Other knobs: KAFKA_READY_TIMEOUT (s, default 120), KAFKA_HEAP (default 512m), PYTHON (python3).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
host=127.0.0.1

usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cmd=${1:-}
[ $# -gt 0 ] && shift
kafka_port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-}
redis_port=${REDIS_PORT:-6379}
dir=${SERVICES_DIR:-$repo/.services}
only=kafka,redis
record=
reuse=yes
while [ $# -gt 0 ]; do
    case $1 in
        --kafka-port) kafka_port=$2; shift 2 ;;
        --controller-port) controller_port=$2; shift 2 ;;
        --redis-port) redis_port=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --record) record=$2; shift 2 ;;
        --no-reuse) reuse=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "local.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
controller_port=${controller_port:-$((kafka_port + 1))}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

lib_dir=${KAFKA_LIB_DIR:-$repo/.services/kafka/lib}
ready_timeout=${KAFKA_READY_TIMEOUT:-120}
heap=${KAFKA_HEAP:-512m}
python=${PYTHON:-python3}

kafka_home=$dir/kafka/$kafka_port
kafka_props=$kafka_home/server.properties
kafka_logs=$kafka_home/logs
kafka_pidfile=$kafka_home/kafka.pid
redis_home=$dir/redis/$redis_port
redis_pidfile=$redis_home/redis.pid
redis_log=$redis_home/redis.log

say() { printf 'local.sh: %s\n' "$*"; }
die() { printf 'local.sh: ERROR: %s\n' "$*" >&2; exit 1; }
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# pid_alive PIDFILE PATTERN...: print the pid when the file names a live process whose command
# line contains every PATTERN (so a recycled pid never passes for our service).
pid_alive() {
    local pidfile=$1 pid cmdline pattern
    shift
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) " || return 1
    for pattern in "$@"; do
        case $cmdline in *"$pattern"*) ;; *) return 1 ;; esac
    done
    echo "$pid"
}

kafka_pid() { pid_alive "$kafka_pidfile" kafka.Kafka "$kafka_props "; }
# redis rewrites its command line to "redis-server 127.0.0.1:PORT"; the trailing space keeps
# port 639 from matching 6399
redis_pid() { pid_alive "$redis_pidfile" redis-server ":$redis_port "; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$host/$1" 2>/dev/null; }

kafka_metadata() { "$python" "$here/kafka/metadata.py" "$host" "$kafka_port" "${1:-3}"; }

redis_ping() {
    command -v redis-cli >/dev/null || return 1
    [ "$(timeout 3 redis-cli -h "$host" -p "$redis_port" ping 2>/dev/null)" = PONG ]
}

# wait_gone PID SECONDS: true once PID has exited
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

# service_down NAME PIDFILE PORT STOP_TIMEOUT: stop the process NAME_pid names (SIGTERM, then
# SIGKILL after STOP_TIMEOUT s); never touch a process this launcher did not start.
service_down() {
    local name=$1 pidfile=$2 port=$3 stop_timeout=$4 pid
    if pid=$("${name}_pid"); then
        say "$name: stopping pid $pid"
        kill -TERM "$pid"
        if ! wait_gone "$pid" "$stop_timeout"; then
            say "$name: pid $pid still alive after ${stop_timeout}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || die "$name: pid $pid survived SIGKILL"
        fi
        rm -f "$pidfile"
        say "$name: stopped"
    else
        if [ -f "$pidfile" ]; then say "$name: removing stale pid file"; rm -f "$pidfile"; fi
        if port_open "$port"; then
            say "$name: $host:$port is served by a process this launcher did not start; left alone"
        else
            say "$name: not running"
        fi
    fi
}

note_started() { if [ -n "$record" ]; then echo "$1" >>"$record"; fi; }

# serialise concurrent calls on the same state folder (two shells running `up` at once)
lock() {
    if command -v flock >/dev/null; then
        exec 9>"$dir/.lock"
        if ! flock -n 9; then
            say "waiting for another local.sh working on $dir"
            flock -w 600 9 || die "another local.sh holds $dir/.lock for more than 10 minutes"
        fi
    fi
}

# ---------------------------------------------------------------- kafka
ensure_java() {
    command -v java >/dev/null || die "java not found: Kafka needs Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless)"
    local v major
    v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
    major=${v%%.*}
    [ "$major" = 1 ] && major=$(echo "$v" | cut -d. -f2)
    [ "${major:-0}" -ge 17 ] 2>/dev/null || die "Java $v found; Kafka 4 needs Java 17+"
}

ensure_jars() {
    local pom=$here/kafka/pom.xml stamp=$lib_dir/.complete want tmp tree mvn_log
    want=$(sha256sum "$pom" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found: the Kafka jars come from Maven Central through Maven (Debian: apt-get install -y maven)"
    mkdir -p "$(dirname "$lib_dir")"
    exec 8>"$(dirname "$lib_dir")/.fetch.lock"
    command -v flock >/dev/null && flock -w 600 8
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "fetching Kafka jars from Maven Central into $lib_dir (first run only; cached in ~/.m2)"
    tmp=$lib_dir.tmp
    rm -rf "$tmp"
    mvn_log=$(dirname "$lib_dir")/mvn.log
    if ! mvn -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$mvn_log" 2>&1; then
        tail -n 30 "$mvn_log" >&2
        die "mvn dependency:copy-dependencies failed (is Maven Central reachable?); full log: $mvn_log"
    fi
    # Kafka logs through SLF4J 1.x; an slf4j-api 2.x would silently ignore log4j-slf4j-impl
    tree=$(mktemp)
    if ! mvn -B -Dstyle.color=never -f "$pom" dependency:tree -Dincludes=org.slf4j \
        -DoutputFile="$tree" >>"$mvn_log" 2>&1; then
        tail -n 30 "$mvn_log" >&2
        die "mvn dependency:tree failed; full log: $mvn_log"
    fi
    if grep -q 'slf4j-api:jar:2\.' "$tree" || compgen -G "$tmp/slf4j-api-2.*" >/dev/null; then
        cat "$tree" >&2
        rm -f "$tree"
        die "slf4j-api 2.x in the Kafka classpath; pin org.slf4j:slf4j-api 1.7.x in compose/kafka/pom.xml"
    fi
    rm -f "$tree"
    rm -rf "$lib_dir"
    mv "$tmp" "$lib_dir"
    echo "$want" >"$stamp"
    say "$(find "$lib_dir" -name "*.jar" | wc -l) jars in $lib_dir"
}

java_args=(-Xms"$heap" -Xmx"$heap" -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" -Dkafka.logs.dir="$kafka_logs"
    -cp "$lib_dir/*")
kafka_java() { java "${java_args[@]}" "$@"; }

kafka_configure() {
    mkdir -p "$kafka_home/data" "$kafka_logs"
    sed -e "s|@HOST@|$host|g" -e "s|@KAFKA_PORT@|$kafka_port|g" \
        -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA_DIR@|$kafka_home/data|g" \
        "$here/kafka/server.properties.template" >"$kafka_props"
    local formatted=$kafka_home/formatted cluster_id
    if [ -f "$formatted" ]; then
        grep -qx "controller_port=$controller_port" "$formatted" \
            || die "$kafka_home was formatted with another controller port ($(grep controller_port "$formatted")); run: bash compose/local.sh clean --kafka-port $kafka_port --dir $dir"
        return 0
    fi
    # what `StorageTool random-uuid` prints (a v4 UUID, base64url, never starting with "-"),
    # without a JVM start
    cluster_id=$("$python" -c 'import base64, uuid
while True:
    text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not text.startswith("-"):
        print(text)
        break')
    [ ${#cluster_id} = 22 ] || die "could not make a cluster id"
    say "formatting $kafka_home/data (cluster $cluster_id, standalone controller on $host:$controller_port)"
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$kafka_props" --standalone \
        >>"$kafka_logs/format.log" 2>&1 || { tail -20 "$kafka_logs/format.log" >&2; die "storage format failed; see $kafka_logs/format.log"; }
    printf 'cluster_id=%s\ncontroller_port=%s\n' "$cluster_id" "$controller_port" >"$formatted"
}

kafka_tail() {
    echo "---- last lines of $kafka_logs/server.log ----" >&2
    tail -n 40 "$kafka_logs/server.log" >&2 2>/dev/null || echo "(no server.log)" >&2
    echo "---- last lines of $kafka_logs/kafka.out ----" >&2
    tail -n 20 "$kafka_logs/kafka.out" >&2 2>/dev/null || echo "(no kafka.out)" >&2
}

kafka_up() {
    local pid offset deadline
    if pid=$(kafka_pid); then
        kafka_metadata 5 >/dev/null || { kafka_tail; die "kafka (pid $pid) runs but does not answer a metadata request on $host:$kafka_port"; }
        say "kafka: already running (pid $pid) on $host:$kafka_port; reusing it"
        return 0
    fi
    if [ -f "$kafka_pidfile" ]; then
        say "kafka: removing stale pid file $kafka_pidfile"
        rm -f "$kafka_pidfile"
    fi
    if port_open "$kafka_port"; then
        kafka_metadata 5 >/dev/null \
            || die "port $host:$kafka_port is taken by something that does not answer a Kafka metadata request"
        [ "$reuse" = yes ] || die "kafka: $host:$kafka_port already serves a broker not started here (--no-reuse)"
        say "kafka: $host:$kafka_port already serves Kafka, not started by this launcher; reusing it (down leaves it alone)"
        return 0
    fi
    port_open "$controller_port" && die "controller port $host:$controller_port is already in use"
    ensure_java
    ensure_jars
    kafka_configure
    touch "$kafka_logs/server.log"
    offset=$(stat -c %s "$kafka_logs/server.log")
    say "kafka: starting on $host:$kafka_port (controller $host:$controller_port, heap $heap)"
    # setsid: the broker outlives the shell (and the process group) that started it
    # 8>&- 9>&-: the broker must not inherit (and so hold forever) this script's lock files
    setsid nohup java "${java_args[@]}" kafka.Kafka "$kafka_props" \
        >>"$kafka_logs/kafka.out" 2>&1 </dev/null 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$kafka_pidfile"
    deadline=$((SECONDS + ready_timeout))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$kafka_pidfile"
            kafka_tail
            die "kafka: the java process (pid $pid) exited during startup"
        fi
        # the log rolled over (log4j2.properties) since we measured it: read the new file whole
        if [ "$(stat -c %s "$kafka_logs/server.log" 2>/dev/null || echo 0)" -lt "$offset" ]; then
            offset=0
        fi
        # grep -c reads all its input: with pipefail, grep -q would SIGPIPE tail and read as failure
        if tail -c +"$((offset + 1))" "$kafka_logs/server.log" | grep -c 'Kafka Server started' >/dev/null \
            && kafka_metadata 3 >/dev/null 2>&1; then
            break
        fi
        if [ $SECONDS -ge $deadline ]; then
            kafka_tail
            kill -TERM "$pid" 2>/dev/null || true
            wait_gone "$pid" 30 || kill -KILL "$pid" 2>/dev/null || true
            rm -f "$kafka_pidfile"
            die "kafka: not ready after ${ready_timeout}s (needs the 'Kafka Server started' log line and a metadata answer); stopped it"
        fi
        sleep 0.5
    done
    note_started kafka
    say "kafka: ready on $host:$kafka_port (pid $pid, $(kafka_metadata 3)); logs: $kafka_logs/server.log"
}

kafka_down() { service_down kafka "$kafka_pidfile" "$kafka_port" "${KAFKA_STOP_TIMEOUT:-60}"; }

kafka_status() {
    local pid
    if pid=$(kafka_pid); then
        if kafka_metadata 3 >/dev/null 2>&1; then
            say "kafka: running (pid $pid) on $host:$kafka_port, metadata OK; logs: $kafka_logs/server.log"
        else
            say "kafka: process $pid alive but $host:$kafka_port does not answer metadata; logs: $kafka_logs/server.log"
            return 1
        fi
    elif port_open "$kafka_port" && kafka_metadata 3 >/dev/null 2>&1; then
        say "kafka: $host:$kafka_port serves Kafka (not started by this launcher)"
    else
        say "kafka: not running on $host:$kafka_port"
        return 1
    fi
}

# ---------------------------------------------------------------- redis
ensure_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    command -v apt-get >/dev/null || die "redis-server is missing and apt-get is not available; install Redis 7 yourself"
    local sudo=
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "redis-server is missing; run as root or install it: apt-get install -y redis-server"
        sudo="sudo -n"
    fi
    say "redis: installing Debian's redis-server with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server \
        || die "apt-get install redis-server failed"
}

redis_tail() {
    echo "---- last lines of $redis_log ----" >&2
    tail -n 30 "$redis_log" >&2 2>/dev/null || echo "(no redis.log)" >&2
}

redis_up() {
    local pid deadline
    if pid=$(redis_pid); then
        redis_ping || { redis_tail; die "redis (pid $pid) runs but does not answer PING on $host:$redis_port"; }
        say "redis: already running (pid $pid) on $host:$redis_port; reusing it"
        return 0
    fi
    if [ -f "$redis_pidfile" ]; then
        say "redis: removing stale pid file $redis_pidfile"
        rm -f "$redis_pidfile"
    fi
    ensure_redis
    if port_open "$redis_port"; then
        redis_ping || die "port $host:$redis_port is taken by something that does not answer Redis PING"
        [ "$reuse" = yes ] || die "redis: $host:$redis_port already serves a Redis not started here (--no-reuse)"
        say "redis: $host:$redis_port already serves Redis, not started by this launcher; reusing it (down leaves it alone)"
        return 0
    fi
    mkdir -p "$redis_home"
    say "redis: starting on $host:$redis_port (no persistence)"
    (cd "$redis_home" && setsid redis-server --daemonize yes --bind "$host" --port "$redis_port" \
        --save "" --appendonly no --dir "$redis_home" \
        --pidfile "$redis_pidfile" --logfile "$redis_log" </dev/null 8>&- 9>&-) \
        || { redis_tail; die "redis-server failed to start"; }
    deadline=$((SECONDS + 30))
    until redis_ping && pid=$(redis_pid); do
        if [ $SECONDS -ge $deadline ]; then
            redis_tail
            die "redis: no PONG on $host:$redis_port after 30s"
        fi
        sleep 0.2
    done
    note_started redis
    say "redis: ready on $host:$redis_port (pid $pid); log: $redis_log"
}

redis_down() { service_down redis "$redis_pidfile" "$redis_port" 20; }

redis_status() {
    local pid
    if pid=$(redis_pid); then
        if redis_ping; then
            say "redis: running (pid $pid) on $host:$redis_port, PING OK; log: $redis_log"
        else
            say "redis: process $pid alive but no PONG on $host:$redis_port; log: $redis_log"
            return 1
        fi
    elif redis_ping; then
        say "redis: $host:$redis_port serves Redis (not started by this launcher)"
    else
        say "redis: not running on $host:$redis_port"
        return 1
    fi
}

print_env() {
    local parts=()
    if wants kafka; then parts+=("KAFKA_BOOTSTRAP_SERVERS=$host:$kafka_port"); fi
    if wants redis; then parts+=("REDIS_URL=redis://$host:$redis_port/0"); fi
    echo "export ${parts[*]}"
}

case $cmd in
    up)
        lock
        if wants redis; then redis_up; fi
        if wants kafka; then kafka_up; fi
        say "state, data and logs under $dir"
        say "environment for clients: $(print_env)"
        ;;
    down)
        lock
        if wants kafka; then kafka_down; fi
        if wants redis; then redis_down; fi
        ;;
    clean)
        lock
        if wants kafka; then kafka_down; rm -rf "$kafka_home"; say "kafka: deleted $kafka_home"; fi
        if wants redis; then redis_down; rm -rf "$redis_home"; say "redis: deleted $redis_home"; fi
        ;;
    status)
        rc=0
        if wants kafka; then kafka_status || rc=3; fi
        if wants redis; then redis_status || rc=3; fi
        exit $rc
        ;;
    env) print_env ;;
    jars) ensure_jars ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
