"""Progress of a comparison on stderr: a rich bar on a terminal, plain lines otherwise.

stdout carries only the result (a table, JSON, Markdown), so that
``minibox compare --json > out.json`` works while the user still sees
what is being measured.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A progress bar on stderr when it is a terminal (rich), plain lines otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._tty = sys.stderr.isatty()
        self._rich: Any = None
        self._task: Any = None
        self._label = ""
        self._done = 0
        self._total = 0
        if enabled and self._tty:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                return
            self._rich = RichProgress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._rich.start()

    def phase(self, label: str, total: int) -> None:
        self._end_plain()
        self._label, self._done, self._total = label, 0, total
        if not self._enabled:
            return
        if self._rich is not None:
            if self._task is not None:
                self._rich.remove_task(self._task)
            self._task = self._rich.add_task(label, total=total)
        elif self._tty:
            self._draw()
        else:
            print(f"minibox compare: {label} ({total})", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self._done += 1
        if not self._enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=1)
        elif self._tty:
            self._draw()

    def _draw(self) -> None:
        print(f"\r{self._label:<44} {self._done}/{self._total}", end="", file=sys.stderr, flush=True)

    def _end_plain(self) -> None:
        if self._enabled and self._rich is None and self._tty and self._total:
            print(file=sys.stderr, flush=True)
            self._total = 0

    def close(self) -> None:
        self._end_plain()
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

