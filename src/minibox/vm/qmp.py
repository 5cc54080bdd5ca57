"""QMP, the QEMU Machine Protocol: the control channel of a running VM.

QMP is JSON over a socket (docs/interop/qmp-spec.rst): QEMU greets, the
client negotiates capabilities, then sends commands (``stop``, ``cont``,
``quit``, ``query-status``...) and receives asynchronous events
(``SHUTDOWN``, ``STOP``, ``RESUME``, ``GUEST_PANICKED``).  minibox talks it
through the ``qemu.qmp`` package's :class:`QMPClient`, which is asyncio
based; :class:`Monitor` runs it on a private event loop in one background
thread so the rest of minibox stays synchronous.

The socket is one end of a socketpair whose other end QEMU inherited
(``-chardev socket,fd=N -mon chardev=...,mode=control``): QMPClient accepts
a connected socket object in place of an address (qemu.qmp 0.0.6).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from ..errors import SetupError

T = TypeVar("T")

#: The events a VM's state follows.
EVENTS = ("SHUTDOWN", "STOP", "RESUME", "GUEST_PANICKED", "RESET")

EventHandler = Callable[[str, dict[str, Any]], None]


class QMPCommandError(SetupError):
    """QEMU answered a QMP command with an error.

    ``error_class`` is QEMU's own class for it (``"GenericError"``,
    ``"DeviceNotFound"``, ``"CommandNotFound"``...; docs/interop/qmp-spec.rst,
    "Error"), kept as qemu.qmp's ``ExecuteError`` reports it, so a caller can
    tell a refused command from a lost connection (a plain
    :class:`SetupError` with step ``"qmp"``).
    """

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__("qmp", None, f"{command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


class Monitor:
    """A synchronous QMP connection over an inherited socket."""

    def __init__(self, sock: socket.socket, on_event: EventHandler, name: str = "minibox") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"qmp-{name}", daemon=True)
        self._thread.start()
        self._client = QMPClient(name)
        self._on_event = on_event
        self._listener = EventListener(EVENTS)
        self._client.register_listener(self._listener)
        self._pump: concurrent.futures.Future[None] | None = None
        self.version = ""
        try:
            self._run(self._client.connect(sock), timeout=30)
        except BaseException:
            self.close()
            raise
        greeting = self._client.greeting
        if greeting is not None:  # a model object whose .version is a plain dict
            version: Any = greeting.QMP.version
            qemu = version.get("qemu", {}) if isinstance(version, dict) else {}
            self.version = "{major}.{minor}.{micro}".format(**qemu) if qemu else ""
        self._pump = asyncio.run_coroutine_threadsafe(self._dispatch(), self._loop)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _dispatch(self) -> None:
        async for event in self._listener:
            data: Any = event.get("data", {})
            self._on_event(str(event["event"]), dict(data) if isinstance(data, dict) else {})

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """Run one QMP command and return its result.

        :class:`QMPCommandError` (with QEMU's error class) if QEMU refuses it,
        :class:`SetupError` if the connection fails or QEMU does not answer.
        """
        try:
            return self._run(self._client.execute(command, arguments), timeout)
        except ExecuteError as e:
            raise QMPCommandError(command, e.error_class, str(e)) from e
        except (QMPError, OSError, TimeoutError) as e:
            raise SetupError("qmp", None, f"{command}: {e}") from e

    def add_fd(self, fd: int, name: str, timeout: float = 30) -> None:
        """Hand QEMU a copy of ``fd`` (SCM_RIGHTS) under ``name``: QMP ``getfd``, for ``fd:name`` URIs."""
        async def getfd() -> None:
            self._client.send_fd_scm(fd)  # in the loop's thread, right before the command that takes it
            await self._client.execute("getfd", {"fdname": name})

        try:
            self._run(getfd(), timeout)
        except ExecuteError as e:
            raise QMPCommandError("getfd", e.error_class, str(e)) from e
        except (QMPError, OSError, TimeoutError) as e:
            raise SetupError("qmp", None, f"getfd: {e}") from e

    def close(self) -> None:
        """Disconnect and stop the loop thread; idempotent."""
        if not self._loop.is_closed():
            try:
                if self._pump is not None:
                    self._loop.call_soon_threadsafe(self._pump.cancel)
                self._run(self._client.disconnect(), timeout=5)
            except Exception:  # the peer may be gone already; closing anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
