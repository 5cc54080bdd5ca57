"""Demo: cgroups -- a memory limit met by the OOM killer, a fork bomb contained.

Namespaces decide what a container can *see*; cgroups decide how much it
can *use*.  This demo starts three containers with limits and reads the
kernel's own accounting back: peak memory, the OOM-kill counter, the pid
count, CPU time.
"""

from __future__ import annotations

import os
import subprocess
import time

from minibox import Container, Limits, Spec
from minibox.container import cgroups

from ._narrate import heading, pointer, say, show


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root (it creates cgroups): run it with sudo")
        return 1
    layout = cgroups.detect_layout()
    say(f"This host's cgroup layout: {layout} (detected from /proc/self/mountinfo and /proc/self/cgroup)")
    pointer("one interface, a v1 and a v2 backend", cgroups.Cgroup)
    made: list[str] = []  # every cgroup directory the demo's containers got, checked at the end

    heading("memory: 32M limit, a shell that tries to hold 100M")
    spec = Spec(argv=["sh", "-c", "echo allocating; x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo done"],
                limits=Limits(memory="32M"))
    with Container(spec) as box:
        made += dict.fromkeys(box.cgroup_paths.values())
        show("cgroup directories", ", ".join(sorted(set(box.cgroup_paths.values()))) or "-")
        result = box.wait(timeout=60)
    show("stdout", result.stdout.decode().strip())
    show("reason", f"{result.reason} -- {result.describe()}")
    show("peak memory", f"{(result.usage.memory_peak_bytes or 0) / 2**20:.1f} MiB (the limit: 32 MiB)")
    pointer("reading the OOM-kill evidence before the cgroup is removed", cgroups.Cgroup.oom_killed)

    heading("pids: a fork bomb under pids=32")
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 1"
    with Container(Spec(argv=["sh", "-c", bomb], limits=Limits(pids=32))) as box:
        made += dict.fromkeys(box.cgroup_paths.values())
        time.sleep(1.0)
        stats = box.stats()
        show("processes in the container", stats.pids)
        # The host, meanwhile: can it still start a process, and how fast?
        t0 = time.monotonic()
        host = subprocess.run(["true"], check=False)
        show("the host, during the bomb", f"started /bin/true: exit {host.returncode} in "
                                          f"{(time.monotonic() - t0) * 1000:.1f} ms")
        box.kill()
        result = box.wait(timeout=30)
        show("result of the main shell (kill() ended the rest through the cgroup)", result.describe())
    errors = result.stderr.decode().count("can't fork")
    show("fork failures reported by the shell", f"{errors} (EAGAIN: the pids controller said no)")

    heading("cpu: half a CPU for a busy loop")
    with Container(Spec(argv=["sh", "-c", "while :; do :; done"], limits=Limits(cpus=0.5))) as box:
        made += dict.fromkeys(box.cgroup_paths.values())
        quota = _cpu_quota(box.cgroup_paths)
        first = box.stats().cpu_seconds or 0.0
        t0 = time.monotonic()
        time.sleep(2)
        used = (box.stats().cpu_seconds or 0.0) - first
        wall = time.monotonic() - t0
    show("the quota, read back from the cgroup", quota)
    show(f"CPU seconds used in {wall:.2f} s of wall time", f"{used:.2f} (ratio {used / wall:.2f})")

    heading("pause and resume: the freezer")
    with Container(Spec(argv=["sh", "-c", "while :; do :; done"], limits=Limits(pids=4))) as box:
        made += dict.fromkeys(box.cgroup_paths.values())
        box.pause()
        frozen_at = box.stats().cpu_seconds or 0.0
        time.sleep(0.5)
        show("CPU time advanced while frozen", f"{(box.stats().cpu_seconds or 0.0) - frozen_at:.3f} s")
        box.resume()
        time.sleep(0.3)
        show("CPU time advanced after resume", f"{(box.stats().cpu_seconds or 0.0) - frozen_at:.3f} s")
    left = [path for path in made if os.path.exists(path)]
    show("cgroup directories left after close()", ", ".join(left) or f"none of the {len(made)} made")
    return 0


def _cpu_quota(paths: dict[str, str]) -> str:
    """The CFS bandwidth limit as the kernel holds it: cpu.max (v2) or cfs_quota_us/cfs_period_us (v1)."""
    for directory in dict.fromkeys(paths.values()):
        v2 = os.path.join(directory, "cpu.max")
        if os.path.exists(v2):
            with open(v2) as f:
                return f"cpu.max = {f.read().strip()}  (quota and period in µs)"
        v1 = os.path.join(directory, "cpu.cfs_quota_us")
        if os.path.exists(v1):
            with open(v1) as f, open(os.path.join(directory, "cpu.cfs_period_us")) as g:
                return f"cpu.cfs_quota_us = {f.read().strip()} per cpu.cfs_period_us = {g.read().strip()}"
    return "(no cpu controller file found)"


if __name__ == "__main__":
    raise SystemExit(main())
