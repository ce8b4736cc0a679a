"""``signed-bus bench``: the command is defined with the benchmark it runs
(:mod:`signed_bus.bench.command`, docs/PERFORMANCE.md); its dependencies are the ``bench`` extra,
imported only when a part that needs them runs."""

from signed_bus.bench.command import register

__all__ = ["register"]
