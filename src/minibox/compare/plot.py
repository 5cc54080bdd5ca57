"""``minibox compare --plot FILE``: the start-time distributions and host memory, drawn.

A median hides what a user cares about (is the slow start rare, or
typical?), so the picture shows every sample: on the left each
start-to-exit run of container and cold microVM as a dot over its box plot,
on a log scale (they differ by ~500x); on the right each idle sandbox's
host memory (the container's cgroup charge, the VM's QEMU RSS), also log.
The file type follows the name's suffix (.svg or .png).  matplotlib is an
optional extra (``pip install minibox[plot]``); without it the command
says how to get it.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import MiniboxError
from .report import Report

#: The series drawn, in order, with their colours: (column, start-to-exit metric, label, colour).
KINDS = (("container", "start_to_exit", "container", "#1f77b4"),
         ("vm", "start_to_exit", "microVM from a template", "#ff7f0e"),
         ("vm", "start_cold", "cold microVM", "#d62728"))
FORMATS = (".svg", ".png")


class PlotError(MiniboxError):
    """The plot cannot be drawn: a bad file name, or matplotlib is not installed."""


def check_path(path: str) -> None:
    """Refuse a file name the plot cannot be written to, before anything is measured."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise PlotError(f"--plot {path!r}: the file name must end in .svg or .png")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PlotError(f"--plot {path!r}: the directory {parent} does not exist")
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must precede pyplot's import
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG: smaller, searchable
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotError("--plot needs matplotlib: pip install 'minibox[plot]' (or matplotlib)") from e
    return plt


def _strip(ax: Any, series: list[tuple[str, str, list[float]]], unit: str) -> None:
    """A box plot per kind with every sample as a dot (jittered deterministically)."""
    data = [values for _, _, values in series]
    labels = [label for label, _, _ in series]
    ax.boxplot(data, vert=True, widths=0.5, showfliers=False, medianprops={"color": "black"})
    for i, (_, colour, values) in enumerate(series, start=1):
        n = len(values)
        xs = [i + 0.18 * ((k / max(n - 1, 1)) - 0.5) for k in range(n)]
        ax.scatter(xs, values, s=14, color=colour, alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(series) + 1), labels)
    ax.set_yscale("log")
    ax.set_ylabel(unit)
    ax.grid(axis="y", which="both", alpha=0.3)


def plot(report: Report, path: str) -> None:
    """Draw ``report``'s start-to-exit samples and idle memory into ``path`` (.svg or .png)."""
    check_path(path)
    plt = _pyplot()
    starts: list[tuple[str, str, list[float]]] = []
    memory: list[tuple[str, str, list[float]]] = []
    for key, metric, label, colour in KINDS:
        column = report.column(key)
        if column is None:
            continue
        start, mem = column.cell(metric), column.cell("memory_idle")
        if start.measured and start.samples:
            starts.append((label, colour, list(start.samples)))
        # the idle memory is a cold-booted VM's (measure.measure_density): drawn with that series
        if (key == "container" or metric == "start_cold") and mem.measured and mem.samples:
            memory.append((label, colour, [m / (1 << 20) for m in mem.samples]))
    if not starts and not memory:
        raise PlotError("nothing to plot: neither start times nor memory were measured")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2))
    try:
        if starts:
            _strip(left, starts, "ms (log scale)")
            left.set_title(f"start-to-exit of /bin/true, {report.runs} runs each")
        else:
            left.set_axis_off()
        if memory:
            _strip(right, memory, "MiB (log scale)")
            right.set_title("host memory per idle sandbox")
        else:
            right.set_axis_off()
        h = report.host
        fig.suptitle(f"minibox compare, {report.date}: kernel {h.get('kernel')}, {h.get('cpus')} CPUs",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, metadata={"Date": None} if path.lower().endswith(".svg") else None)
    finally:
        plt.close(fig)
