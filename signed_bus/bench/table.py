"""Plain-text rendering of a report: machine line, one table of every row, then the targets."""

from __future__ import annotations

import math

from signed_bus.bench.results import BenchReport, Row

__all__ = ["format_number", "format_report"]

_HEADERS = ("part", "measurement", "baseline", "raw", "signed", "ratio", "unit")


def format_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    magnitude = abs(value)
    if magnitude >= 1_000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _machine_line(report: BenchReport) -> str:
    machine = report.machine
    load = machine.get("load_average")
    load_text = " ".join(f"{value:.2f}" for value in load) if load else "?"
    return (
        f"machine: {machine.get('cpu')}, {machine.get('cores')} cores (load {load_text}), "
        f"{machine.get('python')}, Kafka {machine.get('kafka')}, Redis {machine.get('redis')}"
        f" ({machine.get('redis_allocator')}), {machine.get('os')}"
    )


def format_report(report: BenchReport) -> str:
    """The whole report as the CLI prints it."""
    lines = [
        f"signed-bus bench, {report.started_at}: {report.command}",
        _machine_line(report),
        "",
    ]
    table: list[tuple[str, ...]] = [_HEADERS]
    for part in report.parts:
        for row in part.rows:
            table.append(
                (
                    row.part,
                    row.measurement,
                    row.baseline_label,
                    format_number(row.baseline),
                    format_number(row.signed),
                    _ratio(row),
                    row.unit + (" (lower is better)" if row.better == "lower" else ""),
                )
            )
    widths = [max(len(cells[i]) for cells in table) for i in range(len(_HEADERS))]
    numeric = {3, 4, 5}
    for index, cells in enumerate(table):
        lines.append(
            "  ".join(
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(cells)
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    errors = [part for part in report.parts if part.error]
    if errors:
        lines.append("")
        lines.extend(f"ERROR in {part.name}: {part.error}" for part in errors)
    notes = [f"{row.part}: {row.note}" for part in report.parts for row in part.rows if row.note]
    if notes:
        lines.append("")
        lines.extend(f"note  {note}" for note in notes)
    lines.append("")
    lines.append("targets (from this run's figures)")
    for target in report.targets:
        lines.append(
            f"  {target.status:<4}  {target.name}: measured {format_number(target.measured)}"
            f"{target.unit} (target {target.op} {format_number(target.threshold)}{target.unit})"
        )
    lines.append("")
    lines.append(f"total {report.seconds:.1f} s")
    return "\n".join(lines)
