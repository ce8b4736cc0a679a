"""A Redis Cluster whose nodes run in network namespaces, for network-partition tests (real
redis-server processes; needs root and iproute2's ``ip netns``; iptables inside namespaces).

One Linux bridge in this namespace holds the first address of a private /24 (``10.213.N.1``,
N picked unused) and joins a namespace per node through a veth pair; node ``i`` binds and
announces ``10.213.N.(11 + i)``. The test process (and Kafka) stays here and reaches every node
through the bridge. :meth:`NamespacedRedisCluster.cut` drops, inside one node's namespace, all
traffic to and from the OTHER nodes, so that node keeps serving the clients here while the rest
of the cluster sees it vanish; :meth:`~NamespacedRedisCluster.heal` removes the rules::

    with NamespacedRedisCluster() as cluster:
        victim = cluster.master_of(slot)
        cluster.cut(victim)
        promoted = cluster.wait_replica_promoted(victim)  # asked on the majority side
        cluster.heal(victim)
        cluster.wait_settled()  # the old master rejoined as a replica

Names carry a fixed prefix and the creating process's pid (``sbn<pid>...``): two runs never
collide, and a run removes what a crashed earlier one left (processes in its namespaces, the
namespaces, the bridge, the FORWARD rule that lets the nodes talk across it on a host whose
FORWARD policy is DROP) before it starts. Everything is removed when the block ends, also on
failure. Nothing is skipped: without ``ip netns`` or root the harness raises.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.integration.clusters import RedisClusterProcesses

__all__ = ["NamespacedRedisCluster", "Namespaces", "remove_leftovers"]

#: Every namespace and link name starts with this, then the pid in base 36 (5 characters).
PREFIX = "sbn"
_PID_WIDTH = 5
_SUBNETS = "10.213.{}.0/24"
#: Locked while a run picks its subnet (this file: the lock leaves nothing behind).
_LOCK = Path(__file__)
_IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
_counter = itertools.count()
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int, width: int) -> str:
    out, rest = "", number
    while rest:
        rest, digit = divmod(rest, 36)
        out = _DIGITS[digit] + out
    if len(out) > width:
        raise RuntimeError(f"{number} does not fit {width} base-36 digits")
    return out.rjust(width, "0")


def _run(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _owner(name: str) -> int | None:
    """The pid a harness name carries, or None for a name that is not one."""
    if not name.startswith(PREFIX) or len(name) < len(PREFIX) + _PID_WIDTH:
        return None
    try:
        return int(name[len(PREFIX) : len(PREFIX) + _PID_WIDTH], 36)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in _run("ip", "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        names.append(name)
    return names


def _delete_namespace(namespace: str) -> None:
    """Kill what still runs in ``namespace`` (by pid), then delete it (and its veth ends)."""
    pids = _run("ip", "netns", "pids", namespace, check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _run("ip", "netns", "pids", namespace, check=False).split():
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _run("ip", "netns", "delete", namespace, check=False)


def _forward_rules() -> list[tuple[str, list[str]]]:
    """The root namespace's FORWARD rules the harness added: (bridge, the rule's arguments)."""
    rules = []
    for line in _run(_IPTABLES, "-w", "-S", "FORWARD").splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "-A" and "-i" in words:
            bridge = words[words.index("-i") + 1]
            if _owner(bridge) is not None:
                rules.append((bridge, words[1:]))
    return rules


def _allow_forwarding(bridge: str) -> list[str]:
    """Let the nodes reach each other across ``bridge`` even where the host's FORWARD policy
    is DROP (a Docker host, with br_netfilter loaded): one ACCEPT rule naming the bridge,
    first in the chain. The rule's arguments, for :func:`_remove_forwarding`."""
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    _run(_IPTABLES, "-w", "-I", *rule)
    return rule


def _remove_forwarding(rule: list[str]) -> None:
    _run(_IPTABLES, "-w", "-D", *rule, check=False)


def remove_leftovers() -> list[str]:
    """Remove the namespaces (with what runs in them), links and FORWARD rules of harness runs
    whose process is gone; the names removed."""
    removed = []
    for bridge, rule in _forward_rules():
        owner = _owner(bridge)
        if owner is not None and owner != os.getpid() and not _alive(owner):
            _remove_forwarding(rule)
            removed.append(f"FORWARD rule of {bridge}")
    for namespace in _namespaces():
        owner = _owner(namespace)
        if owner is not None and owner != os.getpid() and not _alive(owner):
            _delete_namespace(namespace)
            removed.append(namespace)
    for link in _links():
        owner = _owner(link)
        if owner is not None and owner != os.getpid() and not _alive(owner):
            _run("ip", "link", "delete", link, check=False)
            removed.append(link)
    return removed


class Namespaces:
    """``nodes`` network namespaces on one bridge (a :class:`~tests.integration.clusters.
    Placement`): node ``index`` runs in its own namespace at its own address."""

    def __init__(self, nodes: int) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("network namespaces need root (ip netns)")
        if shutil.which("ip") is None or not os.access(_IPTABLES, os.X_OK):
            raise RuntimeError("the partition harness needs iproute2 (ip) and iptables")
        self.nodes = nodes
        serial = _base36(next(_counter) % 36, 1)
        self.tag = f"{PREFIX}{_base36(os.getpid(), _PID_WIDTH)}{serial}"
        self.bridge = f"{self.tag}b"
        self.network: ipaddress.IPv4Network | None = None
        self._created: list[str] = []  # namespaces, in creation order
        self._forwarding: list[str] | None = None  # the FORWARD rule added for the bridge

    def namespace(self, index: int) -> str:
        return f"{self.tag}-{index}"

    @property
    def gateway(self) -> str:
        """The bridge's address: where the nodes see this namespace's clients come from."""
        return str(self._net[1])

    @property
    def _net(self) -> ipaddress.IPv4Network:
        if self.network is None:
            raise RuntimeError("the namespaces are not created yet")
        return self.network

    def host(self, index: int) -> str:
        return str(self._net[11 + index])

    def command(self, index: int, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(index), *args]

    def create(self) -> Self:
        """Remove leftovers of crashed runs, then create the bridge and the namespaces."""
        with open(_LOCK, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs never pick the same subnet
            remove_leftovers()
            self.network = self._free_subnet()
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            self._forwarding = _allow_forwarding(self.bridge)
        for index in range(self.nodes):
            namespace, outside, inside = (
                self.namespace(index),
                f"{self.tag}v{index}",
                f"{self.tag}p{index}",
            )
            _run("ip", "netns", "add", namespace)
            self._created.append(namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", namespace)
            _run("ip", "link", "set", outside, "master", self.bridge, "up")
            inns = ("ip", "netns", "exec", namespace)
            _run(*inns, "ip", "addr", "add", f"{self.host(index)}/24", "dev", inside)
            _run(*inns, "ip", "link", "set", inside, "up")
            _run(*inns, "ip", "link", "set", "lo", "up")
            _run(*inns, _IPTABLES, "-w", "-S")  # iptables must work in there: fail now if not
        return self

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = [
            ipaddress.ip_interface(line.split()[3]).network
            for line in _run("ip", "-o", "-4", "addr", "show").splitlines()
        ]
        for third in range(256):
            candidate = ipaddress.IPv4Network(_SUBNETS.format(third))
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise RuntimeError("no free 10.213.N.0/24 subnet for the partition harness")

    def cut(self, index: int) -> None:
        """Drop all traffic between node ``index`` and every other node (both ways), inside
        its namespace; the bridge address (this namespace's clients) stays reachable."""
        inns = ("ip", "netns", "exec", self.namespace(index), _IPTABLES, "-w")
        for other in range(self.nodes):
            if other != index:
                _run(*inns, "-A", "INPUT", "-s", self.host(other), "-j", "DROP")
                _run(*inns, "-A", "OUTPUT", "-d", self.host(other), "-j", "DROP")

    def heal(self, index: int) -> None:
        inns = ("ip", "netns", "exec", self.namespace(index), _IPTABLES, "-w")
        _run(*inns, "-F", "INPUT")
        _run(*inns, "-F", "OUTPUT")

    def remove(self) -> None:
        """Delete the namespaces (killing what still runs in them), the bridge and any veth
        end a failed start left here."""
        for namespace in self._created:
            _delete_namespace(namespace)
        self._created.clear()
        for link in _links():
            if link.startswith(self.tag):
                _run("ip", "link", "delete", link, check=False)
        if self._forwarding is not None:
            _remove_forwarding(self._forwarding)
            self._forwarding = None

    def leftovers(self) -> list[str]:
        """This harness's namespaces, links and FORWARD rules that still exist (empty after
        :meth:`remove`)."""
        names = _namespaces() + _links() + [bridge for bridge, _ in _forward_rules()]
        return [name for name in names if name.startswith(self.tag)]


class NamespacedRedisCluster(RedisClusterProcesses):
    """A :class:`~tests.integration.clusters.RedisClusterProcesses` whose nodes each run in a
    network namespace of their own (:class:`Namespaces`), so one can be partitioned."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2_000):
        self.network = Namespaces(masters * (1 + replicas))
        super().__init__(masters, replicas, node_timeout_ms=node_timeout_ms, placement=self.network)

    def start(self) -> Self:
        self.network.create()
        return super().start()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.network.remove()

    def cut(self, port: int) -> None:
        """Partition the node on ``port`` from every other node; clients here still reach it."""
        self.network.cut(self.ports.index(port))

    def heal(self, port: int) -> None:
        self.network.heal(self.ports.index(port))

    def replicas_of(self, port: int) -> list[int]:
        """The ports of the replicas replicating from the master on ``port`` (its INFO
        replication: gossip may not have told it yet what CLUSTER NODES would show)."""
        replicas = []
        for key, value in self._info(port).items():
            if key.startswith("slave") and key[5:].isdigit():
                fields = dict(item.split("=", 1) for item in value.split(","))
                replicas.append(int(fields["port"]))
        return replicas

    def cluster_state(self, port: int) -> str:
        """``ok`` or ``fail``: the node's own view (a cut-off master turns ``fail``)."""
        for line in self.cli(port, "CLUSTER", "INFO").splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_replica_promoted(self, replicas: list[int], *, within: float = 30) -> int:
        """Wait until one of ``replicas`` (of a cut-off master) is a master, asking them (the
        cut-off master still calls itself master); its port."""
        if not replicas:
            raise RuntimeError("a master without replicas has none to promote")
        deadline = time.monotonic() + within
        while True:
            for port in replicas:
                if self.role(port) == "master" and self.cluster_state(port) == "ok":
                    return port
            if time.monotonic() > deadline:
                raise RuntimeError(f"none of {replicas} was promoted within {within}s")
            time.sleep(0.1)


if __name__ == "__main__":
    print("removed:", remove_leftovers() or "nothing")
