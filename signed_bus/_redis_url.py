"""Redis URLs, checked and redacted in one place (the replay guard and the provenance index).

A URL's password must never reach a repr, a log line or an exception. Everything here works on
the raw text before any parser sees it: the userinfo is everything between ``://`` and the LAST
``@`` (:mod:`signed_bus._url`, whose rule refuses a userinfo a parser would read otherwise).
Masking up to the last '@' can only hide too much (an '@' in a path or query), never a password.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any, Final, TypeVar

from signed_bus._url import AMBIGUOUS_USERINFO, split_userinfo, userinfo_is_ambiguous
from signed_bus.errors import ConfigurationError

__all__ = ["RedisUrl"]

_T = TypeVar("_T")

#: The schemes both callers accept: plain TCP and TLS (no ``unix://``).
SCHEMES: Final = ("redis", "rediss")

# A ``password=`` query item (redis-py reads it as the password), up to the next item.
_QUERY_PASSWORD: Final = re.compile(r"(?i)([?&;]password=)[^&;#]*")


def redact(url: str) -> str:
    """``url`` with its userinfo password and any ``password=`` query item masked.

    A userinfo without a colon is masked whole: it is a username, but often a misplaced password.
    """
    scheme, userinfo, rest = split_userinfo(url)
    if not scheme:
        return "<not a URL>"
    shown = ""
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***@" if colon else "***@"
    masked = _QUERY_PASSWORD.sub(r"\1***", rest)
    return f"{scheme}://{shown}{masked}"


def _secrets(url: str) -> tuple[str, ...]:
    """Every string of the URL that is or may be a secret, raw and percent-decoded, longest
    first (so a secret is never half-replaced by a shorter one inside it)."""
    _, userinfo, rest = split_userinfo(url)
    found: list[str] = []
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        found += [password] if colon else [user]
    found += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(rest)]
    found += [urllib.parse.unquote(s) for s in found]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


class RedisUrl:
    """A checked Redis URL: ``redis://`` or ``rediss://``, with a userinfo every parser reads the
    same way. ``str()``/``repr()`` show :attr:`redacted`; the raw text is only in :attr:`raw`.
    """

    __slots__ = ("_raw", "redacted", "secrets")

    def __init__(self, url: str) -> None:
        """Check ``url``; ConfigurationError (with the password masked) if it is refused."""
        if not isinstance(url, str):
            raise ConfigurationError("a Redis URL must be a string")
        self._raw = url
        self.redacted = redact(url)
        self.secrets = _secrets(url)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in SCHEMES:
            raise ConfigurationError("Redis URL must start with redis:// or rediss://")
        self._check_userinfo()

    def _check_userinfo(self) -> None:
        """Refuse a userinfo a parser would read differently from the raw text
        (:mod:`signed_bus._url`).

        ``redis://user:1234#secret@host/0`` parses as host "user", port 1234 and no password:
        the client would connect elsewhere and print the password's start as a port.
        """
        if userinfo_is_ambiguous(self._raw):
            raise ConfigurationError(f"Redis URL {self.redacted} {AMBIGUOUS_USERINFO}")

    @property
    def raw(self) -> str:
        """The URL as given, password included: only for the client factory."""
        return self._raw

    def scrub(self, text: str) -> str:
        """``text`` with every secret of the URL (raw or percent-decoded) replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def client(self, factory: Callable[..., _T], what: str, **options: Any) -> _T:
        """``factory(url, **options)`` (a redis-py ``from_url``); a failure becomes a
        ConfigurationError naming only the exception type, raised outside the handler so no
        ``__context__`` carries the client's text (which may quote any part of the URL).

        A single-node client takes unknown options (a stray URL query item, a misspelt keyword)
        without complaint and fails with a TypeError at its first command; one connection object
        is built here (no I/O) so they are refused now instead."""
        failure = None
        try:
            client = factory(self._raw, **options)
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                pool.connection_class(**pool.connection_kwargs)
            return client
        except Exception as exc:
            failure = type(exc).__name__
        raise ConfigurationError(f"bad Redis URL or option for {what} ({self}): {failure}")

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"RedisUrl({self.redacted!r})"
