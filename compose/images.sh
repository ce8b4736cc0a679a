#!/usr/bin/env bash
# Builds the container images signed-bus runs on without any container registry:
#
#   signed-bus/base:<hash>    Debian bookworm (debootstrap from the Debian mirror apt uses):
#                             openjdk-17-jre-headless, redis-server, python3 + venv
#   signed-bus/kafka:local    base + the Kafka jars of compose/kafka/pom.xml (Maven Central, the
#                             same jars as compose/local.sh) + compose/images/kafka-entrypoint.sh,
#                             which reads the official apache/kafka image's KAFKA_* variables
#   signed-bus/redis:local    base running redis-server
#
#   bash compose/images.sh build    build what is missing or out of date, reuse the rest
#   bash compose/images.sh env      print the variables that select these images:
#                                   KAFKA_IMAGE, REDIS_IMAGE (tests/conftest.py, Compose),
#                                   AGENT_BASE (compose/agent.Dockerfile's base image)
#   bash compose/images.sh status   which images exist and whether they are current
#
# Cached: each image carries a label signed-bus.inputs=<sha256 of its inputs> (package list,
# mirror, jars, Containerfiles, scripts); `build` rebuilds only an image whose inputs changed.
# Needs a container engine (bash compose/engine.sh up) and, for the base image, root and
# debootstrap (engine.sh installs it). Logs: <repo>/.services/images/*.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${IMAGES_DIR:-$repo/.services/images}
lib_dir=${KAFKA_LIB_DIR:-$repo/.services/kafka/lib}
suite=bookworm
packages=openjdk-17-jre-headless,redis-server,python3,python3-venv,ca-certificates
label=signed-bus.inputs
KAFKA_TAG=signed-bus/kafka:local
REDIS_TAG=signed-bus/redis:local

say() { printf 'images.sh: %s\n' "$*"; }
die() { printf 'images.sh: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# the engine's CLI: podman itself when the engine is the podman service of compose/engine.sh
# (same storage), else the docker CLI against DOCKER_HOST
if [ -z "${DOCKER_HOST:-}" ]; then
    eval "$(bash "$here/engine.sh" env)"
fi
case $DOCKER_HOST in
    */signed-bus-engine/*) ctr() { podman "$@"; } ;;
    *) ctr() { docker "$@"; } ;;
esac

mirror() {
    # the first Debian mirror apt uses (deb822 sources or a classic sources.list)
    local m
    m=$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
    echo "${m:-http://deb.debian.org/debian}"
}

# label_of IMAGE: its inputs label, empty when the image is missing
label_of() { ctr image inspect --format "{{ index .Config.Labels \"$label\" }}" "$1" 2>/dev/null || true; }

hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

base_hash() { printf '%s\n' "$suite" "$packages" "$(mirror)" "v1" | sha256sum | cut -c1-16; }

build_base() {
    local tag=signed-bus/base:$1 rootfs log=$work/base.log
    if [ -n "$(label_of "$tag")" ]; then
        say "$tag: up to date"
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap missing (bash compose/engine.sh up installs it)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    rootfs=$work/rootfs
    rm -rf "$rootfs"
    say "$tag: debootstrap $suite from $(mirror) with $packages (about a minute; log: $log)"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$(mirror)" >"$log" 2>&1; then
        tail -20 "$log" >&2
        die "debootstrap failed; full log: $log"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    say "$tag: importing the root file system"
    tar -C "$rootfs" -c . | ctr import --change "LABEL $label=$1" --change 'CMD ["/bin/bash"]' - "$tag" >>"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "import failed; full log: $log"; }
    rm -rf "$rootfs"
}

# build_image TAG CONTAINERFILE CONTEXT HASH BASE
build_image() {
    local tag=$1 file=$2 context=$3 want=$4 base=$5 log
    log=$work/$(basename "$file" .Containerfile).log
    if [ "$(label_of "$tag")" = "$want" ]; then
        say "$tag: up to date"
        return 0
    fi
    say "$tag: building (log: $log)"
    ctr build --build-arg BASE="$base" --label "$label=$want" -t "$tag" -f "$file" "$context" >"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "building $tag failed; full log: $log"; }
}

ensure_jars() {
    # compose/local.sh owns fetching the jars; `--only kafka` with a port nothing uses would start
    # a broker, so ask it only for the jars through its ensure step: the stamp tells us it is done
    local stamp=$lib_dir/.complete want
    want=$(sha256sum "$here/kafka/pom.xml" | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "fetching the Kafka jars (compose/local.sh jars)"
        bash "$here/local.sh" jars
    fi
}

build() {
    mkdir -p "$work"
    exec 9>"$work/.lock"
    flock -w 900 9 || die "another images.sh holds $work/.lock"
    local bh base ctx kh rh
    bh=$(base_hash)
    base=signed-bus/base:$bh
    build_base "$bh"
    ensure_jars
    ctx=$work/kafka-context
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp -r "$lib_dir" "$ctx/libs"
    rm -f "$ctx/libs/.complete"
    cp "$here"/images/{kafka-entrypoint.sh,kafka-broker-api-versions.sh,log4j2.properties} "$here/kafka/metadata.py" "$ctx/"
    kh=$( (echo "$bh"; cat "$lib_dir/.complete"; hash_files "$here/images/kafka.Containerfile" "$ctx"/*.sh "$ctx"/*.py "$ctx"/*.properties) | sha256sum | cut -c1-16)
    build_image "$KAFKA_TAG" "$here/images/kafka.Containerfile" "$ctx" "$kh" "$base"
    rh=$( (echo "$bh"; hash_files "$here/images/redis.Containerfile") | sha256sum | cut -c1-16)
    mkdir -p "$work/redis-context"
    build_image "$REDIS_TAG" "$here/images/redis.Containerfile" "$work/redis-context" "$rh" "$base"
    rm -rf "$ctx"
    ctr tag "$base" signed-bus/base:local
}

case ${1:-} in
    build) build; say "images ready: $(bash "${BASH_SOURCE[0]}" env)" ;;
    env) echo "export KAFKA_IMAGE=$KAFKA_TAG REDIS_IMAGE=$REDIS_TAG AGENT_BASE=signed-bus/base:local" ;;
    status)
        for t in signed-bus/base:local "$KAFKA_TAG" "$REDIS_TAG"; do
            echo "$t: $(label_of "$t" | sed 's/^$/missing/')"
        done
        ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
