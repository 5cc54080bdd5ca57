"""The process that owns sandboxes: its lock, its keeper, and what happens when it dies.

A sandbox dies with the process that owns it, unless it was started
detached.  Two kernel mechanisms make that hold however the owner dies
(exit, exception, SIGKILL, the OOM killer), and neither depends on which of
the owner's *threads* started the sandbox -- PR_SET_PDEATHSIG does, which is
why minibox does not rely on it (prctl(2): it fires when the parent
*thread* exits, and a library cannot know how long its caller's threads live).

**The owner's lock** (flock(2)).  While this process owns a sandbox it holds
an exclusive lock on ``runtime_dir()/owners/<pid>-<token>.lock``, and every
record it writes names that file (:mod:`minibox.records`).  The kernel
drops the lock when the last file descriptor of its open file description
closes -- when the process is gone, even before its zombie is reaped.  So
``minibox gc`` asks the kernel, not /proc and not the clock: a lock it can
take means a dead owner.  The file is created under a temporary name,
locked, and only then renamed into place, so nobody can ever see it
unlocked while its owner lives.  One lock per process, not per sandbox: a
process holding 300 containers spends one file descriptor on it.  It is
made with the process's first sandbox and kept until the process exits
(an atexit hook removes it; after a SIGKILL, ``minibox gc`` does), so a
process that starts containers one after another does not create and
remove a file for each.

**The owner's keeper** (csrc/keeper/keeper.c).  A tiny static process holding
one end of a socketpair whose other end only the owner holds, and a pidfd
(pidfd_open(2)) of every sandbox process the owner hands it.  When the
owner dies the kernel closes its end, the keeper reads EOF and SIGKILLs
every process it holds, then exits.  A pidfd of a process that has exited
makes the keeper drop it, and pidfd_send_signal(2) can never reach a
recycled pid.  The keeper double-forks, so it is nobody's child for long
and its exit needs no reaping.

Both are inherited across fork(2) (a lock belongs to the open file
description, which fork shares); :func:`os.register_at_fork` closes this
module's descriptors in a forked child, so a child outliving its parent
does not keep the parent's sandboxes "alive".  They are close-on-exec, so
no sandbox process ever holds them after its execve.

Test hook: ``MINIBOX_TEST_DIE_AFTER_STEP=N`` makes the owner SIGKILL itself
right after the N-th step of a sandbox's start (:class:`StartSteps`), so the
tests can check that at every instant what exists is something ``minibox
gc`` can find.
"""

from __future__ import annotations

import _socket
import _thread
import errno
import fcntl
import os

from ._lean import SIGKILL, send_fd, suppress
from .errors import SetupError
from .paths import runtime_dir_name

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

#: The environment variable of the test hook (see :class:`StartSteps`).
DIE_AFTER_STEP_ENV = "MINIBOX_TEST_DIE_AFTER_STEP"

_mutex = _thread.allocate_lock()  # threading.Lock() (threading itself costs a CLI start ~3 ms)
_count = 0                      # how many sandboxes of this process hold the lock
_lock_fd: int | None = None
_identity: dict[str, Any] | None = None
_keeper: _socket.socket | None = None  # the socket module's enums and selectors are not needed here
_keeper_pid: int | None = None
_keeper_starter: int | None = None  # the keeper's first process, not reaped yet (see start_keeper)
_exit_hook_registered = False


def owners_dir() -> str:
    return os.path.join(runtime_dir_name(), "owners")


# -- the lock ------------------------------------------------------------------------------


def acquire() -> dict[str, Any]:
    """Count one more sandbox of this process; return the owner identity a record names.

    The first one creates and locks this process's lock file, which then
    stays until the process exits (see :func:`release`).  SetupError (step
    "owner lock", with the path) if the runtime directory cannot hold it.
    """
    global _count, _lock_fd, _identity
    with _mutex:
        if _lock_fd is not None and _count == 0 and not _lock_still_named(_lock_fd, _identity):
            os.close(_lock_fd)  # removed while idle (the runtime dir wiped?): make a new one
            _lock_fd, _identity = None, None
        if _lock_fd is None:
            _lock_fd, _identity = _create_lock()
        _count += 1
        assert _identity is not None
        return dict(_identity)


def start_error(e: OSError, per_sandbox: str) -> SetupError:
    """An OS error that ended a start, as a SetupError naming the step and the path.

    Running out of file descriptors (EMFILE, ENFILE) says how many sandboxes
    this process owns, what each costs (``per_sandbox``) and how to raise the limit.
    """
    if e.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return SetupError("file descriptors", e.errno, detail=(
            f"this process owns {sandbox_count()} sandboxes ({per_sandbox}) and its limit is {soft} "
            f"(hard {hard}); raise it with 'ulimit -n' or resource.setrlimit(RLIMIT_NOFILE), pass "
            "stdout/stderr fds instead of capturing, or close finished sandboxes"))
    return SetupError("start", e.errno, detail=e.filename if isinstance(e.filename, str) else None)


def sandbox_count() -> int:
    """How many sandboxes this process owns now (their records name its lock)."""
    return _count


def release() -> None:
    """One sandbox fewer.  The lock stays, for this process's next sandbox, until it exits.

    Making the lock anew for each sandbox cost three file operations on every
    start and one on every close (create, rename, unlink: 0.3-1.5 ms where
    the runtime directory is on a disk file system, as /run is on these
    machines).  A held lock that no record names keeps nothing alive; the
    file goes at exit (:func:`_remove_lock_at_exit`), or, after a SIGKILL,
    with ``minibox gc`` (:func:`remove_stale_locks`), as before.
    """
    global _count
    with _mutex:
        if _count > 0:
            _count -= 1


def _lock_still_named(fd: int, identity: dict[str, Any] | None) -> bool:
    """Whether our locked file is still the one its path names (nobody unlinked or replaced it)."""
    if identity is None:
        return False
    try:
        held = os.fstat(fd)
        named = os.stat(identity["lock"])
    except OSError:
        return False
    return held.st_nlink > 0 and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _remove_lock_at_exit() -> None:
    """atexit: remove this process's lock file (a forked child has none of its own until it makes one)."""
    global _lock_fd, _identity
    if _lock_fd is None or _identity is None or _identity.get("pid") != os.getpid():
        return
    try:
        os.unlink(_identity["lock"])
    except OSError:
        pass  # gc removes a lock file nobody holds
    os.close(_lock_fd)
    _lock_fd, _identity = None, None


def _create_lock() -> tuple[int, dict[str, Any]]:
    from .procfs import start_time

    directory = owners_dir()
    pid = os.getpid()
    name = f"{pid}-{os.urandom(4).hex()}"
    path = os.path.join(directory, f"{name}.lock")
    tmp = os.path.join(directory, f".{name}.tmp")
    step_path = directory
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        step_path = tmp
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SetupError("owner lock", e.errno, detail=step_path) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else can hold it
        os.rename(tmp, path)  # visible only once locked
    except OSError as e:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SetupError("owner lock", e.errno, detail=path) from e
    global _exit_hook_registered
    if not _exit_hook_registered:
        import atexit

        atexit.register(_remove_lock_at_exit)
        _exit_hook_registered = True
    return fd, {"pid": pid, "starttime": start_time(pid), "lock": path}


def lock_held(path: str | None) -> bool:
    """Whether some live process holds the owner lock at ``path`` (False: its owner is gone).

    A missing file means a gone owner: the owner removes it only with its
    last record, and gc only once the lock was free.  A file that cannot be
    opened for another reason counts as held: when in doubt, leave it alone.
    """
    if not path:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return True
    finally:
        os.close(fd)  # also drops the shared lock we may have taken
    return False


def remove_stale_locks() -> list[str]:
    """For ``minibox gc``: remove the lock files of owners that are gone; return their names."""
    removed: list[str] = []
    try:
        names = os.listdir(owners_dir())
    except OSError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            # A lock being made (".<pid>-<token>.tmp"), or one whose maker was killed before the
            # rename: removed once no process has that pid (a recycled pid only delays it).
            pid = name[1:].split("-", 1)[0]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with suppress(FileNotFoundError):
                    os.unlink(os.path.join(owners_dir(), name))
                    removed.append(name)
            continue
        if not name.endswith(".lock"):
            continue
        path = os.path.join(owners_dir(), name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)  # nobody holds it, and no new owner ever reuses a name
            removed.append(name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# -- the keeper ------------------------------------------------------------------------------


def start_keeper() -> None:
    """Start this process's keeper, if it has none, without waiting for it.

    A container's start calls this before its clone, so that the keeper's
    first process execs and forks into the background while the container
    is being made (about 0.8 ms of a CLI start here, measured), instead of
    before it; :func:`keep` then reaps that process and checks that it
    succeeded, before the container may outlive anything.
    """
    global _keeper
    with _mutex:
        if _keeper is None:
            _keeper = _spawn_keeper()


def keep(pidfd: int) -> None:
    """Hand the keeper a pidfd: that process is SIGKILLed if this process dies first.

    Starts this process's keeper on first use.  SetupError (step "keeper")
    if the keeper cannot be started or reached.
    """
    global _keeper
    with _mutex:
        for attempt in (1, 2):
            if _keeper is None:
                _keeper = _spawn_keeper()
            _reap_keeper_starter()
            assert _keeper is not None
            try:
                send_fd(_keeper, b"K", pidfd)
                return
            except OSError as e:
                # The keeper is gone (killed by hand?): start a new one, once.
                _keeper.close()
                _keeper = None
                if attempt == 2:
                    raise SetupError("keeper", e.errno, detail="handing it a sandbox process") from e


def keeper_binary() -> str:
    """The static minibox-keeper, built on first use (csrc/keeper/keeper.c)."""
    from ._static import static_binary

    return static_binary("keeper/keeper.c", "minibox-keeper")


def _spawn_keeper() -> _socket.socket:
    """Start this process's keeper; return our end of its socket.

    posix_spawn(3) (a vfork-style clone, no copy of a large interpreter's
    page tables) is three times cheaper here than subprocess.Popen.  The
    keeper gets its end as fd 3 and /dev/null as 0-2, closes every other fd
    it may have inherited, forks into the background and exits; that first
    process is reaped by :func:`_reap_keeper_starter` (called by :func:`keep`).
    """
    global _keeper_pid, _keeper_starter
    binary = keeper_binary()
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)]  # dup2 clears close-on-exec on fd 3
        _keeper_starter = os.posix_spawn(binary, [binary, "watch", "3"], {}, file_actions=actions, setsid=True)
    except OSError as e:
        ours.close()
        raise SetupError("keeper", e.errno, detail=binary) from e
    finally:
        theirs.close()
    _keeper_pid = None  # its first message says (see keeper_pid)
    return ours


def _reap_keeper_starter() -> None:
    """Reap the keeper's first process; if it failed (it could not fork), close the socket: SetupError."""
    global _keeper, _keeper_starter
    if _keeper_starter is None:
        return
    try:
        _, status = os.waitpid(_keeper_starter, 0)
    except ChildProcessError:  # a caller's os.wait() took it: the send to the socket will tell
        return
    finally:
        _keeper_starter = None
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        if _keeper is not None:
            _keeper.close()
        _keeper = None
        raise SetupError("keeper", None, detail=f"{keeper_binary()} exited with status {code}")


def keeper_fd() -> int | None:
    """This process's end of its keeper socket: one fd per process, for its whole life."""
    return None if _keeper is None else _keeper.fileno()


def keeper_pid() -> int | None:
    """The pid of this process's keeper, once started (the tests kill it to play the OOM killer).

    The keeper's first message is its pid; it is read here, when asked, so
    that no start waits for the keeper to be scheduled.
    """
    global _keeper_pid
    with _mutex:
        if _keeper is None:
            return None
        if _keeper_pid is None:
            _keeper.settimeout(10)
            try:
                hello = _keeper.recv(16)
            finally:
                _keeper.settimeout(None)
            if len(hello) == 4:
                _keeper_pid = int.from_bytes(hello, "little")
        return _keeper_pid


class Held:
    """A program started through ``minibox-keeper hold``: it runs only after :meth:`go`.

    The program is exec'd in place by the holder once it reads "G" from a
    pipe whose write end only this process holds.  Between its spawn and the
    go, the owner records its pid and hands it to the keeper; if the owner
    dies in between, the holder reads EOF and exits without running it.  So
    no instant exists in which it runs unknown to both the record and the keeper.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()  # both close-on-exec; the holder gets _r through pass_fds

    def argv(self, argv: list[str]) -> list[str]:
        return [keeper_binary(), "hold", str(self._r), *argv]

    @property
    def fd(self) -> int:
        """The fd the holder must inherit (add it to ``pass_fds``)."""
        return self._r

    def supervise(self, pid: int, record: Any, role: str) -> None:
        """Name the held process in ``record`` and hand it to the keeper; then :meth:`go` may follow."""
        pidfd = os.pidfd_open(pid)
        try:
            keep(pidfd)
        finally:
            os.close(pidfd)
        record.add_process(pid, role)

    def go(self) -> None:
        try:
            os.write(self._w, b"G")
        except OSError as e:
            raise SetupError("release held process", e.errno) from e
        finally:
            self.close()

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = -1


def _after_fork_in_child() -> None:
    """A forked child is not the owner: drop (our copies of) the lock and the keeper socket."""
    global _count, _lock_fd, _identity, _keeper
    if _lock_fd is not None:
        os.close(_lock_fd)  # the parent's description keeps the lock
    if _keeper is not None:
        _keeper.close()
    _count, _lock_fd, _identity, _keeper = 0, None, None, None
    global _keeper_starter
    _keeper_starter = None  # the parent's child, not ours
    global _mutex
    _mutex = _thread.allocate_lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the test hook ----------------------------------------------------------------------------


class StartSteps:
    """Counts the steps of one sandbox's start, for the ``MINIBOX_TEST_DIE_AFTER_STEP`` hook.

    Each path calls :meth:`done` after every step that creates something
    (the record, the cgroup, the lease, a process...).  With the variable set
    to N the owner SIGKILLs itself right after step N, as a user's ``kill -9``
    would at that instant.
    """

    def __init__(self) -> None:
        value = os.environ.get(DIE_AFTER_STEP_ENV)
        self._die_after = int(value) if value and value.isdigit() else 0
        self.count = 0

    def done(self, name: str) -> None:
        self.count += 1
        if self.count == self._die_after:
            os.kill(os.getpid(), SIGKILL)
