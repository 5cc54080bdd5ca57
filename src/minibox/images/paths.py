"""Paths inside a root filesystem, opened as the sandbox will see them.

A symlink inside a rootfs points wherever its (untrusted) author chose:
``/etc -> /`` would send a host-side ``open(rootfs + "/etc/hosts")`` to the
host's own /etc.  And a rootfs that a running sandbox can write may change
between the moment a path is checked and the moment it is used (the
CVE-2021-30465 class): a directory swapped for a symlink to ``..`` turns a
checked path into a host path.  So the host side never handles such a path
as a string.  :func:`open_in_root` resolves it *inside* the rootfs, the way
the kernel does after ``chroot(2)`` (path_resolution(7)), and returns a
file descriptor; callers create and inspect relative to that fd.

Kernel feature: openat2(2) with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``;
where the kernel lacks it (ENOSYS), a walk of one ``O_NOFOLLOW`` component at
a time.  Both live in C (csrc/rootfs.c, ``mb_open_in_root``), shared with the
container's child, which resolves its mount targets the same way.
"""

from __future__ import annotations

import os

from .._lean import contextmanager  # contextlib would cost minibox-oci create milliseconds of imports
from ..errors import SetupError

TYPE_CHECKING = False  # collections.abc would import the collections package: annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterator


def open_in_root(root_fd: int, path: str, *, nofollow: bool = False, compat: int = 0) -> int:
    """An ``O_PATH`` fd for ``path`` resolved inside the directory ``root_fd``.

    Symlinks (absolute ones too) and ``..`` never lead above ``root_fd``;
    magic links (``/proc/self/root``...) fail with ELOOP.  ``nofollow``
    opens a symlink in the last component itself.  ``compat`` forces the
    fallback walk (``MB_COMPAT_NO_OPENAT2``), for tests.  Raises OSError.
    """
    from .._native import lib

    fd: int = lib.mb_open_in_root(root_fd, os.fsencode(path), int(nofollow), compat)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd), path)
    return fd


@contextmanager
def opened_root(rootfs: str) -> Iterator[int]:
    """An ``O_PATH`` fd of the directory ``rootfs`` (the caller's own path), closed afterwards."""
    fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def make_mount_point(rootfs: str, path: str, *, directory: bool) -> None:
    """Create ``path`` inside ``rootfs`` (and its missing parents) to mount something on.

    Every component is created below the fd of its parent, resolved inside
    the rootfs, so nothing is ever created outside it whatever the rootfs's
    symlinks say or become meanwhile.  Whatever already exists at ``path``
    (a symlink too) is kept: the sandbox resolves it in its own root.
    Raises SetupError("mount point", errno) naming the path.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    try:
        with opened_root(rootfs) as root:
            for i, name in enumerate(parts):
                if name == "..":
                    continue
                last = i == len(parts) - 1
                parent = open_in_root(root, "/" + "/".join(parts[:i]))
                try:
                    if last and not directory:
                        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=parent)
                        os.close(fd)
                    else:
                        os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass
                finally:
                    os.close(parent)
    except OSError as e:
        raise SetupError("mount point", e.errno, detail=f"{path} in {rootfs}") from e
