"""The contract both isolation paths keep: Sandbox, its states, Result, Usage, Stats.

A container (``minibox.container.Container``) shares the host kernel and is
bounded by namespaces and cgroups; a virtual machine
(``minibox.vm.VirtualMachine``) boots its own kernel under QEMU.  Both are a
:class:`Sandbox`: the same verbs (start, wait, kill, exec, pause, resume,
stats, close), the same states, the same :class:`Result`, so that switching
``isolation="container"`` to ``isolation="vm"`` changes the boundary and
nothing else in the caller's code.

The states, and the verbs that move between them::

    created --start()--> running --pause()--> paused --resume()--> running
    running/paused --wait()--> exited --close()--> closed   (close() from any state)

A verb called in a state that does not allow it raises
:class:`~minibox.errors.StateError` naming the verb and the state, from one
place (:meth:`Sandbox._check`), so both paths refuse the same things with
the same words.  The table is :data:`ALLOWED`.
"""

from __future__ import annotations

import abc
import os
import time

# _collections_abc: what collections.abc re-exports, loaded by os already (the
# collections package would cost a command-line start ~2 ms); SIGKILL from
# _lean, not signal (whose enum classes cost ~3 ms).
from _collections_abc import Mapping, Sequence

from ._lean import SIGKILL
from ._record import field, record
from .errors import StateError
from .spec import DEFAULT_OUTPUT_LIMIT, DEFAULT_PATH, Spec, parse_size

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Literal, Self

if TYPE_CHECKING:
    Reason = Literal["exited", "signaled", "timeout", "oom"]
else:
    Reason = str  # the same values, unchecked at run time

# The states of a sandbox (see the module docstring).
CREATED, RUNNING, PAUSED, EXITED, CLOSED = "created", "running", "paused", "exited", "closed"
STATES: tuple[str, ...] = (CREATED, RUNNING, PAUSED, EXITED, CLOSED)

#: verb -> the states in which it is allowed.  ``close`` is allowed always
#: (and idempotent); ``wait`` also after ``close`` when a Result is known.
ALLOWED: dict[str, tuple[str, ...]] = {
    "start": (CREATED,),
    "wait": (RUNNING, PAUSED, EXITED),
    "kill": (RUNNING, PAUSED),
    "exec": (RUNNING,),
    "pause": (RUNNING,),
    "resume": (PAUSED,),
    "stats": (RUNNING, PAUSED),
}

# What to tell the caller, by the state that refused the verb.
_WHY: dict[str, str] = {
    CREATED: "not started: call start() or use the context manager",
    RUNNING: "it is running",
    PAUSED: "it is paused: resume() it first",
    EXITED: "its command has exited (wait() returns its Result)",
    CLOSED: "it is closed and its resources are released; create a new one",
}
_WHY_VERB: dict[tuple[str, str], str] = {
    ("start", RUNNING): "already started; create a new one to run again",
    ("start", PAUSED): "already started; create a new one to run again",
    ("start", EXITED): "already started and ended; create a new one to run again",
    ("resume", RUNNING): "it is not paused",
    ("pause", PAUSED): "it is already paused",
}


@record(frozen=True)
class Usage:
    """What a finished sandbox consumed (read from its cgroup, or from QEMU for a VM)."""

    memory_peak_bytes: int | None = None
    cpu_seconds: float | None = None
    pids_peak: int | None = None


@record(frozen=True)
class Stats:
    """A running sandbox's consumption right now."""

    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_seconds: float | None
    pids: int | None


@record(frozen=True)
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
                import signal  # only to name it

                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.exit_code}"


def command_env(env: Mapping[str, str], hostname: str, uid: int) -> dict[str, str]:
    """A command's environment on either path: ``env`` plus PATH, HOSTNAME and HOME when missing."""
    out = dict(env)
    out.setdefault("PATH", DEFAULT_PATH)
    out.setdefault("HOSTNAME", hostname)
    out.setdefault("HOME", "/root" if uid == 0 else "/")
    return out


def reason_of(exit_code: int | None, sig: int | None, *, timed_out: bool = False, oom: bool = False) -> Reason:
    """Why a command ended: its timeout, the OOM killer, a signal, or its own exit.

    ``oom`` is the evidence (the cgroup's oom_kill counter); it explains a
    SIGKILL (or the 137 an init reports for one), nothing else.
    """
    if timed_out:
        return "timeout"
    if oom and (sig == SIGKILL or exit_code == 128 + SIGKILL):
        return "oom"
    if sig is not None:
        return "signaled"
    return "exited"


# -- captured output, bounded ----------------------------------------------------------------
#
# Both isolations capture a command's output for its Result when the caller
# passes no file descriptor of its own, as subprocess.run does with
# capture_output.  Unlike subprocess, the command is untrusted: `yes` would
# grow the caller's own process until the host's OOM killer chose a victim.
# So each stream keeps its first Spec.output_limit bytes (OUTPUT_CAP unless
# the Spec says); the rest is still read (a writer is never blocked on a full
# pipe, so the command runs as it would) but only counted, and the Result's
# bytes end with a line saying how much was dropped.  Output sent to the
# caller's own fds is the caller's to bound.  Filled by container/stdio.py and
# vm/channels.py.

#: Bytes of each output stream kept for a Result when the Spec does not say
#: (docs/api.md, "Output"): ``spec.DEFAULT_OUTPUT_LIMIT``.
OUTPUT_CAP = DEFAULT_OUTPUT_LIMIT


class CappedBuffer:
    """Output kept up to ``cap`` bytes; the rest is counted, not kept.  ``cap=None`` keeps everything."""

    def __init__(self, cap: int | str | None = OUTPUT_CAP) -> None:
        self._data = bytearray()
        # Spec.output_limit arrives parsed (validation turns "64M" into bytes);
        # its type still admits the string form, which means the same here.
        self._cap = parse_size(cap, "output_limit") if isinstance(cap, str) else cap
        self._value: bytes | None = None
        self.dropped = 0

    def recap(self, cap: int | str | None) -> None:
        """Change the cap before output arrives (a pooled VM handed another Spec's run)."""
        self._cap = parse_size(cap, "output_limit") if isinstance(cap, str) else cap

    def extend(self, data: bytes) -> None:
        if self._cap is None:  # Spec(output_limit=None): the caller asked for everything
            self._data += data
            return
        room = self._cap - len(self._data)
        if room > 0 and self._value is None:
            self._data += data[:room]
        self.dropped += max(0, len(data) - max(room, 0))

    def value(self) -> bytes:
        """What was kept, followed by a marker line if anything was dropped.

        The buffer is turned into bytes once and then freed, so the host
        holds at most two copies of the cap for a moment, never three.
        """
        if self._value is None:
            if self.dropped:
                self._data += (f"\n[minibox: output truncated, {self.dropped} bytes dropped "
                               f"after the first {self._cap}]\n").encode()
            self._value = bytes(self._data)
            self._data = bytearray()
        return self._value


def make_result(exit_code: int | None, sig: int | None, *, started: float, timed_out: bool = False,
                oom: bool = False, stdout: bytes = b"", stderr: bytes = b"", usage: Usage | None = None) -> Result:
    """The Result of a command that started at ``started`` (time.monotonic()) and just ended.

    Both paths build every Result here: the main command's and each exec's.
    A command killed at its timeout has no exit status, whatever it was.
    """
    if timed_out and sig is None and exit_code is None:
        sig = SIGKILL
    return Result(exit_code=exit_code, signal=sig,
                  reason=reason_of(exit_code, sig, timed_out=timed_out, oom=oom),
                  stdout=stdout, stderr=stderr, duration=time.monotonic() - started,
                  usage=usage if usage is not None else Usage())


def split_wait_status(status: int) -> tuple[int | None, int | None]:
    """A wait(2) status -> (exit code, None) or (None, signal number)."""
    code = os.waitstatus_to_exitcode(status)
    return (None, -code) if code < 0 else (code, None)


class Sandbox(abc.ABC):
    """An isolated command: the common face of Container and VirtualMachine.

    Lifecycle: construct with a :class:`Spec` -> :meth:`start` -> optionally
    :meth:`exec`/:meth:`pause`/:meth:`resume`/:meth:`stats` -> :meth:`wait`
    -> :meth:`close`.  Used as a context manager, ``__enter__`` starts it and
    ``__exit__`` kills whatever still runs and frees every host resource,
    also when the ``with`` body raised.

    What both paths share lives here: ``spec``, ``id`` (12 hex digits, used
    in host object names), the :attr:`state` machine and its checks, and the
    Result building (:func:`make_result`).  ``pid`` and ``ip`` are the
    path's own: the container's init or QEMU, the veth's or the guest's
    address.
    """

    spec: Spec
    id: str

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.id = os.urandom(6).hex()
        self._state = CREATED
        self._result: Result | None = None
        self._started_at = 0.0

    # -- the state machine -------------------------------------------------------

    @property
    def state(self) -> str:
        """``"created"``, ``"running"``, ``"paused"``, ``"exited"`` or ``"closed"``."""
        return self._state

    def _set_state(self, state: str) -> None:
        assert state in STATES, state
        self._state = state

    def _command_ended(self) -> bool:
        """Whether the main command is known to have ended although wait() has not run yet."""
        return False

    def _check(self, verb: str) -> None:
        """Raise :class:`StateError` unless ``verb`` is allowed now (see :data:`ALLOWED`).

        The one place both paths ask; ``exec`` is also refused once the
        main command has ended, before ``wait()`` collected it: there is
        nothing left to run beside.
        """
        state = self._state
        if verb == "wait" and state == CLOSED and self._result is not None:
            return
        if state not in ALLOWED[verb]:
            raise StateError(verb, state, _WHY_VERB.get((verb, state), _WHY[state]))
        if verb == "exec" and self._command_ended():
            raise StateError(verb, EXITED, _WHY[EXITED])

    # -- the verbs -------------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Build the sandbox and start ``spec.argv`` in it (created -> running)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to end and return its Result (-> exited).

        ``timeout`` (seconds) bounds this wait: when it passes, the sandbox
        is killed and the Result's reason is ``"timeout"``.  ``None`` means
        the Spec's timeout, or forever.  Before :meth:`start` it raises
        :class:`StateError` (it does not start the sandbox); once ended it
        returns the same Result again.
        """

    @abc.abstractmethod
    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` to the sandbox (every process in it, for SIGKILL)."""

    @abc.abstractmethod
    def exec(self, argv: Sequence[str], timeout: float | None = None, *, stdin: bytes | None = None,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             user: tuple[int, int] | None = None, tty: bool = False) -> Result:
        """Run another command inside the running sandbox and return its Result.

        It runs with the Spec's environment, working directory, user and
        hardening; ``env`` adds to (or overrides) the Spec's variables,
        ``cwd`` and ``user`` replace the Spec's, ``stdin`` is bytes to feed
        it, ``tty=True`` gives it a new pseudo-terminal (its output, stderr
        included, arrives as ``stdout``).  ``timeout`` kills it (only it)
        when it passes: ``reason="timeout"``.
        """

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze every process (cgroup freezer / QMP stop) until :meth:`resume` (running -> paused)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Thaw a paused sandbox (paused -> running)."""

    @abc.abstractmethod
    def stats(self) -> Stats:
        """Current resource use."""

    @abc.abstractmethod
    def close(self) -> None:
        """Kill what still runs and release every host resource; idempotent (-> closed)."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """The host process that holds the sandbox: the container's init, or QEMU."""

    @property
    def ip(self) -> str | None:
        """Its address on minibox's bridge (``network="bridge"``), else None."""
        return None

    @property
    @abc.abstractmethod
    def kernel_release(self) -> str:
        """The release of the kernel the command runs on (host's or guest's)."""

    def _exec_spec(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None,
                   user: tuple[int, int] | None) -> Spec:
        """The validated argv, env, cwd and user of an exec, as a Spec of their own.

        Bad values raise :class:`~minibox.errors.SpecError` naming the
        argument (``"argv"``, ``"env"``, ``"cwd"``, ``"user"``), before
        anything runs.
        """
        merged = dict(self.spec.env)
        if env is not None:
            if not isinstance(env, Mapping):
                from .errors import SpecError

                raise SpecError("env", "expected a mapping of names to strings")
            merged.update(env)
        return Spec(argv=argv, env=merged, cwd=self.spec.cwd if cwd is None else cwd,
                    hostname=self.spec.hostname, user=self.spec.user if user is None else user)

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
