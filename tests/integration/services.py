"""Private Kafka brokers and Redis servers for tests that stop, kill or restart a service.

They are started by the same launcher as the shared services (``compose/local.sh`` with
``--dir``/``--*-port``), so they use the same jars, server.properties template, readiness checks
and pid files. The shared services on 9092/6379 are never touched.

    with RedisProcess() as redis_server:          # free port, own folder, PING-ready
        url = redis_server.url
        redis_server.stop()                       # SIGTERM, waits for exit
        redis_server.start()                      # empty again: no persistence

    with KafkaProcess() as kafka:                 # free ports, own data folder, metadata-ready
        bootstrap = kafka.bootstrap
        kafka.restart()                           # stop + start, data kept
        kafka.kill()                              # SIGKILL: a crash; start() recovers the log

Every call blocks (a broker start takes a few seconds); inside async tests use
``await asyncio.to_thread(kafka.restart)`` so clients on the event loop keep running.
Ports default to ``free_port()`` (kernel-chosen, so parallel runs do not collide); pass fixed
ports (Redis 6390+, Kafka 19092+) if a test needs them. Folders default to a fresh one under
``.services/tests/``, deleted on ``__exit__``; a folder you pass is kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "compose" / "local.sh"
HOST = "127.0.0.1"

__all__ = ["KafkaProcess", "RedisProcess", "ServiceError", "free_port"]


class ServiceError(RuntimeError):
    """compose/local.sh failed; the message carries its output (log tails included)."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _free_port_pair() -> tuple[int, int]:
    """Two distinct free ports (broker and controller)."""
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _pid_alive(pid_file: Path, *patterns: str) -> int | None:
    """The pid in ``pid_file`` if that process lives and its command line has every pattern."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() + " "
    except (OSError, ValueError):
        return None
    if all(p in cmdline for p in patterns):
        return pid
    return None


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.05)
    raise ServiceError(f"process {pid} still alive after {timeout:.0f}s")


class Started:
    """A context manager over ``start()`` and ``close()``: ``with X() as x`` starts, and closes
    on the way out, also when ``start`` itself fails half way (every harness process class)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProcessGroup(Started):
    """Processes this object launched itself (``_procs``) in a folder it owns: ``close`` stops
    them (SIGTERM, then SIGKILL after ``stop_timeout_s``) and deletes the folder."""

    stop_timeout_s: float = 10
    directory: Path
    _procs: dict[int, subprocess.Popen[bytes]]

    def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Service(Started):
    name = ""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self._owns_dir = directory is None
        if directory is None:
            base = REPO / ".services" / "tests"
            base.mkdir(parents=True, exist_ok=True)
            directory = tempfile.mkdtemp(prefix=f"{self.name}-", dir=base)
        self.directory = Path(directory).resolve()

    # subclasses
    def _port_args(self) -> list[str]:
        raise NotImplementedError

    def _pid_file(self) -> Path:
        raise NotImplementedError

    def _patterns(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _serving_port(self) -> int:
        raise NotImplementedError

    def _launcher(self, command: str, timeout: float) -> str:
        args = ["bash", str(LOCAL_SH), command, "--only", self.name, "--dir", str(self.directory)]
        if command == "up":
            args.append("--no-reuse")  # a port someone else serves must not pass for ours
        try:
            done = subprocess.run(
                [*args, *self._port_args()],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"local.sh {command} {self.name} took over {timeout:.0f}s") from exc
        if done.returncode != 0:
            raise ServiceError(
                f"local.sh {command} {self.name} exited {done.returncode}\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    @property
    def pid(self) -> int | None:
        """The live process's pid, or None when it does not run."""
        return _pid_alive(self._pid_file(), *self._patterns())

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self) -> Self:
        """Start (or keep) the service and return once it serves; ServiceError with logs if not."""
        self._launcher("up", timeout=240)
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM), waiting for the process to exit. No-op when stopped."""
        self._launcher("down", timeout=120)

    def kill(self) -> None:
        """SIGKILL, like a crash or an OOM kill: no shutdown. ``start()`` brings it back."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 30)
        # a dead thread group leader can show as a zombie while its other threads still tear
        # down (and hold the sockets): also wait for the port to close
        deadline = time.monotonic() + 30
        while self.serves():
            if time.monotonic() > deadline:
                raise ServiceError(f"{self!r}: port still open 30s after SIGKILL")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a hung server)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def restart(self) -> Self:
        """``stop()`` then ``start()``."""
        self.stop()
        return self.start()

    def serves(self) -> bool:
        """Whether something accepts connections on the service's port."""
        return _port_open(self._serving_port())

    def close(self) -> None:
        """Stop (killing a paused process), and delete the folder if this object created it."""
        self.resume()
        try:
            self.stop()
        finally:
            if self._owns_dir:
                shutil.rmtree(self.directory, ignore_errors=True)


class RedisProcess(_Service):
    """A redis-server on 127.0.0.1:``port`` (no persistence: a restart starts empty, a loss
    of the replay state; ``persistent=True``: a graceful :meth:`stop` first saves a snapshot
    the restart loads, an outage that loses nothing)."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        persistent: bool = False,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.persistent = persistent
        super().__init__(directory)

    def stop(self) -> None:
        if self.persistent and self.is_running():
            # redis-server loads dump.rdb from its --dir at start, whatever its save settings
            subprocess.run(
                ["redis-cli", "-h", HOST, "-p", str(self.port), "SHUTDOWN", "SAVE"],
                capture_output=True,
                timeout=30,
                check=False,  # the connection closes under the command
                stdin=subprocess.DEVNULL,
            )
        super().stop()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis" / str(self.port) / "redis.log"

    def _port_args(self) -> list[str]:
        return ["--redis-port", str(self.port)]

    def _pid_file(self) -> Path:
        return self.directory / "redis" / str(self.port) / "redis.pid"

    def _patterns(self) -> tuple[str, ...]:
        return ("redis-server", f":{self.port} ")  # the space: port 639 must not match 6399

    def _serving_port(self) -> int:
        return self.port

    def __repr__(self) -> str:
        return f"RedisProcess(port={self.port}, directory={str(self.directory)!r})"


class KafkaProcess(_Service):
    """A combined KRaft broker+controller on 127.0.0.1:``port`` / ``controller_port``.

    Its log survives ``stop()``/``kill()``/``restart()``: records and committed offsets are still
    there after a restart. ``data_dir`` holds the instance (``<data_dir>/kafka/<port>/``).
    """

    name = "kafka"

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is None and controller_port is None:
            port, controller_port = _free_port_pair()
        elif port is None:
            port = free_port()
        if controller_port is None:
            controller_port = free_port()
        if port == controller_port:
            raise ValueError("port and controller_port must differ")
        self.port = port
        self.controller_port = controller_port
        super().__init__(data_dir)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka" / str(self.port) / "logs" / "server.log"

    def _port_args(self) -> list[str]:
        return ["--kafka-port", str(self.port), "--controller-port", str(self.controller_port)]

    def _pid_file(self) -> Path:
        return self.directory / "kafka" / str(self.port) / "kafka.pid"

    def _patterns(self) -> tuple[str, ...]:
        props = self.directory / "kafka" / str(self.port) / "server.properties"
        return ("kafka.Kafka", f"{props} ")

    def _serving_port(self) -> int:
        return self.port

    def __repr__(self) -> str:
        return (
            f"KafkaProcess(port={self.port}, controller_port={self.controller_port}, "
            f"data_dir={str(self.directory)!r})"
        )
