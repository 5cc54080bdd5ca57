"""The VM supervisor: the host process behind one container of ``minibox-oci-vm``.

An OCI engine expects ``create`` to leave one process behind -- the pid it
reads from ``--pid-file``, reaps as a subreaper and takes the exit status
from.  For a container that is the container's init; for a microVM it is
this supervisor, a forked child of ``create`` (so a descendant of the
caller, as conmon and the containerd shim require) that owns the VM for its
whole life:

1. it boots a :class:`~minibox.VirtualMachine` whose guest agent *waits*
   for its run (the agent's template mode, config record ``W``, the same
   wait a VM template is snapshotted in; see csrc/agent/agent.c), with the
   bundle's rootfs shared by virtiofs and a fourth virtio-serial port,
   ``minibox.stdin``, that streams the caller's fd 0 to the command (record
   ``J``);
2. it answers the other verbs on a unix socket in the container's state
   directory (``vm.sock``; one JSON line per request): ``start`` sends the
   agent the run (the Spec translated from config.json), ``kill`` an agent
   kill frame, ``pause``/``resume`` QMP ``stop``/``cont``, ``exec`` an
   agent exec whose output goes to the file descriptors the asking process
   passed along (SCM_RIGHTS), ``pids`` the host processes, ``destroy`` ends
   the VM;
3. it exits with the command's exit status (128+N for signal N), after
   QEMU and virtiofsd are gone.

Signals it receives (SIGTERM, SIGINT, ...) are forwarded to the guest
command, as runc forwards them to a container's init; SIGKILL ends it, and
then its keeper (minibox.owner) ends QEMU and virtiofsd and ``minibox gc``
removes its record -- the VM is supervised like every other minibox VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal as signal_mod
import socket
import threading
from typing import Any

from ..errors import CommandNotFoundError, MiniboxError, PreflightError, SetupError
from ..owner import StartSteps
from ..sandbox import CappedBuffer, command_env
from ..spec import Spec
from ..vm import accel as _accel
from ..vm import agent as _agent
from ..vm import machine, virtiofs
from ..vm import plan as _plan
from ..vm.channels import Channels, ExecState
from ..vm.kernel import ensure_kernel, modules_for
from ..vm.virtual_machine import (
    VirtualMachine,
    _default_rootfs,
    find_qemu,
    find_virtiofsd,
    kvm_probe,
    qemu_version,
)

#: The agent's boot config: wait for the run (``W``), stdin on its own port (``J``).
WAITING_CONFIG = b"W\0J\0"
#: The fourth virtio-serial port: the main command's stdin, streamed.
STDIN_PORT = "minibox.stdin"
#: Signals forwarded to the guest command (runc's list, less the ones that cannot be caught).
FORWARDED = (signal_mod.SIGTERM, signal_mod.SIGINT, signal_mod.SIGHUP, signal_mod.SIGQUIT,
             signal_mod.SIGUSR1, signal_mod.SIGUSR2)


def socket_address(state_dir_fd: int) -> str:
    """The control socket's address through an fd of the state directory.

    sun_path holds 108 bytes, and ``--root`` plus a 64-character id can be
    longer; /proc/self/fd/N/vm.sock is short, and the directory's own mode
    (0700) still decides who may connect.
    """
    return f"/proc/self/fd/{state_dir_fd}/vm.sock"


class FdSink(CappedBuffer):
    """An exec's output written to a file descriptor the asking process passed us."""

    def __init__(self, fd: int) -> None:
        super().__init__(0)
        self.fd = fd

    def extend(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except OSError:
                return  # the reader went away: drop, as a closed pipe would


class OciChannels(Channels):
    """The VM's channels, noting which execs the agent reported started (``S`` frames)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_execs: set[int] = set()

    def dispatch(self, kind: bytes, ident: int, payload: bytes) -> None:
        super().dispatch(kind, ident, payload)
        if kind == _agent.STARTED and ident:
            self.started_execs.add(ident)


class OciVirtualMachine(VirtualMachine):
    """A VirtualMachine booted with its agent waiting (``create``), given its run later (``start``).

    The boot is :meth:`VirtualMachine._boot`'s, with three differences: the
    agent's config is :data:`WAITING_CONFIG`, a fourth port carries stdin,
    and the boot ends at the agent's hello, not at the command's start.
    """

    def __init__(self, spec: Spec, *, stdout: int, stderr: int, host_cgroup: dict[str, Any] | None = None) -> None:
        super().__init__(spec, stdout=stdout, stderr=stderr)
        self._ch = OciChannels(self._cond, stdout, stderr, on_violation=self._kill_qemu)
        self._plan: _plan.VmPlan | None = None
        self._host_cgroup = host_cgroup
        self.stdin_sock: socket.socket | None = None

    @property
    def record_id(self) -> str:
        """The id of this VM's minibox record (runtime_dir()/sandboxes/<id>.json)."""
        return self._id

    def _create_record(self, spec: Spec) -> Any:
        """The VM's record names the host cgroup it runs in: if the supervisor is killed,
        ``minibox gc`` removes the cgroup with the rest (its usual removal is ``delete``'s)."""
        record = super()._create_record(spec)
        if self._host_cgroup is not None:
            record.update(cgroup=self._host_cgroup)
        return record

    def host_pids(self) -> list[int]:
        """QEMU and the virtiofsd processes, while they run."""
        pids = [p.pid for p in [self._qemu, *self._helpers] if p is not None and p.returncode is None]
        return pids

    def _boot(self) -> None:
        plan = self._plan = _plan.plan_vm(self.spec, "virtiofs", _default_rootfs)
        qemu = find_qemu()
        virtiofsd = find_virtiofsd()
        if os.geteuid() != 0:
            raise PreflightError("virtiofsd needs root here: run minibox-oci-vm as root")
        kernel = ensure_kernel(plan.spec.kernel)
        agent_bin = _agent.build_agent()
        modules = modules_for(kernel, plan.modules)
        self._accel = _accel.choose(kernel, qemu_version(qemu), lambda: kvm_probe(qemu, kernel, agent_bin))
        steps = StartSteps()
        self._record = self._create_record(plan.spec)
        steps.done("record")
        if plan.make_mount_points:
            virtiofs.make_mount_points(plan.rootfs, plan.spec.mounts)
        image = _plan.guest_initramfs(plan.spec, agent_bin, modules, plan.guest_mounts, None,
                                      config=WAITING_CONFIG)
        self._memfd = os.memfd_create(f"minibox-initramfs-{self._id}", 0)
        os.write(self._memfd, image)
        child_fds: list[int] = [self._memfd]
        virtiofs_fds = self._start_virtiofsd(virtiofsd, plan.shares, steps)
        child_fds += [fd for _, fd in virtiofs_fds]
        ours, theirs = self._channel_pairs()
        child_fds += [sock.fileno() for sock in theirs]
        stdin_ours, stdin_theirs = socket.socketpair()
        self._socks += [stdin_ours, stdin_theirs]
        child_fds.append(stdin_theirs.fileno())
        cfg = _plan.machine_config(
            plan, qemu=qemu, kernel=str(kernel.path), initrd=f"/dev/fd/{self._memfd}",
            accel=self._accel.accelerator, machine_type=self._machine, memory=self._memory,
            channels=_plan.ChannelFds(theirs[0].fileno(), theirs[1].fileno(),
                                      (theirs[2].fileno(), theirs[3].fileno(), theirs[4].fileno())),
            virtiofs_fds=virtiofs_fds)
        cfg.port_fds = [*cfg.port_fds, (STDIN_PORT, stdin_theirs.fileno())]
        self.stdin_sock = stdin_ours
        self._run_qemu(machine.qemu_argv(cfg), child_fds, ours, steps)
        self._wait_for_hello("boot", "the guest agent never said hello")

    def run_command(self) -> None:
        """Send the agent the run (the Spec's config record by record); return once the command runs."""
        assert self._plan is not None
        spec = self._plan.spec
        config = _agent.encode_config(spec, self._plan.guest_mounts, root_tag="rootfs")
        self._send(_agent.frame(_agent.RUN, 0, config))
        self._wait_for_start(spec)

    def resize(self, rows: int, cols: int) -> None:
        """Tell the agent the terminal's size (the guest command gets SIGWINCH)."""
        self._send(_agent.frame(b"w", 0, f"{rows} {cols}".encode()))

    def exec_to_fds(self, request: dict[str, Any], out_fd: int, err_fd: int, conn: socket.socket) -> dict[str, Any]:
        """Run an exec request in the guest, its output to ``out_fd``/``err_fd``.

        Replies ``{"started": true}`` on ``conn`` once the agent started it.
        While it runs, lines read from ``conn`` are passed on: ``{"signal":
        N}`` as a kill frame, ``{"stdin": TEXT}`` (latin-1) as an ``i`` frame
        of its streamed stdin (request ``"stream": true``, the agent's record
        ``j``; with a tty, what was typed, which the agent writes into the
        guest's pty), ``{"stdin_end": true}`` as the empty ``i`` frame that
        ends it, ``{"resize": [ROWS, COLS]}`` as a ``w`` frame that sizes its
        pty.  Returns the final reply (exit status or error).
        """
        argv = request.get("args") or []
        user = request.get("user") or [0, 0]
        spec = self._exec_spec(argv, request.get("env"), request.get("cwd"), (int(user[0]), int(user[1])))
        stdin = request.get("stdin")
        data = stdin.encode("latin-1") if isinstance(stdin, str) else None
        tty = bool(request.get("tty"))
        ident = next(self._ids)
        ex = ExecState(out=FdSink(out_fd), err=FdSink(err_fd))
        with self._cond:
            self._ch.state.execs[ident] = ex
        channels = self._ch
        assert isinstance(channels, OciChannels)
        try:
            env = command_env(spec.env, self.spec.hostname, spec.user[0])
            exec_frame = _agent.exec_frame(ident, list(spec.argv), env=env, cwd=spec.cwd, user=spec.user,
                                           tty=tty, stdin=data)
            if request.get("stream") and not tty and data is None:
                exec_frame = _agent.frame(_agent.EXEC, ident, exec_frame[_agent.HEADER.size:] + b"j\0")
            self._send(exec_frame)
            announced = False
            buffered = b""
            relay_gone = False
            while True:
                with self._cond:
                    exit_status, failure, ended = ex.exit, ex.failure, self._ended()
                    started = ident in channels.started_execs
                if failure is not None:
                    error = self._failure_error(failure)
                    status = error.exit_status if isinstance(error, CommandNotFoundError) else 1
                    return {"error": _exec_message(argv, error), "status": status}
                if started and not announced:
                    announced = True
                    _send_line(conn, {"started": True})
                if exit_status is not None:
                    code, sig = exit_status
                    return {"exit": code if code is not None else 128 + (sig or 0)}
                if ended:
                    return {"error": "the VM ended while the exec'd command ran"}
                # what the relay process sends: signals, stdin (a short wait: the exit is polled too)
                if relay_gone or not select.select([conn], [], [], 0.05)[0]:
                    if relay_gone:
                        with self._cond:
                            self._cond.wait(0.05)
                    continue
                chunk = conn.recv(1 << 16)
                if not chunk:
                    relay_gone = True  # it was killed: end the command it relayed
                    self._send(_agent.kill_frame(ident, signal_mod.SIGKILL))
                    continue
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        message = json.loads(line)
                        if "signal" in message:
                            self._send(_agent.kill_frame(ident, int(message["signal"])))
                        elif "stdin" in message:
                            self._send(_agent.frame(_agent.STDIN, ident, str(message["stdin"]).encode("latin-1")))
                        elif message.get("stdin_end"):
                            self._send(_agent.frame(_agent.STDIN, ident))
                        elif "resize" in message:
                            rows, cols = (int(n) for n in message["resize"])
                            self._send(_agent.frame(b"w", ident, f"{rows} {cols}".encode()))
        finally:
            with self._cond:
                self._ch.state.execs.pop(ident, None)


def _exec_message(argv: list[str], error: MiniboxError) -> str:
    """An exec failure worded the way engines map it to 127/126 (see oci/cli.py)."""
    name = argv[0] if argv else ""
    if isinstance(error, CommandNotFoundError):
        why = "executable file not found in $PATH" if error.exit_status == 127 else "permission denied"
        if why.startswith("executable") and "/" in name:
            why = "no such file or directory"
        return f"exec {name!r}: {why}"
    return f"exec {name!r}: {error}"


def _send_line(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request line, and the fds that came with its first bytes."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
    while data and not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            break
        data += more
    return json.loads(data or b"{}"), list(fds)


class Supervisor:
    """The supervisor's state: the VM, the control socket, how it ends."""

    def __init__(self, vm: OciVirtualMachine, stdin_fd: int, tty_fd: int | None) -> None:
        self.vm = vm
        self.stdin_fd = stdin_fd
        self.tty_fd = tty_fd
        self.started = threading.Event()
        self.done = threading.Event()
        self.exit_code: int | None = None     # set when the supervisor decides to end early
        self.lock = threading.Lock()
        self.paused = False

    # -- requests ---------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            request, fds = _recv_request(conn)
            reply = self._answer(request, fds, conn)
            _send_line(conn, reply)
        except (OSError, ValueError) as e:
            _send_line(conn, {"error": f"the VM supervisor: {e}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    def _answer(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> dict[str, Any]:
        op = request.get("op")
        vm = self.vm
        try:
            if op == "start":
                with self.lock:
                    if self.started.is_set():
                        return {"error": "already started"}
                    try:
                        vm.run_command()
                    except CommandNotFoundError as e:
                        self.end(e.exit_status)  # the agent powered the guest off
                        raise
                    except MiniboxError:
                        self.end(1)
                        raise
                    self.started.set()
                self._relay_stdin()
                if self.tty_fd is not None:
                    self.resize()
                return {"ok": True}
            if op == "kill":
                return self.kill(int(request.get("signal", signal_mod.SIGTERM)))
            if op == "pause":
                vm.pause()
                self.paused = True
                return {"ok": True}
            if op == "resume":
                vm.resume()
                self.paused = False
                return {"ok": True}
            if op == "pids":
                return {"pids": [os.getpid(), *vm.host_pids()]}
            if op == "destroy":
                self.end(137)
                return {"ok": True}
            if op == "exec":
                if len(fds) != 2:
                    return {"error": "exec: expected the stdout and stderr fds"}
                if not self.started.is_set():
                    return {"error": "exec: the container has not been started"}
                return vm.exec_to_fds(request, fds[0], fds[1], conn)
        except CommandNotFoundError as e:
            return {"error": _exec_message(list(vm.spec.argv), e), "status": e.exit_status}
        except MiniboxError as e:
            return {"error": str(e)}
        return {"error": f"unknown request {op!r}"}

    def kill(self, sig: int) -> dict[str, Any]:
        """Deliver ``sig`` to the guest command; before ``start`` (or SIGKILL while paused) end the VM."""
        if not self.started.is_set() or (sig == signal_mod.SIGKILL and self.paused):
            self.end(128 + sig)
            return {"ok": True}
        self.vm.kill(sig)
        return {"ok": True}

    def end(self, code: int) -> None:
        """End the VM now (QEMU killed); the main thread exits with ``code``."""
        if self.exit_code is None:
            self.exit_code = code
        self.vm._kill_qemu()
        self.started.set()  # wakes the main thread if it still waits for start
        self.done.set()

    def resize(self) -> None:
        """The host terminal's size, to the guest's pty (at start and on SIGWINCH)."""
        import fcntl
        import struct
        import termios

        if self.tty_fd is None or not self.started.is_set():
            return
        with contextlib.suppress(OSError, MiniboxError):
            packed = fcntl.ioctl(self.tty_fd, termios.TIOCGWINSZ, b"\0" * 8)
            rows, cols = struct.unpack("HHHH", packed)[:2]
            if rows and cols:
                self.vm.resize(rows, cols)

    # -- stdin ------------------------------------------------------------------------

    def _relay_stdin(self) -> None:
        sock = self.vm.stdin_sock
        if sock is None:
            return

        def relay() -> None:
            # Our end is only shut down for writing, never closed early: a
            # closed socket is a hang-up to QEMU at once, and it would drop
            # what it has not yet passed to the guest.
            try:
                while True:
                    data = os.read(self.stdin_fd, 1 << 16)
                    if not data:
                        break
                    sock.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        threading.Thread(target=relay, name="stdin", daemon=True).start()


def run(spec: Spec, *, state_dir: str, ready_fd: int, tty_fd: int | None,
        host_cgroup: dict[str, Any] | None = None) -> int:
    """The supervisor's life (in the forked child of ``create``, already in ``host_cgroup``, the
    ``{"version", "paths"}`` of the VM's host cgroup); returns its exit status."""
    out_fd = err_fd = 1
    stdin_fd = 0
    if tty_fd is not None:
        out_fd = err_fd = stdin_fd = tty_fd
    else:
        err_fd = 2
    try:
        vm = OciVirtualMachine(spec, stdout=out_fd, stderr=err_fd, host_cgroup=host_cgroup)
    except MiniboxError as e:
        _report(ready_fd, b"E" + str(e).encode())
        return 1
    sup = Supervisor(vm, stdin_fd, tty_fd)
    dir_fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(socket_address(dir_fd))
        listener.listen(16)

        def forward(number: int, _frame: object) -> None:
            # from a thread: the handler runs in the main thread, which may be waiting on the VM's lock
            threading.Thread(target=sup.kill, args=(number,), daemon=True).start()

        for sig in FORWARDED:
            signal_mod.signal(sig, forward)
        if tty_fd is not None:
            signal_mod.signal(signal_mod.SIGWINCH, lambda _n, _f: sup.resize())
        watcher = CallerWatch(ready_fd, vm)
        try:
            vm.start()
        except (MiniboxError, OSError) as e:
            watcher.stop()
            vm.close()
            if not _report(ready_fd, b"E" + " ".join(str(e).split()).encode()) or watcher.caller_gone:
                _forget(state_dir, vm.record_id, host_cgroup)
            return 1
        watcher.stop()
        threading.Thread(target=sup.serve, args=(listener,), name="control", daemon=True).start()
        if watcher.caller_gone or not _report(ready_fd, b"R" + vm.record_id.encode()):
            vm.close()
            _forget(state_dir, vm.record_id, host_cgroup)
            return 1
        while not sup.started.wait(1.0):
            if not os.path.isdir(state_dir):
                sup.end(137)  # its record was removed (by hand?): nobody can start or delete it any more
        if sup.exit_code is not None:
            vm.close()
            return sup.exit_code
        try:
            result = vm.wait()
        except MiniboxError:
            vm.close()
            return sup.exit_code if sup.exit_code is not None else 137
        vm.close()
        if sup.exit_code is not None:
            return sup.exit_code
        if result.exit_code is not None:
            return result.exit_code
        return 128 + (result.signal or signal_mod.SIGKILL)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(f"{state_dir}/vm.sock")
        os.close(dir_fd)


class CallerWatch:
    """Ends the boot early if the caller of ``create`` dies while it waits for the report.

    The report pipe's write end polls POLLERR once its read end -- held only
    by ``create`` -- is closed (pipe(7)).  Then nobody will ever start or
    delete this VM: QEMU is killed as soon as it exists, so the boot fails
    at once instead of running to its end.
    """

    def __init__(self, ready_fd: int, vm: OciVirtualMachine) -> None:
        self.caller_gone = False
        self._ready_fd = ready_fd
        self._vm = vm
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._watch, name="caller", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self._ready_fd, select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = dict(poller.poll(50 if self.caller_gone else None))
            if self._wake_r in events:
                return
            if events.get(self._ready_fd, 0) & select.POLLERR:
                self.caller_gone = True
                self._vm._kill_qemu()  # and again while the boot goes on: QEMU may start after this

    def stop(self) -> None:
        """Stop watching (before the report fd is written and closed)."""
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _forget(state_dir: str, record_id: str, host_cgroup: dict[str, Any] | None) -> None:
    """The caller of create died before it returned: nobody will ever start or delete this container.

    Its state directory goes now.  Its host cgroup cannot yet -- this
    process and its keeper are in it until they exit -- so a record of ours
    names it (the VM's own is gone with the VM): once we are gone, our lock
    is free and ``minibox gc`` removes the cgroup and the record.
    """
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    if host_cgroup is not None:
        from ..records import Record

        with contextlib.suppress(MiniboxError):
            Record.create("vm", record_id, cgroup=host_cgroup)


def _report(fd: int, message: bytes) -> bool:
    """Tell ``create`` how the boot went; False if it is gone."""
    try:
        os.write(fd, message)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def request(state_dir: str, message: dict[str, Any], *, fds: list[int] | None = None,
            timeout: float | None = 60.0) -> dict[str, Any]:
    """Send one request to a container's supervisor and return its (last) reply."""
    conn = connect(state_dir, timeout)
    try:
        socket.send_fds(conn, [json.dumps(message).encode() + b"\n"], fds or [])
        return read_reply(conn)
    finally:
        conn.close()


def connect(state_dir: str, timeout: float | None = 60.0) -> socket.socket:
    dir_fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        conn.connect(socket_address(dir_fd))
    except OSError:
        conn.close()
        raise
    finally:
        os.close(dir_fd)
    return conn


def read_reply(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    if not data:
        raise SetupError("vm supervisor", None, "it closed the connection without answering")
    reply: dict[str, Any] = json.loads(data.splitlines()[-1])
    return reply
