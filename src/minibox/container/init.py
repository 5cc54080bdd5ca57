"""minibox-init: an optional pid 1 that forwards signals and reaps zombies.

Kernel feature: a pid namespace's init (pid_namespaces(7)).  Its pid 1 is
immune to signals it installed no handler for, and inherits every orphan.
A command that was not written to be pid 1 therefore ignores
``Container.kill(SIGTERM)`` and leaves zombies behind.  ``Spec.init=True``
(``minibox run --init``) runs csrc/init/init.c as pid 1 instead, which runs
the command as its child -- the same idea as ``docker run --init`` (tini).

How it gets into the container without touching the rootfs: the parent
opens the binary, and the child's last step is execveat(2) on that file
descriptor.  The descriptor is a *sealed memfd copy*, not the file in the
state directory: otherwise root in the container could open /proc/1/exe for
writing and replace the host's copy that the next container runs -- the
hole runc had as CVE-2019-5736, closed the same way.
"""

from __future__ import annotations

import fcntl
import os
import threading

_lock = threading.Lock()
_memfd: int | None = None


def init_fd() -> int:
    """A close-on-exec fd of a sealed, read-only copy of minibox-init (one per process)."""
    global _memfd
    with _lock:
        if _memfd is None:
            from .._static import build_static

            binary = build_static("init/init.c", "minibox-init")
            fd = os.memfd_create("minibox-init", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                with open(binary, "rb") as f:
                    data = f.read()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            except BaseException:
                os.close(fd)
                raise
            _memfd = fd
        return _memfd
