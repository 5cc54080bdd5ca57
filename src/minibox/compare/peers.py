"""crun, runc and bwrap beside minibox: ``minibox compare --peers``.

The peers are timed by the benchmark's own runner (bench/peers.py, fork to
reaped exit with stdio on /dev/null) so that ``compare`` and ``make bench``
cannot disagree on how; that runner exists only in a source checkout, and
without it the peers are "not measured" with the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .progress import Progress
from .report import METRICS, SETTLE_SECONDS, Cell, Column, timing_cell, why

PEERS = (("crun", "crun run"), ("runc", "runc run"), ("bwrap", "bwrap --unshare-all"))


def bench_dir() -> Path | None:
    """bench/ of the source checkout minibox runs from, if it has peers.py."""
    candidate = Path(__file__).resolve().parents[3] / "bench"
    return candidate if (candidate / "peers.py").is_file() and (candidate / "common.py").is_file() else None


@contextlib.contextmanager
def _bench_modules(directory: Path) -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, str(directory))
    try:
        yield importlib.import_module("peers"), importlib.import_module("common")
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


def measure_peers(runs: int, progress: Progress) -> tuple[list[Column], str | None]:
    """crun, runc and bwrap start-to-exit, via bench/peers.py's runner; or why not."""
    directory = bench_dir()
    if directory is None:
        return [], "bench/peers.py is not available (minibox does not run from a source checkout)"
    if os.geteuid() != 0:
        return [], "peers need root (crun and runc create namespaces and cgroups)"
    from ..images.busybox import default_rootfs

    columns = [Column(key, label, "peer") for key, label in PEERS]
    work = Path(tempfile.mkdtemp(prefix="minibox-compare-peers-"))
    try:
        with _bench_modules(directory) as (peers, common):
            config = peers.PeerConfig.detect(Path(default_rootfs()), work)
            config.prepare()
            with peers.PeerServer(config) as server:
                for column in columns:
                    if getattr(config, column.key) is None:
                        column.cells["start_to_exit"] = Cell.missing(f"{column.key} is not installed", "ms")
                        continue
                    progress.phase(f"start-to-exit: {column.label}", runs)
                    samples: list[float] = []
                    try:
                        for _ in range(runs):
                            time.sleep(SETTLE_SECONDS)
                            samples.append(float(server.measure(column.key)))
                            progress.advance()
                    except common.CommandFailed as e:
                        column.cells["start_to_exit"] = Cell.missing(f"{column.key} failed: {e}", "ms")
                        continue
                    if samples:
                        cell = timing_cell(samples)
                        cell.note += "; timed by bench/peers.py (fork to reaped exit, stdio on /dev/null)"
                        column.cells["start_to_exit"] = cell
            leaks = peers.leftover_cgroups()
            if leaks:
                print(f"minibox compare: LEAK: peer cgroups left behind: {leaks}", file=sys.stderr)
    except (OSError, RuntimeError, ImportError, ValueError) as e:
        return [], f"the peer runner failed: {why(e)}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for column in columns:
        for metric, _ in METRICS:
            column.cells.setdefault(metric, Cell.missing(
                "compare times peers' start-to-exit only (bench/run.py has more)"))
    return columns, None

