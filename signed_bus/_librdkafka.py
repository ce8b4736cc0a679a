"""What every front over librdkafka's Python binding (confluent-kafka) needs to read a consumed
message safely; no import of the binding itself, so any front may use it."""

from __future__ import annotations

import operator
from typing import Any, Final

__all__ = ["message_headers"]

# Called from C, so the interpreter checks the binding's result: a direct ``message.headers()``
# in a specialised (warm) call site does not, and a failure then surfaces as a SystemError in an
# unrelated later call, with the NULL-keyed list already handed back.
_HEADERS: Final = operator.methodcaller("headers")


def message_headers(message: Any) -> Any | None:
    """``message.headers()`` (an empty tuple for a message without headers, where the binding
    gives None), or None when the binding cannot read them.

    The binding builds each header key as UTF-8 text without checking the result: for a key that
    is not UTF-8 it returns a list holding a NULL key with an exception set, and caches that list
    on the message (reading it can crash the process). Called through :data:`_HEADERS` the
    interpreter turns that into a SystemError here; the message's headers are then replaced with
    none, so nothing reads the broken list again, and None is returned. Never call
    ``headers()`` on a consumed message directly: use this.
    """
    try:
        return _HEADERS(message) or ()
    except Exception:
        message.set_headers([])
        return None
