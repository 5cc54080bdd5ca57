"""Shared benchmark machinery: timing helpers, interleaved rounds, the Row shape, output.

What is measured here is wall-clock start-to-exit, in milliseconds, with
``time.perf_counter``; a command's time is from just before the fork to just
after its exit status was reaped (no pipes, no output to read).  Every row
of the main table is sampled once per *round* and the order of the rows is
shuffled in each round, so that noise on this shared machine (another
tenant's burst, a page-cache flush) hits every peer about equally instead
of spoiling one row's whole series.

Extension benchmarks (e.g. ``bench/bench_vm.py``) return :class:`Row`
objects; ``bench/run.py`` fills in the ratios and prints them with the rest.
Scripts in bench/ run with bench/ on ``sys.path`` (``python bench/run.py``),
so they import this module as ``from common import Row``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"  # gitignored


@dataclass
class Row:
    """One line of the results table.

    ``median_ms`` is None when the row could not be measured; ``notes`` then
    says why.  ``ratio`` is relative to the reference row (``crun run``),
    filled in by run.py; extension modules leave it None.  ``key`` is a
    stable identifier used in the JSON output and the target checks.
    """

    name: str
    median_ms: float | None
    ratio: float | None = None
    notes: str = ""
    key: str = ""
    samples_ms: list[float] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.median_ms is not None

    @classmethod
    def from_samples(cls, key: str, name: str, samples_ms: Sequence[float], notes: str = "") -> Row:
        return cls(name=name, median_ms=median(samples_ms), notes=notes, key=key, samples_ms=list(samples_ms))

    @classmethod
    def not_measured(cls, key: str, name: str, reason: str) -> Row:
        return cls(name=name, median_ms=None, notes=f"not measured: {reason}", key=key)

    def quartiles(self) -> tuple[float, float] | None:
        """The 25th and 75th percentiles of the samples (the spread shown in the table)."""
        if len(self.samples_ms) < 4:
            return None
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[0], q[2]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no samples")
    return float(statistics.median(values))


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class CommandFailed(RuntimeError):
    """A timed command exited non-zero; the message carries its stderr."""


def time_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> float:
    """Start ``argv``, wait for it, return start-to-exit in ms; raise CommandFailed if it failed.

    The timed run has its stdio on /dev/null, so that no pipe draining is
    counted; on failure the command is run once more with stderr captured,
    to say why.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, close_fds=True)
    status = proc.wait()
    elapsed = ms_since(start)
    if status != 0:
        again = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
        text = (again.stderr or again.stdout).decode(errors="replace").strip().splitlines()
        raise CommandFailed(f"{argv[0]} exited {status}: {text[-1] if text else '(no output)'}")
    return elapsed


def time_call(fn: Callable[[], Any]) -> float:
    """Time one call of ``fn`` in this interpreter, in ms."""
    start = time.perf_counter()
    fn()
    return ms_since(start)


@dataclass
class Subject:
    """Something sampled once per round: ``sample()`` returns one measurement in ms."""

    key: str
    name: str
    sample: Callable[[], float]
    notes: str = ""


def interleaved(subjects: Sequence[Subject], runs: int, *, warmup: int = 2, seed: int = 1,
                progress: Callable[[int, int], None] | None = None) -> list[Row]:
    """Sample every subject ``runs`` times, in a freshly shuffled order each round.

    ``warmup`` untimed rounds come first (page cache, lazy imports, the
    kernel's dentry cache).  A subject that raises is dropped from later
    rounds and reported as "not measured: <error>", so one broken peer does
    not stop the others.
    """
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {s.key: [] for s in subjects}
    failed: dict[str, str] = {}
    total = warmup + runs
    for round_no in range(total):
        order = [s for s in subjects if s.key not in failed]
        rng.shuffle(order)
        for subject in order:
            try:
                value = subject.sample()
            except Exception as e:  # a broken subject is reported, not fatal
                failed[subject.key] = f"{type(e).__name__}: {e}"
                continue
            if round_no >= warmup:
                samples[subject.key].append(value)
        if progress is not None:
            progress(round_no + 1, total)
    rows = []
    for s in subjects:
        if s.key in failed:
            rows.append(Row.not_measured(s.key, s.name, failed[s.key]))
        else:
            rows.append(Row.from_samples(s.key, s.name, samples[s.key], s.notes))
    return rows


# --- measuring in another process ----------------------------------------------------


def serve_lines(measure: Callable[[str], float], requests: IO[str], replies: IO[str]) -> None:
    """Server side: answer ``time KEY`` lines with ``ok MS`` or ``err MESSAGE`` until ``quit`` or EOF.

    Used where a measurement must be taken in another process: the peers in
    their private mount namespace (peers.py), minibox.run from a large caller
    (run.py).
    """
    replies.write("ready\n")
    replies.flush()
    for line in requests:
        verb, _, key = line.strip().partition(" ")
        if verb == "quit":
            break
        try:
            if verb != "time":
                raise CommandFailed(f"unknown request {line.strip()!r}")
            reply = f"ok {measure(key):.6f}"
        except Exception as e:  # reported to the client, which marks the row not measured
            reply = "err " + f"{type(e).__name__}: {e}".replace("\n", " ")
        replies.write(reply + "\n")
        replies.flush()


class LineServer:
    """Client side of :func:`serve_lines`: a child process, one request per measurement.

    Use as a context manager: ``close()`` asks the child to quit, and kills
    it (by pid: it is our own child) if it does not.
    """

    def __init__(self, argv: Sequence[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        greeting = self._readline()
        if greeting != "ready":
            self.close()
            raise RuntimeError(f"{what} did not start (said {greeting!r})")

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def measure(self, key: str) -> float:
        """Have the server time ``key`` once (ms); raise CommandFailed with its error."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"time {key}\n")
        self.proc.stdin.flush()
        reply = self._readline()
        status, _, value = reply.partition(" ")
        if status == "ok":
            return float(value)
        raise CommandFailed(value if status == "err" else f"{self.what} died (said {reply!r})")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()  # our own child, by pid
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()

    def __enter__(self) -> LineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- output -----------------------------------------------------------------------


TIMES = "\u00d7"  # the multiplication sign of the ratio columns


def _fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _fmt_ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "—"
    return f"{value / reference:.2f}{TIMES}"


def format_table(rows: Sequence[Row], references: Mapping[str, float | None]) -> str:
    """A plain-text table: name, median, IQR, n, one ratio column per reference, notes."""
    headers = ["row", "median ms", "p25-p75 ms", "n", *[f"{TIMES} {name}" for name in references], "notes"]
    lines: list[list[str]] = []
    for row in rows:
        q = row.quartiles()
        spread = f"{q[0]:.2f}-{q[1]:.2f}" if q else "—"
        lines.append([
            row.name,
            _fmt_ms(row.median_ms),
            spread,
            str(len(row.samples_ms)) if row.samples_ms else "—",
            *[_fmt_ratio(row.median_ms, ref) for ref in references.values()],
            row.notes,
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    numeric = set(range(1, len(headers) - 1))

    def fmt(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(line) for line in lines)])


def write_json(payload: Mapping[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` (rows converted with asdict) to bench/results/latest.json."""
    path = path or RESULTS_DIR / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def convert(value: Any) -> Any:
        if isinstance(value, Row):
            return asdict(value)
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(convert(payload), indent=2) + "\n")
    os.replace(tmp, path)
    return path
