"""``signed-bus dlq`` as an operator runs it (subprocesses) against a real broker and Redis:
stats and show over a dead-letter topic, and a redrive that is idempotent through the guard."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signed_bus import Freshness, Keyring, Signer, VerifyingConsumer, generate_ed25519_key
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    guard,
    plain_producer,
    verifier,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N = 6
STALE_MS = 10 * 60 * 1000  # the records were signed ten minutes before they were consumed


async def cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "signed_bus", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "default", **env},
        timeout=120,
    )


async def test_dlq_stats_show_and_an_idempotent_redrive(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    unique_topic: TopicFactory,
    tmp_path: Path,
) -> None:
    source = await unique_topic("dlq-src", partitions=2)
    dead = await unique_topic("dlq-dead")
    key = generate_ed25519_key("agent-1", ["agent"])
    ring = Keyring([key])
    keyfile = tmp_path / "public.json"
    ring.public().dump(keyfile, mode=0o644)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}

    # Honest records that waited out an outage (expired for a 60 s window), one forgery whose
    # reason header an attacker could not make redrivable anyway, and a key with ESC in it.
    signer = Signer(
        ring,
        kid="agent-1",
        issuer="agent",
        model="m",
        clock=lambda: int(time.time() * 1000) - STALE_MS,
    )
    async with plain_producer(kafka_bootstrap) as producer:
        for seq in range(N):
            record_key = f"k-{seq}\x1b[2J".encode()
            value = signer.sign({"seq": seq}, topic=source, key=record_key)
            await producer.send_and_wait(source, value, key=record_key)
        forged = bytearray(signer.sign({"seq": "forged"}, topic=source, key=b"f"))
        forged[-1] ^= 1
        forged_meta = await producer.send_and_wait(source, bytes(forged), key=b"f")

    group = consumer_options(kafka_bootstrap, [source])
    narrow = Freshness(max_age_ms=60_000, future_skew_ms=5_000)
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            group, verifier=verifier(ring, freshness=narrow), guard=g, dead_letter_topic=dead
        )
        async with Running(consumer) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [source]))
    assert running.delivered == []
    assert dict(consumer.metrics.rejected) == {"expired": N, "bad_signature": 1}

    stats = await cli("dlq", "stats", dead, "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    counts = json.loads(stats.stdout)
    assert counts["letters"] == N + 1 and counts["not_dead_letters"] == 0
    assert counts["by_reason"] == {"bad_signature": 1, "expired": N}
    assert counts["by_source_topic"] == {source: N + 1}
    assert counts["first_ms"] <= counts["last_ms"]
    text = await cli("dlq", "stats", dead, "--progress-interval", "0.000001", env=env)
    assert text.returncode == 0 and "expired" in text.stdout and "first:" in text.stdout
    assert f"reading {dead}: {N + 1}/{N + 1} (100%)" in text.stderr

    shown = await cli("dlq", "show", dead, "--json", "--reason", "expired", env=env)
    assert shown.returncode == 0, shown.stderr
    letters = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(letters) == N and {letter["reason"] for letter in letters} == {"expired"}
    assert all(letter["envelope_unverified"]["issuer"] == "agent" for letter in letters)
    plain = await cli("dlq", "show", dead, env=env)
    assert plain.returncode == 0 and "\x1b" not in plain.stdout
    assert "\\x1b[2J" in plain.stdout and f"-- {N + 1} letter(s)" in plain.stdout

    # Never a signature failure: refused by reason, and by position too.
    refused = await cli("dlq", "redrive", dead, "--reason", "bad_signature", env=env)
    assert refused.returncode == 2 and "cannot be redriven" in refused.stderr
    forged_letter = next(
        letter
        for letter in map(
            json.loads, (await cli("dlq", "show", dead, "--json", env=env)).stdout.splitlines()
        )
        if letter["source_offset"] == forged_meta.offset
        and letter["source_partition"] == forged_meta.partition
    )
    by_position = f"{forged_letter['partition']}:{forged_letter['offset']}"
    skipped = await cli("dlq", "redrive", dead, "--position", by_position, env=env)
    assert skipped.returncode == 1
    assert "reason bad_signature cannot be redriven" in skipped.stdout

    # Never older than the guard's memory of claims: with the fleet's window as narrow as the
    # consumer's (retention 70 s), the ten-minute-old letters may have been delivered and
    # forgotten already, so their copies could pass as new: skipped, nothing sent.
    too_old = await cli(
        "dlq", "redrive", dead, "--reason", "expired", "--max-age-ms", "60000",
        "--max-lag-ms", "0", "--future-skew-ms", "5000", env=env,
    )  # fmt: skip
    assert too_old.returncode == 1, too_old.stderr + too_old.stdout
    assert too_old.stdout.count("longer ago than the replay guard remembers") == N
    assert f"-- redrove 0 letter(s), skipped {N}" in too_old.stdout

    # Redriven twice (an operator's retry): two copies of each letter reach the source topic.
    for _ in range(2):
        sent = await cli("dlq", "redrive", dead, "--reason", "expired", env=env)
        assert sent.returncode == 0, sent.stderr + sent.stdout
        assert f"-- redrove {N} letter(s), skipped 0" in sent.stdout

    # The same group, restarted with a window wide enough for the outage, delivers each once.
    wide = Freshness(max_age_ms=3_600_000, future_skew_ms=5_000)
    async with guard(redis_url, redis_prefix) as g:
        consumer = VerifyingConsumer.from_options(
            group, verifier=verifier(ring, freshness=wide), guard=g, dead_letter_topic=dead
        )
        async with Running(consumer) as running:
            await running.caught_up(await end_offsets(kafka_bootstrap, [source]))
    seqs = sorted(m.payload["seq"] for m in running.delivered)  # type: ignore[index]
    assert seqs == list(range(N))
    assert dict(consumer.metrics.rejected) == {"replay": N}
    assert all(
        m.headers and dict(m.headers).get("signed-bus-redriven-from") for m in running.delivered
    )


async def test_redrive_skips_a_letter_naming_a_partition_its_topic_lacks(
    kafka_bootstrap: str, unique_topic: TopicFactory, tmp_path: Path
) -> None:
    """The source partition is an unsigned header: a forged or stale letter may name one the
    topic does not have. That letter is skipped with a line saying why; the others are sent."""
    from signed_bus._deadletter import dead_letter_headers
    from signed_bus.errors import Expired

    source = await unique_topic("dlq-part-src")  # one partition: 0
    dead = await unique_topic("dlq-part-dead")
    ring = Keyring([generate_ed25519_key("agent-1", ["agent"])])
    keyfile = tmp_path / "public.json"
    ring.public().dump(keyfile, mode=0o644)
    signer = Signer(ring, kid="agent-1", issuer="agent", model="m")
    async with plain_producer(kafka_bootstrap) as producer:
        for partition in (5, 0):
            key = f"k-{partition}".encode()
            value = signer.sign({"partition": partition}, topic=source, key=key)
            headers = dead_letter_headers(
                Expired("late"), topic=source, partition=partition, offset=0
            )
            await producer.send_and_wait(dead, value, key=key, headers=headers)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SIGNED_BUS_KEYRING_FILE": str(keyfile)}
    done = await cli("dlq", "redrive", dead, "--reason", "expired", env=env)
    assert done.returncode == 1, done.stderr + done.stdout
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr, done.stderr
    assert f"skip {dead}[0]@0: {source} has no partition 5" in done.stdout, done.stdout
    assert "-- redrove 1 letter(s), skipped 1" in done.stdout
    assert await end_offsets(kafka_bootstrap, [source]) == {(source, 0): 1}
