"""signed-bus: signed, verified, replay-protected inference results over Kafka.

Everything an application needs is re-exported here: the signing core, the Kafka wrappers
(SignedProducer, VerifyingConsumer), the Redis replay guard and the topic helper. Submodules hold
the rest (``signed_bus._deadletter`` for the dead-letter header names, ``signed_bus.bench``...).
:func:`printable` escapes record text for terminals and logs.
"""

from signed_bus._clock import Clock, system_clock
from signed_bus._deadletter import DeadLetter
from signed_bus._envelope import CONTENT_TYPE_MSGPACK, TAG, envelope_digest
from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import (
    Backoff,
    ConsumedBatch,
    ConsumedMessage,
    ConsumerOptions,
    VerifyingConsumer,
)
from signed_bus._kafka.fetch import Fetched, Skipped, fetch_records
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._kafka.relay import (
    Output,
    Relay,
    RelayError,
    RelayFenced,
    RelayMetrics,
    RelayTransformError,
)
from signed_bus._kafka.topics import create_topics
from signed_bus._keys import (
    EDDSA,
    HS256,
    Ed25519Key,
    HmacKey,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus._metrics import ConsumerMetrics, ProducerMetrics
from signed_bus._provenance import (
    Position,
    ProvenanceIndex,
    ProvenanceIndexUnavailable,
    RecordFetcher,
    TraceLink,
    Tracer,
    TraceReport,
)
from signed_bus._replay.guard import Claim, ClaimVerdict, RedisReplayGuard
from signed_bus._signer import Signer
from signed_bus._text import printable
from signed_bus._verifier import VerifiedMessage, Verifier
from signed_bus.errors import (
    AlgorithmMismatch,
    BadSignature,
    ConfigurationError,
    EnvelopeTooLarge,
    Expired,
    MalformedDeadLetter,
    MalformedEnvelope,
    MalformedPayload,
    NotYetValid,
    ReplayDetected,
    ReplayGuardUnavailable,
    SignedBusError,
    Undecodable,
    UnknownKey,
    UnsupportedContentType,
    UnsupportedVersion,
    UntrustedIssuer,
    VerificationError,
    WrongKey,
    WrongTopic,
)

__version__ = "0.1.0"

__all__ = [
    "CONTENT_TYPE_MSGPACK",
    "EDDSA",
    "HS256",
    "TAG",
    "AlgorithmMismatch",
    "Backoff",
    "BadSignature",
    "Claim",
    "ClaimVerdict",
    "Clock",
    "ConfigurationError",
    "ConsumedBatch",
    "ConsumedMessage",
    "ConsumerMetrics",
    "ConsumerOptions",
    "DeadLetter",
    "Ed25519Key",
    "EnvelopeTooLarge",
    "Expired",
    "Fetched",
    "Freshness",
    "HmacKey",
    "Key",
    "Keyring",
    "MalformedDeadLetter",
    "MalformedEnvelope",
    "MalformedPayload",
    "NotYetValid",
    "Outgoing",
    "Output",
    "Position",
    "ProducerMetrics",
    "ProducerOptions",
    "ProvenanceIndex",
    "ProvenanceIndexUnavailable",
    "RecordFetcher",
    "RedisReplayGuard",
    "Relay",
    "RelayError",
    "RelayFenced",
    "RelayMetrics",
    "RelayTransformError",
    "ReplayDetected",
    "ReplayGuardUnavailable",
    "SignedBusError",
    "SignedProducer",
    "Signer",
    "Skipped",
    "TraceLink",
    "TraceReport",
    "Tracer",
    "Undecodable",
    "UnknownKey",
    "UnsupportedContentType",
    "UnsupportedVersion",
    "UntrustedIssuer",
    "VerificationError",
    "VerifiedMessage",
    "Verifier",
    "VerifyingConsumer",
    "WrongKey",
    "WrongTopic",
    "__version__",
    "create_topics",
    "envelope_digest",
    "fetch_records",
    "generate_ed25519_key",
    "generate_hmac_key",
    "printable",
    "system_clock",
]
