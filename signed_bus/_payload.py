"""Body decoding profiles behind ``VerifiedMessage.payload`` (spec: docs/ENVELOPE.md section 3),
the default encoder :class:`~signed_bus.Signer` writes bodies with, and :func:`payload_as`.

One profile per content type, the same in every implementation that shares a topic, so no two
consumers read different values from the same verified bytes: strict UTF-8, one rule for
repeated map keys (refused in JSON, last value kept in msgpack), no non-finite JSON numbers,
bounded nesting (``MAX_DEPTH`` for JSON, ``MAX_MSGPACK_DEPTH`` for msgpack). Any departure raises
``PayloadError`` (the verifier reports it as reason ``malformed``). Messages never quote the
body.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import gc
import json
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar, cast

import msgpack

from signed_bus import _native

__all__ = [
    "MAX_DEPTH",
    "MAX_MSGPACK_DEPTH",
    "Encoder",
    "PayloadError",
    "check_map_keys",
    "decode_json",
    "decode_msgpack",
    "encode_payload",
    "new_packer",
    "payload_as",
]

#: Most JSON arrays/objects nested inside each other; a top-level container is 1.
MAX_DEPTH: Final = 128
#: Most msgpack arrays/maps nested inside each other: the C unpacker's stack size.
MAX_MSGPACK_DEPTH: Final = 1024
# The C unpacker enforces MAX_MSGPACK_DEPTH itself (StackError); the pure-Python fallback
# does not.
_C_UNPACKER: Final = msgpack.Unpacker.__module__ == "msgpack._cmsgpack"


class PayloadError(ValueError):
    """The body breaks its content type's decoding profile."""


def decode_json(body: bytes) -> object:
    """application/json: RFC 8259 JSON text, UTF-8 only (no BOM, no UTF-16/32), no NaN or
    Infinity literals, no number that overflows a double, unique member names, no string with
    an unpaired surrogate escape, nesting at most MAX_DEPTH."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("JSON body is not UTF-8") from None
    try:
        with _no_collection(len(body)):
            value = json.loads(
                text,
                object_pairs_hook=_json_object,
                parse_constant=_no_constant,
                parse_float=_finite_float,
            )
    except RecursionError:
        raise PayloadError(f"JSON body is nested deeper than {MAX_DEPTH}") from None
    except PayloadError:
        raise
    except ValueError as exc:  # JSONDecodeError, int digit limit
        raise PayloadError(f"JSON body does not parse ({type(exc).__name__})") from None
    _check_tree(value, text=True)
    return value


def decode_msgpack(body: bytes) -> object:
    """application/msgpack: exactly one msgpack object (no trailing bytes), str is valid UTF-8,
    map keys are str or bin, a repeated key keeps its LAST value, nesting at most
    MAX_MSGPACK_DEPTH. Floats are taken as they are (NaN and infinities included); the
    timestamp extension (type -1) decodes to ``msgpack.Timestamp``, other ext types to
    ``msgpack.ExtType``.

    This is exactly what msgpack's C unpacker does with its defaults (``raw=False``,
    ``strict_map_key=True``; its stack holds 1,024 containers), so the profile costs nothing
    over a plain ``unpackb``: this runs once per consumed record. Where msgpack runs without its
    C extension, the depth is checked by walking the value instead.
    """
    try:
        if len(body) <= _PAUSE_GC_ABOVE:  # the per-record path: nothing around the C call
            value = msgpack.unpackb(body)
        else:
            with _no_collection(len(body)):
                value = msgpack.unpackb(body)
    except Exception as exc:  # msgpack raises several unrelated types
        raise PayloadError(f"msgpack body does not decode ({type(exc).__name__})") from None
    if not _C_UNPACKER:
        _check_tree(value, text=False, max_depth=MAX_MSGPACK_DEPTH)
    return value


#: Bodies above this many bytes decode with the cyclic garbage collector paused.
_PAUSE_GC_ABOVE: Final = 65_536


@contextmanager
def _no_collection(size: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large body decodes.

    A body of many small containers (a signer's 1 MiB of empty arrays) allocates hundreds of
    thousands of objects, and each allocation burst triggers collections that walk all of them
    again: about 5x the decode itself. Nothing a decode builds is cyclic garbage, so pausing is
    safe; small bodies never trigger a collection and skip the (process-wide) switch.
    """
    if size <= _PAUSE_GC_ABOVE or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise PayloadError("JSON object has duplicate member names")
    return result


def _no_constant(name: str) -> float:
    raise PayloadError("JSON body holds NaN or Infinity, which JSON does not have")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise PayloadError("JSON number overflows a double")
    return number


def _check_tree(value: object, *, text: bool, max_depth: int = MAX_DEPTH) -> None:
    """Depth of containers; with ``text``, every string (keys too) encodes as UTF-8 (JSON
    escapes can spell unpaired surrogates, which no UTF-8 text holds)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is list or kind is dict:
            depth += 1
            if depth > max_depth:
                raise PayloadError(f"body is nested deeper than {max_depth}")
            if kind is dict:
                assert isinstance(item, dict)
                for key, child in item.items():
                    push((key, depth))
                    push((child, depth))
            else:
                assert isinstance(item, list)
                for child in item:
                    push((child, depth))
        elif text and kind is str:
            assert isinstance(item, str)
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise PayloadError("JSON string holds an unpaired surrogate") from None


# -- encoding: the default encoder (its form: docs/ENVELOPE.md section 3, "The default encoder") --

#: Encodes a result into a msgpack body (``application/msgpack``): what :class:`Signer` takes.
Encoder = Callable[[object], bytes]


def encode_payload(result: object) -> bytes:
    """The default encoder: msgpack, with the types ML code produces mapped onto plain msgpack
    values (no extension types, so any msgpack reader reads the body and the strict reader
    :func:`decode_msgpack` needs nothing new). Raises TypeError for a type it has no form for,
    and for a map key whose form is not str or bytes (``{0: 0.1}``): the decoding profile
    refuses such a map, so every verifier would dead-letter the signed body as malformed.
    """
    # A packer from the pool instead of a new one per call (what packb does): each is used by
    # one call at a time, so threads and a _plain hook that encodes again never share one.
    try:
        packer = PACKER_POOL.pop()
    except IndexError:
        packer = new_packer()
    body = cast(bytes, packer.pack(result))  # on an error the packer is dropped (and resets)
    if len(body) <= POOLED_PACKER_BYTES and len(PACKER_POOL) < MAX_POOLED_PACKERS:
        PACKER_POOL.append(packer)  # a packer keeps its largest buffer: big ones are dropped
    native = _native._module
    if native is None or native.check_map_keys(body) != 1:  # 1: the extension's clear yes
        check_map_keys(body)  # decides every other case (asks the extension once more)
    return body


def new_packer() -> msgpack.Packer:
    """A packer writing the default encoder's form (the pool's, which the extension's one-call
    seal shares: signed_bus/_signer.py)."""
    return msgpack.Packer(default=_plain)


def check_map_keys(body: bytes) -> None:
    """The profile's map-key rule on an encoded body. msgpack's packer writes any key, so the
    body is checked after encoding: by the native extension's walk where it is loaded (no
    objects built; it leaves anything but a clear answer to the reader below), else read back
    once by msgpack's C reader, which refuses the others (``strict_map_key``, its default), as
    :func:`decode_msgpack` does; ``raw=True`` and ``use_list=False`` spare it decoding text and
    building lists. The keys are those msgpack wrote, after ``_plain``: an enum member's or a
    UUID's form is a str key, as a verifier reads it."""
    native = _native._module
    verdict = -1 if native is None else native.check_map_keys(body)
    if verdict == 1:
        return
    try:
        if verdict == 0:
            raise ValueError("a map key of another type")
        if len(body) <= _PAUSE_GC_ABOVE:
            _unpackb(body, raw=True, use_list=False)
        else:
            with _no_collection(len(body)):
                _unpackb(body, raw=True, use_list=False)
    except (ValueError, TypeError):  # a key of another type; a map as a key is unhashable
        raise TypeError(
            "a map key whose form is not str or bytes has no payload form (the decoding "
            "profile refuses it: docs/ENVELOPE.md section 3)"
        ) from None


def _plain(value: object) -> object:
    """msgpack's ``default`` hook: one non-msgpack value -> its plain form (msgpack then
    encodes what comes back, calling this again for what is still not plain)."""
    # Checked by module presence, not import: a numpy or pydantic value cannot exist unless its
    # library is already imported, and encoding must not import either.
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            if value.dtype.kind in _NUMPY_KINDS:
                return value.tolist()
            raise TypeError(f"a numpy array of dtype {value.dtype.str} has no payload form")
        if isinstance(value, numpy.generic):
            if value.dtype.kind in _NUMPY_KINDS:
                return value.item()
            raise TypeError(f"a numpy scalar of dtype {value.dtype.str} has no payload form")
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        # python mode keeps datetimes, numpy values etc. as they are: this hook encodes them
        return value.model_dump(mode="python", by_alias=True)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    raise TypeError(f"{type(value).__qualname__} has no payload form")


# numpy dtype kinds with a plain form: bool, signed and unsigned integers, floats, str, bytes.
_NUMPY_KINDS: Final = frozenset("biufUS")
_packb = msgpack.packb
_unpackb = msgpack.unpackb
#: The default encoder's packers, each used by one call at a time: one pool per process, which
#: the extension's one-call seal shares (signed_bus/_signer.py).
PACKER_POOL: Final[list[msgpack.Packer]] = []
#: A packer that encoded more than this is not pooled (it keeps its buffer's size).
POOLED_PACKER_BYTES: Final = 1 << 16
MAX_POOLED_PACKERS: Final = 16


# -- decoding into a type ------------------------------------------------------------------------

T = TypeVar("T")


def payload_as(model: type[T], payload: object) -> T:
    """A verified payload as ``model``: a Pydantic model, a dataclass, or any type Pydantic
    validates (``list[Model]``, a ``TypedDict``...).

    ``payload`` is the decoded payload, or a message carrying one (``ConsumedMessage``,
    ``VerifiedMessage``: anything with a ``payload`` attribute is read through it, since a
    decoded payload is only ever plain msgpack values). Only ``model`` decides which Python
    type is built: nothing in the payload names a type. Raises ValueError when the payload
    does not fit; the message names the fields, never their values.
    """
    if not isinstance(payload, dict | list | str | bytes | int | float | bool | None):
        payload = getattr(payload, "payload", payload)
    pydantic = _pydantic()
    if pydantic is not None:
        try:
            target: Any = model
            if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
                return cast(T, target.model_validate(payload))
            return cast(T, _adapter(target).validate_python(payload))
        except pydantic.ValidationError as exc:
            where = sorted({".".join(map(str, e["loc"])) or "(root)" for e in exc.errors()})
            raise ValueError(
                f"the payload does not fit {_name(model)}: {exc.error_count()} error(s) at "
                + ", ".join(where[:8])
            ) from None
    if isinstance(model, type) and dataclasses.is_dataclass(model):
        if not isinstance(payload, dict):
            raise ValueError(f"the payload does not fit {_name(model)}: not a map")
        names = {f.name for f in dataclasses.fields(model) if f.init}
        if not set(payload) <= names:
            raise ValueError(f"the payload does not fit {_name(model)}: unknown fields")
        try:
            return cast(T, model(**payload))
        except TypeError:
            raise ValueError(f"the payload does not fit {_name(model)}: missing fields") from None
    raise ValueError(f"decoding into {_name(model)} needs pydantic (pip install pydantic)")


def _pydantic() -> Any:
    try:
        import pydantic  # optional: imported when first needed
    except ImportError:
        return None
    return pydantic


@functools.lru_cache(maxsize=256)
def _adapter(model: object) -> Any:
    return _pydantic().TypeAdapter(model)


def _name(model: object) -> str:
    return getattr(model, "__qualname__", None) or repr(model)
