"""Provenance: where each envelope lives, and walking a chain of envelopes back to its origin.

:mod:`.index` is the Redis :class:`ProvenanceIndex`, :mod:`.fetcher` the Kafka
:class:`RecordFetcher`, :mod:`.trace` the :class:`Tracer` and its report. docs/OPERATIONS.md,
"Provenance", says how to run them.
"""

from signed_bus._provenance.fetcher import RecordFetcher, partitions_of
from signed_bus._provenance.index import ProvenanceIndex
from signed_bus._provenance.trace import (
    FetchedRecord,
    LinkStatus,
    Position,
    PositionLookup,
    RecordSource,
    TraceLink,
    Tracer,
    TraceReport,
    iso_ms,
)
from signed_bus.errors import ProvenanceIndexUnavailable

__all__ = [
    "FetchedRecord",
    "LinkStatus",
    "Position",
    "PositionLookup",
    "ProvenanceIndex",
    "ProvenanceIndexUnavailable",
    "RecordFetcher",
    "RecordSource",
    "TraceLink",
    "TraceReport",
    "Tracer",
    "iso_ms",
    "partitions_of",
]
