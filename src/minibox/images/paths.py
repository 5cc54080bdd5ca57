"""Paths inside a root filesystem, resolved as the sandbox will see them.

A symlink inside a rootfs points wherever its (untrusted) author chose:
``/etc -> /`` would send a host-side ``open(rootfs + "/etc/hosts")`` to the
host's own /etc.  Resolving each component against the rootfs, the way the
kernel does after ``chroot(2)`` (see path_resolution(7)), keeps every
result under the rootfs.  Both the container path (mount targets, /etc
files) and the VM path (host-side mount points for virtiofs) use it.
"""

from __future__ import annotations

import os


def resolve_in_root(rootfs: str, path: str) -> str:
    """Resolve ``path`` as the container will see it, following symlinks inside ``rootfs``.

    Returns a host path under ``rootfs``.  Components that do not exist yet
    are kept as they are (the plan creates them).
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(rootfs, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, "too many levels of symbolic links", path)
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(rootfs, *resolved)
