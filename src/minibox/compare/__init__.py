"""``minibox compare``: containers against microVMs, measured live on this machine.

The classic "containers vs VMs" table is usually folklore: a container
starts in milliseconds, a VM in seconds; a container costs a few hundred
KiB, a VM hundreds of MiB.  This package turns each line of that table into
a measurement of the *same* :class:`~minibox.Spec` run both ways, here and
now.  The rule: **no number that was not measured** -- every value is a
:class:`Cell` that is either measured (value, unit, how) or carries the
reason it could not be measured, and every rendering says so.

It sits beside the library core, not in it: nothing in minibox imports it
but the CLI.  One module per concern:

============  ===============================================================
report.py     the data: Cell, Column, Report, ratios, number formatting
measure.py    the measurements (boundary, kernel, start-to-exit, memory,
              disk, density) and :func:`measure`, the whole comparison
peers.py      crun, runc and bwrap, timed by bench/peers.py (``--peers``)
progress.py   progress on stderr
render.py     the 80-column table, the long form (``--wide``), Markdown
plot.py       ``--plot FILE``: the distributions, drawn (matplotlib, optional)
command.py    ``minibox compare``'s main(), called by cli.py
============  ===============================================================
"""

from __future__ import annotations

from .measure import du_bytes, host_facts, measure, vm_density_cap
from .progress import Progress
from .render import render_markdown, render_markdown_wide, render_plain, render_wide, short_rows, wide_rows
from .report import METRICS, RATIO_METRICS, Cell, Column, Report, ratio, timing_cell

__all__ = [
    "METRICS", "RATIO_METRICS", "Cell", "Column", "Progress", "Report", "du_bytes", "host_facts", "measure",
    "ratio", "render_markdown", "render_markdown_wide", "render_plain", "render_wide", "short_rows",
    "timing_cell", "vm_density_cap", "wide_rows",
]
