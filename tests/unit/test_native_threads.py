"""The native opener's key cache is refreshed safely from several threads at once (a sync
worker's pool verifying while a key source changes the ring)."""

from __future__ import annotations

import threading

from signed_bus import _native
from signed_bus._clock import system_clock
from signed_bus._freshness import Freshness
from signed_bus._keys import Keyring, generate_hmac_key
from tests.unit.test_native_differential import native_path


def test_refreshing_from_several_threads_while_keys_change_never_fails() -> None:
    ring = Keyring([generate_hmac_key(f"k{i}", ["agent"]) for i in range(64)])
    with native_path():  # the extension make venv built (loading fails loudly if it is not)
        opener = _native.opener(
            ring,
            max_envelope_bytes=1 << 20,
            freshness=Freshness(),
            audit=False,
            clock=system_clock,
        )
    assert opener is not None
    errors: list[BaseException] = []
    stop = threading.Event()

    def refresh_until_stopped() -> None:
        while not stop.is_set():
            try:
                _native.refresh(opener)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=refresh_until_stopped) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(3_000):
            kid = f"k{round_ % 64}"
            ring.remove(kid)
            ring.add(generate_hmac_key(kid, ["agent"]))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    _native.refresh(opener)
    assert set(opener.cache) == {f"k{i}" for i in range(64)}
