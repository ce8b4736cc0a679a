"""The ``signed-bus`` console script.

Subcommands defined in this module (``signed-bus COMMAND --help`` for each; the modules in
:data:`COMMAND_MODULES` add more, such as ``trace`` and ``tail``):

- ``keygen``: generate an HS256 or EdDSA key into a key file (mode 0600).
- ``export-public``: write the public part of a key file (EdDSA public keys only).
- ``inspect``: decode one envelope, print its protected header, verify it, print the verdict.

Exit codes: 0 success (for inspect: the envelope verified), 1 the envelope did not verify,
2 usage or configuration error.

Adding a subcommand: write a module with ``register(subparsers) -> None`` that adds one parser
and sets ``handler`` (``Callable[[argparse.Namespace], int]``) with ``set_defaults``, then list the
module in :data:`COMMAND_MODULES`. Import heavy dependencies (aiokafka, redis) inside the handler
so that ``signed-bus keygen`` stays fast and works without them configured.

Nothing here prints key material: keys are shown through their repr (kid, alg, issuers), and
EdDSA public keys, which are not secret, in base64url. Text that comes from an envelope, a record
or a file is shown through :func:`signed_bus._text.printable` (``str()`` of a VerificationError is
already escaped), so it cannot move the cursor, erase lines or start new ones.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO, TypeAlias

from signed_bus._clock import system_clock
from signed_bus._keys import (
    Ed25519Key,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus._text import printable
from signed_bus.cli_trace import add_freshness_options, freshness_from_args
from signed_bus.errors import ConfigurationError, SignedBusError, VerificationError

if TYPE_CHECKING:
    from signed_bus._envelope import Envelope

__all__ = [
    "COMMAND_MODULES",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "Subparsers",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace], int]

# Modules contributing subcommands besides the ones defined here, each with register(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "signed_bus.cli_trace",
    "signed_bus.cli_tail",
    "signed_bus.bench.command",
)


class _UsageError(Exception):
    """A command-line mistake the parser could not catch (exit 2)."""


def _out() -> TextIO:
    return sys.stdout


def _err(message: str, *, escaped: bool = False) -> None:
    """Print an error; ``message`` may quote file names, topics or record text, so it is escaped
    unless it already is (``str()`` of a VerificationError)."""
    print(f"signed-bus: error: {message if escaped else printable(message)}", file=sys.stderr)


# -- keygen ---------------------------------------------------------------------------------------


def _register_keygen(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="generate a signing key into a key file (mode 0600)",
        description=(
            "Generate an HS256 (HMAC-SHA256) or EdDSA (Ed25519) key and write it to a key file "
            "with mode 0600. Secrets are never printed."
        ),
    )
    parser.add_argument("--alg", required=True, choices=("hmac", "ed25519"), help="key type")
    parser.add_argument("--kid", required=True, help="key id, as signers and verifiers name it")
    parser.add_argument(
        "--issuer",
        required=True,
        action="append",
        dest="issuers",
        metavar="ISSUER",
        help="an issuer (agent id) the key may sign for; repeat for several",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="key file to write")
    parser.add_argument(
        "--public-out",
        metavar="FILE",
        help="also write the public key (ed25519 only) to this file, mode 0644",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the key to existing key files instead of refusing to touch them",
    )
    parser.set_defaults(handler=_keygen)


def _load_or_new(path: str, *, append: bool) -> Keyring:
    """The ring already in ``path`` if appending to an existing file, else an empty ring."""
    if not os.path.lexists(path):
        return Keyring()
    if not append:
        raise _UsageError(f"{path} already exists; pass --append to add the key to it")
    return Keyring.from_file(path)


def _keygen(args: argparse.Namespace) -> int:
    if args.public_out is not None and args.alg != "ed25519":
        raise _UsageError(
            "--public-out needs --alg ed25519: an HMAC key is symmetric and has no public part"
        )
    # Check both files before writing either, so a failure leaves nothing half done.
    ring = _load_or_new(args.out, append=args.append)
    public_ring = None
    if args.public_out is not None:
        public_ring = _load_or_new(args.public_out, append=args.append)
    key: Key
    if args.alg == "hmac":
        key = generate_hmac_key(args.kid, args.issuers)
    else:
        key = generate_ed25519_key(args.kid, args.issuers)
    ring.add(key)
    if public_ring is not None:
        assert isinstance(key, Ed25519Key)
        public_ring.add(key.public())
    ring.dump(args.out, overwrite=args.append)
    out = _out()
    print(f"wrote {key!r} to {args.out} (mode 0600)", file=out)
    if isinstance(key, Ed25519Key):
        public = base64.urlsafe_b64encode(key.public_bytes).rstrip(b"=").decode("ascii")
        print(f"public key (base64url): {public}", file=out)
    if public_ring is not None:
        public_ring.dump(args.public_out, overwrite=args.append, mode=0o644)
        print(f"wrote the public key to {args.public_out}", file=out)
    return EXIT_OK


# -- export-public --------------------------------------------------------------------------------


def _register_export_public(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "export-public",
        help="write the public part of a key file (for EdDSA verifiers)",
        description=(
            "Read a key file and write a key file holding only its EdDSA public keys. HMAC keys "
            "are symmetric and are left out: they cannot be shared without sharing the power to "
            "sign."
        ),
    )
    parser.add_argument("keyring", metavar="KEYFILE", help="key file to read")
    parser.add_argument(
        "--out", metavar="FILE", help="write here (mode 0644) instead of standard output"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it already exists"
    )
    parser.set_defaults(handler=_export_public)


def _export_public(args: argparse.Namespace) -> int:
    ring = Keyring.from_file(args.keyring)
    public = ring.public()
    dropped = len(ring) - len(public)
    if args.out is None:
        _out().write(public.to_json())
    else:
        public.dump(args.out, overwrite=args.overwrite, mode=0o644)
        print(f"wrote {len(public)} public key(s) to {args.out}", file=_out())
    if dropped:
        print(
            f"signed-bus: note: left out {dropped} HMAC key(s) (symmetric, no public part)",
            file=sys.stderr,
        )
    return EXIT_OK


# -- inspect --------------------------------------------------------------------------------------

# Envelopes are capped by the verifier (1 MiB by default); this only keeps a wrong path such as
# /dev/zero from being read whole.
_MAX_INPUT_BYTES = 64 * 1024 * 1024


def _register_inspect(subparsers: Subparsers) -> None:
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
        help="key file to verify with (default: the SIGNED_BUS_KEYRING environment variable)",
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
        raise _UsageError(f"input is larger than {_MAX_INPUT_BYTES} bytes")
    if not is_hex:
        return data
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _UsageError("--hex input is not hex text") from None


def _record_key(args: argparse.Namespace) -> bytes | None:
    if args.key is not None:
        return str(args.key).encode("utf-8")
    if args.key_hex is not None:
        try:
            return bytes.fromhex(args.key_hex)
        except ValueError:
            raise _UsageError("--key-hex is not hex") from None
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
    from signed_bus._envelope import decode_envelope
    from signed_bus._verifier import Verifier

    keyring = Keyring.from_env() if args.keyring is None else Keyring.from_file(args.keyring)
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
    out = _out()
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


# -- entry point ----------------------------------------------------------------------------------

_BUILTIN_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _register_keygen,
    _register_export_public,
    _register_inspect,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signed-bus",
        description="Keys and envelope tools for signed-bus.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _BUILTIN_COMMANDS:
        register(subparsers)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except _UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ConfigurationError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except SignedBusError as exc:
        _err(str(exc), escaped=isinstance(exc, VerificationError))
        return EXIT_FAILED
    except OSError as exc:
        # Only the strerror and the file name: an OSError's args never hold file contents.
        _err(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
