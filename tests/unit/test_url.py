"""The one userinfo rule for URLs holding credentials (Redis and JWK Set URLs) and the one way
they are shown without them."""

from __future__ import annotations

import pytest

from signed_bus._url import split_userinfo, userinfo_is_ambiguous, without_credentials


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("redis://h:6379/0", ("redis", None, "h:6379/0")),
        ("redis://u:p@h/0", ("redis", "u:p", "h/0")),
        ("https://u:p@x@h/j", ("https", "u:p@x", "h/j")),  # up to the LAST '@'
        ("not a url", ("", None, "not a url")),
    ],
)
def test_split_userinfo_on_the_raw_text(url: str, parts: tuple[str, str | None, str]) -> None:
    assert split_userinfo(url) == parts


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:p@h:6379/0",
        "https://u:pa%2Fss%3F%23@keys.example/jwks.json",
        "https://keys.example/jwks.json",
        "redis://u:p@x@h/0",  # parsers also split at the last '@'
    ],
)
def test_a_userinfo_every_parser_reads_alike_is_accepted(url: str) -> None:
    assert not userinfo_is_ambiguous(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:pa/ss@h/0",
        "redis://u:1234#secret@h/0",
        "https://localhost:8099/s3cret@keys.internal.example/jwks.json",
        "https://u:pa?ss@h/j",
        "https://keys.example/a@b/jwks.json",  # an '@' after the host
    ],
)
def test_a_userinfo_a_parser_splits_elsewhere_is_ambiguous(url: str) -> None:
    assert userinfo_is_ambiguous(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:hunter2@h:6379/0?password=x#f", "redis://h:6379/0"),
        ("https://u:hun/ter2@keys.example/jwks.json?token=t", "https://keys.example/jwks.json"),
        ("https://keys.example/jwks.json", "https://keys.example/jwks.json"),
        ("hunter2", "(not a URL)"),
    ],
)
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
