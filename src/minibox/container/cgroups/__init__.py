"""Control groups: how the kernel limits, counts, freezes and kills a group of processes.

A control group (cgroup) is a directory in a special file system; the files in
it are the knobs (``memory.max``, ``pids.max``...) and the counters
(``memory.peak``, ``memory.events``...), and writing a pid to its
``cgroup.procs`` moves that process, and every child it forks later, into the
group.  Two layouts exist on real hosts.  cgroup v2 (one *unified* tree,
Documentation/admin-guide/cgroup-v2.rst) is what modern distributions mount.
cgroup v1 (one tree *per controller*, Documentation/admin-guide/cgroup-v1/
memory.rst, cpusets.rst, freezer-subsystem.rst, pids.rst and the CFS
bandwidth notes in scheduler/sched-bwc.rst) still runs on "hybrid" hosts,
where a cgroup2 mount exists but holds no useful controller.  man 7 cgroups
describes both, and /proc/self/mountinfo (man 5 proc) and /proc/self/cgroup
say which one a host uses and where the caller sits; this module reads them
instead of guessing paths.

Like crun's small table of backends, one :class:`Cgroup` interface drives two
backends, :class:`.v1.V1` and :class:`.v2.V2` (the table :data:`BACKENDS`), which differ only in which files they
touch.  A container's cgroup lives at ``<caller's own cgroup>/minibox/<id>``
(per hierarchy on v1), or under a configured parent; minibox never writes the
settings of the host's root cgroup.  See docs/cgroups.md.
"""

from __future__ import annotations

import errno
import os
import time

from ...errors import SetupError
from ...sandbox import Stats, Usage
from ...spec import Limits
from . import files, v1, v2
from .backend import Backend
from .layout import (
    DEFAULT_PARENT,
    PARENT_ENV,
    CgroupLayout,
    Hierarchy,
    check_name,
    detect_layout,
    own_cgroups,
    parent_dirs,
)
from .v1 import weight_to_shares

__all__ = [
    "DEFAULT_PARENT",
    "PARENT_ENV",
    "Cgroup",
    "CgroupLayout",
    "Hierarchy",
    "detect_layout",
    "parent_dirs",
    "planned_paths",
    "prune_parents",
    "remove_empty_orphans",
    "remove_stale",
    "weight_to_shares",
]

#: The backend table: cgroup version -> the class that knows its files.
BACKENDS: dict[int, type[Backend]] = {1: v1.V1, 2: v2.V2}


class Cgroup:
    """One container's cgroup: a directory per hierarchy (v1) or one directory (v2).

    Call order for a container: :meth:`create` → start the child (v2: inside
    the cgroup via :meth:`clone_into_fd`; v1: the child joins by itself
    through :meth:`self_join_files`; :meth:`attach` moves another process) →
    :meth:`stats`/:meth:`freeze`/:meth:`thaw` while it runs →
    :meth:`oom_killed` and :meth:`usage` once it has ended → :meth:`kill_all`
    → :meth:`remove`.  :meth:`remove` snapshots the OOM verdict and the usage
    first, so both still answer afterwards.
    """

    version: int
    paths: dict[str, str]

    def __init__(self, version: int, paths: dict[str, str]) -> None:
        if version not in (1, 2):
            raise ValueError(f"cgroup version must be 1 or 2, got {version!r}")
        self.version = version
        self.paths = dict(paths)
        self._backend: Backend = BACKENDS[version](self.paths)
        # What snapshot() or remove() read once the container had ended.
        self._removed = False
        self._snapshot_taken = False
        self._final_oom = False
        self._final_usage = Usage()

    def __repr__(self) -> str:
        return f"Cgroup(version={self.version}, paths={self.paths!r})"

    @classmethod
    def create(
        cls,
        name: str,
        limits: Limits,
        *,
        parent: str | None = None,
        layout: CgroupLayout | None = None,
    ) -> Cgroup:
        """Create the cgroup for container ``name`` and write ``limits`` into it.

        ``parent`` (or ``$MINIBOX_CGROUP_PARENT``; default ``minibox``) is a
        cgroup path: relative to the caller's own cgroup as /proc/self/cgroup
        shows it *now*, or absolute from the hierarchy root.  Missing parent
        directories are created and left in place for other containers.

        Raises :class:`SpecError` for a limit this host cannot enforce,
        :class:`PreflightError` when the parent's controllers cannot be
        enabled, and :class:`SetupError` (``step="cgroup"``, the errno, the
        path) for any other failure; whatever was created is removed first.
        """
        check_name(name)
        if layout is None:
            layout = detect_layout()
        own = own_cgroups(layout.proc_cgroup)
        if layout.kind == "v2":
            paths = v2.create(layout, own, name, limits, parent)
            return cls(2, paths)
        return cls(1, v1.create(layout, own, name, limits, parent))

    @classmethod
    def from_paths(cls, version: int, paths: dict[str, str]) -> Cgroup:
        """Rebuild a handle from :attr:`version` and :attr:`paths` (a state file); no I/O."""
        return cls(version, paths)

    def clone_into_fd(self) -> int | None:
        """v2: an ``O_DIRECTORY|O_CLOEXEC`` fd of the cgroup for clone3's
        ``CLONE_INTO_CGROUP`` (the caller closes it); v1: None (use :meth:`attach`)."""
        if self.version != 2:
            return None
        path = self.paths["unified"]
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError("cgroup", e.errno, detail=path) from e

    def self_join_files(self) -> list[str]:
        """The files a process writes ``"0"`` to, to move *itself* into this cgroup (one per directory).

        The spawn's child joins its cgroups this way (csrc/spawn.c, step
        "join cgroup"), through fds the parent opens.  v1: each hierarchy's
        ``tasks``.  Writing "0" there moves only the calling thread, and
        for a thread moving itself the kernel skips the global
        ``cgroup_threadgroup_rwsem`` (cgroup_procs_write_start(): it can
        neither exit nor exec during the move), so it never waits out the
        RCU grace period that a ``cgroup.procs`` write does -- 0.05 ms
        instead of 5-18 ms here.  The child is single-threaded until it
        execs, so the thread is the whole process.  v2: ``cgroup.procs``
        (a thread of a domain cgroup cannot move by itself; v2 prefers
        :meth:`clone_into_fd`, which needs no move at all).
        """
        name = "tasks" if self.version == 1 else "cgroup.procs"
        return [directory + "/" + name for directory in files.unique(self.paths.values())]

    def attach(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup in every hierarchy (one write each)."""
        for directory in files.unique(self.paths.values()):
            path = directory + "/cgroup.procs"
            try:
                files.write(path, str(pid))
            except OSError as e:
                raise SetupError("cgroup attach", e.errno, detail=path) from e

    def procs(self) -> list[int]:
        """The pids in the cgroup (in any of its hierarchies), sorted; [] once it is removed."""
        return self._backend.procs()

    def stats(self) -> Stats:
        """Memory current/peak (bytes), cpu seconds (user+sys), pids now; None where not counted."""
        if self._removed:
            u = self._final_usage
            return Stats(None, u.memory_peak_bytes, u.cpu_seconds, 0)
        return self._backend.stats()

    def usage(self) -> Usage:
        """Peak memory, cpu seconds, peak pids; read it before :meth:`remove` (or after: snapshot)."""
        if self._removed or self._snapshot_taken:
            return self._final_usage
        return self._backend.usage()

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup."""
        if self._removed or self._snapshot_taken:
            return self._final_oom
        return self._backend.oom_killed()

    def snapshot(self) -> None:
        """The container has ended: read the OOM verdict and the usage now, once, and keep them.

        :meth:`oom_killed` and :meth:`usage` answer from the snapshot from
        then on, and :meth:`remove` does not read them again.  An OSError
        (the cgroup is gone) propagates and nothing is kept.
        """
        if self._removed or self._snapshot_taken:
            return
        self._final_oom = self._backend.oom_killed()
        self._final_usage = self._backend.usage()
        self._snapshot_taken = True

    def freeze(self, timeout: float = files.FREEZE_TIMEOUT) -> None:
        """Stop every process of the cgroup and return once the kernel says it is frozen."""
        self._backend.set_frozen(True, timeout)

    def thaw(self, timeout: float = files.FREEZE_TIMEOUT) -> None:
        """Let a frozen cgroup run again; return once it is thawed."""
        self._backend.set_frozen(False, timeout)

    def kill_all(self, timeout: float = files.KILL_TIMEOUT) -> None:
        """SIGKILL every process of the cgroup and return once it is empty.

        v2: ``cgroup.kill``.  v1: freeze, SIGKILL every pid in cgroup.procs,
        thaw, repeat until empty (frozen processes cannot fork or exit, so no
        pid is reused under our feet).  Raises ``SetupError("cgroup kill",
        EBUSY)`` if processes remain after ``timeout`` seconds.
        """
        self._backend.kill_all(timeout)

    def oom_watch(self) -> int | None:
        """A non-blocking, close-on-exec fd that becomes readable when the cgroup runs out of memory.

        v1: an eventfd registered on ``memory.oom_control`` (read it to
        re-arm it); v2: None -- ``memory.oom.group`` makes the kernel kill
        the whole group itself.  The caller closes the fd.  After creating
        it, check :meth:`under_oom`: an OOM that came before it is not counted.
        """
        return self._backend.oom_watch()

    def under_oom(self) -> bool:
        """Whether the cgroup is out of memory now, or was OOM-killed already."""
        return False if self._removed else self._backend.under_oom()

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` once to every process of the cgroup, without freezing or waiting.

        The OOM path's kill: a process stuck in memory reclaim cannot be
        frozen quickly, but a pending SIGKILL lets its charge fail at once.
        """
        self._backend.signal_all(sig)

    def remove(self) -> None:
        """Remove the container's directories (never the shared parent); idempotent.

        The OOM verdict and the usage are read first and kept.  EBUSY from
        rmdir (a process still inside, or still exiting) is retried for about
        100 ms, then raised as ``SetupError("cgroup remove", EBUSY, path)``.
        """
        if not self._removed and not self._snapshot_taken:
            try:
                self.snapshot()
            except (OSError, ValueError):
                pass  # gone already; the verdict is evidence, not a reason to keep the cgroup
        first: OSError | None = None
        failed = ""
        deadline = time.monotonic() + files.REMOVE_BUDGET
        for directory in files.unique(self.paths.values()):
            try:
                files.rmdir_retrying(directory, deadline)
            except OSError as e:
                if first is None:
                    first, failed = e, directory
        if first is not None:
            raise SetupError("cgroup remove", first.errno, detail=failed) from first
        self._removed = True
        # The shared minibox parent goes too once it is empty: left behind, it
        # would keep the caller's own cgroup (on v1 often a per-command memory
        # cgroup) from being removed.  rmdir refuses a parent another
        # container still uses (EBUSY), and create() remakes a parent that
        # disappears under it.
        for parent in files.unique(os.path.dirname(d) for d in self.paths.values()):
            try:
                files.rmdir(parent)
            except OSError:
                pass


def planned_paths(name: str, limits: Limits, parent: str | None = None,
                  layout: CgroupLayout | None = None) -> dict[str, str]:
    """Where :meth:`Cgroup.create` will put container ``name``'s cgroup, per hierarchy, creating nothing.

    The container's record names these before they exist (minibox/records.py),
    so they must be exactly the directories create() makes: a record that
    differs is rewritten, which costs a rename(2) on every start.
    """
    check_name(name)
    if layout is None:
        layout = detect_layout()
    dirs = parent_dirs(parent, layout)
    if layout.kind == "v2":
        return {key: f"{directory}/{name}" for key, directory in dirs.items()}
    return {c: f"{dirs[c]}/{name}" for c in v1.controllers(limits) if c in dirs}


def prune_parents(parent: str | None = None, layout: CgroupLayout | None = None) -> list[str]:
    """rmdir the minibox parent directories that are empty; return those removed.

    Safe while other containers run: rmdir of a cgroup with children fails
    (EBUSY) and :meth:`Cgroup.create` recreates a parent pruned under it.
    """
    removed = []
    for directory in files.unique(parent_dirs(parent, layout).values()):
        try:
            files.rmdir(directory)
            removed.append(directory)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                raise SetupError("cgroup remove", e.errno, detail=directory) from e
    return removed


def remove_empty_orphans(min_age: float = 60.0, parent: str | None = None,
                         layout: CgroupLayout | None = None) -> list[str]:
    """For ``minibox gc``: remove container cgroups that hold no process any more.

    A caller killed between creating a cgroup and recording it in a state
    file leaves a cgroup nobody knows about.  A live container's cgroup
    always holds its init, so an *empty* one is dead -- unless it is being
    set up right now, which ``min_age`` (seconds since the directory was
    made) rules out.  Returns the names removed.
    """
    import time

    now = time.time()
    by_name: dict[str, list[str]] = {}
    for directory in files.unique(parent_dirs(parent, layout).values()):
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                by_name.setdefault(name, []).append(path)
    removed = []
    for name, paths in sorted(by_name.items()):
        try:
            if any(now - os.stat(p).st_mtime < min_age or files.read(os.path.join(p, "cgroup.procs")).strip()
                   for p in paths):
                continue
        except OSError:
            continue  # vanished meanwhile, or not a cgroup: leave it
        for p in paths:
            try:
                files.rmdir(p)
            except OSError:
                pass
        removed.append(name)
    return removed


def remove_stale(version: int, paths: dict[str, str], timeout: float = files.KILL_TIMEOUT) -> bool:
    """For ``minibox gc``: kill whatever is left in a recorded cgroup and remove it.

    Returns whether the cgroup still existed.
    """
    cgroup = Cgroup.from_paths(version, paths)
    existed = any(os.path.isdir(d) for d in paths.values())
    if existed:
        cgroup.kill_all(timeout)
    cgroup.remove()
    return existed
