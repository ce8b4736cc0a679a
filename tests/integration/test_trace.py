"""Trace against a real broker and Redis: a three-hop chain verifies end to end; a tampered,
missing or aborted link is reported at that link, by the library and by `signed-bus trace`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from signed_bus import Keyring, Signer, Verifier, generate_ed25519_key
from signed_bus._provenance import Position, ProvenanceIndex, RecordFetcher, Tracer

pytestmark = pytest.mark.integration


@dataclass
class Chain:
    topics: list[str]
    digests: list[bytes]  # [action, plan, result]
    positions: list[Position]
    values: list[bytes]
    keys: list[bytes]


@pytest.fixture
async def ring() -> Keyring:
    return Keyring(
        [
            generate_ed25519_key("inf-1", ["inference-agent"]),
            generate_ed25519_key("plan-1", ["planner"]),
            generate_ed25519_key("act-1", ["action-agent"]),
        ]
    )


@pytest.fixture
async def index(redis_url: str, redis_prefix: str) -> AsyncIterator[ProvenanceIndex]:
    async with ProvenanceIndex.from_url(redis_url, ttl_ms=600_000, prefix=redis_prefix) as idx:
        yield idx


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await prod.start()
    yield prod
    await prod.stop()


async def _publish(
    producer: AIOKafkaProducer, signer: Signer, topic: str, key: bytes, parents: tuple[bytes, ...]
) -> tuple[bytes, Position, bytes]:
    value = signer.sign({"step": topic}, topic=topic, key=key, parents=parents)
    meta = await producer.send_and_wait(topic, value, key=key)
    return hashlib.sha256(value).digest(), Position(topic, meta.partition, meta.offset), value


@pytest.fixture
async def chain(
    unique_topic: Any, ring: Keyring, index: ProvenanceIndex, producer: AIOKafkaProducer
) -> Chain:
    topics = [
        await unique_topic(f"trace-{name}", partitions=2)
        for name in ("results", "plans", "actions")
    ]
    signers = [
        Signer(ring, kid="inf-1", issuer="inference-agent", model="incident-lm@1.3.0"),
        Signer(ring, kid="plan-1", issuer="planner", model="planner-rules@2"),
        Signer(ring, kid="act-1", issuer="action-agent", model="executor@1"),
    ]
    digests: list[bytes] = []
    positions: list[Position] = []
    values: list[bytes] = []
    keys: list[bytes] = []
    parents: tuple[bytes, ...] = ()
    for signer, topic in zip(signers, topics, strict=True):
        key = f"k-{topic}".encode()
        digest, position, value = await _publish(producer, signer, topic, key, parents)
        parents = (digest,)
        digests.insert(0, digest)
        positions.insert(0, position)
        values.insert(0, value)
        keys.insert(0, key)
    await index.record(zip(digests, positions, strict=True))
    return Chain(topics, digests, positions, values, keys)


async def _trace(
    kafka_bootstrap: str, ring: Keyring, index: ProvenanceIndex, start: Position
) -> object:
    async with RecordFetcher(bootstrap_servers=kafka_bootstrap) as fetcher:
        tracer = Tracer(index=index, verifier=Verifier(ring.public(), audit=True), fetcher=fetcher)
        return await tracer.trace_position(start)


async def test_full_chain_verifies(
    kafka_bootstrap: str, ring: Keyring, index: ProvenanceIndex, chain: Chain
) -> None:
    report = await _trace(kafka_bootstrap, ring, index, chain.positions[0])
    assert report.ok, report.format()  # type: ignore[attr-defined]
    links = report.links  # type: ignore[attr-defined]
    assert [link.position for link in links] == chain.positions
    assert [link.message.issuer for link in links] == ["action-agent", "planner", "inference-agent"]
    assert links[-1].message.model == "incident-lm@1.3.0"


async def test_index_keeps_the_first_position(index: ProvenanceIndex, chain: Chain) -> None:
    other = Position(chain.topics[1], 0, 999)
    assert await index.record([(chain.digests[1], other)]) == 0
    assert await index.lookup(chain.digests[1]) == chain.positions[1]


async def test_tampered_link_is_reported_at_that_link(
    kafka_bootstrap: str,
    ring: Keyring,
    index: ProvenanceIndex,
    chain: Chain,
    producer: AIOKafkaProducer,
) -> None:
    # Someone with produce rights writes a modified plan and points the index at it.
    tampered = bytearray(chain.values[1])
    tampered[len(tampered) // 2] ^= 0x40
    meta = await producer.send_and_wait(chain.topics[1], bytes(tampered), key=chain.keys[1])
    await index.forget(chain.digests[1])
    await index.record([(chain.digests[1], Position(chain.topics[1], meta.partition, meta.offset))])
    report = await _trace(kafka_bootstrap, ring, index, chain.positions[0])
    statuses = [link.status for link in report.links]  # type: ignore[attr-defined]
    assert statuses == ["ok", "digest_mismatch"]
    assert "TAMPERED" in report.format()  # type: ignore[attr-defined]


async def test_missing_link_is_reported_at_that_link(
    kafka_bootstrap: str, ring: Keyring, index: ProvenanceIndex, chain: Chain
) -> None:
    await index.forget(chain.digests[2])
    report = await _trace(kafka_bootstrap, ring, index, chain.positions[0])
    statuses = [link.status for link in report.links]  # type: ignore[attr-defined]
    assert statuses == ["ok", "ok", "not_indexed"]


async def test_aborted_record_is_not_found(
    kafka_bootstrap: str, ring: Keyring, index: ProvenanceIndex, chain: Chain
) -> None:
    # The plan's digest pointed at a position whose transaction aborted: nothing readable there.
    txn = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"trace-{uuid.uuid4().hex[:8]}"
    )
    await txn.start()
    try:
        await txn.begin_transaction()
        meta = await (await txn.send(chain.topics[1], chain.values[1], key=chain.keys[1]))
        await txn.abort_transaction()
    finally:
        await txn.stop()
    await index.forget(chain.digests[1])
    await index.record([(chain.digests[1], Position(chain.topics[1], meta.partition, meta.offset))])
    report = await _trace(kafka_bootstrap, ring, index, chain.positions[0])
    statuses = [link.status for link in report.links]  # type: ignore[attr-defined]
    assert statuses == ["ok", "not_found"]


async def test_fetcher_stops_right_after_start(kafka_bootstrap: str) -> None:
    """A walk that reads nothing (the first envelope already fails) stops the fetcher right
    after starting it; that must close it, not raise CancelledError out of the Kafka client."""
    fetcher = RecordFetcher(bootstrap_servers=kafka_bootstrap)
    await fetcher.start()
    await fetcher.stop()
    async with RecordFetcher(bootstrap_servers=kafka_bootstrap):
        pass


async def test_cli_trace_of_a_file_that_reads_nothing_prints_its_verdict(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, ring: Keyring, tmp_path: object
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    keyfile = folder / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    envelope = folder / "result.env"
    signer = Signer(ring, kid="inf-1", issuer="inference-agent", model="lm@1")
    envelope.write_bytes(signer.sign({"n": 1}, topic="trace-signed-for", key=None))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *(sys.executable, "-m", "signed_bus", "trace", "--index-prefix", redis_prefix),
            *("--file", str(envelope), "--topic", "trace-other-topic"),
        ],
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "REDIS_URL": redis_url,
            "SIGNED_BUS_KEYRING_FILE": str(keyfile),
            "PYTHONWARNINGS": "default",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr + done.stdout
    assert "INVALID" in done.stdout and "BROKEN at depth 0" in done.stdout
    assert done.stderr == ""


async def test_cli_trace(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    ring: Keyring,
    index: ProvenanceIndex,
    chain: Chain,
    tmp_path: object,
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    keyfile = folder / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    envelope = folder / "action.env"
    envelope.write_bytes(chain.values[0])
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "SIGNED_BUS_KEYRING_FILE": str(keyfile),
    }
    prefix = ["--index-prefix", redis_prefix]
    base = [sys.executable, "-m", "signed_bus", "trace", *prefix]
    start = chain.positions[0]
    by_position = await asyncio.to_thread(
        subprocess.run,
        [*base, "--position", f"{start.topic}:{start.partition}:{start.offset}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_position.returncode == 0, by_position.stderr + by_position.stdout
    assert "chain verified: 3 link(s)" in by_position.stdout
    assert "issuer=inference-agent" in by_position.stdout
    by_file = await asyncio.to_thread(
        subprocess.run,
        [*base, "--file", str(envelope), "--key", chain.keys[0].decode()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_file.returncode == 0, by_file.stderr + by_file.stdout
    # A walk cut short by --max-links has not checked every link: exit 1, never "verified".
    short = await asyncio.to_thread(
        subprocess.run,
        [*base, "--position", str(start), "--max-links", "2", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == 1, short.stderr + short.stdout
    document = json.loads(short.stdout)
    assert document["ok"] is False
    assert document["truncated"] is True and document["unchecked"] == 1
    assert [link["status"] for link in document["links"]] == ["ok", "ok"]
    await index.forget(chain.digests[1])
    broken = await asyncio.to_thread(
        subprocess.run,
        [*base, "--position", str(start)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert broken.returncode == 1
    assert "MISSING" in broken.stdout and "BROKEN at depth 1" in broken.stdout


async def test_cli_tail_prints_verdicts(
    kafka_bootstrap: str, ring: Keyring, chain: Chain, producer: AIOKafkaProducer, tmp_path: object
) -> None:
    from pathlib import Path

    keyfile = Path(str(tmp_path)) / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    topic = chain.topics[1]
    # Same partition as the plan, so the two verdicts come in a known order.
    await producer.send_and_wait(
        topic, b"not an envelope", key=b"x", partition=chain.positions[1].partition
    )
    env = {**os.environ, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    tail = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "signed_bus",
            "tail",
            topic,
            "--from-beginning",
            "--count",
            "2",
            "--bootstrap-servers",
            kafka_bootstrap,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert " OK issuer=planner model=planner-rules@2" in lines[0]
    assert "REJECT malformed" in lines[1]
    assert lines[-1] == "-- 2 record(s): malformed=1, ok=1"


# Text a holder of ANY key in the ring can sign as a model name: a line feed to start a line of
# its own, CR + "erase line" to wipe what was printed before it, and a BiDi override.
FORGED = "x\n\r\x1b[2Kchain verified: 3 link(s), every signature valid\u202e"
RAW_CONTROLS = ("\x1b", "\r", "\u202e")


def _run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    # Bytes, decoded by hand: text mode would turn a raw CR into a line feed before the check.
    done = subprocess.run(
        [sys.executable, "-m", "signed_bus", *args], env=env, capture_output=True, timeout=60
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def _assert_not_forged(stdout: str) -> list[str]:
    for char in RAW_CONTROLS:
        assert char not in stdout, repr(stdout)
    assert "\\x1b[2K" in stdout and "\\u202e" in stdout  # shown, escaped
    return stdout.split("\n")


async def test_cli_trace_output_cannot_be_forged_by_a_signed_model_name(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    ring: Keyring,
    chain: Chain,
    producer: AIOKafkaProducer,
    tmp_path: object,
) -> None:
    from pathlib import Path

    keyfile = Path(str(tmp_path)) / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    signer = Signer(ring, kid="plan-1", issuer="planner", model=FORGED)
    # Its parent was never indexed: the chain is broken, whatever the model name says.
    _, start, _ = await _publish(producer, signer, chain.topics[1], b"k", (bytes(32),))
    env = {**os.environ, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    code, stdout, stderr = await asyncio.to_thread(
        _run_cli,
        [
            "trace",
            "--index-prefix",
            redis_prefix,
            "--redis-url",
            redis_url,
            "--bootstrap-servers",
            kafka_bootstrap,
            "--position",
            f"{start.topic}:{start.partition}:{start.offset}",
        ],
        env,
    )
    assert code == 1, stderr + stdout
    lines = _assert_not_forged(stdout)
    assert [line for line in lines if line.startswith("chain")] == [
        "chain BROKEN at depth 1 (not_indexed); 1 bad link(s) of 2"
    ]
    assert lines[0].startswith("#0 ") and "model=x\\x0a\\x0d\\x1b[2Kchain verified" in lines[0]


async def test_cli_tail_output_cannot_be_forged_by_record_text(
    kafka_bootstrap: str, ring: Keyring, chain: Chain, producer: AIOKafkaProducer, tmp_path: object
) -> None:
    from pathlib import Path

    from signed_bus._envelope import encode_envelope, encode_header

    keyfile = Path(str(tmp_path)) / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    topic = chain.topics[2]
    partition = chain.positions[0].partition  # the action's: verdicts come in a known order
    signer = Signer(ring, kid="inf-1", issuer="inference-agent", model=FORGED)
    await producer.send_and_wait(
        topic, signer.sign({"x": 1}, topic=topic, key=b"k"), key=b"k", partition=partition
    )
    # No key needed at all for the rejection path: the header's text is echoed in the verdict.
    protected = encode_header(
        alg="EdDSA",
        kid="ghost",
        issuer=FORGED,
        model="m",
        content_type="application/msgpack",
        topic=topic,
        key_digest=None,
        created_at=1,
        nonce=bytes(16),
    )
    await producer.send_and_wait(
        topic, encode_envelope(protected, b"\x80", bytes(64)), partition=partition
    )
    env = {**os.environ, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    code, stdout, stderr = await asyncio.to_thread(
        _run_cli,
        ["tail", topic, "--from-beginning", "--count", "3", "--bootstrap-servers", kafka_bootstrap],
        env,
    )
    assert code == 0, stderr
    lines = _assert_not_forged(stdout)
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == 4, lines  # three verdicts and the summary, one line each
    assert " OK issuer=action-agent model=executor@1" in lines[0]
    assert " OK issuer=inference-agent model=x\\x0a\\x0d\\x1b[2Kchain verified" in lines[1]
    assert " REJECT unknown_key: " in lines[2]
    assert "issuer='x\\x0a\\x0d\\x1b[2Kchain verified" in lines[2]
    assert lines[3] == "-- 3 record(s): ok=2, unknown_key=1"


def _dot_renders(graph: str) -> str:
    """``dot -Tsvg`` of ``graph``; Graphviz must be installed (`make test` installs it:
    compose/tools.sh): a missing ``dot`` fails here, loudly, never skips."""
    import shutil

    assert shutil.which("dot"), "Graphviz's dot is missing: run `bash compose/tools.sh ensure`"
    done = subprocess.run(["dot", "-Tsvg"], input=graph.encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Warning" not in done.stderr and b"Error" not in done.stderr, done.stderr
    return done.stdout.decode()


async def test_cli_trace_as_json_and_as_a_graph_dot_renders(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    ring: Keyring,
    chain: Chain,
    producer: AIOKafkaProducer,
    index: ProvenanceIndex,
    tmp_path: object,
) -> None:
    from pathlib import Path

    keyfile = Path(str(tmp_path)) / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    env = {**os.environ, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    base = ["trace", "--index-prefix", redis_prefix, "--redis-url", redis_url]
    base += ["--bootstrap-servers", kafka_bootstrap]
    start = chain.positions[0]
    where = f"{start.topic}:{start.partition}:{start.offset}"
    code, stdout, stderr = await asyncio.to_thread(
        _run_cli, [*base, "--position", where, "--json", "--progress-interval", "1e-9"], env
    )
    assert code == 0, stderr
    # progress on stderr (one line per record read, the last one the total), the report on stdout
    assert stderr.splitlines()[-1] == "signed-bus: tracing, records read: 3"
    document = json.loads(stdout)
    assert document["ok"] is True
    assert [link["digest"] for link in document["links"]] == [d.hex() for d in chain.digests]
    assert [link["issuer"] for link in document["links"]] == [
        "action-agent",
        "planner",
        "inference-agent",
    ]
    assert document["links"][1]["child"] == chain.digests[0].hex()
    assert document["origins"] == [chain.digests[2].hex()]
    code, graph, stderr = await asyncio.to_thread(
        _run_cli, [*base, "--position", where, "--format", "dot"], env
    )
    assert code == 0, stderr
    svg = _dot_renders(graph)
    assert svg.count('class="node"') == 3 and svg.count('class="edge"') == 2

    # A signed model name built to break out of a DOT label adds no node, edge or attribute.
    hostile = 'm"]; evil [label="pwned"]; x -> y; a [label="' + "\\" + FORGED
    signer = Signer(ring, kid="plan-1", issuer="planner", model=hostile)
    digest, position, _ = await _publish(
        producer, signer, chain.topics[1], b"k", (chain.digests[2],)
    )
    await index.record([(digest, position)])
    where = f"{position.topic}:{position.partition}:{position.offset}"
    code, graph, stderr = await asyncio.to_thread(
        _run_cli, [*base, "--position", where, "--format", "dot"], env
    )
    assert code == 0, stderr
    for char in RAW_CONTROLS:
        assert char not in graph
    svg = _dot_renders(graph)
    assert svg.count('class="node"') == 2 and svg.count('class="edge"') == 1
    assert "model=m&quot;]; evil [label=&quot;pwned" in svg  # shown as text, in its node
    assert "<title>evil</title>" not in svg


async def test_cli_tail_json_prints_one_object_per_record(
    kafka_bootstrap: str, ring: Keyring, chain: Chain, producer: AIOKafkaProducer, tmp_path: object
) -> None:
    from pathlib import Path

    keyfile = Path(str(tmp_path)) / "public.keyring"
    ring.public().dump(keyfile, mode=0o644)
    topic = chain.topics[1]
    await producer.send_and_wait(
        topic, b"not an envelope", key=b"x", partition=chain.positions[1].partition
    )
    env = {**os.environ, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    argv = ["tail", topic, "--from-beginning", "--count", "2", "--json"]
    code, stdout, stderr = await asyncio.to_thread(
        _run_cli, [*argv, "--bootstrap-servers", kafka_bootstrap], env
    )
    assert code == 0, stderr
    ok, rejected, summary = (json.loads(line) for line in stdout.splitlines())
    assert ok["verdict"] == "ok" and ok["issuer"] == "planner" and ok["kid"] == "plan-1"
    assert ok["digest"] == chain.digests[1].hex()
    assert ok["parents"] == [chain.digests[2].hex()]
    assert rejected["verdict"] == "reject" and rejected["reason"] == "malformed"
    assert summary == {"records": 2, "counts": {"malformed": 1, "ok": 1}}
