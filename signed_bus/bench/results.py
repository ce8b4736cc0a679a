"""The result model every part fills in, and its JSON form.

A part yields rows (one measurement each: a baseline figure, the signed-bus figure and their
ratio) and targets (a measured value checked against a threshold). Targets are evaluated from
the figures of the same run; nothing here is hard-coded to pass.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["BenchReport", "PartResult", "Row", "Target"]

Op = Literal[">=", "<=", "=="]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
}


@dataclass(slots=True)
class Row:
    """One line of the table: ``baseline`` (raw aiokafka or the naive design) vs ``signed``.

    ``ratio`` is signed / baseline, so for throughput higher is better and for a time per
    message or a latency lower is better; ``better`` says which.
    """

    part: str
    measurement: str
    unit: str
    baseline: float | None
    signed: float | None
    baseline_label: str = "raw"
    better: Literal["higher", "lower"] = "higher"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.signed is None or self.baseline == 0:
            return None
        return self.signed / self.baseline

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


@dataclass(slots=True)
class Target:
    """A goal from the issue, checked against a figure measured in this run."""

    name: str
    measured: float | None
    op: Op
    threshold: float
    unit: str = ""

    @property
    def passed(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return _OPS[self.op](self.measured, self.threshold)

    @property
    def status(self) -> str:
        passed = self.passed
        return "n/a" if passed is None else ("PASS" if passed else "MISS")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["status"] = self.status
        return data


@dataclass(slots=True)
class PartResult:
    """What one part measured; ``error`` is set (and rows may be missing) when it failed."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "rows": [row.to_dict() for row in self.rows],
            "targets": [target.to_dict() for target in self.targets],
            "details": self.details,
            "seconds": self.seconds,
            "error": self.error,
        }


@dataclass(slots=True)
class BenchReport:
    """A whole run: where it ran, with which settings, and every part's results."""

    started_at: str
    command: str
    machine: dict[str, Any]
    config: dict[str, Any]
    parts: list[PartResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def targets(self) -> list[Target]:
        return [target for part in self.parts for target in part.targets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "command": self.command,
            "seconds": self.seconds,
            "machine": self.machine,
            "config": self.config,
            "parts": {part.name: part.to_dict() for part in self.parts},
            "targets": [target.to_dict() for target in self.targets],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
