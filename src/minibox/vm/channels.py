"""The host end of a VM's channels: one I/O pump, and the agent's frames turned into state.

QEMU relays five byte streams for a VM (machine.py): the serial console,
the guest agent's three virtio-serial ports (``minibox.control``,
``minibox.stdout``, ``minibox.stderr``: virtio-serial, virtio spec v1.2
§5.3) and QEMU's own stderr.  One thread multiplexes them with
selectors(3)/epoll(7) until QEMU has closed them all:

* the console and QEMU's stderr keep only their last :data:`CONSOLE_KEEP`
  bytes, for error messages;
* the command's stdout/stderr go to the caller's file descriptors, or into
  buffers for the Result, each capped at ``Spec.output_limit`` bytes (:data:`~minibox.sandbox.OUTPUT_CAP` by default);
* the control port carries the agent's frames (agent.py): each one updates
  :class:`AgentState` under the VM's condition variable, which the
  VM's verbs wait on.

The guest is untrusted, and whatever it sends the host's memory stays
bounded: at most one frame (agent.MAX_PAYLOAD) is buffered, output beyond
the cap is counted and dropped (the Result ends with a marker saying how
much), the console keeps a tail.  A frame that breaks the protocol is a
:class:`~minibox.errors.ProtocolError`: the pump records it, stops reading
the control port and calls ``on_violation`` (the VM kills QEMU); the VM's
verbs then raise it.  Nothing the guest sends ends the pump thread with a
traceback: any other exception is recorded the same way.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ProtocolError
from ..sandbox import OUTPUT_CAP, CappedBuffer, Usage
from . import agent as _agent

#: Bytes of console and QEMU stderr kept for error messages.
CONSOLE_KEEP = 16 * 1024
#: Characters of the guest's hello (its kernel release) kept.
HELLO_KEEP = 256


@dataclass
class ExecState:
    """The host's view of one command started through the agent."""

    out: CappedBuffer = field(default_factory=CappedBuffer)
    err: CappedBuffer = field(default_factory=CappedBuffer)

    @classmethod
    def capped(cls, limit: int | str | None) -> ExecState:
        """An exec whose captured output keeps up to ``limit`` bytes per stream (Spec.output_limit)."""
        return cls(out=CappedBuffer(limit), err=CappedBuffer(limit))
    exit: tuple[int | None, int | None] | None = None
    failure: tuple[str, int, str] | None = None
    usage: Usage = field(default_factory=Usage)  # from the agent's wait4(2)
    oom: bool = False                            # the guest cgroup's OOM killer ended some of it


@dataclass
class AgentState:
    """What the guest told us so far; read and written under the VM's condition."""

    release: str = ""                                   # the guest's uname -r (hello frame)
    running: bool = False                               # the main command started
    main_exit: tuple[int | None, int | None] | None = None
    main_oom: bool = False                              # the guest cgroup's OOM killer ended some of it
    main_output: tuple[int, int] | None = None          # bytes its stdout/stderr ports carried, per the guest
    failure: tuple[str, int, str] | None = None         # a setup step of the main command failed
    execs: dict[int, ExecState] = field(default_factory=dict)
    io_done: bool = False                               # every channel reached EOF
    violation: ProtocolError | None = None              # the guest broke the protocol
    pump_error: BaseException | None = None             # the pump failed otherwise (a bug)


def keep_tail(buf: bytearray, data: bytes, keep: int = CONSOLE_KEEP) -> None:
    """Append ``data`` to ``buf``, keeping only its last ``keep`` bytes."""
    buf += data
    del buf[:-keep]


def fd_sink(fd: int | None, buf: CappedBuffer) -> Callable[[bytes], None]:
    """Where a command's output goes: the caller's ``fd``, or ``buf`` when None."""
    if fd is None:
        return buf.extend

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except OSError:
                return  # the caller closed its fd: drop, as a closed pipe would
    return write


class Channels:
    """The I/O pump of one VM and the state its frames build up.

    ``cond`` is the VM's condition variable: every change of :attr:`state`
    happens under it and notifies it.  ``stdout``/``stderr`` are the
    caller's file descriptors for the main command's output (None: capture
    into :attr:`stdout_buf`/:attr:`stderr_buf`).  ``on_violation`` is
    called from the pump thread once the guest broke the protocol (or the
    pump failed): it should end the VM.
    """

    def __init__(self, cond: threading.Condition, stdout: int | None, stderr: int | None,
                 on_violation: Callable[[], None] = lambda: None,
                 output_limit: int | str | None = OUTPUT_CAP) -> None:
        self.cond = cond
        self.state = AgentState()
        self.console = bytearray()
        self.qemu_err = bytearray()
        #: Spec.output_limit: the cap of each captured stream, the main command's and each exec's
        self.output_limit = output_limit
        self.stdout_buf = CappedBuffer(output_limit)
        self.stderr_buf = CappedBuffer(output_limit)
        self._out_fd, self._err_fd = stdout, stderr
        self._on_violation = on_violation
        self._thread: threading.Thread | None = None
        #: Bytes read on every channel so far: whether the pump still makes progress.
        self.bytes_read = 0
        #: Bytes read from the main command's stdout and stderr ports (kept or not).
        self.out_received = 0
        self.err_received = 0

    # ---- the pump ----------------------------------------------------------------

    def set_output_limit(self, limit: int | str | None) -> None:
        """The cap for the main command's output and later execs' (before the command runs)."""
        with self.cond:
            self.output_limit = limit
            self.stdout_buf.recap(limit)
            self.stderr_buf.recap(limit)

    def start(self, name: str, console: socket.socket, out: socket.socket, err: socket.socket,
              ctl: socket.socket, qemu_err: int) -> None:
        """Start the pump thread; it owns (and closes) ``qemu_err``."""
        self._thread = threading.Thread(target=self._pump, args=(console, out, err, ctl, qemu_err),
                                        name=name, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the pump to see EOF everywhere (QEMU must be gone or going)."""
        if self._thread is not None:
            self._thread.join()

    def _pump(self, console: socket.socket, out: socket.socket, err: socket.socket,
              ctl: socket.socket, qemu_err: int) -> None:
        """Copy every channel until QEMU closes them all; runs in its own thread."""
        reader = _agent.FrameReader()
        to_stdout, to_stderr = fd_sink(self._out_fd, self.stdout_buf), fd_sink(self._err_fd, self.stderr_buf)

        def stdout(data: bytes) -> None:
            to_stdout(data)
            with self.cond:  # output_complete() reads it under the condition
                self.out_received += len(data)
                self.cond.notify_all()

        def stderr(data: bytes) -> None:
            to_stderr(data)
            with self.cond:
                self.err_received += len(data)
                self.cond.notify_all()

        sinks: dict[int, Callable[[bytes], None]] = {
            console.fileno(): lambda b: keep_tail(self.console, b),
            out.fileno(): stdout,
            err.fileno(): stderr,
            ctl.fileno(): lambda b: self._frames(reader, b),
            qemu_err: lambda b: keep_tail(self.qemu_err, b),
        }
        sel = selectors.DefaultSelector()
        try:
            for fd in sinks:
                sel.register(fd, selectors.EVENT_READ)
            while sinks:
                for key, _ in sel.select():
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, 1 << 16)
                    except OSError:
                        data = b""
                    self.bytes_read += len(data)
                    try:
                        if data:
                            sinks[fd](data)
                            continue
                    except ProtocolError as e:
                        self._fail(violation=e)
                    sel.unregister(fd)  # EOF, or a control port that broke the protocol
                    del sinks[fd]
        except BaseException as e:  # a bug of ours: recorded for the caller, never a thread traceback
            self._fail(error=e)
        finally:
            sel.close()
            os.close(qemu_err)
            with self.cond:
                self.state.io_done = True
                self.cond.notify_all()

    def _fail(self, violation: ProtocolError | None = None, error: BaseException | None = None) -> None:
        with self.cond:
            if violation is not None and self.state.violation is None:
                self.state.violation = violation
            if error is not None and self.state.pump_error is None:
                self.state.pump_error = error
            self.cond.notify_all()
        self._on_violation()

    # ---- frame dispatch -------------------------------------------------------------

    def _frames(self, reader: _agent.FrameReader, data: bytes) -> None:
        with self.cond:  # once per chunk: a flood of tiny frames takes the lock once per read
            try:
                for kind, ident, payload in reader.feed(data):
                    self.dispatch(kind, ident, payload)
            finally:
                self.cond.notify_all()

    def dispatch(self, kind: bytes, ident: int, payload: bytes) -> None:
        """Apply one guest -> host frame to :attr:`state` (the caller holds ``cond``).

        Frames for commands the host does not know (an exec already
        collected, or ids the guest made up) cost nothing and are dropped.
        """
        st = self.state
        if kind == _agent.HELLO:
            st.release = payload[:HELLO_KEEP].decode(errors="replace")
        elif kind == _agent.STARTED:
            _agent.parse_started(payload)
            if ident == 0:
                st.running = True
        elif kind in (_agent.STDOUT, _agent.STDERR):
            if ident in st.execs:
                ex = st.execs[ident]
                (ex.out if kind == _agent.STDOUT else ex.err).extend(payload)
        elif kind == _agent.EXIT:
            status = _agent.parse_exit(payload)
            if ident == 0:
                st.main_exit = status
                st.main_oom = _agent.parse_exit_oom(payload)
                st.main_output = _agent.parse_exit_output(payload)
            elif ident in st.execs:
                st.execs[ident].exit = status
                peak, cpu = _agent.parse_exit_usage(payload)
                st.execs[ident].usage = Usage(memory_peak_bytes=peak, cpu_seconds=cpu)
                st.execs[ident].oom = _agent.parse_exit_oom(payload)
        elif kind == _agent.FAIL:
            failure = _agent.parse_failure(payload)
            if ident == 0:
                st.failure = failure
            elif ident in st.execs:
                st.execs[ident].failure = failure

    def output_complete(self) -> bool:
        """Whether all the main command's output is here (the caller holds ``cond``).

        True once the agent reported the exit with its output counts and the
        pump has read at least that much from both ports (or every channel
        ended).  The guest's counts are final when it sends them (every
        process in the guest has ended), and what the guest queued, QEMU
        relays to our sockets, in order: so nothing more of the command's
        output can come, and the VM may be ended without waiting for QEMU
        to close the ports.
        """
        claimed = self.state.main_output
        if self.state.io_done:
            return True
        return (claimed is not None and self.out_received >= claimed[0]
                and self.err_received >= claimed[1])

    # ---- what the host reports -----------------------------------------------------

    def captured(self) -> tuple[bytes, bytes]:
        """The main command's captured stdout and stderr."""
        return self.stdout_buf.value(), self.stderr_buf.value()

    def console_tail(self, lines: int = 15) -> str:
        text = self.console.decode(errors="replace").replace("\r", "")
        return "\n".join(text.strip().splitlines()[-lines:])

    def qemu_error(self) -> str:
        return self.qemu_err.decode(errors="replace").strip() or "(QEMU printed nothing)"
