"""Stdio of a sandboxed command: pipes drained without deadlock, and a pty relay.

A parent that waits for a child and *then* reads its output deadlocks as
soon as the child fills a pipe (64 KiB): the child blocks writing, the
parent blocks waiting.  :func:`communicate` polls the child's pidfd
(pidfd_open(2)) together with the pipes, so output of any size flows while
the command runs -- the same problem subprocess.communicate() solves.

With ``Spec.tty`` the command has a pseudo-terminal instead (pty(7)),
allocated inside its own devpts instance and handed to us over a unix
socket (SCM_RIGHTS, unix(7)); :func:`relay_tty` shuttles bytes between the
caller's terminal and the pty master and forwards the window size
(TIOCGWINSZ/TIOCSWINSZ, ioctl_tty(2)).

What is captured for a Result goes into a :class:`~minibox.sandbox.CappedBuffer`:
the command is untrusted, and its output must not grow the caller without bound.
"""

from __future__ import annotations

import os
import select
import time

from .._lean import suppress

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..sandbox import CappedBuffer

READ_CHUNK = 1 << 16


def fd_for_child(fd: int | None, target: int, to_close: list[int]) -> int:
    """An fd the child may dup2() onto ``target`` without clobbering another std fd."""
    if fd is None:
        return -1
    if fd < 3 and fd != target:
        fd = os.dup(fd)  # >= 3, close-on-exec; the child's dup2 clears that
        to_close.append(fd)
    return fd


class Pipes:
    """The parent's ends of the child's stdio pipes."""

    def __init__(self) -> None:
        self.stdin_w: int | None = None
        self.stdout_r: int | None = None
        self.stderr_r: int | None = None

    def close(self) -> None:
        for name in ("stdin_w", "stdout_r", "stderr_r"):
            fd = getattr(self, name)
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)


def communicate(pidfd: int, pipes: Pipes, stdin_data: bytes | None, deadline: float | None,
                 out: CappedBuffer, err: CappedBuffer,
                 watch: dict[int, Callable[[], None]] | None = None) -> bool:
    """Feed stdin, drain stdout/stderr, until the process exits and the pipes close.

    Returns False when ``deadline`` (a time.monotonic() value) passed first.
    Draining while waiting means a child writing megabytes never blocks on a
    full pipe (the deadlock subprocess.communicate() also avoids).  ``watch``
    maps more fds to what to do when one becomes readable (the cgroup's OOM
    event); the callback must consume the event.
    """
    poller = select.poll()
    targets: dict[int, CappedBuffer] = {}
    if pipes.stdout_r is not None:
        poller.register(pipes.stdout_r, select.POLLIN)
        targets[pipes.stdout_r] = out
    if pipes.stderr_r is not None:
        poller.register(pipes.stderr_r, select.POLLIN)
        targets[pipes.stderr_r] = err
    pending = memoryview(stdin_data or b"")
    if pipes.stdin_w is not None:
        if pending:
            os.set_blocking(pipes.stdin_w, False)
            poller.register(pipes.stdin_w, select.POLLOUT)
        else:
            os.close(pipes.stdin_w)
            pipes.stdin_w = None
    poller.register(pidfd, select.POLLIN)
    watch = dict(watch or {})
    for fd in watch:
        poller.register(fd, select.POLLIN)
    exited = False
    while targets or not exited:
        timeout_ms: float | None = None
        if deadline is not None:
            timeout_ms = (deadline - time.monotonic()) * 1000
            if timeout_ms <= 0:  # checked every round: a flood of output never lets poll() come back empty
                return False
        events = poller.poll(timeout_ms)
        for fd, mask in events:
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
                for other in watch:  # nothing left to watch for once the process is gone
                    poller.unregister(other)
                watch.clear()
            elif fd in watch:
                watch[fd]()
            elif fd == pipes.stdin_w:
                try:
                    written = os.write(fd, pending[:READ_CHUNK])
                    pending = pending[written:]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    poller.unregister(fd)
                    os.close(fd)
                    pipes.stdin_w = None
            elif fd in targets:
                data = os.read(fd, READ_CHUNK) if mask & (select.POLLIN | select.POLLHUP) else b""
                if data:
                    targets[fd].extend(data)
                else:
                    poller.unregister(fd)
                    del targets[fd]
    return True


def copy_window_size(source_fd: int, target_fd: int) -> None:
    """TIOCGWINSZ from ``source_fd`` (when it is a terminal), TIOCSWINSZ onto ``target_fd``."""
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(source_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # not a terminal: the pty keeps its default size


def receive_fd(sock: Any) -> int | None:
    """One fd sent with SCM_RIGHTS, or None when the peer closed without sending."""
    import socket

    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    except OSError:
        return None
    return fds[0] if fds else None


def relay_tty(pidfd: int, master: int, stdin: object, stdout: int | None, deadline: float | None,
               out: CappedBuffer) -> bool:
    """Shuttle bytes between the caller and the container's pty until the command exits.

    Input comes from ``stdin`` when it is an fd (the caller's terminal) or
    bytes; output goes to ``stdout`` when it is an fd, else into ``out``.
    Reading the master fails with EIO once every slave fd is closed.
    """
    poller = select.poll()
    poller.register(master, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    in_fd = stdin if isinstance(stdin, int) else None
    if in_fd is not None:
        poller.register(in_fd, select.POLLIN)
    elif isinstance(stdin, (bytes, bytearray)):
        os.write(master, bytes(stdin))
    exited = False
    while True:
        timeout_ms = None if deadline is None else max(0.0, (deadline - time.monotonic()) * 1000)
        if not exited and timeout_ms == 0.0:  # checked every round, as in communicate()
            return False
        if exited:
            timeout_ms = 0 if timeout_ms is None else min(timeout_ms, 0)
        events = poller.poll(timeout_ms)
        if not events:
            if exited:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        for fd, _mask in events:
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
            elif fd == master:
                try:
                    data = os.read(master, READ_CHUNK)
                except OSError:  # EIO: the slave side is gone
                    data = b""
                if not data:
                    return True
                if stdout is not None:
                    os.write(stdout, data)
                else:
                    out.extend(data)
            elif fd == in_fd:
                data = os.read(fd, READ_CHUNK)
                if data:
                    os.write(master, data)
                else:
                    poller.unregister(fd)
