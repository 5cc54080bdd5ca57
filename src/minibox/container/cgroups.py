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
backends, :class:`_V1` and :class:`_V2`, which differ only in which files they
touch.  A container's cgroup lives at ``<caller's own cgroup>/minibox/<id>``
(per hierarchy on v1), or under a configured parent; minibox never writes the
settings of the host's root cgroup.  See docs/cgroups.md.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ..errors import PreflightError, SetupError, SpecError
from ..sandbox import Stats, Usage
from ..spec import Limits

__all__ = [
    "DEFAULT_PARENT",
    "PARENT_ENV",
    "Cgroup",
    "CgroupLayout",
    "Hierarchy",
    "detect_layout",
    "parent_dirs",
    "prune_parents",
    "remove_stale",
    "weight_to_shares",
]

#: Environment variable naming the parent cgroup (see :func:`_parent_path`).
PARENT_ENV: Final = "MINIBOX_CGROUP_PARENT"
#: The default parent, relative to the caller's own cgroup.
DEFAULT_PARENT: Final = "minibox"
#: CFS bandwidth period (µs) used for ``cpus``: the kernel's and runc's default.
CPU_PERIOD_US: Final = 100_000

# v1 controllers minibox uses, in the order it attaches (memory first: the
# first cgroup.procs write of a process pays an RCU grace period, the others
# then cost ~0.03 ms).  Known v1 controller names, to read mount options.
_V1_USED: Final = ("memory", "pids", "cpuacct", "freezer", "cpu", "cpuset")
_V1_KNOWN: Final = frozenset(
    ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
     "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc")
)
# A cgroup2 mount is worth using when it has at least one of these.
_V2_USEFUL: Final = frozenset(("memory", "pids", "cpu"))
# Bounds: every wait in this module ends.
_REMOVE_BACKOFF: Final = (0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.04)
_REMOVE_BUDGET: Final = 0.1  # seconds of EBUSY retries per remove(), for all its directories
_FREEZE_TIMEOUT: Final = 2.0
_KILL_TIMEOUT: Final = 5.0


# --- file primitives (the unit tests replace these to imitate cgroupfs) -----------


def _mkdir(path: str) -> None:
    os.mkdir(path, 0o755)


def _rmdir(path: str) -> None:
    os.rmdir(path)


def _write(path: str, value: str) -> None:
    """One write(2) of ``value``: cgroupfs parses each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def _read_opt(path: str) -> str | None:
    """The file's text, or None when the file (or the cgroup) does not exist."""
    try:
        return _read(path)
    except FileNotFoundError:
        return None


def _int_opt(path: str) -> int | None:
    text = _read_opt(path)
    if text is None or not text.strip():
        return None
    value = text.split()[0]
    return None if value == "max" else int(value)


def _keyed(text: str | None) -> dict[str, str]:
    """Parse flat keyed files: ``memory.events``, ``cpu.stat``, ``memory.oom_control``."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


# --- layout detection ------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy, as /proc/self/mountinfo describes it."""

    mountpoint: str                 # where it is mounted, e.g. /sys/fs/cgroup/memory
    root: str                       # the cgroup mounted there (mountinfo field 4), usually "/"
    controllers: tuple[str, ...]    # v1: ("cpu", "cpuacct"); v2: what cgroup.controllers lists

    def directory(self, cgroup_path: str) -> str:
        """The directory of cgroup ``cgroup_path`` (as /proc/self/cgroup names it) in this mount."""
        path = "/" + cgroup_path.strip("/")
        root = "/" + self.root.strip("/")
        if root != "/":
            if path != root and not path.startswith(root + "/"):
                raise PreflightError(
                    f"cgroup {path} is not visible in the cgroup mount at {self.mountpoint} "
                    f"(which shows {root}); set {PARENT_ENV} to a cgroup under {root}"
                )
            path = path[len(root):] or "/"
        return self.mountpoint.rstrip("/") + (path if path != "/" else "")


@dataclass(frozen=True)
class CgroupLayout:
    """Which cgroup layout this host uses, and where its hierarchies are mounted.

    ``kind`` is ``"v2"`` (one unified tree) or ``"v1"`` (one tree per
    controller; also a hybrid host whose cgroup2 mount has no useful
    controller).  ``hierarchies`` maps a controller name (v1) or
    ``"unified"`` (v2) to its mount.  ``proc_cgroup`` is the file read at
    each :meth:`Cgroup.create` to learn the caller's own cgroup.
    """

    kind: Literal["v1", "v2"]
    hierarchies: dict[str, Hierarchy] = field(default_factory=dict)
    unified: Hierarchy | None = None
    proc_cgroup: str = "/proc/self/cgroup"

    @property
    def version(self) -> int:
        return 2 if self.kind == "v2" else 1

    def __str__(self) -> str:
        return self.kind


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field_: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_)


@functools.lru_cache(maxsize=4)
def detect_layout(mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup") -> CgroupLayout:
    """Read the mount table and decide between the v1 and v2 backends (cached).

    A cgroup2 mount is used when it offers memory, pids or cpu, or when no v1
    hierarchy exists at all; otherwise the v1 hierarchies are (a hybrid host
    whose cgroup2 mount holds only e.g. hugetlb counts as v1).
    """
    v1: dict[str, Hierarchy] = {}
    unified: Hierarchy | None = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fstype, _source, superopts = [*right.split(), "", "", ""][:3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            fields = left.split()
            root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
            if fstype == "cgroup2":
                if unified is None:
                    text = _read_opt(os.path.join(mountpoint, "cgroup.controllers")) or ""
                    unified = Hierarchy(mountpoint, root, tuple(text.split()))
                continue
            controllers = tuple(o for o in superopts.split(",") if o in _V1_KNOWN)
            hierarchy = Hierarchy(mountpoint, root, controllers)
            for controller in controllers:
                v1.setdefault(controller, hierarchy)
    v1_useful = any(c in v1 for c in _V1_USED)
    if unified is not None and (not v1_useful or _V2_USEFUL & set(unified.controllers)):
        return CgroupLayout("v2", {"unified": unified}, unified, proc_cgroup)
    if v1_useful:
        return CgroupLayout("v1", v1, unified, proc_cgroup)
    raise PreflightError("no cgroup hierarchy is mounted (see /proc/self/mountinfo); mount cgroup2 at /sys/fs/cgroup")


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """The caller's cgroup per v1 controller, and under ``""`` its v2 cgroup (man 7 cgroups)."""
    own: dict[str, str] = {}
    for line in _read(proc_cgroup).splitlines():
        _hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            own[""] = path
        for controller in controllers.split(","):
            if controller:
                own[controller] = path
    return own


def _effective_parent(parent: str | None) -> str:
    return parent if parent is not None else (os.environ.get(PARENT_ENV) or DEFAULT_PARENT)


def _parent_path(own_path: str, parent: str | None) -> str:
    """The cgroup path of the parent: absolute parents are used as given, relative ones
    (the default ``minibox``) are placed under the caller's own cgroup."""
    parent = _effective_parent(parent)
    parts = [p for p in parent.split("/") if p]
    if any(p in (".", "..") or "\x00" in p for p in parts):
        raise SpecError("cgroup parent", f"{parent!r} must not contain '.' or '..' components")
    base = "" if parent.startswith("/") else own_path.rstrip("/")
    return base + "/" + "/".join(parts)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise SpecError("cgroup name", f"{name!r} must be one non-empty path component (the container id)")


def weight_to_shares(weight: int) -> int:
    """Convert a cgroup v2 ``cpu.weight`` (1..10000) to v1 ``cpu.shares`` (2..262144).

    This inverts the formula runc and crun use to go the other way
    (``weight = 1 + (shares - 2) * 9999 // 262142``), rounding up so that a
    round trip gives the same weight back.  Note that it maps weight 100 (the
    v2 default) to 2598 shares, not to the v1 default of 1024.
    """
    return 2 + -(-(weight - 1) * 262142 // 9999)


# --- the interface ----------------------------------------------------------------


class Cgroup:
    """One container's cgroup: a directory per hierarchy (v1) or one directory (v2).

    Call order for a container: :meth:`create` → start the child (v2: inside
    the cgroup via :meth:`clone_into_fd`; v1: :meth:`attach` before its go
    signal) → :meth:`stats`/:meth:`freeze`/:meth:`thaw` while it runs →
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
        self._backend: _Backend = _V2(self.paths) if version == 2 else _V1(self.paths)
        # What remove() read just before the directories went away.
        self._removed = False
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
        _check_name(name)
        if layout is None:
            layout = detect_layout()
        own = _own_cgroups(layout.proc_cgroup)
        if layout.kind == "v2":
            paths = _create_v2(layout, own, name, limits, parent)
            return cls(2, paths)
        return cls(1, _create_v1(layout, own, name, limits, parent))

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

    def attach(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup in every hierarchy (one write each)."""
        for directory in _unique(self.paths.values()):
            path = directory + "/cgroup.procs"
            try:
                _write(path, str(pid))
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
        if self._removed:
            return self._final_usage
        return self._backend.usage()

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup."""
        if self._removed:
            return self._final_oom
        return self._backend.oom_killed()

    def freeze(self, timeout: float = _FREEZE_TIMEOUT) -> None:
        """Stop every process of the cgroup and return once the kernel says it is frozen."""
        self._backend.set_frozen(True, timeout)

    def thaw(self, timeout: float = _FREEZE_TIMEOUT) -> None:
        """Let a frozen cgroup run again; return once it is thawed."""
        self._backend.set_frozen(False, timeout)

    def kill_all(self, timeout: float = _KILL_TIMEOUT) -> None:
        """SIGKILL every process of the cgroup and return once it is empty.

        v2: ``cgroup.kill``.  v1: freeze, SIGKILL every pid in cgroup.procs,
        thaw, repeat until empty (frozen processes cannot fork or exit, so no
        pid is reused under our feet).  Raises ``SetupError("cgroup kill",
        EBUSY)`` if processes remain after ``timeout`` seconds.
        """
        self._backend.kill_all(timeout)

    def remove(self) -> None:
        """Remove the container's directories (never the shared parent); idempotent.

        The OOM verdict and the usage are read first and kept.  EBUSY from
        rmdir (a process still inside, or still exiting) is retried for about
        100 ms, then raised as ``SetupError("cgroup remove", EBUSY, path)``.
        """
        if not self._removed and any(os.path.isdir(d) for d in self.paths.values()):
            try:
                self._final_oom = self._backend.oom_killed()
                self._final_usage = self._backend.usage()
            except (OSError, ValueError):
                pass  # the verdict is evidence, not a reason to keep the cgroup
        first: OSError | None = None
        failed = ""
        deadline = time.monotonic() + _REMOVE_BUDGET
        for directory in _unique(self.paths.values()):
            try:
                _rmdir_retrying(directory, deadline)
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
        for parent in _unique(os.path.dirname(d) for d in self.paths.values()):
            try:
                _rmdir(parent)
            except OSError:
                pass


def _unique(dirs: Iterable[str]) -> list[str]:
    """Directories once each, in order (co-mounted v1 controllers share one)."""
    return list(dict.fromkeys(dirs))


def _rmdir_retrying(directory: str, deadline: float | None = None) -> None:
    """rmdir, retrying EBUSY (a process still exiting) with a short backoff until ``deadline``."""
    if deadline is None:
        deadline = time.monotonic() + _REMOVE_BUDGET
    for delay in _REMOVE_BACKOFF:
        try:
            _rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
    _rmdir(directory)


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _kill_loop(
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
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen and set_frozen is not None:
            set_frozen(False, 0.5)
        if not pids:
            return
        remaining = deadline - time.monotonic()
        if _wait_until(lambda: not procs(), max(0.0, min(0.2, remaining))):
            return
        if time.monotonic() >= deadline:
            raise SetupError("cgroup kill", errno.EBUSY, detail=detail)


# --- the two backends -------------------------------------------------------------


class _Backend:
    """What differs between the layouts: which files hold the counters and switches."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def procs(self) -> list[int]:
        pids: set[int] = set()
        for directory in _unique(self.paths.values()):
            pids.update(int(p) for p in (_read_opt(directory + "/cgroup.procs") or "").split())
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


class _V1(_Backend):
    """cgroup v1: one directory per controller (Documentation/admin-guide/cgroup-v1/)."""

    def _file(self, controller: str, name: str) -> str | None:
        directory = self.paths.get(controller)
        return None if directory is None else f"{directory}/{name}"

    def _int(self, controller: str, name: str) -> int | None:
        path = self._file(controller, name)
        return None if path is None else _int_opt(path)

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
        control = _keyed(_read_opt(path))
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
            _write(path, want)

            def reached() -> bool:
                state = _read(path).strip()
                if state != want and frozen:
                    _write(path, want)  # FREEZING: ask again, as runc does
                return state == want

            if _wait_until(reached, timeout):
                return
            if frozen:
                _write(path, "THAWED")  # never leave it half frozen
        except OSError as e:
            raise SetupError(step, e.errno, detail=path) from e
        raise SetupError(step, errno.ETIMEDOUT, detail=path)

    def kill_all(self, timeout: float) -> None:
        freezer = self.set_frozen if "freezer" in self.paths else None
        detail = next(iter(self.paths.values()), "")
        _kill_loop(self.procs, freezer, timeout, detail)


class _V2(_Backend):
    """cgroup v2: one directory with every controller's files (Documentation/admin-guide/cgroup-v2.rst)."""

    @property
    def dir(self) -> str:
        return self.paths["unified"]

    def _cpu_seconds(self) -> float | None:
        usec = _keyed(_read_opt(self.dir + "/cpu.stat")).get("usage_usec")
        return None if usec is None else int(usec) / 1e6

    def stats(self) -> Stats:
        return Stats(
            memory_bytes=_int_opt(self.dir + "/memory.current"),
            memory_peak_bytes=_int_opt(self.dir + "/memory.peak"),  # since Linux 5.19
            cpu_seconds=self._cpu_seconds(),
            pids=_int_opt(self.dir + "/pids.current"),
        )

    def usage(self) -> Usage:
        return Usage(
            memory_peak_bytes=_int_opt(self.dir + "/memory.peak"),
            cpu_seconds=self._cpu_seconds(),
            pids_peak=_int_opt(self.dir + "/pids.peak"),
        )

    def oom_killed(self) -> bool:
        return int(_keyed(_read_opt(self.dir + "/memory.events")).get("oom_kill", "0")) > 0

    def set_frozen(self, frozen: bool, timeout: float) -> None:
        step = "cgroup freeze" if frozen else "cgroup thaw"
        path = self.dir + "/cgroup.freeze"
        want = "1" if frozen else "0"
        try:
            _write(path, want)
            if _wait_until(lambda: _keyed(_read(self.dir + "/cgroup.events")).get("frozen") == want, timeout):
                return
            if frozen:
                _write(path, "0")
        except OSError as e:
            raise SetupError(step, e.errno, detail=path) from e
        raise SetupError(step, errno.ETIMEDOUT, detail=path)

    def kill_all(self, timeout: float) -> None:
        path = self.dir + "/cgroup.kill"
        try:
            _write(path, "1")  # since Linux 5.14: the kernel kills them all, forks included
        except FileNotFoundError:
            if not os.path.isdir(self.dir):
                return
            _kill_loop(self.procs, self.set_frozen, timeout, self.dir)
            return
        except OSError as e:
            raise SetupError("cgroup kill", e.errno, detail=path) from e
        if not _wait_until(lambda: not self.procs(), timeout):
            raise SetupError("cgroup kill", errno.EBUSY, detail=self.dir)


# --- creation ---------------------------------------------------------------------


def _set(path: str, value: str, spec_field: str | None) -> None:
    """Write one limit; a value or file the host refuses is the caller's SpecError."""
    try:
        _write(path, value)
    except FileNotFoundError as e:
        if spec_field is None:
            raise SetupError("cgroup", e.errno, detail=path) from e
        raise SpecError(spec_field, f"this host cannot enforce it: {path} does not exist{_missing_hint(path)}") from e
    except OSError as e:
        if spec_field is not None and e.errno in (errno.EINVAL, errno.ERANGE):
            raise SpecError(spec_field, f"the kernel refused {value!r} in {path}: {os.strerror(e.errno)}") from e
        raise SetupError("cgroup", e.errno, detail=path) from e


def _missing_hint(path: str) -> str:
    if path.endswith(("memory.memsw.limit_in_bytes", "memory.swap.max")):
        return " (swap accounting is off in this kernel; leave memory_swap unset)"
    return ""


def _makedirs(path: str, stop: str) -> None:
    """Create ``path`` and its missing parents below ``stop`` (which must exist)."""
    missing: list[str] = []
    current = path
    while current != stop and len(current) > len(stop) and not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            _mkdir(directory)
        except FileExistsError:
            pass


def _mkdir_child(child: str, base: str, stop: str) -> None:
    """mkdir the container's directory, creating the parent on first use (or after a prune)."""
    for _ in range(3):
        try:
            _mkdir(child)
            return
        except FileNotFoundError:
            _makedirs(base, stop)
    _mkdir(child)


class _Creation:
    """A cgroup being created: what exists so far, removed again if creation fails.

    Both backends use it the same way: ``created`` lists the directories made,
    ``path`` is the one being worked on (for the error message).  A SpecError,
    SetupError or PreflightError passes through; an OSError becomes
    ``SetupError("cgroup", errno, path)``.  Either way nothing is left behind.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.created: list[str] = []
        self.path = ""

    def __enter__(self) -> _Creation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None:
            return
        _cleanup(self.created)
        if isinstance(error, OSError):
            if error.errno == errno.EEXIST:
                detail = f"{self.path} (a container named {self.name!r} exists)"
            else:
                detail = error.filename or self.path
            raise SetupError("cgroup", error.errno, detail=detail) from error


def _cleanup(created: Sequence[str]) -> None:
    for directory in reversed(created):
        try:
            _rmdir_retrying(directory)
        except OSError:
            pass


def _limit_fields(limits: Limits) -> dict[str, str | None]:
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


def _quota(cpus: float) -> int:
    return max(1000, round(cpus * CPU_PERIOD_US))  # the kernel's minimum quota is 1 ms


def _v1_cpuset_ready(directory: str, mountpoint: str) -> tuple[str, str]:
    """Make sure a v1 cpuset directory has cpus and mems (a new one has neither; copy the parent's)."""
    cpus = _read(directory + "/cpuset.cpus").strip()
    mems = _read(directory + "/cpuset.mems").strip()
    if (cpus and mems) or directory.rstrip("/") == mountpoint.rstrip("/"):
        return cpus, mems
    parent_cpus, parent_mems = _v1_cpuset_ready(os.path.dirname(directory), mountpoint)
    if not cpus:
        _write(directory + "/cpuset.cpus", parent_cpus)
    if not mems:
        _write(directory + "/cpuset.mems", parent_mems)
    return cpus or parent_cpus, mems or parent_mems


def _create_v1(
    layout: CgroupLayout, own: dict[str, str], name: str, limits: Limits, parent: str | None
) -> dict[str, str]:
    fields = _limit_fields(limits)
    wanted = ["memory", "pids", "cpuacct", "freezer"]
    wanted += [c for c in ("cpu", "cpuset") if c in fields]
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
        base = h.directory(_parent_path(own.get(controller, "/"), parent))
        plan[controller] = (base, f"{base}/{name}", h)
    paths: dict[str, str] = {}
    with _Creation(name) as made:
        cpuset_parent = ("", "")
        for controller, (base, child, h) in plan.items():
            made.path = child
            if controller == "cpuset":  # a new cpuset has no cpus and no mems: copy the parent's
                _makedirs(base, h.mountpoint)
                cpuset_parent = _v1_cpuset_ready(base, h.mountpoint)
            if child not in made.created:
                _mkdir_child(child, base, h.mountpoint)
                made.created.append(child)
            paths[controller] = child
        if "memory" in paths:
            if limits.memory_bytes is not None:
                _set(paths["memory"] + "/memory.limit_in_bytes", str(limits.memory_bytes), "limits.memory")
            if limits.memory_swap_bytes is not None:
                _set(paths["memory"] + "/memory.memsw.limit_in_bytes", str(limits.memory_swap_bytes),
                     "limits.memory_swap")
        if "cpu" in paths:
            if limits.cpus is not None:
                _set(paths["cpu"] + "/cpu.cfs_period_us", str(CPU_PERIOD_US), "limits.cpus")
                _set(paths["cpu"] + "/cpu.cfs_quota_us", str(_quota(limits.cpus)), "limits.cpus")
            if limits.cpu_weight is not None:
                _set(paths["cpu"] + "/cpu.shares", str(weight_to_shares(limits.cpu_weight)), "limits.cpu_weight")
        if "pids" in paths and limits.pids is not None:
            _set(paths["pids"] + "/pids.max", str(limits.pids), "limits.pids")
        if "cpuset" in paths:
            _set(paths["cpuset"] + "/cpuset.cpus", limits.cpuset or cpuset_parent[0], "limits.cpuset")
            _set(paths["cpuset"] + "/cpuset.mems", cpuset_parent[1], None)
    return paths


def _v2_enable(chain: Sequence[str], fields: dict[str, str | None], root_dir: str) -> None:
    """Enable the wanted controllers in each ``cgroup.subtree_control`` from the top of
    ``chain`` down to the container's parent; optional ones that are unavailable are dropped."""
    wanted = dict(fields)
    for directory in chain:
        current = set(_read(directory + "/cgroup.subtree_control").split())
        missing = [c for c in wanted if c not in current]
        if not missing:
            continue
        available = set(_read(directory + "/cgroup.controllers").split())
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
            _write(directory + "/cgroup.subtree_control", " ".join("+" + c for c in missing))
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise PreflightError(
                    f"cannot enable {names} in {directory}: it holds processes, and cgroup v2 gives controllers "
                    f"to children only of cgroups without processes of their own; set {PARENT_ENV} to an empty "
                    "cgroup delegated to minibox (e.g. a systemd unit with Delegate=yes)"
                ) from e
            raise SetupError("cgroup", e.errno, detail=directory + "/cgroup.subtree_control") from e


def _create_v2(
    layout: CgroupLayout, own: dict[str, str], name: str, limits: Limits, parent: str | None
) -> dict[str, str]:
    h = layout.hierarchies["unified"]
    own_path = own.get("", "/")
    parent_path = _parent_path(own_path, parent)
    # The chain of subtree_control files to check starts at the caller's own
    # cgroup for a relative parent, at the hierarchy root for an absolute one.
    top_path = "/" if _effective_parent(parent).startswith("/") else own_path
    top = h.directory(top_path)
    base = h.directory(parent_path)
    child = f"{base}/{name}"
    chain = [top]
    for part in base[len(top):].strip("/").split("/"):
        if part:
            chain.append(f"{chain[-1]}/{part}")
    fields = _limit_fields(limits)
    with _Creation(name) as made:
        made.path = base
        for directory in chain[1:]:
            made.path = directory
            try:
                _mkdir(directory)
            except FileExistsError:
                pass
        _v2_enable(chain, fields, h.directory("/"))
        made.path = child
        _mkdir_child(child, base, top)
        made.created.append(child)
        if limits.memory_bytes is not None:
            _set(child + "/memory.max", str(limits.memory_bytes), "limits.memory")
            if limits.memory_swap_bytes is not None:
                swap = limits.memory_swap_bytes - limits.memory_bytes
                _set(child + "/memory.swap.max", str(swap), "limits.memory_swap")
        if limits.cpus is not None:
            _set(child + "/cpu.max", f"{_quota(limits.cpus)} {CPU_PERIOD_US}", "limits.cpus")
        if limits.cpu_weight is not None:
            _set(child + "/cpu.weight", str(limits.cpu_weight), "limits.cpu_weight")
        if limits.pids is not None:
            _set(child + "/pids.max", str(limits.pids), "limits.pids")
        if limits.cpuset is not None:
            _set(child + "/cpuset.cpus", limits.cpuset, "limits.cpuset")
    return {"unified": child}


# --- helpers for gc and tests -----------------------------------------------------


def parent_dirs(parent: str | None = None, layout: CgroupLayout | None = None) -> dict[str, str]:
    """Where containers created now by this process would live: controller -> parent directory."""
    if layout is None:
        layout = detect_layout()
    own = _own_cgroups(layout.proc_cgroup)
    if layout.kind == "v2":
        return {"unified": layout.hierarchies["unified"].directory(_parent_path(own.get("", "/"), parent))}
    return {
        c: layout.hierarchies[c].directory(_parent_path(own.get(c, "/"), parent))
        for c in _V1_USED if c in layout.hierarchies
    }


def prune_parents(parent: str | None = None, layout: CgroupLayout | None = None) -> list[str]:
    """rmdir the minibox parent directories that are empty; return those removed.

    Safe while other containers run: rmdir of a cgroup with children fails
    (EBUSY) and :meth:`Cgroup.create` recreates a parent pruned under it.
    """
    removed = []
    for directory in _unique(parent_dirs(parent, layout).values()):
        try:
            _rmdir(directory)
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
    for directory in _unique(parent_dirs(parent, layout).values()):
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
            if any(now - os.stat(p).st_mtime < min_age or _read(os.path.join(p, "cgroup.procs")).strip()
                   for p in paths):
                continue
        except OSError:
            continue  # vanished meanwhile, or not a cgroup: leave it
        for p in paths:
            try:
                _rmdir(p)
            except OSError:
                pass
        removed.append(name)
    return removed


def remove_stale(version: int, paths: dict[str, str], timeout: float = _KILL_TIMEOUT) -> bool:
    """For ``minibox gc``: kill whatever is left in a recorded cgroup and remove it.

    Returns whether the cgroup still existed.
    """
    cgroup = Cgroup.from_paths(version, paths)
    existed = any(os.path.isdir(d) for d in paths.values())
    if existed:
        cgroup.kill_all(timeout)
    cgroup.remove()
    return existed
