"""The cgroup file system's primitives: one write(2) per command, bounded waits.

cgroupfs (man 7 cgroups) is driven by plain file operations: ``mkdir`` makes
a group, one ``write(2)`` to a knob is one command (cgroupfs parses each
write on its own, so values are never written in pieces), ``rmdir`` removes
an empty group and fails with EBUSY while a process is still exiting.  Both
backends (:mod:`.v1`, :mod:`.v2`) use only these functions; the unit tests
replace ``mkdir``/``rmdir``/``write`` to imitate cgroupfs on a plain
directory tree.
"""

from __future__ import annotations

import errno
import os
import time

from ...errors import SetupError, SpecError

TYPE_CHECKING = False  # typing and collections.abc cost each fresh interpreter (minibox-oci) milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Final

# Bounds: every wait in this package ends.
REMOVE_BACKOFF: Final = (0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.04)
REMOVE_BUDGET: Final = 0.1  # seconds of EBUSY retries per remove(), for all its directories
FREEZE_TIMEOUT: Final = 2.0
KILL_TIMEOUT: Final = 5.0


def mkdir(path: str) -> None:
    os.mkdir(path, 0o755)


def rmdir(path: str) -> None:
    os.rmdir(path)


def write(path: str, value: str) -> None:
    """One write(2) of ``value``: cgroupfs parses each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    """The whole file, through os.read (no buffered text object: a third of the cost)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="replace")


def read_opt(path: str) -> str | None:
    """The file's text, or None when the file (or the cgroup) does not exist."""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def int_opt(path: str) -> int | None:
    text = read_opt(path)
    if text is None or not text.strip():
        return None
    value = text.split()[0]
    return None if value == "max" else int(value)


def keyed(text: str | None) -> dict[str, str]:
    """Parse flat keyed files: ``memory.events``, ``cpu.stat``, ``memory.oom_control``."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def unique(dirs: Iterable[str]) -> list[str]:
    """Directories once each, in order (co-mounted v1 controllers share one)."""
    return list(dict.fromkeys(dirs))


def rmdir_retrying(directory: str, deadline: float | None = None) -> None:
    """rmdir, retrying EBUSY (a process still exiting) with a short backoff until ``deadline``.

    The backoff grows to its last step and stays there, so a later deadline
    (a podman conmon that exits after ``podman rm`` returns: the tests and
    bench/bench_oci.py) simply allows more tries.
    """
    if deadline is None:
        deadline = time.monotonic() + REMOVE_BUDGET
    tries = 0
    while True:
        delay = REMOVE_BACKOFF[min(tries, len(REMOVE_BACKOFF) - 1)]
        tries += 1
        try:
            rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def set_limit(path: str, value: str, spec_field: str | None) -> None:
    """Write one limit; a value or file the host refuses is the caller's SpecError."""
    try:
        write(path, value)
    except FileNotFoundError as e:
        if spec_field is None:
            raise SetupError("cgroup", e.errno, detail=path) from e
        raise SpecError(spec_field, f"this host cannot enforce it: {path} does not exist{missing_hint(path)}") from e
    except OSError as e:
        if spec_field is not None and e.errno in (errno.EINVAL, errno.ERANGE):
            raise SpecError(spec_field, f"the kernel refused {value!r} in {path}: {os.strerror(e.errno)}") from e
        raise SetupError("cgroup", e.errno, detail=path) from e


def missing_hint(path: str) -> str:
    if path.endswith(("memory.memsw.limit_in_bytes", "memory.swap.max")):
        return " (swap accounting is off in this kernel; leave memory_swap unset)"
    return ""


def makedirs(path: str, stop: str) -> None:
    """Create ``path`` and its missing parents below ``stop`` (which must exist)."""
    missing: list[str] = []
    current = path
    while current != stop and len(current) > len(stop) and not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            mkdir(directory)
        except FileExistsError:
            pass


def mkdir_child(child: str, base: str, stop: str) -> None:
    """mkdir the container's directory, creating the parent on first use (or after a prune)."""
    for _ in range(3):
        try:
            mkdir(child)
            return
        except FileNotFoundError:
            makedirs(base, stop)
    mkdir(child)


class Creation:
    """A cgroup being created: what exists so far, removed again if creation fails.

    Both backends use it the same way: ``created`` lists the directories made,
    ``path`` is the one being worked on (for the error message).  A SpecError,
    SetupError or PreflightError passes through; an OSError becomes
    ``SetupError("cgroup", errno, path)``.  Either way nothing is left behind.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.created: list[str] = []
        self.path = ""

    def __enter__(self) -> Creation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None:
            return
        cleanup(self.created)
        # The shared parent goes too once empty, as after a container's end
        # (Cgroup.remove): a limit the kernel refused must not leave an empty
        # parent behind.  rmdir refuses a parent another container uses.
        for parent in dict.fromkeys(os.path.dirname(d) for d in self.created):
            try:
                rmdir(parent)
            except OSError:
                pass
        if isinstance(error, OSError):
            if error.errno == errno.EEXIST:
                detail = f"{self.path} (a container named {self.name!r} exists)"
            else:
                detail = error.filename or self.path
            raise SetupError("cgroup", error.errno, detail=detail) from error


def cleanup(created: Sequence[str]) -> None:
    for directory in reversed(created):
        try:
            rmdir_retrying(directory)
        except OSError:
            pass
