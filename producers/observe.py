"""Metrics and traces for the reference agents: one call, ``observe()``, first thing in ``main``.

- ``SIGNED_BUS_METRICS_PORT`` set (1-65535): every producer, consumer and relay the agent builds
  counts into prometheus_client's default registry, served at ``http://<host>:<port>/metrics``
  (``SIGNED_BUS_METRICS_ADDR``, default ``0.0.0.0``). A value that is not a port prints one line
  naming the variable and exits with status 2. Unset or empty: no metrics, no server.
- Tracing: when the OpenTelemetry API is installed (extra ``signed-bus[otel]``) every front is
  traced through the global tracer provider; without an SDK configured that records nothing.
  Run an agent under ``opentelemetry-instrument`` (opentelemetry-distro and an exporter, set up
  by ``OTEL_*`` variables) to export its spans: docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

__all__ = ["METRICS_ADDR_ENV", "METRICS_PORT_ENV", "Served", "metrics_port", "observe"]

METRICS_PORT_ENV = "SIGNED_BUS_METRICS_PORT"
METRICS_ADDR_ENV = "SIGNED_BUS_METRICS_ADDR"


def metrics_port(environ: dict[str, str] | None = None) -> int | None:
    """The port from ``SIGNED_BUS_METRICS_PORT``, None when unset; a bad value exits 2."""
    raw = (os.environ if environ is None else environ).get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    port = int(raw) if raw.isdecimal() else 0
    if not 1 <= port <= 65_535:
        shown = raw if raw.isprintable() and len(raw) <= 20 else "(not shown)"
        print(f"{METRICS_PORT_ENV} must be a port number (1-65535), not {shown}", file=sys.stderr)
        raise SystemExit(2)
    return port


class Served:
    """What :func:`observe` started: the metrics server (if any); :meth:`close` undoes it all."""

    def __init__(self, server: Any, tracing: bool, metrics: bool) -> None:
        self.server = server
        self.tracing = tracing
        self.metrics = metrics

    @property
    def port(self) -> int | None:
        return None if self.server is None else int(self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.metrics:
            from signed_bus import prometheus

            prometheus.uninstrument_all()
        if self.tracing:
            from signed_bus import otel

            otel.uninstrument_all()


def observe() -> Served:
    """Serve /metrics when ``SIGNED_BUS_METRICS_PORT`` is set, trace when OpenTelemetry is
    installed (see the module docstring)."""
    port = metrics_port()
    server = None
    if port is not None:
        from prometheus_client import start_http_server

        from signed_bus import prometheus

        prometheus.instrument_all()
        addr = os.environ.get(METRICS_ADDR_ENV, "").strip() or "0.0.0.0"  # noqa: S104 - a scrape target
        server, _ = start_http_server(port, addr=addr)
    tracing = importlib.util.find_spec("opentelemetry") is not None
    if tracing:
        from signed_bus import otel

        otel.instrument_all()
    return Served(server, tracing, port is not None)
