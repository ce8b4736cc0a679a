"""Body decoding profiles behind ``VerifiedMessage.payload`` (spec: docs/ENVELOPE.md section 3).

One profile per content type, the same in every implementation that shares a topic, so no two
consumers read different values from the same verified bytes: strict UTF-8, one rule for
repeated map keys (refused in JSON, last value kept in msgpack), no non-finite JSON numbers,
bounded nesting (``MAX_DEPTH`` for JSON, ``MAX_MSGPACK_DEPTH`` for msgpack). Any departure raises
``PayloadError`` (the verifier reports it as reason ``malformed``). Messages never quote the
body.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import msgpack

__all__ = ["MAX_DEPTH", "MAX_MSGPACK_DEPTH", "PayloadError", "decode_json", "decode_msgpack"]

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
