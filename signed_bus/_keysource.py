"""A keyring kept in step with a JWK Set at a file path or an http(s) URL.

The verifier reads its ring live, so the source only has to change the ring: it fetches the set
every ``refresh_interval_s`` (off the event loop, in a thread, with the standard library), adds
new kids, replaces changed keys and removes kids the set no longer holds, which then fail as
``unknown_key``. An envelope naming a kid the ring lacks asks for an early fetch, at most once per
``unknown_kid_interval_s`` whatever the number of such envelopes: random kids from an attacker
cannot turn into a fetch storm. The envelope that asked is still rejected (``unknown_key``); the
rotation procedure publishes a key before any signer uses it (docs/OPERATIONS.md, "Rotation").
A fetch that fails or returns a set that is refused changes nothing: the last good set stays in
force, and the failure is logged on ``signed_bus.keys`` (the location without credentials or
query, never the set's contents).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import ipaddress
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Final

from signed_bus._keyfile import KEYRING_ENV_VAR, read_file
from signed_bus._keys import Keyring
from signed_bus._url import AMBIGUOUS_USERINFO, userinfo_is_ambiguous, without_credentials
from signed_bus.errors import ConfigurationError, Stopped

__all__ = ["KEYRING_FILE_ENV_VAR", "KeySource", "load_keyring"]

#: The environment variable naming a key file (the second place :func:`load_keyring` looks).
KEYRING_FILE_ENV_VAR: Final = "SIGNED_BUS_KEYRING_FILE"

log = logging.getLogger("signed_bus.keys")

# A JWK Set is a few hundred bytes per key; the cap keeps a wrong URL from filling memory.
_MAX_SET_BYTES: Final = 1024 * 1024


def _plain_http_allowed(url: str, allow_http: bool) -> bool:
    """Whether ``url`` may be fetched: https always; http only from a loopback host (a sidecar
    on the same machine) or when ``allow_http`` says the network is trusted. A JWK Set decides
    which keys may sign: fetched in clear over a network, anyone on the path could add theirs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if allow_http:
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to a location the source itself could use (https, or http where
    allowed: never from https down to http), and never carry the credentials to another
    origin (urllib copies every header, Authorization included, to the new request)."""

    def __init__(self, allow_http: bool) -> None:
        super().__init__()
        self._allow_http = allow_http

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> urllib.request.Request | None:
        downgrade = req.full_url.startswith("https:") and not newurl.startswith("https:")
        if downgrade or not _plain_http_allowed(newurl, self._allow_http):
            raise urllib.error.URLError("redirect to a location the key source may not use")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _shown(location: str) -> str:
    """The location as logs may show it: a URL without user, password, query or fragment
    (:func:`signed_bus._url.without_credentials`), a file path as it is."""
    if not location.startswith(("http://", "https://")):
        return location
    return without_credentials(location)


def load_keyring(
    path: str | os.PathLike[str] | None = None,
    *,
    file_var: str = KEYRING_FILE_ENV_VAR,
    var: str = KEYRING_ENV_VAR,
) -> Keyring:
    """The ring from the one lookup order every command and agent uses: ``path`` if given (a
    key file), else the key file named by the environment variable ``file_var``
    (``SIGNED_BUS_KEYRING_FILE``), else the key file contents in ``var``
    (``SIGNED_BUS_KEYRING``). ConfigurationError naming all three if none is set; an empty
    variable counts as unset."""
    if path is not None and os.fspath(path):
        return Keyring.from_file(path)
    named = os.environ.get(file_var, "").strip()
    if named:
        return Keyring.from_file(named)
    if os.environ.get(var, "").strip():
        return Keyring.from_env(var)
    raise ConfigurationError(
        f"no key ring: give a key file, or set {file_var} (a key file's path) or {var} (a key "
        "file's contents)"
    )


def _request_parts(location: str) -> tuple[str, dict[str, str]]:
    """The URL to open and the headers: a user and password in the URL become basic auth."""
    headers = {"Accept": "application/json"}
    parts = urllib.parse.urlsplit(location)
    if parts.username is None:
        return location, headers
    credentials = f"{urllib.parse.unquote(parts.username)}:"
    credentials += urllib.parse.unquote(parts.password or "")
    headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), headers


class KeySource:
    """A :class:`~signed_bus.Keyring` (:attr:`keyring`, hand it to the Verifier) that follows a
    JWK Set at ``location``: an ``https://`` URL, or a file path (checked like a key file:
    regular, owned by this user or root, not writable by others). A user and password in the URL
    are sent as basic auth; '/', '?' and '#' in them must be percent-encoded (a URL a parser
    would split differently is refused, as the Redis URLs are). Plain ``http://`` only from a
    loopback host, or anywhere with ``allow_http=True``; redirects obey the same rule and never
    carry the URL's credentials to another origin.

    ``start()`` loads the set once (ConfigurationError if that fails: there is no last good set
    yet) and then refreshes in the background; ``stop()`` ends that (or ``async with``). Without
    an event loop (sync workers): :meth:`start_thread` / :meth:`stop_thread` (or ``with``) do
    the same in a daemon thread; :meth:`refresh` fetches now.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        refresh_interval_s: float = 300.0,
        unknown_kid_interval_s: float = 30.0,
        timeout_s: float = 10.0,
        allow_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._location = os.fspath(location)
        self._is_url = self._location.startswith(("http://", "https://"))
        self._allow_http = allow_http
        # First: every check below, and the request, read the host as a URL parser does.
        if self._is_url and userinfo_is_ambiguous(self._location):
            raise ConfigurationError(f"JWK Set {_shown(self._location)} {AMBIGUOUS_USERINFO}")
        if self._is_url and not _plain_http_allowed(self._location, allow_http):
            raise ConfigurationError(
                f"JWK Set {_shown(self._location)}: plain http is refused except from a "
                "loopback host (anyone on the network path could add keys); use https, or "
                "allow_http=True on a network you trust"
            )
        for name, value in (
            ("refresh_interval_s", refresh_interval_s),
            ("unknown_kid_interval_s", unknown_kid_interval_s),
            ("timeout_s", timeout_s),
        ):
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        self._refresh_s = float(refresh_interval_s)
        self._unknown_s = float(unknown_kid_interval_s)
        self._timeout_s = float(timeout_s)
        self._clock = clock
        self._ring = Keyring()
        self._ring._on_miss = self._unknown_kid
        self._lock = threading.Lock()  # one fetch at a time, whoever asks
        self._last_fetch = -float("inf")  # clock() when the last fetch began
        self._fetches = 0
        self._failures = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # The fetch a refreshing task runs in a worker thread: stop() waits for it, since
        # cancelling the task does not stop the thread (it would log after stop returned).
        self._fetching: asyncio.Future[bool] | None = None
        self._thread: threading.Thread | None = None
        self._thread_wake = threading.Event()
        self._stopped = False

    def __repr__(self) -> str:
        return f"KeySource({_shown(self._location)!r}, keys={len(self._ring)})"

    @property
    def keyring(self) -> Keyring:
        """The ring this source keeps current (the same object for the source's lifetime)."""
        return self._ring

    @property
    def fetches(self) -> int:
        """How many fetches were made, successful or not."""
        return self._fetches

    @property
    def failures(self) -> int:
        """How many fetches failed or returned a set that was refused (the ring kept its keys)."""
        return self._failures

    # -- fetching ------------------------------------------------------------------------------

    def _read(self) -> Keyring:
        if not self._is_url:
            file = read_file(self._location)
            return Keyring.from_jwks(file.data, source=f"JWK Set file {self._location}")
        opener = urllib.request.build_opener(_SafeRedirects(self._allow_http))
        url, headers = _request_parts(self._location)
        # Only http(s) gets here (_is_url); file: and other schemes are never opened as URLs.
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        shown = _shown(self._location)
        try:
            with opener.open(request, timeout=self._timeout_s) as response:
                data = response.read(_MAX_SET_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise ConfigurationError(f"JWK Set {shown}: HTTP status {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise ConfigurationError(f"JWK Set {shown} is unreachable: {reason}") from None
        if len(data) > _MAX_SET_BYTES:
            raise ConfigurationError(f"JWK Set {shown} is larger than {_MAX_SET_BYTES} bytes")
        return Keyring.from_jwks(data, source=f"JWK Set {shown}")

    def refresh(self) -> bool:
        """Fetch the set now (blocking) and bring the ring in step with it.

        Returns True if the set was applied; on failure, logs it, keeps the ring as it was and
        returns False.
        """
        with self._lock:
            self._last_fetch = self._clock()
            self._fetches += 1
            try:
                fresh = self._read()
            except ConfigurationError as exc:
                self._failures += 1
                log.warning("key source: %s; keeping the last good set", exc)
                return False
            self._apply(fresh)
            return True

    def _apply(self, fresh: Keyring) -> None:
        # New and changed keys first, removals last: a verifier never sees a ring missing both.
        for key in fresh:
            # Not get(): that would count as an unknown kid and ask for another fetch.
            current = self._ring[key.kid] if key.kid in self._ring else None  # noqa: SIM401
            if current != key:
                self._ring.add(key, replace=True)
                log.info("key source: %s %r", "added" if current is None else "replaced", key)
        for kid in self._ring.kids():
            if kid not in fresh:
                self._ring.remove(kid)
                log.info("key source: removed kid %r", kid)

    def _unknown_kid(self) -> None:
        # Called by the ring, on the verifier's thread, for every kid it lacks: cheap and bounded.
        if self._thread is None and (self._wake is None or self._loop is None):
            return  # not started: nothing refreshes
        if self._clock() - self._last_fetch < self._unknown_s:
            return
        # Counted as begun now, so a burst of unknown kids asks once.
        self._last_fetch = self._clock()
        if self._thread is not None:
            self._thread_wake.set()
            return
        assert self._loop is not None and self._wake is not None
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nothing to wake
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- without an event loop (sync workers) --------------------------------------------------

    def start_thread(self) -> None:
        """For sync workers: load the set (ConfigurationError if it cannot be), then refresh it
        in a daemon thread, unknown kids included. Stop with :meth:`stop_thread`, or use the
        source as a ``with`` block."""
        if self._stopped:
            raise Stopped("KeySource was stopped; make a new one")
        if self._thread is not None or self._task is not None:
            return
        self._apply(self._first_load())
        self._thread = threading.Thread(
            target=self._run_thread, name="signed-bus key source", daemon=True
        )
        self._thread.start()

    def _run_thread(self) -> None:
        while not self._stopped:
            due = self._last_fetch + self._refresh_s - self._clock()
            if due > 0:
                self._thread_wake.wait(due)
            self._thread_wake.clear()
            if self._stopped:
                return
            try:
                self.refresh()
            except Exception:  # as in _run: a bug must not end the refreshing
                self._failures += 1
                log.exception("key source: refresh failed; keeping the last good set")

    def stop_thread(self, timeout_s: float | None = None) -> None:
        """Stop the refreshing thread (the ring keeps its keys); waits for a fetch under way, at
        most ``timeout_s`` seconds. Idempotent."""
        self._stopped = True
        self._thread_wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def __enter__(self) -> KeySource:
        self.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the set (ConfigurationError if it cannot be), then keep it fresh."""
        if self._stopped:
            raise Stopped("KeySource was stopped; make a new one")
        if self._task is not None or self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        fresh = await asyncio.to_thread(self._first_load)
        self._apply(fresh)
        self._task = asyncio.create_task(self._run(), name="signed-bus key source")

    def _first_load(self) -> Keyring:
        with self._lock:
            self._last_fetch = self._clock()
            self._fetches += 1
            return self._read()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            due = self._last_fetch + self._refresh_s - self._clock()
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=due)
            self._wake.clear()
            try:
                self._fetching = asyncio.ensure_future(asyncio.to_thread(self.refresh))
                await asyncio.shield(self._fetching)
            except Exception:
                # refresh() reports every failure it knows of; anything else is a bug, and must
                # not end the refreshing for good: log it, keep the ring, try again next time.
                self._failures += 1
                log.exception("key source: refresh failed; keeping the last good set")

    async def stop(self) -> None:
        """Stop refreshing (the ring keeps its keys). Idempotent."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        fetching, self._fetching = self._fetching, None
        if fetching is not None and not fetching.done():
            try:
                await fetching
            except Exception:  # refresh() reports its own failures: this is a bug in it
                log.exception("key source: refresh failed; keeping the last good set")

    async def __aenter__(self) -> KeySource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
