"""Kafka and Redis in containers, started by testcontainers, for the ``containers`` backend.

tests/conftest.py uses this module when ``SERVICES_BACKEND=containers`` (or when a container
engine answers and KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are not set). The images are settings:

    KAFKA_IMAGE   default apache/kafka:4.1.2   (compose/images.sh builds signed-bus/kafka:local)
    REDIS_IMAGE   default redis:7              (compose/images.sh builds signed-bus/redis:local)

Both images take the same configuration (the official apache/kafka image's KAFKA_* variables).
Kafka is reachable from the host on an ephemeral port that is published 1:1 (host port P to
container port P), so the broker's advertised listener 127.0.0.1:P is the address clients
dial; a second listener (``<container name>:19092``) serves other containers. Readiness is a
real Metadata answer from the host (compose/kafka/metadata.py) and a Redis PING.

No Ryuk reaper (its image comes from a registry): every container carries the labels
``signed-bus.tests=1`` and ``signed-bus.owner=<host>:<pid>``; ``remove_session_containers``
removes this process's at session end, and ``reap_orphans`` removes those whose owner process is
gone (a run that was killed), when the next run starts containers.

Container-level faults for tests (``ServiceContainer``): ``kill()`` + ``start()`` (SIGKILL,
then the same container again, data in its writable layer kept), ``pause()``/``unpause()`` (the
cgroup freezer: the process is alive, its sockets stay open, nothing answers), and
``disconnect()``/``connect()`` (the network link goes).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEFAULT_KAFKA_IMAGE = "apache/kafka:4.1.2"  # the same Kafka version as compose/kafka/pom.xml
DEFAULT_REDIS_IMAGE = "redis:7"
ENGINE_SOCKET = "/run/signed-bus-engine/podman.sock"  # compose/engine.sh
LABEL = "signed-bus.tests"
OWNER_LABEL = "signed-bus.owner"
OWNER = f"{socket.gethostname()}:{os.getpid()}"
INTERNAL_PORT = 19092  # the listener other containers use
CONTROLLER_PORT = 29093

# testcontainers reads its settings when imported: never start the Ryuk reaper (no registry)
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

__all__ = [
    "ContainerServices",
    "ServiceContainer",
    "docker_host",
    "engine_answers",
    "reap_orphans",
    "remove_session_containers",
]


def _ping_unix(path: str) -> bool:
    # a raw /_ping: the docker SDK leaks its socket when the engine is missing, which
    # filterwarnings=error would turn into an unraisable-exception failure elsewhere
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def docker_host() -> str | None:
    """The Docker API address that answers: DOCKER_HOST, else Docker's socket, else the podman
    service of compose/engine.sh; None when no engine answers."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        if host.startswith("unix://"):
            return host if _ping_unix(host.removeprefix("unix://")) else None
        return host if _ping_sdk() else None  # tcp://, ssh://, TLS: the SDK speaks them
    for path in ("/var/run/docker.sock", ENGINE_SOCKET):
        if _ping_unix(path):
            return f"unix://{path}"
    return None


def _ping_sdk() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def engine_answers() -> bool:
    """True when a container engine answers (and DOCKER_HOST then names it)."""
    host = docker_host()
    if host is None:
        return False
    os.environ["DOCKER_HOST"] = host
    return True


def _client() -> Any:
    import docker

    return docker.from_env(timeout=60)


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's (a shared engine): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(where: Callable[[Mapping[str, str]], bool]) -> list[str]:
    client = _client()
    removed = []
    try:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            if where(container.labels):
                container.remove(force=True, v=True)
                removed.append(container.name)
    finally:
        client.close()
    return removed


_created = False  # whether this process created a container (remove_session_containers)


def remove_session_containers() -> list[str]:
    """Remove every container this process started (labels); the names removed."""
    if not _created:
        return []
    return _remove(lambda labels: labels.get(OWNER_LABEL) == OWNER)


def reap_orphans() -> list[str]:
    """Remove test containers whose owner process no longer runs (a killed run's)."""
    return _remove(lambda labels: not _owner_alive(labels.get(OWNER_LABEL, "")))


def _metadata_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "signed_bus_metadata_probe", REPO / "compose" / "kafka" / "metadata.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _publish(container: Any, container_port: int, host_port: int) -> Any:
    """Publish on loopback only (``with_bind_ports`` takes no address: it would bind 0.0.0.0);
    docker-py takes ``(address, port)`` for a port binding."""
    container.ports[f"{container_port}/tcp"] = (HOST, host_port)
    return container


class ServiceError(RuntimeError):
    """A container did not become ready; the message carries its last log lines."""


class ServiceContainer:
    """One service container (Kafka or Redis) with its host port and container-level faults."""

    kind = ""

    def __init__(self, image: str, host_port: int, name: str) -> None:
        self.image = image
        self.host_port = host_port
        self.name = name
        self._tc: Any = None
        self._network: Any = None

    # -- lifecycle ------------------------------------------------------------------------
    def _container(self) -> Any:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 120) -> None:
        """Start the container (create it the first time) and wait until it serves."""
        if self._tc is None:
            global _created
            _created = True
            self._tc = self._container()
            self._tc.with_name(self.name).with_kwargs(
                labels={LABEL: "1", OWNER_LABEL: OWNER, "signed-bus.service": self.kind}
            )
            self._tc.start()
        else:
            self.wrapped.start()
        self.wait_ready(timeout)

    @property
    def wrapped(self) -> Any:
        """The docker SDK's Container object."""
        assert self._tc is not None, "not started"
        return self._tc.get_wrapped_container()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.wrapped.reload()
            if self.wrapped.status == "exited":
                raise ServiceError(f"{self.name} exited during startup:\n{self.logs()}")
            if self.ready():
                return
            time.sleep(0.3)
        raise ServiceError(f"{self.name} not ready after {timeout:.0f}s:\n{self.logs()}")

    def logs(self, lines: int = 40) -> str:
        try:
            return str(self.wrapped.logs(tail=lines).decode(errors="replace"))
        except Exception as exc:
            return f"(no logs: {exc})"

    def remove(self) -> None:
        if self._tc is not None:
            self._tc.stop(force=True, delete_volume=True)
            self._tc = None

    # -- faults ---------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the service (a crash); ``start()`` brings the same container back."""
        self.wrapped.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.wrapped.reload()
            if self.wrapped.status != "running":
                return
            time.sleep(0.1)
        raise ServiceError(f"{self.name} still running 30 s after SIGKILL")

    def pause(self) -> None:
        """Freeze every process of the container (cgroup freezer): connections stay open but
        nothing answers, as with a stalled host."""
        self.wrapped.pause()

    def unpause(self) -> None:
        self.wrapped.unpause()

    def disconnect(self) -> None:
        """Take the container off its network: published ports stop answering (packets go
        nowhere, as with a cut link); ``connect()`` puts it back, ports included."""
        self.wrapped.reload()
        name = next(iter(self.wrapped.attrs["NetworkSettings"]["Networks"]))
        self._network = self.wrapped.client.networks.get(name)
        self._network.disconnect(self.wrapped)

    def connect(self) -> None:
        assert self._network is not None, "disconnect() first"
        self._network.connect(self.wrapped)
        self._network = None


class KafkaContainer(ServiceContainer):
    """Single-node KRaft Kafka; host clients use ``bootstrap`` (127.0.0.1:<ephemeral>)."""

    kind = "kafka"

    def __init__(self, image: str, name: str) -> None:
        super().__init__(image, _free_port(), name)
        self._probe = _metadata_module().probe

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.host_port}"

    def _container(self) -> Any:
        from testcontainers.core.container import DockerContainer

        port = self.host_port
        env = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{CONTROLLER_PORT}",
            # HOST: host clients through the port published 1:1; PLAINTEXT: other containers
            "KAFKA_LISTENERS": (
                f"CONTROLLER://:{CONTROLLER_PORT},HOST://:{port},PLAINTEXT://:{INTERNAL_PORT}"
            ),
            "KAFKA_ADVERTISED_LISTENERS": (
                f"HOST://{HOST}:{port},PLAINTEXT://{self.name}:{INTERNAL_PORT}"
            ),
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,HOST:PLAINTEXT"
            ),
            "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "CLUSTER_ID": "c2lnbmVkLWJ1cy10ZXN0cw",
            "KAFKA_LOG_DIRS": "/var/lib/kafka/data",
            "KAFKA_NUM_PARTITIONS": "1",
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_HEAP_OPTS": "-Xms512m -Xmx512m",
        }
        container = DockerContainer(self.image).with_envs(**env)
        # 1:1, so the advertised 127.0.0.1:<port> is right both inside and outside
        return _publish(container, port, port)

    def ready(self) -> bool:
        try:
            self._probe(HOST, self.host_port, 3.0)
        except (OSError, RuntimeError, ValueError, IndexError, Exception):
            return False
        return True


class RedisContainer(ServiceContainer):
    """Redis without persistence; host clients use ``url``."""

    kind = "redis"

    def __init__(self, image: str, name: str) -> None:
        super().__init__(image, _free_port(), name)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.host_port}/0"

    def _container(self) -> Any:
        from testcontainers.core.container import DockerContainer

        command = [
            "redis-server", "--bind", "0.0.0.0", "--protected-mode", "no",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        container = DockerContainer(self.image).with_command(command)
        return _publish(container, 6379, self.host_port)

    def ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.host_port), timeout=2) as sock:
                sock.settimeout(2)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class ContainerServices:
    """The session's Kafka and Redis containers (created lazily, each on first use)."""

    def __init__(self) -> None:
        self.kafka_image = os.environ.get("KAFKA_IMAGE") or DEFAULT_KAFKA_IMAGE
        self.redis_image = os.environ.get("REDIS_IMAGE") or DEFAULT_REDIS_IMAGE
        self._tag = uuid.uuid4().hex[:8]
        self._kafka: KafkaContainer | None = None
        self._redis: RedisContainer | None = None
        self._private: list[ServiceContainer] = []

    def kafka(self) -> KafkaContainer:
        if self._kafka is None:
            kafka = KafkaContainer(self.kafka_image, f"signed-bus-test-kafka-{self._tag}")
            self._kafka = kafka
            kafka.start()
        return self._kafka

    def redis(self) -> RedisContainer:
        if self._redis is None:
            redis = RedisContainer(self.redis_image, f"signed-bus-test-redis-{self._tag}")
            self._redis = redis
            redis.start(timeout=60)
        return self._redis

    def private_kafka(self) -> KafkaContainer:
        """A Kafka container of the caller's own (for faults), removed by ``close``."""
        kafka = KafkaContainer(self.kafka_image, f"signed-bus-test-kafka-{uuid.uuid4().hex[:8]}")
        self._private.append(kafka)
        kafka.start()
        return kafka

    def private_redis(self) -> RedisContainer:
        """A Redis container of the caller's own (for faults), removed by ``close``."""
        redis = RedisContainer(self.redis_image, f"signed-bus-test-redis-{uuid.uuid4().hex[:8]}")
        self._private.append(redis)
        redis.start(timeout=60)
        return redis

    def close(self) -> None:
        for service in (self._kafka, self._redis, *self._private):
            if service is not None:
                service.remove()
        self._kafka = self._redis = None
        self._private.clear()
