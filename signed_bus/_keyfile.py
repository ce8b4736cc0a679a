"""The key-file format: JSON text to checked key entries and back, and the file on disk.

The format is specified in docs/KEYFILE.md; this module is the layer under
:mod:`signed_bus._keys`, which builds keys from the entries (:class:`KeyEntry`) and whose
``Keyring.from_file`` / ``from_json`` / ``from_env`` / ``to_json`` / ``dump`` call in here. It
knows the document's members, strict base64url, the file checks (regular file, owner, mode) and
the atomic write; it knows no key type. Errors name the source, the entry index, the kid and the
field, never a field's value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from signed_bus.errors import ConfigurationError

__all__ = [
    "EDDSA",
    "FILE_FORMAT_VERSION",
    "HS256",
    "KEYRING_ENV_VAR",
    "KID_RE",
    "MAX_ISSUER_CHARS",
    "MAX_KID_CHARS",
    "KeyEntry",
    "KeyFileData",
    "b64u_decode",
    "b64u_encode",
    "check_issuers",
    "check_kid",
    "dumps",
    "iter_entries",
    "parse_json",
    "read_env",
    "read_file",
    "refuse_exposed_secrets",
    "write_file",
]

HS256: Final = "HS256"
EDDSA: Final = "EdDSA"
KEYRING_ENV_VAR: Final = "SIGNED_BUS_KEYRING"
FILE_FORMAT_VERSION: Final = 1
MAX_KID_CHARS: Final = 128
MAX_ISSUER_CHARS: Final = 256
# Printable ASCII without spaces: kids travel in headers, log lines and metric labels.
KID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")  # 128 == MAX_KID_CHARS

# A key file is a few hundred bytes per key; a cap keeps a wrong path (/dev/zero, a log file) from
# being read whole into memory.
_MAX_KEYRING_BYTES: Final = 4 * 1024 * 1024
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# Field names are shown in errors only when they look like identifiers (a secret pasted as a field
# name must not end up in an error message).
_FIELD_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")

_COMMON_FIELDS: Final = frozenset({"kid", "alg", "issuers"})
_MATERIAL_FIELDS: Final = {HS256: ("secret",), EDDSA: ("private", "public")}
_ALL_MATERIAL: Final = frozenset({"secret", "private", "public"})


def b64u_encode(raw: bytes) -> str:
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
    if b64u_encode(raw) != stripped:
        raise ValueError("not canonical base64url")
    return raw


#: Strict base64url decoding for the other formats (JWK Sets): raises ValueError, never naming
#: the input.
b64u_decode = _b64u_decode


def _describe_fields(names: Iterable[object]) -> str:
    shown = sorted(str(n) for n in names if isinstance(n, str) and _FIELD_NAME_RE.fullmatch(n))
    hidden = sum(1 for n in names if not (isinstance(n, str) and _FIELD_NAME_RE.fullmatch(n)))
    parts = [repr(n) for n in shown]
    if hidden:
        parts.append(f"{hidden} field(s) with unprintable names")
    return ", ".join(parts)


# -- kid and issuers (docs/KEYFILE.md, the entry table; Key's constructor checks them too) ------


def check_kid(kid: object) -> str:
    """``kid`` if it follows docs/KEYFILE.md's rule, else ConfigurationError (not naming it)."""
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ConfigurationError(
            f"kid must be 1 to {MAX_KID_CHARS} printable ASCII characters without spaces"
        )
    return kid


def check_issuers(kid: str, issuers: object) -> frozenset[str]:
    """The issuer set a key may sign for, checked by docs/KEYFILE.md's rules."""
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
            or len(issuer) > MAX_ISSUER_CHARS
            or not issuer.isprintable()
        ):
            raise ConfigurationError(
                f"key {kid!r}: each issuer must be a non-empty printable string of at most "
                f"{MAX_ISSUER_CHARS} characters"
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


# -- document <-> entries -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class KeyEntry:
    """One entry of a key file, its shape checked: kid syntax, alg, exactly the one material
    field the alg takes, strict base64url. The key rules (secret length, issuers, Ed25519 point)
    are checked by the key constructors in :mod:`signed_bus._keys`."""

    where: str  # "key file F: key #0 (kid 'k1')", the prefix of every error about this entry
    kid: str
    alg: str
    field: str  # "secret", "private" or "public"
    issuers: list[Any]  # each checked by the key constructors
    material: bytes = dataclasses.field(repr=False)  # never shown


def parse_json(text: str | bytes, *, source: str) -> object:
    """Parse key file text. Errors name ``source``, never the contents.

    A member repeated in any JSON object is refused: parsers disagree on which copy wins (Python
    keeps the last), so a repeated ``secret`` or ``issuers`` could mean one key to a reviewer and
    another to the loader.
    """
    try:
        if isinstance(text, bytes):
            # UTF-8 only (docs/KEYFILE.md): json.loads would guess UTF-16 or UTF-32 from bytes.
            text = text.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ConfigurationError(f"{source}: a key file is UTF-8 without a byte order mark")
        return json.loads(text, object_pairs_hook=_refuse_duplicate_members)
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
    except ValueError:  # e.g. an integer past Python's digit limit; never shows the text
        raise ConfigurationError(f"{source}: not valid JSON") from None


def iter_entries(document: object, *, source: str) -> Iterator[KeyEntry]:
    """The entries of a parsed document, checked one at a time as they are taken (so an error
    names the first bad entry in the order the caller builds keys)."""
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
    for index, entry in enumerate(entries):
        yield _entry(entry, f"{source}: key #{index}")


def _entry(entry: object, where: str) -> KeyEntry:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: each key must be a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ConfigurationError(
            f"{where}: 'kid' must be 1 to {MAX_KID_CHARS} printable ASCII characters without spaces"
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
    return KeyEntry(where=where, kid=kid, alg=alg, field=field, issuers=issuers, material=raw)


def dumps(entries: Iterable[Mapping[str, Any]]) -> str:
    """The key file text of these entries (members as docs/KEYFILE.md names them)."""
    document = {"version": FILE_FORMAT_VERSION, "keys": list(entries)}
    return json.dumps(document, indent=2) + "\n"


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


# -- the environment and the file -----------------------------------------------------------------


def read_env(var: str = KEYRING_ENV_VAR) -> tuple[str, str]:
    """The key file text in environment variable ``var`` and the source name for errors."""
    text = os.environ.get(var)
    if not text:
        raise ConfigurationError(f"environment variable {var} is not set or empty")
    return text, f"environment variable {var}"


class KeyFileData(NamedTuple):
    """A key file's bytes as read, with the mode they were read under."""

    name: str
    mode: int
    data: bytes

    @property
    def source(self) -> str:
        return f"key file {self.name}"

    def __repr__(self) -> str:  # the data may hold secrets
        return f"KeyFileData(name={self.name!r}, mode={self.mode:04o})"


def read_file(path: str | os.PathLike[str]) -> KeyFileData:
    """Read a key file, refusing anything but a regular file (a FIFO or device is refused at
    once, never waited on), a file owned by another user than this process's or root (its owner
    could change the keys), a file that other users could write (they could add a key the ring
    then trusts), and a file over the size cap. Every check is made on the opened file, so a swap
    between check and read cannot slip through. A symbolic link is followed (Kubernetes mounts
    secrets as links); the checks apply to its target. Whether the contents may be readable by
    others depends on what they hold: :func:`refuse_exposed_secrets`.
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
    return KeyFileData(name, mode, data)


def refuse_exposed_secrets(file: KeyFileData) -> None:
    """For a file holding secret key material: refuse it if group or others can read it."""
    if file.mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ConfigurationError(
            f"key file {file.name} has mode {file.mode:04o} and holds secret key material: it "
            f"must be readable by its owner only (chmod 600 {file.name})"
        )


def write_file(
    path: str | os.PathLike[str], text: str, *, secret: bool, overwrite: bool, mode: int
) -> None:
    """Write ``text`` to ``path`` atomically, created with ``mode``.

    The file is written under a temporary name created with the final mode (never widened then
    narrowed), synced, then moved into place. Without ``overwrite`` an existing file is left
    alone and ConfigurationError is raised. ``secret`` text is never written readable by group
    or others.
    """
    name = os.fspath(path)
    if secret and mode & 0o077:
        raise ConfigurationError(
            f"refusing to write secret key material to {name} with mode {mode:04o}"
        )
    directory = os.path.dirname(os.path.abspath(name))
    tmp = os.path.join(directory, f".{os.path.basename(name)}.{secrets.token_hex(8)}.tmp")
    data = text.encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
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
