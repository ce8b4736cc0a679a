"""signed-bus on confluent-kafka (librdkafka) and plain threads: no asyncio anywhere.

Install the ``confluent`` extra (``pip install signed-bus[confluent]``). The pieces mirror the
aiokafka ones and drive the same sans-I/O gate, planner and Lua script:

- :class:`SignedProducer` signs for the topic and key, then ``produce``; delivery reports
  through ``poll``/``flush`` or :meth:`SignedProducer.produce_batch`;
- :class:`VerifyingConsumer` verifies, claims one batch at a time, dead-letters, commits only
  what the handler finished (``for message in consumer`` or ``run(handler)``);
- :class:`SyncRedisReplayGuard` claims in the nonce set the async guard uses (one prefix: one
  set for sync and async consumers);
- :class:`Relay` an exactly-once hop whose offsets carry the consumer's group metadata, so the
  broker fences a zombie relay.

docs/CLIENTS.md says which client to choose and how to run workers in threads and processes.
"""

from signed_bus._kafka.options import Backoff
from signed_bus._kafka.producer import Outgoing
from signed_bus._kafka.relay import Output
from signed_bus._replay.sync_guard import SyncRedisReplayGuard
from signed_bus.confluent._consumer import Handler, VerifyingConsumer
from signed_bus.confluent._producer import SignedProducer
from signed_bus.confluent._relay import Relay, SyncRelayMetrics, Transform
from signed_bus.errors import DeliveryFailed

__all__ = [
    "Backoff",
    "DeliveryFailed",
    "Handler",
    "Outgoing",
    "Output",
    "Relay",
    "SignedProducer",
    "SyncRedisReplayGuard",
    "SyncRelayMetrics",
    "Transform",
    "VerifyingConsumer",
]
