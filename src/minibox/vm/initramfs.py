"""The initramfs: a cpio archive the kernel unpacks into its first root.

Linux unpacks the ``initrd`` QEMU hands it into a tmpfs and runs ``/init``
from it (Documentation/filesystems/ramfs-rootfs-initramfs.rst).  The archive
format is cpio "newc" (``070701`` magic, every header field eight hex digits,
names and data padded to four bytes; Documentation/driver-api/early-userspace/
buffer-format.rst).  It is simple enough to write here in a few lines of
Python, which also lets us add device nodes without being root.

The archive stays **uncompressed**: under TCG the guest decompressing a gzip
initramfs cost 0.8 s here, far more than reading a few extra megabytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"070701"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, regular file, symlink or device node."""

    name: str  # path inside the archive, without a leading '/'
    mode: int  # st_mode: file type bits | permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # major, minor for device nodes


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def tree(root: str | os.PathLike[str], prefix: str) -> list[Entry]:
    """Directories, regular files and symlinks under ``root``, placed below ``prefix``.

    Device nodes, sockets and fifos are left out (the guest has devtmpfs);
    owners become root, as in any initramfs.
    """
    entries = [directory(prefix, stat.S_IMODE(os.stat(root).st_mode))]
    # os.fwalk and O_NOFOLLOW below each directory's fd: a rootfs another
    # sandbox can write may swap a file or directory for a symlink to a host
    # path while it is packed; that must never pull a host file in.
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        rel = os.path.relpath(dirpath, root)
        base = prefix if rel == "." else f"{prefix}/{rel}"
        for name in sorted(dirnames) + sorted(filenames):
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                entries.append(symlink(f"{base}/{name}", os.readlink(name, dir_fd=dirfd)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(directory(f"{base}/{name}", stat.S_IMODE(st.st_mode)))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as f:
                    if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        entries.append(file(f"{base}/{name}", f.read(), stat.S_IMODE(st.st_mode)))
    return entries


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, namesize: int) -> bytes:
    fields = (
        ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0,
        len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], namesize, 0,
    )
    return _MAGIC + b"".join(b"%08X" % f for f in fields)


def build(entries: Iterable[Entry]) -> bytes:
    """Return the newc archive holding ``entries`` (parents must come first)."""
    out: list[bytes] = []
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        head = _header(ino, entry, len(name)) + name
        out += [head, _pad(len(head)), entry.data, _pad(len(entry.data))]
    return b"".join(out)


def write(path: Path, entries: Iterable[Entry]) -> None:
    """Write the archive to ``path`` (created mode 0600: it may hold stdin)."""
    data = build(entries)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
