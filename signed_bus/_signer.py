"""Signer: turns an inference result into a signed envelope v1 record value.

Everything that is constant for a signer (the key object, the encoded alg/kid/issuer/model
header entries, the encoded topic entries) is computed once; a sign call encodes the body, the
per-message header fields, signs and frames.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from signed_bus import _native
from signed_bus._clock import Clock, system_clock
from signed_bus._envelope import (
    CONTENT_TYPE_MSGPACK,
    MAX_INT,
    NONCE_BYTES,
    check_expiry,
    check_parents,
    header_prefix,
    topic_entry,
)
from signed_bus._keys import Keyring
from signed_bus._payload import (
    MAX_POOLED_PACKERS,
    PACKER_POOL,
    POOLED_PACKER_BYTES,
    Encoder,
    check_map_keys,
    encode_payload,
    new_packer,
)
from signed_bus.errors import ConfigurationError

__all__ = ["NonceSource", "Signer"]

#: Returns 16 fresh random bytes per call. Tests inject a fixed one to get known-answer vectors.
NonceSource = Callable[[], bytes]

_EMPTY_PARENTS: Final = check_parents(())
# Encoded topic and content-type entries are cached; the caps bound memory if a caller feeds
# unbounded distinct values (they are then encoded per call, which is only slower).
_MAX_CACHED_TOPICS: Final = 1024
_MAX_CACHED_CONTENT_TYPES: Final = 64
_sha256 = hashlib.sha256

# Default nonces come from the OS CSPRNG, read 4 KiB at a time: one getrandom call per 256
# nonces instead of one per message. A list iterator hands them out atomically under the GIL, so
# threads sharing signers never get the same nonce; a forked child drops the parent's unused
# nonces (it would otherwise hand out the same ones as the parent).
_POOL_NONCES: Final = 256
_pool: Iterator[bytes] = iter(())


def _refill_pool() -> bytes:
    global _pool
    block = os.urandom(NONCE_BYTES * _POOL_NONCES)
    nonces = [block[i : i + NONCE_BYTES] for i in range(0, len(block), NONCE_BYTES)]
    _pool = iter(nonces[1:])
    return nonces[0]


def _drop_pool() -> None:
    global _pool
    _pool = iter(())


if hasattr(os, "register_at_fork"):  # POSIX; where there is no fork there is nothing to reset
    os.register_at_fork(after_in_child=_drop_pool)


class Signer:
    """Signs results with one key (``kid``) for one issuer and model.

    ``clock`` gives created_at (int ms). ``nonce_source`` returns the 16-byte nonce per message;
    leave it unset (fresh CSPRNG bytes) except to produce known-answer test vectors.
    ``encoder`` turns a result into its msgpack body (:meth:`sign`); the default,
    :func:`~signed_bus._payload.encode_payload`, also encodes numpy values, Pydantic models,
    dataclasses, datetimes, UUIDs, Decimals and enums in the form docs/ENVELOPE.md gives.

    Rotation: build a new Signer with the new kid once every verifier's ring holds the new key.
    """

    __slots__ = (
        "_alg",
        "_clock",
        "_cty_prefixes",
        "_encode",
        "_fast",
        "_issuer",
        "_kid",
        "_model",
        "_msgpack_prefix",
        "_nonce",
        "_seal_fn",
        "_seal_result",
        "_sign",
        "_topics",
    )

    def __init__(
        self,
        keyring: Keyring,
        *,
        kid: str,
        issuer: str,
        model: str,
        clock: Clock = system_clock,
        nonce_source: NonceSource | None = None,
        encoder: Encoder = encode_payload,
    ) -> None:
        key = keyring.get(kid)
        if key is None:
            raise ConfigurationError(f"kid {kid!r} is not in the keyring")
        if not key.can_sign:
            raise ConfigurationError(f"key {kid!r} cannot sign (it holds only a public key)")
        if not isinstance(issuer, str) or not key.may_sign_for(issuer):
            raise ConfigurationError(f"key {kid!r} may not sign for issuer {issuer!r}")
        self._alg = key.alg
        self._kid = kid
        self._issuer = issuer
        self._model = model
        try:
            self._msgpack_prefix = header_prefix(key.alg, kid, issuer, model, CONTENT_TYPE_MSGPACK)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        self._cty_prefixes: dict[str, bytes] = {CONTENT_TYPE_MSGPACK: self._msgpack_prefix}
        self._topics: dict[str, bytes] = {}
        self._sign = key.sign
        self._seal_fn = _native.sealer(key)  # the extension's seal where it is loaded
        self._clock = clock
        self._nonce = nonce_source
        self._encode = encoder
        # The default clock and nonce source: the extension reads both itself and seals a
        # msgpack body without parents or expiry in one call (None: the path below serves).
        # With the default encoder it also encodes (`_seal_result`: one call, no frame of ours).
        packing = (new_packer, PACKER_POOL, POOLED_PACKER_BYTES, MAX_POOLED_PACKERS)
        self._fast = (
            _native.fast_sealer(
                key,
                self._msgpack_prefix,
                _MAX_CACHED_TOPICS,
                *(packing if encoder is encode_payload else ()),
            )
            if clock is system_clock and nonce_source is None
            else None
        )
        #: ``seal_result(result, topic, key)``: the record value; None (nothing encoded) or
        #: ``(body,)`` (encoded, not sealed) where :meth:`_finish` must complete the signing.
        #: Without parents and expiry only; None where the extension does not encode.
        self._seal_result: Callable[[object, str, bytes | None], object] | None = (
            self._fast.seal if self._fast is not None and encoder is encode_payload else None
        )

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def model(self) -> str:
        return self._model

    @property
    def alg(self) -> str:
        return self._alg

    def __repr__(self) -> str:
        return (
            f"Signer(kid={self._kid!r}, alg={self._alg!r}, issuer={self._issuer!r}, "
            f"model={self._model!r})"
        )

    def sign(
        self,
        result: object,
        *,
        topic: str,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        expires_at: int | None = None,
    ) -> bytes:
        """Encode ``result`` with the signer's encoder (msgpack) and sign it for ``topic`` and
        record ``key``.

        Returns the Kafka record value. Raises TypeError if the encoder cannot encode ``result``.
        """
        seal_result = self._seal_result
        if seal_result is not None and expires_at is None and not parents:
            sealed = seal_result(result, topic, key)  # one native call: encode, check, seal
            if type(sealed) is bytes:
                return sealed
            return self._finish(sealed, result, topic, key)
        body = self._encode(result)
        fast = self._fast
        if fast is not None and expires_at is None and not parents:
            value: bytes | None = fast.sign(body, topic, key)
            if value is not None:
                return value
        if type(body) is not bytes:
            raise TypeError("the encoder must return bytes")
        return self._seal(body, self._msgpack_prefix, topic, key, parents, expires_at)

    def _finish(self, sealed: object, result: object, topic: str, key: bytes | None) -> bytes:
        """The record value where :attr:`_seal_result` answered ``sealed`` (None or ``(body,)``)
        for ``result`` without parents or expiry: the Python path's checks and errors."""
        if sealed is None:
            body = self._encode(result)
            if type(body) is not bytes:
                raise TypeError("the encoder must return bytes")
        else:
            assert type(sealed) is tuple
            body = sealed[0]
            check_map_keys(body)  # the default encoder's check, its error where it refuses
        return self._seal(body, self._msgpack_prefix, topic, key, (), None)

    def sign_bytes(
        self,
        body: bytes,
        *,
        content_type: str,
        topic: str,
        key: bytes | None = None,
        parents: Sequence[bytes] = (),
        expires_at: int | None = None,
    ) -> bytes:
        """Sign an already-encoded body of the given content type; returns the record value."""
        fast = self._fast
        if (
            fast is not None
            and content_type == CONTENT_TYPE_MSGPACK
            and expires_at is None
            and not parents
        ):
            value: bytes | None = fast.sign(body, topic, key)
            if value is not None:
                return value
        if type(body) is not bytes:
            if not isinstance(body, bytearray | memoryview):
                raise TypeError("body must be bytes")
            body = bytes(body)
        prefix = self._cty_prefixes.get(content_type)
        if prefix is None:
            prefix = header_prefix(self._alg, self._kid, self._issuer, self._model, content_type)
            if len(self._cty_prefixes) < _MAX_CACHED_CONTENT_TYPES:
                self._cty_prefixes[content_type] = prefix
        return self._seal(body, prefix, topic, key, parents, expires_at)

    def _seal(
        self,
        body: bytes,
        prefix: bytes,
        topic: str,
        key: bytes | None,
        parents: Sequence[bytes],
        expires_at: int | None,
    ) -> bytes:
        topic_part = self._topics.get(topic)
        if topic_part is None:
            topic_part = topic_entry(topic)
            if len(self._topics) < _MAX_CACHED_TOPICS:
                self._topics[topic] = topic_part
                if self._fast is not None:
                    self._fast.add_topic(topic, topic_part)
        if key is None:
            rkd = None
        elif type(key) is bytes:
            rkd = _sha256(key).digest()
        else:
            raise TypeError("key must be bytes or None")
        created_at = self._clock()
        if type(created_at) is not int or not 0 <= created_at <= MAX_INT:
            raise ConfigurationError("the clock must return int milliseconds since the epoch")
        if self._nonce is None:
            try:
                nonce = next(_pool)
            except StopIteration:
                nonce = _refill_pool()
        else:
            nonce = self._nonce()
            if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
                raise ConfigurationError(f"the nonce source must return {NONCE_BYTES} bytes")
        if expires_at is not None:
            check_expiry(expires_at, created_at)
        return self._seal_fn(
            prefix,
            topic_part,
            rkd,
            created_at,
            nonce,
            check_parents(parents) if parents else _EMPTY_PARENTS,
            expires_at,
            body,
            self._sign,
        )
