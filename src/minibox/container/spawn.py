"""Handing a plan to the C core and reading back how the child fared.

This is the Python half of the spawn engine (the C half is csrc/spawn.c).
:class:`ChildPlan` holds everything the child needs as plain Python data;
:func:`spawn` turns it into C structs (kept alive in a :class:`_CPlan`
until the child has exec'd), calls ``mb_spawn`` and returns the pid and a
pidfd (pidfd_open(2)): a file descriptor that names *this* process, so a
later kill or wait can never hit a recycled pid.

The child reports a failed step through a close-on-exec pipe, as CPython's
``_posixsubprocess`` does: :func:`read_child_error` returns ``None`` on EOF
(execve succeeded, the pipe closed) or a :class:`SetupError` naming the step
and the errno.
"""

from __future__ import annotations

import errno as errno_mod
import os
import sys

from .._native import ffi, lib
from .._record import record
from ..errors import SetupError, exec_failure
from ..spec import DEFAULT_PATH
from .rootfs import MountOp

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# What each step of csrc/spawn.h's enum mb_step is called in an error.  The
# numbers come from the header itself (cffi), so they cannot drift;
# tests/unit/test_spawn_protocol.py checks that every step has a name.
STEP_NAMES: dict[int, str] = {
    lib.MB_STEP_CLONE: "clone",
    lib.MB_STEP_WAIT_PARENT: "wait for parent",
    lib.MB_STEP_SETSID: "setsid",
    lib.MB_STEP_STDIO: "stdio",
    lib.MB_STEP_HOSTNAME: "sethostname",
    lib.MB_STEP_MOUNT_PRIVATE: "make mounts private",
    lib.MB_STEP_BIND_ROOTFS: "bind rootfs",
    lib.MB_STEP_MOUNTS: "mount",
    lib.MB_STEP_SEAL_ROOTFS: "seal rootfs (nodev, read-only)",
    lib.MB_STEP_PIVOT_ROOT: "pivot_root",
    lib.MB_STEP_DETACH_OLD_ROOT: "detach old root",
    lib.MB_STEP_CHDIR: "chdir",
    lib.MB_STEP_RLIMITS: "setrlimit",
    lib.MB_STEP_SETGROUPS: "setgroups",
    lib.MB_STEP_SETGID: "setgid",
    lib.MB_STEP_SETUID: "setuid",
    lib.MB_STEP_CAPABILITIES: "capabilities",
    lib.MB_STEP_NO_NEW_PRIVS: "no_new_privs",
    lib.MB_STEP_SECCOMP: "seccomp",
    lib.MB_STEP_EXECVE: "execve",
    lib.MB_STEP_SETNS: "setns",
    lib.MB_STEP_FORK: "fork",
    lib.MB_STEP_BECOME_ROOT: "become root in the user namespace",
    lib.MB_STEP_LOOPBACK: "loopback up",
    lib.MB_STEP_PTY: "allocate a pty",
    lib.MB_STEP_JOIN_CGROUP: "join cgroup",
    lib.MB_STEP_ROOT_LAYER: "root layer",
    lib.MB_STEP_CGROUP_NAMESPACE: "unshare the cgroup namespace",
    lib.MB_STEP_NON_DUMPABLE: "make non-dumpable",
    lib.MB_STEP_CWD_OUTSIDE: "cwd (it leads outside the container's root, through a file descriptor)",
}
STEP_EXECVE: int = lib.MB_STEP_EXECVE
STEP_ROOT_LAYER: int = lib.MB_STEP_ROOT_LAYER
STEP_MOUNTS: int = lib.MB_STEP_MOUNTS

# The bytes the parent writes to the child's sync pipe (enum mb_sync).
SYNC_MAPS_WRITTEN = bytes([lib.MB_SYNC_MAPS_WRITTEN])  # user namespace: maps written, set up
SYNC_GO = bytes([lib.MB_SYNC_GO])                      # cgroups and network ready: run the command

# enum mb_compat: force the old-kernel fallbacks of csrc/rootfs.c.  Tests
# set this to run the same containers through the fallback paths.
COMPAT: int = 0
#: The child's report (struct mb_error): three native C ints -- the step, errno, the index of the op.
_ERROR_SIZE = 12


@record()
class ChildPlan:
    """What the child does, as Python data; mirrors ``struct mb_plan``."""

    argv: Sequence[str]
    envp: Sequence[str]
    clone_flags: int = 0
    cgroup_fd: int = -1
    use_vfork: bool = False
    cgroup_procs_fds: Sequence[int] = ()
    sync_fd: int = -1
    sync_early: bool = False
    error_fd: int = -1
    stdin_fd: int = -1
    stdout_fd: int = -1
    stderr_fd: int = -1
    tty_socket: int = -1
    become_root: bool = False
    hostname: str | None = None
    loopback_up: bool = False
    rootfs: str | None = None
    root_ops: Sequence[MountOp] = ()
    ops: Sequence[MountOp] = ()
    readonly_rootfs: bool = False
    unshare_cgroupns: bool = False
    cwd: str | None = None
    path_env: str | None = DEFAULT_PATH
    init_fd: int = -1
    uid: int = 0
    gid: int = 0
    set_ids: bool = False
    set_groups: bool = False
    rlimits: Sequence[tuple[int, int, int]] = ()
    set_caps: bool = False
    cap_bounding: int = 0
    cap_effective: int = 0
    cap_permitted: int = 0
    cap_inheritable: int = 0
    cap_ambient: int = 0
    no_new_privs: bool = False
    seccomp_filter: bytes | None = None
    setns_fds: Sequence[int] = ()
    report_fd: int = -1
    keep_fds: Sequence[int] = ()
    groups: Sequence[int] = ()
    join_fds: Sequence[int] = ()
    keeper_fd: int = -1
    non_dumpable: bool = False   # minibox-oci as root: see struct mb_plan
    # for error messages
    cmd: str = ""


class _CPlan:
    """The C structs of a ChildPlan plus every buffer they point to.

    cffi frees a buffer when its Python owner dies; this object owns them all
    so nothing the child reads is freed before it has exec'd.
    """

    def __init__(self, plan: ChildPlan) -> None:
        self._keep: list[Any] = []
        p = ffi.new("struct mb_plan *")
        self.c = p
        p.clone_flags = plan.clone_flags
        p.cgroup_fd = plan.cgroup_fd
        p.use_vfork = int(plan.use_vfork)
        procs = ffi.new("int[]", list(plan.cgroup_procs_fds) or [0])
        self._keep.append(procs)
        p.cgroup_procs_fds = procs
        p.n_cgroup_procs_fds = len(plan.cgroup_procs_fds)
        p.sync_fd = plan.sync_fd
        p.sync_early = int(plan.sync_early)
        p.error_fd = plan.error_fd
        p.stdin_fd = plan.stdin_fd
        p.stdout_fd = plan.stdout_fd
        p.stderr_fd = plan.stderr_fd
        p.tty_socket = plan.tty_socket
        p.become_root = int(plan.become_root)
        p.hostname = self._str(plan.hostname)
        p.loopback_up = int(plan.loopback_up)
        p.rootfs = self._str(plan.rootfs)
        p.root_ops = self._ops(plan.root_ops)
        p.n_root_ops = len(plan.root_ops)
        p.ops = self._ops(plan.ops)
        p.n_ops = len(plan.ops)
        p.readonly_rootfs = int(plan.readonly_rootfs)
        p.compat = COMPAT
        p.unshare_cgroupns = int(plan.unshare_cgroupns)
        p.cwd = self._str(plan.cwd)
        p.argv = self._strv(plan.argv)
        p.envp = self._strv(plan.envp)
        p.path_env = self._str(plan.path_env)
        p.init_fd = plan.init_fd
        p.uid = plan.uid
        p.gid = plan.gid
        p.set_ids = int(plan.set_ids)
        p.set_groups = int(plan.set_groups)
        rl = ffi.new("struct mb_rlimit[]", max(1, len(plan.rlimits)))
        self._keep.append(rl)
        for i, (resource, soft, hard) in enumerate(plan.rlimits):
            rl[i].resource = resource
            rl[i].soft = soft
            rl[i].hard = hard
        p.rlimits = rl
        p.n_rlimits = len(plan.rlimits)
        p.set_caps = int(plan.set_caps)
        p.cap_bounding = plan.cap_bounding
        p.cap_effective = plan.cap_effective
        p.cap_permitted = plan.cap_permitted
        p.cap_inheritable = plan.cap_inheritable
        p.cap_ambient = plan.cap_ambient
        p.no_new_privs = int(plan.no_new_privs)
        p.non_dumpable = int(plan.non_dumpable)
        if plan.seccomp_filter:
            buf = ffi.new("char[]", plan.seccomp_filter)
            self._keep.append(buf)
            p.seccomp_filter = buf
            p.seccomp_len = len(plan.seccomp_filter) // 8
        else:
            p.seccomp_filter = ffi.NULL
            p.seccomp_len = 0
        fds = ffi.new("int[]", list(plan.setns_fds) or [0])
        self._keep.append(fds)
        p.setns_fds = fds
        p.n_setns_fds = len(plan.setns_fds)
        p.report_fd = plan.report_fd
        p.keep_fds = self._ints(plan.keep_fds)
        p.n_keep_fds = len(plan.keep_fds)
        groups = ffi.new("uint32_t[]", list(plan.groups) or [0])
        self._keep.append(groups)
        p.groups = groups
        p.n_groups = len(plan.groups)
        p.join_fds = self._ints(plan.join_fds)
        p.n_join_fds = len(plan.join_fds)
        p.keeper_fd = plan.keeper_fd

    def _ints(self, values: Sequence[int]) -> Any:
        array = ffi.new("int[]", list(values) or [0])
        self._keep.append(array)
        return array

    def _ops(self, ops: Sequence[MountOp]) -> Any:
        """The mount steps as ``struct mb_op[]``, built once per distinct plan (see _OPS_CACHE)."""
        key = tuple(ops)
        entry = _OPS_CACHE.get(key)
        if entry is None:
            entry = _build_ops(key)
            if len(_OPS_CACHE) >= _OPS_CACHE_SIZE:
                _OPS_CACHE.clear()
            _OPS_CACHE[key] = entry
        self._keep.append(entry)  # alive until the child has exec'd, even if evicted meanwhile
        return entry[0]

    def _str(self, value: str | None) -> Any:
        if value is None:
            return ffi.NULL
        buf = ffi.new("char[]", os.fsencode(value))
        self._keep.append(buf)
        return buf

    def _strv(self, values: Sequence[str]) -> Any:
        items = [self._str(v) for v in values] + [ffi.NULL]
        arr = ffi.new("char *[]", items)
        self._keep.append(arr)
        return arr


#: Mount steps already turned into C structs, by value (MountOp is frozen and
#: hashable): a process that starts the same kind of container again reuses
#: them instead of encoding ~40 steps' strings anew (~0.3 ms a start).  The
#: child only reads them.  Each entry is (array, the buffers it points to).
_OPS_CACHE: dict[tuple[MountOp, ...], tuple[Any, list[Any]]] = {}
_OPS_CACHE_SIZE = 16


def _build_ops(ops: tuple[MountOp, ...]) -> tuple[Any, list[Any]]:
    keep: list[Any] = []

    def cstr(value: str | None) -> Any:
        if value is None:
            return ffi.NULL
        buf = ffi.new("char[]", os.fsencode(value))
        keep.append(buf)
        return buf

    array = ffi.new("struct mb_op[]", max(1, len(ops)))
    bases = {op.base for op in ops}
    for i, op in enumerate(ops):
        c = array[i]
        c.kind = op.kind
        c.base = op.base
        c.source = cstr(op.relative_source())
        # enum mb_source (csrc/spawn.h): 0 a host path, 1 below the base, 2 a host path without symlinks
        c.source_in_root = 1 if op.source_in_root else 2 if op.source_no_symlinks else 0
        c.target = cstr(op.relative_target())
        c.fstype = cstr(op.fstype)
        c.flags = op.flags
        c.data = cstr(op.data)
        c.mode = op.mode
        c.keep_fd = int(i in bases)
        c.optional = int(op.optional)
    return array, keep


def spawn(plan: ChildPlan) -> tuple[int, int]:
    """Clone the child; return ``(pid, pidfd)``.  The child then waits on ``plan.sync_fd``."""
    cplan = _CPlan(plan)
    pidfd_out = ffi.new("int *")
    pid = lib.mb_spawn(cplan.c, pidfd_out)
    if pid < 0:
        raise SetupError("clone", -pid, detail=plan.cmd or None)
    pidfd = int(pidfd_out[0])
    if pidfd < 0:
        pidfd = os.pidfd_open(pid)
    return pid, pidfd


def spawn_joined(plan: ChildPlan, child_ends: list[int], report_r: int, error_r: int) -> int:
    """Start a process inside another process's namespaces (``plan.setns_fds``); its pid.

    The child spawn() clones is a middle process: it joins the namespaces,
    clones the real process (CLONE_PARENT: our child, in the pid namespace
    too), writes that pid to ``plan.report_fd`` and exits -- runc's nsexec
    dance, used by ``Container.exec`` and ``minibox-oci exec``.  Here: clone,
    close ``child_ends`` (emptied: the child holds them now), reap the middle
    process, and read the pid it reported.  A middle process that died
    without reporting raises what the child wrote on ``error_r`` (the step
    that failed), or SetupError("setns").
    """
    _, middle_fd = spawn(plan)
    for fd in child_ends:
        os.close(fd)
    child_ends.clear()
    try:
        os.waitid(os.P_PIDFD, middle_fd, os.WEXITED)
    finally:
        os.close(middle_fd)
    report = os.read(report_r, 4)
    if len(report) != 4:
        raise read_child_error(error_r, plan) or SetupError("setns", None, detail="the helper process died")
    return int.from_bytes(report, "little", signed=True)


def read_child_error(error_fd: int, plan: ChildPlan) -> SetupError | None:
    """Block until the child exec'd (EOF: ``None``) or reported a failed step."""
    data = b""
    while len(data) < _ERROR_SIZE:
        try:
            chunk = os.read(error_fd, _ERROR_SIZE - len(data))
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    if len(data) < _ERROR_SIZE:
        return SetupError("report", errno_mod.EPROTO, detail="truncated report from the child")
    step, err, index = (int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in (0, 4, 8))
    name = STEP_NAMES.get(step, f"step {step}")
    if step == STEP_EXECVE:
        return exec_failure(name, err, plan.cmd or plan.argv[0])
    if step in (STEP_MOUNTS, STEP_ROOT_LAYER):  # the index is the op's (else a cgroup's, an fd's)
        ops = plan.root_ops if step == STEP_ROOT_LAYER else plan.ops
        if 0 <= index < len(ops):
            where = "" if step == STEP_ROOT_LAYER else " in the rootfs"
            return SetupError(name, err, detail=ops[index].describe() + where)
    return SetupError(name, err)
