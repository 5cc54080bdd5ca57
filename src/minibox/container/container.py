"""Container: a command in new namespaces and cgroups; the host kernel is the boundary.

This module is the parent's side of a container's life (the child's side is
csrc/spawn.c).  In order, ``start()``:

1. plans (container/plan.py): validates what the Spec asks of *this* path and compiles the hardening
   (capability masks, seccomp program, rlimits) -- before anything exists;
2. writes the container's record (minibox/records.py), naming its owner's
   lock and the cgroup and network port it is about to create, so that at
   no instant does something exist that ``minibox gc`` cannot find;
3. leases its bridge port and creates its cgroups (container/cgroups/);
4. clones the child into its namespaces (container/spawn.py -> C); the
   child blocks on a pipe; the owner's keeper (minibox/owner.py) gets a
   pidfd of it, so it dies with its owner unless started ``detached``;
5. writes the child's uid/gid maps (container/userns.py), then releases
   it; the child moves itself into its cgroups (on v1 through each
   hierarchy's ``tasks``, which spares the RCU grace period an attach from
   here would wait out; on v2 clone3 starts it inside);
6. reads the close-on-exec error pipe: EOF means the command is running,
   a report means a named step failed, and everything is undone.

``wait()`` drains stdout/stderr while polling the child's pidfd, enforces
the timeout by killing the whole container, reaps the child with wait4(2)
(for its rusage) and reads the cgroup's evidence (OOM kill, peak memory)
before removing the cgroup.  Every exit path -- success, setup failure,
timeout, exception in the caller's ``with`` block -- ends in ``close()``,
which leaves nothing behind.
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import time

# contextlib, signal and threading cost a command-line start milliseconds of
# imports (minibox/_lean.py says which); these are the parts used here.
from .._lean import SIGKILL, contextmanager, pidfd_send_signal, suppress
from ..errors import MiniboxError, PreflightError, SetupError, SpecError, StateError
from ..sandbox import (
    CLOSED,
    EXITED,
    PAUSED,
    RUNNING,
    CappedBuffer,
    Result,
    Sandbox,
    Stats,
    Usage,
    make_result,
    split_wait_status,
)
from ..spec import Spec
from .namespaces import CLONE_NEWCGROUP, JOIN_ORDER, clone_flags
from .plan import choose_root, pid_bound_ops, process_plan
from .rootfs import mount_plan
from .spawn import SYNC_GO, SYNC_MAPS_WRITTEN, read_child_error, spawn, spawn_joined
from .stdio import Pipes, communicate, copy_window_size, fd_for_child, receive_fd, relay_tty

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any

class Container(Sandbox):
    """A command isolated by namespaces and cgroups on the host kernel.

    ``stdin`` is bytes to feed, an fd to pass through, or None for
    /dev/null; ``stdout``/``stderr`` are None to capture into the Result, or
    an fd to pass through.  ``cgroup=False`` skips the cgroup when the Spec
    has no limits (what :func:`minibox.run` does, to start faster); pause,
    resume and exact stats need it.

    A container dies with the process that owns it (its keeper SIGKILLs it
    when the owner is gone, however the owner dies).  ``detached=True``
    opts out: the container outlives its owner, ``close()`` leaves it
    running, and ``minibox ps`` / ``minibox kill ID`` / ``minibox gc`` find
    it through its record.  Pass it file descriptors for its output: pipes
    this object reads are closed with it.
    """

    def __init__(self, spec: Spec, *, stdin: bytes | int | None = None, stdout: int | None = None,
                 stderr: int | None = None, cgroup: bool = True, detached: bool = False) -> None:
        if not isinstance(spec, Spec):
            raise SpecError("spec", "expected a minibox.Spec")
        if spec.kernel is not None:
            raise SpecError("kernel", "not supported with isolation='container': a container runs on the "
                                      "host's kernel; use isolation='vm' to boot a guest kernel")
        super().__init__(spec)
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        # Without a pid namespace the cgroup is the only way to find every process the
        # command started: one that left its process group (setsid) outlived the Result.
        self._want_cgroup = cgroup or not spec.limits.is_empty() or "pid" not in spec.effective_namespaces
        self._lock = _thread.RLock()
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._pipes = Pipes()
        self._pty_master: int | None = None
        self._cgroup: Any = None
        self._network: Any = None
        self._cleanups: list[Callable[[], None]] = []
        self._closed = False
        self._detached = detached
        self._record: Any = None  # records.Record, written before anything else exists
        self._rusage: Any = None
        self._oom_event = False  # the cgroup's OOM event arrived while waiting
        self._status: int | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The container's init process, as the host sees it."""
        return self._pid

    @property
    def pidfd(self) -> int | None:
        """A pidfd (pidfd_open(2)) naming the init process, while it is not reaped."""
        return self._pidfd

    @property
    def kernel_release(self) -> str:
        """A container runs on the host's kernel: this is the host's release."""
        return os.uname().release

    @property
    def cgroup_paths(self) -> dict[str, str]:
        """Where this container's cgroup lives, per hierarchy (empty without one)."""
        return dict(self._cgroup.paths) if self._cgroup is not None else {}

    @property
    def ip(self) -> str | None:
        """The container's address on the minibox bridge; None without one."""
        return None if self._network is None else str(self._network.address)

    def resize_tty(self, from_fd: int = 0) -> None:
        """Copy the window size of terminal ``from_fd`` to the container's pty (on SIGWINCH)."""
        if self._pty_master is not None:
            copy_window_size(from_fd, self._pty_master)

    @property
    def running(self) -> bool:
        """Started and not yet waited for (running or paused)."""
        return self.state in (RUNNING, PAUSED)

    def _command_ended(self) -> bool:
        """The init process has exited (its pidfd is readable), not yet reaped by wait()."""
        return self._child_exited()

    # -- start --------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._check("start")
            try:
                self._start()
            except OSError as e:
                self._teardown()
                raise self._typed(e) from e
            except BaseException:
                self._teardown()
                self._set_state(CLOSED)
                raise
            self._set_state(RUNNING)

    @staticmethod
    def _typed(e: OSError) -> SetupError:
        """An OS error of the start as a SetupError; EMFILE says what holds the fds and what to do."""
        from ..owner import start_error

        return start_error(e, "each holds about 3 fds: a pidfd and its stdout/stderr pipes")

    def _start(self) -> None:
        from ..owner import StartSteps, keeper_fd, start_keeper

        steps = StartSteps()
        spec = self.spec
        namespaces = spec.effective_namespaces
        in_userns = "user" in namespaces
        # Everything that can reject the Spec runs before anything exists.
        plan = process_plan(spec, spec.argv)
        uid_map: Sequence[Any] = ()
        gid_map: Sequence[Any] = ()
        if in_userns:  # userns.py is imported by the containers that have a user namespace only
            from .userns import default_maps

            uid_map, gid_map = default_maps(spec)
        spec, rootfs, root, readonly = choose_root(spec, plan)
        self._record = self._create_record(spec)
        steps.done("record")
        if not self._detached:
            start_keeper()  # its first process settles while the container is made; keep() checks it
            # and the child hands itself over to it at once (csrc/spawn.c, hand_self_to_keeper)
            plan.keeper_fd = -1 if (held_by := keeper_fd()) is None else held_by
        if spec.network == "bridge":
            from .network import NetworkAttachment
            self._network = NetworkAttachment.prepare(self.id, spec)
            self._cleanups.append(self._network.release)
            steps.done("network")
        extra = self._network.mount_ops(rootfs) if self._network is not None else []
        extra += pid_bound_ops(spec)
        plan.clone_flags = clone_flags(list(namespaces))
        plan.hostname = spec.hostname if "uts" in namespaces else None
        plan.loopback_up = "net" in namespaces
        plan.rootfs = root
        plan.readonly_rootfs = readonly
        plan.ops = mount_plan(spec, in_userns=in_userns, extra=extra)

        if self._want_cgroup:
            self._cgroup = self._create_cgroup()
            if self._cgroup is not None:
                self._cleanups.append(self._cgroup.remove)
                if self._cgroup.paths != self._record.data.get("cgroup", {}).get("paths"):
                    self._record.update(cgroup={"version": self._cgroup.version, "paths": self._cgroup.paths})
                steps.done("cgroup")

        to_close: list[int] = []
        child_ends: list[int] = []
        try:
            # Each fd goes on its list the moment it exists: a failure (EMFILE) leaks none.
            error_r, error_w = os.pipe()
            to_close.append(error_r)
            child_ends.append(error_w)
            sync_r, sync_w = os.pipe()
            to_close.append(sync_w)
            child_ends.append(sync_r)
            plan.error_fd, plan.sync_fd = error_w, sync_r
            if spec.init:
                from .init import init_fd

                plan.init_fd = init_fd()
                plan.argv = ["minibox-init", str(error_w), "--", *spec.argv]
            plan.sync_early = in_userns
            tty_parent: Any = None
            if spec.tty:
                import socket

                # The child allocates the pty inside its own devpts and sends
                # us the master over this socket pair.
                tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                to_close.append(tty_parent.detach())
                tty_parent = socket.socket(fileno=os.dup(to_close[-1]))
                child_ends.append(tty_child.detach())
                plan.tty_socket = child_ends[-1]
            elif isinstance(self._stdin, (bytes, bytearray, memoryview)):
                r, w = os.pipe()
                self._pipes.stdin_w = w
                child_ends.append(r)
                plan.stdin_fd = r
            else:
                plan.stdin_fd = fd_for_child(self._stdin, 0, child_ends)
            for target, given, attr in ((1, self._stdout, "stdout_r"), (2, self._stderr, "stderr_r")):
                if spec.tty:
                    continue
                if given is None:
                    r, w = os.pipe()
                    setattr(self._pipes, attr, r)
                    child_ends.append(w)
                    fd = w
                else:
                    fd = fd_for_child(given, target, child_ends)
                if target == 1:
                    plan.stdout_fd = fd
                else:
                    plan.stderr_fd = fd
            # vfork mode (see csrc/spawn.c) when the child needs nothing from
            # us before execve: no id maps to write, no veth to move in.
            plan.use_vfork = not in_userns and self._network is None and "time" not in namespaces
            # The child joins its cgroups itself, through these fds, in vfork
            # mode and always on v1, where a move of oneself skips the RCU
            # grace period an attach() from here waits out (Cgroup.self_join_files).
            join_self = self._cgroup is not None and (plan.use_vfork or self._cgroup.version == 1)
            cgroup_fd = None
            if join_self:
                plan.cgroup_procs_fds = self._open_join_fds(child_ends)
            elif self._cgroup is not None:
                cgroup_fd = self._cgroup.clone_into_fd()
                if cgroup_fd is not None:
                    child_ends.append(cgroup_fd)
                    plan.cgroup_fd = cgroup_fd
            if self._cgroup is not None and cgroup_fd is None and "cgroup" in namespaces:
                # A cgroup namespace is rooted where its creator is: a child
                # that joins its cgroups after the clone makes its own once
                # joined, so it sees its cgroup as "/" (csrc/spawn.c).
                plan.clone_flags &= ~CLONE_NEWCGROUP
                plan.unshare_cgroupns = True
            if plan.use_vfork:
                child_ends.remove(sync_r)
                os.close(sync_r)
                plan.sync_fd = -1

            self._started_at = time.monotonic()
            self._pid, self._pidfd = spawn(plan)
            for fd in child_ends:
                os.close(fd)
            child_ends = []
            # The child exists; until _supervise() only the keeper holds it (the child
            # handed itself over: csrc/spawn.c, hand_self_to_keeper).
            steps.done("clone")

            try:
                self._supervise(released=plan.use_vfork)
                steps.done("spawn")
                if in_userns:
                    from .userns import write_id_maps

                    write_id_maps(self._pid, uid_map, gid_map)
                    os.write(sync_w, SYNC_MAPS_WRITTEN)
                # These run while the child sets up its mounts.
                if self._cgroup is not None and cgroup_fd is None and not join_self:
                    self._cgroup.attach(self._pid)
                if self._network is not None:
                    self._network.attach(self._pid)
                    steps.done("attach network")
                if not plan.use_vfork:
                    # Everything that can fail has happened: only now may the command run.
                    os.write(sync_w, SYNC_GO)
            except (OSError, MiniboxError) as e:
                # A child that failed its setup meanwhile explains better.
                if self._child_exited():
                    failure = read_child_error(error_r, plan)
                    if failure is not None:
                        raise failure from e
                raise
            os.close(sync_w)
            to_close.remove(sync_w)
            if tty_parent is not None:
                self._pty_master = receive_fd(tty_parent)
                tty_parent.close()
                if self._pty_master is not None:
                    copy_window_size(0, self._pty_master)
            failure = read_child_error(error_r, plan)
            if failure is not None:
                raise failure
            steps.done("running")
        finally:
            for fd in to_close + child_ends:
                with suppress(OSError):
                    os.close(fd)

    def _open_join_fds(self, child_ends: list[int]) -> list[int]:
        """Open the files through which the child moves itself into the cgroup (write-only fds).

        Each fd goes onto ``child_ends`` the moment it exists, so a failure
        (EMFILE) leaks none; an OSError names the path, and start() types it.
        """
        fds: list[int] = []
        for path in self._cgroup.self_join_files():
            child_ends.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            fds.append(child_ends[-1])
        return fds

    def _create_cgroup(self) -> Any:
        """The container's cgroup; None in rootless mode when only convenience asked for one.

        An unprivileged caller can create cgroups only under a cgroup that was
        delegated to it (owned by its uid).  Without one, limits cannot be
        enforced, and minibox says so instead of silently ignoring them.
        """
        from .cgroups import Cgroup

        try:
            return Cgroup.create(self.id, self.spec.limits)
        except SetupError as e:
            if os.geteuid() == 0 or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            if self.spec.limits.is_empty():
                return None  # rootless without limits: run without a cgroup
            raise PreflightError(
                "resource limits need a cgroup this user may write to, and there is none "
                f"({e}); run as root, or ask the administrator to delegate a cgroup "
                "(systemd: Delegate=yes) and point MINIBOX_CGROUP_PARENT at it; "
                "'minibox preflight' explains what this host allows"
            ) from e

    def _child_exited(self) -> bool:
        if self._pidfd is None:
            return False
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def _create_record(self, spec: Spec) -> Any:
        """Write this container's record before anything it names exists (see minibox/records.py).

        It names the cgroup and the bridge port the next steps will create,
        so a caller killed between any two steps leaves only what gc finds.
        """
        from ..records import Record

        fields: dict[str, Any] = {}
        if self._want_cgroup:
            from .cgroups import detect_layout, planned_paths

            try:
                layout = detect_layout()
                fields["cgroup"] = {"version": layout.version,
                                    "paths": planned_paths(self.id, spec.limits, layout=layout)}
            except (OSError, MiniboxError):
                pass  # creating it will fail with the real reason
        if spec.network == "bridge":
            from ..network import config_from_env
            from .network import veth_name

            config = config_from_env()
            fields["network"] = {"id": self.id, "bridge": config.bridge, "link": veth_name(self.id),
                                 "nft_table": config.nft_table if spec.ports else None}
        return Record.create("container", self.id, detached=self._detached, **fields)

    def _supervise(self, released: bool) -> None:
        """Name the child in the record, and (unless detached) hand it to the owner's keeper.

        ``released``: the command already runs (vfork mode: the child execs
        without waiting for us).  Then a record that cannot be rewritten
        (the runtime dir filled up since the record was created) must not
        fail a command that already runs: the keeper ends it with its
        owner, the record still names its cgroup, and close() reaps it.
        """
        from ..owner import keep

        assert self._pid is not None and self._pidfd is not None
        if not self._detached:
            keep(self._pidfd)
        try:
            self._record.add_process(self._pid, "init")
            if self._network is not None:
                self._record.update(network=self._network.record())
        except SetupError as e:
            if not released:
                raise
            import logging

            logging.getLogger("minibox").warning("container %s: its record does not name its init: %s", self.id, e)

    # -- wait ---------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> Result:
        with self._lock:
            self._check("wait")
            if self._result is not None:
                return self._result
            assert self._pidfd is not None
            if timeout is None and self.spec.timeout is not None:
                deadline: float | None = self._started_at + self.spec.timeout
            elif timeout is not None:
                deadline = time.monotonic() + timeout
            else:
                deadline = None
            out = CappedBuffer(self.spec.output_limit)
            err = CappedBuffer(self.spec.output_limit)
            stdin_data = bytes(self._stdin) if isinstance(self._stdin, (bytes, bytearray, memoryview)) else None
            if self._pty_master is not None:
                finished = relay_tty(self._pidfd, self._pty_master, self._stdin, self._stdout, deadline, out)
            else:
                with self._oom_watch() as watch:
                    finished = communicate(self._pidfd, self._pipes, stdin_data, deadline, out, err, watch)
            timed_out = not finished
            if timed_out:
                self._kill_all()
                communicate(self._pidfd, self._pipes, None, time.monotonic() + 5, out, err)
            self._reap()
            self._result = self._make_result(out.value(), err.value(), timed_out)
            self._set_state(EXITED)
            self._teardown()
            return self._result

    @contextmanager
    def _oom_watch(self) -> Iterator[dict[int, Callable[[], None]]]:
        """While waiting: on the cgroup's OOM event, SIGKILL every process of the container.

        Measured (docs/cgroups.md, "When an OOM kill takes seconds"): the
        OOM victim can be stuck on a lock held by another member that is
        itself looping in the memory cgroup's reclaim, until the kernel's
        OOM reaper frees the victim's memory -- 2 s later.  A pending
        SIGKILL makes that member's charge fail at once, so every process
        dies in milliseconds.  An OOM kill thereby ends the whole container,
        as ``memory.oom.group`` makes the kernel do on cgroup v2.
        """
        cgroup = self._cgroup
        fd = None
        if cgroup is not None and self.spec.limits.memory is not None:
            with suppress(MiniboxError, OSError):
                fd = cgroup.oom_watch()
        if fd is None:
            yield {}
            return

        def on_oom() -> None:
            with suppress(BlockingIOError):
                os.eventfd_read(fd)
            self._oom_event = True
            with suppress(OSError, MiniboxError):
                cgroup.signal_all(SIGKILL)

        try:
            if cgroup.under_oom():  # an OOM before the watch existed
                on_oom()
            yield {fd: on_oom}
        finally:
            os.close(fd)

    def _reap(self) -> None:
        if self._status is not None or self._pid is None:
            return
        if "pid" not in self.spec.effective_namespaces:
            # Without a pid namespace, children of init survive it: end them
            # with the session the child created (its pgid is its pid), and
            # with the cgroup when there is one -- a child that made a session
            # of its own left the first, and kept the cgroup's removal failing
            # with EBUSY: wait() raised SetupError instead of the Result, and
            # the child ran on.
            if self._cgroup is not None:
                with suppress(OSError, MiniboxError):
                    self._cgroup.kill_all()
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, SIGKILL)
        _, status, rusage = os.wait4(self._pid, 0)
        self._status = status
        self._rusage = rusage
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _make_result(self, stdout: bytes, stderr: bytes, timed_out: bool) -> Result:
        exit_code, sig = split_wait_status(self._status or 0)
        oom = False
        if self._cgroup is not None:
            with suppress(OSError, ValueError, MiniboxError):
                self._cgroup.snapshot()  # one read of the evidence, kept for the removal
            with suppress(OSError, MiniboxError):
                oom = bool(self._cgroup.oom_killed())
            oom = oom or self._oom_event  # our SIGKILL may have come before the kernel's
        return make_result(exit_code, sig, started=self._started_at, timed_out=timed_out,
                           oom=oom, stdout=stdout, stderr=stderr, usage=self._usage())

    def _usage(self) -> Usage:
        if self._cgroup is not None:
            with suppress(OSError, MiniboxError):
                usage: Usage = self._cgroup.usage()
                return usage
        ru = self._rusage
        if ru is None:
            return Usage()
        return Usage(memory_peak_bytes=int(ru.ru_maxrss) * 1024, cpu_seconds=ru.ru_utime + ru.ru_stime)

    # -- control ------------------------------------------------------------------

    def _kill_all(self) -> None:
        if self._cgroup is not None:
            with suppress(OSError, MiniboxError):
                self._cgroup.kill_all()
        if self._pidfd is not None:
            # SIGKILL to init of a pid namespace kills every process in it.
            with suppress(ProcessLookupError, OSError):
                pidfd_send_signal(self._pidfd, SIGKILL)
        if self._pid is not None and "pid" not in self.spec.effective_namespaces and self._status is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pid, SIGKILL)

    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` to the container's init; SIGKILL ends every process in it."""
        with self._lock:
            self._check("kill")
        if self._pidfd is None:
            return  # reaped meanwhile: nothing left to signal
        if sig == SIGKILL:
            self._kill_all()
            return
        try:
            pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def _need_cgroup(self, verb: str) -> Any:
        self._check(verb)
        if self._cgroup is None:
            raise MiniboxError(f"{verb} needs the container's cgroup; create the Container with cgroup=True")
        missing = [d for d in dict.fromkeys(self._cgroup.paths.values()) if not os.path.isdir(d)]
        if missing:
            raise StateError(verb, self.state, f"the container's cgroup {missing[0]} was removed from under it "
                             "(by hand, or by a tool that cleans cgroups)")
        return self._cgroup

    def pause(self) -> None:
        """Freeze every process through the cgroup freezer, waiting until frozen."""
        with self._lock:
            self._need_cgroup("pause").freeze()
            self._set_state(PAUSED)

    def resume(self) -> None:
        """Thaw the container."""
        with self._lock:
            self._need_cgroup("resume").thaw()
            self._set_state(RUNNING)

    def stats(self) -> Stats:
        """Memory, CPU and pid counts of the running container, from its cgroup."""
        stats: Stats = self._need_cgroup("stats").stats()
        return stats

    # -- exec ---------------------------------------------------------------------

    def exec(self, argv: Sequence[str], timeout: float | None = None, *, stdin: bytes | None = None,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             user: tuple[int, int] | None = None, tty: bool = False) -> Result:
        """Run ``argv`` inside the running container (like ``docker exec``) and wait for it.

        It joins the container's namespaces (setns(2), user first, pid last)
        and cgroup, with the Spec's hardening; see :meth:`Sandbox.exec`.
        """
        with self._lock:
            self._check("exec")
        request = self._exec_spec(argv, env, cwd, user)
        assert self._pid is not None
        namespaces = [ns for ns in JOIN_ORDER if ns in self.spec.effective_namespaces]
        # The exec's own env, cwd and user (validated by _exec_spec), with the Spec's hardening: it gets
        # no more than the command has.  A copy, not dataclasses.replace(): that would validate the
        # whole Spec again, and the rootfs's host directory may be gone while the container runs on.
        import copy

        exec_spec = copy.copy(self.spec)
        for name in ("env", "cwd", "user"):
            object.__setattr__(exec_spec, name, getattr(request, name))
        plan = process_plan(exec_spec, request.argv)
        started = time.monotonic()
        fds: list[int] = []
        child_ends: list[int] = []
        pipes = Pipes()
        pidfd: int | None = None
        grandchild: int | None = None
        master: int | None = None
        tty_parent: Any = None
        try:
            try:
                for ns in namespaces:
                    fds.append(os.open(f"/proc/{self._pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as e:
                # The command ended meanwhile: its namespaces go as it exits,
                # a moment before its pidfd reports the exit.
                if self._pidfd is not None and select.select([self._pidfd], [], [], 5.0)[0]:
                    raise StateError("exec", EXITED, "its command has exited (wait() returns its Result)") from e
                raise
            plan.setns_fds = list(fds)
            error_r, error_w = os.pipe()
            sync_r, sync_w = os.pipe()
            report_r, report_w = os.pipe()
            fds += [error_r, sync_w, report_r]
            child_ends += [error_w, sync_r, report_w]
            plan.error_fd, plan.sync_fd, plan.report_fd = error_w, sync_r, report_w
            if tty:
                import socket

                # As for the command itself: the child opens a pty in the
                # container's devpts and sends us the master.
                tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                child_ends.append(tty_child.detach())
                plan.tty_socket = child_ends[-1]
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                pipes.stdout_r, pipes.stderr_r = out_r, err_r
                child_ends += [out_w, err_w]
                plan.stdout_fd, plan.stderr_fd = out_w, err_w
            if stdin is not None and not tty:
                in_r, in_w = os.pipe()
                pipes.stdin_w = in_w
                child_ends.append(in_r)
                plan.stdin_fd = in_r
            # On v1 the new process joins the container's cgroups itself, as
            # the container's init did: no RCU grace period (Cgroup.self_join_files).
            join_self = self._cgroup is not None and self._cgroup.version == 1
            if join_self:
                plan.cgroup_procs_fds = self._open_join_fds(child_ends)
            # Then it needs nothing from us before it runs: vfork mode (csrc/spawn.c),
            # neither the middle process nor it copies our page tables, and no go byte.
            # Not into a time namespace: setns(2) refuses it (EUSERS) to a process
            # sharing its memory with another, as a vfork child does.
            plan.use_vfork = (join_self or self._cgroup is None) and "time" not in namespaces
            if plan.use_vfork:
                plan.sync_fd = -1
            try:
                grandchild = spawn_joined(plan, child_ends, report_r, error_r)
            except SetupError as helper_failed:
                if self._child_exited():
                    # the command ended meanwhile: its pid namespace takes no new process
                    raise StateError("exec", EXITED, "its command has exited (wait() returns its Result)") \
                        from helper_failed
                raise
            pidfd = os.pidfd_open(grandchild)
            if self._cgroup is not None and not join_self:
                self._cgroup.attach(grandchild)
            if not plan.use_vfork:
                try:
                    os.write(sync_w, SYNC_GO)
                except OSError as e:  # it died first: its own report says why
                    raise read_child_error(error_r, plan) or SetupError("exec", e.errno) from e
            if tty_parent is not None:
                master = receive_fd(tty_parent)
            failure = read_child_error(error_r, plan)
            if failure is not None:
                raise failure
            deadline = None if timeout is None else time.monotonic() + timeout
            out = CappedBuffer(self.spec.output_limit)
            err = CappedBuffer(self.spec.output_limit)
            if master is not None:
                finished = relay_tty(pidfd, master, stdin, None, deadline, out)
            else:
                finished = communicate(pidfd, pipes, stdin, deadline, out, err)
            if not finished:
                with suppress(ProcessLookupError):
                    pidfd_send_signal(pidfd, SIGKILL)
                # and what it started: the exec's session is its process group (setsid in
                # csrc/spawn.c), whose id is its pid here; its children kept running and
                # kept the pipes open, so the drain below waited its 5 s on them.
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(grandchild, SIGKILL)
                if master is None:
                    communicate(pidfd, pipes, None, time.monotonic() + 5, out, err)
            _, status, ru = os.wait4(grandchild, 0)
            grandchild = None
            code, sig = split_wait_status(status)
            return make_result(code, sig, started=started, timed_out=not finished,
                               stdout=out.value(), stderr=err.value(),
                               usage=Usage(memory_peak_bytes=ru.ru_maxrss * 1024,
                                           cpu_seconds=ru.ru_utime + ru.ru_stime))
        finally:
            if tty_parent is not None:
                tty_parent.close()
            if master is not None:
                with suppress(OSError):
                    os.close(master)
            if grandchild is not None:
                with suppress(ProcessLookupError, ChildProcessError):
                    os.kill(grandchild, SIGKILL)
                    os.waitpid(grandchild, 0)
            if pidfd is not None:
                os.close(pidfd)
            pipes.close()
            for fd in fds + child_ends:
                with suppress(OSError):
                    os.close(fd)

    # -- close --------------------------------------------------------------------

    def close(self) -> None:
        """Kill whatever still runs, reap it, and remove every host resource."""
        with self._lock:
            if self._closed:
                return
            if self._detached and self.running and not self._child_exited():
                self._let_go()
                return
            if self._pid is not None and self._result is None:
                self._kill_all()
                with suppress(OSError):
                    out = CappedBuffer()
                    if self._pidfd is not None:
                        communicate(self._pidfd, self._pipes, None, time.monotonic() + 5, out, out)
                self._reap()
            self._teardown()
            self._closed = True
            self._set_state(CLOSED)

    def _let_go(self) -> None:
        """Close this object's handles on a detached container and leave it running.

        Its record stays (naming its init), so ``minibox ps`` lists it,
        ``minibox kill`` ends it and ``minibox gc`` cleans up once it exits.
        """
        self._pipes.close()
        for fd in (self._pty_master, self._pidfd):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self._pty_master = self._pidfd = None
        self._cleanups.clear()
        if self._record is not None:
            self._record.leave()
            self._record = None
        self._closed = True

    def _teardown(self) -> None:
        """Release host resources, newest first; also after a half-finished start."""
        if self._pid is not None and self._status is None:
            self._kill_all()
            with suppress(ChildProcessError):
                self._reap()
        self._pipes.close()
        if self._pty_master is not None:
            with suppress(OSError):
                os.close(self._pty_master)
            self._pty_master = None
        if self._pidfd is not None:
            with suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
        errors: list[BaseException] = []
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except (OSError, MiniboxError) as e:
                errors.append(e)
        if self._record is not None:
            try:
                if errors:
                    self._record.abandon()  # its owner gave up on it: `minibox gc` finishes the job
                else:
                    self._record.remove()
            except (OSError, MiniboxError) as e:
                errors.append(e)
            self._record = None
        if errors:
            raise errors[0]


def run(spec: Spec, *, stdin: bytes | int | None = None, stdout: int | None = None,
        stderr: int | None = None) -> Result:
    """Run ``spec`` in a container and wait for it, like :func:`subprocess.run`.

    No cgroup is created when the Spec sets no limits: that is the fast path.
    """
    box = Container(spec, stdin=stdin, stdout=stdout, stderr=stderr, cgroup=False)
    try:
        box.start()
        return box.wait()
    finally:
        box.close()

