"""config.json ``mounts``, ``linux.devices``, masked and read-only paths -> the C child's mount steps.

Kernel features: mount(2) flags and propagation (mount_namespaces(7)), bind
mounts, device nodes (mknod(2)).  Spec: config.md#mounts and
config-linux.md (devices, maskedPaths, readonlyPaths, rootfsPropagation),
plus runc's defaults that every engine relies on (the /dev nodes null,
zero, full, random, urandom, tty and the /dev/fd, /dev/ptmx links).

The engine lists every mount, /proc and /dev included, so -- unlike
container/rootfs.py, which decides them for a minibox Spec -- this module
only translates: the mount options into flags and data, the destination
into a host path resolved inside the rootfs (a symlink in the image can
never lead a mount out of it), and each bind into a bind plus the remount
that applies ro/nosuid/nodev/noexec (the kernel ignores those on the bind
itself).
"""

from __future__ import annotations

import os
import stat

from ..container.rootfs import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    OP_MKDIR,
    OP_MKNOD,
    OP_MOUNT,
    OP_REMOUNT,
    OP_SYMLINK,
    OP_TOUCH,
    MountOp,
)
from ..images.paths import resolve_in_root
from .config import Config, field_error

MS_SYNCHRONOUS, MS_MANDLOCK, MS_DIRSYNC = 0x10, 0x40, 0x80
MS_NOATIME, MS_NODIRATIME, MS_SILENT = 0x400, 0x800, 0x8000
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

# option -> (flags to set, flags to clear); as runc's mount option table
FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0), "mand": (MS_MANDLOCK, 0), "nomand": (0, MS_MANDLOCK),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "silent": (MS_SILENT, 0), "loud": (0, MS_SILENT),
    "defaults": (0, 0),
}
PROPAGATION = {"private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "slave": MS_SLAVE,
               "rslave": MS_SLAVE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
               "unbindable": MS_UNBINDABLE, "runbindable": MS_UNBINDABLE | MS_REC}
# Options that engines pass for other runtimes' features and that change nothing here.
IGNORED = ("bind", "rbind", "tmpcopyup", "notmpcopyup", "copy-symlink", "z", "Z", "U", "idmap")
DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
             ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"), ("/proc/kcore", "core"))


def _filesystems() -> set[str]:
    with open("/proc/filesystems") as f:
        return {line.split()[-1] for line in f if line.strip()}


def _parse_options(options: list[str]) -> tuple[int, int, list[str]]:
    """Options -> (mount flags, propagation flags, data options)."""
    flags = 0
    propagation = 0
    data = []
    for option in options:
        if option in FLAG_OPTIONS:
            set_, clear = FLAG_OPTIONS[option]
            flags = (flags | set_) & ~clear
        elif option in PROPAGATION:
            propagation = PROPAGATION[option]
        elif option in IGNORED:
            continue
        else:
            data.append(option)
    return flags, propagation, data


def _mkdirs(root: str, target: str) -> list[MountOp]:
    """mkdir each missing component of ``target`` (a host path under ``root``)."""
    ops = []
    relative = os.path.relpath(target, root)
    path = root
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        path = os.path.join(path, part)
        ops.append(MountOp(OP_MKDIR, path))
    return ops


def _target(root: str, destination: str) -> str:
    return resolve_in_root(root, destination)


def mount_ops(cfg: Config, cgroup_paths: dict[str, str], in_userns: bool) -> list[MountOp]:
    """Every mount step for ``cfg``, in the order the spec requires (config order first)."""
    root = cfg.root
    known = _filesystems()
    ops: list[MountOp] = []
    dev_is_mounted = False
    for i, m in enumerate(cfg.mounts):
        where = f"mounts[{i}]"
        target = _target(root, m.destination)
        flags, propagation, data = _parse_options(m.options)
        if m.destination == "/dev":
            dev_is_mounted = True
        if m.type == "bind":
            if not m.source:
                raise field_error(f"{where}.source", "a bind mount needs a source")
            source = m.source if os.path.isabs(m.source) else os.path.join(cfg.bundle, m.source)
            if not os.path.exists(source):
                raise field_error(f"{where}.source", f"{source}: no such file or directory")
            is_dir = os.path.isdir(source)
            ops += _mkdirs(root, target if is_dir else os.path.dirname(target))
            if not is_dir:
                ops.append(MountOp(OP_TOUCH, target, mode=0o644))
            rec = MS_REC if "rbind" in m.options else 0
            ops.append(MountOp(OP_MOUNT, target, source=source, flags=MS_BIND | rec))
            remount = flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME
                               | MS_RELATIME | MS_STRICTATIME)
            if remount:
                ops.append(MountOp(OP_REMOUNT, target, flags=remount))
        elif m.type in ("cgroup", "cgroup2"):
            ops += _mkdirs(root, target)
            ops += _cgroup_mount(target, cgroup_paths, cfg, flags)
        else:
            if m.type not in known:
                raise field_error(f"{where}.type", f"unknown file system type {m.type!r} (not in /proc/filesystems)")
            ops += _mkdirs(root, target)
            source = m.source or m.type
            ops.append(MountOp(OP_MOUNT, target, source=source, fstype=m.type, flags=flags,
                               data=",".join(data) or None))
        if propagation:
            ops.append(MountOp(OP_MOUNT, target, flags=propagation))
    if dev_is_mounted:
        ops += _devices(cfg, in_userns)
    ops += _masks(cfg)
    if cfg.propagation and cfg.propagation not in ("private", "rprivate"):
        ops.append(MountOp(OP_MOUNT, root, flags=PROPAGATION[cfg.propagation]))
    return ops


def _cgroup_mount(target: str, cgroup_paths: dict[str, str], cfg: Config, flags: int) -> list[MountOp]:
    """/sys/fs/cgroup inside: the container's own cgroup directories, bound read-only.

    runc does the same without a cgroup namespace: a tmpfs holding one bind
    of the container's cgroup per hierarchy, so the process sees its own
    limits and nothing of the host's tree.
    """
    ro = flags & MS_RDONLY
    ops = [MountOp(OP_MOUNT, target, source="tmpfs", fstype="tmpfs",
                   flags=MS_NOSUID | MS_NODEV | MS_NOEXEC, data="mode=755")]
    seen: set[str] = set()
    for directory in cgroup_paths.values():
        # /sys/fs/cgroup/<hierarchy>/<path...>
        parts = directory.split("/")
        if len(parts) < 5 or directory in seen:
            continue
        seen.add(directory)
        inside = f"{target}/{parts[4]}"
        ops += [MountOp(OP_MKDIR, inside),
                MountOp(OP_MOUNT, inside, source=directory, flags=MS_BIND),
                MountOp(OP_REMOUNT, inside, flags=MS_NOSUID | MS_NODEV | MS_NOEXEC | ro)]
    if ro:
        ops.append(MountOp(OP_REMOUNT, target, flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
    return ops


def _devices(cfg: Config, in_userns: bool) -> list[MountOp]:
    """The default device nodes and linux.devices in the container's /dev, and its links.

    A node is bind-mounted from the host when the host has the same device
    at that path (this works in a user namespace too); otherwise it is
    created with mknod (root without a user namespace only).
    """
    dev = _target(cfg.root, "/dev")
    ops: list[MountOp] = []
    wanted = {d.path: d for d in cfg.devices}
    for name in DEFAULT_DEVICES:
        wanted.setdefault(f"/dev/{name}", None)  # type: ignore[arg-type]
    for path, device in wanted.items():
        target = dev + path[len("/dev"):]
        ops += _mkdirs(dev, os.path.dirname(target))
        host = path
        try:
            st = os.stat(host)
            same = device is None or (os.major(st.st_rdev), os.minor(st.st_rdev)) == (device.major, device.minor)
        except OSError:
            same = False
        if same and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            ops += [MountOp(OP_TOUCH, target, mode=0o666),
                    MountOp(OP_MOUNT, target, source=host, flags=MS_BIND)]
        elif device is None:
            continue  # a default node the host lacks
        elif in_userns:
            raise field_error(f"linux.devices ({path})", "cannot create a device node in a user namespace "
                              "and the host has no such node to bind")
        else:
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[device.type]
            ops.append(MountOp(OP_MKNOD, target, mode=kind | (device.mode & 0o7777),
                               dev=os.makedev(device.major, device.minor)))
    for source, name in DEV_LINKS:
        ops.append(MountOp(OP_SYMLINK, f"{dev}/{name}", source=source))
    return ops


def _masks(cfg: Config) -> list[MountOp]:
    """maskedPaths: /dev/null over a file, an empty read-only tmpfs over a directory;
    readonlyPaths: a read-only bind of itself.  Absent paths are skipped, as runc does."""
    ops: list[MountOp] = []
    null = _target(cfg.root, "/dev/null")
    for path in cfg.masked_paths:
        target = _target(cfg.root, path)
        # one of the two succeeds: the bind on a file, the tmpfs on a directory
        ops += [MountOp(OP_MOUNT, target, source=null, flags=MS_BIND, optional=True),
                MountOp(OP_MOUNT, target, source="tmpfs", fstype="tmpfs",
                        flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, data="size=0", optional=True)]
    for path in cfg.readonly_paths:
        target = _target(cfg.root, path)
        ops += [MountOp(OP_MOUNT, target, source=target, flags=MS_BIND | MS_REC, optional=True),
                MountOp(OP_REMOUNT, target, flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, optional=True)]
    return ops
