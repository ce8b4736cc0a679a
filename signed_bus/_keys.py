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

The JSON format read by :meth:`Keyring.from_file` / :meth:`Keyring.from_env` and written by
:meth:`Keyring.to_json` / :meth:`Keyring.dump` (documented in docs/OPERATIONS.md, "Keys")::

    {"version": 1,
     "keys": [{"kid": "k1", "alg": "HS256", "issuers": ["agent-a"], "secret": "<base64url>"},
              {"kid": "k2", "alg": "EdDSA", "issuers": ["agent-b"], "private": "<base64url>"},
              {"kid": "k3", "alg": "EdDSA", "issuers": ["agent-c"], "public": "<base64url>"}]}

``secret`` is the raw HMAC secret, ``private`` the 32-byte Ed25519 seed, ``public`` the 32-byte
Ed25519 public key, each base64url (RFC 4648 section 5), written without padding.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
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

HS256: Final = "HS256"
EDDSA: Final = "EdDSA"
MIN_HMAC_SECRET_BYTES: Final = 32
KEYRING_ENV_VAR: Final = "SIGNED_BUS_KEYRING"
FILE_FORMAT_VERSION: Final = 1

_ED25519_RAW_BYTES: Final = 32
_MAX_KID_CHARS: Final = 128
_MAX_ISSUER_CHARS: Final = 256
# A key file is a few hundred bytes per key; a cap keeps a wrong path (/dev/zero, a log file) from
# being read whole into memory.
_MAX_KEYRING_BYTES: Final = 4 * 1024 * 1024
# Printable ASCII without spaces: kids travel in headers, log lines and metric labels.
_KID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")  # 128 == _MAX_KID_CHARS
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# Field names are shown in errors only when they look like identifiers (a secret pasted as a field
# name must not end up in an error message).
_FIELD_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


def _b64u_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64u_decode(text: str) -> bytes:
    """Strict base64url: alphabet checked, padding optional, canonical encoding only.

    Raises ValueError with a fixed message (never the input).
    """
    if not _B64URL_RE.fullmatch(text):
        raise ValueError("not base64url")
    stripped = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if _b64u_encode(raw) != stripped:
        raise ValueError("not canonical base64url")
    return raw


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise ConfigurationError(
            f"kid must be 1 to {_MAX_KID_CHARS} printable ASCII characters without spaces"
        )
    return kid


def _check_issuers(kid: str, issuers: object) -> frozenset[str]:
    # A bare string would iterate as single characters: refuse it rather than guess.
    if isinstance(issuers, str | bytes) or not isinstance(issuers, Iterable):
        raise ConfigurationError(
            f"key {kid!r}: issuers must be a collection of issuer names, not a single value"
        )
    checked: set[str] = set()
    for issuer in issuers:
        if (
            not isinstance(issuer, str)
            or not issuer
            or len(issuer) > _MAX_ISSUER_CHARS
            or not issuer.isprintable()
        ):
            raise ConfigurationError(
                f"key {kid!r}: each issuer must be a non-empty printable string of at most "
                f"{_MAX_ISSUER_CHARS} characters"
            )
        if issuer == "*":
            raise ConfigurationError(
                f"key {kid!r}: issuer '*' is not a wildcard and is refused; list the issuers "
                "this key may sign for"
            )
        checked.add(issuer)
    if not checked:
        raise ConfigurationError(f"key {kid!r}: needs at least one issuer it may sign for")
    return frozenset(checked)


class Key(abc.ABC):
    """A signing or verifying key: ``kid``, ``alg``, the ``issuers`` it may sign for.

    Immutable. ``sign``/``verify`` are the fast path the signer and verifier call per message.
    """

    __slots__ = ("issuers", "kid")

    alg: ClassVar[str]
    kid: str
    issuers: frozenset[str]

    def __init__(self, kid: str, issuers: Iterable[str]) -> None:
        object.__setattr__(self, "kid", _check_kid(kid))
        object.__setattr__(self, "issuers", _check_issuers(kid, issuers))

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
        return {"secret": _b64u_encode(self._secret)}


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
        _check_kid(kid)
        if not isinstance(raw, bytes) or len(raw) != _ED25519_RAW_BYTES:
            raise ConfigurationError(
                f"key {kid!r}: an Ed25519 private key is {_ED25519_RAW_BYTES} raw bytes"
            )
        return cls(kid, issuers=issuers, private_key=Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_public_bytes(cls, kid: str, raw: bytes, *, issuers: Iterable[str]) -> Ed25519Key:
        """Build a verify-only key from the raw 32-byte public key."""
        _check_kid(kid)
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
            return {"public": _b64u_encode(self.public_bytes)}
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {"private": _b64u_encode(raw)}


def generate_hmac_key(kid: str, issuers: Iterable[str]) -> HmacKey:
    """A new HS256 key with a 32-byte secret from the OS CSPRNG."""
    return HmacKey(kid, secrets.token_bytes(MIN_HMAC_SECRET_BYTES), issuers=issuers)


def generate_ed25519_key(kid: str, issuers: Iterable[str]) -> Ed25519Key:
    """A new EdDSA signing key (its public part: ``key.public()``)."""
    return Ed25519Key(kid, issuers=issuers, private_key=Ed25519PrivateKey.generate())


# -- key file entries ---------------------------------------------------------------------------

_COMMON_FIELDS: Final = frozenset({"kid", "alg", "issuers"})
_MATERIAL_FIELDS: Final = {HS256: ("secret",), EDDSA: ("private", "public")}
_ALL_MATERIAL: Final = frozenset({"secret", "private", "public"})


def _describe_fields(names: Iterable[object]) -> str:
    shown = sorted(str(n) for n in names if isinstance(n, str) and _FIELD_NAME_RE.fullmatch(n))
    hidden = sum(1 for n in names if not (isinstance(n, str) and _FIELD_NAME_RE.fullmatch(n)))
    parts = [repr(n) for n in shown]
    if hidden:
        parts.append(f"{hidden} field(s) with unprintable names")
    return ", ".join(parts)


def _key_from_entry(entry: object, where: str) -> Key:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: each key must be a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise ConfigurationError(
            f"{where}: 'kid' must be 1 to {_MAX_KID_CHARS} printable ASCII characters "
            "without spaces"
        )
    where = f"{where} (kid {kid!r})"
    alg = entry.get("alg")
    if alg not in _MATERIAL_FIELDS:
        raise ConfigurationError(f"{where}: 'alg' must be {HS256!r} or {EDDSA!r}")
    assert isinstance(alg, str)
    unknown = [name for name in entry if name not in _COMMON_FIELDS | _ALL_MATERIAL]
    if unknown:
        raise ConfigurationError(f"{where}: unknown field(s) {_describe_fields(unknown)}")
    # Algorithm confusion guard: the material field decides the key type together with alg, and
    # they must agree. An Ed25519 public key can never become an HMAC secret, nor the reverse.
    present = [name for name in _ALL_MATERIAL if name in entry]
    allowed = _MATERIAL_FIELDS[alg]
    if len(present) != 1 or present[0] not in allowed:
        expected = " or ".join(repr(name) for name in allowed)
        found = ", ".join(repr(name) for name in sorted(present)) or "none"
        raise ConfigurationError(
            f"{where}: alg {alg!r} takes exactly one key field, {expected}; found {found}"
        )
    field = present[0]
    value = entry[field]
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: {field!r} must be a base64url string")
    try:
        raw = _b64u_decode(value)
    except ValueError:
        raise ConfigurationError(f"{where}: {field!r} is not valid base64url") from None
    issuers = entry.get("issuers")
    if not isinstance(issuers, list):
        raise ConfigurationError(f"{where}: 'issuers' must be a list of issuer names")
    try:
        if field == "secret":
            return HmacKey(kid, raw, issuers=issuers)
        if field == "private":
            return Ed25519Key.from_private_bytes(kid, raw, issuers=issuers)
        return Ed25519Key.from_public_bytes(kid, raw, issuers=issuers)
    except ConfigurationError as exc:
        # Messages from the constructors already name the kid and never the material.
        raise ConfigurationError(f"{where}: {exc}") from None


class Keyring:
    """Maps kid -> key. The verifier looks every envelope's kid up here; the signer picks its one
    active kid from it.

    Rotation: add the new key to every ring, switch the signer's kid, remove the old key once
    max_age has passed. ``add``/``remove`` are safe to call on a ring a verifier is using.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._keys: dict[str, Key] = {}
        for key in keys:
            self.add(key)

    # -- mapping-like access --------------------------------------------------------------------

    def get(self, kid: str) -> Key | None:
        """The key with this kid, or None (the verifier turns None into UnknownKey)."""
        try:
            return self._keys.get(kid)
        except TypeError:  # an unhashable kid decoded from an untrusted header
            return None

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
        return Keyring(key.public() for key in self._keys.values() if isinstance(key, Ed25519Key))

    # -- serialisation --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The key file contents (includes secrets, if the ring holds any)."""
        document = {
            "version": FILE_FORMAT_VERSION,
            "keys": [key._entry() for key in self._keys.values()],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_mapping(cls, document: Mapping[str, object], *, source: str = "keyring") -> Keyring:
        """Build a ring from the parsed JSON document; ``source`` names it in error messages."""
        if not isinstance(document, Mapping):
            raise ConfigurationError(f"{source}: must be a JSON object")
        version = document.get("version")
        if type(version) is not int or version != FILE_FORMAT_VERSION:
            raise ConfigurationError(f"{source}: 'version' must be {FILE_FORMAT_VERSION}")
        unknown = [name for name in document if name not in ("version", "keys")]
        if unknown:
            raise ConfigurationError(f"{source}: unknown field(s) {_describe_fields(unknown)}")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ConfigurationError(f"{source}: 'keys' must be a list")
        ring = cls()
        for index, entry in enumerate(entries):
            key = _key_from_entry(entry, f"{source}: key #{index}")
            if key.kid in ring:
                raise ConfigurationError(f"{source}: kid {key.kid!r} appears more than once")
            ring.add(key)
        return ring

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "keyring JSON") -> Keyring:
        """Parse key file contents. Errors name ``source``, never the contents.

        A member repeated in any JSON object is refused: parsers disagree on which copy wins
        (Python keeps the last), so a repeated ``secret`` or ``issuers`` could mean one key to
        a reviewer and another to the loader.
        """
        try:
            document = json.loads(text, object_pairs_hook=_refuse_duplicate_members)
        except _DuplicateMember as exc:
            raise ConfigurationError(
                f"{source}: member {_describe_fields([exc.name])} appears more than once in a "
                "JSON object"
            ) from None
        except json.JSONDecodeError as exc:
            # The exception object holds the whole document: report the position only and do not
            # chain it (tracebacks and error trackers would carry the secrets along).
            raise ConfigurationError(
                f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        except (UnicodeDecodeError, RecursionError):
            raise ConfigurationError(f"{source}: not valid UTF-8 JSON") from None
        return cls.from_mapping(document, source=source)

    @classmethod
    def from_env(cls, var: str = KEYRING_ENV_VAR) -> Keyring:
        """Load the ring from an environment variable holding the key file contents."""
        text = os.environ.get(var)
        if not text:
            raise ConfigurationError(f"environment variable {var} is not set or empty")
        return cls.from_json(text, source=f"environment variable {var}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load the ring from a key file.

        Refuses anything but a regular file (a FIFO or device is refused at once, never waited
        on), a file owned by another user than this process's or root (its owner could change
        the keys), a file that other users could write (they could add a key the ring then
        trusts) and, if it holds secrets, one that group or others can read. Every check is made
        on the opened file, so a swap between check and read cannot slip through. A symbolic
        link is followed (Kubernetes mounts secrets as links); the checks apply to its target.
        """
        name = os.fspath(path)
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(name, flags)
        except OSError as exc:
            raise ConfigurationError(f"cannot open key file {name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError(f"key file {name} is not a regular file")
            _check_owner(name, info.st_uid)
            mode = stat.S_IMODE(info.st_mode)
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ConfigurationError(
                    f"key file {name} has mode {mode:04o}: it is writable by group or others, "
                    "who could add keys it would trust; chmod go-w it"
                )
            data = _read_capped(fd, name)
        finally:
            os.close(fd)
        ring = cls.from_json(data, source=f"key file {name}")
        if ring.has_secrets and mode & (stat.S_IRGRP | stat.S_IROTH):
            raise ConfigurationError(
                f"key file {name} has mode {mode:04o} and holds secret key material: it must be "
                f"readable by its owner only (chmod 600 {name})"
            )
        return ring

    def dump(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, mode: int = 0o600
    ) -> None:
        """Write :meth:`to_json` to ``path`` atomically, created with ``mode`` (default 0600).

        The file is written under a temporary name created with the final mode (never widened
        then narrowed), synced, then moved into place. Without ``overwrite`` an existing file is
        left alone and ConfigurationError is raised. A ring holding secrets is never written
        readable by group or others.
        """
        name = os.fspath(path)
        if self.has_secrets and mode & 0o077:
            raise ConfigurationError(
                f"refusing to write secret key material to {name} with mode {mode:04o}"
            )
        directory = os.path.dirname(os.path.abspath(name))
        tmp = os.path.join(directory, f".{os.path.basename(name)}.{secrets.token_hex(8)}.tmp")
        data = self.to_json().encode("utf-8")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot write key file {name}: {exc.strerror}") from None
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, name)
            else:
                # link() fails if the name exists, so an existing ring is never clobbered.
                try:
                    os.link(tmp, name)
                except FileExistsError:
                    raise ConfigurationError(
                        f"key file {name} already exists; not overwriting it"
                    ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot write key file {name}: {exc.strerror}") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        _fsync_directory(directory)


class _DuplicateMember(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__("duplicate member")
        self.name = name


def _refuse_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` object hook: builds every object, at any depth, refusing repeats."""
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _DuplicateMember(name)
        document[name] = value
    return document


def _check_owner(name: str, uid: int) -> None:
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # no POSIX owners (Windows): nothing to compare
        return
    user = geteuid()
    if uid not in (user, 0):
        raise ConfigurationError(
            f"key file {name} is owned by uid {uid}, not by this user (uid {user}) or root: its "
            f"owner could change the keys it holds; chown it to uid {user}"
        )


def _read_capped(fd: int, name: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > _MAX_KEYRING_BYTES:
            raise ConfigurationError(
                f"key file {name} is larger than {_MAX_KEYRING_BYTES} bytes; not a key file"
            )
        chunks.append(chunk)


def _fsync_directory(directory: str) -> None:
    # Makes the rename durable; best effort where directories cannot be opened (not POSIX).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
