"""The container's root file system: the ordered mount plan and pivot_root.

Kernel features: mount namespaces and propagation (mount_namespaces(7)),
bind mounts and read-only remounts (mount(2)), the pseudo file systems a
process expects (proc(5), sysfs(5), devpts, tmpfs(5)), and pivot_root(2).

Like bubblewrap, the setup is a list of small, ordered steps.  Python
builds the list here, as plain data; the C child (csrc/spawn.c) executes it
in the new mount namespace, before pivot_root makes the rootfs ``/``.  When
the rootfs is minibox's shared image, the root itself is built first: an
overlay with a private tmpfs layer (:func:`overlay_root`).  Then:

1. ``/proc``: a fresh procfs, which in a new pid namespace shows only the
   container's processes.
2. ``/sys``: sysfs, read-only.
3. ``/dev``: a small tmpfs with only harmless device nodes (null, zero,
   full, random, urandom, tty) bind-mounted from the host, a private devpts
   instance for ptys, /dev/shm, and the fd/stdin/stdout/stderr links.
4. the Spec's own mounts (bind, tmpfs), in order.
5. masked and read-only paths under /proc and /sys (see docs/hardening.md).

Every path in the plan is a path *inside* a root, and the child resolves it
there through file descriptors (csrc/rootfs.c: openat2 with
RESOLVE_IN_ROOT, mounts made detached and moved onto the target's fd), so
a symlink in the rootfs -- planted early, or swapped in by another
container on the same rootfs while this one starts -- leads inside the
rootfs, never to the host.  A step below a mount minibox made resolves
from that mount (its *base*, see :func:`anchored`), not from the rootfs
again.  docs/rootfs.md tells the race this closes (CVE-2021-30465).
"""

from __future__ import annotations

import os
import stat

from .._native import lib
from .._record import record
from ..spec import DEFAULT_TMPFS_SIZE, Mount, Spec

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# Op kinds: csrc/spawn.h enum mb_op_kind
OP_MOUNT: int = lib.MB_OP_MOUNT        # a new file system (proc, tmpfs...)
OP_BIND: int = lib.MB_OP_BIND          # a bind mount, its flags set before it is attached
OP_MKDIR: int = lib.MB_OP_MKDIR
OP_TOUCH: int = lib.MB_OP_TOUCH
OP_SYMLINK: int = lib.MB_OP_SYMLINK
OP_WRITE: int = lib.MB_OP_WRITE        # write data into a file (a sysctl)
WRITE_AS_PID1: int = lib.MB_WRITE_PID1  # OP_WRITE flag: only as pid 1 of a new pid namespace
# The flags a bind takes on its detached mount (mount_setattr(2))
BIND_ATTRS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
             ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"),
             ("pts/ptmx", "ptmx"))

# Paths a default container must not read (they leak host kernel state) and
# paths it must not write; the lists of the OCI/Docker defaults.
MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                "/proc/latency_stats", "/proc/timer_stats")
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware", "/proc/asound")
READONLY_PATHS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


@record(frozen=True)
class MountOp:
    """One step of the mount plan; mirrors ``struct mb_op`` in csrc/spawn.h.

    ``target`` (and ``source`` when ``source_in_root``) is a path as the
    container will see it.  ``base`` is the index of the earlier mount the
    path lies below (-1: the root); :func:`anchored` fills it in, and the
    child resolves ``relative_target()`` from there.
    """

    kind: int
    target: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0o755
    optional: bool = False
    source_in_root: bool = False
    base: int = -1
    base_path: str = ""
    #: a host source opened with no symlink followed (csrc: MB_SOURCE_NO_SYMLINKS): the API's binds
    source_no_symlinks: bool = False

    def relative_target(self) -> str:
        return self.target[len(self.base_path):] or "/"

    def relative_source(self) -> str | None:
        if self.source is None or not self.source_in_root:
            return self.source
        return self.source[len(self.base_path):] or "/"

    def describe(self) -> str:
        """Human words for error messages, after the step's name: 'mount proc on /proc'."""
        if self.kind == OP_MOUNT:
            return f"{self.fstype} on {self.target}"
        if self.kind == OP_BIND:
            return f"bind {self.source} on {self.target}"
        names = {OP_MKDIR: "mkdir", OP_TOUCH: "create", OP_SYMLINK: "symlink", OP_WRITE: "write"}
        return f"({names.get(self.kind, 'op')} {self.target})"


def bind(target: str, source: str, flags: int = 0, *, source_in_root: bool = False,
         optional: bool = False, source_no_symlinks: bool = False) -> MountOp:
    """A bind of ``source`` onto ``target``; ``flags`` may add MS_REC and :data:`BIND_ATTRS`."""
    return MountOp(OP_BIND, target, source=source, flags=flags, source_in_root=source_in_root,
                   optional=optional, source_no_symlinks=source_no_symlinks)


def _is_below(path: str, parent: str) -> bool:
    return parent == "/" or path.startswith(parent.rstrip("/") + "/")


def anchored(ops: list[MountOp], *, start: int = 0,
             mounts: list[tuple[str, int]] | None = None) -> list[MountOp]:
    """Give each op the latest earlier mount its path lies strictly below, as its base.

    The child then resolves "/dev/null" as "null" from the fd of the /dev
    tmpfs it mounted, not from the rootfs: renaming /dev in the rootfs
    meanwhile (another container can) moves nothing under this one.
    ``start`` and ``mounts`` continue a plan whose first ``start`` ops are
    anchored already (``mounts``: their mount targets and indices; extended).
    """
    mounts = [] if mounts is None else mounts
    result: list[MountOp] = []
    for index, op in enumerate(ops, start):
        base, base_path = -1, ""
        for path, at in reversed(mounts):
            if op.target != path and _is_below(op.target, path):
                base, base_path = at, path
                break
        if op.source_in_root and op.source is not None and not (
                op.source == base_path or _is_below(op.source, base_path or "/")):
            raise ValueError(f"{op.describe()}: the source must lie below the target's base {base_path}")
        if base >= 0:  # the constructor, not dataclasses.replace: this runs on every start
            op = MountOp(op.kind, op.target, op.source, op.fstype, op.flags, op.data, op.mode, op.optional,
                         op.source_in_root, base, base_path, op.source_no_symlinks)
        result.append(op)
        if op.kind in (OP_MOUNT, OP_BIND):
            mounts.append((op.target, index))
    return result


def _proc_and_sys(own_net: bool, in_userns: bool) -> list[MountOp]:
    ops = [MountOp(OP_MKDIR, "/proc"),
           MountOp(OP_MOUNT, "/proc", source="proc", fstype="proc", flags=MS_NOSUID | MS_NODEV | MS_NOEXEC),
           MountOp(OP_MKDIR, "/sys")]
    if own_net or not in_userns:
        ops.append(MountOp(OP_MOUNT, "/sys", source="sysfs", fstype="sysfs",
                           flags=MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY))
    else:
        # sysfs may only be mounted by the owner of the network namespace;
        # a user namespace sharing the host's network binds the host's /sys.
        ops.append(bind("/sys", "/sys", MS_REC | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
    return ops


def _dev() -> list[MountOp]:
    ops = [MountOp(OP_MKDIR, "/dev"),
           # nodev on the tmpfs itself: a node mknod()ed here opens nothing;
           # the bind-mounted nodes below are mounts of their own
           MountOp(OP_MOUNT, "/dev", source="tmpfs", fstype="tmpfs", flags=MS_NOSUID | MS_NOEXEC | MS_NODEV,
                   data="mode=755,size=65536k")]
    for name in DEVICES:
        # Bind-mounting the host's node works with and without a user
        # namespace (mknod does not), and keeps the device numbers right.
        ops += [MountOp(OP_TOUCH, f"/dev/{name}", mode=0o666), bind(f"/dev/{name}", f"/dev/{name}")]
    ops += [MountOp(OP_MKDIR, "/dev/pts"),
            MountOp(OP_MOUNT, "/dev/pts", source="devpts", fstype="devpts", flags=MS_NOSUID | MS_NOEXEC,
                    data="newinstance,ptmxmode=0666,mode=0620"),
            MountOp(OP_MKDIR, "/dev/shm", mode=0o1777),
            MountOp(OP_MOUNT, "/dev/shm", source="shm", fstype="tmpfs", flags=MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    data="mode=1777,size=65536k"),
            MountOp(OP_MKDIR, "/dev/mqueue")]
    for source, name in DEV_LINKS:
        ops.append(MountOp(OP_SYMLINK, f"/dev/{name}", source=source))
    return ops


def _user_mount(mount: Mount) -> list[MountOp]:
    target = mount.target
    ops: list[MountOp] = []
    if mount.kind == "bind":
        assert mount.source is not None
        mode = os.stat(mount.source).st_mode
        ops.append(MountOp(OP_MKDIR, target) if stat.S_ISDIR(mode) else MountOp(OP_TOUCH, target, mode=0o644))
        # nodev: a device node created in a bind-mounted host directory must
        # not open a host device (see the seal step in csrc/spawn.c).  A bind
        # of a device node itself is a deliberate grant and keeps working.
        # Read-only holds for every mount below the source too, and from the
        # start: the flags are set on the detached copy before it is attached.
        is_device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        flags = MS_REC | (0 if is_device else MS_NODEV) | (MS_RDONLY if mount.readonly else 0)
        # spec.py refused a source with a symlink on its path; one swapped in since fails here
        ops.append(bind(target, mount.source, flags, source_no_symlinks=True))
    else:
        mode_text = "1777" if target == "/tmp" else "755"
        size = DEFAULT_TMPFS_SIZE if mount.size is None else int(mount.size)  # host memory: never unbounded
        data = f"mode={mode_text}{_tmpfs_bounds(size)}"
        flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if mount.readonly else 0)
        ops += [MountOp(OP_MKDIR, target),
                MountOp(OP_MOUNT, target, source="tmpfs", fstype="tmpfs", flags=flags, data=data)]
    return ops


def _masks() -> tuple[MountOp, ...]:
    ops: list[MountOp] = []
    for path in MASKED_FILES:
        ops.append(bind(path, "/dev/null", optional=True))
    for path in MASKED_DIRS:
        ops.append(MountOp(OP_MOUNT, path, source="tmpfs", fstype="tmpfs",
                           flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, data="size=0", optional=True))
    for path in READONLY_PATHS:
        ops.append(bind(path, path, MS_REC | BIND_ATTRS, source_in_root=True, optional=True))
    return tuple(ops)


_MASKS = _masks()


def _tmpfs_bounds(size: int) -> str:
    """tmpfs(5) options bounding its data to ``size`` bytes and its inodes to one per page of it.

    tmpfs counts only data against ``size=``; its default inode count is half
    the host's RAM pages whatever the size, at ~0.9 KiB of kernel memory each.
    """
    return f",size={size},nr_inodes={max(size // 4096, 1024)}"


def overlay_root(image: str, scratch: str, *, size: int | None = None,
                 private_tmp: bool = False) -> tuple[list[MountOp], str]:
    """Steps that give the child a writable, throw-away root over a read-only ``image``.

    Kernel feature: overlayfs (Documentation/filesystems/overlayfs.rst).  In
    the child's private mount namespace, a tmpfs at ``scratch`` holds the
    upper layer (every change) and the overlay's work directory; the overlay
    of the upper layer on ``image`` becomes the root.  The image on the host
    is never written -- not even mount points -- and the changes vanish with
    the container's mount namespace.  ``size`` bounds the tmpfs (tmpfs(5)
    ``size=``): a write beyond it fails with ENOSPC, and so does creating
    more than one inode per page of it (``nr_inodes=``; tmpfs's default is
    half the host's RAM pages whatever the size, and each inode is ~0.9 KiB
    of kernel memory: a million empty files cost the host ~0.9 GiB that the
    size never counted).  ``private_tmp`` mounts a
    fresh tmpfs (mode 1777) on ``/tmp``, for a shared image whose own ``tmp``
    is not world-writable (see images/busybox.py).  Returns the steps and
    the new root.  These paths are minibox's own on the host: the child
    resolves them with the host's "/" as the root, below the tmpfs once it
    is mounted.
    """
    merged = f"{scratch}/root"
    limit = "" if size is None else _tmpfs_bounds(size)
    ops = [
        MountOp(OP_MOUNT, scratch, source="tmpfs", fstype="tmpfs", flags=MS_NOSUID | MS_NODEV,
                data="mode=755" + limit),
        MountOp(OP_MKDIR, f"{scratch}/upper"),
        MountOp(OP_MKDIR, f"{scratch}/work"),
        MountOp(OP_MKDIR, merged),
        MountOp(OP_MOUNT, merged, source="overlay", fstype="overlay",
                data=f"lowerdir={image},upperdir={scratch}/upper,workdir={scratch}/work"),
    ]
    if private_tmp:
        ops.append(MountOp(OP_MOUNT, f"{merged}/tmp", source="tmpfs", fstype="tmpfs",
                           flags=MS_NOSUID | MS_NODEV, data="mode=1777" + limit))
    return anchored(ops), merged


def mount_plan(spec: Spec, *, in_userns: bool, extra: list[MountOp] | None = None,
               mask_paths: bool = True) -> list[MountOp]:
    """The ordered mount steps for ``spec``, with paths inside the rootfs, anchored.

    ``extra`` steps (e.g. /etc/hosts for the network) run after the Spec's
    own mounts and before the masks.
    """
    fixed, fixed_mounts, masks = _fixed_part(in_userns, "net" in spec.effective_namespaces)
    ops: list[MountOp] = []
    for mount in spec.mounts:
        ops += _user_mount(mount)
    ops += extra or []
    middle = anchored(ops, start=len(fixed), mounts=list(fixed_mounts))
    if not mask_paths:
        return [*fixed, *middle]
    # The masks' bases are the fixed /proc and /sys unless a mount of the
    # Spec lies on their way (one at /proc, say): then anchor them afresh.
    if any(op.kind in (OP_MOUNT, OP_BIND) and (op.target in ("/", "/proc", "/sys") or
                                               _is_below(op.target, "/proc") or _is_below(op.target, "/sys"))
           for op in middle):
        mounts = list(fixed_mounts) + [(op.target, i) for i, op in enumerate(middle, len(fixed))
                                       if op.kind in (OP_MOUNT, OP_BIND)]
        masks = tuple(anchored(list(_MASKS), start=len(fixed) + len(middle), mounts=mounts))
    return [*fixed, *middle, *masks]


_FixedPart = tuple[tuple["MountOp", ...], tuple[tuple[str, int], ...], tuple["MountOp", ...]]
_fixed_parts: dict[tuple[bool, bool], _FixedPart] = {}  # a dict, not functools.lru_cache: no functools import


def _fixed_part(in_userns: bool, own_net: bool) -> _FixedPart:
    """/proc, /sys and /dev anchored, their mounts, and the masks anchored on them (cached).

    They are the same for every start; the anchoring itself would cost a
    few hundred microseconds of the fast path each time.  Four combinations
    of the arguments exist, so the cache stays small.
    """
    key = (in_userns, own_net)
    if key not in _fixed_parts:
        mounts: list[tuple[str, int]] = []
        ops = anchored(_proc_and_sys(own_net, in_userns) + _dev(), mounts=mounts)
        masks = anchored(list(_MASKS), start=len(ops), mounts=list(mounts))
        _fixed_parts[key] = (tuple(ops), tuple(mounts), tuple(masks))
    return _fixed_parts[key]
