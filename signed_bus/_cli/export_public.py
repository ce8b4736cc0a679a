"""``signed-bus export-public``: write the public part of a key file (EdDSA public keys only;
HMAC keys are symmetric and have none)."""

from __future__ import annotations

import argparse
import sys

from signed_bus._cli.options import EXIT_OK, Subparsers, stdout
from signed_bus._keys import Keyring

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
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
        stdout().write(public.to_json())
    else:
        public.dump(args.out, overwrite=args.overwrite, mode=0o644)
        print(f"wrote {len(public)} public key(s) to {args.out}", file=stdout())
    if dropped:
        print(
            f"signed-bus: note: left out {dropped} HMAC key(s) (symmetric, no public part)",
            file=sys.stderr,
        )
    return EXIT_OK
