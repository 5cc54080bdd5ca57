"""The host end of a VM's channels: one I/O pump, and the agent's frames turned into state.

QEMU relays five byte streams for a VM (machine.py): the serial console,
the guest agent's three virtio-serial ports (``minibox.control``,
``minibox.stdout``, ``minibox.stderr``: virtio-serial, virtio spec v1.2
§5.3) and QEMU's own stderr.  One thread multiplexes them with
selectors(3)/epoll(7) until QEMU has closed them all:

* the console and QEMU's stderr keep only their last :data:`CONSOLE_KEEP`
  bytes, for error messages;
* the command's stdout/stderr go to the caller's file descriptors, or into
  buffers for the Result;
* the control port carries the agent's frames (agent.py): each one updates
  :class:`AgentState` under the VM's condition variable, which the
  VM's verbs wait on.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from . import agent as _agent

#: Bytes of console and QEMU stderr kept for error messages.
CONSOLE_KEEP = 16 * 1024


@dataclass
class ExecState:
    """The host's view of one command started through the agent."""

    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    exit: tuple[int | None, int | None] | None = None
    failure: tuple[str, int, str] | None = None


@dataclass
class AgentState:
    """What the guest told us so far; read and written under the VM's condition."""

    release: str = ""                                   # the guest's uname -r (hello frame)
    running: bool = False                               # the main command started
    main_exit: tuple[int | None, int | None] | None = None
    failure: tuple[str, int, str] | None = None         # a setup step of the main command failed
    execs: dict[int, ExecState] = field(default_factory=dict)
    io_done: bool = False                               # every channel reached EOF


def keep_tail(buf: bytearray, data: bytes, keep: int = CONSOLE_KEEP) -> None:
    """Append ``data`` to ``buf``, keeping only its last ``keep`` bytes."""
    buf += data
    del buf[:-keep]


def fd_sink(fd: int | None, buf: bytearray) -> Callable[[bytes], None]:
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
    into :attr:`stdout_buf`/:attr:`stderr_buf`).
    """

    def __init__(self, cond: threading.Condition, stdout: int | None, stderr: int | None) -> None:
        self.cond = cond
        self.state = AgentState()
        self.console = bytearray()
        self.qemu_err = bytearray()
        self.stdout_buf = bytearray()
        self.stderr_buf = bytearray()
        self._out_fd, self._err_fd = stdout, stderr
        self._thread: threading.Thread | None = None

    # ---- the pump ----------------------------------------------------------------

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
        sinks: dict[int, Callable[[bytes], None]] = {
            console.fileno(): lambda b: keep_tail(self.console, b),
            out.fileno(): fd_sink(self._out_fd, self.stdout_buf),
            err.fileno(): fd_sink(self._err_fd, self.stderr_buf),
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
                    if data:
                        sinks[fd](data)
                    else:
                        sel.unregister(fd)
                        del sinks[fd]
        finally:
            sel.close()
            os.close(qemu_err)
            with self.cond:
                self.state.io_done = True
                self.cond.notify_all()

    # ---- frame dispatch -------------------------------------------------------------

    def _frames(self, reader: _agent.FrameReader, data: bytes) -> None:
        for kind, ident, payload in reader.feed(data):
            with self.cond:
                self.dispatch(kind, ident, payload)
                self.cond.notify_all()

    def dispatch(self, kind: bytes, ident: int, payload: bytes) -> None:
        """Apply one guest -> host frame to :attr:`state` (the caller holds ``cond``)."""
        st = self.state
        if kind == _agent.HELLO:
            st.release = payload.decode(errors="replace")
        elif kind == _agent.STARTED and ident == 0:
            st.running = True
        elif kind in (_agent.STDOUT, _agent.STDERR) and ident in st.execs:
            ex = st.execs[ident]
            (ex.out if kind == _agent.STDOUT else ex.err).extend(payload)
        elif kind == _agent.EXIT:
            if ident == 0:
                st.main_exit = _agent.parse_exit(payload)
            elif ident in st.execs:
                st.execs[ident].exit = _agent.parse_exit(payload)
        elif kind == _agent.FAIL:
            if ident == 0:
                st.failure = _agent.parse_failure(payload)
            elif ident in st.execs:
                st.execs[ident].failure = _agent.parse_failure(payload)

    # ---- what the host reports -----------------------------------------------------

    def captured(self) -> tuple[bytes, bytes]:
        """The main command's captured stdout and stderr."""
        return bytes(self.stdout_buf), bytes(self.stderr_buf)

    def console_tail(self, lines: int = 15) -> str:
        text = self.console.decode(errors="replace").replace("\r", "")
        return "\n".join(text.strip().splitlines()[-lines:])

    def qemu_error(self) -> str:
        return self.qemu_err.decode(errors="replace").strip() or "(QEMU printed nothing)"
