"""Dead letters: where a verifying consumer puts every record it rejects.

A dead letter is the rejected record's ORIGINAL value bytes and key, re-produced unchanged to the
dead-letter topic, with headers
saying why and where it came from. The headers never hold payload bytes or secrets: the reason
code, the source position and the error's message (which by the error tree's rule carries only
the kid, issuer and position as context).

The original record's own headers are not copied: they are unauthenticated and the source position
finds them. Nothing in a dead letter is trusted; an auditor reads them to see what was dropped.

A record that does not fit the dead-letter producer or topic loses its value first
(``signed-bus-value-omitted: 1``), then its key too (``signed-bus-key-omitted: 1``, with the key's
SHA-256 in ``signed-bus-key-sha256``): a record can be as large as the source topic allows while
the dead letter adds its headers, so a key near the broker's limit cannot travel again.

A record whose value is null (a tombstone) gets an empty value and ``signed-bus-value-null: 1``:
never a null-valued letter, which on a compacted dead-letter topic would itself be a tombstone
erasing earlier letters with its key (and which aiokafka refuses to send without a key).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from signed_bus.errors import MalformedDeadLetter, Undecodable, VerificationError

__all__ = [
    "HEADER_ERROR",
    "HEADER_KEY_OMITTED",
    "HEADER_KEY_SHA256",
    "HEADER_NOT_DECODED",
    "HEADER_REASON",
    "HEADER_SOURCE_LAST_OFFSET",
    "HEADER_SOURCE_OFFSET",
    "HEADER_SOURCE_PARTITION",
    "HEADER_SOURCE_TIMESTAMP",
    "HEADER_SOURCE_TOPIC",
    "HEADER_VALUE_NULL",
    "HEADER_VALUE_OMITTED",
    "DeadLetter",
    "MalformedDeadLetter",
    "Omitted",
    "after_refusal",
    "dead_letter_headers",
    "header_map",
    "letter_parts",
]

HEADER_REASON = "signed-bus-reason"
HEADER_SOURCE_TOPIC = "signed-bus-source-topic"
HEADER_SOURCE_PARTITION = "signed-bus-source-partition"
HEADER_SOURCE_OFFSET = "signed-bus-source-offset"
HEADER_SOURCE_TIMESTAMP = "signed-bus-source-timestamp"
HEADER_ERROR = "signed-bus-error"
#: Present (value b"1") when the original value did not fit in the dead-letter topic and was left
#: out; the record is still at its source position until the topic's retention removes it.
HEADER_VALUE_OMITTED = "signed-bus-value-omitted"
#: Present (value b"1") when the source record's value was null (a tombstone): the letter's value
#: is then empty, and :attr:`DeadLetter.value` None with ``value_null`` True.
HEADER_VALUE_NULL = "signed-bus-value-null"
#: Present (value b"1") when the original key did not fit either and was left out too (the value
#: is then omitted as well); :data:`HEADER_KEY_SHA256` then names the key.
HEADER_KEY_OMITTED = "signed-bus-key-omitted"
#: The SHA-256 of the omitted key, lowercase hex (only with :data:`HEADER_KEY_OMITTED`).
HEADER_KEY_SHA256 = "signed-bus-key-sha256"
#: Present (value b"1") when the Kafka client could not decode the source record (reason
#: ``undecodable``): the letter has no value and no key because none was ever read; read the
#: source offsets with another client while the topic's retention keeps them.
HEADER_NOT_DECODED = "signed-bus-not-decoded"
#: With :data:`HEADER_NOT_DECODED`: the last source offset skipped with the first one (the rest
#: of its record batch, unreadable by the client too).
HEADER_SOURCE_LAST_OFFSET = "signed-bus-source-last-offset"
_KNOWN_HEADERS = frozenset(
    {
        HEADER_REASON,
        HEADER_SOURCE_TOPIC,
        HEADER_SOURCE_PARTITION,
        HEADER_SOURCE_OFFSET,
        HEADER_SOURCE_TIMESTAMP,
        HEADER_ERROR,
        HEADER_VALUE_OMITTED,
        HEADER_VALUE_NULL,
        HEADER_KEY_OMITTED,
        HEADER_KEY_SHA256,
        HEADER_NOT_DECODED,
        HEADER_SOURCE_LAST_OFFSET,
    }
)

# Error messages are library-made and short; the cap keeps one odd message from bloating a record.
_MAX_ERROR_BYTES = 512


def dead_letter_headers(
    error: VerificationError,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None = None,
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter, all UTF-8 text (integers in decimal)."""
    headers = [
        (HEADER_REASON, error.reason.encode()),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
    ]
    if timestamp is not None:
        headers.append((HEADER_SOURCE_TIMESTAMP, str(timestamp).encode()))
    if isinstance(error, Undecodable):
        headers.append((HEADER_NOT_DECODED, b"1"))
        if error.last_offset is not None:
            headers.append((HEADER_SOURCE_LAST_OFFSET, str(error.last_offset).encode()))
    message = str(error).encode("utf-8", "replace")
    if len(message) > _MAX_ERROR_BYTES:
        # Cut at a character boundary: the header stays valid UTF-8 (the tail of a character
        # split by the cap is the only invalid sequence, and "ignore" drops just that).
        message = message[:_MAX_ERROR_BYTES].decode("utf-8", "ignore").encode()
    headers.append((HEADER_ERROR, message))
    return headers


class Omitted(enum.IntEnum):
    """What a dead letter leaves out of the original record, in the order it is given up."""

    NOTHING = 0
    VALUE = 1
    VALUE_AND_KEY = 2


def after_refusal(omit: Omitted, alone: bool) -> tuple[Omitted, bool] | None:
    """How to send again a letter the broker refused as too large (both fronts' dead-letter
    senders): sent in company, the same letter alone (letters queued together share a record
    batch, which the topic's ``max.message.bytes`` bounds as a whole: the refusal may be the
    batch's); sent alone, leaving out more; None once nothing is left to leave out (drop it).
    The result is ``(omit, alone)`` for the next attempt."""
    if not alone:
        return omit, True
    if omit < Omitted.VALUE_AND_KEY:
        return Omitted(omit + 1), True
    return None


def letter_parts(
    record: Any, error: VerificationError, omit: Omitted
) -> tuple[bytes, bytes | None, list[tuple[str, bytes]], Omitted]:
    """The value, key and headers of the dead letter of ``record`` (any client's record with
    topic, partition, offset, timestamp, key and value) leaving out at least ``omit``, and what
    it leaves out (more than ``omit`` for a tombstone, which has no value to leave out).

    Every Kafka front produces the letter it builds here: a producer that refuses it as too
    large is asked again with ``Omitted(omit + 1)``."""
    headers = dead_letter_headers(
        error,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
    )
    original: bytes | None = record.value
    if original is None and not isinstance(error, Undecodable):
        # A tombstone: marked, with an empty value (see the module docstring).
        headers.append((HEADER_VALUE_NULL, b"1"))
    if original is None and omit == Omitted.VALUE:
        omit = Omitted.VALUE_AND_KEY  # no value to leave out: the rest is too large
    value = b"" if original is None else original
    key: bytes | None = record.key
    if omit >= Omitted.VALUE and original is not None:
        value = b""
        headers.append((HEADER_VALUE_OMITTED, b"1"))
    if omit >= Omitted.VALUE_AND_KEY and key is not None:
        headers.append((HEADER_KEY_OMITTED, b"1"))
        headers.append((HEADER_KEY_SHA256, hashlib.sha256(key).hexdigest().encode()))
        key = None
    return value, key, headers, omit


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter read back from the dead-letter topic: build it with :meth:`from_record`.

    Nothing here is authenticated: anyone with write rights on the dead-letter topic can write a
    record that parses. The parser only guarantees the shapes below, so the fields can be
    counted and shown (through :func:`signed_bus.printable`) without surprises.

    - ``reason``: the rejection's reason code, 1 to 64 characters of ``a-z``, ``0-9`` and ``_``
      (the :class:`~signed_bus.errors.VerificationError` codes; a reader should still treat an
      unknown code as such, not trust it);
    - ``source_topic``: where the rejected record was read, a legal Kafka topic name (1 to 249
      characters of ``A-Z a-z 0-9 . _ -``);
    - ``source_partition``, ``source_offset``: its position, non-negative integers below 2**63;
    - ``source_timestamp``: its Kafka timestamp in ms, or None when the header is absent;
    - ``error``: the error's text as the consumer logged it (already escaped by
      ``VerificationError.__str__``), at most 4096 bytes, undecodable bytes replaced;
    - ``value``: the rejected record's value bytes, None when ``value_omitted`` (it did not fit),
      ``value_null`` (the record's value was null: a tombstone) or ``not_decoded``;
    - ``key``: the rejected record's key, None when it had none or when ``key_omitted``;
    - ``value_omitted``, ``key_omitted``: the writer left the value (then the key too) out;
    - ``value_null``: the rejected record's value was null (a tombstone), not empty;
    - ``not_decoded``, ``source_last_offset``: the Kafka client could not decode the record
      (reason ``undecodable``); offsets ``source_offset`` to ``source_last_offset`` were skipped;
    - ``key_sha256``: with ``key_omitted``, the SHA-256 of the omitted key as 64 lowercase hex
      characters, else None.
    """

    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    error: str
    value: bytes | None
    key: bytes | None
    value_omitted: bool = False
    source_timestamp: int | None = None
    key_omitted: bool = False
    #: SHA-256 of the omitted key, lowercase hex (None unless ``key_omitted``)
    key_sha256: str | None = None
    #: True when the Kafka client could not decode the source record (reason ``undecodable``):
    #: no value or key was ever read; read the source offsets with another client
    not_decoded: bool = False
    #: With ``not_decoded``: the last source offset skipped with ``source_offset`` (the rest of
    #: its record batch); None otherwise
    source_last_offset: int | None = None
    #: True when the rejected record's value was null (a tombstone), not empty
    value_null: bool = False

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """Parse a ``ConsumerRecord`` of the dead-letter topic.

        Raises :class:`~signed_bus.errors.MalformedDeadLetter` (a ValueError) for anything that
        is not a dead letter of the shape above: a missing, null, non-UTF-8, repeated, oversized
        or out-of-range ``signed-bus-*`` header, a flag other than ``1``, a value or key that is
        not bytes. It raises nothing else, whatever the record holds. Headers that are not the
        library's own are ignored. The message names the header, never its value.
        """
        found = _dead_letter_headers(getattr(record, "headers", None))
        reason = _text_header(found, HEADER_REASON, _REASON_RE)
        topic = _text_header(found, HEADER_SOURCE_TOPIC, _TOPIC_RE)
        partition = _int_header(found, HEADER_SOURCE_PARTITION, minimum=0)
        offset = _int_header(found, HEADER_SOURCE_OFFSET, minimum=0)
        timestamp = (
            _int_header(found, HEADER_SOURCE_TIMESTAMP, minimum=-(2**63))
            if HEADER_SOURCE_TIMESTAMP in found
            else None
        )
        error = found.get(HEADER_ERROR, b"")
        if len(error) > _MAX_READ_ERROR_BYTES:
            raise MalformedDeadLetter(f"header {HEADER_ERROR} is longer than a dead letter's")
        omitted = _flag_header(found, HEADER_VALUE_OMITTED)
        value_null = _flag_header(found, HEADER_VALUE_NULL)
        key_omitted = _flag_header(found, HEADER_KEY_OMITTED)
        digest = None
        if key_omitted:
            digest = _text_header(found, HEADER_KEY_SHA256, _SHA256_HEX_RE)
        not_decoded = _flag_header(found, HEADER_NOT_DECODED)
        last_offset = (
            _int_header(found, HEADER_SOURCE_LAST_OFFSET, minimum=offset)
            if HEADER_SOURCE_LAST_OFFSET in found
            else None
        )
        value = getattr(record, "value", None)
        key = getattr(record, "key", None)
        if not isinstance(value, bytes | None) or not isinstance(key, bytes | None):
            raise MalformedDeadLetter("the record's value and key must be bytes or null")
        return cls(
            reason=reason,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            # The writer cuts the text at a byte count, possibly inside a character.
            error=error.decode("utf-8", "replace"),
            value=None if omitted or value_null or not_decoded else value,
            key=None if key_omitted else key,
            value_omitted=omitted,
            source_timestamp=timestamp,
            key_omitted=key_omitted,
            key_sha256=digest,
            not_decoded=not_decoded,
            source_last_offset=last_offset,
            value_null=value_null,
        )


# The shapes DeadLetter.from_record accepts (see its docstring).
_REASON_RE = re.compile(r"[a-z0-9_]{1,64}")
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic names
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
# Well above what the writer produces (_MAX_ERROR_BYTES): a reader must not refuse letters from
# a writer with a somewhat larger cap, only absurd ones.
_MAX_READ_ERROR_BYTES = 4096
_OWN_PREFIX = "signed-bus-"


def _dead_letter_headers(headers: object) -> dict[str, bytes]:
    """The library's own headers of a dead letter, each present at most once."""
    if headers is None:
        headers = ()
    if isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
        raise MalformedDeadLetter("the record's headers are not a list of (name, value) pairs")
    found: dict[str, bytes] = {}
    for item in headers:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise MalformedDeadLetter("the record's headers are not a list of (name, value) pairs")
        name, raw = item
        if not isinstance(name, str) or not name.startswith(_OWN_PREFIX):
            continue  # not ours (tracing headers and the like): ignored
        if name in found:
            # Which copy the writer meant is unknowable: a repeat is a forgery or a bug.
            raise MalformedDeadLetter(f"header {_shown(name)} appears more than once")
        if not isinstance(raw, bytes):
            raise MalformedDeadLetter(f"header {_shown(name)} has a null or non-bytes value")
        found[name] = raw
    return found


def _shown(name: str) -> str:
    # A header name is attacker text too; ours are short ASCII, anything else is not named.
    return name if name in _KNOWN_HEADERS else "signed-bus-(unknown)"


def _text_header(found: dict[str, bytes], name: str, shape: re.Pattern[str]) -> str:
    raw = found.get(name)
    if raw is None:
        raise MalformedDeadLetter(f"not a signed-bus dead letter: header {name} is missing")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedDeadLetter(f"header {name} is not ASCII text") from None
    if not shape.fullmatch(text):
        raise MalformedDeadLetter(f"header {name} does not have the expected form")
    return text


def _int_header(found: dict[str, bytes], name: str, *, minimum: int) -> int:
    number = int(_text_header(found, name, _INT_RE))
    if not minimum <= number < 2**63:
        raise MalformedDeadLetter(f"header {name} is out of range")
    return number


def _flag_header(found: dict[str, bytes], name: str) -> bool:
    raw = found.get(name)
    if raw is None:
        return False
    if raw != b"1":
        raise MalformedDeadLetter(f"header {name} must be 1 when present")
    return True


def header_map(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """First value of each header name (helper for auditors and tests)."""
    found: dict[str, bytes] = {}
    for name, raw in headers:
        found.setdefault(name, raw)
    return found
