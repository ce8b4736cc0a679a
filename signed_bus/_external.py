"""Keys held elsewhere: a KMS, an HSM or Vault signs, the process never sees the secret.

An :class:`ExternalKey` goes in the signer's keyring like any other key; the
:class:`~signed_bus.Signer` calls its ``sign`` function once per envelope with the exact bytes to
sign, the signed message of docs/ENVELOPE.md section 4 (domain, tag, protected header and body,
length-delimited). The function returns the raw signature: 64 bytes for ``EdDSA`` (pure Ed25519,
RFC 8032, no prehash), 32 for ``HS256`` (HMAC-SHA256). An EdDSA external key also holds the
public key, and every signature the function returns is verified against it before the envelope
leaves the signer, so a KMS pointed at the wrong key fails at the producer, not at every consumer.
A worked example with a local stand-in: docs/OPERATIONS.md, "Keys held in a KMS or Vault".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NoReturn

from signed_bus._keyfile import EDDSA, HS256
from signed_bus._keys import Ed25519Key, Key
from signed_bus.errors import BadSignature, ConfigurationError

__all__ = ["ExternalKey", "SignFunction"]

#: Signs the signed message (bytes) and returns the raw signature (bytes).
SignFunction = Callable[[bytes], bytes]

_SIGNATURE_BYTES = {EDDSA: 64, HS256: 32}


class ExternalKey(Key):
    """A signing key whose secret stays in a KMS or Vault: ``sign`` signs for it.

    ``alg`` is ``"EdDSA"`` (give ``public_key``, the raw 32-byte Ed25519 public key: the key
    then also verifies and its public part exports like any Ed25519 key's) or ``"HS256"`` (an
    HMAC key in a KMS; it signs only: verifiers hold the secret themselves). The function is
    called on the signer's thread and must be thread-safe if the signer is shared; an exception
    it raises reaches the caller of ``Signer.sign`` unchanged.
    """

    __slots__ = ("_alg", "_public", "_sign_fn")

    _alg: str
    _public: Ed25519Key | None
    _sign_fn: SignFunction

    def __init__(
        self,
        kid: str,
        *,
        alg: str,
        issuers: Iterable[str],
        sign: SignFunction,
        public_key: bytes | None = None,
    ) -> None:
        super().__init__(kid, issuers)
        if alg not in _SIGNATURE_BYTES:
            raise ConfigurationError(f"key {kid!r}: alg must be {EDDSA!r} or {HS256!r}")
        if not callable(sign):
            raise ConfigurationError(f"key {kid!r}: sign must be a function of the message bytes")
        public = None
        if alg == EDDSA:
            if public_key is None:
                raise ConfigurationError(
                    f"key {kid!r}: an EdDSA external key needs its public_key (32 raw bytes)"
                )
            public = Ed25519Key.from_public_bytes(kid, public_key, issuers=issuers)
        elif public_key is not None:
            raise ConfigurationError(f"key {kid!r}: an HS256 key has no public key")
        object.__setattr__(self, "_alg", alg)
        object.__setattr__(self, "_public", public)
        object.__setattr__(self, "_sign_fn", sign)

    @property
    def alg(self) -> str:  # type: ignore[override]
        return self._alg

    @property
    def can_sign(self) -> bool:
        return True

    @property
    def has_secret(self) -> bool:
        return False  # the secret is elsewhere; nothing here needs a 0600 file

    def public(self) -> Ed25519Key:
        """The Ed25519 public key, for verifiers (EdDSA only)."""
        if self._public is None:
            raise ConfigurationError(f"key {self.kid!r} is an HS256 key: it has no public part")
        return self._public

    def sign(self, message: bytes) -> bytes:
        signature = self._sign_fn(message)
        if type(signature) is not bytes or len(signature) != _SIGNATURE_BYTES[self._alg]:
            raise ConfigurationError(
                f"key {self.kid!r}: the sign function must return the "
                f"{_SIGNATURE_BYTES[self._alg]}-byte raw signature"
            )
        if self._public is not None:
            try:
                self._public.verify(message, signature)
            except BadSignature:
                raise ConfigurationError(
                    f"key {self.kid!r}: the sign function returned a signature that does not "
                    "verify under the key's public key (is it pointed at another key?)"
                ) from None
        return signature

    def verify(self, message: bytes, signature: bytes) -> None:
        if self._public is None:
            raise BadSignature("an HS256 external key signs only; it cannot verify", kid=self.kid)
        self._public.verify(message, signature)

    def _material(self) -> NoReturn:
        raise ConfigurationError(
            f"key {self.kid!r} is held elsewhere: it cannot be written to a key file"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExternalKey):
            return NotImplemented
        return self is other

    def __hash__(self) -> int:
        return id(self)
