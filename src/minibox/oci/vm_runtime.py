"""The runtime verbs for ``minibox.isolation=vm``: the same command line, a microVM behind it.

Spec: the OCI runtime specification's lifecycle, as oci/runtime.py follows
it for containers; the VM path of the library (minibox.vm) underneath.
Selected by the annotation ``minibox.isolation=vm`` or by calling the
runtime as ``minibox-oci-vm`` (what a Kubernetes RuntimeClass's
``BinaryName`` names).

``create`` translates config.json into the same :class:`~minibox.Spec` the
Python API takes (:func:`vm_spec`), refusing what a VM cannot honour with a
one-line error naming the field, then forks the VM supervisor
(oci/vm_supervisor.py): the pid the engine gets, which boots the VM with
the guest agent waiting and stays until the command has ended.  The other
verbs talk to the supervisor over its control socket; ``state`` reads the
record only (the supervisor's pid and start time, ``started``, ``paused``).

What a VM cannot honour, and why (docs/oci.md keeps the list):
namespaces joined by path (a guest cannot enter a host namespace), id
mappings (the guest kernel is the boundary; ids are the guest's own),
``--preserve-fds`` (a host fd cannot cross into a guest), devices beyond
the standard ones, mounts of kinds other than bind and tmpfs.  The
kernel's own file systems (proc, sysfs, devpts, mqueue, cgroup, a tmpfs on
/dev) are the guest kernel's, mounted by the agent.

``linux.resources`` act twice.  In the guest, the memory limit is the VM's
RAM and, with the pids limit and the CPU quota, the guest cgroup's.  On the
host, the VM's processes -- the supervisor, QEMU, virtiofsd -- live in one
cgroup, made where ``linux.cgroupsPath`` says, as a container's would be
(:func:`host_limits`): there the engine reads the VM's usage, and the CPU
quota, shares and pinned CPUs apply to QEMU's threads, as Kata Containers'
``sandbox_cgroup_only`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as signal_mod

from ..errors import MiniboxError, SpecError
from .config import Config
from .state import OciError, Record, write_pid_file

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

    from ..spec import Limits, Spec
    from .config import Process

#: Mount types provided by the guest kernel itself (the agent mounts its own).
GUEST_API_MOUNTS = frozenset({"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"})
#: Device nodes every guest has in its devtmpfs (linux.devices may list them).
STANDARD_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                              "/dev/tty", "/dev/console", "/dev/ptmx"})
#: The host memory limit of a VM's processes is the guest's RAM plus this: QEMU's own (its TCG code
#: cache above all), the virtiofsd processes and the supervisor.  Measured here: 75 MiB above the
#: guest's RAM at its peak, a guest of 128 or 512 MiB filling its RAM until its OOM killer ran.
HOST_MEMORY_HEADROOM = 256 << 20
#: An exec's stdin goes to the guest in pieces of at most this size (each an agent ``i`` frame).
STDIN_CHUNK = 64 * 1024


def _refused(where: str, why: str) -> OciError:
    return OciError(f"config.json: {where}: not supported with minibox.isolation=vm: {why}")


def _tmpfs_size(options: list[str]) -> str | None:
    for option in options:
        if option.startswith("size="):
            return option[5:]
    return None


def vm_spec(cfg: Config, warnings: list[str]) -> Spec:
    """config.json as the Spec a :class:`~minibox.VirtualMachine` runs; OciError for what it cannot honour."""
    from ..policy.capabilities import DEFAULT_CAPABILITIES, supported_capabilities
    from ..spec import Limits, Mount, Spec

    proc = cfg.process
    for ns, path in cfg.namespaces.items():
        if path is not None:
            raise _refused(f"linux.namespaces ({ns}, path {path})",
                           "a guest cannot join a namespace of the host; let the VM have its own "
                           "(podman: --network none, no --pod)")
    if cfg.uid_map or cfg.gid_map:
        raise _refused("linux.uidMappings", "the guest kernel is the boundary and ids are the guest's own; "
                       "remove the user namespace's mappings")
    for device in cfg.devices:
        if device.path not in STANDARD_DEVICES:
            raise _refused(f"linux.devices ({device.path})", "host devices cannot be passed into the guest")
    limits = cfg.limits
    if limits.memory_swap is not None and limits.memory_swap != limits.memory:
        warnings.append("linux.resources.memory.swap is not applied: the guest has no swap device")
    if cfg.sysctl:
        warnings.append("linux.sysctl is not applied: the guest kernel keeps its own defaults")
    if proc.groups:
        warnings.append("process.user.additionalGids are not set in the guest")
    if proc.umask is not None:
        warnings.append("process.user.umask is not applied in the guest")
    if proc.oom_score_adj is not None:
        warnings.append("process.oomScoreAdj is not applied: the guest has its own OOM killer")

    mounts: list[Mount] = []
    for i, m in enumerate(cfg.mounts):
        if m.type in GUEST_API_MOUNTS or (m.type == "tmpfs" and m.destination == "/dev"):
            continue
        readonly = "ro" in m.options
        if m.type == "tmpfs":
            mounts.append(Mount.tmpfs(m.destination, size=_tmpfs_size(m.options), readonly=readonly))
        elif m.type == "bind":
            if not m.source or not os.path.isabs(m.source):
                raise OciError(f"config.json: mounts[{i}].source: a bind mount needs an absolute host path")
            # a bundle's source follows its symlinks, as with runc (Mount.bind refuses them)
            mounts.append(Mount.bind(os.path.realpath(m.source), m.destination, readonly=readonly))
        else:
            raise _refused(f"mounts[{i}].type {m.type!r}", "a guest mounts bind (virtiofs) and tmpfs only")

    if proc.capabilities is not None:
        bounding = frozenset(proc.capabilities.get("bounding", ()))
    else:
        bounding = frozenset(supported_capabilities())
    env: dict[str, str] = {}
    for entry in proc.env:
        key, _, value = entry.partition("=")
        env[key] = value
    try:
        spec = Spec(argv=list(proc.args), rootfs=cfg.root, env=env, cwd=proc.cwd,
                    hostname=cfg.hostname or "minibox", user=(proc.uid, proc.gid),
                    limits=Limits(memory=limits.memory, cpus=limits.cpus, pids=limits.pids),
                    network="none", mounts=mounts, readonly_rootfs=cfg.readonly,
                    cap_add=sorted(bounding - DEFAULT_CAPABILITIES), cap_drop=sorted(DEFAULT_CAPABILITIES - bounding),
                    no_new_privileges=proc.no_new_privileges,
                    seccomp=cfg.seccomp if cfg.seccomp else "unconfined",
                    rlimits=dict(proc.rlimits), tty=proc.terminal)
        # what VirtualMachine(spec) checks, before anything exists
        from ..vm.machine import memory_bytes
        from ..vm.virtual_machine import refuse_unsupported

        refuse_unsupported(spec)
        memory_bytes(spec)
    except SpecError as e:
        raise OciError(f"config.json (as a VM): {e}") from e
    return spec


def host_limits(cfg: Config, spec: Spec) -> Limits:
    """What ``linux.resources`` limit in the host cgroup of the VM's processes.

    The CPU quota, shares and pinned CPUs: QEMU's vCPU threads are host
    threads like any other (the quota also sizes the guest: ``ceil()``
    vCPUs).  A memory limit is the guest's RAM; on the host it becomes that
    plus :data:`HOST_MEMORY_HEADROOM`, so that the guest's own OOM killer
    acts first (its verdict is the command's, 137) and the host's only if
    QEMU itself runs away -- as Kubernetes adds a RuntimeClass's overhead
    to a Kata pod's cgroup.  Not the pids limit: it counts the guest's
    processes (the guest cgroup's ``pids.max``), the host's are QEMU's
    threads.
    """
    from ..spec import Limits
    from ..vm.machine import memory_bytes

    limits = cfg.limits
    memory = None
    if limits.memory is not None:
        memory = memory_bytes(spec) + HOST_MEMORY_HEADROOM
    return Limits(cpus=limits.cpus, cpu_weight=limits.cpu_weight, cpuset=limits.cpuset, memory=memory)


# -- create ----------------------------------------------------------------------------------


def create(record: Record, cfg: Config, *, pid_file: str | None, console_socket: str | None,
           preserve_fds: int, warn: Any = None) -> None:
    """Fork the VM supervisor and wait until its VM has booted with the agent waiting."""
    from .runtime import (
        _create_cgroup,
        _now,
        _plan_cgroup,
        _planned_cgroup_dirs,
        remove_recorded_cgroup,
        resolve_command,
    )

    proc = cfg.process
    if proc.terminal and not console_socket:
        raise OciError("process.terminal is true: give --console-socket to receive the pty")
    if console_socket and not proc.terminal:
        raise OciError("--console-socket needs process.terminal true in config.json")
    if preserve_fds:
        raise OciError(f"--preserve-fds {preserve_fds}: not supported with minibox.isolation=vm "
                       "(a host file descriptor cannot be passed into a guest)")
    warnings: list[str] = []
    spec = vm_spec(cfg, warnings)
    resolve_command(cfg, proc.args, proc.path)
    # QEMU is looked for here, in the caller: its absence is this command's
    # one-line error, before anything forks
    try:
        from ..vm.virtual_machine import find_qemu

        find_qemu()
    except MiniboxError as e:
        raise OciError(str(e)) from e
    if warn is not None:
        for message in warnings:
            warn(message)

    # The host cgroup, recorded before it is made (where it will be) and again once it is, as
    # for a container (oci/runtime.py): delete removes it, whatever happened in between.
    name, parent, layout = _plan_cgroup(record, cfg)
    version, planned, made_parents = _planned_cgroup_dirs(name, parent, layout)
    record.data = {"id": record.id, "pid": 0, "bundle": cfg.bundle, "rootfs": cfg.root, "created": _now(),
                   "annotations": cfg.annotations, "started": False, "isolation": "vm", "paused": False,
                   "cgroup": {"version": version, "paths": planned, "made_parents": made_parents},
                   "hooks": {kind: [vars(h) for h in hooks] for kind, hooks in cfg.hooks.items()
                             if kind in ("poststart", "poststop")}}
    record.save()
    cgroup = _create_cgroup(cfg, name, parent, layout, made_parents, host_limits(cfg, spec))
    host_cgroup = {"version": cgroup.version, "paths": cgroup.paths}
    try:
        record.data["cgroup"]["paths"] = cgroup.paths
        record.save()
        _fork_supervisor(record, cfg, spec, host_cgroup, pid_file=pid_file, console_socket=console_socket)
    except BaseException:
        with contextlib.suppress(OSError, MiniboxError):
            cgroup.kill_all()
        with contextlib.suppress(OSError, MiniboxError):
            remove_recorded_cgroup(record)
        raise


def _fork_supervisor(record: Record, cfg: Config, spec: Spec, host_cgroup: dict[str, Any], *,
                     pid_file: str | None, console_socket: str | None) -> None:
    """Fork the supervisor into the host cgroup; return once its VM waits for start (OciError if it failed)."""
    from .runtime import _open_console

    proc = cfg.process
    tty_slave = console = None
    if proc.terminal:
        assert console_socket is not None
        console = _open_console(console_socket)
        master, tty_slave = os.openpty()
        try:
            import socket
            import tty

            tty.setraw(tty_slave)  # the guest's pty does the line discipline; this one only carries bytes
            with socket.socket(fileno=console) as sock:
                socket.send_fds(sock, [b"/dev/ptmx"], [master])
            console = None
        finally:
            os.close(master)
            if console is not None:
                os.close(console)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor
        os.close(ready_r)
        _become_supervisor(spec, record.dir, ready_w, tty_slave, host_cgroup)
    os.close(ready_w)
    if tty_slave is not None:
        os.close(tty_slave)
    try:
        from ..procfs import start_time

        record.data.update(pid=pid, starttime=start_time(pid))
        record.save()
        answer = b""
        while chunk := os.read(ready_r, 65536):
            answer += chunk
        if not answer.startswith(b"R"):
            reason = answer[1:].decode(errors="replace") or "the VM supervisor died while booting"
            raise OciError(f"cannot boot the VM: {reason}")
        record.data["vm"] = answer[1:].decode()
        record.save()
        from .hooks import run_hooks

        for kind in ("prestart", "createRuntime"):
            run_hooks(kind, [vars(h) for h in cfg.hooks.get(kind, [])], record.oci_state())
        if pid_file:
            write_pid_file(pid_file, pid)  # new, random name, no symlink followed
    except BaseException:
        with contextlib.suppress(OSError, MiniboxError):
            _destroy(record)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)


def _become_supervisor(spec: Spec, state_dir: str, ready_fd: int, tty_fd: int | None,
                       host_cgroup: dict[str, Any]) -> None:
    """The forked child: its host cgroup, a session of its own, only its own fds, then the supervisor's
    life.  Never returns."""
    code = 1
    try:
        from ..container.cgroups import Cgroup

        # Into the cgroup before anything else, so that QEMU and virtiofsd are
        # born there.  This process has one thread (a fork's child): writing
        # "0" to each hierarchy's "tasks" moves the whole of it, without the
        # RCU wait of a cgroup.procs write (Cgroup.self_join_files).
        for path in Cgroup.from_paths(host_cgroup["version"], host_cgroup["paths"]).self_join_files():
            try:
                with open(path, "w") as f:
                    f.write("0")
            except OSError as e:
                _report_failure(ready_fd, f"cannot join the VM's host cgroup: {path}: {e.strerror}")
                return
        os.setsid()
        if tty_fd is not None:
            import fcntl
            import termios

            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)  # its controlling tty: SIGWINCH on resize
        keep = {0, 1, 2, ready_fd, *([tty_fd] if tty_fd is not None else [])}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the state dir's lock above all: it must not outlive create
        from .vm_supervisor import run

        code = run(spec, state_dir=state_dir, ready_fd=ready_fd, tty_fd=tty_fd, host_cgroup=host_cgroup)
    except BaseException as e:  # the supervisor never returns into the command line
        with contextlib.suppress(OSError):
            os.write(2, f"minibox-oci: the VM supervisor failed: {e!r}\n".encode())
    finally:
        # os._exit skips atexit: remove the owner's lock file here, as its hook would
        from ..owner import _remove_lock_at_exit

        with contextlib.suppress(OSError):
            _remove_lock_at_exit()
        os._exit(code)


def _report_failure(ready_fd: int, message: str) -> None:
    """What create reads as the supervisor's answer: its one-line error."""
    with contextlib.suppress(OSError):
        os.write(ready_fd, b"E" + message.encode())


# -- the other verbs ------------------------------------------------------------------------------


def _ask(record: Record, message: dict[str, Any], timeout: float | None = 60.0) -> dict[str, Any]:
    from .vm_supervisor import request

    try:
        reply = request(record.dir, message, timeout=timeout)
    except (OSError, MiniboxError) as e:
        raise OciError(f"container {record.id}: its VM supervisor does not answer ({e})") from e
    if "error" in reply:
        raise OciError(str(reply["error"]))
    return reply


def start(record: Record, warn: Any = None) -> None:
    status = record.status()
    if status != "created":
        raise OciError(f"cannot start container {record.id}: it is {status}, not created")
    _ask(record, {"op": "start"}, timeout=None)
    record.data["started"] = True
    record.save()
    from .hooks import run_recorded_hooks

    run_recorded_hooks("poststart", record, record.oci_state(), warn)


def kill(record: Record, sig: int, all_processes: bool = False) -> None:
    """Signal the guest command; ``--all`` once the VM has ended succeeds (nothing is left), as runc."""
    if not record.alive():
        if all_processes:
            return  # the supervisor is gone, and with it (its keeper) QEMU and virtiofsd
        from .runtime import not_running_message

        raise OciError(not_running_message(record.id))
    try:
        _ask(record, {"op": "kill", "signal": sig}, timeout=10)
    except OciError:
        if sig != signal_mod.SIGKILL:
            raise
        _kill_supervisor(record)  # it does not answer: SIGKILL ends it all the same (its keeper ends QEMU)


def _kill_supervisor(record: Record) -> None:
    pidfd = os.pidfd_open(record.pid)
    try:
        if record.alive():
            signal_mod.pidfd_send_signal(pidfd, signal_mod.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _destroy(record: Record) -> None:
    """End the supervisor and everything it holds; then nothing of the VM is left."""
    from .runtime import wait_gone

    if record.alive():
        with contextlib.suppress(OciError):
            _ask(record, {"op": "destroy"}, timeout=10)
        if not wait_gone(record.pid, 15.0):
            _kill_supervisor(record)
            wait_gone(record.pid, 5.0)
    # A supervisor killed outright leaves its VM record (its keeper ended QEMU
    # and virtiofsd): remove it as `minibox gc` would, now that its owner is gone.
    vm_id = record.data.get("vm")
    if vm_id:
        from .. import gc, records

        path = records.path_of(vm_id)
        data = records.load(path)
        if data is not None and not records.liveness(data)[0]:
            gc.clean(data)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def delete(record: Record, force: bool = False, warn: Any = None) -> None:
    status = record.status()
    if status in ("running", "paused") and not force:
        raise OciError(f"cannot delete container {record.id} that is not stopped: it is {status} "
                       "(use delete --force)")
    _destroy(record)
    cgroup = record.cgroup()
    if cgroup is not None:  # what is left of the VM's host processes: a keeper that is still exiting
        with contextlib.suppress(OSError, MiniboxError):
            cgroup.kill_all()
    from .runtime import remove_recorded_cgroup

    remove_recorded_cgroup(record)
    state = record.oci_state()
    state["status"] = "stopped"
    from .hooks import run_recorded_hooks

    run_recorded_hooks("poststop", record, state, warn)
    record.remove()


def pause(record: Record) -> None:
    status = record.status()
    if status != "running":
        raise OciError(f"cannot pause container {record.id}: it is {status}")
    _ask(record, {"op": "pause"})
    record.data["paused"] = True
    record.save()


def resume(record: Record) -> None:
    status = record.status()
    if status != "paused":
        raise OciError(f"cannot resume container {record.id}: it is {status}, not paused")
    _ask(record, {"op": "resume"})
    record.data["paused"] = False
    record.save()


def processes(record: Record) -> list[int]:
    """The host processes of the container: the supervisor, QEMU, the virtiofsd."""
    if not record.alive():
        return []
    try:
        pids: list[int] = _ask(record, {"op": "pids"}, timeout=10)["pids"]
    except OciError:
        return [record.pid] if record.alive() else []
    return pids


# -- exec ------------------------------------------------------------------------------------------


def exec_process(record: Record, proc: Process, *, detach: bool = False, pid_file: str | None = None,
                 console_socket: str | None = None, preserve_fds: int = 0) -> int:
    """Run ``proc`` in the guest through the agent; a relay process of our own carries it.

    The relay connects to the supervisor, hands it the fds the output goes
    to, streams its stdin (agent ``i`` frames into a pipe in the guest),
    forwards signals, and exits with the command's status.  With ``--tty``
    the engine holds the master of a host pty whose slave the relay keeps:
    what the engine writes there is the guest command's input (``i``
    frames into the guest's pty), the relay's own controlling terminal
    is that slave, so the engine's resizes reach it as SIGWINCH and go on
    as ``w`` frames -- the way the supervisor carries a ``terminal``
    container's pty.
    In the foreground this process is the relay.  With ``--detach`` a
    forked child is, and its pid goes to ``--pid-file`` as soon as it is
    connected: conmon and the containerd shim feed an exec's stdin only
    once ``exec --detach`` has returned, so the relay cannot wait for the
    command to start first (a command that cannot start is its exit status,
    127 or 126, and its error on its stderr).
    """
    status = record.status()
    if status != "running":
        raise OciError(f"cannot exec in container {record.id}: it is {status}")
    if proc.terminal and not console_socket:
        raise OciError("--tty needs --console-socket to receive the pty")
    if preserve_fds:
        raise OciError(f"--preserve-fds {preserve_fds}: not supported with minibox.isolation=vm")
    request: dict[str, Any] = {"op": "exec", "args": list(proc.args), "cwd": proc.cwd,
                               "user": [proc.uid, proc.gid], "tty": proc.terminal,
                               "env": dict(e.partition("=")[::2] for e in proc.env)}
    out_fd, err_fd = 1, 2
    tty_slave = None
    if proc.terminal:
        from .runtime import _open_console

        assert console_socket is not None
        console = _open_console(console_socket)
        master, tty_slave = os.openpty()
        try:
            import socket
            import tty

            tty.setraw(tty_slave)
            with socket.socket(fileno=console) as sock:
                socket.send_fds(sock, [b"/dev/ptmx"], [master])
        finally:
            os.close(master)
        out_fd = err_fd = tty_slave
    if not detach:
        return _relay(record, request, out_fd, err_fd, None, pid_file, tty_slave)
    connected_r, connected_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(connected_r)
            code = _relay(record, request, out_fd, err_fd, connected_w, None, tty_slave)
        except MiniboxError as e:
            with contextlib.suppress(OSError):
                os.write(2, f"minibox-oci: {e}\n".encode())
            code = getattr(e, "exit_status", 1)
        finally:
            os._exit(code)
    os.close(connected_w)
    if tty_slave is not None:
        os.close(tty_slave)
    answer = b""
    while chunk := os.read(connected_r, 65536):
        answer += chunk
    os.close(connected_r)
    if answer != b"S":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise OciError(answer[1:].decode(errors="replace") or "exec: the relay process died")
    if pid_file:
        write_pid_file(pid_file, pid)  # new, random name, no symlink followed
    return 0


class ExecError(OciError):
    """An exec that could not start in the guest; ``exit_status`` as a shell's (127, 126, or 1)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def _take_terminal(tty_fd: int) -> None:
    """Make ``tty_fd`` our controlling terminal: its resizes are then our SIGWINCH.

    A session of our own first (setsid fails for a process group leader: a
    foreground ``exec --tty`` run as one keeps its resizes to itself).
    """
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError):
        fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)


def _terminal_size(tty_fd: int) -> tuple[int, int] | None:
    """The rows and columns of a terminal, None while it has no size yet."""
    import fcntl
    import struct
    import termios

    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(tty_fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def _relay(record: Record, request: dict[str, Any], out_fd: int, err_fd: int, connected_fd: int | None,
           pid_file: str | None, tty_fd: int | None) -> int:
    """Carry one exec: connect, ask the supervisor, stream stdin (or the tty's input), forward signals
    (and resizes); the exit status."""
    import socket
    import threading

    from .vm_supervisor import FORWARDED, connect

    try:
        conn = connect(record.dir, None)
    except OSError as e:
        message = f"container {record.id}: its VM supervisor does not answer ({e})"
        if connected_fd is not None:
            with contextlib.suppress(OSError):
                os.write(connected_fd, b"E" + message.encode())
            os.close(connected_fd)
        raise OciError(message) from e
    try:
        if connected_fd is not None:
            os.write(connected_fd, b"S")
            os.close(connected_fd)
        if pid_file:
            write_pid_file(pid_file, os.getpid())  # new, random name, no symlink followed
        request["stream"] = not request["tty"]
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [out_fd, err_fd])
        sending = threading.Lock()  # one line at a time, from the stdin thread and the signal handler

        def send(message: dict[str, Any]) -> None:
            with sending, contextlib.suppress(OSError):
                conn.sendall(json.dumps(message).encode() + b"\n")

        def forward(number: int, _frame: object) -> None:
            send({"signal": number})

        def stream_stdin(fd: int) -> None:
            # read as it comes (an engine feeds it only after exec --detach returned), in frame-sized
            # pieces; a tty's slave reads EIO once the engine closed its master
            with contextlib.suppress(OSError):
                while chunk := os.read(fd, STDIN_CHUNK):
                    send({"stdin": chunk.decode("latin-1")})
            send({"stdin_end": True})

        def resize(_number: int = 0, _frame: object = None) -> None:
            assert tty_fd is not None
            if size := _terminal_size(tty_fd):
                send({"resize": list(size)})

        for sig in FORWARDED:
            signal_mod.signal(sig, forward)
        if tty_fd is not None:
            _take_terminal(tty_fd)
            signal_mod.signal(signal_mod.SIGWINCH, resize)
            resize()  # its size now; the engine may have set it before we had the terminal
        threading.Thread(target=stream_stdin, args=(tty_fd if tty_fd is not None else 0,), name="stdin",
                         daemon=True).start()
        buffered = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                raise OciError(f"exec in container {record.id}: the VM supervisor closed the connection")
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                reply = json.loads(line)
                if "error" in reply:
                    raise ExecError(str(reply["error"]), int(reply.get("status", 1)))
                if "exit" in reply:
                    return int(reply["exit"])
    finally:
        conn.close()
