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
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._native import ffi, lib
from ..errors import CommandNotFoundError, SetupError
from .rootfs import MountOp

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

# csrc/spawn.h enum mb_step, in order
STEP_NAMES = {
    1: "clone", 2: "wait for parent", 3: "setsid", 4: "controlling tty", 5: "stdio",
    6: "sethostname", 7: "make mounts private", 8: "bind rootfs", 9: "mount",
    10: "seal rootfs (nodev, read-only)", 11: "pivot_root", 12: "detach old root", 13: "chdir",
    14: "setrlimit", 15: "setgroups", 16: "setgid", 17: "setuid", 18: "capabilities",
    19: "no_new_privs", 20: "seccomp", 21: "execve", 22: "close fds", 23: "setns", 24: "fork",
    25: "become root in the user namespace", 26: "loopback up", 27: "allocate a pty", 28: "join cgroup",
    29: "root layer",
}
STEP_EXECVE = 21
STEP_ROOT_LAYER = 29
_ERROR = struct.Struct("=iii")


@dataclass
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
    cwd: str | None = None
    path_env: str | None = None
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
    # for error messages
    cmd: str = field(default="")


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

    def _ops(self, ops: Sequence[MountOp]) -> Any:
        array = ffi.new("struct mb_op[]", max(1, len(ops)))
        self._keep.append(array)
        for i, op in enumerate(ops):
            c = array[i]
            c.kind = op.kind
            c.source = self._str(op.source)
            c.target = self._str(op.target)
            c.fstype = self._str(op.fstype)
            c.flags = op.flags
            c.data = self._str(op.data)
            c.mode = op.mode
            c.dev = op.dev
            c.optional = int(op.optional)
        return array

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


def read_child_error(error_fd: int, plan: ChildPlan) -> SetupError | None:
    """Block until the child exec'd (EOF: ``None``) or reported a failed step."""
    data = b""
    while len(data) < _ERROR.size:
        try:
            chunk = os.read(error_fd, _ERROR.size - len(data))
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    if len(data) < _ERROR.size:
        return SetupError("report", errno_mod.EPROTO, detail="truncated report from the child")
    step, err, index = _ERROR.unpack(data)
    name = STEP_NAMES.get(step, f"step {step}")
    if step == STEP_EXECVE:
        if err in (errno_mod.ENOENT, errno_mod.EACCES, errno_mod.ENOEXEC, errno_mod.ENOTDIR):
            return CommandNotFoundError(name, err, detail=plan.cmd or plan.argv[0])
        return SetupError(name, err, detail=plan.cmd or plan.argv[0])
    ops = plan.root_ops if step == STEP_ROOT_LAYER else plan.ops
    if 0 <= index < len(ops):
        return SetupError(name, err, detail=ops[index].describe())
    return SetupError(name, err)
