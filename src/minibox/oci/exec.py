"""``exec``: one more process in a running container, as runc exec does.

Kernel features: setns(2) into the init's namespaces (/proc/PID/ns/*), then
one more clone so the process is inside the pid namespace (setns on a pid
namespace only affects children) -- csrc/spawn.c's join_and_fork -- and the
container's cgroups, capabilities, no_new_privs and seccomp filter, applied
by the same C steps as at create.  With CLONE_PARENT the new process is our
own child: in the foreground we wait for it and exit with its status; with
``--detach`` we write its pid and leave, and the engine's subreaper
inherits it.
"""

from __future__ import annotations

import contextlib
import os
import signal as signal_mod

from ..errors import CommandNotFoundError, MiniboxError
from .config import Process
from .state import OciError, Record, write_pid_file

FORWARDED = (signal_mod.SIGTERM, signal_mod.SIGINT, signal_mod.SIGHUP, signal_mod.SIGQUIT,
             signal_mod.SIGUSR1, signal_mod.SIGUSR2, signal_mod.SIGWINCH)


def exec_process(record: Record, proc: Process, *, detach: bool = False, pid_file: str | None = None,
                 console_socket: str | None = None, preserve_fds: int = 0) -> int:
    """Run ``proc`` in the container; return its exit status (0 with ``detach``)."""
    if record.data.get("isolation") == "vm":  # through the guest agent (oci/vm_runtime.py)
        from .vm_runtime import exec_process as exec_in_vm

        return exec_in_vm(record, proc, detach=detach, pid_file=pid_file, console_socket=console_socket,
                          preserve_fds=preserve_fds)
    from ..container.namespaces import JOIN_ORDER
    from ..container.spawn import ChildPlan, read_child_error, spawn_joined
    from .runtime import _check_preserved, _open_console, hardening

    status = record.status()
    if status != "running":
        raise OciError(f"cannot exec in container {record.id}: it is {status}")
    if proc.terminal and not console_socket:
        raise OciError("--tty needs --console-socket to receive the pty")
    cfg = record.created_config()  # as create read it: the bundle may have changed since
    keep = _check_preserved(preserve_fds)
    plan = ChildPlan(argv=list(proc.args), envp=list(proc.env), path_env=proc.path, cwd=proc.cwd,
                     uid=proc.uid, gid=proc.gid, cmd=proc.args[0])
    plan.set_ids = True
    plan.set_groups = os.geteuid() == 0
    plan.non_dumpable = os.geteuid() == 0   # root inside must not reach the host's binary (CVE-2019-5736)
    plan.groups = list(proc.groups)
    hardening(plan, proc, cfg.seccomp)
    pid = record.pid
    fds: list[int] = []
    child_ends: list[int] = []
    grandchild: int | None = None
    try:
        for ns in JOIN_ORDER:
            if ns not in record.data.get("namespaces", ()):
                continue
            # joining a namespace we are already in is EINVAL for user, pointless for others
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino:
                continue
            fds.append(os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
            plan.setns_fds = [*plan.setns_fds, fds[-1]]
        if not record.alive():  # the fds name the container's namespaces only while it lives
            raise OciError(f"cannot exec in container {record.id}: it stopped")
        error_r, error_w = os.pipe()
        sync_r, sync_w = os.pipe()
        report_r, report_w = os.pipe()
        fds += [error_r, sync_w, report_r]
        child_ends += [error_w, sync_r, report_w]
        plan.error_fd, plan.sync_fd, plan.report_fd = error_w, sync_r, report_w
        plan.keep_fds = keep
        if console_socket:
            plan.tty_socket = _open_console(console_socket)
            child_ends.append(plan.tty_socket)
        else:
            plan.stdin_fd, plan.stdout_fd, plan.stderr_fd = 0, 1, 2
        grandchild = spawn_joined(plan, child_ends, report_r, error_r)
        cgroup = record.cgroup()
        if cgroup is not None:
            cgroup.attach(grandchild)
        os.write(sync_w, b"G")
        failure = read_child_error(error_r, plan)
        if failure is not None:
            raise failure
        if pid_file:
            write_pid_file(pid_file, grandchild)
        if detach:
            grandchild = None
            return 0
        target = grandchild
        for sig in FORWARDED:
            signal_mod.signal(sig, lambda number, _frame: _forward(target, number))
        _, wait_status = os.waitpid(grandchild, 0)
        grandchild = None
        code = os.waitstatus_to_exitcode(wait_status)
        return 128 - code if code < 0 else code
    except CommandNotFoundError as e:
        why = "executable file not found in $PATH" if e.exit_status == 127 else "permission denied"
        raise OciError(f"exec {proc.args[0]!r}: {why}") from e
    except MiniboxError as e:
        if isinstance(e, OciError):
            raise
        raise OciError(f"exec {proc.args[0]!r}: {e}") from e
    finally:
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(grandchild, signal_mod.SIGKILL)
                os.waitpid(grandchild, 0)
        for fd in fds + child_ends:
            with contextlib.suppress(OSError):
                os.close(fd)


def _forward(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)
