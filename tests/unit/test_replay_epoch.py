"""The replay guard's loss detection without I/O: markers per slot, the epoch record, the
quarantine rule (signed_bus/_replay/epoch.py)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from signed_bus._replay.epoch import (
    LOST_REPLY,
    SLOTS,
    EpochState,
    is_lost,
    lost_error,
    marker_key,
    merge_verdicts,
    parse_epoch_record,
    quarantine_split,
)
from signed_bus._replay.layout import CLAIM_SCRIPT, ClaimRow, ClaimVerdict, bucket_key
from signed_bus.errors import ReplayGuardUnavailable, ReplayStateLost


def test_every_cluster_slot_has_a_marker_in_that_slot() -> None:
    keys = {marker_key("p", slot) for slot in range(SLOTS)}
    assert len(keys) == SLOTS
    assert all(key_slot(marker_key("p", slot)) == slot for slot in range(SLOTS))


def test_a_claim_call_names_the_marker_of_its_own_slot() -> None:
    for bucket in (0, 1, 1_767_225_600, 1_767_225_601):
        slot = key_slot(bucket_key("p", bucket, 3))
        assert key_slot(marker_key("p", slot)) == slot
    assert marker_key("p") == b"p:mark"


def test_the_claim_script_checks_the_marker_before_claiming() -> None:
    check = CLAIM_SCRIPT.index("redis.call('GET', KEYS[#KEYS]) ~= ARGV[3]")
    assert check < CLAIM_SCRIPT.index("HSETNX")
    assert "for i = 1, buckets do" in CLAIM_SCRIPT  # the marker gets no TTL
    assert is_lost(LOST_REPLY) and is_lost("L") and not is_lost(b"0") and not is_lost(None)


def test_the_epoch_record_parses_from_a_mapping_or_a_flat_list() -> None:
    flat = [b"epoch", b"ab12", b"lost_at", b"1700", b"covered", b"t1,t2", b"state", b"ready"]
    state = parse_epoch_record(flat)
    assert state == EpochState("ab12", 1700, frozenset({"t1", "t2"}), ready=True)
    mapping = {"epoch": "x", "lost_at": "0", "covered": "", "state": "rebuilding"}
    assert parse_epoch_record(mapping) == EpochState("x", 0, frozenset(), ready=False)
    assert parse_epoch_record({}) is None
    assert parse_epoch_record([]) is None
    assert parse_epoch_record({**mapping, "lost_at": "soon"}) is None
    assert parse_epoch_record({**mapping, "state": "maybe"}) is None
    assert parse_epoch_record(None) is None


def _row(created_at: int, topic: str = "t") -> ClaimRow:
    return ("iss", b"n" * 16, created_at, topic, 0, created_at)


def test_records_created_before_the_loss_are_quarantined_unless_their_topic_was_rebuilt() -> None:
    state = EpochState("e", lost_at=10_000, covered=frozenset({"rebuilt"}), ready=True)
    rows = [
        _row(9_000),  # before the loss
        _row(15_000),  # within the skew after it: may have been claimed before
        _row(15_001),  # after loss + skew: cannot have been claimed before
        _row(9_000, "rebuilt"),  # its topic was re-claimed from Kafka
    ]
    claim, held = quarantine_split(rows, state, future_skew_ms=5_000)
    assert (claim, held) == ([2, 3], [0, 1])
    never_lost = EpochState("e", lost_at=0, covered=frozenset(), ready=True)
    assert quarantine_split(rows, never_lost, 5_000) == ([0, 1, 2, 3], [])


def test_merged_verdicts_put_quarantined_where_nothing_was_claimed() -> None:
    merged = merge_verdicts(4, [1, 3], [ClaimVerdict.NEW, ClaimVerdict.REPLAY])
    assert merged == [
        ClaimVerdict.QUARANTINED,
        ClaimVerdict.NEW,
        ClaimVerdict.QUARANTINED,
        ClaimVerdict.REPLAY,
    ]
    assert not ClaimVerdict.QUARANTINED.deliver
    assert ClaimVerdict.NEW.deliver and ClaimVerdict.SAME_POSITION.deliver


def test_a_lost_state_is_an_outage_to_the_fronts() -> None:
    error = lost_error("p", EpochState("e", 1, frozenset(), ready=False))
    assert isinstance(error, ReplayStateLost)
    assert isinstance(error, ReplayGuardUnavailable)  # every front holds the batch
    assert "rebuild" in str(error)


@pytest.mark.parametrize("mode", ["", "open", None])
def test_an_unknown_state_loss_mode_is_refused(mode: object) -> None:
    from signed_bus._replay.settings import check_state_loss_settings
    from signed_bus.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="on_state_loss"):
        check_state_loss_settings(mode)
    assert check_state_loss_settings("hold") == "hold"
