"""Signing keys and the keyring that maps key ids (kids) to them.

Two algorithms, each pinned to its key type so one kind of key material can never be used as the
other (algorithm confusion):

- ``HS256`` (:class:`HmacKey`): HMAC-SHA256 over a shared secret of at least 32 bytes. Fast; every
  holder of the secret can both sign and verify, so it proves "someone in the trust domain".
- ``EdDSA`` (:class:`Ed25519Key`): Ed25519. The private key signs, the public key only verifies,
  so a verifier holding the public key cannot forge: it proves which agent produced a result.

Each key names the issuers (agent ids) it may sign for, as an explicit set. There is no wildcard:
``"*"`` is refused so that an issuer named ``*`` can never be mistaken for "any issuer".

Key material never appears in ``repr``, ``str``, exception messages or logs. Errors raised while
loading a key file name the file, the entry index, the kid and the field, never a field's value.

Key files and the ``SIGNED_BUS_KEYRING`` variable are read and written by
:mod:`signed_bus._keyfile` (``Keyring.from_file`` / ``from_env`` / ``from_json`` / ``dump``); the
format is specified in docs/KEYFILE.md.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from signed_bus import _keyfile
from signed_bus._keyfile import (
    EDDSA,
    HS256,
    KEYRING_ENV_VAR,
    KeyEntry,
    b64u_encode,
    check_issuers,
    check_kid,
)
from signed_bus.errors import BadSignature, ConfigurationError

__all__ = [
    "EDDSA",
    "HS256",
    "KEYRING_ENV_VAR",
    "MIN_HMAC_SECRET_BYTES",
    "Ed25519Key",
    "HmacKey",
    "Key",
    "Keyring",
    "generate_ed25519_key",
    "generate_hmac_key",
]

MIN_HMAC_SECRET_BYTES: Final = 32

_ED25519_RAW_BYTES: Final = 32


class Key(abc.ABC):
    """A signing or verifying key: ``kid``, ``alg``, the ``issuers`` it may sign for.

    Immutable. ``sign``/``verify`` are the fast path the signer and verifier call per message.
    """

    __slots__ = ("issuers", "kid")

    alg: ClassVar[str]
    kid: str
    issuers: frozenset[str]

    def __init__(self, kid: str, issuers: Iterable[str]) -> None:
        object.__setattr__(self, "kid", check_kid(kid))
        object.__setattr__(self, "issuers", check_issuers(kid, issuers))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        # Deliberately kid, alg and issuers only: a key can be logged or shown in a traceback.
        issuers = ", ".join(repr(issuer) for issuer in sorted(self.issuers))
        extra = "" if self.can_sign else ", verify_only=True"
        return (
            f"{type(self).__name__}(kid={self.kid!r}, alg={self.alg!r}, issuers=[{issuers}]{extra})"
        )

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # Pickling would copy key material into whatever stores the pickle (caches, task queues).
        raise TypeError(f"{type(self).__name__} cannot be pickled")

    # Immutable, so copies may share: this keeps copy.copy/deepcopy (dataclasses.asdict, settings
    # objects) working although pickling is refused.
    def __copy__(self) -> Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Key:
        return self

    def may_sign_for(self, issuer: str) -> bool:
        """Whether this key is trusted to sign for ``issuer``."""
        return issuer in self.issuers

    @property
    @abc.abstractmethod
    def can_sign(self) -> bool:
        """Whether this key holds signing material (an HMAC secret or an Ed25519 private key)."""

    @property
    @abc.abstractmethod
    def has_secret(self) -> bool:
        """Whether this key holds material that must stay secret (file mode checks use it)."""

    @abc.abstractmethod
    def sign(self, message: bytes) -> bytes:
        """Sign ``message``; raises ConfigurationError if this key cannot sign."""

    @abc.abstractmethod
    def verify(self, message: bytes, signature: bytes) -> None:
        """Return None if ``signature`` is valid for ``message``, else raise BadSignature."""

    @abc.abstractmethod
    def _material(self) -> dict[str, str]:
        """The key-material fields of this key's key-file entry (base64url values)."""

    def _entry(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "issuers": sorted(self.issuers),
            **self._material(),
        }


class HmacKey(Key):
    """An HMAC-SHA256 (``HS256``) key: a shared secret of at least 32 bytes."""

    __slots__ = ("_inner", "_outer", "_secret")

    alg: ClassVar[str] = HS256
    _secret: bytes
    _inner: Any  # hashlib sha256 objects (hashlib exports no public type for them)
    _outer: Any

    def __init__(self, kid: str, secret: bytes, *, issuers: Iterable[str]) -> None:
        super().__init__(kid, issuers)
        if not isinstance(secret, bytes):
            raise ConfigurationError(f"key {kid!r}: the HMAC secret must be bytes")
        if len(secret) < MIN_HMAC_SECRET_BYTES:
            raise ConfigurationError(
                f"key {kid!r}: the HMAC secret is {len(secret)} bytes; at least "
                f"{MIN_HMAC_SECRET_BYTES} are required"
            )
        object.__setattr__(self, "_secret", secret)
        # HMAC (RFC 2104) with both padded-key blocks hashed once: per message, copying the two
        # SHA-256 states costs less than hmac.HMAC.copy() and its Python wrapper (measured by
        # benchmarks/bench_core.py); the result is byte-identical to hmac.digest(secret, m, sha256).
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\0")
        object.__setattr__(self, "_inner", hashlib.sha256(bytes(b ^ 0x36 for b in block)))
        object.__setattr__(self, "_outer", hashlib.sha256(bytes(b ^ 0x5C for b in block)))

    @property
    def can_sign(self) -> bool:
        return True

    @property
    def has_secret(self) -> bool:
        return True

    def sign(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()  # type: ignore[no-any-return]

    def verify(self, message: bytes, signature: bytes) -> None:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), signature):
            raise BadSignature("signature does not match", kid=self.kid)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HmacKey):
            return NotImplemented
        return (
            self.kid == other.kid
            and self.issuers == other.issuers
            and hmac.compare_digest(self._secret, other._secret)
        )

    def __hash__(self) -> int:
        return hash((HS256, self.kid))

    def _material(self) -> dict[str, str]:
        return {"secret": b64u_encode(self._secret)}


#: Encodings of the eight points of order 1, 2, 4 and 8 on edwards25519, the x sign bit cleared
#: (y = 1, p - 1, 0, the two order-8 y values, and the non-canonical y = p, p + 1):
#: tests/unit/test_ed25519_strictness.py recomputes them from the curve.
_SMALL_ORDER_ENCODINGS: Final = frozenset(
    bytes.fromhex(text)
    for text in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def _small_order(raw: bytes) -> bool:
    return raw[:31] + bytes((raw[31] & 0x7F,)) in _SMALL_ORDER_ENCODINGS


class Ed25519Key(Key):
    """An Ed25519 (``EdDSA``) key: a private key (signs and verifies) or a public key (verifies).

    Build it from cryptography key objects, or with :meth:`from_private_bytes` /
    :meth:`from_public_bytes` from the raw 32-byte encodings.
    """

    __slots__ = ("_private", "_public")

    alg: ClassVar[str] = EDDSA
    _private: Ed25519PrivateKey | None
    _public: Ed25519PublicKey

    def __init__(
        self,
        kid: str,
        *,
        issuers: Iterable[str],
        private_key: Ed25519PrivateKey | None = None,
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        super().__init__(kid, issuers)
        if private_key is not None:
            if not isinstance(private_key, Ed25519PrivateKey):
                raise ConfigurationError(f"key {kid!r}: private_key must be an Ed25519PrivateKey")
            derived = private_key.public_key()
            if public_key is not None and public_key != derived:
                raise ConfigurationError(f"key {kid!r}: public_key does not belong to private_key")
            public_key = derived
        elif public_key is None:
            raise ConfigurationError(f"key {kid!r}: give private_key or public_key")
        elif not isinstance(public_key, Ed25519PublicKey):
            raise ConfigurationError(f"key {kid!r}: public_key must be an Ed25519PublicKey")
        elif _small_order(public_key.public_bytes_raw()):
            # OpenSSL verifies cofactorless without checking the key's order: under the
            # identity point, (R = identity, S = 0) is a valid signature of every message.
            raise ConfigurationError(
                f"key {kid!r}: a small-order Ed25519 public key, under which forged "
                "signatures verify (docs/ENVELOPE.md section 4)"
            )
        object.__setattr__(self, "_private", private_key)
        object.__setattr__(self, "_public", public_key)

    @classmethod
    def from_private_bytes(cls, kid: str, raw: bytes, *, issuers: Iterable[str]) -> Ed25519Key:
        """Build a signing key from the raw 32-byte private key (seed)."""
        check_kid(kid)
        if not isinstance(raw, bytes) or len(raw) != _ED25519_RAW_BYTES:
            raise ConfigurationError(
                f"key {kid!r}: an Ed25519 private key is {_ED25519_RAW_BYTES} raw bytes"
            )
        return cls(kid, issuers=issuers, private_key=Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_public_bytes(cls, kid: str, raw: bytes, *, issuers: Iterable[str]) -> Ed25519Key:
        """Build a verify-only key from the raw 32-byte public key."""
        check_kid(kid)
        if not isinstance(raw, bytes) or len(raw) != _ED25519_RAW_BYTES:
            raise ConfigurationError(
                f"key {kid!r}: an Ed25519 public key is {_ED25519_RAW_BYTES} raw bytes"
            )
        try:
            public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ConfigurationError(f"key {kid!r}: not a valid Ed25519 public key") from None
        return cls(kid, issuers=issuers, public_key=public)

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    @property
    def has_secret(self) -> bool:
        return self._private is not None

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key (not secret)."""
        return self._public.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def public(self) -> Ed25519Key:
        """This key without its private part: verifies, cannot sign."""
        if self._private is None:
            return self
        return Ed25519Key(self.kid, issuers=self.issuers, public_key=self._public)

    def sign(self, message: bytes) -> bytes:
        if self._private is None:
            raise ConfigurationError(
                f"key {self.kid!r} holds only an Ed25519 public key and cannot sign"
            )
        return self._private.sign(message)

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            raise BadSignature("signature does not verify", kid=self.kid) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ed25519Key):
            return NotImplemented
        return (
            self.kid == other.kid
            and self.issuers == other.issuers
            and self.can_sign == other.can_sign
            and self.public_bytes == other.public_bytes
        )

    def __hash__(self) -> int:
        return hash((EDDSA, self.kid))

    def _material(self) -> dict[str, str]:
        if self._private is None:
            return {"public": b64u_encode(self.public_bytes)}
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {"private": b64u_encode(raw)}


def generate_hmac_key(kid: str, issuers: Iterable[str]) -> HmacKey:
    """A new HS256 key with a 32-byte secret from the OS CSPRNG."""
    return HmacKey(kid, secrets.token_bytes(MIN_HMAC_SECRET_BYTES), issuers=issuers)


def generate_ed25519_key(kid: str, issuers: Iterable[str]) -> Ed25519Key:
    """A new EdDSA signing key (its public part: ``key.public()``)."""
    return Ed25519Key(kid, issuers=issuers, private_key=Ed25519PrivateKey.generate())


def _key_from_entry(entry: KeyEntry) -> Key:
    try:
        if entry.field == "secret":
            return HmacKey(entry.kid, entry.material, issuers=entry.issuers)
        if entry.field == "private":
            return Ed25519Key.from_private_bytes(entry.kid, entry.material, issuers=entry.issuers)
        return Ed25519Key.from_public_bytes(entry.kid, entry.material, issuers=entry.issuers)
    except ConfigurationError as exc:
        # Messages from the constructors already name the kid and never the material.
        raise ConfigurationError(f"{entry.where}: {exc}") from None


class Keyring:
    """Maps kid -> key. The verifier looks every envelope's kid up here; the signer picks its one
    active kid from it.

    Rotation: add the new key to every ring, switch the signer's kid, remove the old key once
    max_age has passed. ``add``/``remove`` are safe to call on a ring a verifier is using.
    """

    __slots__ = ("_keys", "_on_miss")

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._keys: dict[str, Key] = {}
        # Told of every kid asked for and not found (a KeySource refetches, rate limited). It is
        # handed untrusted header text: it must not log or keep it.
        self._on_miss: Callable[[], None] | None = None
        for key in keys:
            self.add(key)

    # -- mapping-like access --------------------------------------------------------------------

    def get(self, kid: str) -> Key | None:
        """The key with this kid, or None (the verifier turns None into UnknownKey)."""
        try:
            key = self._keys.get(kid)
        except TypeError:  # an unhashable kid decoded from an untrusted header
            key = None
        if key is None and self._on_miss is not None:
            self._on_miss()
        return key

    def __getitem__(self, kid: str) -> Key:
        return self._keys[kid]

    def __contains__(self, kid: object) -> bool:
        try:
            return kid in self._keys
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def kids(self) -> list[str]:
        return list(self._keys)

    def __repr__(self) -> str:
        return f"Keyring({list(self._keys.values())!r})"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("Keyring cannot be pickled")

    def __copy__(self) -> Keyring:
        return Keyring(self._keys.values())

    def __deepcopy__(self, memo: dict[int, object]) -> Keyring:
        return Keyring(self._keys.values())

    @property
    def has_secrets(self) -> bool:
        """Whether any key holds secret material (an HMAC secret or an Ed25519 private key)."""
        return any(key.has_secret for key in self._keys.values())

    def add(self, key: Key, *, replace: bool = False) -> None:
        """Add ``key``; a kid already in the ring is a ConfigurationError unless ``replace``."""
        if not isinstance(key, Key):
            raise ConfigurationError("Keyring.add takes an HmacKey or an Ed25519Key")
        if key.kid in self._keys and not replace:
            raise ConfigurationError(f"kid {key.kid!r} is already in the keyring")
        self._keys[key.kid] = key

    def remove(self, kid: str) -> None:
        """Remove the key ``kid``; raises KeyError if it is not in the ring."""
        del self._keys[kid]

    def public(self) -> Keyring:
        """A ring with verifying material only, for distribution to verifiers.

        Ed25519 keys keep their public part. HMAC keys are dropped: they are symmetric, so the
        secret that verifies also signs, and there is no public part to export.
        """
        parts = (getattr(key, "public", None) for key in self._keys.values() if key.alg == EDDSA)
        return Keyring(part() for part in parts if part is not None)

    # -- the key file (signed_bus._keyfile, docs/KEYFILE.md) ---------------------------------

    def to_json(self) -> str:
        """The key file contents (includes secrets, if the ring holds any)."""
        return _keyfile.dumps(key._entry() for key in self._keys.values())

    @classmethod
    def from_mapping(cls, document: Mapping[str, object], *, source: str = "keyring") -> Keyring:
        """Build a ring from the parsed JSON document; ``source`` names it in error messages."""
        return cls._from_document(document, source=source)

    @classmethod
    def _from_document(cls, document: object, *, source: str) -> Keyring:
        ring = cls()
        for entry in _keyfile.iter_entries(document, source=source):
            key = _key_from_entry(entry)
            if key.kid in ring:
                raise ConfigurationError(f"{source}: kid {key.kid!r} appears more than once")
            ring.add(key)
        return ring

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "keyring JSON") -> Keyring:
        """Parse key file contents. Errors name ``source``, never the contents; a member
        repeated in any JSON object is refused (docs/KEYFILE.md)."""
        return cls._from_document(_keyfile.parse_json(text, source=source), source=source)

    def to_jwks(self) -> str:
        """The JWK Set (RFC 7517) of this ring's Ed25519 public keys, issuers included
        (docs/KEYFILE.md, "JWK Sets"); HMAC keys have no public part and are left out."""
        from signed_bus._jwks import dumps_jwks

        return dumps_jwks(self)

    @classmethod
    def from_jwks(cls, text: str | bytes, *, source: str = "JWK Set") -> Keyring:
        """A verify-only ring from a JWK Set; Ed25519 keys without the issuers member are
        refused (docs/KEYFILE.md, "JWK Sets")."""
        from signed_bus._jwks import keyring_from_jwks

        return keyring_from_jwks(text, source=source)

    @classmethod
    def from_env(cls, var: str = KEYRING_ENV_VAR) -> Keyring:
        """Load the ring from an environment variable holding the key file contents."""
        text, source = _keyfile.read_env(var)
        return cls.from_json(text, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load the ring from a key file.

        Refuses anything but a regular file, a file owned by another user than this process's
        or root, a file that group or others could write and, if it holds secrets, one that
        group or others can read (:func:`signed_bus._keyfile.read_file`). A symbolic link is
        followed; the checks apply to its target.
        """
        file = _keyfile.read_file(path)
        ring = cls.from_json(file.data, source=file.source)
        if ring.has_secrets:
            _keyfile.refuse_exposed_secrets(file)
        return ring

    def dump(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, mode: int = 0o600
    ) -> None:
        """Write :meth:`to_json` to ``path`` atomically, created with ``mode`` (default 0600).

        Without ``overwrite`` an existing file is left alone and ConfigurationError is raised.
        A ring holding secrets is never written readable by group or others.
        """
        _keyfile.write_file(
            path, self.to_json(), secret=self.has_secrets, overwrite=overwrite, mode=mode
        )
