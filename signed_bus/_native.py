"""The optional native hot path: envelope seal and open in one call each (docs/PERFORMANCE.md).

The extension is its own distribution, ``signed-bus-native`` (module ``signed_bus_native``,
built from native/ in the repository; ``make venv`` installs it where cargo exists). The
pure-Python modules stay the reference: the native path must give the same bytes, verdicts and
reasons (tests/unit/test_native_differential.py), and every refusal it finds is raised by the
pure path, so exceptions and messages are the pure path's own.

``SIGNED_BUS_NATIVE``: unset (or empty) uses the extension when it is installed and answers the
handshake, else the pure path, said once at DEBUG; ``0`` forces the pure path; ``1`` requires
the extension and raises ConfigurationError at import if it is missing or does not match.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Final

from signed_bus._clock import system_clock
from signed_bus._envelope import MAX_PROTECTED_BYTES, TAG, seal
from signed_bus._freshness import Freshness
from signed_bus._keys import Ed25519Key, HmacKey, Key, Keyring
from signed_bus.errors import ConfigurationError

__all__ = [
    "ABI_VERSION",
    "ENV_VAR",
    "active",
    "claim_planner",
    "fast_sealer",
    "load",
    "opener",
    "reopen",
    "sealer",
]

ENV_VAR: Final = "SIGNED_BUS_NATIVE"
#: The interface version this package speaks; the extension exports its own (native/src/lib.rs).
ABI_VERSION: Final = 14
#: The distribution that holds the extension.
DISTRIBUTION: Final = "signed-bus-native"

_log = logging.getLogger("signed_bus.native")

#: signed_bus._envelope.seal's signature: the native Key.seal takes the same arguments.
SealFn = Callable[..., bytes]


def _mismatch(module: ModuleType) -> str | None:
    """Why the module cannot serve this package, or None when it can."""
    if getattr(module, "ABI_VERSION", None) != ABI_VERSION:
        return f"its interface version is {getattr(module, 'ABI_VERSION', None)}, not {ABI_VERSION}"
    if getattr(module, "TAG", None) != TAG:
        return "it speaks another envelope version"
    if getattr(module, "MAX_PROTECTED_BYTES", None) != MAX_PROTECTED_BYTES:
        return "its header limits differ from this package's"
    return None


def load(mode: str | None = None) -> ModuleType | None:
    """The extension module for ``mode`` (the ``SIGNED_BUS_NATIVE`` value), or None for the
    pure path. Raises ConfigurationError where mode "1" cannot be honoured."""
    if mode is None:
        mode = os.environ.get(ENV_VAR, "")
    mode = mode.strip()
    if mode not in ("", "0", "1"):
        raise ConfigurationError(f"{ENV_VAR} must be 0 (pure Python), 1 (native) or unset")
    if mode == "0":
        _log.debug("native hot path off (%s=0): pure-Python envelope code", ENV_VAR)
        return None
    try:
        import signed_bus_native as module  # type: ignore[import-untyped]
    except ImportError:
        if mode == "1":
            raise ConfigurationError(
                f"{ENV_VAR}=1 but the {DISTRIBUTION} extension is not installed "
                "(make venv builds it where cargo exists; docs/PERFORMANCE.md)"
            ) from None
        _log.debug("%s is not installed: pure-Python envelope code", DISTRIBUTION)
        return None
    problem = _mismatch(module)
    if problem is not None:
        if mode == "1":
            raise ConfigurationError(f"{ENV_VAR}=1 but the installed {DISTRIBUTION}: {problem}")
        _log.debug("%s not used: %s; pure-Python envelope code", DISTRIBUTION, problem)
        return None
    _drop_nonces_at_fork(module)
    return module  # type: ignore[no-any-return]


_fork_hooks: set[int] = set()


def _drop_nonces_at_fork(module: ModuleType) -> None:
    """A forked child must not hand out the nonces its parent still holds in the extension's
    pool (its Sealer's default nonce source): the child drops them, once per loaded module."""
    if id(module) not in _fork_hooks and hasattr(os, "register_at_fork"):
        _fork_hooks.add(id(module))
        os.register_at_fork(after_in_child=module.drop_nonces)


_module: ModuleType | None = load()


@contextmanager
def using(module: ModuleType | None) -> Iterator[None]:
    """Inside the block, signers and verifiers built, and the helpers that pick their path per
    call, use ``module`` (None: the pure-Python path); the choice before it comes back after.
    For code that compares both paths in one process (the differential tests, the bench)."""
    global _module
    saved = _module
    _module = module
    try:
        yield
    finally:
        _module = saved


def active() -> bool:
    """Whether signers and verifiers built from now on use the extension."""
    return _module is not None


def _native_key(module: ModuleType, key: Key) -> Any:
    """The extension's key object for ``key``, or None where the pure path must serve it."""
    if type(key) is HmacKey:
        return module.Key.hmac(key._secret, key.issuers)
    if type(key) is Ed25519Key:
        private = None
        if key._private is not None:
            from cryptography.hazmat.primitives.serialization import (
                Encoding,
                NoEncryption,
                PrivateFormat,
            )

            private = key._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return module.Key.ed25519(key.public_bytes, key.issuers, private)
    return None  # a Key subclass of the application's own: its methods decide


def sealer(key: Key) -> SealFn:
    """The seal function for a signer holding ``key``: the extension's, else the pure one."""
    if _module is not None:
        native = _native_key(_module, key)
        if native is not None and native.can_sign:
            return native.seal  # type: ignore[no-any-return]
    return seal


def fast_sealer(key: Key, msgpack_prefix: bytes, max_topics: int, *packing: Any) -> Any:
    """The extension's one-call signing path for a signer holding ``key`` with the system clock
    and the default nonce source: ``sign(body, topic, key)`` gives the record value of an
    encoded msgpack body without parents or expiry, or None where the Python path must seal
    (a topic not handed over with ``add_topic`` yet, a key or body that is not bytes). With
    ``packing`` (a packer factory, the pool list it shares with the default encoder, the largest
    body after which a packer is kept, the most kept) its ``seal(result, topic, key)`` also
    encodes the result (signed_bus/_signer.py). None on the pure path or for a key the extension
    does not hold."""
    if _module is None:
        return None
    native = _native_key(_module, key)
    if native is None or not native.can_sign:
        return None
    return _module.Sealer(native, msgpack_prefix, max_topics, *packing)


def opener(
    keyring: Keyring,
    *,
    max_envelope_bytes: int,
    freshness: Freshness,
    audit: bool,
    clock: Callable[[], int],
    maker: tuple[Any, ...] | None = None,
) -> Any:
    """A native opener for one verifier's settings, or None (pure path). With ``maker``
    (signed_bus._message.MAKER) it answers a verified value with its VerifiedMessage, else
    with ``(header, body, None)``."""
    if _module is None:
        return None
    return _module.Opener(
        keyring,
        {},
        max_envelope_bytes,
        freshness.max_age_ms,
        freshness.future_skew_ms,
        freshness.max_lag_ms,
        audit,
        clock,
        clock is system_clock,
        maker,
    )


def claim_planner() -> Callable[..., Any] | None:
    """The extension's claim planner (signed_bus._replay.layout.ClaimPlanner.plan without a
    slot function, returning (keys, blob, indexes) per call, or None to leave a batch to
    Python), or None on the pure path."""
    return None if _module is None else _module.plan_claims


# Verifiers may run on several threads (a sync worker's pool; a key source's thread changes the
# ring): one refresh at a time, so none iterates a cache another is changing.
_REFRESH_LOCK: Final = threading.Lock()


def refresh(native_opener: Any) -> None:
    """Bring the opener's key cache in line with its keyring (after an add or remove)."""
    module = sys.modules[type(native_opener).__module__]  # the extension that built it
    cache: dict[str, tuple[Key, Any]] = native_opener.cache
    keys: dict[str, Key] = native_opener.keyring._keys
    with _REFRESH_LOCK:
        native_opener.forget_last()  # it may hold a key the keyring no longer has
        for kid in [kid for kid in list(cache) if kid not in keys]:
            cache.pop(kid, None)
        for kid, key in list(keys.items()):
            entry = cache.get(kid)
            if entry is None or entry[0] is not key:
                cache[kid] = (key, _native_key(module, key))


def reopen(native_opener: Any, value: bytes, topic: str, key: bytes | None, ref: Any) -> Any:
    """``open`` again after a refresh of the key cache; "" (pure path) if it still asks."""
    refresh(native_opener)
    opened = native_opener.open(value, topic, key, ref)
    return "" if opened is None else opened
