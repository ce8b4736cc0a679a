"""Verifier: checks an envelope v1 record value and returns the verified message.

Check order (cheapest first, docs/ENVELOPE.md "Verification"): size cap -> strict decode ->
policy (version tag, alg, kid, alg pinned to the key, issuer allowed for the key) -> signature ->
destination (topic, record key) -> freshness (skipped in audit mode). The first failing check
raises its VerificationError subclass; nothing else escapes for any input bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from signed_bus import _native
from signed_bus._clock import Clock, system_clock
from signed_bus._decode import decode_header_values, frame_offsets
from signed_bus._envelope import (
    HEADER_KEYS,
    K_EXP,
    K_IAT,
    K_ISS,
    K_KID,
    signed_message,
)
from signed_bus._freshness import Freshness
from signed_bus._keys import EDDSA, HS256, Keyring
from signed_bus._message import CONTENT_TYPE_JSON, MAKER, VerifiedMessage, _build
from signed_bus._message import _rebuild as _rebuild  # pickles name it here
from signed_bus.errors import (
    AlgorithmMismatch,
    BadSignature,
    ConfigurationError,
    EnvelopeTooLarge,
    MalformedEnvelope,
    UnknownKey,
    UntrustedIssuer,
    WrongKey,
    WrongTopic,
)

__all__ = ["CONTENT_TYPE_JSON", "BatchItem", "VerifiedMessage", "Verifier"]

#: Signature length per algorithm: a wrong length is a bad signature before any crypto runs.
_SIG_BYTES: Final = {HS256: 32, EDDSA: 64}
_sha256 = hashlib.sha256
_WITH_EXPIRY: Final = len(HEADER_KEYS)  # a header map holds exp only when it has every key
#: One record for :meth:`Verifier.verify_batch`: value, topic, record key, reference time.
BatchItem = tuple[bytes, str, bytes | None, int | None]


class Verifier:
    """Verifies record values against a keyring (which it reads live: rotation needs no restart).

    Freshness (docs/ENVELOPE.md section 7) is one :class:`~signed_bus._freshness.Freshness`
    value: the signed created_at must lie within ``max_age_ms`` of the reference time (the
    caller's ``reference_ms``, e.g. the broker's LogAppendTime, else ``clock()``) and within
    ``max_age_ms + max_lag_ms`` of this consumer's own clock, at most ``future_skew_ms`` ahead of
    either; ``expires_at`` must not have passed by either. The replay guard keeps nonces for the
    same window's ``retention_ms`` (the consumer hands it :attr:`freshness` with every claim), so
    the two cannot disagree. ``audit=True`` checks everything except freshness, for tools that
    read old records on purpose. :meth:`check_fresh` applies the same rule (the same code) again
    to a verified message that waited before it was claimed, delivered or relayed.
    """

    __slots__ = (
        "_audit",
        "_check",
        "_clock",
        "_freshness",
        "_keyring",
        "_max_bytes",
        "_opener",
    )

    def __init__(
        self,
        keyring: Keyring,
        *,
        freshness: Freshness | None = None,
        max_envelope_bytes: int = 1_048_576,
        clock: Clock = system_clock,
        audit: bool = False,
    ) -> None:
        if type(max_envelope_bytes) is not int or max_envelope_bytes < 0:
            raise ConfigurationError("max_envelope_bytes must be a non-negative int")
        if not isinstance(keyring, Keyring):
            raise ConfigurationError("keyring must be a Keyring")
        if freshness is None:
            freshness = Freshness()
        elif not isinstance(freshness, Freshness):
            raise ConfigurationError("freshness must be a Freshness")
        self._keyring = keyring
        self._freshness = freshness
        self._check = freshness.check
        self._max_bytes = max_envelope_bytes
        self._clock = clock
        self._audit = bool(audit)
        self._opener = _native.opener(
            keyring,
            max_envelope_bytes=max_envelope_bytes,
            freshness=freshness,
            audit=self._audit,
            clock=clock,
            maker=MAKER,
        )

    @property
    def audit(self) -> bool:
        return self._audit

    @property
    def freshness(self) -> Freshness:
        """The window records are checked against; the consumer claims nonces with it."""
        return self._freshness

    @property
    def max_envelope_bytes(self) -> int:
        return self._max_bytes

    @property
    def clock(self) -> Clock:
        """The clock freshness is checked against (the consumer re-checks held records by it)."""
        return self._clock

    def __repr__(self) -> str:
        return (
            f"Verifier(keys={len(self._keyring)}, freshness={self._freshness!r}, "
            f"max_envelope_bytes={self._max_bytes}, audit={self._audit})"
        )

    def check_fresh(
        self,
        message: VerifiedMessage,
        *,
        reference_ms: int | None = None,
        now: int | None = None,
    ) -> None:
        """Check a verified message against the freshness window again, as :meth:`verify` did.

        For a record that waited after it verified (a batch held while Redis or the
        dead-letter topic was unavailable, a relay batch whose transform ran): the very rule
        :meth:`verify` applies (:meth:`Freshness.check`), against ``reference_ms`` (the record's
        LogAppendTime, else ``now``) and ``now`` (default ``clock()``). Raises Expired or
        NotYetValid; does nothing in audit mode.
        """
        if self._audit:
            return
        if now is None:
            now = self._clock()
        self._check(
            message.created_at,
            message.expires_at,
            reference_ms=now if reference_ms is None else reference_ms,
            now=now,
            kid=message.kid,
            issuer=message.issuer,
        )

    def verify(
        self,
        value: bytes,
        *,
        topic: str,
        key: bytes | None,
        reference_ms: int | None = None,
    ) -> VerifiedMessage:
        """Verify a record value read from ``topic`` with record ``key``.

        Returns the verified message; raises a VerificationError subclass whose ``reason`` says
        which check failed. A ``key`` that is not bytes-like or None is a caller bug:
        ConfigurationError.
        """
        opener = self._opener
        if opener is None:
            return self._verify_other(value, topic, key, reference_ms, "")
        # The native path (signed_bus._native): one call, which answers "" for a value or key
        # that is not exactly bytes (or None); _verify_other checks and converts those.
        opened = opener.open(value, topic, key, reference_ms)
        if opened.__class__ is VerifiedMessage:  # verified and fresh: the common case
            return opened
        return self._verify_other(value, topic, key, reference_ms, opened)

    def _verify_other(
        self, value: Any, topic: str, key: Any, reference_ms: int | None, opened: Any
    ) -> VerifiedMessage:
        """:meth:`verify` for everything but a value the native opener verified: arguments
        to check or convert, a key cache to refresh, a stale value, a refusal, the pure path.
        ``opened`` is the opener's answer for these arguments ("" on the pure path)."""
        converted = False
        if key is not None and type(key) is not bytes:
            if not isinstance(key, bytearray | memoryview):
                # A caller bug (a key deserializer, a str), not bad record bytes: say so loudly
                # rather than dead-letter every record.
                raise ConfigurationError(
                    f"record key must be bytes or None, not {type(key).__name__}"
                )
            key = bytes(key)
            converted = True
        if type(value) is not bytes:
            if not isinstance(value, bytearray | memoryview):
                raise MalformedEnvelope("record value is not bytes", topic=topic)
            value = bytes(value)
            converted = True
        opener = self._opener
        if opener is not None:
            if converted:  # the opener answered "" for the arguments as given
                opened = opener.open(value, topic, key, reference_ms)
                if opened.__class__ is VerifiedMessage:
                    return opened
            if opened is None:  # the keyring changed since the last call
                opened = _native.reopen(opener, value, topic, key, reference_ms)
                if opened.__class__ is VerifiedMessage:
                    return opened
            if opened.__class__ is tuple:  # authentic, not fresh: the pure rule raises
                return self._opened(value, opened, reference_ms)
            # A refusal (or a case the extension leaves to Python): the pure path below finds
            # the same reason and raises its exception, with its message.
        return self._verify_pure(value, topic, key, reference_ms)

    def verify_batch(self, items: list[BatchItem]) -> list[VerifiedMessage | Exception]:
        """:meth:`verify` for every ``(value, topic, key, reference_ms)`` of a fetched batch.

        One answer per item, in order: the message :meth:`verify` returns for it, or the
        exception it raises (the same verdict, reason, message and context; nothing is
        raised here). On the native path one call checks the whole batch, its Ed25519
        signatures on several threads with the GIL released (docs/PERFORMANCE.md); a subclass
        that overrides :meth:`verify` has it called for every item.
        """
        opener = self._opener
        if opener is None or len(items) < 2 or type(self).verify is not Verifier.verify:
            return [self._answer(item) for item in items]
        try:
            answers: list[Any] | None = opener.open_batch(items)
            if answers is None:  # the keyring changed since the last call
                _native.refresh(opener)
                answers = opener.open_batch(items)
        except Exception:  # e.g. a clock that raised: each item then meets it on its own
            answers = None
        if answers is None:
            return [self._answer(item) for item in items]
        for index, opened in enumerate(answers):
            if opened.__class__ is VerifiedMessage:  # verified and fresh
                continue
            if opened.__class__ is tuple:  # authentic, not fresh: the pure rule raises
                try:
                    answers[index] = self._opened(items[index][0], opened, items[index][3])
                except Exception as exc:
                    answers[index] = exc
            else:  # refused, left to Python, or a stale key cache: verify answers
                answers[index] = self._answer(items[index])
        return answers

    def _answer(self, item: BatchItem) -> VerifiedMessage | Exception:
        value, topic, key, reference_ms = item
        try:
            return self.verify(value, topic=topic, key=key, reference_ms=reference_ms)
        except Exception as exc:
            return exc

    def _opened(
        self,
        value: bytes,
        opened: tuple[dict[str, Any], bytes, int | None],
        reference_ms: int | None,
    ) -> VerifiedMessage:
        """The message of a value the extension opened: ``(header, body, stale_at)``."""
        header, body, stale_at = opened
        if stale_at is not None:  # the pure rule raises its own Expired/NotYetValid
            self._check(
                header[K_IAT],
                header.get(K_EXP),
                reference_ms=stale_at if reference_ms is None else reference_ms,
                now=stale_at,
                kid=header[K_KID],
                issuer=header[K_ISS],
            )
        return _build(header, body, value)

    def _verify_pure(
        self, value: bytes, topic: str, key: bytes | None, reference_ms: int | None
    ) -> VerifiedMessage:
        """The reference implementation of :meth:`verify`, on bytes."""
        if len(value) > self._max_bytes:
            raise EnvelopeTooLarge(
                f"{len(value)} bytes exceeds the {self._max_bytes}-byte cap", topic=topic
            )
        # Offsets, not copies: a value rejected by policy costs the same whatever its size.
        p_start, p_end, b_start, b_end, s_start = frame_offsets(value)
        header, values = decode_header_values(value[p_start:p_end])
        alg, kid, issuer, _, _, signed_topic, rkd, created_at, _, _ = values

        # Policy: the header names the key; the key decides the algorithm and the issuers.
        sig_bytes = _SIG_BYTES.get(alg)
        if sig_bytes is None:
            raise AlgorithmMismatch("algorithm is not supported", kid=kid, issuer=issuer)
        signing_key = self._keyring.get(kid)
        if signing_key is None:
            raise UnknownKey("kid is not in the keyring", kid=kid, issuer=issuer)
        if alg != signing_key.alg:
            raise AlgorithmMismatch(
                f"header alg {alg} does not match the key's {signing_key.alg}",
                kid=kid,
                issuer=issuer,
            )
        if issuer not in signing_key.issuers:
            raise UntrustedIssuer("the key may not sign for this issuer", kid=kid, issuer=issuer)

        if len(value) - s_start != sig_bytes:
            raise BadSignature("signature has the wrong length", kid=kid, issuer=issuer)
        body = value[b_start:b_end]
        try:
            signing_key.verify(signed_message(value[p_start:p_end], body), value[s_start:])
        except BadSignature as exc:
            raise BadSignature(exc.message, kid=kid, issuer=issuer) from None

        if signed_topic != topic:
            raise WrongTopic("envelope was signed for another topic", kid=kid, issuer=issuer)
        if rkd is None:
            if key is not None:
                raise WrongKey("envelope was signed for a null record key", kid=kid, issuer=issuer)
        elif key is None or rkd != _sha256(key).digest():
            raise WrongKey("envelope was signed for another record key", kid=kid, issuer=issuer)

        if not self._audit:
            now = self._clock()
            self._check(
                created_at,
                header[K_EXP] if len(header) == _WITH_EXPIRY else None,
                reference_ms=now if reference_ms is None else reference_ms,
                now=now,
                kid=kid,
                issuer=issuer,
            )
        return _build(header, body, value)  # no __init__: see VerifiedMessage
