"""One freshness window, shared by the verifier, the replay guard and every re-check.

docs/ENVELOPE.md section 7 states the rule; docs/OPERATIONS.md says how to choose the numbers.
The window is one frozen value so no two places can hold different numbers: the verifier checks
records with it, the consumer re-checks held records with the same :meth:`Freshness.check`, and
the replay guard keeps each nonce for :attr:`Freshness.retention_ms` (plus one bucket) because
the caller's window says so at every claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from signed_bus.errors import ConfigurationError, Expired, NotYetValid

__all__ = ["MAX_WINDOW_MS", "Freshness"]

# About 31.7 years each. The replay guard's TTL is a sum of four of these plus a bucket, and it
# must stay an exact integer in Redis's Lua (numbers print in integer form only below 1e14), far
# inside int64 too.
MAX_WINDOW_MS = 10**12


@dataclass(frozen=True, slots=True, kw_only=True)
class Freshness:
    """How old (and how far ahead) a record's signed created_at may be, in milliseconds.

    - ``max_age_ms``: how long after its creation a record is accepted, by the reference time
      (the broker's LogAppendTime when the topic has it, else the consumer's clock);
    - ``future_skew_ms``: how far ahead of either clock a created_at may be (clock skew);
    - ``max_lag_ms``: how far past max_age, by the consumer's own clock, a record read late is
      still taken (a lagging consumer; the append time is not signed, so this bounds it).

    ``check`` is the rule; ``oldest_acceptable(now)`` the oldest created_at any check at ``now``
    accepts; ``retention_ms`` how long the replay guard must keep a nonce after a claim so no
    copy of its envelope can verify after the nonce is gone.
    """

    max_age_ms: int = 300_000
    future_skew_ms: int = 5_000
    max_lag_ms: int = 3_600_000

    def __post_init__(self) -> None:
        for name, number, minimum in (
            ("max_age_ms", self.max_age_ms, 1),
            ("future_skew_ms", self.future_skew_ms, 0),
            ("max_lag_ms", self.max_lag_ms, 0),
        ):
            if type(number) is not int or not minimum <= number <= MAX_WINDOW_MS:
                raise ConfigurationError(
                    f"{name} must be an int from {minimum} to {MAX_WINDOW_MS} (ms)"
                )

    @property
    def retention_ms(self) -> int:
        """max_age + max_lag + 2 x skew: a copy verifies at most max_age + max_lag + skew after
        the original's claim, by clocks that may differ by another skew."""
        return self.max_age_ms + self.max_lag_ms + 2 * self.future_skew_ms

    def oldest_acceptable(self, now: int) -> int:
        """The oldest created_at that :meth:`check` accepts at ``now`` (consumer's clock)."""
        return now - (self.max_age_ms + self.max_lag_ms)

    def check(
        self,
        created_at: int,
        expires_at: int | None,
        *,
        reference_ms: int,
        now: int,
        kid: str | None = None,
        issuer: str | None = None,
    ) -> None:
        """Raise Expired or NotYetValid unless the record is fresh.

        created_at must lie in [reference - max_age, reference + skew] AND in
        [now - (max_age + max_lag), now + skew]; expires_at (if any) must not have passed by
        either time. ``reference_ms`` is the record's LogAppendTime, or ``now`` without one.
        ``kid`` and ``issuer`` only give the error its context.
        """
        skew = self.future_skew_ms
        if created_at > reference_ms + skew:
            raise NotYetValid(
                f"created {created_at - reference_ms} ms after the reference time",
                kid=kid,
                issuer=issuer,
            )
        if created_at > now + skew:
            # An honest record is never created after the consumer's now + skew: it was
            # signed, then appended, then fetched. Only a forged reference gets here.
            raise NotYetValid(
                f"created {created_at - now} ms after this consumer's clock",
                kid=kid,
                issuer=issuer,
            )
        if created_at < reference_ms - self.max_age_ms:
            raise Expired(
                f"created {reference_ms - created_at} ms before the reference time",
                kid=kid,
                issuer=issuer,
            )
        oldest = self.max_age_ms + self.max_lag_ms
        if created_at < now - oldest:
            # The reference (an unsigned record timestamp) may be forged; the replay guard
            # only remembers nonces for retention_ms after their last claim.
            raise Expired(
                f"created {now - created_at} ms before this consumer's clock: older than "
                f"max_age + max_lag ({oldest} ms)",
                kid=kid,
                issuer=issuer,
            )
        if expires_at is not None and (expires_at < reference_ms or expires_at < now):
            raise Expired("expires_at has passed", kid=kid, issuer=issuer)
