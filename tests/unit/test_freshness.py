"""Freshness: the one window the verifier, the consumer's re-checks and the replay guard share.

Its numbers are validated once, its retention is what the guard keeps a nonce for, and its check
is the very rule Verifier.verify applies (docs/ENVELOPE.md section 7).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import signed_bus
from signed_bus._freshness import MAX_WINDOW_MS, Freshness
from signed_bus._keys import HmacKey, Keyring
from signed_bus._signer import Signer
from signed_bus._verifier import Verifier
from signed_bus.errors import (
    ConfigurationError,
    Expired,
    NotYetValid,
    SignedBusError,
    VerificationError,
)

NOW = 1_700_000_000_000
LIMIT = MAX_WINDOW_MS
RING = Keyring([HmacKey("k1", b"s" * 32, issuers=["agent"])])


# -- the value ------------------------------------------------------------------------------------


def test_defaults_and_export() -> None:
    window = Freshness()
    assert (window.max_age_ms, window.future_skew_ms, window.max_lag_ms) == (
        300_000,
        5_000,
        3_600_000,
    )
    assert signed_bus.Freshness is Freshness
    assert "Freshness" in signed_bus.__all__


def test_frozen_keyword_only_comparable_and_hashable() -> None:
    window = Freshness(max_age_ms=1_000, future_skew_ms=10, max_lag_ms=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        window.max_age_ms = 2_000  # type: ignore[misc]
    with pytest.raises(TypeError):
        Freshness(1_000, 10, 0)  # type: ignore[call-arg]
    assert window == Freshness(max_age_ms=1_000, future_skew_ms=10, max_lag_ms=0)
    assert window != Freshness(max_age_ms=1_000, future_skew_ms=10, max_lag_ms=1)
    assert len({window, Freshness(max_age_ms=1_000, future_skew_ms=10, max_lag_ms=0)}) == 1
    assert dataclasses.replace(window, max_lag_ms=5).max_lag_ms == 5
    text = repr(window)
    assert "max_age_ms=1000" in text and "future_skew_ms=10" in text and "max_lag_ms=0" in text


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_age_ms", 0),  # a window nothing fits in
        ("max_age_ms", -1),
        ("max_age_ms", LIMIT + 1),
        ("max_age_ms", 1.0),
        ("max_age_ms", True),  # bool is an int subclass: refused all the same
        ("max_age_ms", None),
        ("max_age_ms", "300000"),
        ("future_skew_ms", -1),
        ("future_skew_ms", LIMIT + 1),
        ("future_skew_ms", 1.5),
        ("future_skew_ms", False),
        ("max_lag_ms", -1),
        ("max_lag_ms", LIMIT + 1),
        ("max_lag_ms", 1.5),
        ("max_lag_ms", None),
    ],
)
def test_bad_numbers_are_configuration_errors_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=name) as caught:
        Freshness(**{name: value})  # type: ignore[arg-type]
    assert isinstance(caught.value, SignedBusError) and isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, VerificationError)


@pytest.mark.parametrize(
    "window",
    [
        {"max_age_ms": 1},
        {"max_age_ms": LIMIT},
        {"future_skew_ms": 0},
        {"future_skew_ms": LIMIT},
        {"max_lag_ms": 0},
        {"max_lag_ms": LIMIT},
        {"max_age_ms": LIMIT, "future_skew_ms": LIMIT, "max_lag_ms": LIMIT},
    ],
)
def test_the_edges_of_each_range_are_accepted(window: dict[str, int]) -> None:
    made = Freshness(**window)
    for name, value in window.items():
        assert getattr(made, name) == value


# -- retention and the oldest record --------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "skew", "lag", "retention"),
    [
        (300_000, 5_000, 3_600_000, 3_910_000),  # the defaults
        (300_000, 5_000, 0, 310_000),
        (1_000, 0, 0, 1_000),
        (1, 0, 0, 1),
        (7, 3, 11, 24),
        (LIMIT, LIMIT, LIMIT, 4 * LIMIT),  # exact at the largest numbers accepted
    ],
)
def test_retention_is_max_age_plus_max_lag_plus_twice_the_skew(
    max_age: int, skew: int, lag: int, retention: int
) -> None:
    window = Freshness(max_age_ms=max_age, future_skew_ms=skew, max_lag_ms=lag)
    assert window.retention_ms == retention == max_age + lag + 2 * skew


def test_retention_grows_with_every_number() -> None:
    base = Freshness(max_age_ms=1_000, future_skew_ms=100, max_lag_ms=500)
    assert dataclasses.replace(base, max_age_ms=1_001).retention_ms == base.retention_ms + 1
    assert dataclasses.replace(base, max_lag_ms=501).retention_ms == base.retention_ms + 1
    assert dataclasses.replace(base, future_skew_ms=101).retention_ms == base.retention_ms + 2


@pytest.mark.parametrize(
    "window",
    [
        Freshness(),
        Freshness(max_age_ms=1_000, future_skew_ms=100, max_lag_ms=500),
        Freshness(max_age_ms=1, future_skew_ms=0, max_lag_ms=0),
    ],
)
def test_oldest_acceptable_is_the_last_created_at_any_check_accepts(window: Freshness) -> None:
    oldest = window.oldest_acceptable(NOW)
    assert oldest == NOW - (window.max_age_ms + window.max_lag_ms)
    # accepted with the most favourable reference (appended exactly max_age after creation)...
    window.check(oldest, None, reference_ms=oldest + window.max_age_ms, now=NOW)
    # ... and one millisecond older is expired whatever the (unsigned) reference says
    references = {oldest - 1, oldest, oldest + window.max_age_ms, NOW, NOW + 10**9}
    for reference in references:
        with pytest.raises(Expired):
            window.check(oldest - 1, None, reference_ms=reference, now=NOW)
    # a copy of the oldest record verifies at most retention_ms - skew after a claim that
    # happened as early as created_at - skew (the claimer's clock behind by the skew)
    assert NOW - (oldest - window.future_skew_ms) <= window.retention_ms


# -- the rule -------------------------------------------------------------------------------------


def test_errors_carry_the_context_they_are_given() -> None:
    window = Freshness(max_age_ms=1_000, future_skew_ms=0, max_lag_ms=0)
    with pytest.raises(Expired) as expired:
        window.check(NOW - 1_001, None, reference_ms=NOW, now=NOW, kid="k1", issuer="agent")
    assert expired.value.reason == "expired"
    assert (expired.value.kid, expired.value.issuer) == ("k1", "agent")
    with pytest.raises(NotYetValid) as early:
        window.check(NOW + 1, None, reference_ms=NOW, now=NOW)
    assert early.value.reason == "not_yet_valid"
    assert (early.value.kid, early.value.issuer) == (None, None)
    with pytest.raises(Expired, match="expires_at"):
        window.check(NOW, NOW - 1, reference_ms=NOW, now=NOW)
    with pytest.raises(Expired, match="max_age \\+ max_lag"):
        Freshness(max_age_ms=1_000, max_lag_ms=0).check(
            NOW - 1_001, None, reference_ms=NOW - 1_000, now=NOW
        )


def test_check_gives_the_verdicts_verify_gives_at_every_edge() -> None:
    # As test_verifier.py's check_fresh test: the same record, every (reference, now) and every
    # created_at and exp edge; Freshness.check must say what Verifier.verify says.
    max_age, skew, lag = 1_000, 100, 500
    window = Freshness(max_age_ms=max_age, future_skew_ms=skew, max_lag_ms=lag)
    now = [NOW]
    verifier = Verifier(RING, freshness=window, clock=lambda: now[0])
    edges = (-max_age - lag - 1, -max_age - lag, -max_age - 1, -max_age, 0, skew, skew + 1)
    outcomes: set[str] = set()
    cases = 0
    for created in edges:
        for exp in (None, -1, 0, 1):
            if exp is not None and exp < created:
                continue  # exp before iat: refused at signing (docs/ENVELOPE.md)
            signer = Signer(
                RING,
                kid="k1",
                issuer="agent",
                model="m",
                clock=functools.partial(int, NOW + created),
            )
            expires_at = None if exp is None else NOW + exp
            value = signer.sign({}, topic="t", expires_at=expires_at)
            for reference in (None, NOW - lag, NOW - skew, NOW, NOW + skew, NOW + max_age):
                for at in (NOW - skew, NOW, NOW + 1, NOW + lag):
                    now[0] = at
                    try:
                        verifier.verify(value, topic="t", key=None, reference_ms=reference)
                        expected = "fresh"
                    except VerificationError as exc:
                        expected = exc.reason
                    got = verdict(
                        window,
                        NOW + created,
                        expires_at,
                        reference=at if reference is None else reference,
                        now=at,
                    )
                    assert got == expected, (created, exp, reference, at)
                    outcomes.add(got)
                    cases += 1
    assert outcomes == {"fresh", "expired", "not_yet_valid"}
    assert cases > 500


def verdict(window: Freshness, iat: int, exp: int | None, *, reference: int, now: int) -> str:
    """What ``window.check`` says: "fresh", or the reason it raised."""
    try:
        window.check(iat, exp, reference_ms=reference, now=now)
    except VerificationError as exc:
        return exc.reason
    return "fresh"


def spec(window: Freshness, iat: int, exp: int | None, reference: int, now: int) -> str:
    """docs/ENVELOPE.md section 7, restated: the reason, or "fresh"."""
    skew, age, lag = window.future_skew_ms, window.max_age_ms, window.max_lag_ms
    if iat > reference + skew or iat > now + skew:
        return "not_yet_valid"
    if iat < reference - age or iat < now - (age + lag):
        return "expired"
    if exp is not None and (exp < reference or exp < now):
        return "expired"
    return "fresh"


@settings(max_examples=2_000, derandomize=True, database=None)
@given(
    max_age=st.integers(1, 10_000),
    skew=st.integers(0, 1_000),
    lag=st.integers(0, 10_000),
    iat=st.integers(-30_000, 30_000),
    exp=st.none() | st.integers(-30_000, 30_000),
    reference=st.integers(-30_000, 30_000),
    now=st.integers(-30_000, 30_000),
)
def test_check_is_the_specs_rule(
    max_age: int, skew: int, lag: int, iat: int, exp: int | None, reference: int, now: int
) -> None:
    window = Freshness(max_age_ms=max_age, future_skew_ms=skew, max_lag_ms=lag)
    expected = spec(window, iat, exp, reference, now)
    got = verdict(window, iat, exp, reference=reference, now=now)
    assert got == expected
