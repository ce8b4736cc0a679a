"""signed-bus in a FastStream app (extra ``signed-bus[faststream]``; docs/FASTSTREAM.md).

Importing this module imports FastStream; importing ``signed_bus`` does not.
"""

from signed_bus._gate import ConsumedMessage
from signed_bus.faststream._bus import CONTEXT_KEY, SignedBus, verified_batch, verified_message

__all__ = ["CONTEXT_KEY", "ConsumedMessage", "SignedBus", "verified_batch", "verified_message"]
