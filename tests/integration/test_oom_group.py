"""An OOM kill ends the whole container, on cgroup v1 as on v2 (docs/cgroups.md, "When an OOM kill takes seconds").

Why: a victim of the memory cgroup's OOM killer can be stuck on a lock
held by another member of the group that is itself looping in reclaim,
and then it dies only when the kernel's OOM reaper frees its memory,
2 s later.  minibox kills every member on the OOM event (v1:
cgroup.event_control + memory.oom_control; v2: memory.oom.group), so
the whole container goes at once and the time an OOM takes is bounded.
"""

from __future__ import annotations

import os

from minibox import Container, Limits, Spec

from ..conftest import needs_root

pytestmark = needs_root

ALLOCATE = "x=$(head -c 104857600 /dev/zero | tr '\\0' a)"


def test_an_oom_kill_of_one_process_ends_the_whole_container() -> None:
    # The inner shell holds the 100 MiB and is the OOM killer's victim; the outer
    # one would survive it -- unless the OOM ends the container, as it must.
    script = "sh -c 'x=$(head -c 104857600 /dev/zero | tr \"\\0\" a)'; echo outer survived; sleep 30"
    with Container(Spec(argv=["sh", "-c", script], limits=Limits(memory="32M"))) as box:
        result = box.wait(timeout=60)
    assert result.reason == "oom", result
    assert result.shell_status == 137
    assert b"outer survived" not in result.stdout


def test_a_container_within_its_limit_is_untouched() -> None:
    with Container(Spec(argv=["sh", "-c", "x=$(head -c 1048576 /dev/zero | tr '\\0' a); echo ok"],
                        limits=Limits(memory="32M"))) as box:
        result = box.wait(timeout=60)
    assert result.reason == "exited" and result.stdout == b"ok\n"


def test_the_oom_watch_is_closed_with_the_wait() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with Container(Spec(argv=["sh", "-c", ALLOCATE], limits=Limits(memory="32M"))) as box:
        assert box.wait(timeout=60).reason == "oom"
    assert set(os.listdir("/proc/self/fd")) <= before
