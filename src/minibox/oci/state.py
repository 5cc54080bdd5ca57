"""minibox-oci's own record of each container: ``<root>/<id>/state.json``, under a lock.

Spec: the OCI runtime spec's *state* (runtime.md#state) -- ``ociVersion``,
``id``, ``status`` (created | running | paused | stopped), ``pid``,
``bundle``, ``annotations``.  The engine asks for it with ``state ID``;
every other verb reads it to find the container's init and cgroup.

The record never claims a status: the status is *observed* each time.  The
pid is remembered with its start time (proc(5) field 22), so a recycled pid
is recognised as "stopped", never signalled; the freezer says "paused";
the file ``started`` (made by ``start``) separates "created" from
"running".  Each container's directory holds a lock file; every verb that
changes a container takes flock(2) on it, so two engines' calls never
interleave.  The directory also holds the exec fifo (oci/gate, see
csrc/oci/gate.c).

``state``, ``start`` and ``delete`` of a container are usually done by the
C front end (csrc/oci/front.c), which parses no JSON: ``create`` leaves it
``light-state``, a few ``key value`` lines and the state JSON's constant
part (:func:`write_light_state`).  Both read the same files and decide
the status the same way.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .. import _json as json  # json's C half without re and enum: each verb is a fresh interpreter
from .._lean import contextmanager, suppress
from ..errors import MiniboxError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

OCI_VERSION = "1.1.0"
DEFAULT_ROOT = "/run/minibox-oci"


class OciError(MiniboxError):
    """A runtime verb cannot be done (unknown id, wrong state); one line for the engine."""


_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.+-")


def valid_id(container_id: str) -> bool:
    """A container id: a letter or digit, then up to 127 letters, digits, '_', '.', '+', '-'.

    Written out by hand (importing re costs each verb ~3 ms).  The id names
    a directory under --root, so no '/', no NUL, no "." or ".." (a first
    character that is a letter or digit), and no newline either: the
    regular expression this was, "^...$", let a final one through, and an
    id "c1\n" made a directory no engine could name and a line of its own
    in ``list``.
    """
    return 0 < len(container_id) <= 128 and container_id[0] in _ALNUM and _ID_CHARS.issuperset(container_id)


def check_id(container_id: str) -> None:
    if not valid_id(container_id):
        raise OciError(f"invalid container id {container_id!r}: use letters, digits, '_', '.', '+', '-' "
                       "(at most 128, starting with a letter or digit)")


def check_root(root: str) -> None:
    """Refuse a --root that someone other than us (or root) could write to.

    Every verb trusts what it reads there: ``delete`` kills whatever runs in
    the recorded cgroup and runs the recorded poststop hooks, as root.  A
    state file another user could forge or swap (a directory writable by
    group or others, or owned by them, or a symlink they could repoint)
    would make those verbs kill the host's processes or run their program.
    """
    me = os.geteuid()
    try:
        link = os.lstat(root)
        st = os.stat(root) if link.st_mode & 0o170000 == 0o120000 else link
    except FileNotFoundError:
        return   # nothing recorded yet; create makes it 0700
    for what, info in (("its symlink", link), ("the directory", st)):
        if info.st_uid not in (me, 0):
            raise OciError(f"--root {root}: {what} is owned by uid {info.st_uid}: another user could forge the "
                           f"containers' state (their pids, cgroups, hooks); use a directory of uid {me}, mode 0700")
    if st.st_mode & 0o022:
        raise OciError(f"--root {root}: the directory is writable by group or others (mode {st.st_mode & 0o7777:o}): "
                       "another user could forge the containers' state (their pids, cgroups, hooks); "
                       f"chmod go-w {root}, or use a directory of mode 0700")


def _remove_tree(path: str) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` for a state directory, without importing shutil
    (which loads the compression modules: milliseconds of every ``delete``)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


class Record:
    """One container's directory and state file."""

    def __init__(self, root: str, container_id: str) -> None:
        check_id(container_id)
        self.id = container_id
        self.root = root
        self.dir = os.path.join(root, container_id)
        self.file = os.path.join(self.dir, "state.json")
        self.fifo = os.path.join(self.dir, "exec.fifo")
        # config.json as create read it: exec takes the process's defaults
        # (capabilities, seccomp, user, env, rlimits) from here, never again
        # from the bundle, whose files may have changed since (as runc keeps
        # the config in its state)
        self.config = os.path.join(self.dir, "config.json")
        # made by `start` (here or in csrc/oci/front.c): "running", not "created"
        self.started_marker = os.path.join(self.dir, "started")
        self.light_state = os.path.join(self.dir, LIGHT_STATE)
        self.data: dict[str, Any] = {}

    # -- files --------------------------------------------------------------------

    def load(self) -> Record:
        check_root(self.root)
        try:
            with open(self.file, "rb") as f:
                self.data = json.loads(f.read())
        except FileNotFoundError as e:
            raise OciError(f"container {self.id} does not exist") from e
        except (OSError, ValueError) as e:
            raise OciError(f"the state of container {self.id} is unreadable ({self.file}): {e}") from e
        return self

    def save(self) -> None:
        tmp = self.file + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.data))
        os.replace(tmp, self.file)

    def save_config(self, text: bytes) -> None:
        """Keep the config.json ``create`` parsed (mode 0600 in the 0700 directory; a new file)."""
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def created_config(self) -> Any:
        """The container's config as ``create`` read it (oci.config.Config)."""
        from . import config as config_mod

        bundle = self.data["bundle"]
        if not os.path.exists(self.config):  # created before minibox-oci kept a copy
            return config_mod.load(bundle, created=True)
        return config_mod.load_text(bundle, created=True, path=self.config)[0]

    def remove(self) -> None:
        _remove_tree(self.dir)

    @contextmanager
    def locked(self) -> Iterator[Record]:
        """Hold the container's lock (flock(2)) for the block."""
        try:
            fd = os.open(os.path.join(self.dir, "lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise OciError(f"container {self.id} does not exist") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)

    @contextmanager
    def creating(self) -> Iterator[Record]:
        """Make the container's directory (exclusively: a duplicate id fails) and hold its
        lock; on an exception inside the block the directory goes again."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        check_root(self.root)
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError as e:
            raise OciError(f"container {self.id} already exists") from e
        try:
            fd = os.open(os.path.join(self.dir, "lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield self
            finally:
                os.close(fd)
        except BaseException:
            self.remove()
            raise

    def remove_unrecorded(self) -> bool:
        """Remove the directory of a create killed before it wrote state.json, under the lock.

        Such a create had made nothing else yet (it records the cgroup before
        making it).  False if state.json exists after all (a create that was
        only slow, now done): the caller deletes it the ordinary way.
        """
        check_root(self.root)
        try:
            fd = os.open(os.path.join(self.dir, "lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1   # killed between the mkdir and the lock file
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.exists(self.file):
                return False
            self.remove()
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    # -- what is observed -----------------------------------------------------------

    @property
    def pid(self) -> int:
        return int(self.data.get("pid", 0))

    def alive(self) -> bool:
        """Whether the init process recorded here still runs (not a zombie, not a new process)."""
        from ..procfs import stat

        pid = self.pid
        if pid <= 0:
            return False
        st = stat(pid)
        return st is not None and st.starttime == self.data.get("starttime") and st.state not in ("Z", "X")

    def cgroup(self) -> Any:
        info = self.data.get("cgroup")
        if not info:
            return None
        from ..container.cgroups import Cgroup

        return Cgroup.from_paths(info["version"], info["paths"])

    def frozen(self) -> bool:
        if self.data.get("isolation") == "vm":  # QMP stop/cont, noted by pause/resume
            return bool(self.data.get("paused"))
        info = self.data.get("cgroup") or {}
        paths = info.get("paths", {})
        try:
            if info.get("version") == 2:
                with open(os.path.join(paths["unified"], "cgroup.freeze")) as f:
                    return f.read().strip() == "1"
            if "freezer" in paths:
                with open(os.path.join(paths["freezer"], "freezer.state")) as f:
                    return f.read().strip() != "THAWED"
        except (OSError, KeyError):
            return False
        return False

    def status(self) -> str:
        if not self.alive():
            return "stopped"
        if self.frozen():
            return "paused"
        started = self.data.get("started") or os.path.exists(self.started_marker)
        return "running" if started else "created"

    def oci_state(self) -> dict[str, Any]:
        """The state object of the runtime spec (runtime.md#state)."""
        status = self.status()
        return {"ociVersion": OCI_VERSION, "id": self.id, "status": status,
                "pid": self.pid if status != "stopped" else 0, **self._constant_state()}

    def _constant_state(self) -> dict[str, Any]:
        """The state object's fields that never change after ``create`` (csrc/oci/front.c prints them as is)."""
        return {"bundle": self.data.get("bundle", ""), "rootfs": self.data.get("rootfs", ""),
                "created": self.data.get("created", ""), "owner": "",
                "annotations": self.data.get("annotations", {})}


#: The C front end's record of a container (csrc/oci/front.c; the first line is its version).
LIGHT_STATE = "light-state"
LIGHT_MAGIC = "minibox-oci light-state 1"


def write_light_state(record: Record) -> None:
    """``create``'s last step for a container: the record csrc/oci/front.c reads.

    Written only when the C front end may do ``state``, ``start`` and
    ``delete`` alone: container isolation and no poststart or poststop
    hooks (a VM's verbs go through its supervisor; hooks are run by
    Python).  Without this file the front end hands every verb to Python.
    The lines are what :meth:`Record.status` and ``delete``'s first step
    (runtime._remove_empty_cgroup) read from state.json: the init's pid and
    start time, the freezer's file, the cgroup directories and the parents
    to try once they are gone, in the order Python tries them.  After an
    empty line comes :meth:`Record.oci_state` as ``state`` prints it
    (indented JSON), from its first field after "pid".
    """
    data = record.data
    if data.get("isolation") == "vm" or any(data.get("hooks", {}).values()):
        return
    lines = [LIGHT_MAGIC, f"pid {record.pid}", f"starttime {data['starttime']}"]
    info = data.get("cgroup") or {}
    paths = info.get("paths", {})
    if info.get("version") == 2 and "unified" in paths:
        lines.append(f"cgroup-freeze {os.path.join(paths['unified'], 'cgroup.freeze')}")
    elif info and "freezer" in paths:
        lines.append(f"freezer-state {os.path.join(paths['freezer'], 'freezer.state')}")
    directories = set(paths.values())
    lines += [f"cgroup {d}" for d in sorted(directories, key=len, reverse=True)]
    lines += [f"parent {d}" for d in [*{os.path.dirname(d) for d in directories}, *info.get("made_parents", [])]]
    if any("\n" in line for line in lines):
        return   # a path with a newline cannot be a line: Python does the verbs
    constant = json.dumps(record._constant_state(), indent=2)   # "{\n  ...\n}"
    tmp = record.light_state + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n\n" + constant[2:])
    os.replace(tmp, record.light_state)


def write_pid_file(path: str, pid: int) -> None:
    """``--pid-file``: written whole under a temporary name, then renamed into place (as runc does),
    so the engine never reads half a number.

    The temporary file is new (O_EXCL), its name random and never a symlink
    followed (O_NOFOLLOW): the directory may be writable by others (a
    container's bundle), and a symlink planted at a predictable name would
    have had us truncate and write whatever it points to, as root.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def list_ids(root: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, "state.json")))
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise OciError(f"--root {root} is not a directory") from e
        raise
