"""bench/oom_latency.py: how long an OOM kill takes, from the memory cgroup's OOM to the container's end.

Runs N containers with ``Limits(memory="32M")`` whose command allocates
more than that, and measures, for each, the time from the cgroup's OOM
event (an eventfd of its own on cgroup v1's ``memory.oom_control``, the
kernel's notification API: cgroup-v1/memory.rst, section 9) to the return
of ``Container.wait()``.  Wall time from start would mostly measure the
allocation and this shared machine's load; this interval is the kill.

    sudo .venv/bin/python bench/oom_latency.py 100              # 100 MiB through tr, into a shell variable
    sudo .venv/bin/python bench/oom_latency.py 100 --writers 3  # three writers into the victim's pipe

docs/cgroups.md ("When an OOM kill takes seconds") quotes the figures and
what they showed.  cgroup v1 only (the eventfd API does not exist on v2).
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import threading
import time

from minibox import Container, Limits, Spec
from minibox.errors import MiniboxError

ONE_WRITER = "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"


def workload(writers: int) -> str:
    if writers <= 1:
        return ONE_WRITER
    yes = " & ".join(f"yes {chr(97 + i) * 16}" for i in range(writers))
    return f"x=$( ({yes} & wait) ); echo survived"


def _oom_moment(memory_dir: str, stop: int, seen: list[float]) -> None:
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    cfd = os.open(f"{memory_dir}/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(f"{memory_dir}/cgroup.event_control", "w") as f:
            f.write(f"{efd} {cfd}")
    finally:
        os.close(cfd)
    poller = select.poll()
    poller.register(efd, select.POLLIN)
    poller.register(stop, select.POLLIN)
    if efd in dict(poller.poll()):
        seen.append(time.perf_counter())
    os.close(efd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=int)
    parser.add_argument("--writers", type=int, default=1, help="processes writing into the victim's pipe")
    parser.add_argument("--slow", type=float, default=1.0, help="count kills slower than this (s)")
    args = parser.parse_args()
    import minibox

    cmd = workload(args.writers)
    print(f"minibox from {os.path.dirname(minibox.__file__)}; sh -c {cmd!r}", flush=True)
    kills: list[float] = []
    reasons: dict[str, int] = {}
    for i in range(args.runs):
        box = Container(Spec(argv=["sh", "-c", cmd], limits=Limits(memory="32M")))
        try:
            box.start()
        except MiniboxError as e:  # not what is measured; counted and shown
            reasons["start failed"] = reasons.get("start failed", 0) + 1
            print(f"{i} start failed: {e}", flush=True)
            continue
        seen: list[float] = []
        stop_r, stop_w = os.pipe()
        memory_dir = box._cgroup.paths["memory"]  # type: ignore[attr-defined]  # a benchmark may look inside
        watcher = threading.Thread(target=_oom_moment, args=(memory_dir, stop_r, seen))
        watcher.start()
        result = box.wait(timeout=60)
        end = time.perf_counter()
        os.write(stop_w, b"x")
        watcher.join()
        os.close(stop_r)
        os.close(stop_w)
        box.close()
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        if seen:
            kills.append(end - seen[0])
        print(f"{i} oom->end {end - seen[0] if seen else float('nan'):.3f} s  {result.reason}", flush=True)
    if not kills:
        print("no OOM event was seen (is this cgroup v1?)")
        return 1
    s = sorted(kills)
    slow = sum(k > args.slow for k in s)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.runs} runs, {args.writers} writer(s), "
          f"results {reasons}; OOM event -> wait() returned: median {statistics.median(s) * 1000:.0f} ms, "
          f"p95 {s[int(0.95 * (len(s) - 1))] * 1000:.0f} ms, max {s[-1] * 1000:.0f} ms; "
          f"over {args.slow:g} s: {slow} ({100 * slow / len(s):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
