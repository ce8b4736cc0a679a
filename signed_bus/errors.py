"""Every exception signed-bus raises, in one tree.

::

    SignedBusError
     ├── ConfigurationError (also ValueError)    bad options, keys or key files
     ├── Stopped (also RuntimeError)             a long-lived object used after stop()
     ├── ReplayGuardUnavailable                  the replay guard's Redis failed
     │    └── ReplayStateLost                    Redis lost the nonces; recovery holds claims
     ├── ProvenanceIndexUnavailable              the provenance index's Redis failed
     ├── UnsupportedContentType (also ValueError)  VerifiedMessage.payload has no decoder
     ├── MalformedDeadLetter (also ValueError)   a dead-letter record that does not parse
     ├── DeliveryFailed                          records the broker did not take (confluent)
     ├── RelayError                              a relay stopped; its batch is not committed
     │    ├── RelayTransformError                the transform raised (``__cause__``)
     │    └── RelayFenced                        another relay took over its transactional_id
     └── VerificationError                       reason ``verification_failed`` (never raised
          │                                      by signed-bus itself, only by subclasses)
          ├── MalformedEnvelope                  ``malformed``
          ├── EnvelopeTooLarge                   ``oversized``
          ├── UnsupportedVersion                 ``unsupported_version``
          ├── UnknownKey                         ``unknown_key``
          ├── AlgorithmMismatch                  ``algorithm_mismatch``
          ├── UntrustedIssuer                    ``untrusted_issuer``
          ├── BadSignature                       ``bad_signature``
          ├── WrongTopic                         ``wrong_topic``
          ├── WrongKey                           ``wrong_key``
          ├── Expired                            ``expired``
          ├── NotYetValid                        ``not_yet_valid``
          ├── ReplayDetected                     ``replay``
          ├── Quarantined                        ``quarantined``
          └── Undecodable                        ``undecodable``

Each reason code belongs to exactly one class (:data:`REASONS` maps them, e.g. to read a dead
letter's ``signed-bus-reason``); what each check is and in which order they run:
docs/ENVELOPE.md section 6. The code travels in dead-letter headers and metrics labels
(docs/OPERATIONS.md, "Dead letters"). ``signed_bus`` re-exports the roots (SignedBusError,
ConfigurationError, VerificationError, ReplayGuardUnavailable, Stopped); import the specific
classes from here.

A verification error carries context (kid, issuer, topic, partition, offset), never key material
or payload bytes, so it can be logged as is; ``str()`` escapes the attacker-chosen parts with
:func:`signed_bus.printable` (the attributes keep the values as they were).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Final

from signed_bus._text import printable

__all__ = [
    "REASONS",
    "AlgorithmMismatch",
    "BadSignature",
    "ConfigurationError",
    "DeliveryFailed",
    "EnvelopeTooLarge",
    "Expired",
    "MalformedDeadLetter",
    "MalformedEnvelope",
    "NotYetValid",
    "ProvenanceIndexUnavailable",
    "Quarantined",
    "RelayError",
    "RelayFenced",
    "RelayTransformError",
    "ReplayDetected",
    "ReplayGuardUnavailable",
    "ReplayStateLost",
    "SignedBusError",
    "Stopped",
    "Undecodable",
    "UnknownKey",
    "UnsupportedContentType",
    "UnsupportedVersion",
    "UntrustedIssuer",
    "VerificationError",
    "WrongKey",
    "WrongTopic",
]


class SignedBusError(Exception):
    """Root of every error raised by signed-bus."""


class ConfigurationError(SignedBusError, ValueError):
    """Bad options, bad keys or bad key files (also a ValueError, like any bad argument)."""


class Stopped(SignedBusError, RuntimeError):
    """A long-lived object (producer, consumer, relay, replay guard, provenance index, record
    fetcher) was used or started again after :meth:`stop`. None of them restarts: make a new
    one. Distinct from :class:`ReplayGuardUnavailable` (Redis is down) on purpose."""


class ReplayGuardUnavailable(SignedBusError):
    """The replay guard's Redis was unreachable or returned an error."""


class ReplayStateLost(ReplayGuardUnavailable):
    """Redis lost the replay guard's nonces (a restart without persistence, a flush, an
    eviction, a failover): a claim found its epoch marker missing. The guard started a new
    epoch; consumers hold the batch as for an outage and retry it (docs/OPERATIONS.md,
    "Losing Redis state")."""


class ProvenanceIndexUnavailable(SignedBusError):
    """Redis failed on a provenance index operation. The message names the exception type and
    the index's location with any password masked, never the client's own error text (which can
    quote parts of a malformed URL)."""


class UnsupportedContentType(SignedBusError, ValueError):
    """``VerifiedMessage.payload`` was read for a body whose content type it cannot decode.

    The message itself verified; read ``VerifiedMessage.body`` and decode it yourself.
    """


class MalformedDeadLetter(SignedBusError, ValueError):
    """A record of a dead-letter topic is not a well-formed dead letter (see
    ``DeadLetter.from_record``). The message names the header at fault, never its value."""


class DeliveryFailed(SignedBusError):
    """Records the broker did not take (``signed_bus.confluent.SignedProducer.produce_batch``,
    a relay's outputs). ``errors`` holds librdkafka's error of each failed record, in the order
    produced; ``reports`` each record's delivery report (None where none came)."""

    def __init__(
        self, message: str, errors: Sequence[object] = (), reports: Sequence[object] = ()
    ) -> None:
        super().__init__(message)
        self.errors = tuple(errors)
        self.reports = tuple(reports)


class RelayError(SignedBusError):
    """The relay stopped on an error; the batch in hand was not committed."""


class RelayTransformError(RelayError):
    """The transform raised (``__cause__``); the batch will be re-processed by the next run."""


class RelayFenced(RelayError):
    """Another relay with the same transactional_id took over; this one must stop."""


class VerificationError(SignedBusError):
    """A record value failed verification. ``reason`` is a stable code, one per subclass."""

    reason: ClassVar[str] = "verification_failed"

    def __init__(
        self,
        message: str = "",
        *,
        kid: str | None = None,
        issuer: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kid = kid
        self.issuer = issuer
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def with_position(self, topic: str, partition: int, offset: int) -> VerificationError:
        """Return a copy of this error (same class, message and context) at a record position."""
        new = copy.copy(self)
        new.topic = topic
        new.partition = partition
        new.offset = offset
        return new

    def __str__(self) -> str:
        # Escaped here, not when stored: str() is what log lines, dead-letter headers and the CLI
        # show, and every context value can be attacker-chosen text.
        context = [
            f"{name}={value}" if isinstance(value, int) else f"{name}='{_quoted(value)}'"
            for name, value in (
                ("kid", self.kid),
                ("issuer", self.issuer),
                ("topic", self.topic),
                ("partition", self.partition),
                ("offset", self.offset),
            )
            if value is not None
        ]
        text = f"{self.reason}: {printable(self.message)}" if self.message else self.reason
        return f"{text} ({', '.join(context)})" if context else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class MalformedEnvelope(VerificationError):
    """The value is not a well-formed envelope v1 (bad msgpack, wrong types, trailing bytes), or,
    raised by ``VerifiedMessage.payload``, an authentic body breaks its content type's decoding
    profile (the message says which; ``body`` stays readable)."""

    reason = "malformed"


class EnvelopeTooLarge(VerificationError):
    """The value exceeds the verifier's size cap; rejected before any decoding."""

    reason = "oversized"


class UnsupportedVersion(VerificationError):
    """The envelope's version tag is not one this library verifies."""

    reason = "unsupported_version"


class UnknownKey(VerificationError):
    """The header names a kid the keyring does not hold (never heard of it, or rotated out)."""

    reason = "unknown_key"


class AlgorithmMismatch(VerificationError):
    """The header's alg differs from the key's algorithm, or is none/unknown."""

    reason = "algorithm_mismatch"


class UntrustedIssuer(VerificationError):
    """The key exists but may not sign for the issuer the header names."""

    reason = "untrusted_issuer"


class BadSignature(VerificationError):
    """The signature does not verify over the tag, protected header and body."""

    reason = "bad_signature"


class WrongTopic(VerificationError):
    """The envelope was signed for another topic than the one it was read from."""

    reason = "wrong_topic"


class WrongKey(VerificationError):
    """The envelope was signed for another record key than the record carries."""

    reason = "wrong_key"


class Expired(VerificationError):
    """created_at is older than the freshness window, or expires_at has passed."""

    reason = "expired"


class NotYetValid(VerificationError):
    """created_at lies further in the future than the allowed clock skew."""

    reason = "not_yet_valid"


class ReplayDetected(VerificationError):
    """The envelope's nonce was already claimed at another record position."""

    reason = "replay"


class Quarantined(VerificationError):
    """Created before a loss of the replay state, on a topic no rebuild re-read: the record may
    have been delivered before, so it is held back (redrivable with ``signed-bus dlq
    redrive``), never delivered as new."""

    reason = "quarantined"


class Undecodable(VerificationError):
    """The Kafka client could not decode the record at all (a compression codec it has no
    decoder for, a bad CRC, a corrupt batch, a header key that is not UTF-8), so no bytes of it
    reached the verifier. ``offset`` is the first offset not decoded and ``last_offset`` the last
    one skipped with it (the rest of its record batch)."""

    reason = "undecodable"

    def __init__(
        self,
        message: str = "",
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        last_offset: int | None = None,
    ) -> None:
        super().__init__(message, topic=topic, partition=partition, offset=offset)
        self.last_offset = last_offset


#: Reason code -> the one class that carries it, for every verification error signed-bus raises
#: (not the ``verification_failed`` of the base class). A code outside it is not one of ours: a
#: dead letter can be written by anyone.
REASONS: Final[Mapping[str, type[VerificationError]]] = MappingProxyType(
    {
        cls.reason: cls
        for cls in (
            MalformedEnvelope,
            EnvelopeTooLarge,
            UnsupportedVersion,
            UnknownKey,
            AlgorithmMismatch,
            UntrustedIssuer,
            BadSignature,
            WrongTopic,
            WrongKey,
            Expired,
            NotYetValid,
            ReplayDetected,
            Quarantined,
            Undecodable,
        )
    }
)


def _quoted(value: str) -> str:
    """``value`` escaped for a single-quoted context field: a quote inside it cannot end the
    field early and forge another (``issuer='a', topic='x'``)."""
    return printable(value).replace("'", "\\'")
