"""Where a run happened: CPU, cores, load, Python, library and service versions.

Figures without their machine are meaningless, so every report starts with this.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "describe_machine", "kafka_version"]

_LIBRARIES = ("signed-bus", "aiokafka", "redis", "msgpack", "cryptography", "standardwebhooks")
_KAFKA_JAR = re.compile(r"^kafka_[0-9.]+-(?P<version>[0-9][0-9A-Za-z.\-]*)\.jar$")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def kafka_version(search_roots: list[Path] | None = None) -> str:
    """The broker's version, read from the jar the local launcher runs.

    The Kafka protocol does not report a broker's release, so this looks for the broker jar
    (``kafka_<scala>-<version>.jar``) where compose/local.sh puts it; ``KAFKA_VERSION`` in the
    environment overrides (for a broker started some other way).
    """
    if override := os.environ.get("KAFKA_VERSION"):
        return override
    if search_roots is None:
        search_roots = [Path.cwd() / ".services", Path(__file__).resolve().parents[2] / ".services"]
        if lib_dir := os.environ.get("KAFKA_LIB_DIR"):
            search_roots.insert(0, Path(lib_dir))
    roots = search_roots
    for root in roots:
        if not root.is_dir():
            continue
        for jar in sorted(root.rglob("kafka_*.jar")):
            match = _KAFKA_JAR.match(jar.name)
            if match:
                return match.group("version")
    return "unknown (set KAFKA_VERSION)"


def describe_machine(*, redis_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able description of this host; ``redis_info`` is INFO server of the Redis used."""
    try:
        load: list[float] | None = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    redis_info = redis_info or {}
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": load,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kafka": kafka_version(),
        "redis": redis_info.get("redis_version", "unknown"),
        "redis_allocator": redis_info.get("mem_allocator", "unknown"),
        "libraries": _library_versions(),
    }
