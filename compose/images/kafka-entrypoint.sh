#!/usr/bin/env bash
# Entry point of the locally built signed-bus/kafka image (compose/images.sh). It reads the same
# environment as the official apache/kafka image, so compose/docker-compose.yml and the test
# harness drive either image alike: every KAFKA_* variable (except the JVM ones) is a
# server.properties entry (KAFKA_ dropped, ___ -> -, __ -> _, _ -> ., lower case); CLUSTER_ID
# formats the log directory on first start; KAFKA_HEAP_OPTS sizes the heap. Without any KAFKA_*
# setting it runs a single-node broker+controller on :9092 advertised as localhost:9092.
set -euo pipefail

home=/opt/kafka
props=$home/config/server.properties
mkdir -p "$home/config"

jvm_var() {
    case $1 in KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS|KAFKA_JMX_OPTS|KAFKA_GC_LOG_OPTS) return 0 ;; esac
    return 1
}

: >"$props.new"
while IFS='=' read -r name _; do
    case $name in KAFKA_*) ;; *) continue ;; esac
    jvm_var "$name" && continue
    key=${name#KAFKA_}
    key=${key//___/-}
    key=${key//__/@}
    key=${key//_/.}
    key=${key//@/_}
    key=${key,,}
    printf '%s=%s\n' "$key" "${!name}" >>"$props.new"
done < <(env)

if [ ! -s "$props.new" ]; then
    cat >"$props.new" <<'PROPS'
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=PLAINTEXT://localhost:9092
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/var/lib/kafka/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
fi
mv "$props.new" "$props"

log_dirs=$(sed -n 's/^log\.dirs=//p' "$props" | head -1)
log_dirs=${log_dirs:-/tmp/kraft-combined-logs}
cluster_id=${CLUSTER_ID:-c2lnbmVkLWJ1cy1sb2NhbA}
java_cp=(-cp "$home/libs/*")
if [ ! -f "${log_dirs%%,*}/meta.properties" ]; then
    mkdir -p "${log_dirs%%,*}"
    standalone=()
    grep -q '^controller\.quorum\.voters=' "$props" || standalone=(--standalone)
    echo "kafka-entrypoint: formatting $log_dirs (cluster $cluster_id)"
    java -Xmx256m "${java_cp[@]}" -Dlog4j2.configurationFile="$home/config/log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$props" "${standalone[@]}"
fi

read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
read -r -a extra <<<"${KAFKA_OPTS:-}"
echo "kafka-entrypoint: starting Kafka with $props"
exec java "${heap[@]}" "${extra[@]}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$home/config/log4j2.properties" "${java_cp[@]}" kafka.Kafka "$props"
