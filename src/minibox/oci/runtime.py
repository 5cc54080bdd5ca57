"""The runtime verbs of the OCI spec: create, start, kill, delete, pause, resume, ps.

Spec: the OCI runtime specification's lifecycle (runtime.md#lifecycle) and
runc's command line.  ``create`` translates config.json (oci/config.py,
oci/mounts.py) into the same :class:`~minibox.container.spawn.ChildPlan`
that :class:`minibox.Container` builds from a Spec, and hands it to the
same C child (csrc/spawn.c).  The difference is the last step: the child
execs the *gate* (csrc/oci/gate.c) instead of the command.  The gate closes
the error pipe -- so ``create`` knows every setup step succeeded and
returns -- and blocks on the container's exec fifo until ``start`` writes to
it; then it execs the command, staying the same process.

So once ``create`` has returned, no minibox process is left: the
container's init is a child of the ``create`` process that exited, which
the kernel re-parents to the engine's subreaper (conmon, the containerd
shim) -- the one that reads its exit status, as with runc and crun.
"""

from __future__ import annotations

import errno
import os
import time

# contextlib and signal cost each verb milliseconds of imports (minibox/_lean.py)
from .._lean import NSIG, SIGKILL, pidfd_send_signal, signal_number, suppress
from ..errors import MiniboxError, SetupError
from .state import OciError, Record, write_light_state, write_pid_file

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

    from ..container.spawn import ChildPlan
    from ..spec import Limits
    from .config import Config  # loaded by create and exec only: start, kill, state and delete need no parser

# Order in which namespaces given by path are joined (before the clone's new
# ones are set up); the rest of JOIN_ORDER is for exec.
ISOLATION_ANNOTATION = "minibox.isolation"
MAX_PRESERVED_FDS = 32


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_isolation(annotations: dict[str, str], vm: bool) -> bool:
    """Whether the bundle runs in a microVM: its annotation, else the executable's name (-vm)."""
    isolation = annotations.get(ISOLATION_ANNOTATION, "vm" if vm else "container")
    if isolation not in ("container", "vm"):
        raise OciError(f"annotation {ISOLATION_ANNOTATION}={isolation!r}: expected 'container' or 'vm'")
    return isolation == "vm"


def resolve_command(cfg: Config, args: list[str], path: str) -> None:
    """Fail at create, as runc does, when the command is not in the rootfs (exit 127 for podman).

    The lookup follows the image's symlinks inside the rootfs; a command on
    a bind mount the engine adds is only found at exec time.
    """
    import stat

    from ..images.paths import open_in_root, opened_root

    name = args[0]
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in path.split(":")]
    mounted = [m.destination for m in cfg.mounts]
    with opened_root(cfg.root) as root_fd:
        for candidate in candidates:
            if not candidate.startswith("/"):
                candidate = os.path.join(cfg.process.cwd, candidate)
            if any(candidate == d or candidate.startswith(d.rstrip("/") + "/") for d in mounted):
                return  # on a mount: cannot tell before it exists
            try:
                fd = open_in_root(root_fd, candidate)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if not st.st_mode & 0o111:
                    raise OciError(f"exec: {name!r}: permission denied")
                return
            finally:
                os.close(fd)
    if "/" in name:
        raise OciError(f"exec: {name!r}: no such file or directory")
    raise OciError(f"exec: {name!r}: executable file not found in $PATH")


def hardening(plan: ChildPlan, cfg_process: Any, seccomp: dict[str, Any] | None, warn: Any = None) -> None:
    """Capabilities, no_new_privs, seccomp and rlimits of an OCI process, into ``plan``."""
    from ..policy import capabilities

    proc = cfg_process
    if proc.capabilities is not None:
        sets = {kind: capabilities.mask_of(proc.capabilities.get(kind, ())) for kind in
                ("bounding", "effective", "permitted", "inheritable", "ambient")}
        plan.set_caps = True
        plan.cap_bounding = sets["bounding"]
        plan.cap_effective = sets["effective"]
        plan.cap_permitted = sets["permitted"]
        plan.cap_inheritable = sets["inheritable"]
        # The kernel raises an ambient capability only if it is permitted and
        # inheritable (capabilities(7)); runc skips the others with a warning,
        # and so do we (runc spec's default bundle lists ambient ones alone).
        plan.cap_ambient = sets["ambient"] & sets["inheritable"] & sets["permitted"]
        if plan.cap_ambient != sets["ambient"] and warn is not None:
            warn("process.capabilities.ambient: capabilities that are not also inheritable and permitted "
                 "cannot be ambient; skipped")
        kept = frozenset(proc.capabilities.get("bounding", ()))
    else:
        kept = frozenset(capabilities.supported_capabilities())
    plan.no_new_privs = proc.no_new_privileges
    if seccomp:
        from ..policy.seccomp.cache import program_for  # an engine's profile, compiled once per host

        try:
            plan.seccomp_filter = program_for(seccomp, kept)
        except MiniboxError as e:
            raise OciError(f"config.json: linux.seccomp: {e}") from e
    if proc.rlimits:
        plan.rlimits = _rlimits(proc.rlimits)


def _rlimits(rlimits: dict[str, tuple[int, int]]) -> list[tuple[int, int, int]]:
    """process.rlimits -> (resource, soft, hard) for the C child, checked before anything exists.

    The names are setrlimit(2)'s; a hard limit above our own needs
    CAP_SYS_RESOURCE.  (policy/rlimits.py does the same for a Spec; this
    copy keeps its typing import off the create path.)
    """
    import resource

    with open("/proc/self/status") as f:
        may_raise = bool(next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:")) >> 24 & 1)
    result = []
    for name, (soft, hard) in rlimits.items():
        number = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
        if not isinstance(number, int):
            raise OciError(f"config.json: process.rlimits {name!r}: unknown; names are RLIMIT_* of setrlimit(2)")
        if soft > hard:
            raise OciError(f"config.json: process.rlimits {name}: soft limit {soft} is above the hard limit {hard}")
        own = resource.getrlimit(number)[1]
        if not may_raise and own != resource.RLIM_INFINITY and hard > own:
            raise OciError(f"config.json: process.rlimits {name}: hard limit {hard} is above minibox-oci's own "
                           f"({own}) and raising it needs CAP_SYS_RESOURCE, which this process lacks; "
                           "lower it (podman: --ulimit or default_ulimits in containers.conf)")
        result.append((number, soft, hard))
    return result


def _open_console(path: str) -> int:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise OciError(f"--console-socket {path}: {e.strerror}") from e
    return sock.detach()


def _check_preserved(count: int) -> list[int]:
    if not 0 <= count <= MAX_PRESERVED_FDS:
        raise OciError(f"--preserve-fds {count}: expected 0..{MAX_PRESERVED_FDS}")
    from .cli import INHERITED_FDS

    fds = list(range(3, 3 + count))
    for fd in fds:
        if fd not in INHERITED_FDS:
            raise OciError(f"--preserve-fds {count}: fd {fd} was not open when minibox-oci started")
        os.set_inheritable(fd, True)
    return fds


def create(root: str, container_id: str, bundle: str, *, pid_file: str | None = None,
           console_socket: str | None = None, preserve_fds: int = 0, vm: bool = False,
           warn: Any = None) -> Record:
    """Build the container and leave its init blocked before exec; see the module docstring."""
    from . import config as config_mod

    record = Record(root, container_id)
    cfg, text = config_mod.load_text(bundle)
    in_vm = check_isolation(cfg.annotations, vm)
    if warn is not None:
        for message in cfg.warnings:
            warn(message)
    with record.creating():
        record.save_config(text)
        if in_vm:  # oci/vm_runtime.py, imported only for a VM
            from . import vm_runtime

            vm_runtime.create(record, cfg, pid_file=pid_file, console_socket=console_socket,
                              preserve_fds=preserve_fds, warn=warn)
            return record
        _build(record, cfg, pid_file=pid_file, console_socket=console_socket, preserve_fds=preserve_fds,
               warn=warn)
    return record


def _teardown_child(pid: int | None, pidfd: int | None) -> None:
    if pid is None:
        return
    with suppress(OSError):
        if pidfd is not None:
            pidfd_send_signal(pidfd, SIGKILL)
        else:
            os.kill(pid, SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)
    if pidfd is not None:
        os.close(pidfd)


def _build(record: Record, cfg: Config, *, pid_file: str | None, console_socket: str | None,
           preserve_fds: int, warn: Any = None) -> None:
    from ..container.namespaces import JOIN_ORDER, clone_flags
    from ..container.spawn import ChildPlan, read_child_error, spawn, spawn_joined
    from ..container.userns import write_id_maps
    from .config import JOINABLE_AFTER_CLONE
    from .gate import gate_fd
    from .mounts import mount_ops

    proc = cfg.process
    if proc.terminal and not console_socket:
        raise OciError("process.terminal is true: give --console-socket to receive the pty")
    if console_socket and not proc.terminal:
        raise OciError("--console-socket needs process.terminal true in config.json")
    keep = _check_preserved(preserve_fds)
    new = [ns for ns, path in cfg.namespaces.items() if path is None]
    joined = [ns for ns in JOIN_ORDER if cfg.namespaces.get(ns)]
    in_userns = "user" in new
    # A pid, user, mount or time namespace is joined before the clone, by an
    # intermediate process (csrc/spawn.c's join_and_fork); so is every
    # other one then, and when the container makes its own user namespace
    # (inside it, it could no longer join namespaces of the host's).
    join_before_clone = bool(joined) and (in_userns or any(ns not in JOINABLE_AFTER_CLONE for ns in joined))
    in_joined_mnt = "mnt" in joined
    if not in_joined_mnt:
        # (in a joined mount namespace the command is found, or not, at start)
        resolve_command(cfg, proc.args, proc.path)
    umask = "-" if proc.umask is None else f"{proc.umask:o}"

    plan = ChildPlan(argv=[], envp=list(proc.env), path_env=proc.path, cwd=proc.cwd, uid=proc.uid,
                     gid=proc.gid, cmd=proc.args[0])
    plan.set_ids = True
    plan.set_groups = not in_userns or os.geteuid() == 0
    plan.non_dumpable = os.geteuid() == 0   # root inside must not reach the host's binary (CVE-2019-5736)
    plan.groups = list(proc.groups)
    if in_userns:
        plan.become_root = any(m.inside == 0 for m in cfg.uid_map) and any(m.inside == 0 for m in cfg.gid_map)
    elif "user" in joined:
        plan.become_root = True   # our uid may be unmapped there (the overflow id): be its root, as runc does
    hardening(plan, proc, cfg.seccomp, warn)
    plan.clone_flags = clone_flags(new)
    plan.hostname = cfg.hostname if cfg.hostname and "uts" in new else None
    if cfg.hostname and "uts" not in new:
        raise OciError("config.json: hostname needs a new uts namespace in linux.namespaces")
    plan.loopback_up = "net" in new
    plan.rootfs = None if in_joined_mnt else cfg.root   # joined: setns made its root ours
    plan.readonly_rootfs = cfg.readonly

    # Recorded before the cgroup exists (where it will be), again once it
    # does, and again with the pid right after the clone: if this process is
    # killed half way, `delete --force` still finds the cgroup and whatever
    # runs in it.
    name, parent, layout = _plan_cgroup(record, cfg)
    version, planned, made_parents = _planned_cgroup_dirs(name, parent, layout)
    record.data = {"id": record.id, "pid": 0, "bundle": cfg.bundle, "rootfs": cfg.root, "created": _now(),
                   "annotations": cfg.annotations, "started": False,
                   "cgroup": {"version": version, "paths": planned, "made_parents": made_parents},
                   "namespaces": sorted(cfg.namespaces)}
    record.save()
    cgroup = _create_cgroup(cfg, name, parent, layout, made_parents)
    fds: list[int] = []       # ours, closed at the end
    child_ends: list[int] = []
    pid: int | None = None
    pidfd: int | None = None
    try:
        record.data["cgroup"]["paths"] = cgroup.paths
        record.save()
        plan.ops = [] if in_joined_mnt else mount_ops(cfg, cgroup.paths)
        join_fds = [os.open(cfg.namespaces[ns] or "", os.O_RDONLY | os.O_CLOEXEC) for ns in joined]
        child_ends += join_fds
        if join_before_clone:
            plan.setns_fds = join_fds
            report_r, plan.report_fd = os.pipe()
            fds.append(report_r)
            child_ends.append(plan.report_fd)
        else:
            plan.join_fds = join_fds
        os.mkfifo(record.fifo, 0o600)
        gate = os.open(record.fifo, os.O_RDWR | os.O_CLOEXEC)
        os.set_inheritable(gate, True)   # the gate (after two execs) reads it
        child_ends.append(gate)
        plan.keep_fds = [*keep, gate]
        plan.init_fd = gate_fd()
        fds.append(plan.init_fd)
        error_r, error_w = os.pipe()
        fds.append(error_r)
        child_ends.append(error_w)
        plan.error_fd = error_w
        plan.argv = ["minibox-oci-gate", str(error_w), str(gate), umask, "--", *proc.args]
        if console_socket:
            plan.tty_socket = _open_console(console_socket)
            child_ends.append(plan.tty_socket)
        else:
            plan.stdin_fd, plan.stdout_fd, plan.stderr_fd = 0, 1, 2
        # vfork mode when we have nothing to do for the child before it runs
        # (see container/container.py): it joins its cgroups itself, on v1
        # through "tasks", which spares it the RCU grace period of a
        # cgroup.procs write (Cgroup.self_join_files).
        # Not when joining by path first: the child may sit in a user
        # namespace that may not write to our cgroup files.
        plan.use_vfork = not in_userns and "time" not in new and not join_before_clone
        sync_w = -1
        if plan.use_vfork:
            plan.cgroup_procs_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in cgroup.self_join_files()]
            child_ends += plan.cgroup_procs_fds
        else:
            sync_r, sync_w = os.pipe()
            fds.append(sync_w)
            child_ends.append(sync_r)
            plan.sync_fd = sync_r
            plan.sync_early = in_userns

        if "cgroup" in new:
            # A cgroup namespace is rooted where its creator is: the child
            # makes its own once it has joined its cgroups (csrc/spawn.c),
            # so it sees its cgroup as "/".
            plan.clone_flags &= ~clone_flags(["cgroup"])
            plan.unshare_cgroupns = True
        if join_before_clone:  # an intermediate joins them and clones the init (container/spawn.py)
            pid = spawn_joined(plan, child_ends, report_r, error_r)
            pidfd = os.pidfd_open(pid)
        else:
            pid, pidfd = spawn(plan)
        from ..procfs import start_time

        record.data.update(pid=pid, starttime=start_time(pid))
        record.save()
        for fd in child_ends:
            os.close(fd)
        child_ends = []
        if not plan.use_vfork:
            try:
                if in_userns:
                    write_id_maps(pid, cfg.uid_map, cfg.gid_map)
                    os.write(sync_w, b"M")
                cgroup.attach(pid)
                os.write(sync_w, b"G")
            except (OSError, MiniboxError) as e:
                # The child may be waiting for our next byte: end it, or reading
                # its report would wait forever (an id map the kernel refuses hung
                # create).  A report it wrote before (its own failure) is read still.
                with suppress(OSError):
                    if pidfd is not None:
                        pidfd_send_signal(pidfd, SIGKILL)
                    else:
                        os.kill(pid, SIGKILL)
                failure = read_child_error(error_r, plan)
                raise (failure or e) from e
        failure = read_child_error(error_r, plan)
        if failure is not None:
            raise failure

        if proc.oom_score_adj is not None:
            try:
                with open(f"/proc/{pid}/oom_score_adj", "w") as f:
                    f.write(str(proc.oom_score_adj))
            except PermissionError as e:
                # proc(5): lowering it below the inherited minimum needs CAP_SYS_RESOURCE
                raise OciError(f"config.json: process.oomScoreAdj {proc.oom_score_adj}: permission denied: "
                               "lowering it needs CAP_SYS_RESOURCE, which minibox-oci lacks here "
                               "(containerd: restrict_oom_score_adj = true)") from e
        record.data["hooks"] = {kind: [vars(h) for h in hooks] for kind, hooks in cfg.hooks.items()
                                if kind in ("poststart", "poststop")}
        record.save()
        from .hooks import run_hooks

        for kind in ("prestart", "createRuntime"):
            run_hooks(kind, [vars(h) for h in cfg.hooks.get(kind, [])], record.oci_state())
        if pid_file:
            write_pid_file(pid_file, pid)
        write_light_state(record)   # last: csrc/oci/front.c may now do state, start and delete alone
        os.close(pidfd)
        pidfd = None
    except BaseException:
        _teardown_child(pid, pidfd)
        pidfd = None
        with suppress(OSError, MiniboxError):
            cgroup.kill_all()
        cgroup.remove()
        _remove_parents(made_parents)
        raise
    finally:
        for fd in fds + child_ends:
            with suppress(OSError):
                os.close(fd)
        if pidfd is not None:
            os.close(pidfd)


def _plan_cgroup(record: Record, cfg: Config) -> tuple[str, str | None, Any]:
    """Where the container's cgroup goes: its name, its parent and the host's layout; nothing is made.

    As runc reads ``linux.cgroupsPath`` on cgroupfs: an absolute path is below
    the hierarchy root (podman asks for ``/libpod_parent/libpod-ID``, ctr for
    ``/NAMESPACE/ID``), a relative one below minibox's own parent
    (``<the caller's cgroup>/minibox``, or $MINIBOX_CGROUP_PARENT).  Unlike
    runc, the last component must be new: minibox-oci writes limits only
    into a cgroup it made (never into a host's cgroup that happens to have
    that name), and removes it -- with the parents it had to make, once
    empty -- at delete.  Without cgroupsPath the cgroup is
    ``<minibox's parent>/<id>.<random>``: two --root directories may both
    hold an id.
    """
    from ..container.cgroups import detect_layout
    from ..container.cgroups.layout import effective_parent

    layout = detect_layout()
    if not cfg.cgroups_path:
        return f"{record.id}.{os.urandom(3).hex()}", None, layout
    parts = [p for p in cfg.cgroups_path.split("/") if p]
    parent = "/".join(parts[:-1])
    if cfg.cgroups_path.startswith("/"):
        parent = "/" + parent
    else:
        parent = effective_parent(None).rstrip("/") + ("/" + parent if parent else "")
    return parts[-1], parent, layout


def _planned_cgroup_dirs(name: str, parent: str | None, layout: Any) -> tuple[int, dict[str, str], list[str]]:
    """The cgroup version, its directories once made (per hierarchy; a superset: the ones
    the limits need are made), and the parent directories create will have to make, deepest first."""
    from ..container.cgroups import parent_dirs

    bases = parent_dirs(parent, layout)
    made: list[str] = []
    if parent is not None:
        for directory in dict.fromkeys(bases.values()):
            while not os.path.isdir(directory) and directory not in made:
                made.append(directory)
                directory = os.path.dirname(directory)
    return (2 if layout.kind == "v2" else 1), {key: f"{base}/{name}" for key, base in bases.items()}, made


def _create_cgroup(cfg: Config, name: str, parent: str | None, layout: Any, made: list[str],
                   limits: Limits | None = None) -> Any:
    """Make the cgroup _plan_cgroup placed and write the limits (config.json's unless given: a VM's
    host processes get others, oci/vm_runtime.py); a failure removes the parents made."""
    from ..container.cgroups import Cgroup

    try:
        return Cgroup.create(name, cfg.limits if limits is None else limits, parent=parent, layout=layout)
    except SetupError as e:
        _remove_parents(made)
        if cfg.cgroups_path:
            raise OciError(f"config.json: linux.cgroupsPath {cfg.cgroups_path!r}: {e}") from e
        raise


def remove_recorded_cgroup(record: Record) -> None:
    """delete's last step: the container's cgroup, and the parents create made for it."""
    cgroup = record.cgroup()
    if cgroup is None:
        return
    try:
        cgroup.remove()
    except SetupError as e:
        raise OciError(f"container {record.id}: {e}") from e
    _remove_parents(record.data["cgroup"].get("made_parents", []))


def _remove_parents(made: list[str]) -> None:
    """rmdir the parent cgroups create made, deepest first, unless another container uses them."""
    for directory in made:
        with suppress(OSError):
            os.rmdir(directory)


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid`` has exited (a zombie counts: its reaper is the engine)."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def start(record: Record, warn: Any = None) -> None:
    """Open the gate: the init execs the command.  Returns once the gate has read the byte."""
    import fcntl
    import termios

    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.start(record, warn)
    status = record.status()
    if status != "created":
        raise OciError(f"cannot start container {record.id}: it is {status}, not created")
    try:
        fd = os.open(record.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OciError(f"cannot start container {record.id}: its init has gone") from e
        raise
    try:
        # a file, not a field of state.json: csrc/oci/front.c makes the same one
        os.close(os.open(record.started_marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        os.write(fd, b"0")
        # The gate execs the command right after reading: wait for the read.
        # It is usually scheduled within tens of microseconds (2 CPUs), so
        # look often at first: a 0.5 ms step cost every start ~1 ms.
        deadline = time.monotonic() + 10
        buf = bytearray(4)
        step = 0.00005
        while time.monotonic() < deadline:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            if int.from_bytes(buf, "little") == 0 or not record.alive():
                break
            time.sleep(step)
            step = min(step * 2, 0.005)
    finally:
        os.close(fd)
    from .hooks import run_recorded_hooks

    run_recorded_hooks("poststart", record, record.oci_state(), warn)


def parse_signal(value: str) -> int:
    text = value.strip().upper()
    if text.isdigit():
        number = int(text)
        if not 0 < number < NSIG:
            raise OciError(f"invalid signal {value!r}")
        return number
    if not text.startswith("SIG"):
        text = "SIG" + text
    found = signal_number(text)
    if found is None:
        raise OciError(f"invalid signal {value!r}")
    return found


def not_running_message(container_id: str) -> str:
    """The error of a kill whose container has finished.

    "container not running" is what containerd's runc shim looks for in the
    error (checkKillError): the process has finished, not a failure.
    """
    return f"cannot signal container {container_id}: container not running"


def kill(record: Record, sig: int, all_processes: bool = False) -> None:
    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.kill(record, sig, all_processes)
    not_running = not_running_message(record.id)
    if all_processes:
        # As runc: --all signals whatever is left in the cgroup, also once the
        # init has gone (containerd's shim does this when an init that shared
        # its pod's pid namespace exits, to end the processes it left).
        cgroup = record.cgroup()
        try:
            pids = list(cgroup.procs()) if cgroup is not None else []
        except OSError:
            pids = []
        if cgroup is None and record.alive():
            pids = [record.pid]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        return
    if not record.alive():
        raise OciError(not_running)
    pidfd = os.pidfd_open(record.pid)
    try:
        if not record.alive():   # the pid was recycled between the check and the open
            raise OciError(not_running)
        pidfd_send_signal(pidfd, sig)
    except ProcessLookupError as e:
        raise OciError(not_running) from e
    finally:
        os.close(pidfd)


def delete(record: Record, force: bool = False, warn: Any = None) -> None:
    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.delete(record, force, warn)
    status = record.status()
    if status in ("running", "paused") and not force:
        raise OciError(f"cannot delete container {record.id} that is not stopped: it is {status} "
                       "(use delete --force)")
    if status == "stopped" and _remove_empty_cgroup(record):
        pass  # the common case, as an engine deletes: nothing left to kill
    else:
        _end_and_remove_cgroup(record, status)
    state = record.oci_state()
    state["status"] = "stopped"
    from .hooks import run_recorded_hooks

    run_recorded_hooks("poststop", record, state, warn)
    record.remove()


def _remove_empty_cgroup(record: Record) -> bool:
    """rmdir the recorded cgroup directories (and the parents create made); False if one is in use.

    The kernel refuses to remove a cgroup that holds a process or a child
    cgroup (EBUSY), so a successful rmdir is itself the check that nothing
    is left: no cgroup package to import (~1.5 ms of a fresh interpreter)
    and no cgroup.procs to read.  On False, the directories removed so far
    are gone and :func:`_end_and_remove_cgroup` does the rest.
    """
    info = record.data.get("cgroup")
    if not info:
        return True
    directories = set(info["paths"].values())
    for directory in sorted(directories, key=len, reverse=True):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    # as Cgroup.remove does: the parents go too once empty (rmdir refuses one in use)
    _remove_parents([*{os.path.dirname(d) for d in directories}, *info.get("made_parents", [])])
    return True


def _end_and_remove_cgroup(record: Record, status: str) -> None:
    cgroup = record.cgroup()
    # a "stopped" record may still have processes in its cgroup: a create
    # killed half way, or exec'd processes of an init that has gone
    if status != "stopped" or (cgroup is not None and cgroup.procs()):
        if cgroup is not None:
            with suppress(OSError, MiniboxError):
                cgroup.kill_all()
        with suppress(ProcessLookupError, OciError):
            kill(record, SIGKILL)
        if record.pid and status != "stopped" and not wait_gone(record.pid):
            raise OciError(f"container {record.id}: its init did not die within 5 s of SIGKILL")
    remove_recorded_cgroup(record)


def pause(record: Record) -> None:
    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.pause(record)
    status = record.status()
    if status != "running":
        raise OciError(f"cannot pause container {record.id}: it is {status}")
    record.cgroup().freeze()


def resume(record: Record) -> None:
    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.resume(record)
    status = record.status()
    if status != "paused":
        raise OciError(f"cannot resume container {record.id}: it is {status}, not paused")
    record.cgroup().thaw()


def processes(record: Record) -> list[int]:
    if record.data.get("isolation") == "vm":
        from . import vm_runtime

        return vm_runtime.processes(record)
    cgroup = record.cgroup()
    if cgroup is None:
        return [record.pid] if record.alive() else []
    return list(cgroup.procs())
