#!/usr/bin/env bash
# Command-line tools the test suite drives besides the services: Graphviz's `dot`, which parses
# what `signed-bus trace --format dot` prints (tests/integration/test_trace.py); `ip` (iproute2)
# and `iptables`, which build and cut the network namespaces of tests/integration/netns.py.
#   bash compose/tools.sh ensure   installs what is missing with apt-get (Debian), else fails
set -euo pipefail

die() { echo "tools.sh: $*" >&2; exit 1; }
say() { echo "tools.sh: $*" >&2; }

ensure() {
    local missing=()
    command -v dot >/dev/null || missing+=(graphviz)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing+=(iptables)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and apt-get is not available; install ${missing[*]} yourself"
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root (apt-get install -y ${missing[*]})"
    local log="${TMPDIR:-/tmp}/signed-bus-tools-apt.log"
    say "installing ${missing[*]} with apt-get (log: $log)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >>"$log" 2>&1 \
        || { tail -20 "$log" >&2; die "apt-get install ${missing[*]} failed"; }
    command -v dot >/dev/null || die "graphviz installed but dot is not on PATH"
}

case "${1:-}" in
    ensure) ensure ;;
    *) die "usage: bash compose/tools.sh ensure" ;;
esac
