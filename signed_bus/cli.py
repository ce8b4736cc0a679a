"""The ``signed-bus`` console script.

Subcommands (``signed-bus COMMAND --help`` for each):

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
EdDSA public keys, which are not secret, in base64url.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO, TypeAlias

from signed_bus.errors import ConfigurationError, SignedBusError
from signed_bus.keys import (
    Ed25519Key,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)

__all__ = ["COMMAND_MODULES", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler = Callable[[argparse.Namespace], int]

# Modules contributing subcommands besides the ones defined here, each with register(subparsers).
COMMAND_MODULES: tuple[str, ...] = ()


class _UsageError(Exception):
    """A command-line mistake the parser could not catch (exit 2)."""


def _out() -> TextIO:
    return sys.stdout


def _err(message: str) -> None:
    print(f"signed-bus: error: {message}", file=sys.stderr)


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


# -- entry point ----------------------------------------------------------------------------------

_BUILTIN_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _register_keygen,
    _register_export_public,
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
        _err(str(exc))
        return EXIT_FAILED
    except OSError as exc:
        # Only the strerror and the file name: an OSError's args never hold file contents.
        _err(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
