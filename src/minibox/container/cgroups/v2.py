"""cgroup v2: one unified tree (Documentation/admin-guide/cgroup-v2.rst).

A v2 container has one directory holding every controller's files
(memory.max, pids.max, cpu.max, cpu.weight, cpuset.cpus, cgroup.freeze,
cgroup.kill).  A controller reaches a child only when every ancestor lists
it in ``cgroup.subtree_control``, and only cgroups without processes of
their own may hand controllers down ("no internal processes").  The limit
table is in :func:`create`.
"""

from __future__ import annotations

import errno
import os

from ..._lean import suppress
from ...errors import PreflightError, SetupError, SpecError
from ...sandbox import Stats, Usage
from ...spec import Limits
from . import files
from .backend import CPU_PERIOD_US, Backend, kill_loop, limit_fields, quota
from .layout import PARENT_ENV, CgroupLayout, effective_parent, parent_path

TYPE_CHECKING = False  # typing and collections.abc cost each fresh interpreter (minibox-oci) milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence


class V2(Backend):
    """cgroup v2: one directory with every controller's files (Documentation/admin-guide/cgroup-v2.rst)."""

    @property
    def dir(self) -> str:
        return self.paths["unified"]

    def _cpu_seconds(self) -> float | None:
        usec = files.keyed(files.read_opt(self.dir + "/cpu.stat")).get("usage_usec")
        return None if usec is None else int(usec) / 1e6

    def stats(self) -> Stats:
        return Stats(
            memory_bytes=files.int_opt(self.dir + "/memory.current"),
            memory_peak_bytes=files.int_opt(self.dir + "/memory.peak"),  # since Linux 5.19
            cpu_seconds=self._cpu_seconds(),
            pids=files.int_opt(self.dir + "/pids.current"),
        )

    def usage(self) -> Usage:
        return Usage(
            memory_peak_bytes=files.int_opt(self.dir + "/memory.peak"),
            cpu_seconds=self._cpu_seconds(),
            pids_peak=files.int_opt(self.dir + "/pids.peak"),
        )

    def oom_killed(self) -> bool:
        return int(files.keyed(files.read_opt(self.dir + "/memory.events")).get("oom_kill", "0")) > 0

    def set_frozen(self, frozen: bool, timeout: float) -> None:
        step = "cgroup freeze" if frozen else "cgroup thaw"
        path = self.dir + "/cgroup.freeze"
        want = "1" if frozen else "0"
        try:
            files.write(path, want)
            events = self.dir + "/cgroup.events"
            if files.wait_until(lambda: files.keyed(files.read(events)).get("frozen") == want, timeout):
                return
            if frozen:
                files.write(path, "0")
        except OSError as e:
            raise SetupError(step, e.errno, detail=path) from e
        raise SetupError(step, errno.ETIMEDOUT, detail=path)

    def kill_all(self, timeout: float) -> None:
        path = self.dir + "/cgroup.kill"
        try:
            files.write(path, "1")  # since Linux 5.14: the kernel kills them all, forks included
        except FileNotFoundError:
            if not os.path.isdir(self.dir):
                return
            kill_loop(self.procs, self.set_frozen, timeout, self.dir)
            return
        except OSError as e:
            raise SetupError("cgroup kill", e.errno, detail=path) from e
        if not files.wait_until(lambda: not self.procs(), timeout):
            raise SetupError("cgroup kill", errno.EBUSY, detail=self.dir)


def enable_controllers(chain: Sequence[str], fields: dict[str, str | None], root_dir: str) -> None:
    """Enable the wanted controllers in each ``cgroup.subtree_control`` from the top of
    ``chain`` down to the container's parent; optional ones that are unavailable are dropped."""
    wanted = dict(fields)
    for directory in chain:
        current = set(files.read(directory + "/cgroup.subtree_control").split())
        missing = [c for c in wanted if c not in current]
        if not missing:
            continue
        available = set(files.read(directory + "/cgroup.controllers").split())
        for controller in [c for c in missing if c not in available]:
            field_ = wanted.pop(controller)
            if field_ is not None:
                raise SpecError(field_, f"the {controller} controller is not available in {directory} "
                                        "(cgroup.controllers lacks it)")
        missing = [c for c in missing if c in available]
        if not missing:
            continue
        names = " ".join(missing)
        if directory.rstrip("/") == root_dir.rstrip("/"):
            raise PreflightError(
                f"controllers {names} are not enabled in the root cgroup ({directory}/cgroup.subtree_control) "
                f"and minibox does not change the host's root cgroup; enable them there or set {PARENT_ENV} "
                "to a cgroup delegated to minibox"
            )
        try:
            files.write(directory + "/cgroup.subtree_control", " ".join("+" + c for c in missing))
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise PreflightError(
                    f"cannot enable {names} in {directory}: it holds processes, and cgroup v2 gives controllers "
                    f"to children only of cgroups without processes of their own; set {PARENT_ENV} to an empty "
                    "cgroup delegated to minibox (e.g. a systemd unit with Delegate=yes)"
                ) from e
            raise SetupError("cgroup", e.errno, detail=directory + "/cgroup.subtree_control") from e


def create(
    layout: CgroupLayout, own: dict[str, str], name: str, limits: Limits, parent: str | None
) -> dict[str, str]:
    h = layout.hierarchies["unified"]
    own_path = own.get("", "/")
    parent_dir_path = parent_path(own_path, parent)
    # The chain of subtree_control files to check starts at the caller's own
    # cgroup for a relative parent, at the hierarchy root for an absolute one.
    top_path = "/" if effective_parent(parent).startswith("/") else own_path
    top = h.directory(top_path)
    base = h.directory(parent_dir_path)
    child = f"{base}/{name}"
    chain = [top]
    for part in base[len(top):].strip("/").split("/"):
        if part:
            chain.append(f"{chain[-1]}/{part}")
    fields = limit_fields(limits)
    with files.Creation(name) as made:
        made.path = base
        for directory in chain[1:]:
            made.path = directory
            try:
                files.mkdir(directory)
            except FileExistsError:
                pass
        enable_controllers(chain, fields, h.directory("/"))
        made.path = child
        files.mkdir_child(child, base, top)
        made.created.append(child)
        if limits.memory_bytes is not None:
            files.set_limit(child + "/memory.max", str(limits.memory_bytes), "limits.memory")
            # An OOM kill ends the whole container, as on v1 (Container.wait kills the group on
            # the OOM event): cgroup-v2.rst, memory.oom.group.  A victim stuck behind a lock that
            # a member in reclaim holds would otherwise wait for the OOM reaper (docs/cgroups.md).
            with suppress(FileNotFoundError):  # before Linux 4.19
                files.write(child + "/memory.oom.group", "1")
            if limits.memory_swap_bytes is not None:
                swap = limits.memory_swap_bytes - limits.memory_bytes
                files.set_limit(child + "/memory.swap.max", str(swap), "limits.memory_swap")
        if limits.cpus is not None:
            files.set_limit(child + "/cpu.max", f"{quota(limits.cpus)} {CPU_PERIOD_US}", "limits.cpus")
        if limits.cpu_weight is not None:
            files.set_limit(child + "/cpu.weight", str(limits.cpu_weight), "limits.cpu_weight")
        if limits.pids is not None:
            files.set_limit(child + "/pids.max", str(limits.pids), "limits.pids")
        if limits.cpuset is not None:
            files.set_limit(child + "/cpuset.cpus", limits.cpuset, "limits.cpuset")
    return {"unified": child}
