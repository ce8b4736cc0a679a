"""VerifiedMessage: an envelope that passed verification (built by signed_bus._verifier).

Its header fields are read from the checked header: the map the pure path decodes, or the
native opener's header object (``signed_bus_native.Header``: the same keys and values, read
like the map, the parents as a tuple), which costs one allocation instead of a dozen and which
the cyclic collector does not track. The body is decoded on the first read of ``payload``.
The verifier (and the native opener, through :data:`MAKER`) builds instances without
``__init__`` or a Python call per field: a :class:`_Draft` (a subclass that adds no slots and
drops the frozen ``__setattr__``) has its fields written as plain attributes, then becomes a
VerifiedMessage by ``__class__`` assignment, which CPython allows between classes of the same
layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NoReturn, cast

from signed_bus._envelope import (
    CONTENT_TYPE_MSGPACK,
    HEADER_KEYS,
    K_ALG,
    K_CTY,
    K_EXP,
    K_IAT,
    K_ISS,
    K_KID,
    K_MDL,
    K_NCE,
    K_PAR,
    K_TPC,
    envelope_digest,
)
from signed_bus._payload import PayloadError, decode_json, decode_msgpack
from signed_bus.errors import MalformedEnvelope, UnsupportedContentType

__all__ = ["CONTENT_TYPE_JSON", "MAKER", "VerifiedMessage"]

CONTENT_TYPE_JSON: Final = "application/json"
#: The keys every header holds (all but exp), in HEADER_KEYS order.
_REQUIRED_KEYS: Final = HEADER_KEYS[:-1]
#: VerifiedMessage._payload before the first read of ``payload``.
_UNDECODED: Final = object()


class VerifiedMessage:
    """An envelope that passed verification: its exact body bytes and its header fields.

    Immutable. ``payload`` decodes the body once, on first access (msgpack or JSON content
    types). ``digest`` (SHA-256 of the whole record value, the value downstream envelopes name
    as a parent) is also computed on first access: most consumers never need it.
    """

    # Verifier.verify builds instances without __init__: a _Draft with four plain attribute
    # writes, then its class set to this one. ``_digest`` stays unset until first read and
    # ``_payload`` holds _UNDECODED until then (a sentinel costs a tenth of a caught
    # AttributeError, and every consumed record reads its payload). The keyword constructor
    # below serves tests and code that builds messages by hand.
    __slots__ = ("_digest", "_header", "_payload", "_value", "body")

    _header: Mapping[str, Any]  # a dict, or the native opener's Header (read the same way)
    body: bytes
    _value: bytes | None
    _digest: bytes
    _payload: object

    def __init__(
        self,
        *,
        body: bytes,
        content_type: str,
        issuer: str,
        model: str,
        kid: str,
        alg: str,
        created_at: int,
        expires_at: int | None,
        nonce: bytes,
        parents: Sequence[bytes],
        digest: bytes,
        topic: str,
    ) -> None:
        header: dict[str, Any] = {
            K_ALG: alg,
            K_KID: kid,
            K_ISS: issuer,
            K_MDL: model,
            K_CTY: content_type,
            K_TPC: topic,
            K_IAT: created_at,
            K_NCE: nonce,
            K_PAR: list(parents),
        }
        if expires_at is not None:
            header[K_EXP] = expires_at
        _set_header(self, header)
        _set_body(self, body)
        _set_value(self, None)
        _set_payload(self, _UNDECODED)
        _set_digest(self, digest)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    @property
    def content_type(self) -> str:
        return self._header[K_CTY]  # type: ignore[no-any-return]

    @property
    def issuer(self) -> str:
        return self._header[K_ISS]  # type: ignore[no-any-return]

    @property
    def model(self) -> str:
        return self._header[K_MDL]  # type: ignore[no-any-return]

    @property
    def kid(self) -> str:
        return self._header[K_KID]  # type: ignore[no-any-return]

    @property
    def alg(self) -> str:
        return self._header[K_ALG]  # type: ignore[no-any-return]

    @property
    def created_at(self) -> int:
        return self._header[K_IAT]  # type: ignore[no-any-return]

    @property
    def expires_at(self) -> int | None:
        return self._header.get(K_EXP)

    @property
    def nonce(self) -> bytes:
        return self._header[K_NCE]  # type: ignore[no-any-return]

    @property
    def parents(self) -> tuple[bytes, ...]:
        return tuple(self._header[K_PAR])

    @property
    def topic(self) -> str:
        return self._header[K_TPC]  # type: ignore[no-any-return]

    @property
    def digest(self) -> bytes:
        try:
            return self._digest
        except AttributeError:  # first read
            assert self._value is not None
            digest = envelope_digest(self._value)
            _set_digest(self, digest)
            return digest

    @property
    def payload(self) -> object:
        """The body decoded per its content type, once.

        application/msgpack and application/json are decoded; any other content type raises
        UnsupportedContentType (read ``body`` instead). An authentic body that does not decode
        raises MalformedEnvelope (reason "malformed").
        """
        payload = self._payload
        if payload is _UNDECODED:  # first read
            payload = self._decode_payload()
            _set_payload(self, payload)
        return payload

    def _decode_payload(self) -> object:
        content_type = self._header[K_CTY]
        if content_type == CONTENT_TYPE_MSGPACK:
            decode = decode_msgpack
        elif content_type == CONTENT_TYPE_JSON:
            decode = decode_json
        else:
            raise UnsupportedContentType(
                f"no decoder for content type {content_type!r}; read .body instead"
            )
        try:
            return decode(self.body)
        except PayloadError as exc:  # the profile's own messages: they never quote the body
            raise MalformedEnvelope(
                f"body does not decode as {content_type}: {exc}",
                kid=self.kid,
                issuer=self.issuer,
                topic=self.topic,
            ) from None

    def _fields(self) -> tuple[object, ...]:
        return (
            self.body,
            self.content_type,
            self.issuer,
            self.model,
            self.kid,
            self.alg,
            self.created_at,
            self.expires_at,
            self.nonce,
            self.parents,
            self.digest,
            self.topic,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifiedMessage):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        # The body is the application's data: its size is shown, never its bytes.
        return (
            f"VerifiedMessage(issuer={self.issuer!r}, model={self.model!r}, kid={self.kid!r}, "
            f"alg={self.alg!r}, topic={self.topic!r}, created_at={self.created_at}, "
            f"expires_at={self.expires_at}, content_type={self.content_type!r}, "
            f"body=<{len(self.body)} bytes>, nonce={self.nonce.hex()}, "
            f"parents={len(self._header[K_PAR])}, digest={self.digest.hex()})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The same pickle from both paths: the header as the map the pure path decodes (in
        # HEADER_KEYS order, the parents in a list), whichever object the message holds it in.
        h = self._header
        header = {key: h[key] for key in _REQUIRED_KEYS}
        header[K_PAR] = list(header[K_PAR])
        if K_EXP in h:
            header[K_EXP] = h[K_EXP]
        return (_rebuild, (header, self.body, self.digest))


def _rebuild(header: dict[str, Any], body: bytes, digest: bytes) -> VerifiedMessage:
    msg = _build(header, body, None)
    _set_digest(msg, digest)
    return msg


class _Draft(VerifiedMessage):
    """A VerifiedMessage under construction: its slots (inherited, none added) written as plain
    attributes (object's ``__setattr__`` and ``__init__``, so no Python call per field);
    :func:`_build` then assigns its ``__class__``. As a subclass that adds nothing, it shares
    VerifiedMessage's layout by construction, and CPython's check of the assignment stops at
    the common base instead of comparing the slots of two unrelated classes. Nothing outside
    this module and the native opener sees one."""

    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__  # type: ignore[assignment]
    __delattr__ = object.__delattr__  # type: ignore[assignment]


def _build(header: Mapping[str, Any], body: bytes, value: bytes | None) -> VerifiedMessage:
    """The message of a checked header, its body and the record value (None: not kept)."""
    draft = _Draft()
    draft._header = header
    draft.body = body
    draft._value = value
    draft._payload = _UNDECODED
    draft.__class__ = VerifiedMessage
    return cast(VerifiedMessage, draft)


def _slot_setter(name: str) -> Callable[[VerifiedMessage, Any], None]:
    # Slot descriptors write past the frozen __setattr__ (what a frozen dataclass does via
    # object.__setattr__, at half the cost).
    descriptor: Any = VerifiedMessage.__dict__[name]
    return descriptor.__set__  # type: ignore[no-any-return]


_set_header = _slot_setter("_header")
_set_body = _slot_setter("body")
_set_value = _slot_setter("_value")
_set_digest = _slot_setter("_digest")
_set_payload = _slot_setter("_payload")


#: How the native opener builds a message (signed_bus/_native.py), as :func:`_build` does: the
#: draft class, the class it becomes, and the sentinel ``_payload`` holds until the first read.
MAKER: Final = (_Draft, VerifiedMessage, _UNDECODED)
