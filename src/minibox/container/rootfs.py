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

Targets are resolved *inside* the rootfs: a symlink in the rootfs that
points at ``/etc`` leads to the rootfs's /etc, never the host's.  (A rootfs
that an untrusted party modifies while the container starts is outside this
model; crun closes that race with openat2(RESOLVE_IN_ROOT).)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..images.paths import resolve_in_root
from ..spec import Mount, Spec

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# Op kinds, as in csrc/spawn.h enum mb_op_kind
OP_MOUNT, OP_MKDIR, OP_TOUCH, OP_SYMLINK, OP_REMOUNT, OP_MKNOD, OP_WRITE = 1, 2, 3, 4, 5, 6, 7
WRITE_AS_PID1 = 1  # OP_WRITE flag: only as pid 1 of a new pid namespace (csrc/spawn.h MB_WRITE_PID1)

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"),
             ("/proc/self/fd/1", "stdout"), ("/proc/self/fd/2", "stderr"),
             ("pts/ptmx", "ptmx"))

# Paths a default container must not read (they leak host kernel state) and
# paths it must not write; the lists of the OCI/Docker defaults.
MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                "/proc/latency_stats")
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware")
READONLY_PATHS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")


@dataclass(frozen=True)
class MountOp:
    """One step of the mount plan; mirrors ``struct mb_op`` in csrc/spawn.h."""

    kind: int
    target: str
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    mode: int = 0o755
    dev: int = 0
    optional: bool = False

    def describe(self) -> str:
        """Human words for error messages: 'mount proc on /proc'."""
        names = {OP_MOUNT: "mount", OP_MKDIR: "mkdir", OP_TOUCH: "create", OP_SYMLINK: "symlink",
                 OP_REMOUNT: "remount", OP_MKNOD: "mknod", OP_WRITE: "write"}
        what = names.get(self.kind, "op")
        if self.kind == OP_MOUNT:
            src = self.fstype if self.fstype else self.source
            return f"{what} {src} on {self.target}"
        return f"{what} {self.target}"


def _proc_and_sys(root: str, spec: Spec, in_userns: bool) -> list[MountOp]:
    ops = [MountOp(OP_MKDIR, f"{root}/proc"),
           MountOp(OP_MOUNT, f"{root}/proc", source="proc", fstype="proc",
                   flags=MS_NOSUID | MS_NODEV | MS_NOEXEC),
           MountOp(OP_MKDIR, f"{root}/sys")]
    if "net" in spec.effective_namespaces or not in_userns:
        ops.append(MountOp(OP_MOUNT, f"{root}/sys", source="sysfs", fstype="sysfs",
                           flags=MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY))
    else:
        # sysfs may only be mounted by the owner of the network namespace;
        # a user namespace sharing the host's network binds the host's /sys.
        ops += [MountOp(OP_MOUNT, f"{root}/sys", source="/sys", flags=MS_BIND | MS_REC),
                MountOp(OP_REMOUNT, f"{root}/sys", flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)]
    return ops


def _dev(root: str) -> list[MountOp]:
    dev = f"{root}/dev"
    ops = [MountOp(OP_MKDIR, dev),
           # nodev on the tmpfs itself: a node mknod()ed here opens nothing;
           # the bind-mounted nodes below are mounts of their own
           MountOp(OP_MOUNT, dev, source="tmpfs", fstype="tmpfs", flags=MS_NOSUID | MS_NOEXEC | MS_NODEV,
                   data="mode=755,size=65536k")]
    for name in DEVICES:
        # Bind-mounting the host's node works with and without a user
        # namespace (mknod does not), and keeps the device numbers right.
        ops += [MountOp(OP_TOUCH, f"{dev}/{name}", mode=0o666),
                MountOp(OP_MOUNT, f"{dev}/{name}", source=f"/dev/{name}", flags=MS_BIND)]
    ops += [MountOp(OP_MKDIR, f"{dev}/pts"),
            MountOp(OP_MOUNT, f"{dev}/pts", source="devpts", fstype="devpts", flags=MS_NOSUID | MS_NOEXEC,
                    data="newinstance,ptmxmode=0666,mode=0620"),
            MountOp(OP_MKDIR, f"{dev}/shm", mode=0o1777),
            MountOp(OP_MOUNT, f"{dev}/shm", source="shm", fstype="tmpfs", flags=MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    data="mode=1777,size=65536k"),
            MountOp(OP_MKDIR, f"{dev}/mqueue")]
    for source, name in DEV_LINKS:
        ops.append(MountOp(OP_SYMLINK, f"{dev}/{name}", source=source))
    return ops


def _user_mount(root: str, index: int, mount: Mount, lookup_root: str) -> list[MountOp]:
    # Symlinks are followed in the directory that holds the files now
    # (``lookup_root``); the target is where the child will see them (``root``).
    target = root + resolve_in_root(lookup_root, mount.target)[len(lookup_root):]
    ops: list[MountOp] = []
    if mount.kind == "bind":
        assert mount.source is not None
        if os.path.isdir(mount.source):
            ops.append(MountOp(OP_MKDIR, target))
        else:
            ops.append(MountOp(OP_TOUCH, target, mode=0o644))
        ops.append(MountOp(OP_MOUNT, target, source=mount.source, flags=MS_BIND | MS_REC))
        # nodev: a device node created in a bind-mounted host directory must
        # not open a host device (see the seal step in csrc/spawn.c).  A bind
        # of a device node itself is a deliberate grant and keeps working.
        is_device = stat.S_ISCHR(os.stat(mount.source).st_mode) or stat.S_ISBLK(os.stat(mount.source).st_mode)
        flags = (0 if is_device else MS_NODEV) | (MS_RDONLY if mount.readonly else 0)
        if flags:
            ops.append(MountOp(OP_REMOUNT, target, flags=flags))
    else:
        mode = "1777" if mount.target == "/tmp" else "755"
        data = f"mode={mode}"
        if mount.size is not None:
            data += f",size={int(mount.size)}"
        flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if mount.readonly else 0)
        ops += [MountOp(OP_MKDIR, target),
                MountOp(OP_MOUNT, target, source="tmpfs", fstype="tmpfs", flags=flags, data=data)]
    return ops


def _masks(root: str) -> list[MountOp]:
    ops: list[MountOp] = []
    for path in MASKED_FILES:
        ops.append(MountOp(OP_MOUNT, f"{root}{path}", source=f"{root}/dev/null", flags=MS_BIND, optional=True))
    for path in MASKED_DIRS:
        ops.append(MountOp(OP_MOUNT, f"{root}{path}", source="tmpfs", fstype="tmpfs",
                           flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, data="size=0", optional=True))
    for path in READONLY_PATHS:
        ops += [MountOp(OP_MOUNT, f"{root}{path}", source=f"{root}{path}", flags=MS_BIND | MS_REC, optional=True),
                MountOp(OP_REMOUNT, f"{root}{path}", flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        optional=True)]
    return ops


def overlay_root(image: str, scratch: str, *, size: int | None = None,
                 private_tmp: bool = False) -> tuple[list[MountOp], str]:
    """Steps that give the child a writable, throw-away root over a read-only ``image``.

    Kernel feature: overlayfs (Documentation/filesystems/overlayfs.rst).  In
    the child's private mount namespace, a tmpfs at ``scratch`` holds the
    upper layer (every change) and the overlay's work directory; the overlay
    of the upper layer on ``image`` becomes the root.  The image on the host
    is never written -- not even mount points -- and the changes vanish with
    the container's mount namespace.  ``size`` bounds the tmpfs (tmpfs(5)
    ``size=``): a write beyond it fails with ENOSPC.  ``private_tmp`` mounts a
    fresh tmpfs (mode 1777) on ``/tmp``, for a shared image whose own ``tmp``
    is not world-writable (see images/busybox.py).  Returns the steps and
    the new root.
    """
    merged = f"{scratch}/root"
    limit = "" if size is None else f",size={size}"
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
    return ops, merged


def mount_plan(root: str, spec: Spec, *, in_userns: bool, extra: list[MountOp] | None = None,
               mask_paths: bool = True, lookup_root: str | None = None) -> list[MountOp]:
    """The ordered mount steps for ``spec`` with the rootfs at ``root`` (a host path).

    ``extra`` steps (e.g. /etc/hosts for the network) run after the Spec's
    own mounts and before the masks.  ``lookup_root`` is where the rootfs's
    files can be inspected now, when ``root`` exists only in the child (an
    overlay, see :func:`overlay_root`).
    """
    ops = _proc_and_sys(root, spec, in_userns)
    ops += _dev(root)
    for index, mount in enumerate(spec.mounts):
        ops += _user_mount(root, index, mount, lookup_root or root)
    ops += extra or []
    if mask_paths:
        ops += _masks(root)
    return ops
