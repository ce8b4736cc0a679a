"""Multi-node services on loopback for scale and fault tests: a Redis Cluster of 3 masters with
1 replica each (real redis-server processes, free ports, a folder of their own) and a 3-node
KRaft Kafka cluster (each node broker and controller; replication factor 3, min.insync.replicas
2; the jars of compose/local.sh, ``$KAFKA_LIB_DIR`` or ``.services/kafka/lib``).

In a test::

    with RedisClusterProcesses() as cluster:
        url = cluster.url  # a seed node: RedisReplayGuard.from_url(url, cluster=True)
        port = cluster.master_of(slot)
        cluster.kill(port)  # kill -9
        cluster.wait_promoted(port)  # its replica took over

For a local scale test by hand (Ctrl-C stops and removes everything)::

    python -m tests.integration.clusters

Every process is stopped and the folder removed when the block ends, also on failure.

Where a node runs is a :class:`Placement` (the default, :class:`Loopback`: a process of this
network namespace on 127.0.0.1); tests/integration/netns.py places each node in a network
namespace of its own, to cut one off from the others.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Protocol, Self

from tests.integration.services import ProcessGroup

__all__ = ["KafkaClusterProcesses", "Loopback", "Placement", "RedisClusterProcesses"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


def _free_pair() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _cli(port: int, *args: str, host: str = HOST, timeout: float = 10) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout


class Placement(Protocol):
    """Where node ``index`` (0-based, in start order) of a Redis Cluster runs."""

    def host(self, index: int) -> str:
        """The address the node binds and announces to clients and to the other nodes."""

    def command(self, index: int, args: list[str]) -> list[str]:
        """The command line that launches the node, given the redis-server command line."""


class Loopback:
    """Every node a process of this network namespace, on 127.0.0.1."""

    def host(self, index: int) -> str:
        return HOST

    def command(self, index: int, args: list[str]) -> list[str]:
        return args


class RedisClusterProcesses(ProcessGroup):
    """``masters`` redis-server masters with ``replicas`` replicas each, as one Redis Cluster
    (no persistence; ``node_timeout_ms`` decides how fast a replica takes over)."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 2_000,
        placement: Placement | None = None,
    ):
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli must be installed")
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms = node_timeout_ms
        self.placement = placement or Loopback()
        self.directory = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports: list[int] = []
        #: the address of the node on each port
        self.hosts: dict[int, str] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._args: dict[int, list[str]] = {}

    @property
    def url(self) -> str:
        alive = [port for port in self.ports if self._procs[port].poll() is None]
        return f"redis://{self.hosts[alive[0]]}:{alive[0]}"

    def cli(self, port: int, *args: str, timeout: float = 10) -> str:
        """``redis-cli`` against the node on ``port``: its standard output."""
        return _cli(port, *args, host=self.hosts[port], timeout=timeout)

    def start(self) -> Self:
        for index in range(self.masters * (1 + self.replicas)):
            port = _free_pair()
            while port in self.hosts:  # a node elsewhere (a namespace) leaves its port free here
                port = _free_pair()
            host = self.hosts[port] = self.placement.host(index)
            folder = self.directory / str(port)
            folder.mkdir()
            args = ["redis-server", "--bind", host, "--port", str(port), "--cluster-enabled",
                    "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-announce-ip", host, "--protected-mode", "no",
                    "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "",
                    "--appendonly", "no", "--dir", str(folder),
                    "--repl-diskless-sync-delay", "0"]  # fmt: skip
            self._args[port] = self.placement.command(index, args)
            self._procs[port] = subprocess.Popen(
                self._args[port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.ports.append(port)
        for port in self.ports:
            self._wait(lambda port=port: self.cli(port, "PING").strip() == "PONG", f"{port} up")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{self.hosts[p]}:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_settled()
        return self

    def wait_settled(self, *, within: float = 60) -> None:
        """Wait until every live node sees ``cluster_state:ok``, there are ``masters``
        masters, and each has ``replicas`` replicas that finished their first sync."""
        self._wait(self._settled, "every node to see cluster_state:ok and its replicas", within)

    def _settled(self) -> bool:
        alive = [port for port in self.ports if self._procs[port].poll() is None]
        if not all("cluster_state:ok" in self.cli(port, "CLUSTER", "INFO") for port in alive):
            return False
        masters = [port for port in alive if self.role(port) == "master"]
        online = [
            sum("state=online" in v for k, v in self._info(port).items() if k.startswith("slave"))
            for port in masters
        ]  # replicas that finished their first sync
        return len(masters) == self.masters and all(n >= self.replicas for n in online)

    def _info(self, port: int) -> dict[str, str]:
        lines = self.cli(port, "INFO", "replication").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def role(self, port: int) -> str:
        return self._info(port).get("role", "")

    def master_of(self, slot: int) -> int:
        """The port of the master serving ``slot`` now."""
        for port in self.ports:
            if self._procs[port].poll() is not None:
                continue
            for line in self.cli(port, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "master" not in fields[2] or "fail" in fields[2]:
                    continue
                for part in fields[8:]:
                    first, _, last = part.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        return int(fields[1].split(":")[1].split("@")[0])
            break
        raise RuntimeError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """kill -9: no shutdown, no last replication."""
        proc = self._procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def restart(self, port: int) -> None:
        """Start a killed node again (empty: no persistence); it rejoins as a replica."""
        self._procs[port] = subprocess.Popen(
            self._args[port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait(lambda: self.cli(port, "PING").strip() == "PONG", f"{port} up")

    def wait_promoted(self, killed: int, *, within: float = 60) -> int:
        """Wait until a replica of the killed master serves its slots and the cluster is ok;
        the new master's port."""
        slots = self._slots_of(killed)
        deadline = time.monotonic() + within
        while True:
            try:
                port = self.master_of(slots)
            except RuntimeError:
                port = killed
            alive = [p for p in self.ports if self._procs[p].poll() is None]
            if port != killed and all(
                "cluster_state:ok" in self.cli(p, "CLUSTER", "INFO") for p in alive
            ):
                return port
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {killed} within {within}s")
            time.sleep(0.2)

    def _slots_of(self, port: int) -> int:
        """One slot the node on ``port`` served (read from a live node's view)."""
        for other in self.ports:
            if other == port or self._procs[other].poll() is not None:
                continue
            for line in self.cli(other, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if fields[1].split("@")[0].endswith(f":{port}") and len(fields) > 8:
                    return int(fields[8].partition("-")[0])
        raise RuntimeError(f"node {port} served no slot")

    def _wait(self, ready: object, what: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not ready():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)


_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
"""


class KafkaClusterProcesses(ProcessGroup):
    """``nodes`` KRaft nodes (broker and controller each) on free loopback ports."""

    stop_timeout_s = 30

    def __init__(self, nodes: int = 3, *, heap: str = "320m") -> None:
        lib = Path(os.environ.get("KAFKA_LIB_DIR", REPO / ".services" / "kafka" / "lib"))
        if not any(lib.glob("*.jar")) or shutil.which("java") is None:
            raise RuntimeError(f"no Kafka jars in {lib} or no java: run compose/local.sh up once")
        self.lib, self.heap, self.nodes = lib, heap, nodes
        self.directory = Path(tempfile.mkdtemp(prefix="kafka-cluster-"))
        self.ports = [_free_pair() for _ in range(nodes)]
        self.controllers = [_free_pair() for _ in range(nodes)]
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={REPO / 'compose' / 'kafka' / 'log4j2.properties'}",
                "-cp", f"{self.lib}/*", *args]  # fmt: skip

    def start(self) -> Self:
        voters = ",".join(f"{n + 1}@{HOST}:{c}" for n, c in enumerate(self.controllers))
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cluster_id = "A" + cluster_id[1:]  # never a leading "-"
        for n, port in enumerate(self.ports):
            folder = self.directory / str(n + 1)
            (folder / "data").mkdir(parents=True)
            props = folder / "server.properties"
            props.write_text(_KAFKA_PROPERTIES.format(
                node=n + 1, voters=voters, host=HOST, port=port,
                controller=self.controllers[n], data=folder / "data"))  # fmt: skip
            subprocess.run(
                self._java(f"-Dkafka.logs.dir={folder}", "kafka.tools.StorageTool", "format", "-t",
                           cluster_id, "-c", str(props)),
                check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        for n in range(self.nodes):  # all at once: a node serves once a majority votes
            self.start_node(n, wait=False)
        for n in range(self.nodes):
            self._wait_serving(n)
        return self

    def start_node(self, n: int, *, wait: bool = True) -> None:
        """Start node ``n`` (0-based), again after :meth:`kill`; with ``wait``, return once
        it serves."""
        folder = self.directory / str(n + 1)
        args = self._java(
            f"-Dkafka.logs.dir={folder}", "kafka.Kafka", f"{folder}/server.properties"
        )
        with open(folder / "kafka.out", "ab") as out:
            self._procs[n] = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if wait:
            self._wait_serving(n)

    def _wait_serving(self, n: int) -> None:
        folder = self.directory / str(n + 1)
        deadline = time.monotonic() + 180
        while not _port_open(self.ports[n]):
            if self._procs[n].poll() is not None or time.monotonic() > deadline:
                log = folder / "server.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"kafka node {n + 1} did not start:\n{tail}")
            time.sleep(0.2)

    def kill(self, n: int) -> None:
        """kill -9 of node ``n`` (0-based)."""
        proc = self._procs[n]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


if __name__ == "__main__":
    with (
        RedisClusterProcesses() as cluster,
        KafkaClusterProcesses() as kafka,
        contextlib.suppress(KeyboardInterrupt),
    ):
        print(f"Redis Cluster (3 masters, 1 replica each): {cluster.url}", flush=True)
        print(f"Kafka (3 KRaft nodes, RF 3, min.insync.replicas 2): {kafka.bootstrap}", flush=True)
        print("Ctrl-C stops and removes both", flush=True)
        while True:
            time.sleep(3600)
