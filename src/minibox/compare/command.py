"""``minibox compare``: measure, then print the table, JSON or Markdown on stdout.

The CLI (cli.py) parses the flags and calls :func:`main`; nothing here
imports the CLI, so the two cannot form an import cycle.  Progress goes
to stderr, the result to stdout, the picture (``--plot``) to its file.
"""

from __future__ import annotations

import argparse
import json
import sys

from .measure import measure
from .progress import Progress
from .render import render_markdown, render_markdown_wide, render_plain, render_rich_wide, render_wide


def _say(message: str) -> None:
    print(f"minibox: compare: {message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run ``minibox compare`` with parsed flags; returns the exit status."""
    if args.runs < 1:
        _say("--runs must be at least 1")
        return 2
    if args.density < 0:
        _say("--density must not be negative")
        return 2
    plot_path = getattr(args, "plot", None)
    if plot_path:
        from .plot import PlotError, check_path

        try:
            check_path(plot_path)  # before minutes of measuring, not after
        except PlotError as e:
            _say(str(e))
            return 2
    progress = Progress(enabled=True)
    try:
        report = measure(args.runs, args.density, args.peers, progress)
    finally:
        progress.close()
    wide = getattr(args, "wide", False)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif args.markdown:
        print(render_markdown_wide(report) if wide else render_markdown(report))
    elif wide and sys.stdout.isatty():
        try:
            render_rich_wide(report)
        except ImportError:
            print(render_wide(report))
    else:
        print(render_wide(report) if wide else render_plain(report))
    if plot_path:
        from .plot import plot

        plot(report, plot_path)
        print(f"minibox: compare: plot written to {plot_path}", file=sys.stderr)
    return 0
