"""What the ``signed-bus`` subcommands share: exit codes, the usage error, the connection and
freshness options, keyring loading. Every command module imports from here (never from another
command module)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO, TypeAlias

from signed_bus._freshness import Freshness
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError

if TYPE_CHECKING:
    from signed_bus._keys import Keyring

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "Subparsers",
    "UsageError",
    "add_connection_options",
    "add_freshness_options",
    "error",
    "freshness_from_args",
    "keyring_from_args",
    "stdout",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: What a command module's ``register`` sets as ``handler``: the parsed options -> exit code.
Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake the parser could not catch (exit 2)."""


def stdout() -> TextIO:
    """Standard output as it is now (tests replace it)."""
    return sys.stdout


def error(message: str, *, escaped: bool = False) -> None:
    """Print an error; ``message`` may quote file names, topics or record text, so it is escaped
    unless it already is (``str()`` of a VerificationError)."""
    print(f"signed-bus: error: {message if escaped else printable(message)}", file=sys.stderr)


def add_connection_options(parser: argparse.ArgumentParser, *, redis: bool) -> None:
    """Options shared by the pipeline subcommands (trace, tail)."""
    parser.add_argument(
        "--keyring",
        metavar="FILE",
        help="key file of the verifying keys (default: $SIGNED_BUS_KEYRING_FILE, "
        "else the contents of $SIGNED_BUS_KEYRING)",
    )
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    if redis:
        parser.add_argument(
            "--redis-url",
            default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            help="Redis holding the provenance index (default: $REDIS_URL or "
            "redis://127.0.0.1:6379/0)",
        )


def add_freshness_options(parser: argparse.ArgumentParser) -> None:
    """--max-age-ms, --future-skew-ms, --max-lag-ms: the whole window, defaults from
    :class:`~signed_bus._freshness.Freshness` (written there only)."""
    default = Freshness()
    for name, value, text in (
        ("max-age-ms", default.max_age_ms, "records older than this by the reference time expire"),
        ("future-skew-ms", default.future_skew_ms, "how far ahead of either clock a record may be"),
        ("max-lag-ms", default.max_lag_ms, "how far past max age this reader may lag"),
    ):
        parser.add_argument(
            f"--{name}", type=int, default=value, metavar="MS", help=f"{text} (default {value})"
        )


def freshness_from_args(args: argparse.Namespace) -> Freshness:
    """The window the freshness options name (ConfigurationError for a bad number)."""
    return Freshness(
        max_age_ms=args.max_age_ms, future_skew_ms=args.future_skew_ms, max_lag_ms=args.max_lag_ms
    )


def keyring_from_args(args: argparse.Namespace) -> Keyring:
    """The ring --keyring names, else $SIGNED_BUS_KEYRING_FILE, else $SIGNED_BUS_KEYRING."""
    from signed_bus._keys import Keyring

    path = args.keyring or os.environ.get("SIGNED_BUS_KEYRING_FILE")
    if path:
        return Keyring.from_file(path)
    if os.environ.get("SIGNED_BUS_KEYRING"):
        return Keyring.from_env("SIGNED_BUS_KEYRING")
    raise ConfigurationError(
        "no key ring: pass --keyring FILE or set SIGNED_BUS_KEYRING_FILE / SIGNED_BUS_KEYRING"
    )
