"""``signed-bus export-public`` and ``signed-bus import-jwks``: hand out verifying keys.

``export-public`` writes the public part of key files, as a key file or as a JWK Set (EdDSA public
keys only: HMAC keys are symmetric and have none). A ring with no public key at all is an error,
never an empty file. ``import-jwks`` turns a JWK Set into a key file of public keys
(docs/KEYFILE.md, "JWK Sets")."""

from __future__ import annotations

import argparse
import sys

from signed_bus._cli.options import EXIT_FAILED, EXIT_OK, Subparsers, error, stdout
from signed_bus._keyfile import read_file
from signed_bus._keys import Keyring

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "export-public",
        help="write the public part of key files (key file or JWK Set)",
        description=(
            "Read key files and write their EdDSA public keys, as a key file or as a JWK Set "
            "(RFC 7517, with the issuers each key may sign for). HMAC keys are symmetric and "
            "are left out: they cannot be shared without sharing the power to sign. Exit 1 if "
            "there is no public key to write."
        ),
    )
    parser.add_argument("keyrings", nargs="+", metavar="KEYFILE", help="key file(s) to read")
    parser.add_argument(
        "--format",
        choices=("keyfile", "jwks"),
        default="keyfile",
        help="keyfile (docs/KEYFILE.md, default) or jwks (a JWK Set)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="write here (mode 0644) instead of standard output"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it already exists"
    )
    parser.set_defaults(handler=_export_public)

    parser = subparsers.add_parser(
        "import-jwks",
        help="write a JWK Set's keys as a key file of public keys",
        description=(
            "Read a JWK Set (a file, or '-' for standard input), check it as a KeySource does "
            "(Ed25519 keys must name their issuers in signed_bus_issuers) and write its keys as "
            "a key file of public keys."
        ),
    )
    parser.add_argument("jwks", metavar="JWKS", help="JWK Set file, '-' for standard input")
    parser.add_argument(
        "--out", metavar="FILE", help="write here (mode 0644) instead of standard output"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it already exists"
    )
    parser.set_defaults(handler=_import_jwks)


def _export_public(args: argparse.Namespace) -> int:
    ring = Keyring()
    total = 0
    for path in args.keyrings:
        loaded = Keyring.from_file(path)
        total += len(loaded)
        for key in loaded.public():
            ring.add(key)  # a kid in two files is a ConfigurationError (exit 2)
    dropped = total - len(ring)
    if not len(ring):
        error(
            f"no public key to export: the {total} key(s) read are HMAC keys (symmetric, "
            "no public part); give EdDSA keys"
            if total
            else "no public key to export: the key file holds no keys"
        )
        return EXIT_FAILED
    text = ring.to_jwks() if args.format == "jwks" else ring.to_json()
    _write(text, ring, args)
    if dropped:
        print(
            f"signed-bus: note: left out {dropped} HMAC key(s) (symmetric, no public part)",
            file=sys.stderr,
        )
    return EXIT_OK


def _import_jwks(args: argparse.Namespace) -> int:
    if args.jwks == "-":
        ring = Keyring.from_jwks(sys.stdin.buffer.read(1024 * 1024 + 1), source="standard input")
    else:
        ring = Keyring.from_jwks(read_file(args.jwks).data, source=f"JWK Set file {args.jwks}")
    _write(ring.to_json(), ring, args)
    return EXIT_OK


def _write(text: str, ring: Keyring, args: argparse.Namespace) -> None:
    if args.out is None:
        stdout().write(text)
        return
    from signed_bus._keyfile import write_file

    write_file(args.out, text, secret=False, overwrite=args.overwrite, mode=0o644)
    print(f"wrote {len(ring)} public key(s) to {args.out}", file=stdout())
