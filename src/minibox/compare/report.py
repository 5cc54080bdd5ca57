"""The comparison's data: every value a :class:`Cell`, measured or not, and why.

The rule of ``minibox compare`` is **no number that was not measured**.  A
:class:`Cell` is either measured (a value, its unit, how it was taken and,
for timings and memory, the samples), *described* (text that follows from
the configuration, such as the isolation boundary) or *not measured*, with
the reason.  A :class:`Column` is one sandbox kind, a :class:`Report` the
whole run; ``Report.to_json()`` is the ``--json`` output.  This module only
holds and formats values: measure.py fills them, render.py and plot.py show
them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20

#: (key, label) of the table's rows, in order.
METRICS: tuple[tuple[str, str], ...] = (
    ("boundary", "isolation boundary"),
    ("kernel_release", "kernel inside (uname -r)"),
    ("accelerator", "accelerator"),
    ("start_to_exit", "start-to-exit, /bin/true (median; a VM from its template)"),
    ("start_cold", "start-to-exit, VM cold boot (median)"),
    ("memory_idle", "host memory per idle sandbox"),
    ("disk", "on-disk size needed"),
    ("density", "density: idle sandboxes started"),
)
#: Metrics with a "VM ÷ container" ratio (density: of the time to start one; the
#: cold boot: of the container's start-to-exit, a container having no boot).
RATIO_METRICS = ("start_to_exit", "start_cold", "memory_idle", "disk", "density")
#: The multiplication sign of the ratio columns.
TIMES = "\u00d7"
#: Idle before each container/peer sample, so that cgroup v1's RCU state is
#: cold for every row alike (bench/README.md, "Settle time").
SETTLE_SECONDS = 0.06



@dataclass
class Cell:
    """One value of the table: measured (``reason`` None) or not, and why.

    ``status`` is "measured" for numbers and observations taken in this
    run, "described" for text that follows from the configuration (the
    isolation boundary), "not measured" otherwise.
    """

    value: float | int | str | None
    unit: str = ""
    text: str = ""
    note: str = ""
    status: str = "measured"
    reason: str | None = None
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status != "not measured"

    @classmethod
    def missing(cls, reason: str, unit: str = "") -> Cell:
        return cls(None, unit, "not measured", status="not measured", reason=reason)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "unit": self.unit or None, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.note:
            out["note"] = self.note
        if self.samples:
            out["samples"] = [round(s, 3) for s in self.samples]
        out.update(self.extra)
        return out


@dataclass
class Column:
    """One sandbox kind: a row of the JSON, a column of the table."""

    key: str
    label: str
    kind: str  # "minibox" | "peer"
    cells: dict[str, Cell] = field(default_factory=dict)

    def cell(self, metric: str) -> Cell:
        return self.cells.get(metric) or Cell.missing("not part of this comparison")


@dataclass
class Report:
    date: str
    host: dict[str, Any]
    runs: int
    density: int
    columns: list[Column]
    notes: list[str] = field(default_factory=list)

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)

    def peers_present(self) -> bool:
        return any(c.kind == "peer" for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": "minibox compare",
            "date": self.date,
            "host": self.host,
            "parameters": {"runs": self.runs, "density": self.density},
            "metrics": dict(METRICS),
            "rows": [{"name": c.key, "label": c.label, "kind": c.kind,
                      "values": {k: c.cell(k).to_json() for k, _ in METRICS}} for c in self.columns],
            "ratios_vm_over_container": {m: ratio(self, m) for m in RATIO_METRICS},
            "notes": self.notes,
        }


def _number(cell: Cell, metric: str) -> float | None:
    """The cell's value as a number to compare; for density, the seconds per sandbox started."""
    if not cell.measured or not isinstance(cell.value, (int, float)) or cell.value <= 0:
        return None
    if metric == "density":
        seconds = cell.extra.get("seconds")
        return float(seconds) / cell.value if isinstance(seconds, (int, float)) and seconds > 0 else None
    return float(cell.value)


def ratio(report: Report, metric: str) -> float | None:
    """VM ÷ container, only when both were measured (density: time to start one)."""
    ct, vm = report.column("container"), report.column("vm")
    if ct is None or vm is None or metric not in RATIO_METRICS:
        return None
    base = "start_to_exit" if metric == "start_cold" else metric
    a, b = _number(ct.cell(base), base), _number(vm.cell(metric), metric)
    return None if a is None or b is None else b / a

# --- numbers as text ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, interpolated linearly between the two nearest."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timing_cell(samples_ms: Sequence[float]) -> Cell:
    """A measured timing: the median, the p25-p75 spread in the note, every sample kept."""
    med = statistics.median(samples_ms)
    spread = f"p25-p75 {fmt_ms(percentile(samples_ms, 0.25))}-{fmt_ms(percentile(samples_ms, 0.75))}"
    return Cell(med, "ms", f"{fmt_ms(med)} ms", note=f"median of {len(samples_ms)} runs, {spread} ms",
                samples=list(samples_ms))


def fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_bytes(n: float) -> str:
    if n >= 100 * MiB:
        return f"{n / MiB:,.0f} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def fmt_ratio(r: float) -> str:
    return f"{r:,.0f}{TIMES}" if r >= 10 else f"{r:.2f}{TIMES}"


def why(e: BaseException) -> str:
    """An exception as the reason of a "not measured" cell: its type and first line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
