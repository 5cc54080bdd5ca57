"""Stand-ins for a few standard-library helpers, for the modules a command-line start imports.

A fresh interpreter pays for every module it imports, and on these
machines a ``minibox run`` spent more time importing than running the
container (docs/benchmarks.md, "Where a CLI run's milliseconds go").  The
helpers below are the few the start path used from modules that are costly
for what they provide here:

* :func:`suppress` and :func:`contextmanager` -- :mod:`contextlib` imports
  :mod:`collections` and :mod:`functools` (about 4 ms together);
* the signal numbers and ``pidfd_send_signal`` -- :mod:`signal` wraps the
  same C module ``_signal`` in enum classes, and :mod:`enum` costs about 3 ms;
* :func:`send_fd` -- :mod:`socket` wraps ``_socket`` in enum classes too and
  imports :mod:`selectors` (about 4 ms);
* :func:`sha256` -- :mod:`hashlib` loads OpenSSL (about 2 ms); CPython's
  built-in SHA-256 gives the same digest;
* :func:`leave` -- ``sys.exit`` would finalize every imported module first,
  milliseconds a short-lived command does not need to spend;
* :func:`begin` -- not a stand-in: the cycle collector's default pace
  spends a short-lived command's milliseconds on the objects it has just
  imported.

Each behaves as the standard version does for the way minibox uses it.
The rest of minibox (the VM path, the demos, gc) imports the standard
modules as usual.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: no stub, ints instead of enum members
import os
import sys

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import Any, NoReturn, ParamSpec, TypeVar

    P = ParamSpec("P")
    T = TypeVar("T")

SIGKILL: int = _signal.SIGKILL
SIGTERM: int = _signal.SIGTERM
SIGSTOP: int = _signal.SIGSTOP
SIGCONT: int = _signal.SIGCONT
SIGCHLD: int = _signal.SIGCHLD
NSIG: int = _signal.NSIG


def signal_number(name: str) -> int | None:
    """The number of signal ``name`` ("SIGTERM", "SIGRTMIN"...), as ``signal.Signals[name]`` finds it; else None.

    signal.Signals holds the module's upper-case names that start with SIG
    but not SIG_ (SIG_DFL, SIG_BLOCK... are not signals).
    """
    if not (name.isupper() and name.startswith("SIG") and not name.startswith("SIG_")):
        return None
    number = getattr(_signal, name, None)
    return number if isinstance(number, int) else None


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """pidfd_send_signal(2), as :func:`signal.pidfd_send_signal`."""
    _signal.pidfd_send_signal(pidfd, sig)


class suppress:  # lower case, as contextlib names it
    """``with suppress(OSError): ...`` -- :class:`contextlib.suppress`: the listed exceptions end the block quietly."""

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self._exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        return kind is not None and issubclass(kind, self._exceptions)


class _GeneratorContext:
    """The context manager :func:`contextmanager` returns: one generator, one ``yield``."""

    def __init__(self, generator: Iterator[object]) -> None:
        self._generator = generator

    def __enter__(self) -> Any:
        try:
            return next(self._generator)
        except StopIteration:
            raise RuntimeError("generator didn't yield") from None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if kind is None:
            try:
                next(self._generator)
            except StopIteration:
                return False
            raise RuntimeError("generator didn't stop")
        if value is None:
            value = kind()
        try:
            self._generator.throw(value)  # type: ignore[attr-defined]
        except StopIteration as e:
            return e is not value  # the generator caught it and finished: suppressed
        except BaseException as e:
            if e is value:  # the generator let it through: the with statement re-raises it
                value.__traceback__ = traceback
                return False
            raise
        raise RuntimeError("generator didn't stop after throw()")


def contextmanager(function: Callable[P, Iterator[T]]) -> Callable[P, AbstractContextManager[T]]:
    """:func:`contextlib.contextmanager` for a generator that yields once."""

    def make(*args: P.args, **kwargs: P.kwargs) -> AbstractContextManager[T]:
        return _GeneratorContext(function(*args, **kwargs))

    make.__name__ = function.__name__
    make.__qualname__ = function.__qualname__
    make.__doc__ = function.__doc__
    make.__wrapped__ = function  # type: ignore[attr-defined]
    return make


def send_fd(sock: _socket.socket, message: bytes, fd: int) -> None:
    """Send ``message`` with one file descriptor over a Unix socket (SCM_RIGHTS), as :func:`socket.send_fds`."""
    import _socket  # imported here: most fresh interpreters (minibox-oci's verbs) send no fd

    sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder, signed=True))])


#: A console script's cycle collector runs after this many net allocations (Python's default: 700).
COLLECT_AFTER = 20_000


def sha256(data: bytes = b"") -> Any:
    """A SHA-256 hash object, as ``hashlib.sha256(data)``, from CPython's built-in module."""
    try:  # _sha256 until 3.11, _sha2 from 3.12
        from _sha256 import sha256 as built_in  # type: ignore[import-not-found]
    except ImportError:
        try:
            from _sha2 import sha256 as built_in  # type: ignore[import-not-found]
        except ImportError:
            from hashlib import sha256 as built_in
    return built_in(data)


def begin() -> None:
    """A console script's start: collect reference cycles every :data:`COLLECT_AFTER` allocations.

    At the default 700, a ``minibox run -- /bin/true`` made ten young
    collections and one of the middle generation, and that one walked every
    object of the modules imported so far: 2-2.5 ms of a 44 ms command
    (measured with gc.callbacks, docs/benchmarks.md).  The whole command
    allocates about 5,000-6,500 objects, so now it collects none; a long
    command (``minibox compare``, a VM's event loop) still collects, in
    larger batches.
    """
    import gc

    gc.set_threshold(COLLECT_AFTER)


def leave(code: int) -> NoReturn:
    """A console script's exit: flush stdout and stderr, then os._exit(code).

    os._exit skips atexit, so the owner's lock file (minibox/owner.py) is
    removed here as its hook would, if this process made one.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    owner = sys.modules.get("minibox.owner")
    if owner is not None:
        owner._remove_lock_at_exit()
    os._exit(code)
