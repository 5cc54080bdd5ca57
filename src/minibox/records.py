"""One state record per sandbox, container or VM alike: what exists, and who owns it.

Namespaces vanish with their last process, but cgroups, QEMU, virtiofsd,
taps, veths and address leases do not: if the caller is killed (SIGKILL, the
OOM killer, a crash) nobody removes them.  So every sandbox writes down,
*before* it creates any of them, what it is about to create:

    runtime_dir()/sandboxes/<id>.json
    {"format": 1, "kind": "container" | "vm", "id": "3f2a...",
     "owner": {"pid": 4242, "starttime": 123456, "lock": ".../owners/4242-9c1e.lock"},
     "detached": false, "created": 1764672000.0,
     "processes": [{"pid": 4250, "starttime": 123460, "role": "init"}],
     "cgroup": {"version": 1, "paths": {"memory": "/sys/fs/cgroup/memory/.../minibox/3f2a..."}},
     "network": {"id": "3f2a...", "bridge": "minibox0", "link": "mbv3f2a...", "nft_table": null}}

Each named thing may not exist yet (the record comes first) or any more
(cleanup is idempotent).  The record is replaced atomically (rename(2)), so
a reader sees the old or the new version, never half of one.

**Who is alive is decided by a lock, not by age or by /proc.**  The owner
names a lock file it holds (flock(2), see :mod:`minibox.owner`): the kernel
drops that lock the instant the owner process is gone, however it dies, even
while its zombie waits to be reaped.  If another process can take the lock,
the owner is dead and everything its records name may go (``minibox gc``,
:mod:`minibox.gc`); if it cannot, the sandbox is live and is left alone.  A
*detached* sandbox outlives its owner on purpose: it is alive while its own
recorded process runs (same pid *and* start time, not a zombie).

Processes are named by pid *and* start time (field 22 of /proc/PID/stat,
proc(5)): a pid alone may belong to an unrelated process by the time anyone
looks.  :func:`kill_verified` signals through a pidfd (pidfd_open(2)) opened
*before* the start time is checked, so the signal cannot reach a process
that took the pid over in between.
"""

from __future__ import annotations

import os
import select
import time

from . import _json as json  # json's C half without its Python layer (re, enum): the CLI starts faster
from ._lean import SIGKILL, pidfd_send_signal, suppress
from .errors import PreflightError, SetupError
from .paths import runtime_dir_name
from .procfs import start_time, stat

TYPE_CHECKING = False  # importing typing costs milliseconds (on every start): annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any, TypedDict

#: The record format's version; a record of another format is left alone.
FORMAT = 1
#: Where the records live, below ``runtime_dir()``.
DIRECTORY = "sandboxes"
#: How long a verified SIGKILL waits for the process to be gone.
KILL_WAIT = 5.0


if TYPE_CHECKING:
    class ProcessRecord(TypedDict):
        """One process, identified so that a reused pid is not mistaken for it."""

        pid: int
        starttime: int | None
else:
    ProcessRecord = dict  # the same dicts at run time



# -- processes, by pid and start time ---------------------------------------------------


def identify(pid: int) -> ProcessRecord:
    """``pid`` with its current start time, for a record."""
    return {"pid": pid, "starttime": start_time(pid)}


def as_process(value: Any) -> ProcessRecord | None:
    """A recorded process, or None for anything else (a record is input: never trust its shape)."""
    if isinstance(value, dict) and isinstance(value.get("pid"), int):
        start = value.get("starttime")
        return {"pid": value["pid"], "starttime": start if isinstance(start, int) else None}
    return None


def is_running(proc: ProcessRecord) -> bool:
    """Whether the recorded process still runs: same pid *and* start time, and not a zombie."""
    if proc["pid"] <= 0 or proc["starttime"] is None:
        return False
    st = stat(proc["pid"])
    return st is not None and st.starttime == proc["starttime"] and st.state != "Z"


def signal_verified(proc: ProcessRecord, sig: int, wait: float = 0.0) -> bool:
    """Send ``sig`` to the recorded process if it is still that process; return whether it was sent.

    With ``wait``, wait up to that many seconds for it to exit.  A pid whose
    start time differs (or is unknown) is left alone: it is someone else's now.
    """
    if proc["starttime"] is None or proc["pid"] <= 0:
        return False
    try:
        pidfd = os.pidfd_open(proc["pid"])
    except (ProcessLookupError, OSError):
        return False
    try:
        # The pidfd pins the process it was opened for: if the start time still
        # matches now, that process is the recorded one, and the signal goes to it.
        if start_time(proc["pid"]) != proc["starttime"]:
            return False
        try:
            pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return False
        if wait:
            select.select([pidfd], [], [], wait)  # readable once it has exited
        return True
    finally:
        os.close(pidfd)


def kill_verified(proc: ProcessRecord, timeout: float = KILL_WAIT) -> bool:
    """SIGKILL the recorded process if it is still that process and wait until it is gone."""
    return signal_verified(proc, SIGKILL, wait=timeout)


# -- the record files --------------------------------------------------------------------


def directory_name() -> str:
    return os.path.join(runtime_dir_name(), DIRECTORY)


def path_of(sandbox_id: str) -> str:
    return os.path.join(directory_name(), f"{sandbox_id}.json")


def _ensure_directory() -> str:
    directory = directory_name()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SetupError("state directory", e.errno, detail=directory) from e
    return directory


def write_atomically(path: str, data: dict[str, Any], step: str = "state record", *,
                     replacing: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    ``replacing``: ``path`` holds the previous version, and the two are
    swapped (:func:`_swap`) before the previous one is unlinked under the
    temporary name.  A plain rename over an existing file is, to ext4 (as
    /run is on these machines), a replace-by-rename whose data it hurries to
    disk (its ``auto_da_alloc``), and the record's unlink at the end then
    waited for that write: 0.46 ms against 0.06 ms, measured
    (docs/benchmarks.md).  Readers see the old or the new version either way.

    Any failure (a read-only or full runtime directory) is a SetupError naming
    ``step`` and the path, and leaves no temporary file behind.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    swapped = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            payload = json.dumps(data).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        swapped = replacing and _swap(tmp, path)
        if not swapped:
            os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SetupError(step, e.errno, detail=path) from e
    if swapped:
        # The previous version, under the temporary name now; should this fail, the record
        # is written all the same, and gc removes a dead owner's temporary files (gc.py).
        with suppress(OSError):
            os.unlink(tmp)


def _swap(a: str, b: str) -> bool:
    """Exchange the files at paths ``a`` and ``b`` in one step (renameat2(2), RENAME_EXCHANGE).

    False if that cannot be done here -- ``b`` does not exist, the file
    system does not support it, or the C core is missing or older than
    this call -- and the caller renames as usual.
    """
    try:
        from ._native import lib  # loaded already in a container's owner; Python's os has no renameat2

        renameat2 = lib.renameat2
    except (PreflightError, AttributeError):
        return False
    return bool(renameat2(lib.AT_FDCWD, os.fsencode(a), lib.AT_FDCWD, os.fsencode(b), lib.RENAME_EXCHANGE) == 0)


def load(path: str | Path) -> dict[str, Any] | None:
    """A record, or None if it is gone, damaged or not of our format."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("id"), str):
        return None
    return data


def all_records() -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Every record file (path, record-or-None), oldest name first; temporary files excluded."""
    directory = directory_name()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except OSError as e:
        raise SetupError("state directory", e.errno, detail=directory) from e
    for name in names:
        if name.endswith(".json"):
            path = os.path.join(directory, name)
            yield path, load(path)


def find(sandbox_id: str) -> dict[str, Any] | None:
    """The record of ``sandbox_id`` (or the only one whose id starts with it)."""
    exact = load(path_of(sandbox_id))
    if exact is not None:
        return exact
    matches = [r for _, r in all_records() if r is not None and r["id"].startswith(sandbox_id)]
    return matches[0] if len(matches) == 1 else None


class Record:
    """The live record of one sandbox, kept by its owner.

    :meth:`create` takes the owner's lock (:func:`minibox.owner.acquire`)
    and writes the record; :meth:`update` rewrites it (only the owner ever
    writes it); :meth:`remove` deletes it and counts one sandbox fewer
    (the owner's lock file stays until the process exits: minibox/owner.py).
    """

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self._removed = False

    @classmethod
    def create(cls, kind: str, sandbox_id: str, *, detached: bool = False, **fields: Any) -> Record:
        """Write the record of a sandbox about to be built; SetupError if the runtime dir cannot take it."""
        from . import owner

        _ensure_directory()
        me = owner.acquire()
        data: dict[str, Any] = {"format": FORMAT, "kind": kind, "id": sandbox_id, "owner": me,
                                "detached": detached, "created": time.time(), "processes": []}
        data.update(fields)
        path = path_of(sandbox_id)
        try:
            write_atomically(path, data)
        except BaseException:
            owner.release()
            raise
        return cls(path, data)

    def update(self, **fields: Any) -> None:
        """Set ``fields`` and rewrite the record (atomically)."""
        self.data.update(fields)
        write_atomically(self.path, self.data, replacing=True)

    def add_process(self, pid: int, role: str) -> None:
        """Name one more process of the sandbox (pid and start time)."""
        entry: dict[str, Any] = dict(identify(pid))
        entry["role"] = role
        self.update(processes=[*self.data["processes"], entry])

    def abandon(self) -> None:
        """The owner gives up on this sandbox (its cleanup failed): the record stays for gc,
        which collects an abandoned record even while its owner lives."""
        if self._removed:
            return
        from . import owner

        self.data["abandoned"] = True
        try:
            write_atomically(self.path, self.data, replacing=True)
        finally:
            self._removed = True
            owner.release()

    def leave(self) -> None:
        """The owner lets a detached sandbox go: the record stays, naming its own process."""
        if self._removed:
            return
        from . import owner

        self._removed = True
        owner.release()

    def remove(self) -> None:
        """Delete the record (idempotent); the owner counts one sandbox fewer (its lock stays until exit)."""
        if self._removed:
            return
        from . import owner

        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SetupError("state record", e.errno, detail=self.path) from e
        self._removed = True
        owner.release()


# -- liveness ----------------------------------------------------------------------------


def liveness(record: dict[str, Any]) -> tuple[bool, str]:
    """(alive, why) for a record: by its owner's lock, or by its own process when detached."""
    from . import owner

    if record.get("abandoned"):
        return False, "its owner gave up on it after a failed cleanup"
    if record.get("detached"):
        procs = [p for p in map(as_process, record.get("processes", [])) if p is not None]
        running = [p for p in procs if is_running(p)]
        if running:
            return True, f"detached, its process {running[0]['pid']} runs"
        if not procs and owner.lock_held(_owner_lock(record)):
            return True, "detached, still being started by a live owner"
        return False, "detached, and its process has exited"
    lock = _owner_lock(record)
    owner_pid = record.get("owner", {}).get("pid") if isinstance(record.get("owner"), dict) else None
    if owner.lock_held(lock):
        return True, f"its owner (pid {owner_pid}) is alive and holds its lock"
    return False, f"its owner (pid {owner_pid}) is gone (its lock is free)"


def _owner_lock(record: dict[str, Any]) -> str | None:
    me = record.get("owner")
    lock = me.get("lock") if isinstance(me, dict) else None
    return lock if isinstance(lock, str) else None

