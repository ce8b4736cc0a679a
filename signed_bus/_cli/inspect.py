"""``signed-bus inspect``: decode one envelope, print its protected header, verify it and print
the verdict. Exit 0: the envelope verified; 1: it did not; 2: usage or configuration error.

Text that comes from the envelope is shown through :func:`signed_bus._text.printable` (``str()``
of a VerificationError is already escaped), so it cannot move the cursor, erase lines or start
new ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, TextIO

from signed_bus._cli.options import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    UsageError,
    add_freshness_options,
    freshness_from_args,
    keyring_from_args,
    stdout,
)
from signed_bus._clock import system_clock
from signed_bus._text import printable
from signed_bus.errors import VerificationError

if TYPE_CHECKING:
    from signed_bus._decode import Envelope

__all__ = ["register"]

# Envelopes are capped by the verifier (1 MiB by default); this only keeps a wrong path such as
# /dev/zero from being read whole.
_MAX_INPUT_BYTES = 64 * 1024 * 1024


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="decode one envelope, print its header and verify it",
        description=(
            "Read one envelope (a Kafka record value) from FILE or standard input, print its "
            "protected header, verify it with a keyring and print the verdict. Exit 0 if it "
            "verifies, 1 if it does not, 2 on usage or configuration errors."
        ),
    )
    parser.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="envelope bytes; '-' or absent: stdin"
    )
    parser.add_argument("--hex", action="store_true", help="the input is hex text, not raw bytes")
    parser.add_argument(
        "--keyring",
        metavar="FILE",
        help="key file to verify with (default: $SIGNED_BUS_KEYRING_FILE, else the contents "
        "of $SIGNED_BUS_KEYRING)",
    )
    parser.add_argument(
        "--topic",
        help="the topic the record was read from (default: the envelope's own topic, which "
        "makes the topic check pass by construction)",
    )
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--key", metavar="KEY", help="the record key, as UTF-8 text")
    key.add_argument("--key-hex", metavar="HEX", help="the record key, as hex")
    key.add_argument("--null-key", action="store_true", help="the record had no key")
    parser.add_argument(
        "--audit", action="store_true", help="audit mode: verify everything but freshness"
    )
    parser.add_argument(
        "--reference-ms",
        type=int,
        metavar="MS",
        help="check freshness as of this time, ms since the epoch (e.g. the broker append "
        "time); it stands for both the record's reference time and the consumer's clock",
    )
    add_freshness_options(parser)
    parser.add_argument("--max-envelope-bytes", type=int, default=1_048_576, metavar="N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_inspect)


def _read_input(name: str, *, is_hex: bool) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(_MAX_INPUT_BYTES + 1)
    else:
        with open(name, "rb") as stream:
            data = stream.read(_MAX_INPUT_BYTES + 1)
    if len(data) > _MAX_INPUT_BYTES:
        raise UsageError(f"input is larger than {_MAX_INPUT_BYTES} bytes")
    if not is_hex:
        return data
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise UsageError("--hex input is not hex text") from None


def _record_key(args: argparse.Namespace) -> bytes | None:
    if args.key is not None:
        return str(args.key).encode("utf-8")
    if args.key_hex is not None:
        try:
            return bytes.fromhex(args.key_hex)
        except ValueError:
            raise UsageError("--key-hex is not hex") from None
    # Not given: a null key is what an envelope without a key digest was signed for; with a digest
    # the key cannot be recovered from it, so the check fails and the output says why.
    return None


def _iso_ms(ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return "out of range"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header_fields(envelope: Envelope) -> dict[str, object]:
    from signed_bus._envelope import TAG

    header = envelope.header
    return {
        "version": TAG,
        "alg": header.alg,
        "kid": header.kid,
        "issuer": header.issuer,
        "model": header.model,
        "content_type": header.content_type,
        "topic": header.topic,
        "key_digest": None if header.key_digest is None else header.key_digest.hex(),
        "created_at": header.created_at,
        "created_at_iso": _iso_ms(header.created_at),
        "expires_at": header.expires_at,
        "expires_at_iso": None if header.expires_at is None else _iso_ms(header.expires_at),
        "nonce": header.nonce.hex(),
        "parents": [parent.hex() for parent in header.parents],
        "body_bytes": len(envelope.body),
        "signature_bytes": len(envelope.signature),
        "digest": envelope.digest.hex(),
    }


def _print_header(envelope: Envelope, out: TextIO) -> None:
    from signed_bus._envelope import TAG

    header = envelope.header
    rows: list[tuple[str, str]] = [
        ("version", TAG),
        ("alg", printable(header.alg)),
        ("kid", printable(header.kid)),
        ("issuer", printable(header.issuer)),
        ("model", printable(header.model)),
        ("content type", printable(header.content_type)),
        ("topic", printable(header.topic)),
        (
            "key digest",
            "none (null record key)" if header.key_digest is None else header.key_digest.hex(),
        ),
        ("created at", f"{_iso_ms(header.created_at)} ({header.created_at} ms)"),
        (
            "expires at",
            "never"
            if header.expires_at is None
            else f"{_iso_ms(header.expires_at)} ({header.expires_at} ms)",
        ),
        ("nonce", header.nonce.hex()),
        ("parents", str(len(header.parents)) if header.parents else "none"),
    ]
    rows += [(f"  parent {index}", parent.hex()) for index, parent in enumerate(header.parents)]
    rows += [
        ("body", f"{len(envelope.body)} bytes"),
        ("signature", f"{len(envelope.signature)} bytes"),
        ("digest", envelope.digest.hex()),
    ]
    print("protected header (decoded before verification; trust it only if verified):", file=out)
    for label, value in rows:
        print(f"  {label:<13} {value}", file=out)


def _inspect(args: argparse.Namespace) -> int:
    from signed_bus._decode import decode_envelope
    from signed_bus._verifier import Verifier

    keyring = keyring_from_args(args)
    value = _read_input(args.input, is_hex=args.hex)
    notes: list[str] = []
    envelope: Envelope | None
    try:
        envelope = decode_envelope(value)
    except VerificationError:
        envelope = None  # the verifier reports why, with the same reason code
    topic = args.topic
    if topic is None:
        topic = envelope.header.topic if envelope is not None else ""
        if envelope is not None:
            notes.append(
                "--topic not given: checked against the envelope's own topic, so the topic "
                "check passes by construction"
            )
    record_key = _record_key(args)
    key_given = args.key is not None or args.key_hex is not None or args.null_key
    if not key_given and envelope is not None:
        if envelope.header.key_digest is None:
            notes.append("record key not given: checked as a null key, which the envelope names")
        else:
            notes.append(
                "record key not given: the envelope names a keyed record, so the key check "
                "fails; pass --key or --key-hex"
            )
    if args.audit:
        notes.append("audit mode: freshness not checked")
    verifier = Verifier(
        keyring,
        freshness=freshness_from_args(args),
        max_envelope_bytes=args.max_envelope_bytes,
        audit=args.audit,
        # The verifier also bounds freshness by its clock; inspecting "as of" a time sets both.
        clock=system_clock if args.reference_ms is None else lambda: int(args.reference_ms),
    )
    error: VerificationError | None = None
    try:
        verifier.verify(value, topic=topic, key=record_key, reference_ms=args.reference_ms)
    except VerificationError as exc:
        error = exc
    out = stdout()
    if args.json:
        document: dict[str, object] = {
            "header": None if envelope is None else _header_fields(envelope),
            "topic_checked": topic,
            "notes": notes,
            "verified": error is None,
            "reason": None if error is None else error.reason,
            "message": None if error is None else error.message,
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        if envelope is not None:
            _print_header(envelope, out)
        for note in notes:
            print(f"note: {note}", file=out)
        if error is None:
            print("verdict: OK", file=out)
        else:
            print(f"verdict: FAILED {error}", file=out)
    return EXIT_OK if error is None else EXIT_FAILED
