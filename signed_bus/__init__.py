"""signed-bus: signed, verified, replay-protected inference results over Kafka.

The signing core is re-exported here; the Kafka and Redis pieces live in their own modules
(``signed_bus.producer``, ``signed_bus.consumer``, ``signed_bus.replay``, ...).
"""

from signed_bus.clock import Clock, system_clock
from signed_bus.envelope import CONTENT_TYPE_MSGPACK, TAG, envelope_digest
from signed_bus.errors import (
    AlgorithmMismatch,
    BadSignature,
    ConfigurationError,
    EnvelopeTooLarge,
    Expired,
    MalformedEnvelope,
    MalformedPayload,
    NotYetValid,
    ReplayDetected,
    ReplayGuardUnavailable,
    SignedBusError,
    UnknownKey,
    UnsupportedContentType,
    UnsupportedVersion,
    UntrustedIssuer,
    VerificationError,
    WrongKey,
    WrongTopic,
)
from signed_bus.keys import (
    EDDSA,
    HS256,
    Ed25519Key,
    HmacKey,
    Key,
    Keyring,
    generate_ed25519_key,
    generate_hmac_key,
)
from signed_bus.signer import Signer
from signed_bus.verifier import VerifiedMessage, Verifier

__version__ = "0.1.0"

__all__ = [
    "CONTENT_TYPE_MSGPACK",
    "EDDSA",
    "HS256",
    "TAG",
    "AlgorithmMismatch",
    "BadSignature",
    "Clock",
    "ConfigurationError",
    "Ed25519Key",
    "EnvelopeTooLarge",
    "Expired",
    "HmacKey",
    "Key",
    "Keyring",
    "MalformedEnvelope",
    "MalformedPayload",
    "NotYetValid",
    "ReplayDetected",
    "ReplayGuardUnavailable",
    "SignedBusError",
    "Signer",
    "UnknownKey",
    "UnsupportedContentType",
    "UnsupportedVersion",
    "UntrustedIssuer",
    "VerificationError",
    "VerifiedMessage",
    "Verifier",
    "WrongKey",
    "WrongTopic",
    "__version__",
    "envelope_digest",
    "generate_ed25519_key",
    "generate_hmac_key",
    "system_clock",
]
