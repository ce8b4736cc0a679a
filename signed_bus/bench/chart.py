"""PNG chart of a report: one panel per part and unit, baseline and signed bars side by side.

matplotlib is a dev-extra dependency, so it is imported here, lazily, with the Agg backend
(no display needed); the library itself never imports this module.
"""

from __future__ import annotations

import math
from pathlib import Path

from signed_bus.bench.results import BenchReport, Row
from signed_bus.bench.table import format_number

__all__ = ["write_chart"]


def _panels(report: BenchReport) -> list[tuple[str, str, list[Row]]]:
    panels: dict[tuple[str, str], list[Row]] = {}
    for part in report.parts:
        for row in part.rows:
            if row.baseline is None and row.signed is None:
                continue
            panels.setdefault((part.title, row.unit), []).append(row)
    # Titles start with the part's number: show the parts in the order.
    return sorted(
        ((title, unit, rows) for (title, unit), rows in panels.items()), key=lambda p: p[0]
    )


def _finite(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else value


def write_chart(report: BenchReport, path: Path) -> None:
    """Render ``report`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(report)
    columns = 2
    rows_count = max(1, math.ceil(len(panels) / columns))
    figure, axes_grid = plt.subplots(
        rows_count, columns, figsize=(7 * columns, 3.6 * rows_count), squeeze=False
    )
    axes_list = [axes for axes_row in axes_grid for axes in axes_row]
    for axes, (title, unit, rows) in zip(axes_list, panels, strict=False):
        positions = list(range(len(rows)))
        width = 0.38
        baseline = [_finite(row.baseline) for row in rows]
        signed = [_finite(row.signed) for row in rows]
        left = axes.bar([p - width / 2 for p in positions], baseline, width, label="baseline")
        right = axes.bar([p + width / 2 for p in positions], signed, width, label="signed-bus")
        for bars, values in ((left, [r.baseline for r in rows]), (right, [r.signed for r in rows])):
            axes.bar_label(bars, labels=[format_number(v) for v in values], fontsize=7)
        axes.set_xticks(positions)
        crowded = len(rows) > 3
        axes.set_xticklabels(
            [f"{row.measurement}\n(vs {row.baseline_label})" for row in rows],
            fontsize=6 if crowded else 7,
            rotation=20 if crowded else 0,
            ha="right" if crowded else "center",
        )
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(unit, fontsize=8)
        axes.tick_params(axis="y", labelsize=7)
        axes.legend(fontsize=7)
    for axes in axes_list[len(panels) :]:
        axes.set_visible(False)
    machine = report.machine
    figure.suptitle(
        f"signed-bus bench {report.started_at} - {machine.get('cpu')}, "
        f"{machine.get('cores')} cores, {machine.get('python')}, Kafka {machine.get('kafka')}, "
        f"Redis {machine.get('redis')}",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)
