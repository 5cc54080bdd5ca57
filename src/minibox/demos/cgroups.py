"""Demo: cgroups -- a memory limit met by the OOM killer, a fork bomb contained.

Namespaces decide what a container can *see*; cgroups decide how much it
can *use*.  This demo starts three containers with limits and reads the
kernel's own accounting back: peak memory, the OOM-kill counter, the pid
count, CPU time.
"""

from __future__ import annotations

import os
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

    heading("memory: 32M limit, a shell that tries to hold 100M")
    spec = Spec(argv=["sh", "-c", "echo allocating; x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo done"],
                limits=Limits(memory="32M"))
    with Container(spec) as box:
        show("cgroup directories", ", ".join(sorted(set(box.cgroup_paths.values()))) or "-")
        result = box.wait(timeout=60)
    show("stdout", result.stdout.decode().strip())
    show("reason", f"{result.reason} -- {result.describe()}")
    show("peak memory", f"{(result.usage.memory_peak_bytes or 0) / 2**20:.1f} MiB (the limit: 32 MiB)")
    pointer("reading the OOM-kill evidence before the cgroup is removed", cgroups.Cgroup.oom_killed)

    heading("pids: a fork bomb under pids=32")
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 1"
    with Container(Spec(argv=["sh", "-c", bomb], limits=Limits(pids=32))) as box:
        time.sleep(1.0)
        stats = box.stats()
        show("processes in the container", stats.pids)
        box.kill()
        result = box.wait(timeout=30)
    errors = result.stderr.decode().count("can't fork")
    show("fork failures reported by the shell", f"{errors} (EAGAIN: the pids controller said no)")
    show("the host", "unaffected; the whole container was killed through its cgroup")

    heading("cpu: half a CPU for a busy loop")
    with Container(Spec(argv=["sh", "-c", "while :; do :; done"], limits=Limits(cpus=0.5))) as box:
        first = box.stats().cpu_seconds or 0.0
        time.sleep(2)
        used = (box.stats().cpu_seconds or 0.0) - first
    show("CPU seconds used in 2 s of wall time", f"{used:.2f} (cfs quota: 50 ms per 100 ms period)")

    heading("pause and resume: the freezer")
    with Container(Spec(argv=["sh", "-c", "while :; do :; done"], limits=Limits(pids=4))) as box:
        box.pause()
        frozen_at = box.stats().cpu_seconds or 0.0
        time.sleep(0.5)
        show("CPU time advanced while frozen", f"{(box.stats().cpu_seconds or 0.0) - frozen_at:.3f} s")
        box.resume()
        time.sleep(0.3)
        show("CPU time advanced after resume", f"{(box.stats().cpu_seconds or 0.0) - frozen_at:.3f} s")
    say("\nEvery cgroup above has been removed again (see 'minibox gc' for callers that die).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
