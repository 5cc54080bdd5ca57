"""What a cgroup backend is: the interface both layouts implement, and what they share.

Like crun's small table of cgroup managers (libcrun/cgroup-v1.c,
cgroup-v2.c behind one ``libcrun_cgroup_manager``), each backend owns
creation with its limit table, stats, freezing and killing; the
:class:`~minibox.container.cgroups.Cgroup` handle picks one by version.
"""

from __future__ import annotations

import errno
import os
import time

from ..._lean import SIGKILL
from ...errors import SetupError
from ...sandbox import Stats, Usage
from ...spec import Limits
from . import files

TYPE_CHECKING = False  # typing and collections.abc cost each fresh interpreter (minibox-oci) milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

#: CFS bandwidth period (µs) used for ``cpus``: the kernel's and runc's default.
CPU_PERIOD_US: Final = 100_000


def kill_loop(
    procs: Callable[[], list[int]],
    set_frozen: Callable[[bool, float], None] | None,
    timeout: float,
    detail: str,
) -> None:
    """Signal every pid until the cgroup is empty: freeze, SIGKILL, thaw, repeat (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        frozen = False
        if set_frozen is not None:
            try:
                set_frozen(True, 0.5)
                frozen = True
            except SetupError:
                pass  # a process stuck in the kernel; kill what we can anyway
        pids = procs()
        for pid in pids:
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                pass
        if frozen and set_frozen is not None:
            set_frozen(False, 0.5)
        if not pids:
            return
        remaining = deadline - time.monotonic()
        if files.wait_until(lambda: not procs(), max(0.0, min(0.2, remaining))):
            return
        if time.monotonic() >= deadline:
            raise SetupError("cgroup kill", errno.EBUSY, detail=detail)


class Backend:
    """What differs between the layouts: which files hold the counters and switches."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for directory in files.unique(self.paths.values()):
            pids.update(int(p) for p in (files.read_opt(directory + "/cgroup.procs") or "").split())
        return sorted(pids)

    def stats(self) -> Stats:
        raise NotImplementedError

    def usage(self) -> Usage:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def set_frozen(self, frozen: bool, timeout: float) -> None:
        raise NotImplementedError

    def kill_all(self, timeout: float) -> None:
        raise NotImplementedError

    def oom_watch(self) -> int | None:
        """An fd that becomes readable when the cgroup runs out of memory, or None (see :meth:`Cgroup.oom_watch`)."""
        return None

    def under_oom(self) -> bool:
        """Whether the cgroup is out of memory right now, or its OOM killer has already struck."""
        return self.oom_killed()

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process of the cgroup once: no freezing, no waiting."""
        for pid in self.procs():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def limit_fields(limits: Limits) -> dict[str, str | None]:
    """Controller -> the Spec field that needs it (None: used for stats only)."""
    fields: dict[str, str | None] = {
        "memory": "limits.memory" if limits.memory is not None else None,
        "pids": "limits.pids" if limits.pids is not None else None,
    }
    if limits.cpus is not None:
        fields["cpu"] = "limits.cpus"
    elif limits.cpu_weight is not None:
        fields["cpu"] = "limits.cpu_weight"
    if limits.cpuset is not None:
        fields["cpuset"] = "limits.cpuset"
    return fields


def quota(cpus: float) -> int:
    return max(1000, round(cpus * CPU_PERIOD_US))  # the kernel's minimum quota is 1 ms
