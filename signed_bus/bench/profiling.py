"""Optional profiles of the hot paths (``signed-bus bench --profile``), for a target missed.

pyinstrument (bench extra) samples an extra, untimed round of the HS256 produce and verified
consume paths and writes ``profile-<name>.txt`` and ``.html`` next to the results; the timed
rounds are never profiled, so the figures do not carry the profiler's overhead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from signed_bus.bench.config import BenchConfig

__all__ = ["profiled"]


@contextlib.asynccontextmanager
async def profiled(config: BenchConfig, name: str) -> AsyncIterator[list[Path]]:
    """Profile the block when ``config.profile``; yields the list the report paths go into."""
    written: list[Path] = []
    if not config.profile:
        yield written
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    try:
        yield written
    finally:
        profiler.stop()
        config.out_dir.mkdir(parents=True, exist_ok=True)
        text = config.out_dir / f"profile-{name}.txt"
        text.write_text(profiler.output_text(unicode=False, color=False))
        html = config.out_dir / f"profile-{name}.html"
        html.write_text(profiler.output_html())
        written += [text, html]
