"""The userinfo of a URL, read on the raw text, and the rule every URL holding credentials obeys
(Redis URLs in :mod:`signed_bus._redis_url`, JWK Set URLs in :mod:`signed_bus._keysource`).

The userinfo is everything between ``://`` and the LAST ``@``. URL parsers end the authority at
the first '/', '?' or '#', so a password holding one (``redis://user:pa/ss@host``) is read by
them as a host, a port and a path: the client connects elsewhere, sends the rest of the password
in the path, and its errors quote the part it took for a port. A URL whose userinfo a parser
reads differently from the raw text is therefore refused: the password must percent-encode
'/', '?' and '#', and an '@' after the host must be encoded too.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["AMBIGUOUS_USERINFO", "split_userinfo", "userinfo_is_ambiguous", "without_credentials"]

#: What to tell the user about a URL :func:`userinfo_is_ambiguous` refuses.
AMBIGUOUS_USERINFO = (
    "is ambiguous: percent-encode '/', '?' and '#' in its userinfo, and any '@' after the host"
)


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme, userinfo, rest)`` split on the raw text; userinfo None without an '@'
    (scheme "" when ``url`` has no ``://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    userinfo, at, host_and_path = rest.rpartition("@")
    if not at:
        return scheme, None, rest
    return scheme, userinfo, host_and_path


def userinfo_is_ambiguous(url: str) -> bool:
    """Whether a URL parser (``urllib.parse.urlsplit``, which redis-py and urllib use) reads
    another userinfo, or none, than the raw text holds."""
    _, userinfo, _ = split_userinfo(url)
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        netloc = ""
    parsed = netloc.rpartition("@")[0] if "@" in netloc else None
    return userinfo != parsed


def without_credentials(url: str) -> str:
    """``url`` as logs and errors may show it: no userinfo (everything up to the last '@'), query
    or fragment, so neither a password nor a token in the query is shown; ``"(not a URL)"``
    without a ``://``. Not escaped: print it through :func:`signed_bus._text.printable`."""
    if "://" not in url:
        return "(not a URL)"
    scheme, _, rest = split_userinfo(url)
    for mark in ("?", "#"):
        rest = rest.partition(mark)[0]
    return f"{scheme}://{rest}"
