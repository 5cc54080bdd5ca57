"""The comparison as text: a table inside 80 columns, the long form, Markdown.

The default table (``minibox compare``) fits a terminal of 80 columns: one
short value per cell, the p25-p75 spread of the timings, and footnotes
only for what could not be measured.  ``--wide`` prints the long form: every
value with how it was measured, and the peers' table.  ``--markdown`` gives
either as a Markdown table (the README's figures block is the short one).
Nothing here measures; everything comes from a :class:`Report`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from .report import METRICS, TIMES, Column, Report, fmt_bytes, fmt_ms, fmt_ratio, percentile, ratio

#: The width the default table keeps to.
WIDTH = 80
#: Short row labels of the default table.
SHORT_LABELS = {
    "boundary": "isolation",
    "kernel_release": "kernel inside",
    "accelerator": "accelerator",
    "start_to_exit": "start-to-exit",
    "start_cold": "VM cold boot",
    "memory_idle": "memory, idle box",
    "disk": "on disk",
    "density": "idle boxes started",
}
#: No cell of the default table is wider than this (longer text is cut with an ellipsis).
CELL_MAX = 24


# --- the default table, inside 80 columns ----------------------------------------------------


def _short(column: Column, metric: str, host_kernel: str) -> str:
    """One cell's value in a few characters (the long form has the rest)."""
    cell = column.cell(metric)
    if not cell.measured:
        return "not measured"
    value = cell.value
    if metric == "boundary":
        return "namespaces+cgroups" if column.key == "container" else "hypervisor+guest kernel"
    if metric == "kernel_release":
        return "the host's" if value == host_kernel else str(value)
    if metric == "accelerator":
        return {"none": "none (host CPU)", "kvm": "KVM", "tcg": "TCG (emulated)"}.get(str(value), str(value))
    if not isinstance(value, (int, float)):
        return str(cell.text or value)
    if metric in ("start_to_exit", "start_cold"):
        text = f"{fmt_ms(value)} ms"
        if len(cell.samples) >= 4:
            q1, q3 = percentile(cell.samples, 0.25), percentile(cell.samples, 0.75)
            spread = f" ({fmt_ms(q1)}-{fmt_ms(q3)})"
            if len(text + spread) <= CELL_MAX:  # never cut a number: drop the spread (--wide has it)
                text += spread
        return text
    if metric in ("memory_idle", "disk"):
        return fmt_bytes(value)
    if metric == "density":
        seconds = cell.extra.get("seconds")
        requested = cell.extra.get("requested", value)
        count = f"{value}" if requested == value else f"{value} of {requested}"
        return f"{count} in {seconds:.1f} s" if isinstance(seconds, (int, float)) else count
    return str(cell.text or value)


def _cut(text: str, width: int = CELL_MAX) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def short_rows(report: Report) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the default table: short values, notes only for the missing."""
    columns = [c for c in report.columns if c.kind == "minibox"]
    host_kernel = str(report.host.get("kernel", ""))
    header = ["", *("microVM" if c.key == "vm" else c.key for c in columns), f"vm{TIMES}"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for metric, _ in METRICS:
        row = [SHORT_LABELS.get(metric, metric)]
        for column in columns:
            cell = column.cell(metric)
            text = _cut(_short(column, metric, host_kernel))
            if cell.reason is not None:
                notes.append(f"[{len(notes) + 1}] {column.key}, {row[0]}: not measured: {cell.reason}")
                text = f"{text} [{len(notes)}]"
            row.append(text)
        r = ratio(report, metric)
        row.append(fmt_ratio(r) if r is not None else "")
        rows.append(row)
    return header, rows, notes


def _legend(report: Report) -> list[str]:
    """What the short values mean, in a sentence or two."""
    return [f"start-to-exit: median (p25-p75) of {report.runs} runs of /bin/true, a VM restored from its "
            "template; VM cold boot: the same, booting the guest (template=False); memory: the "
            "container's cgroup charge, the VM's QEMU RSS; vm\u00d7: VM over container (density: "
            "time to start one). 'minibox compare --wide': how each value was measured."]


def _host_line(report: Report) -> str:
    h = report.host
    parts = [f"host kernel {h.get('kernel')}", f"{h.get('cpus')} CPUs"]
    if h.get("cpu_model"):
        parts[-1] += f" ({h['cpu_model']})"
    if isinstance(h.get("memory_total_bytes"), int):
        parts.append(f"{h['memory_total_bytes'] / (1 << 30):.1f} GiB")
    if h.get("cgroups"):
        parts.append(f"cgroups {h['cgroups']}")
    if h.get("qemu"):
        parts.append(f"QEMU {str(h['qemu']).split()[0]}")
    if isinstance(h.get("load_average_1min"), (int, float)):
        parts.append(f"load average {h['load_average_1min']} at the start")
    return "; ".join(str(p) for p in parts)


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False)


def render_plain(report: Report) -> str:
    """The default table: every line at most 80 columns."""
    header, rows, notes = short_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = _wrap(f"containers vs microVMs on this machine, {report.date}") + _wrap(_host_line(report), "  ")
    lines.append("")
    for i, row in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for text in [*_legend(report), *notes, *(f"note: {n}" for n in report.notes)]:
        lines += _wrap(text, "    ")
    return "\n".join(lines)


def _md(row: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"


def render_markdown(report: Report) -> str:
    """The default table in Markdown (the README's figures block)."""
    header, rows, notes = short_rows(report)
    lines = [f"Measured {report.date} on {_host_line(report)}.", "",
             _md(header), _md(["---"] * len(header)), *(_md(r) for r in rows), ""]
    lines += _legend(report)
    extra = [*(f"- {n}" for n in notes), *(f"- note: {n}" for n in report.notes)]
    lines += ["", *extra] if extra else []
    return "\n".join(lines)


# --- the long form (--wide) -------------------------------------------------------------------


def _footnotes(report: Report, columns: Sequence[Column]) -> tuple[dict[tuple[str, str], int], list[str]]:
    """Number every note and reason: {(column, metric): n}, ["[n] column, metric: text"]."""
    marks: dict[tuple[str, str], int] = {}
    lines: list[str] = []
    for metric, label in METRICS:
        for column in columns:
            cell = column.cell(metric)
            text = cell.reason if cell.reason is not None else cell.note
            if not text:
                continue
            marks[(column.key, metric)] = len(lines) + 1
            prefix = "not measured: " if cell.reason is not None else ""
            lines.append(f"[{len(lines) + 1}] {column.key}, {label}: {prefix}{text}")
    return marks, lines


def _ratio_text(report: Report, metric: str) -> str:
    r = ratio(report, metric)
    if r is None:
        return ""
    return fmt_ratio(r) + (" per start" if metric == "density" else "")


def wide_rows(report: Report) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the main table: metrics down, container and VM across."""
    columns = [c for c in report.columns if c.kind == "minibox"]
    marks, notes = _footnotes(report, columns)
    header = ["", *(c.key for c in columns), "vm \u00f7 container"]
    rows = []
    for metric, label in METRICS:
        row = [label]
        for column in columns:
            cell = column.cell(metric)
            mark = marks.get((column.key, metric))
            row.append(f"{cell.text or cell.value} [{mark}]" if mark else str(cell.text or cell.value))
        row.append(_ratio_text(report, metric))
        rows.append(row)
    return header, rows, notes


def peer_rows(report: Report) -> list[list[str]]:
    container = report.column("container")
    ref = container.cell("start_to_exit") if container else None
    rows = []
    for column in report.columns:
        cell = column.cell("start_to_exit")
        if cell.measured and isinstance(cell.value, float):
            times = ""
            if ref is not None and ref.measured and isinstance(ref.value, float) and ref.value > 0:
                times = fmt_ratio(cell.value / ref.value)
            rows.append([column.label, f"{fmt_ms(cell.value)} ms", times, cell.note])
        else:
            rows.append([column.label, "not measured", "", cell.reason or ""])
    return rows


def _title(report: Report) -> str:
    h = report.host
    return (f"containers vs microVMs on this machine ({report.date}; host kernel {h.get('kernel')}, "
            f"{h.get('cpus')} CPUs; N={report.runs})")


def render_wide(report: Report) -> str:
    """The long form (``--wide``): every value in full, with how it was measured."""
    header, rows, notes = wide_rows(report)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_title(report), ""]
    for i, row in enumerate([header, *rows]):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines += ["", "How each value was measured:", *notes]
    if report.peers_present():
        lines += ["", f"start-to-exit of /bin/true, minibox and its peers ({TIMES} the minibox container):"]
        prow = [["sandbox", "median", TIMES, "how"], *peer_rows(report)]
        pw = [max(len(r[i]) for r in prow) for i in range(3)]
        for row in prow:
            lines.append("  ".join([*(c.ljust(w) for c, w in zip(row[:3], pw, strict=True)), row[3]]).rstrip())
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def render_markdown_wide(report: Report) -> str:
    """The long form as a Markdown table, with every footnote."""
    header, rows, notes = wide_rows(report)

    def md(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    lines = [f"**{_title(report)}**", "", md(header), md(["---"] * len(header))]
    lines += [md(r) for r in rows]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    if report.peers_present():
        lines += ["", md(["sandbox", "start-to-exit (median)", f"{TIMES} container", "how"]), md(["---"] * 4)]
        lines += [md(r) for r in peer_rows(report)]
    lines += ["", *(f"- note: {n}" for n in report.notes)] if report.notes else []
    return "\n".join(lines)


def render_rich_wide(report: Report) -> None:
    """The long form as a rich table on a terminal."""
    from rich.console import Console
    from rich.table import Table

    header, rows, notes = wide_rows(report)
    console = Console()
    table = Table(title=_title(report), title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, style="bold" if i == 0 else None, overflow="fold")
    for row in rows:
        table.add_row(*(c.replace("[", "\\[") for c in row))
    console.print(table)
    if notes:
        console.print("How each value was measured:", style="bold")
        for n in notes:
            console.print(n, markup=False, highlight=False)
    if report.peers_present():
        peers = Table(title="start-to-exit of /bin/true, minibox and its peers", title_justify="left")
        for name in ("sandbox", "median", f"{TIMES} container", "how"):
            peers.add_column(name, overflow="fold")
        for row in peer_rows(report):
            peers.add_row(*(c.replace("[", "\\[") for c in row))
        console.print(peers)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)

