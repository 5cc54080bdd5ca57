"""The exec gate: the static program a created container waits in (csrc/oci/gate.c).

Kernel features: memfd_create(2) with file seals (F_SEAL_WRITE...) and
execveat(2).  Like minibox-init (container/init.py), the gate reaches the
container as a sealed memfd copy that the C child execs by descriptor: it
is never copied into the rootfs, and root inside cannot rewrite the host's
binary through /proc/1/exe (CVE-2019-5736).  The binary is compiled once
per source version into the state directory; this module only looks it up
on the fast path (no compiler, no subprocess imported).
"""

from __future__ import annotations

import fcntl
import os

SOURCE = "oci/gate.c"
NAME = "minibox-oci-gate"


def _binary() -> str:
    from .._static import static_binary  # the fast path: no pathlib, no OpenSSL, no compiler's modules

    return static_binary(SOURCE, NAME)


def gate_fd() -> int:
    """A close-on-exec fd of a sealed, read-only copy of the gate."""
    fd = os.memfd_create(NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(_binary(), "rb") as f:
            view = memoryview(f.read())
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd
