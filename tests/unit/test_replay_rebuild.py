"""The rebuild's ordering and verification rules without I/O."""

from __future__ import annotations

from signed_bus._freshness import Freshness
from signed_bus._keys import Keyring, generate_hmac_key
from signed_bus._replay.layout import ClaimRow
from signed_bus._replay.rebuild import _audit, _in_log_order
from signed_bus._verifier import Verifier


def _row(topic: str, partition: int, offset: int) -> ClaimRow:
    return ("issuer", offset.to_bytes(16, "big"), 0, topic, partition, offset)


def test_a_later_offset_never_sorts_before_an_earlier_one_of_its_partition() -> None:
    stamps = {("t", 0, 0): 1_000, ("t", 0, 1): 500, ("t", 0, 2): 1_200, ("t", 1, 0): 800,
              ("u", 0, 0): 1_100}  # fmt: skip
    rows = [((stamp, t, p, o), _row(t, p, o)) for (t, p, o), stamp in reversed(stamps.items())]
    _in_log_order(rows)
    # the backdated offset 1 counts with its partition's highest timestamp so far (1,000);
    # across partitions the timestamps decide
    assert [(t, p, o) for (_, t, p, o), _ in rows] == [
        ("t", 1, 0), ("t", 0, 0), ("t", 0, 1), ("u", 0, 0), ("t", 0, 2),
    ]  # fmt: skip
    assert [key[0] for key, _ in rows] == [800, 1_000, 1_000, 1_100, 1_200]


def test_the_rebuild_verifies_with_an_audit_copy_on_the_same_keyring() -> None:
    ring = Keyring([generate_hmac_key("k1", ["issuer"])])
    window = Freshness(max_age_ms=60_000)
    consumer = Verifier(ring, freshness=window, max_envelope_bytes=4_096)
    audit = _audit(consumer)
    assert audit.audit and not consumer.audit
    assert audit._keyring is ring and audit.freshness is window
    assert audit.max_envelope_bytes == 4_096
    assert _audit(audit) is audit
