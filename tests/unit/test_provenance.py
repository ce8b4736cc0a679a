"""The trace walk over an in-memory index and log: chains, joins, and every kind of bad link."""

from __future__ import annotations

import hashlib

import pytest

from signed_bus._keys import Keyring, generate_ed25519_key
from signed_bus._provenance import (
    FetchedRecord,
    Position,
    ProvenanceIndex,
    ProvenanceIndexUnavailable,
    Tracer,
    TraceReport,
    iso_ms,
)
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import ConfigurationError

T0 = 1_700_000_000_000


class FakeIndex:
    def __init__(self) -> None:
        self.positions: dict[bytes, Position] = {}

    async def lookup(self, digest: bytes) -> Position | None:
        return self.positions.get(digest)


class FakeLog:
    def __init__(self) -> None:
        self.records: dict[Position, FetchedRecord] = {}

    async def fetch(self, position: Position) -> FetchedRecord | None:
        return self.records.get(position)


class World:
    """Three agents, a log and an index; ``publish`` appends and indexes like the auditor."""

    def __init__(self) -> None:
        self.ring = Keyring(
            [
                generate_ed25519_key("inf-1", ["inference-agent"]),
                generate_ed25519_key("plan-1", ["planner"]),
                generate_ed25519_key("act-1", ["action-agent"]),
            ]
        )
        self.index = FakeIndex()
        self.log = FakeLog()
        self.offsets: dict[str, int] = {}

    def signer(self, kid: str, issuer: str, model: str, ring: Keyring | None = None) -> Signer:
        return Signer(ring or self.ring, kid=kid, issuer=issuer, model=model, clock=lambda: T0)

    def publish(
        self, signer: Signer, topic: str, parents: tuple[bytes, ...] = (), index: bool = True
    ) -> tuple[bytes, Position, bytes]:
        key = f"k{len(self.log.records)}".encode()
        value = signer.sign({"n": len(self.log.records)}, topic=topic, key=key, parents=parents)
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        position = Position(topic, 0, offset)
        self.log.records[position] = FetchedRecord(position, key, value, T0, 1)
        digest = hashlib.sha256(value).digest()
        if index:
            self.index.positions[digest] = position
        return digest, position, value

    def tracer(self, ring: Keyring | None = None) -> Tracer:
        verifier = Verifier((ring or self.ring).public(), audit=True)
        return Tracer(index=self.index, verifier=verifier, fetcher=self.log)

    def chain(self) -> tuple[list[bytes], list[Position]]:
        r, rp, _ = self.publish(self.signer("inf-1", "inference-agent", "lm@1"), "results")
        p, pp, _ = self.publish(self.signer("plan-1", "planner", "rules@2"), "plans", (r,))
        a, ap, _ = self.publish(self.signer("act-1", "action-agent", "exec@1"), "actions", (p,))
        return [a, p, r], [ap, pp, rp]


async def test_full_chain_verifies_back_to_the_model_output() -> None:
    world = World()
    digests, positions = world.chain()
    report = await world.tracer().trace_position(positions[0])
    assert report.ok
    assert [link.digest for link in report.links] == digests
    assert [link.position for link in report.links] == positions
    assert [link.depth for link in report.links] == [0, 1, 2]
    assert [link.message.issuer for link in report.links if link.message] == [
        "action-agent",
        "planner",
        "inference-agent",
    ]
    assert [o.digest for o in report.origins] == [digests[2]]
    text = report.format()
    assert "issuer=inference-agent model=lm@1" in text
    assert "[origin]" in text
    assert "chain verified: 3 link(s)" in text


async def test_trace_from_bytes_matches_trace_from_position() -> None:
    world = World()
    _, positions = world.chain()
    record = world.log.records[positions[0]]
    assert record.value is not None
    report = await world.tracer().trace_value(record.value, topic="actions", key=record.key)
    assert report.ok and len(report.links) == 3
    assert report.links[0].position is None


async def test_tampered_link_reported_at_that_link() -> None:
    world = World()
    digests, positions = world.chain()
    good = world.log.records[positions[1]]
    assert good.value is not None
    flipped = bytearray(good.value)
    flipped[-5] ^= 0x01
    world.log.records[positions[1]] = FetchedRecord(positions[1], good.key, bytes(flipped), T0, 1)
    report = await world.tracer().trace_position(positions[0])
    assert not report.ok
    assert [link.status for link in report.links] == ["ok", "digest_mismatch"]
    assert report.broken[0].depth == 1 and report.broken[0].digest == digests[1]
    assert "TAMPERED" in report.format() and "BROKEN at depth 1" in report.format()


async def test_missing_index_entry_reported_at_that_link() -> None:
    world = World()
    digests, positions = world.chain()
    del world.index.positions[digests[1]]
    report = await world.tracer().trace_position(positions[0])
    assert [link.status for link in report.links] == ["ok", "not_indexed"]
    assert "MISSING" in report.format()


async def test_record_gone_from_kafka_reported_at_that_link() -> None:
    world = World()
    _, positions = world.chain()
    del world.log.records[positions[2]]
    report = await world.tracer().trace_position(positions[0])
    assert [link.status for link in report.links] == ["ok", "ok", "not_found"]
    assert report.broken[0].position == positions[2]


async def test_link_signed_by_an_untrusted_key_is_invalid() -> None:
    world = World()
    rogue = Keyring([generate_ed25519_key("rogue-1", ["inference-agent"])])
    r, _, _ = world.publish(world.signer("rogue-1", "inference-agent", "lm@1", rogue), "results")
    _, pp, _ = world.publish(world.signer("plan-1", "planner", "rules@2"), "plans", (r,))
    report = await world.tracer().trace_position(pp)
    assert [link.status for link in report.links] == ["ok", "invalid"]
    assert report.links[1].reason == "unknown_key"


async def test_join_walks_every_parent_once() -> None:
    world = World()
    inference = world.signer("inf-1", "inference-agent", "lm@1")
    r1, _, _ = world.publish(inference, "results")
    r2, _, _ = world.publish(inference, "results")
    planner = world.signer("plan-1", "planner", "rules@2")
    p1, _, _ = world.publish(planner, "plans", (r1, r2))
    _, top, _ = world.publish(planner, "plans", (p1, r1))
    report = await world.tracer().trace_position(top)
    assert report.ok
    assert sorted(link.digest for link in report.links[1:]) == sorted([p1, r1, r2])
    assert {o.digest for o in report.origins} == {r1, r2}


async def test_a_walk_cut_short_by_max_links_is_not_verified() -> None:
    """A walk that stops at its link limit has not looked at every parent: one of those could be
    missing or forged, so the report must not say the chain verified."""
    world = World()
    inference = world.signer("inf-1", "inference-agent", "lm@1")
    r1, _, _ = world.publish(inference, "results")
    r2, _, _ = world.publish(inference, "results", index=False)  # missing: never checked
    planner = world.signer("plan-1", "planner", "rules@2")
    _, top, _ = world.publish(planner, "plans", (r1, r2))
    verifier = Verifier(world.ring.public(), audit=True)
    tracer = Tracer(index=world.index, verifier=verifier, fetcher=world.log, max_links=2)
    report = await tracer.trace_position(top)
    assert [link.status for link in report.links] == ["ok", "ok"]
    assert report.truncated and report.unchecked == 1
    assert not report.ok
    text = report.format()
    assert "chain verified" not in text
    assert "walk STOPPED at the limit of 2 link(s): at least 1 parent(s) not checked" in text
    # With room for every link the same chain is walked to the end, and the missing one found.
    whole = await Tracer(
        index=world.index, verifier=verifier, fetcher=world.log, max_links=3
    ).trace_position(top)
    assert not whole.truncated and whole.unchecked == 0
    assert [link.status for link in whole.links] == ["ok", "ok", "not_indexed"]


async def test_a_walk_that_ends_at_max_links_is_complete() -> None:
    world = World()
    _, positions = world.chain()
    verifier = Verifier(world.ring.public(), audit=True)
    tracer = Tracer(index=world.index, verifier=verifier, fetcher=world.log, max_links=3)
    report = await tracer.trace_position(positions[0])
    assert report.ok and not report.truncated
    assert "chain verified: 3 link(s)" in report.format()


@pytest.mark.parametrize("limit", [0, -1])
def test_max_links_must_be_positive(limit: int) -> None:
    world = World()
    verifier = Verifier(world.ring.public(), audit=True)
    with pytest.raises(ConfigurationError, match="max_links"):
        Tracer(index=world.index, verifier=verifier, fetcher=world.log, max_links=limit)


async def test_start_position_without_a_record() -> None:
    world = World()
    report = await world.tracer().trace_position(Position("plans", 0, 99))
    assert not report.ok and report.links[0].status == "not_found"


def test_tracer_needs_an_audit_verifier() -> None:
    world = World()
    with pytest.raises(ConfigurationError):
        Tracer(index=world.index, verifier=Verifier(world.ring.public()), fetcher=world.log)


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("plans:2:41", Position("plans", 2, 41)),
        ("plans[2]@41", Position("plans", 2, 41)),
        ("a.b-c:0:0", Position("a.b-c", 0, 0)),
    ],
)
def test_position_parse(text: str, position: Position) -> None:
    assert Position.parse(text) == position
    assert Position.parse(str(position)) == position


@pytest.mark.parametrize("text", ["plans", "plans:x:1", "plans:1:-1", ":1:2", "plans[1]"])
def test_position_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError):
        Position.parse(text)


def test_empty_report_is_not_ok() -> None:
    assert not TraceReport().ok


def test_iso_ms_guards_instants_a_datetime_cannot_hold() -> None:
    assert iso_ms(T0) == "2023-11-14T22:13:20.000Z"
    assert iso_ms(2**63 - 1) == "out of range"
    assert iso_ms(-(2**63)) == "out of range"


async def test_huge_created_at_is_described_not_raised() -> None:
    """Audit mode does not judge freshness: a validly signed created_at of 2**63 - 1 reaches the
    report (and tail) and must print, not crash."""
    world = World()
    far = Signer(
        world.ring, kid="inf-1", issuer="inference-agent", model="lm@1", clock=lambda: 2**63 - 1
    )
    _, position, _ = world.publish(far, "results")
    report = await world.tracer().trace_position(position)
    assert report.ok
    assert "created_at=out of range" in report.format()
    from signed_bus._cli.tail import _describe

    assert "created_at=out of range" in _describe(report.links[0].message)


async def test_tombstone_at_an_indexed_position_is_a_broken_link() -> None:
    world = World()
    digests, positions = world.chain()
    gone = world.log.records[positions[1]]
    world.log.records[positions[1]] = FetchedRecord(positions[1], gone.key, None, T0, 1)
    report = await world.tracer().trace_position(positions[0])
    assert [link.status for link in report.links] == ["ok", "digest_mismatch"]
    assert report.broken[0].digest == digests[1]
    assert "TAMPERED" in report.format() and "tombstone" in report.format()


async def test_tombstone_at_the_start_position_is_missing() -> None:
    world = World()
    _, positions = world.chain()
    world.log.records[positions[0]] = FetchedRecord(positions[0], b"k", None, T0, 1)
    report = await world.tracer().trace_position(positions[0])
    assert [link.status for link in report.links] == ["not_found"]
    assert "MISSING" in report.format() and "tombstone" in report.format()


def test_index_from_a_malformed_url_never_shows_the_password() -> None:
    # The '/' ends the authority for URL parsers: "pa" is taken for the port, "ss@host..." for
    # the path, and the client's own error quotes them.
    with pytest.raises(ConfigurationError) as info:
        ProvenanceIndex.from_url("redis://user:pa/ss@host:6379/0", ttl_ms=1)
    text = str(info.value)
    assert "pa/ss" not in text and "'pa'" not in text and "ss@" not in text
    assert "redis://user:***@host:6379/0" in text
    assert info.value.__context__ is None and info.value.__cause__ is None


async def test_index_repr_and_errors_never_show_the_password() -> None:
    index = ProvenanceIndex.from_url(
        "redis://user:pa%2Fss@127.0.0.1:1/0", ttl_ms=1, socket_connect_timeout=2
    )
    assert "pa%2Fss" not in repr(index) and "user:***@127.0.0.1:1/0" in repr(index)
    async with index:
        with pytest.raises(ProvenanceIndexUnavailable) as info:
            await index.lookup(b"\x00" * 32)
    assert "pa%2Fss" not in str(info.value) and "pa/ss" not in str(info.value)
    assert "ConnectionError" in str(info.value)
    assert info.value.__context__ is None
