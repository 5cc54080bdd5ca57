"""Where the milliseconds of a container start go: ``minibox.run`` with limits, step by step.

    sudo .venv/bin/python bench/limits_trace.py [--runs N] [--settle-ms MS] [--no-limits]

Runs ``minibox.run(Spec(argv=["/bin/true"], limits=Limits(memory="64M",
pids=64)))`` N times (default 20), each after a settle (default 60 ms, so
cgroup v1's RCU state is cold as for a lone start), and times the steps of
each run by wrapping minibox's own functions: the state record, the cgroup's
creation, the clone until the command's execve (in vfork mode the caller
sleeps through the child's whole setup, its joining of the cgroups
included), handing the pidfd to the keeper, waiting for the exit, reading
the cgroup's evidence, and the removals.  It prints the median of each step
and of the whole call; "other" is the rest (Python between the steps).
Steps a version of minibox does not have are left out, so the same script
traces an older checkout (``PYTHONPATH=old/src``).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

#: (label, module, attribute path) of each timed step, in the order a start takes them.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("plan (Spec -> child plan, seccomp)", "minibox.container.container", "process_plan"),
    ("state record written", "minibox.container.container", "Container._create_record"),
    ("cgroup created, limits written", "minibox.container.container", "Container._create_cgroup"),
    ("cgroup join fds opened", "minibox.container.container", "Container._open_join_fds"),
    ("clone .. execve (child setup, joins)", "minibox.container.container", "spawn"),
    ("attach() from the parent", "minibox.container.cgroups", "Cgroup.attach"),
    ("keeper + record names the pid", "minibox.container.container", "Container._supervise"),
    ("error pipe read (EOF: exec'd)", "minibox.container.container", "read_child_error"),
    ("OOM watch armed", "minibox.container.cgroups", "Cgroup.oom_watch"),
    ("wait for the exit, drain output", "minibox.container.container", "communicate"),
    ("reap (wait4)", "minibox.container.container", "Container._reap"),
    ("cgroup evidence read (OOM, usage)", "minibox.container.container", "Container._make_result"),
    ("cgroup removed", "minibox.container.cgroups", "Cgroup.remove"),
    ("state record removed", "minibox.records", "Record.remove"),
)


def instrument(samples: dict[str, list[float]]) -> list[str]:
    """Wrap each step's function so that its duration lands in ``samples``; return the labels wrapped."""
    import importlib

    wrapped = []
    for label, module_name, path in STEPS:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        original = getattr(owner, name, None)
        if original is None:
            continue

        def timed(*args: Any, _original: Callable[..., Any] = original, _label: str = label,
                  **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                samples[_label].append((time.perf_counter() - start) * 1000)

        setattr(owner, name, functools.wraps(original)(timed))
        wrapped.append(label)
    return wrapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--settle-ms", type=float, default=60.0)
    parser.add_argument("--no-limits", action="store_true", help="trace the no-limits fast path instead")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces and cgroups need it")

    import minibox
    from minibox.images.busybox import build_busybox_rootfs

    samples: dict[str, list[float]] = defaultdict(list)
    labels = instrument(samples)
    workdir = tempfile.mkdtemp(prefix="minibox-trace.")
    totals: list[float] = []
    try:
        rootfs = str(build_busybox_rootfs(os.path.join(workdir, "rootfs")))
        limits = minibox.Limits() if args.no_limits else minibox.Limits(memory="64M", pids=64)
        spec = minibox.Spec(argv=["/bin/true"], rootfs=rootfs, limits=limits)
        for i in range(args.runs + 1):  # the first is a warm-up
            if i == 1:
                samples.clear()
            time.sleep(args.settle_ms / 1000)
            start = time.perf_counter()
            result = minibox.run(spec)
            if i:
                totals.append((time.perf_counter() - start) * 1000)
            if result.exit_code != 0:
                raise SystemExit(f"/bin/true failed: {result}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    what = "no limits" if args.no_limits else "memory 64M, pids 64"
    print(f"minibox.run(/bin/true, {what}) from {minibox.__file__}: medians of {args.runs} runs, "
          f"settle {args.settle_ms:g} ms, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    total = statistics.median(totals)
    accounted = 0.0
    print(f"{'step':40} {'ms':>7} {'p25-p75':>13}")
    for label in labels:
        values = samples.get(label)
        if not values:
            continue
        med = statistics.median(values) * len(values) / args.runs  # per call, times calls per run
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        accounted += med
        print(f"{label:40} {med:7.2f} {q[0]:6.2f}-{q[2]:<6.2f}")
    print(f"{'other (Python between the steps)':40} {max(0.0, total - accounted):7.2f}")
    print(f"{'whole minibox.run call':40} {total:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
