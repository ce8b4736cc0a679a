"""What the ``signed-bus`` subcommands share: exit codes, the usage error, the connection and
freshness options, keyring loading. Every command module imports from here (never from another
command module)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias

from signed_bus._freshness import Freshness
from signed_bus._text import printable
from signed_bus.errors import ConfigurationError

if TYPE_CHECKING:
    from signed_bus._keys import Keyring

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Handler",
    "Progress",
    "Subparsers",
    "Unreachable",
    "UsageError",
    "add_connection_options",
    "add_freshness_options",
    "add_keyring_option",
    "add_progress_option",
    "add_security_options",
    "error",
    "freshness_from_args",
    "kafka_security",
    "keyring_from_args",
    "redis_options",
    "shown_url",
    "start_client",
    "stdout",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Kafka or Redis could not be reached (one line names which; docs/OPERATIONS.md).
EXIT_UNREACHABLE = 3

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: What a command module's ``register`` sets as ``handler``: the parsed options -> exit code.
Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake the parser could not catch (exit 2)."""


class Unreachable(Exception):
    """Kafka or Redis could not be reached (exit 3); the message names which, and where."""


def stdout() -> TextIO:
    """Standard output as it is now (tests replace it)."""
    return sys.stdout


def error(message: str, *, escaped: bool = False) -> None:
    """Print an error; ``message`` may quote file names, topics or record text, so it is escaped
    unless it already is (``str()`` of a VerificationError)."""
    print(f"signed-bus: error: {message if escaped else printable(message)}", file=sys.stderr)


def add_keyring_option(parser: argparse.ArgumentParser) -> None:
    """``--keyring``: the first place of the one lookup order (:func:`keyring_from_args`)."""
    parser.add_argument(
        "--keyring",
        metavar="FILE",
        help="key file of the verifying keys (default: $SIGNED_BUS_KEYRING_FILE, "
        "else the contents of $SIGNED_BUS_KEYRING)",
    )


def add_connection_options(
    parser: argparse.ArgumentParser, *, redis: bool, keyring: bool = True
) -> None:
    """Options shared by the commands that talk to Kafka (and Redis): the servers and the
    connection security, named as the library's ``security`` options (docs/OPERATIONS.md,
    "The command line")."""
    if keyring:
        add_keyring_option(parser)
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    add_security_options(parser)
    if redis:
        group = parser.add_argument_group("Redis connection")
        group.add_argument(
            "--redis-url",
            default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            help="Redis URL; rediss:// for TLS, a password in the URL (default: $REDIS_URL or "
            "redis://127.0.0.1:6379/0; prefer the variable for a URL holding a password)",
        )
        for option, variable, text in (
            ("ssl-ca-certs", "REDIS_SSL_CA_CERTS", "CA bundle"),
            ("ssl-certfile", "REDIS_SSL_CERTFILE", "client certificate"),
            ("ssl-keyfile", "REDIS_SSL_KEYFILE", "client certificate's key"),
        ):
            group.add_argument(
                f"--redis-{option}",
                default=os.environ.get(variable),
                metavar="FILE",
                help=f"with rediss://: the {text} (redis-py's {option.replace('-', '_')}; "
                f"default: ${variable})",
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
    """The ring of the one lookup order (:func:`signed_bus.load_keyring`): --keyring, else
    $SIGNED_BUS_KEYRING_FILE, else $SIGNED_BUS_KEYRING."""
    from signed_bus._keysource import load_keyring

    try:
        return load_keyring(args.keyring or None)
    except ConfigurationError as exc:
        if str(exc).startswith("no key ring"):
            raise ConfigurationError(
                "no key ring: pass --keyring FILE or set SIGNED_BUS_KEYRING_FILE / "
                "SIGNED_BUS_KEYRING"
            ) from None
        raise


#: The environment variable holding the SASL password: never a command-line argument, which
#: every user of the machine can read in the process list.
SASL_PASSWORD_VAR = "KAFKA_SASL_PLAIN_PASSWORD"  # noqa: S105 (a variable name)


def add_security_options(parser: argparse.ArgumentParser) -> None:
    """Kafka TLS/SASL, named after aiokafka's (and ``ProducerOptions.security``'s) options."""
    env = os.environ.get
    group = parser.add_argument_group("Kafka connection security")
    group.add_argument(
        "--security-protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        default=env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        help="security_protocol (default: $KAFKA_SECURITY_PROTOCOL or PLAINTEXT)",
    )
    group.add_argument(
        "--ssl-cafile",
        default=env("KAFKA_SSL_CAFILE"),
        metavar="FILE",
        help="CA bundle for the ssl_context (default: $KAFKA_SSL_CAFILE; else the system's)",
    )
    group.add_argument(
        "--ssl-certfile",
        default=env("KAFKA_SSL_CERTFILE"),
        metavar="FILE",
        help="client certificate for the ssl_context (default: $KAFKA_SSL_CERTFILE)",
    )
    group.add_argument(
        "--ssl-keyfile",
        default=env("KAFKA_SSL_KEYFILE"),
        metavar="FILE",
        help="client certificate's key (default: $KAFKA_SSL_KEYFILE)",
    )
    group.add_argument(
        "--sasl-mechanism",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        default=env("KAFKA_SASL_MECHANISM"),
        help="sasl_mechanism (default: $KAFKA_SASL_MECHANISM)",
    )
    group.add_argument(
        "--sasl-plain-username",
        default=env("KAFKA_SASL_PLAIN_USERNAME"),
        metavar="USER",
        help=f"sasl_plain_username (default: $KAFKA_SASL_PLAIN_USERNAME); the password is read "
        f"from ${SASL_PASSWORD_VAR} only",
    )


def kafka_security(args: argparse.Namespace) -> dict[str, Any]:
    """The aiokafka ``security`` keyword arguments the options name (UsageError if they do not
    fit together)."""
    protocol = args.security_protocol
    security: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            security["ssl_context"] = create_ssl_context(
                cafile=args.ssl_cafile, certfile=args.ssl_certfile, keyfile=args.ssl_keyfile
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UsageError(f"cannot build the TLS context: {exc}") from None
    elif args.ssl_cafile or args.ssl_certfile or args.ssl_keyfile:
        raise UsageError("--ssl-* options need --security-protocol SSL or SASL_SSL")
    if protocol.startswith("SASL_"):
        if not args.sasl_mechanism:
            raise UsageError(f"--security-protocol {protocol} needs --sasl-mechanism")
        security["sasl_mechanism"] = args.sasl_mechanism
        security["sasl_plain_username"] = args.sasl_plain_username
        password = os.environ.get(SASL_PASSWORD_VAR)
        if not args.sasl_plain_username or not password:
            raise UsageError(
                f"SASL needs --sasl-plain-username and the password in ${SASL_PASSWORD_VAR}"
            )
        security["sasl_plain_password"] = password
    elif args.sasl_mechanism:
        raise UsageError("--sasl-mechanism needs --security-protocol SASL_PLAINTEXT or SASL_SSL")
    return security


def redis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The redis-py keyword options the Redis options name (the library's ``from_url`` takes
    them as they are)."""
    options = {
        name: value
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        if (value := getattr(args, f"redis_{name}", None))
    }
    if options and not str(args.redis_url).startswith("rediss://"):
        raise UsageError("--redis-ssl-* options need a rediss:// URL")
    return options


def shown_url(url: str) -> str:
    """A URL as errors may show it: without its credentials, query or fragment
    (:func:`signed_bus._url.without_credentials`); not escaped yet (:func:`error` does)."""
    from signed_bus._url import without_credentials

    return without_credentials(url)


async def start_client(client: Any, what: str) -> None:
    """``await client.start()`` for an aiokafka client; if that fails, close the client (an
    unclosed one warns when collected) and raise :class:`Unreachable` naming ``what``."""
    from aiokafka.errors import KafkaError

    from signed_bus._lifecycle import start_kafka_client

    try:
        await start_kafka_client(client)  # closes the client again if it fails
    except (KafkaError, OSError) as exc:
        detail = type(exc).__name__
        raise Unreachable(f"{what} is unreachable ({detail})") from None


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="on standard error, report progress this often during long reads (0: never; "
        "default 2)",
    )


class Progress:
    """Progress of a long operation on standard error: ``label: done/total (n%)``, at most once
    per ``--progress-interval`` seconds, so a short run prints nothing and a long one shows it
    is moving."""

    def __init__(self, label: str, total: int | None, args: argparse.Namespace) -> None:
        import time

        self._clock = time.monotonic
        self._label = printable(label)
        self._total = total
        self._interval = float(getattr(args, "progress_interval", 0) or 0)
        self._done = 0
        self._last = self._clock()
        self._printed = False

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self._interval <= 0:
            return
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._print()

    def _print(self) -> None:
        if self._total is None:  # open-ended (a trace): the count so far
            text = str(self._done)
        else:
            share = f" ({100 * self._done // self._total}%)" if self._total else ""
            text = f"{self._done}/{self._total}{share}"
        print(f"signed-bus: {self._label}: {text}", file=sys.stderr)
        self._printed = True

    def done(self) -> None:
        """A last line, if any was printed (so the count that ends the run is shown)."""
        if self._printed:
            self._print()
