"""KeySource: a ring following a JWK Set served by a local HTTP server (or in a file)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from signed_bus import Keyring, KeySource, Signer, Verifier, generate_ed25519_key
from signed_bus._keys import Ed25519Key
from signed_bus.errors import ConfigurationError, UnknownKey


class JwksServer:
    """Serves ``body`` at /jwks.json (status ``status``) and counts the requests."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        self.garbage = False  # answer with something that is not HTTP
        self.redirect_to: str | None = None  # answer 302 to this location
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self.delay_s = 0.0  # wait this long before answering
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                server.authorizations.append(self.headers.get("Authorization"))
                time.sleep(server.delay_s)
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.garbage:
                    self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def serve(self, *keys: Ed25519Key) -> None:
        self.body = Keyring(keys).to_jwks().encode()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


async def wait_until(condition: object, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def signed(key: Ed25519Key, issuer: str = "agent") -> bytes:
    return Signer(Keyring([key]), kid=key.kid, issuer=issuer, model="m").sign(1, topic="t")


async def test_a_new_kid_is_picked_up_within_the_refresh_interval(jwks_server: JwksServer) -> None:
    old = generate_ed25519_key("old", ["agent"])
    new = generate_ed25519_key("new", ["agent"])
    jwks_server.serve(old)
    async with KeySource(jwks_server.url, refresh_interval_s=0.2) as source:
        assert source.keyring.kids() == ["old"]
        jwks_server.serve(old, new)
        await wait_until(lambda: "new" in source.keyring, within=2.0)
        Verifier(source.keyring).verify(signed(new), topic="t", key=None)


async def test_unknown_kids_refetch_at_most_once_per_interval(jwks_server: JwksServer) -> None:
    known = generate_ed25519_key("known", ["agent"])
    jwks_server.serve(known)
    source = KeySource(jwks_server.url, refresh_interval_s=3600, unknown_kid_interval_s=0.5)
    async with source:
        verifier = Verifier(source.keyring)
        assert jwks_server.requests == 1
        await asyncio.sleep(0.5)  # no fetch for an interval: the first unknown kid may ask
        # An attacker's flood of random kids: one fetch, not one per record.
        for index in range(300):
            with pytest.raises(UnknownKey) as caught:
                verifier.verify(
                    signed(generate_ed25519_key(f"r{index}", ["agent"])), topic="t", key=None
                )
            assert caught.value.reason == "unknown_key"
        await wait_until(lambda: source.fetches == 2)
        await asyncio.sleep(0.2)
        assert jwks_server.requests == 2
        # The interval over, the next unknown kid may ask again (and only once).
        await asyncio.sleep(0.5)
        for _ in range(50):
            assert source.keyring.get("still-unknown") is None
        await wait_until(lambda: source.fetches == 3)
        await asyncio.sleep(0.2)
        assert jwks_server.requests == 3


async def test_an_unreachable_or_refused_source_keeps_the_last_good_set(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_ed25519_key("k", ["agent"])
    jwks_server.serve(key)
    async with KeySource(jwks_server.url, refresh_interval_s=3600) as source:
        for status, body in ((500, b"oops"), (200, b'{"keys": [{"kty": "OKP"'), (200, b"[]")):
            jwks_server.status, jwks_server.body = status, body
            with caplog.at_level(logging.WARNING, logger="signed_bus.keys"):
                assert not await asyncio.to_thread(source.refresh)
            assert source.keyring.kids() == ["k"]
        assert source.failures == 3
        assert "keeping the last good set" in caplog.text
        jwks_server.close()
        assert not await asyncio.to_thread(source.refresh)
        Verifier(source.keyring).verify(signed(key), topic="t", key=None)


async def test_a_removed_kid_is_rejected_as_unknown_key(jwks_server: JwksServer) -> None:
    old = generate_ed25519_key("old", ["agent"])
    new = generate_ed25519_key("new", ["agent"])
    jwks_server.serve(old, new)
    async with KeySource(jwks_server.url, refresh_interval_s=3600) as source:
        verifier = Verifier(source.keyring)
        verifier.verify(signed(old), topic="t", key=None)
        jwks_server.serve(new)
        assert await asyncio.to_thread(source.refresh)
        with pytest.raises(UnknownKey) as caught:
            verifier.verify(signed(old), topic="t", key=None)
        assert caught.value.reason == "unknown_key"
        verifier.verify(signed(new), topic="t", key=None)


async def test_the_first_load_must_succeed(jwks_server: JwksServer) -> None:
    jwks_server.status = 404
    with pytest.raises(ConfigurationError, match="HTTP status 404"):
        await KeySource(jwks_server.url).start()


async def test_logs_never_show_credentials_of_the_location(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.serve(generate_ed25519_key("k", ["agent"]))
    url = jwks_server.url.replace("http://", "http://user:hunter2@") + "?token=s3cr3t"
    async with KeySource(url, refresh_interval_s=3600) as source:
        jwks_server.status = 503
        with caplog.at_level(logging.INFO, logger="signed_bus.keys"):
            await asyncio.to_thread(source.refresh)
        shown = caplog.text + repr(source)
        assert "HTTP status 503" in shown
        assert "hunter2" not in shown and "s3cr3t" not in shown
    # Percent-encoded, a '/' in the password is the password's: sent as basic auth, not shown.
    jwks_server.status = 200
    encoded = KeySource(
        jwks_server.url.replace("http://", "http://user:hun%2Fter2@"), allow_http=True
    )
    with caplog.at_level(logging.INFO, logger="signed_bus.keys"):
        assert await asyncio.to_thread(encoded.refresh)
    assert jwks_server.authorizations[-1] == "Basic " + base64.b64encode(b"user:hun/ter2").decode()
    assert "ter2" not in caplog.text + repr(encoded)


@pytest.mark.parametrize(
    "userinfo",
    ["localhost:{port}/s3cret", "user:pa#s3cret", "user:pa?s3cret"],
    ids=["slash", "hash", "question-mark"],
)
def test_an_ambiguous_userinfo_is_refused_before_any_request(
    userinfo: str, jwks_server: JwksServer
) -> None:
    """The rule of the Redis URLs: the userinfo (everything up to the last '@') must be what a
    URL parser reads. Unencoded, "localhost:PORT/s3cret@keys.internal.example" is parsed as the
    host localhost, port PORT and a path holding the rest of the password: the request would go
    to whatever listens there, carrying the password in its path."""
    port = jwks_server.url.rsplit(":", 1)[1].split("/")[0]
    url = f"http://{userinfo.format(port=port)}@keys.internal.example/jwks.json"
    with pytest.raises(ConfigurationError, match="ambiguous") as caught:
        KeySource(url, allow_http=True)
    assert "s3cret" not in str(caught.value)
    assert "keys.internal.example" in str(caught.value)
    assert jwks_server.requests == 0


async def test_a_file_source_is_checked_like_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(Keyring([generate_ed25519_key("k", ["a"])]).to_jwks())
    os.chmod(path, 0o666)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        await KeySource(path).start()
    os.chmod(path, 0o644)
    async with KeySource(path) as source:
        assert source.keyring.kids() == ["k"]


async def test_a_response_that_is_not_http_fails_the_fetch_and_refreshing_goes_on(
    jwks_server: JwksServer,
) -> None:
    old = generate_ed25519_key("old", ["agent"])
    new = generate_ed25519_key("new", ["agent"])
    jwks_server.serve(old)
    async with KeySource(jwks_server.url, refresh_interval_s=0.2) as source:
        jwks_server.garbage = True
        jwks_server.serve(old, new)
        await wait_until(lambda: source.failures >= 2)
        assert source.keyring.kids() == ["old"]
        jwks_server.garbage = False
        await wait_until(lambda: "new" in source.keyring, within=2.0)


def test_without_an_event_loop_a_thread_refreshes_and_rate_limits_unknown_kids(
    jwks_server: JwksServer,
) -> None:
    import time

    def until(condition: Callable[[], bool], within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.02)

    old = generate_ed25519_key("old", ["agent"])
    new = generate_ed25519_key("new", ["agent"])
    jwks_server.serve(old)
    with KeySource(jwks_server.url, refresh_interval_s=3600, unknown_kid_interval_s=0.3) as source:
        verifier = Verifier(source.keyring)
        time.sleep(0.3)
        jwks_server.serve(old, new)
        value = signed(new)
        for _ in range(100):  # the new kid, before the ring has it: one early fetch, not 100
            with pytest.raises(UnknownKey):
                verifier.verify(value, topic="t", key=None)
        until(lambda: "new" in source.keyring)
        time.sleep(0.2)
        assert jwks_server.requests == 2
        verifier.verify(value, topic="t", key=None)
    requests = jwks_server.requests
    assert source.keyring.get("gone") is None  # stopped: asks for nothing
    time.sleep(0.4)
    assert jwks_server.requests == requests


def test_plain_http_is_refused_unless_loopback_or_allowed() -> None:
    # a JWK Set decides which keys may sign: fetched in clear, anyone on the path adds theirs
    with pytest.raises(ConfigurationError, match="plain http is refused") as caught:
        KeySource("http://user:hunter2@keys.example.com/jwks.json")
    assert "hunter2" not in str(caught.value)
    KeySource("http://keys.example.com/jwks.json", allow_http=True)
    KeySource("http://localhost:8080/jwks.json")
    KeySource("http://[::1]:8080/jwks.json")
    KeySource("https://keys.example.com/jwks.json")


async def test_a_redirect_to_another_origin_does_not_carry_the_credentials(
    jwks_server: JwksServer,
) -> None:
    target = JwksServer()
    try:
        target.serve(generate_ed25519_key("k", ["agent"]))
        jwks_server.redirect_to = target.url  # another port: another origin
        url = jwks_server.url.replace("http://", "http://ops:s3cret@")
        async with KeySource(url, refresh_interval_s=3600) as source:
            assert "k" in source.keyring
        assert jwks_server.authorizations[0] is not None  # the origin it was given to
        assert target.authorizations == [None]  # never to the place it was sent on to
    finally:
        target.close()


async def test_a_redirect_to_plain_http_on_a_remote_host_is_refused(
    jwks_server: JwksServer,
) -> None:
    jwks_server.redirect_to = "http://keys.example.com/jwks.json"
    with pytest.raises(ConfigurationError, match="unreachable"):
        await KeySource(jwks_server.url).start()


async def test_stop_waits_for_the_fetch_under_way(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Cancelling the refreshing task leaves its worker thread fetching: stop() must wait for it,
    # or the source goes on fetching (and logging) after it said it stopped.
    jwks_server.serve(generate_ed25519_key("k", ["agent"]))
    source = KeySource(jwks_server.url, refresh_interval_s=0.05)
    await source.start()
    jwks_server.delay_s = 0.5
    requests = jwks_server.requests
    await wait_until(lambda: jwks_server.requests > requests)  # a slow fetch is under way
    with caplog.at_level(logging.INFO, logger="signed_bus.keys"):
        await source.stop()
        stopped_at = len(caplog.records)
        jwks_server.status = 500
        await asyncio.sleep(0.7)
    assert len(caplog.records) == stopped_at, [r.getMessage() for r in caplog.records]
    assert source._fetching is None
