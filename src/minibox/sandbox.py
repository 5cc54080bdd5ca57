"""The contract both isolation paths keep: Sandbox, Result, Usage, Stats.

A container (``minibox.container.Container``) shares the host kernel and is
bounded by namespaces and cgroups; a virtual machine
(``minibox.vm.VirtualMachine``) boots its own kernel under QEMU.  Both are a
:class:`Sandbox`: the same verbs (start, wait, kill, exec, pause, resume,
stats, close), the same :class:`Result`, so that switching
``isolation="container"`` to ``isolation="vm"`` changes the boundary and
nothing else in the caller's code.
"""

from __future__ import annotations

import abc
import signal as _signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from .spec import Spec

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Literal, Self

if TYPE_CHECKING:
    Reason = Literal["exited", "signaled", "timeout", "oom"]
else:
    Reason = str  # the same values, unchecked at run time


@dataclass(frozen=True)
class Usage:
    """What a finished sandbox consumed (read from its cgroup, or from QEMU for a VM)."""

    memory_peak_bytes: int | None = None
    cpu_seconds: float | None = None
    pids_peak: int | None = None


@dataclass(frozen=True)
class Stats:
    """A running sandbox's consumption right now."""

    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_seconds: float | None
    pids: int | None


@dataclass(frozen=True)
class Result:
    """How a sandboxed command ended, like :class:`subprocess.CompletedProcess`.

    ``exit_code`` is the exit status, or ``None`` when a signal ended it (then
    ``signal`` holds its number).  ``reason`` tells why it ended: it
    ``"exited"``, was ``"signaled"``, hit its ``"timeout"`` (and was killed),
    or was killed by the kernel's OOM killer (``"oom"``) for exceeding its
    memory limit.  ``stdout``/``stderr`` are the captured bytes (empty when the
    caller passed its own file descriptors).
    """

    exit_code: int | None
    signal: int | None
    reason: Reason
    stdout: bytes = b""
    stderr: bytes = b""
    duration: float = 0.0
    usage: Usage = field(default_factory=Usage)

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    @property
    def shell_status(self) -> int:
        """The status a shell (and ``minibox run``) would report: 128+N for signal N, 124 for a timeout."""
        if self.reason == "timeout":
            return 124
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal or 0)

    def describe(self) -> str:
        """One line for humans: 'exited with status 3', 'killed by SIGKILL (out of memory)'."""
        if self.reason == "timeout":
            return "killed after its timeout"
        if self.reason == "oom":
            return "killed by the OOM killer: the memory limit was hit"
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.exit_code}"


class Sandbox(abc.ABC):
    """An isolated command: the common face of Container and VirtualMachine.

    Lifecycle: construct with a :class:`Spec` -> :meth:`start` -> optionally
    :meth:`exec`/:meth:`pause`/:meth:`resume`/:meth:`stats` -> :meth:`wait`
    -> :meth:`close`.  Used as a context manager, ``__enter__`` starts it and
    ``__exit__`` kills whatever still runs and frees every host resource,
    also when the ``with`` body raised.
    """

    spec: Spec

    @abc.abstractmethod
    def start(self) -> None:
        """Build the sandbox and start ``spec.argv`` in it."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to end and return its Result.

        ``timeout`` (seconds) bounds this wait: when it passes, the sandbox
        is killed and the Result's reason is ``"timeout"``.  ``None`` means
        the Spec's timeout, or forever.
        """

    @abc.abstractmethod
    def kill(self, sig: int = _signal.SIGKILL) -> None:
        """Send ``sig`` to the sandbox (every process in it, for SIGKILL)."""

    @abc.abstractmethod
    def exec(self, argv: Sequence[str], timeout: float | None = None) -> Result:
        """Run another command inside the running sandbox and return its Result."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze every process (cgroup freezer / QMP stop) until :meth:`resume`."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Thaw a paused sandbox."""

    @abc.abstractmethod
    def stats(self) -> Stats:
        """Current resource use."""

    @abc.abstractmethod
    def close(self) -> None:
        """Kill what still runs and release every host resource; idempotent."""

    @property
    @abc.abstractmethod
    def kernel_release(self) -> str:
        """The release of the kernel the command runs on (host's or guest's)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
