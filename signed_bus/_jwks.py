"""JWK Sets (RFC 7517) of Ed25519 public keys (RFC 8037), to distribute verifying keys.

A JWK says which key it is, not which agents may use it; a signed-bus key always names the
issuers it may sign for. They travel in a member of our own, :data:`ISSUERS_MEMBER`, and an
Ed25519 key without it is refused: a plain JWK Set (an identity provider's, say) can never widen
what a verifier accepts. The format, with an example: docs/KEYFILE.md, "JWK Sets".

Reading follows RFC 7517's rules for what is not ours: keys of another type or curve (RSA, EC,
``oct``, X25519) and keys for another use are skipped; every Ed25519 signing key must be well
formed, or the whole set is refused (no partial ring). A set holding private key material
(``d``) is refused: it is meant for verifiers and must never carry a secret. Errors name the
source, the key index and the kid, never a member's value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from signed_bus._keyfile import EDDSA, b64u_decode, b64u_encode, check_kid, parse_json
from signed_bus._keys import Ed25519Key, Keyring
from signed_bus.errors import ConfigurationError

__all__ = ["ISSUERS_MEMBER", "JWK_ALGORITHMS", "dumps_jwks", "keyring_from_jwks"]

#: The JWK member listing the issuers (agent ids) a key may sign for.
ISSUERS_MEMBER: Final = "signed_bus_issuers"
#: ``alg`` values accepted for an Ed25519 JWK: RFC 9864's fully specified ``Ed25519`` (written
#: on export) and RFC 8037's ``EdDSA``. An absent ``alg`` is read as Ed25519 (the curve says so).
JWK_ALGORITHMS: Final = frozenset({"Ed25519", EDDSA})
_EXPORT_ALG: Final = "Ed25519"


def dumps_jwks(ring: Keyring) -> str:
    """The JWK Set of the ring's Ed25519 public keys (private parts are never written; HMAC keys
    are symmetric and have no public part, so they are left out)."""
    keys = []
    for key in ring.public():
        assert isinstance(key, Ed25519Key)
        keys.append(
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64u_encode(key.public_bytes),
                "kid": key.kid,
                "alg": _EXPORT_ALG,
                "use": "sig",
                ISSUERS_MEMBER: sorted(key.issuers),
            }
        )
    return json.dumps({"keys": keys}, indent=2) + "\n"


def keyring_from_jwks(text: str | bytes, *, source: str = "JWK Set") -> Keyring:
    """A verify-only ring from a JWK Set's text; ConfigurationError naming ``source`` if the set
    is refused (the rules: this module's docstring)."""
    document = parse_json(text, source=source)
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ConfigurationError(f"{source}: a JWK Set is an object with a 'keys' list")
    ring = Keyring()
    for index, jwk in enumerate(document["keys"]):
        where = f"{source}: key #{index}"
        key = _key(jwk, where)
        if key is None:
            continue
        if key.kid in ring:
            raise ConfigurationError(f"{source}: kid {key.kid!r} appears more than once")
        ring.add(key)
    return ring


def _key(jwk: object, where: str) -> Ed25519Key | None:
    if not isinstance(jwk, Mapping):
        raise ConfigurationError(f"{where}: each key must be a JSON object")
    if "d" in jwk:
        raise ConfigurationError(
            f"{where}: holds private key material ('d'); a JWK Set for verifiers must hold "
            "public keys only"
        )
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return None  # another type or curve: not ours to judge (RFC 7517 section 5)
    if jwk.get("use", "sig") != "sig":
        return None  # a key for encryption is not a verifying key
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    try:
        kid = check_kid(jwk.get("kid"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    where = f"{where} (kid {kid!r})"
    alg = jwk.get("alg", _EXPORT_ALG)
    if alg not in JWK_ALGORITHMS:
        raise ConfigurationError(
            f"{where}: 'alg' must be one of {', '.join(sorted(JWK_ALGORITHMS))} for an Ed25519 key"
        )
    issuers = jwk.get(ISSUERS_MEMBER)
    if not isinstance(issuers, list):
        raise ConfigurationError(
            f"{where}: no {ISSUERS_MEMBER!r} list naming the issuers it may sign for; a key "
            "without it is refused"
        )
    x = jwk.get("x")
    try:
        if not isinstance(x, str):
            raise ValueError("not a string")
        raw = b64u_decode(x)
    except ValueError:
        raise ConfigurationError(f"{where}: 'x' is not a base64url string") from None
    try:
        return Ed25519Key.from_public_bytes(kid, raw, issuers=issuers)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
