"""Where the cgroup hierarchies are, which layout the host uses, and where the caller sits.

/proc/self/mountinfo (man 5 proc) lists every cgroup mount: one ``cgroup2``
mount for the unified tree (cgroup v2), and on v1 or "hybrid" hosts one
``cgroup`` mount per controller (or co-mounted group of controllers, named
in its super options).  /proc/self/cgroup (man 7 cgroups) says which cgroup
the caller is in, per hierarchy.  Together they answer where a container's
cgroup goes: ``<caller's cgroup>/minibox/<id>`` unless a parent is
configured.  ``preflight`` and ``compare`` read the layout from here too.
"""

from __future__ import annotations

import errno
import os

# _record, not dataclasses (which imports inspect, ast, dis...): the same
# frozen classes, without milliseconds of imports in every minibox-oci verb.
from ..._record import field, record
from ...errors import PreflightError, SetupError
from . import files

TYPE_CHECKING = False  # typing and collections.abc cost each fresh interpreter (minibox-oci) milliseconds
if TYPE_CHECKING:
    from typing import Final, Literal

#: Environment variable naming the parent cgroup (see :func:`parent_path`).
PARENT_ENV: Final = "MINIBOX_CGROUP_PARENT"
#: The default parent, relative to the caller's own cgroup.
DEFAULT_PARENT: Final = "minibox"

# v1 controllers minibox uses, in the order it attaches (memory first: when
# attach() moves another process, its first cgroup.procs write pays an RCU
# grace period, the others then cost ~0.03 ms; a child moving itself through
# "tasks" pays none, see Cgroup.self_join_files).  Known v1 controller
# names, to read mount options.
V1_USED: Final = ("memory", "pids", "cpuacct", "freezer", "cpu", "cpuset")
V1_KNOWN: Final = frozenset(
    ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio",
     "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc")
)
# A cgroup2 mount is worth using when it has at least one of these.
V2_USEFUL: Final = frozenset(("memory", "pids", "cpu"))


@record(frozen=True)
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


@record(frozen=True)
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


_OCTAL_DIGITS = frozenset("01234567")


def unescape(field_: str) -> str:
    """A mountinfo field with its ``\\NNN`` octal escapes (space, tab, newline, backslash) decoded."""
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        code = field_[i + 1:i + 4]
        if field_[i] == "\\" and len(code) == 3 and _OCTAL_DIGITS.issuperset(code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


_layouts: dict[tuple[str, str], CgroupLayout] = {}  # a dict, not functools.lru_cache: no functools import


def detect_layout(mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup") -> CgroupLayout:
    """Read the mount table and decide between the v1 and v2 backends (cached)."""
    key = (mountinfo, proc_cgroup)
    if key not in _layouts:
        _layouts[key] = _read_layout(mountinfo, proc_cgroup)
    return _layouts[key]


def _read_layout(mountinfo: str, proc_cgroup: str) -> CgroupLayout:
    """Read the mount table and decide between the v1 and v2 backends.

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
            root, mountpoint = unescape(fields[3]), unescape(fields[4])
            if fstype == "cgroup2":
                if unified is None:
                    text = files.read_opt(os.path.join(mountpoint, "cgroup.controllers")) or ""
                    unified = Hierarchy(mountpoint, root, tuple(text.split()))
                continue
            controllers = tuple(o for o in superopts.split(",") if o in V1_KNOWN)
            hierarchy = Hierarchy(mountpoint, root, controllers)
            for controller in controllers:
                v1.setdefault(controller, hierarchy)
    v1_useful = any(c in v1 for c in V1_USED)
    if unified is not None and (not v1_useful or V2_USEFUL & set(unified.controllers)):
        return CgroupLayout("v2", {"unified": unified}, unified, proc_cgroup)
    if v1_useful:
        return CgroupLayout("v1", v1, unified, proc_cgroup)
    raise PreflightError("no cgroup hierarchy is mounted (see /proc/self/mountinfo); mount cgroup2 at /sys/fs/cgroup")


def own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """The caller's cgroup per v1 controller, and under ``""`` its v2 cgroup (man 7 cgroups)."""
    own: dict[str, str] = {}
    for line in files.read(proc_cgroup).splitlines():
        _hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            own[""] = path
        for controller in controllers.split(","):
            if controller:
                own[controller] = path
    return own


def effective_parent(parent: str | None) -> str:
    return parent if parent is not None else (os.environ.get(PARENT_ENV) or DEFAULT_PARENT)


def parent_path(own_path: str, parent: str | None) -> str:
    """The cgroup path of the parent: absolute parents are used as given, relative ones
    (the default ``minibox``) are placed under the caller's own cgroup."""
    parent = effective_parent(parent)
    parts = [p for p in parent.split("/") if p]
    if any(p in (".", "..") or "\x00" in p for p in parts):
        # the parent is host configuration ($MINIBOX_CGROUP_PARENT), not a Spec field
        raise PreflightError(f"cgroup parent {parent!r} ({PARENT_ENV}) must not contain '.' or '..' components")
    base = "" if parent.startswith("/") else own_path.rstrip("/")
    return base + "/" + "/".join(parts)


def check_name(name: str) -> None:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise SetupError("cgroup", errno.EINVAL,
                         detail=f"{name!r} must be one non-empty path component (the container id)")


def parent_dirs(parent: str | None = None, layout: CgroupLayout | None = None) -> dict[str, str]:
    """Where containers created now by this process would live: controller -> parent directory."""
    if layout is None:
        layout = detect_layout()
    own = own_cgroups(layout.proc_cgroup)
    if layout.kind == "v2":
        return {"unified": layout.hierarchies["unified"].directory(parent_path(own.get("", "/"), parent))}
    return {
        c: layout.hierarchies[c].directory(parent_path(own.get(c, "/"), parent))
        for c in V1_USED if c in layout.hierarchies
    }
