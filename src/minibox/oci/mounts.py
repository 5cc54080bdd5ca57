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
    BIND_ATTRS,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    OP_MKDIR,
    OP_MOUNT,
    OP_SYMLINK,
    OP_TOUCH,
    OP_WRITE,
    MountOp,
    anchored,
    bind,
)
from .config import Config, field_error

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

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


def _mkdirs(path: str) -> list[MountOp]:
    """mkdir each component of ``path`` (inside the root; existing ones are fine)."""
    ops = []
    current = ""
    for part in path.split("/"):
        if part in ("", "."):
            continue
        current += "/" + part
        ops.append(MountOp(OP_MKDIR, current))
    return ops


def _propagation(option: int, where: str) -> None:
    # The child makes every mount private (MS_REC|MS_PRIVATE on "/") before it
    # starts; shared or slave propagation back to the host is not offered.
    if option and not option & MS_PRIVATE:
        raise field_error(where, "only private propagation is supported by minibox-oci "
                          "(mounts never propagate to or from the host)")


def mount_ops(cfg: Config, cgroup_paths: dict[str, str]) -> list[MountOp]:
    """Every mount step for ``cfg``, in the order the spec requires (config order first), anchored.

    Paths are inside the rootfs; the C child resolves them there through
    file descriptors, so a symlink in the image never leads outside it.
    """
    known = _filesystems()
    ops: list[MountOp] = []
    dev_is_mounted = False
    for i, m in enumerate(cfg.mounts):
        where = f"mounts[{i}]"
        target = os.path.normpath(m.destination)
        if ".." in target.split("/"):
            raise field_error(f"{where}.destination", f"must not contain '..', got {m.destination!r}")
        flags, propagation, data = _parse_options(m.options)
        _propagation(propagation, f"{where}.options")
        if target == "/dev":
            dev_is_mounted = True
        if m.type == "bind":
            if not m.source:
                raise field_error(f"{where}.source", "a bind mount needs a source")
            source = m.source if os.path.isabs(m.source) else os.path.join(cfg.bundle, m.source)
            try:
                mode = os.stat(source).st_mode
            except OSError as e:
                raise field_error(f"{where}.source", f"{source}: {(e.strerror or str(e)).lower()}") from e
            is_dir = stat.S_ISDIR(mode)
            ops += _mkdirs(target if is_dir else os.path.dirname(target))
            if not is_dir:
                ops.append(MountOp(OP_TOUCH, target, mode=0o644))
            rec = MS_REC if "rbind" in m.options else 0
            ops.append(bind(target, source, rec | (flags & BIND_ATTRS)))
        elif m.type in ("cgroup", "cgroup2"):
            ops += _mkdirs(target)
            ops += _cgroup_mount(target, cgroup_paths, flags)
        else:
            if m.type not in known:
                raise field_error(f"{where}.type", f"unknown file system type {m.type!r} (not in /proc/filesystems)")
            ops += _mkdirs(target)
            ops.append(MountOp(OP_MOUNT, target, source=m.source or m.type, fstype=m.type, flags=flags,
                               data=",".join(data) or None))
    if dev_is_mounted:
        ops += _devices(cfg)
    ops += _sysctls(cfg)
    ops += _masks(cfg)
    if cfg.propagation:
        _propagation(PROPAGATION[cfg.propagation], "linux.rootfsPropagation")
    return anchored(ops)


def _cgroup_mount(target: str, cgroup_paths: dict[str, str], flags: int) -> list[MountOp]:
    """/sys/fs/cgroup inside: the container's own cgroup directories, bound read-only.

    runc does the same without a cgroup namespace: a tmpfs holding one bind
    of the container's cgroup per hierarchy, so the process sees its own
    limits and nothing of the host's tree.
    """
    ops = [MountOp(OP_MOUNT, target, source="tmpfs", fstype="tmpfs",
                   flags=MS_NOSUID | MS_NODEV | MS_NOEXEC, data="mode=755,size=64k")]
    seen: set[str] = set()
    for directory in cgroup_paths.values():
        parts = directory.split("/")   # /sys/fs/cgroup/<hierarchy>/<path...>
        if len(parts) < 5 or directory in seen:
            continue
        seen.add(directory)
        inside = f"{target}/{parts[4]}"
        ops += [MountOp(OP_MKDIR, inside),
                bind(inside, directory, MS_NOSUID | MS_NODEV | MS_NOEXEC | (flags & MS_RDONLY))]
    return ops


def _devices(cfg: Config) -> list[MountOp]:
    """The default device nodes and linux.devices in the container's /dev, and its links.

    Each node is bind-mounted from the host's node of the same path and
    device number (which works in a user namespace too, and needs no mknod
    on a nodev tmpfs); a device the host has not got is refused.
    """
    ops: list[MountOp] = []
    wanted: dict[str, Any] = {d.path: d for d in cfg.devices}
    for name in DEFAULT_DEVICES:
        wanted.setdefault(f"/dev/{name}", None)
    for path, device in wanted.items():
        try:
            st = os.stat(path)
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else None
        except OSError:
            kind = None
        # the type too: char 254:0 and block 254:0 (a disk) are different devices
        same = kind is not None and (device is None or (
            (os.major(st.st_rdev), os.minor(st.st_rdev)) == (device.major, device.minor)
            and kind == ("c" if device.type == "u" else device.type)))
        if not same:
            if device is None:
                continue  # a default node the host lacks
            raise field_error(f"linux.devices ({path})", f"the host has no device of type {device.type} "
                              f"{device.major}:{device.minor} at {path} to bind; minibox-oci binds device nodes, "
                              "it does not mknod them")
        ops += _mkdirs(os.path.dirname(path))
        ops += [MountOp(OP_TOUCH, path, mode=0o666), bind(path, path)]
    for source, name in DEV_LINKS:
        ops.append(MountOp(OP_SYMLINK, f"/dev/{name}", source=source))
    return ops


def _sysctls(cfg: Config) -> list[MountOp]:
    """linux.sysctl (and domainname) written into the container's own /proc/sys.

    The child writes them after mounting the container's procfs, inside its
    new namespaces, so only namespaced keys are accepted: another would
    change the host.
    """
    values = dict(cfg.sysctl)
    if cfg.domainname:
        if "uts" not in cfg.namespaces or cfg.namespaces["uts"] is not None:
            raise field_error("domainname", "needs a new uts namespace in linux.namespaces")
        values["kernel.domainname"] = cfg.domainname
    ops = []
    for key, value in values.items():
        namespace = ("net" if key.startswith("net.") else
                     "ipc" if key.startswith(("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")) else
                     "uts" if key in ("kernel.domainname", "kernel.hostname") else None)
        if namespace is None or cfg.namespaces.get(namespace, "absent") is not None:
            raise field_error(f"linux.sysctl[{key!r}]", "only sysctls of a namespace the container creates "
                              "(net.*, kernel.shm*/msg*/sem, fs.mqueue.*, kernel.domainname) are allowed; "
                              "this one would change the host")
        ops.append(MountOp(OP_WRITE, "/proc/sys/" + key.replace(".", "/"), data=value))
    return ops


def _masks(cfg: Config) -> list[MountOp]:
    """maskedPaths: /dev/null over a file, an empty read-only tmpfs over a directory;
    readonlyPaths: a read-only bind of itself.  Absent paths are skipped, as runc does."""
    ops: list[MountOp] = []
    for path in cfg.masked_paths:
        # one of the two succeeds: the bind on a file, the tmpfs on a directory
        ops += [bind(path, "/dev/null", optional=True),
                MountOp(OP_MOUNT, path, source="tmpfs", fstype="tmpfs",
                        flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, data="size=0", optional=True)]
    for path in cfg.readonly_paths:
        ops.append(bind(path, path, MS_REC | BIND_ATTRS, source_in_root=True, optional=True))
    return ops
