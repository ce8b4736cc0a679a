"""signed-bus: signed, verified, replay-protected inference results over Kafka.

Import what you use from here, and the specific error classes from :mod:`signed_bus.errors`;
every other module is private (``_name``) and may change without notice. Map of the package:

- signing core (no I/O): :class:`Signer` seals a result into an envelope, :class:`Verifier`
  checks one and returns a :class:`VerifiedMessage`; :class:`Freshness` is the one time window;
  :class:`Keyring` holds :class:`HmacKey` / :class:`Ed25519Key` keys, :class:`ExternalKey` signs
  through a KMS, :class:`KeySource` keeps a ring in step with a JWK Set, :func:`load_keyring`
  finds key material by the one lookup order. Format: docs/ENVELOPE.md,
  key files: docs/KEYFILE.md.
- Kafka (aiokafka): :class:`SignedProducer`, :class:`VerifyingConsumer` (yields
  :class:`ConsumedMessage` / :class:`ConsumedBatch`), :class:`Relay` for one hop of a pipeline,
  :func:`create_topics`. Operating them: docs/OPERATIONS.md; relays: docs/PIPELINES.md.
- replay guard (Redis): :class:`RedisReplayGuard` claims nonces (:class:`Claim` ->
  :class:`ClaimVerdict`); :func:`estimate_memory_bytes` and :func:`recommended_shards` size it;
  :class:`RebuildSource` lets it rebuild its topics from Kafka after Redis lost state.
- dead letters: :meth:`DeadLetter.from_record` reads a record of a dead-letter topic.
- payloads: :func:`encode_payload` (the Signer's default encoder: numpy, Pydantic, dataclasses,
  datetimes...) and :func:`payload_as` (a verified payload as a model); FastStream apps:
  :mod:`signed_bus.faststream` (docs/FASTSTREAM.md).
- provenance: :class:`ProvenanceIndex` (digest -> :class:`Position`) and :class:`Tracer` walk a
  chain of envelopes back to its origin (docs/PIPELINES.md).
- :func:`printable` escapes record text for terminals and logs.
- observability (optional extras, imported only when used): :mod:`signed_bus.otel` (spans,
  trace context in record headers) and :mod:`signed_bus.prometheus` (metrics);
  docs/OBSERVABILITY.md.
- errors: the roots are here; the whole tree is drawn in :mod:`signed_bus.errors`.

Every long-lived object (producer, consumer, relay, guard, index, fetcher) has ``start()`` /
``stop()`` coroutines and ``async with``; once stopped it raises :class:`Stopped`.
"""

from signed_bus._deadletter import DeadLetter
from signed_bus._envelope import CONTENT_TYPE_MSGPACK, TAG, envelope_digest
from signed_bus._external import ExternalKey
from signed_bus._freshness import Freshness
from signed_bus._kafka.consumer import (
    Backoff,
    ConsumedBatch,
    ConsumedMessage,
    ConsumerOptions,
    VerifyingConsumer,
)
from signed_bus._kafka.producer import Outgoing, ProducerOptions, SignedProducer
from signed_bus._kafka.relay import Output, Relay
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
from signed_bus._keysource import KeySource, load_keyring
from signed_bus._payload import encode_payload, payload_as
from signed_bus._provenance import (
    Position,
    ProvenanceIndex,
    RecordFetcher,
    TraceLink,
    Tracer,
    TraceReport,
)
from signed_bus._replay import (
    Claim,
    ClaimVerdict,
    RebuildSource,
    RedisReplayGuard,
    estimate_memory_bytes,
    recommended_shards,
)
from signed_bus._signer import Signer
from signed_bus._text import printable
from signed_bus._verifier import CONTENT_TYPE_JSON, VerifiedMessage, Verifier
from signed_bus.errors import (
    ConfigurationError,
    ReplayGuardUnavailable,
    SignedBusError,
    Stopped,
    VerificationError,
)

#: The package version, written only here.
__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 (grouped by topic, as in the map above; sorted within a group)
    # signing core
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_MSGPACK",
    "EDDSA",
    "HS256",
    "TAG",
    "Ed25519Key",
    "ExternalKey",
    "Freshness",
    "HmacKey",
    "Key",
    "KeySource",
    "Keyring",
    "Signer",
    "VerifiedMessage",
    "Verifier",
    "envelope_digest",
    "generate_ed25519_key",
    "generate_hmac_key",
    "load_keyring",
    # Kafka
    "Backoff",
    "ConsumedBatch",
    "ConsumedMessage",
    "ConsumerOptions",
    "Outgoing",
    "Output",
    "ProducerOptions",
    "Relay",
    "SignedProducer",
    "VerifyingConsumer",
    "create_topics",
    # replay guard
    "Claim",
    "ClaimVerdict",
    "RebuildSource",
    "RedisReplayGuard",
    "estimate_memory_bytes",
    "recommended_shards",
    # dead letters
    "DeadLetter",
    # payloads
    "encode_payload",
    "payload_as",
    # provenance
    "Position",
    "ProvenanceIndex",
    "RecordFetcher",
    "TraceLink",
    "TraceReport",
    "Tracer",
    # text
    "printable",
    # errors (the roots; every class: signed_bus.errors)
    "ConfigurationError",
    "ReplayGuardUnavailable",
    "SignedBusError",
    "Stopped",
    "VerificationError",
    # version
    "__version__",
]
