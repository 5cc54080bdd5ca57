"""Saving and restoring a paused guest: QEMU's migration stream to a file.

QEMU has no "snapshot to a file" verb of its own for a running guest; what
Firecracker and Kata's VM templates do with QEMU is a *migration* whose
destination is a file (docs/devel/migration.rst; QMP ``migrate`` and
``migrate-incoming`` in qapi/migration.json):

* **Guest RAM stays out of the stream.**  The source maps guest RAM from a
  file (``memory-backend-file,share=on``): every page the guest wrote is in
  that file.  With the ``x-ignore-shared`` capability QEMU skips shared RAM
  blocks when it migrates, so the stream holds only device state
  (~50 KiB: vCPU registers, the virtio queues, the interrupt controller).
* **A clone maps that file privately** (``share=off``: ``MAP_PRIVATE``).
  Pages it only reads stay the page cache's, shared by every clone; a page
  it writes is copied for it alone.  That is why a clone costs tens of MiB,
  not the guest's size, and also why clones of one template share physical
  pages (a side channel, as with KSM: docs/threat-model.md).
* **Both sides use a file descriptor** (``fd:name`` URIs, the fd handed
  over with QMP ``getfd``).  minibox's QEMU runs under
  ``-sandbox ...,spawn=deny``, so an ``exec:`` URI (QEMU forking a shell)
  would kill it; a file minibox opened and passed over the QMP socket
  (SCM_RIGHTS) needs no path QEMU could be raced for, and no process.
* The clone starts with ``-incoming defer -S``: QEMU builds the same machine
  and waits; minibox sets the same capability, says ``migrate-incoming``,
  waits for the load to finish, then ``cont``.

The machine arguments must be the same on both sides (same devices, in the
same order, same RAM size: QEMU *exits* on a RAM size mismatch), which is
why templates.py keys a template by everything that shapes the guest.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import SetupError
from .qmp import Monitor

#: How long saving or loading the device state may take (measured: a few ms).
MIGRATION_TIMEOUT = 60.0
#: The migration capability that keeps shared RAM out of the stream.
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]
#: ... and without it: guest RAM goes into the stream (a running VM's snapshot, vm_snapshot.py).
WITH_RAM = [{"capability": "x-ignore-shared", "state": False}]


def ram_args(path: str, memory: int, *, share: bool) -> list[str]:
    """Guest RAM backed by the file ``path``: shared (the template's boot) or private (a clone)."""
    mib = memory >> 20
    return ["-object", f"memory-backend-file,id=mem,size={mib}M,mem-path={path},share={'on' if share else 'off'}",
            "-machine", "memory-backend=mem"]


def incoming_args() -> list[str]:
    """A clone waits, paused, for its device state (``migrate-incoming``)."""
    return ["-incoming", "defer", "-S"]


def save(monitor: Monitor, fd: int, *, ignore_shared: bool = True) -> dict[str, Any]:
    """Pause the guest and write its device state to ``fd`` (a file opened for writing).

    The guest stays paused (QEMU's "postmigrate" state); the caller ends
    QEMU or says ``cont``.  With ``ignore_shared=False`` guest RAM is in the
    stream too.  Returns QEMU's ``query-migrate`` answer (sizes, times).
    """
    monitor.execute("stop")
    monitor.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED if ignore_shared else WITH_RAM})
    monitor.add_fd(fd, "snapshot")
    monitor.execute("migrate", {"uri": "fd:snapshot"})
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while True:
        info: dict[str, Any] = monitor.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise SetupError("snapshot", None, f"QEMU's migration {status}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise SetupError("snapshot", None, f"the migration did not finish in {MIGRATION_TIMEOUT:.0f} s")
        time.sleep(0.002)


def load(monitor: Monitor, fd: int, *, ignore_shared: bool = True) -> None:
    """Load the device state from ``fd`` into a QEMU started with :func:`incoming_args`.

    Returns once QEMU has it all, the guest still paused; raises
    :class:`SetupError` if QEMU refuses the stream.
    """
    monitor.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED if ignore_shared else WITH_RAM})
    monitor.add_fd(fd, "snapshot")
    monitor.execute("migrate-incoming", {"uri": "fd:snapshot"})
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while True:
        status = str(monitor.execute("query-status").get("status"))
        if status == "paused":
            return
        if status != "inmigrate":
            info = monitor.execute("query-migrate")
            raise SetupError("restore", None, f"QEMU is {status!r} after loading the snapshot: "
                                              f"{info.get('error-desc', info.get('status', ''))}")
        if time.monotonic() > deadline:
            raise SetupError("restore", None, f"loading the snapshot took over {MIGRATION_TIMEOUT:.0f} s")
        time.sleep(0.001)
