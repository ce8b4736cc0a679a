"""The ``signed-bus`` console script (``python -m signed_bus`` runs the same).

One module per subcommand, each with ``register(subparsers)`` that adds its parser and sets
``handler`` (:data:`~signed_bus._cli.options.Handler`): :mod:`.keygen`, :mod:`.export_public`
(with import-jwks), :mod:`.inspect`, :mod:`.trace`, :mod:`.tail`, :mod:`.dlq`, :mod:`.guard`,
:mod:`.bench`; what they share (exit codes, connection, security and freshness options,
keyring loading, progress) is in :mod:`.options`. To add a subcommand,
write such a module and list its ``register`` in :data:`COMMANDS`. Import heavy dependencies
(aiokafka, redis) inside the handler, so that ``signed-bus keygen`` stays fast and works without
them configured. Usage of each command: ``signed-bus COMMAND --help`` and docs/OPERATIONS.md.

Exit codes: 0 success, 1 failed (inspect: the envelope did not verify; trace: a link did not;
dlq redrive: a chosen letter was not sent; a Kafka request failed), 2 usage or configuration
error, 3 Kafka or Redis unreachable (one line names which), 130 interrupted. :func:`_main` maps
every error a command lets through to these codes, one line each, so no command has its own.
Nothing here prints key material, and text from an envelope, a record or a file is escaped
(:func:`signed_bus._text.printable`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from signed_bus import __version__
from signed_bus._cli import bench, dlq, export_public, guard, inspect, keygen, tail, trace
from signed_bus._cli.options import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Handler,
    Subparsers,
    Unreachable,
    UsageError,
    error,
    shown_url,
)
from signed_bus.errors import (
    ConfigurationError,
    ProvenanceIndexUnavailable,
    ReplayGuardUnavailable,
    SignedBusError,
    VerificationError,
)

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order ``signed-bus --help`` lists them.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    keygen.register,
    export_public.register,
    inspect.register,
    trace.register,
    tail.register,
    dlq.register,
    guard.register,
    bench.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signed-bus",
        description="Keys and envelope tools for signed-bus.",
    )
    parser.add_argument("--version", action="version", version=f"signed-bus {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


@contextlib.contextmanager
def _quiet_client_logs() -> Iterator[None]:
    """Warnings of our own loggers on stderr, one line each; the Kafka client's connection
    chatter (a refused connection is logged at ERROR before it is raised) is left out while the
    command runs: the command reports what failed, once."""
    logging.basicConfig(level=logging.WARNING, format="signed-bus: %(name)s: %(message)s")
    client = logging.getLogger("aiokafka")
    level = client.level
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    with _quiet_client_logs():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2), printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except Unreachable as exc:
        error(str(exc))
        return EXIT_UNREACHABLE
    except (ProvenanceIndexUnavailable, ReplayGuardUnavailable, RedisConnectionError):
        error(f"Redis at {shown_url(getattr(args, 'redis_url', ''))} is unreachable")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except ConfigurationError as exc:
        error(str(exc))
        return EXIT_USAGE
    except SignedBusError as exc:
        error(str(exc), escaped=isinstance(exc, VerificationError))
        return EXIT_FAILED
    except OSError as exc:
        # Only the strerror and the file name: an OSError's args never hold file contents.
        error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_USAGE
    except Exception as exc:
        code = _kafka_error(exc, args)
        if code is None:
            raise
        return code


#: aiokafka errors that mean the cluster (or the broker a request went to) could not be reached.
_UNREACHABLE_KAFKA = (
    "KafkaConnectionError",
    "NodeNotReadyError",
    "NoBrokersAvailable",
    "BrokerNotAvailableError",
    "KafkaTimeoutError",
    "RequestTimedOutError",
)


def _kafka_error(exc: Exception, args: argparse.Namespace) -> int | None:
    """Report a Kafka client error from any command, whenever it came (connecting is handled
    where the client starts; a broker can go away or refuse a request later), and return its
    exit code: 3 for the unreachable kinds, 1 for the rest; None if ``exc`` is not one.

    Only the error's type is shown: the client's message may quote the request or the
    server's text. aiokafka is looked up, not imported: a command that never imported it
    cannot have raised its errors (and ``keygen`` stays fast)."""
    errors = sys.modules.get("aiokafka.errors")
    if errors is None or not isinstance(exc, errors.KafkaError):
        return None
    where = f"Kafka at {getattr(args, 'bootstrap_servers', None) or '(no address)'}"
    kind = type(exc).__name__
    unreachable = tuple(getattr(errors, name) for name in _UNREACHABLE_KAFKA)
    if isinstance(exc, unreachable):
        error(f"{where} is unreachable ({kind})")
        return EXIT_UNREACHABLE
    error(f"{where} failed: {kind}")
    return EXIT_FAILED
