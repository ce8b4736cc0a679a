"""Readiness probe for a Kafka broker: one real Metadata request, standard library only.

compose/local.sh runs it before any virtual environment exists, so it speaks the Kafka wire
protocol itself: ApiVersions v0 (always supported) to learn which Metadata versions the broker
serves, then a non-flexible Metadata request (v4..v8; Kafka 4 removed v0-v3) for no topics. The
broker is ready when it answers with a cluster id and lists itself at the address we dialled.

Usage: python3 metadata.py HOST PORT [TIMEOUT_SECONDS]    exit 0 = ready, 1 = not ready
"""

from __future__ import annotations

import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return value


def call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> Reader:
    client_id = b"signed-bus-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    frame = header + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    reader = Reader(recv_exact(sock, size))
    if reader.take(">i") != corr:
        raise RuntimeError("correlation id mismatch")
    return reader


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def probe(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        versions = call(sock, API_VERSIONS, 0, 1, b"")
        error = versions.take(">h")
        if error:
            raise RuntimeError(f"ApiVersions error code {error}")
        metadata_range = None
        for _ in range(versions.take(">i")):
            key, low, high = versions.take(">h"), versions.take(">h"), versions.take(">h")
            if key == API_METADATA:
                metadata_range = (low, high)
        if metadata_range is None:
            raise RuntimeError("broker does not serve Metadata")
        version = max(4, metadata_range[0])
        if version > min(8, metadata_range[1]):
            raise RuntimeError(f"no non-flexible Metadata version in {metadata_range}")
        # topics: empty array (no topics, brokers only); allow_auto_topic_creation: false
        meta = call(sock, API_METADATA, version, 2, struct.pack(">ib", 0, 0))
        meta.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(meta.take(">i")):
            node_id = meta.take(">i")
            b_host = meta.string()
            b_port = meta.take(">i")
            meta.string()  # rack
            brokers.append((node_id, b_host, b_port))
        cluster_id = meta.string()
        controller_id = meta.take(">i")
    if not cluster_id:
        raise RuntimeError("no cluster id yet")
    if not any(b_host == host and b_port == port for _, b_host, b_port in brokers):
        raise RuntimeError(f"broker list {brokers} does not include {host}:{port}")
    return f"cluster {cluster_id}, controller {controller_id}, brokers {brokers}"


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    timeout = float(argv[3]) if len(argv) > 3 else 5.0
    try:
        print(probe(host, port, timeout))
    except (OSError, RuntimeError, struct.error) as exc:
        print(f"metadata request to {host}:{port} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
