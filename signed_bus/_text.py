"""Escaping untrusted text before it reaches a terminal or a log.

Everything a record carries (issuer, kid, model, content type, dead-letter headers, keys, error
details quoting them) is chosen by whoever could write to a topic, and anyone holding any key in
the ring can sign it. Printed raw, a carriage return or an ANSI sequence rewrites what an
operator sees (``\\r\\x1b[2K chain verified``), a line feed forges a log line and a BiDi override
reorders it. :func:`printable` is the one place such text is made safe; it is applied where text
is printed or logged, never to the data itself.
"""

from __future__ import annotations

__all__ = ["printable"]

# Invalid UTF-8 bytes come out of surrogateescape decoding as U+DC80..U+DCFF; they are shown as
# the bytes they were (\xNN, NN >= 80), which no code point is shown as (see _escape).
_BAD_BYTE_LOW = 0xDC80
_BAD_BYTE_HIGH = 0xDCFF


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code < 0x80:
        # C0 controls and DEL; the rest of ASCII is printable (str.isprintable: only space
        # among the separators).
        return char if char.isprintable() else f"\\x{code:02x}"
    # str.isprintable() is False for every category that can move or hide text: Cc (C1
    # controls), Cf (BiDi marks, embeddings, overrides and isolates, zero-width characters),
    # Zl/Zp (U+2028, U+2029), Zs other than the space, Cs (lone surrogates), Co, Cn.
    if char.isprintable():
        return char
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str | bytes) -> str:
    """``text`` with every character that could move, hide or forge terminal output escaped.

    - a backslash becomes ``\\\\`` (so every escape below is unambiguous);
    - C0 controls and DEL (TAB, LF, CR, ESC, BEL, NUL, ...) become ``\\xNN``;
    - every other non-printable code point (C1 controls, BiDi controls such as U+202E and
      U+2066..U+2069, U+2028/U+2029, zero-width and format characters, lone surrogates, unusual
      spaces) becomes ``\\uNNNN`` (``\\UNNNNNNNN`` above the BMP);
    - ``bytes`` are decoded as UTF-8 and each byte that is not valid UTF-8 becomes ``\\xNN``
      (always 80..ff, which no code point is shown as: U+0080..U+00FF print as ``\\u00NN`` or
      as themselves).

    Printable text, including non-ASCII letters, is unchanged. Apply it once, where the text is
    printed or logged: escaping twice doubles the backslashes.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        decoded = bytes(text).decode("utf-8", "surrogateescape")
        return "".join(
            f"\\x{ord(char) - _BAD_BYTE_LOW + 0x80:02x}"
            if _BAD_BYTE_LOW <= ord(char) <= _BAD_BYTE_HIGH
            else _escape(char)
            for char in decoded
        )
    if not isinstance(text, str):  # a caller's None or int: shown, never raised on
        text = str(text)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    return "".join(_escape(char) for char in text)
