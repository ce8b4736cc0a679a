"""The aiokafka adapter: producer, consumer, relay, topics and the isolating fetch.

Importing it bounds every decompression aiokafka does for a reader (see :mod:`.codecs`).
"""

from signed_bus._kafka import codecs as _codecs

_codecs.install()
