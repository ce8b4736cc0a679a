"""Redis URLs are checked and redacted once (signed_bus._redis_url), for both callers: the replay
guard and the provenance index. A password never reaches a repr, str or exception."""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from signed_bus._freshness import Freshness
from signed_bus._provenance import ProvenanceIndex
from signed_bus._redis_url import RedisUrl, redact
from signed_bus._replay import Claim, RedisReplayGuard
from signed_bus.errors import ConfigurationError, ProvenanceIndexUnavailable, ReplayGuardUnavailable

SECRET = "hunter2"


def build_guard(url: str) -> RedisReplayGuard:
    return RedisReplayGuard.from_url(url, socket_connect_timeout=1.0)


def build_index(url: str) -> ProvenanceIndex:
    return ProvenanceIndex.from_url(url, ttl_ms=1_000, socket_connect_timeout=1.0)


async def use_guard(guard: Any) -> None:
    claim = Claim("a", b"\x00" * 16, 0, "t", 0, 0)
    await guard.claim([claim], freshness=Freshness())


async def use_index(index: Any) -> None:
    await index.lookup(b"\x00" * 32)


CALLERS: list[tuple[Callable[[str], Any], Callable[[Any], Awaitable[None]], type[Exception]]] = [
    (build_guard, use_guard, ReplayGuardUnavailable),
    (build_index, use_index, ProvenanceIndexUnavailable),
]
CALLER_IDS = ["guard", "index"]


def everything_shown(exc: BaseException) -> str:
    """str, repr and the whole printed traceback, chained exceptions included."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


# Port 1 refuses connections: every use fails, and the failure must not show the password.
ACCEPTED = [
    f"redis://user:{SECRET}@127.0.0.1:1/0",
    f"rediss://:{SECRET}@127.0.0.1:1/1",
    f"redis://127.0.0.1:1/0?password={SECRET}",
    f"redis://127.0.0.1:1/0?db=0&password={SECRET}",
    f"redis://{SECRET}@127.0.0.1:1/0",
    # an unencoded '@' in the password: every parser splits at the last '@'
    f"redis://user:{SECRET}@x@127.0.0.1:1/0",
    # percent-encoded '/', '#', '@': shown neither raw nor decoded
    f"redis://user:{SECRET}%2Fa%23b%40c@127.0.0.1:1/0",
]


@pytest.mark.parametrize(("build", "use", "unavailable"), CALLERS, ids=CALLER_IDS)
@pytest.mark.parametrize("url", ACCEPTED)
async def test_a_password_never_shows_in_repr_or_errors(
    build: Callable[[str], Any],
    use: Callable[[Any], Awaitable[None]],
    unavailable: type[Exception],
    url: str,
) -> None:
    obj = build(url)
    try:
        assert SECRET not in repr(obj) and SECRET not in str(obj)
        assert "***" in repr(obj)
        with pytest.raises(unavailable) as info:
            await use(obj)
        shown = everything_shown(info.value)
        assert SECRET not in shown
        for part in ("%2Fa", "/a#b", "a%23b", "b@c"):
            assert part not in shown
    finally:
        await obj.stop()


REFUSED = [
    # a parser ends the authority at the first '/', '?' or '#': the client would connect to host
    # "user" with the password's start as its port, and print it
    f"redis://user:1234/{SECRET}@127.0.0.1:1/0",
    f"redis://user:1234#{SECRET}@127.0.0.1:1/0",
    f"redis://user:1234?{SECRET}@127.0.0.1:1/0",
    f"redis://user:pa/{SECRET}@127.0.0.1:1/0",
]


@pytest.mark.parametrize(("build", "use", "unavailable"), CALLERS, ids=CALLER_IDS)
@pytest.mark.parametrize("url", REFUSED)
def test_an_ambiguous_userinfo_is_refused_by_both_without_showing_it(
    build: Callable[[str], Any],
    use: Callable[[Any], Awaitable[None]],
    unavailable: type[Exception],
    url: str,
) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        build(url)
    shown = everything_shown(info.value)
    assert SECRET not in shown and "1234" not in shown and "pa/" not in shown
    assert "user:***@127.0.0.1:1/0" in shown


@pytest.mark.parametrize(("build", "use", "unavailable"), CALLERS, ids=CALLER_IDS)
@pytest.mark.parametrize(
    "url", ["unix:///tmp/redis.sock", "http://127.0.0.1:1", "127.0.0.1:6379", "REDIS"]
)
def test_both_take_only_redis_and_rediss(
    build: Callable[[str], Any],
    use: Callable[[Any], Awaitable[None]],
    unavailable: type[Exception],
    url: str,
) -> None:
    with pytest.raises(ConfigurationError, match=r"redis:// or rediss://"):
        build(url)


@pytest.mark.parametrize(("build", "use", "unavailable"), CALLERS, ids=CALLER_IDS)
def test_a_client_error_is_named_by_type_only_without_context(
    build: Callable[[str], Any],
    use: Callable[[Any], Awaitable[None]],
    unavailable: type[Exception],
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(f"redis://:{SECRET}@127.0.0.1:notaport/0")
    assert str(info.value).endswith("(redis://:***@127.0.0.1:notaport/0): ValueError")
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert SECRET not in everything_shown(info.value)


@pytest.mark.parametrize(("build", "use", "unavailable"), CALLERS, ids=CALLER_IDS)
@pytest.mark.parametrize(
    "url", [f"redis://:{SECRET}@127.0.0.1:1/0?bogus=1", f"redis://:{SECRET}@127.0.0.1:1/0?passwd=x"]
)
def test_an_unknown_url_option_is_refused_when_built_not_at_first_use(
    build: Callable[[str], Any],
    use: Callable[[Any], Awaitable[None]],
    unavailable: type[Exception],
    url: str,
) -> None:
    # redis-py passes unknown query items to the connection, which raised a TypeError at the
    # first claim or lookup: neither "Redis is down" nor a configuration error.
    with pytest.raises(ConfigurationError, match="TypeError") as info:
        build(url)
    assert SECRET not in everything_shown(info.value)


def test_redis_url_shows_only_the_redacted_form() -> None:
    url = RedisUrl(f"redis://user:{SECRET}%2F@host:6379/0?password={SECRET}")
    assert str(url) == "redis://user:***@host:6379/0?password=***"
    assert SECRET not in repr(url)
    assert url.scrub(f"auth failed for {SECRET}/ and {SECRET}") == "auth failed for *** and ***"
    assert url.raw.startswith("redis://user:hunter2")


def test_redaction_masks_a_userinfo_without_colon_and_query_passwords() -> None:
    assert redact(f"redis://{SECRET}@h/0") == "redis://***@h/0"
    assert redact(f"redis://h/0?PASSWORD={SECRET};db=1") == "redis://h/0?PASSWORD=***;db=1"
    assert redact("not a url") == "<not a URL>"
