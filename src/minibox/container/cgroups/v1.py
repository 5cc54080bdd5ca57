"""cgroup v1: one hierarchy per controller (Documentation/admin-guide/cgroup-v1/).

A v1 container has a directory in each controller's tree: ``memory``
(memory.limit_in_bytes, memory.oom_control), ``pids`` (pids.max),
``cpu``/``cpuacct`` (CFS bandwidth in cpu.cfs_quota_us, cpuacct.usage),
``cpuset`` and ``freezer`` (freezer.state).  Co-mounted controllers share a
directory.  The limit table is in :func:`create`.
"""

from __future__ import annotations

import errno
import os

from ...errors import SetupError, SpecError
from ...sandbox import Stats, Usage
from ...spec import Limits
from . import files
from .backend import CPU_PERIOD_US, Backend, kill_loop, limit_fields, quota
from .layout import CgroupLayout, Hierarchy, parent_path


def weight_to_shares(weight: int) -> int:
    """Convert a cgroup v2 ``cpu.weight`` (1..10000) to v1 ``cpu.shares`` (2..262144).

    This inverts the formula runc and crun use to go the other way
    (``weight = 1 + (shares - 2) * 9999 // 262142``), rounding up so that a
    round trip gives the same weight back.  Note that it maps weight 100 (the
    v2 default) to 2598 shares, not to the v1 default of 1024.
    """
    return 2 + -(-(weight - 1) * 262142 // 9999)


class V1(Backend):
    """cgroup v1: one directory per controller (Documentation/admin-guide/cgroup-v1/)."""

    def _file(self, controller: str, name: str) -> str | None:
        directory = self.paths.get(controller)
        return None if directory is None else f"{directory}/{name}"

    def _int(self, controller: str, name: str) -> int | None:
        path = self._file(controller, name)
        return None if path is None else files.int_opt(path)

    def _cpu_seconds(self) -> float | None:
        ns = self._int("cpuacct", "cpuacct.usage")  # user+sys, nanoseconds
        return None if ns is None else ns / 1e9

    def stats(self) -> Stats:
        return Stats(
            memory_bytes=self._int("memory", "memory.usage_in_bytes"),
            memory_peak_bytes=self._int("memory", "memory.max_usage_in_bytes"),
            cpu_seconds=self._cpu_seconds(),
            pids=self._int("pids", "pids.current"),
        )

    def usage(self) -> Usage:
        return Usage(
            memory_peak_bytes=self._int("memory", "memory.max_usage_in_bytes"),
            cpu_seconds=self._cpu_seconds(),
            pids_peak=self._int("pids", "pids.peak"),  # since Linux 6.x; None before
        )

    def oom_killed(self) -> bool:
        path = self._file("memory", "memory.oom_control")
        if path is None:
            return False
        control = files.keyed(files.read_opt(path))
        if "oom_kill" in control:  # the counter exists since Linux 4.13
            return int(control["oom_kill"]) > 0
        # Older kernels: the limit was hit (failcnt) and the group is or was under OOM.
        return (self._int("memory", "memory.failcnt") or 0) > 0

    def set_frozen(self, frozen: bool, timeout: float) -> None:
        step = "cgroup freeze" if frozen else "cgroup thaw"
        path = self._file("freezer", "freezer.state")
        if path is None:
            raise SetupError(step, errno.ENOENT, detail="no freezer hierarchy is mounted")
        want = "FROZEN" if frozen else "THAWED"
        try:
            files.write(path, want)

            def reached() -> bool:
                state = files.read(path).strip()
                if state != want and frozen:
                    files.write(path, want)  # FREEZING: ask again, as runc does
                return state == want

            if files.wait_until(reached, timeout):
                return
            if frozen:
                files.write(path, "THAWED")  # never leave it half frozen
        except OSError as e:
            raise SetupError(step, e.errno, detail=path) from e
        raise SetupError(step, errno.ETIMEDOUT, detail=path)

    def oom_watch(self) -> int | None:
        # cgroup-v1/memory.rst, 9 "OOM Control": write "<eventfd> <fd of memory.oom_control>" to
        # cgroup.event_control and the eventfd counts every OOM of this group.  The kernel keeps
        # the eventfd (not the control file's fd), and drops the registration when it is closed.
        control = self._file("memory", "memory.oom_control")
        events = self._file("memory", "cgroup.event_control")
        if control is None or events is None:
            return None
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
            try:
                files.write(events, f"{efd} {cfd}")
            finally:
                os.close(cfd)
        except OSError as e:
            os.close(efd)
            raise SetupError("cgroup OOM watch", e.errno, detail=events) from e
        return efd

    def under_oom(self) -> bool:
        control = files.keyed(files.read_opt(self._file("memory", "memory.oom_control") or ""))
        return control.get("under_oom", "0") != "0" or int(control.get("oom_kill", "0")) > 0

    def kill_all(self, timeout: float) -> None:
        freezer = self.set_frozen if "freezer" in self.paths else None
        detail = next(iter(self.paths.values()), "")
        kill_loop(self.procs, freezer, timeout, detail)


def cpuset_ready(directory: str, mountpoint: str) -> tuple[str, str]:
    """Make sure a v1 cpuset directory has cpus and mems (a new one has neither; copy the parent's)."""
    cpus = files.read(directory + "/cpuset.cpus").strip()
    mems = files.read(directory + "/cpuset.mems").strip()
    if (cpus and mems) or directory.rstrip("/") == mountpoint.rstrip("/"):
        return cpus, mems
    parent_cpus, parent_mems = cpuset_ready(os.path.dirname(directory), mountpoint)
    if not cpus:
        files.write(directory + "/cpuset.cpus", parent_cpus)
    if not mems:
        files.write(directory + "/cpuset.mems", parent_mems)
    return cpus or parent_cpus, mems or parent_mems


def controllers(limits: Limits) -> list[str]:
    """The controllers a container with ``limits`` gets a directory in, where they are mounted.

    memory, pids, cpuacct and freezer always (stats, pause, kill); cpu and
    cpuset only for a limit that needs them.
    """
    fields = limit_fields(limits)
    return ["memory", "pids", "cpuacct", "freezer"] + [c for c in ("cpu", "cpuset") if c in fields]


def create(
    layout: CgroupLayout, own: dict[str, str], name: str, limits: Limits, parent: str | None
) -> dict[str, str]:
    fields = limit_fields(limits)
    wanted = controllers(limits)
    for controller in wanted:
        field_ = fields.get(controller)
        if controller not in layout.hierarchies and field_ is not None:
            raise SpecError(field_, f"this host has no cgroup v1 {controller} hierarchy mounted")
    if limits.memory_swap is not None and "memory" not in layout.hierarchies:
        raise SpecError("limits.memory_swap", "this host has no cgroup v1 memory hierarchy mounted")
    # Resolve every directory before creating anything (a bad parent is a SpecError).
    plan: dict[str, tuple[str, str, Hierarchy]] = {}  # controller -> (base, child, hierarchy)
    for controller in wanted:
        if controller not in layout.hierarchies:
            continue
        h = layout.hierarchies[controller]
        base = h.directory(parent_path(own.get(controller, "/"), parent))
        plan[controller] = (base, f"{base}/{name}", h)
    paths: dict[str, str] = {}
    with files.Creation(name) as made:
        cpuset_parent = ("", "")
        for controller, (base, child, h) in plan.items():
            made.path = child
            if controller == "cpuset":  # a new cpuset has no cpus and no mems: copy the parent's
                files.makedirs(base, h.mountpoint)
                cpuset_parent = cpuset_ready(base, h.mountpoint)
            if child not in made.created:
                files.mkdir_child(child, base, h.mountpoint)
                made.created.append(child)
            paths[controller] = child
        if "memory" in paths:
            if limits.memory_bytes is not None:
                files.set_limit(paths["memory"] + "/memory.limit_in_bytes", str(limits.memory_bytes), "limits.memory")
            if limits.memory_swap_bytes is not None:
                files.set_limit(paths["memory"] + "/memory.memsw.limit_in_bytes", str(limits.memory_swap_bytes),
                     "limits.memory_swap")
        if "cpu" in paths:
            if limits.cpus is not None:
                files.set_limit(paths["cpu"] + "/cpu.cfs_period_us", str(CPU_PERIOD_US), "limits.cpus")
                files.set_limit(paths["cpu"] + "/cpu.cfs_quota_us", str(quota(limits.cpus)), "limits.cpus")
            if limits.cpu_weight is not None:
                shares = str(weight_to_shares(limits.cpu_weight))
                files.set_limit(paths["cpu"] + "/cpu.shares", shares, "limits.cpu_weight")
        if "pids" in paths and limits.pids is not None:
            files.set_limit(paths["pids"] + "/pids.max", str(limits.pids), "limits.pids")
        if "cpuset" in paths:
            files.set_limit(paths["cpuset"] + "/cpuset.cpus", limits.cpuset or cpuset_parent[0], "limits.cpuset")
            files.set_limit(paths["cpuset"] + "/cpuset.mems", cpuset_parent[1], None)
    return paths
