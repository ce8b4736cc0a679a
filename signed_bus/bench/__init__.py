"""``signed-bus bench``: what signing costs, measured against the baseline in the same run.

Five parts, one module each: :mod:`~signed_bus.bench.produce` (1, produce throughput),
:mod:`~signed_bus.bench.consume` (2, consume throughput), :mod:`~signed_bus.bench.latency`
(3, end-to-end latency per hop), :mod:`~signed_bus.bench.redis_cost` (4, Redis round trips and
bytes per nonce) and :mod:`~signed_bus.bench.codec` (5, sign/verify per message against the naive
JSON+HMAC design and Standard Webhooks). :mod:`~signed_bus.bench.runner` runs them and writes
JSON and a PNG chart; :mod:`~signed_bus.bench.table` prints the table with PASS/MISS targets.

Nothing here is imported by the library itself; matplotlib and standardwebhooks (the bench
extra) are imported only by the parts that need them, when they run.
"""

from signed_bus.bench.config import PARTS, BenchConfig

__all__ = ["PARTS", "BenchConfig"]
