"""A watchdog that ends a VM's processes if their owner dies uncleanly.

QEMU does not exit when its QMP peer goes away, and a guest paused at
power-off holds its RAM forever; if the Python process that started it is
SIGKILLed, nothing would stop it until ``minibox gc``.  So each VM gets a
tiny static watchdog (csrc/keeper/keeper.c) holding pidfds of QEMU and
virtiofsd, and the read end of a pipe whose write end only the owner holds:
the kernel closes that end when the owner process dies, however it dies,
and the keeper then SIGKILLs what still runs.  (PR_SET_PDEATHSIG is no
substitute: it fires when the *thread* that started QEMU exits.)

Man pages: pidfd_open(2), pipe(7), poll(2).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


class Keeper:
    """The watchdog of one VM.  ``release()`` disarms and reaps it."""

    def __init__(self, pids: Sequence[int]) -> None:
        from .._static import build_static

        binary = build_static("keeper/keeper.c", "minibox-keeper")
        read_end, self._owner_end = os.pipe()  # both close-on-exec; the keeper inherits one
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [str(binary), str(read_end), *map(str, pids)], pass_fds=(read_end,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the caller does not stop the watch
            )
        except OSError:
            os.close(self._owner_end)
            raise
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def release(self) -> None:
        """Close our end (the keeper then finds its processes gone and exits) and reap it."""
        if self._proc is None:
            return
        os.close(self._owner_end)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
