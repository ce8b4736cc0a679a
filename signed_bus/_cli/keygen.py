"""``signed-bus keygen``: generate an HS256 or EdDSA key into a key file (mode 0600).

Secrets are never printed: a key is shown through its repr (kid, alg, issuers), an EdDSA public
key, which is not secret, in base64url. The key file format: docs/KEYFILE.md.
"""

from __future__ import annotations

import argparse
import base64
import os

from signed_bus._cli.options import EXIT_OK, Subparsers, UsageError, stdout
from signed_bus._keys import (
    Ed25519Key,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
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
        raise UsageError(f"{path} already exists; pass --append to add the key to it")
    return Keyring.from_file(path)


def _same_file(first: str, second: str) -> bool:
    """Whether two paths name one file: the same path spelt otherwise, a symbolic link to it,
    or (both existing) a hard link."""
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def _keygen(args: argparse.Namespace) -> int:
    if args.public_out is not None and args.alg != "ed25519":
        raise UsageError(
            "--public-out needs --alg ed25519: an HMAC key is symmetric and has no public part"
        )
    if args.public_out is not None and _same_file(args.out, args.public_out):
        # The public ring, written second, would replace the private key just generated.
        raise UsageError("--out and --public-out name the same file; give the public key its own")
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
    out = stdout()
    print(f"wrote {key!r} to {args.out} (mode 0600)", file=out)
    if isinstance(key, Ed25519Key):
        public = base64.urlsafe_b64encode(key.public_bytes).rstrip(b"=").decode("ascii")
        print(f"public key (base64url): {public}", file=out)
    if public_ring is not None:
        public_ring.dump(args.public_out, overwrite=args.append, mode=0o644)
        print(f"wrote the public key to {args.public_out}", file=out)
    return EXIT_OK
