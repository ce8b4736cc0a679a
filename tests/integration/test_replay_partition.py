"""A network partition of the Redis master a consumer claims on, not a crash: the nodes of a
Redis Cluster (3 masters with 1 replica each, then with 2) run in network namespaces
(tests/integration/netns.py), and the master of the busiest slot is cut off from every other
node while the consumers can still reach it. A replica is promoted on the majority side; the
partition heals and the old master rejoins as a replica, discarding what it took alone. Then
copies of every record are replayed through the same consumers on the real broker.

Two consumer groups read one stream at a steady rate, each with its own guard prefix: durable
claims on (a claim counts once a replica holds it) and off. Durable on: no copy is delivered
and every honest record is; with 1 replica the group delivers nothing from the cut to the heal
(the promoted master has no replica before), with 2 it resumes during the partition. Off: the
claims the cut-off master acknowledged alone are lost, so copies of those records pass as new;
the test prints how many (docs/OPERATIONS.md, "Network partitions") and asserts only that every
honest record was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from signed_bus._kafka.consumer import Backoff, VerifyingConsumer
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._keys import Keyring
from signed_bus._replay import RedisReplayGuard, bucket_key
from tests.conftest import TopicFactory
from tests.integration.bus import (
    Running,
    consumer_options,
    end_offsets,
    keyring,
    plain_producer,
    read_all,
    signer,
    unique,
    verifier,
)
from tests.integration.clusters import REPO
from tests.integration.netns import PREFIX, NamespacedRedisCluster, remove_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FAST = Backoff(initial_ms=50, max_ms=500)
#: the steady load: a batch of BATCH records every INTERVAL seconds (about 200/s)
BATCH, INTERVAL = 10, 0.05


@pytest.fixture(scope="module", params=[1, 2], ids=["1-replica", "2-replicas"])
def cluster(request: pytest.FixtureRequest) -> Iterator[NamespacedRedisCluster]:
    with NamespacedRedisCluster(
        masters=3, replicas=request.param, node_timeout_ms=2_000
    ) as started:
        yield started
    assert started.network.leftovers() == [], "the partition harness left namespaces or links"


@dataclass
class Group:
    name: str
    guard: RedisReplayGuard
    running: Running
    #: when each record was delivered (monotonic seconds)
    times: list[float]

    def delivered_between(self, start: float, end: float) -> int:
        return sum(start <= at < end for at in self.times)

    def delivered_from(self, first_seq: int, before: float) -> int:
        """Records numbered ``first_seq`` or later delivered before ``before``."""
        delivered = self.running.delivered
        return sum(
            m.payload["seq"] >= first_seq and at < before  # type: ignore[index]
            for m, at in zip(delivered, self.times, strict=True)
        )

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time without a delivery within [start, end]."""
        inside = [start, *(at for at in self.times if start <= at <= end), end]
        return max(b - a for a, b in itertools.pairwise(inside))


@contextlib.asynccontextmanager
async def _group(
    name: str, bootstrap: str, topic: str, url: str, ring: Keyring, *, durable_replicas: int = 0
) -> AsyncIterator[Group]:
    guard = RedisReplayGuard.from_url(
        url, cluster=True, prefix=unique(name), durable_replicas=durable_replicas,
        durable_timeout_ms=500,  # below the client's 2 s socket timeout
    )  # fmt: skip
    async with guard:
        consumer = VerifyingConsumer.from_options(
            consumer_options(bootstrap, [topic], unique(name)),
            verifier=verifier(ring),
            guard=guard,
            timeout_ms=200,
            backoff=FAST,
        )
        times: list[float] = []
        async with Running(consumer, lambda _: times.append(time.monotonic())) as running:
            yield Group(name, guard, running, times)


async def _load(producer: SignedProducer, topic: str, stop: asyncio.Event, sent: list[int]) -> None:
    """Signed records at a steady rate until ``stop``; their sequence numbers into ``sent``."""
    while not stop.is_set():
        first = len(sent)
        seqs = range(first, first + BATCH)
        await producer.send_batch(topic, [Outgoing({"seq": n}, key=b"%d" % n) for n in seqs])
        sent.extend(seqs)
        await asyncio.sleep(INTERVAL)


async def _delivered_at_least(groups: list[Group], count: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while any(len(g.running.delivered) < count for g in groups):
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} records delivered within {within}s")
        await asyncio.sleep(0.05)


async def _delivers(group: Group, first_seq: int, within: float = 20) -> None:
    """Wait until ``group`` delivered a record numbered ``first_seq`` or later."""
    deadline = time.monotonic() + within
    while not group.delivered_from(first_seq, before=time.monotonic()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{group.name}: nothing produced after the cut was delivered")
        await asyncio.sleep(0.05)


async def test_partitioned_master_durable_claims_deliver_no_copy(
    kafka_bootstrap: str, unique_topic: TopicFactory, cluster: NamespacedRedisCluster
) -> None:
    ring = keyring()
    topic = await unique_topic("partition", partitions=3)
    # every record signed at one instant: one time bucket, so one slot takes every claim
    created_at = int(time.time() * 1000)
    busiest = key_slot(bucket_key("any", created_at // 1_000, 0))  # the tag alone decides
    victim = await asyncio.to_thread(cluster.master_of, busiest)
    replicas = await asyncio.to_thread(cluster.replicas_of, victim)
    assert replicas, f"master {victim} has no replica"

    sent: list[int] = []
    stop = asyncio.Event()
    options = ProducerOptions(bootstrap_servers=kafka_bootstrap)
    async with (
        _group("durable", kafka_bootstrap, topic, cluster.url, ring, durable_replicas=1) as durable,
        _group("async", kafka_bootstrap, topic, cluster.url, ring) as plain,
        SignedProducer(options, signer=signer(ring, clock=lambda: created_at)) as producer,
    ):
        groups = [durable, plain]
        load = asyncio.create_task(_load(producer, topic, stop, sent))
        await _delivered_at_least(groups, 300)

        cut = time.monotonic()
        await asyncio.to_thread(cluster.cut, victim)  # the consumers still reach it
        # records from here on are sent (so claimed) after the cut took effect: the batch in
        # flight may not be
        after_cut = len(sent) + BATCH
        promoted = await asyncio.to_thread(cluster.wait_replica_promoted, replicas)
        promoted_at = time.monotonic()
        if cluster.replicas > 1:
            # another replica follows the promoted master: durable claims resume, cut or not
            await _delivers(durable, after_cut)
        await asyncio.sleep(1)  # claims keep coming while the old master is still cut off
        victim_state = await asyncio.to_thread(cluster.cluster_state, victim)
        sent_before_heal = len(sent)
        healing = time.monotonic()
        await asyncio.to_thread(cluster.heal, victim)
        healed = time.monotonic()
        await asyncio.to_thread(cluster.wait_settled)  # the old master is a synced replica
        rejoined = time.monotonic()
        assert cluster.role(victim) == "slave" and cluster.role(promoted) == "master"
        await asyncio.sleep(2)
        stop.set()
        await load

        ends = await end_offsets(kafka_bootstrap, [topic])
        await asyncio.gather(*(g.running.caught_up(ends, within=60) for g in groups))

        # copies of every record claimed before, during and after the partition
        originals = await read_all(kafka_bootstrap, topic, len(sent))
        honest_at = {(r.partition, r.offset) for r in originals}
        async with plain_producer(kafka_bootstrap) as copier:
            sending = [await copier.send(topic, r.value, key=r.key) for r in originals]
            await asyncio.gather(*sending)
        ends = await end_offsets(kafka_bootstrap, [topic])
        await asyncio.gather(*(g.running.caught_up(ends, within=60) for g in groups))

    copies = {}
    for group in groups:
        delivered = group.running.delivered
        seqs = {m.payload["seq"] for m in delivered}  # type: ignore[index]
        assert seqs == set(sent), f"{group.name}: {sorted(set(sent) - seqs)[:5]} never delivered"
        copies[group.name] = sum((m.partition, m.offset) not in honest_at for m in delivered)
        replays = group.running.consumer.metrics.rejected.get("replay", 0)
        assert copies[group.name] + replays == len(originals), group.name  # each copy counted
    counted = durable.guard.durable
    waits, short = (counted.waits, counted.short) if counted is not None else (0, 0)
    end = time.monotonic()

    def line(group: Group) -> str:
        return (
            f"{copies[group.name]} copies delivered; {group.delivered_between(cut, healed)} "
            f"records delivered while cut off; longest pause {group.longest_pause(cut, end):.1f}s; "
            f"held {group.running.consumer.metrics.guard_retries} times"
        )

    print(
        f"\nredis partition: {len(sent)} records at ~{BATCH / INTERVAL:.0f}/s into one slot; "
        f"master {victim} cut off, replica {promoted} promoted {promoted_at - cut:.1f}s later; "
        f"healed {healed - cut:.1f}s after the cut (the cut-off master's own view then: "
        f"cluster_state:{victim_state}); old master a synced replica {rejoined - healed:.1f}s "
        f"after the heal; {len(originals)} copies replayed.\n"
        f"  durable claims on:  {line(durable)} ({waits} WAITs, {short} short)\n"
        f"  durable claims off: {line(plain)}"
    )
    assert copies["durable"] == 0, f"{copies['durable']} copies passed durable claims as new"
    by_seq: dict[int, set[tuple[int, int]]] = {}
    for m in durable.running.delivered:
        by_seq.setdefault(m.payload["seq"], set()).add((m.partition, m.offset))  # type: ignore[index]
    assert all(len(at) == 1 for at in by_seq.values()), "a record delivered from two positions"
    # the durable guard held while the cut-off master could not replicate its claims
    assert short > 0 and durable.running.consumer.metrics.guard_retries > 0
    if cluster.replicas == 1:
        # ... and until the old master rejoined: before that the promoted one has no replica,
        # so nothing claimed after the cut was delivered before the heal
        assert sent_before_heal > after_cut, "nothing was sent during the partition"
        assert durable.delivered_from(after_cut, before=healing) == 0


def test_a_crashed_run_leaves_nothing_the_next_run_keeps() -> None:
    """A run killed with SIGKILL leaves namespaces, a bridge and a redis-server behind; the
    next harness start removes them (here: :func:`remove_leftovers`, which it calls)."""
    child = textwrap.dedent(
        """
        import os, signal, subprocess, sys
        from tests.integration.netns import Namespaces
        net = Namespaces(2).create()
        server = subprocess.Popen(net.command(0, ["redis-server", "--bind", net.host(0),
            "--port", "6390", "--save", ""]), stdout=subprocess.DEVNULL)
        print(net.tag, server.pid, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        tag, server = proc.stdout.readline().split()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -9
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag in left and _running(int(server)), "the crashed run left nothing to remove"
    assert f"{tag}b" in _forward_chain(), "the crashed run left no FORWARD rule to remove"

    removed = remove_leftovers()
    assert any(name.startswith(tag) for name in removed)
    left = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in left and tag.startswith(PREFIX)
    assert tag not in _forward_chain()
    deadline = time.monotonic() + 10
    while _running(int(server)):
        assert time.monotonic() < deadline, "the crashed run's redis-server still runs"
        time.sleep(0.05)


def _forward_chain() -> str:
    return subprocess.run(
        ["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout


def _running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie child of a dead parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
