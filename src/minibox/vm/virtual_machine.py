"""VirtualMachine: a Spec run under its own guest kernel, QEMU being the boundary.

This is the hypervisor path's :class:`~minibox.sandbox.Sandbox`.  Where a
Container asks the host kernel for namespaces and cgroups, a VirtualMachine
first *plans* (plan.py: pure data, no root) and then *executes* the plan:

1. resolves a guest kernel (kernel.py) and decides between KVM and TCG
   (accel.py);
2. writes the planned initramfs into a memfd (initramfs.py): the static
   guest agent as ``/init``, the kernel modules it loads, the Spec as a
   config file;
3. starts one virtiofsd per planned share (virtiofs.py), speaking
   vhost-user over an inherited socket (docs/vm.md explains why virtiofs
   rather than 9p or packing the rootfs into the initramfs);
4. starts QEMU (machine.py) with every channel an inherited socketpair: QMP
   (qmp.py), the serial console, and the agent's three virtio-serial ports;
5. follows the agent's frames (channels.py, agent.py) until the command
   exits, then waits for the guest's poweroff to *pause* QEMU, drains every
   byte of output and only then tells QEMU to ``quit``.

Every host resource it creates (QEMU, virtiofsd, sockets, the memfd, a state
file in ``runtime_dir()``) is released by :meth:`close`, which every exit
path reaches: normal exit, timeout, kill, an exception in the caller's
``with`` block, a failed boot, a guest kernel panic.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal as _signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import procfs
from ..errors import MiniboxError, PreflightError, SetupError, SpecError, StateError, exec_failure
from ..owner import Held, StartSteps, start_error
from ..sandbox import CLOSED, EXITED, PAUSED, RUNNING, Result, Sandbox, Stats, Usage, command_env, make_result
from ..spec import Spec
from . import accel as _accel
from . import agent as _agent
from . import machine, virtiofs
from . import network as _network
from . import plan as _plan
from .channels import Channels, ExecState
from .kernel import KernelInfo, ensure_kernel, modules_for
from .plan import GUEST_MODULES as GUEST_MODULES  # re-exported: bench, compare, demos
from .plan import guest_initramfs as guest_initramfs
from .qmp import Monitor
from .virtiofs import find_virtiofsd as find_virtiofsd

#: How long a boot may take before minibox gives up (TCG boots take ~1-3 s here).
BOOT_TIMEOUT = 120.0
#: How long the guest may take to power off after its command ended.
POWEROFF_TIMEOUT = 10.0
#: After a poweroff, the pump is drained once it read nothing for this long.
DRAIN_IDLE = 0.5


def find_qemu() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        raise PreflightError("qemu-system-x86_64 not found: install QEMU (Debian: apt-get install qemu-system-x86)")
    return path


@lru_cache(maxsize=4)
def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].removeprefix("QEMU emulator version ").strip()


def _default_rootfs() -> str:
    """minibox's busybox rootfs, shared by both paths (built on first use)."""
    from ..images.busybox import default_rootfs

    return str(default_rootfs())


def kvm_probe(qemu: str, kernel: KernelInfo, agent_bin: Path) -> bool:
    """Boot the agent in probe mode under KVM; True if it printed its marker in time."""
    image = _plan.probe_initramfs(agent_bin)
    memfd = os.memfd_create("minibox-probe", 0)
    ours, theirs = socket.socketpair()
    try:
        os.write(memfd, image)
        cfg = machine.MachineConfig(qemu=qemu, kernel=str(kernel.path), initrd=f"/dev/fd/{memfd}",
                                    cmdline=machine.kernel_cmdline(), memory=128 << 20, accel="kvm",
                                    console_fd=theirs.fileno())
        return _accel.probe_boot(machine.qemu_argv(cfg), ours)
    finally:
        os.close(memfd)
        ours.close()
        theirs.close()


def _refused(field: str, why: str) -> SpecError:
    return SpecError(field, f"not supported with isolation='vm': {why}")


def refuse_unsupported(spec: Spec) -> None:
    """Raise SpecError for each Spec field a VM cannot honour, before anything exists.

    Every other field is honoured, most by the guest agent with the
    container path's meaning; docs/api.md keeps the table (field |
    container | vm) and tests/contract/ checks it.
    """
    if spec.network == "host":
        raise _refused("network", "a VM cannot share the host's network stack; use 'none' or 'bridge'")
    if spec.rootfs_overlay or spec.rootfs_overlay_size is not None:
        raise _refused("rootfs_overlay_size" if spec.rootfs_overlay_size is not None else "rootfs_overlay",
                       "a VM writes its rootfs share in place; use readonly_rootfs=True with a tmpfs mount")
    for name in ("uid_map", "gid_map"):
        if getattr(spec, name) is not None:
            raise _refused(name, "the guest kernel is the boundary and the command runs in the guest's own "
                                 "user namespace; map ids with user=(uid, gid) instead")
    if spec.namespaces is not None:
        raise _refused("namespaces", "the command runs in the guest's own namespaces: the guest kernel, "
                                     "not namespaces, is its boundary; leave namespaces=None")
    limits = spec.limits
    if limits.memory_swap is not None and limits.memory_swap != limits.memory:
        raise _refused("limits.memory_swap", "the guest has no swap device; leave it None (or equal to memory)")
    if limits.cpu_weight is not None:
        raise _refused("limits.cpu_weight", "QEMU's share of the host's CPUs is not weighted; use limits.cpus")
    if limits.cpuset is not None:
        raise _refused("limits.cpuset", "the vCPUs are QEMU threads, not pinned to host CPUs; use limits.cpus")


def _proc_usage(pid: int) -> tuple[int | None, int | None, float | None]:
    """(VmRSS, VmHWM, utime+stime seconds) of a live process, from /proc (proc(5))."""
    rss = hwm = None
    cpu = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
        st = procfs.stat(pid)
        cpu = None if st is None else st.cpu_seconds
    except (OSError, IndexError, ValueError):
        pass
    return rss, hwm, cpu


class VirtualMachine(Sandbox):
    """Run ``spec`` inside a microVM: same verbs and Result as a Container.

    ``stdin`` is fed to the command (None: /dev/null).  ``stdout``/``stderr``
    are file descriptors to copy its output to; None captures it into the
    Result.  ``machine_type`` is QEMU's machine type: "microvm" (default), or
    "q35"/"pc" as a fallback for kernels without virtio-mmio support.
    ``rootfs_sharing`` is "virtiofs" (default: the guest sees the rootfs
    directory itself, writes included) or "initramfs" (a copy of the rootfs
    is packed into the initramfs: no virtiofsd, but writes stay in the guest
    and the whole tree is read at every start; for small rootfs only).
    """

    def __init__(self, spec: Spec, *, stdin: bytes | None = None, stdout: int | None = None,
                 stderr: int | None = None, machine_type: str = "microvm",
                 rootfs_sharing: str = "virtiofs") -> None:
        refuse_unsupported(spec)
        self._memory = machine.memory_bytes(spec)
        self._stdin = stdin
        self._machine = machine_type
        if rootfs_sharing not in _plan.SHARING_MODES:
            raise SpecError("rootfs_sharing", f"unknown mode {rootfs_sharing!r}; use 'virtiofs' or 'initramfs'")
        self._sharing = rootfs_sharing
        super().__init__(spec)
        self._id = self.id
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        # host resources
        self._qemu: subprocess.Popen[bytes] | None = None
        self._helpers: list[subprocess.Popen[bytes]] = []  # one virtiofsd per share
        self._socks: list[socket.socket] = []
        self._memfd: int | None = None
        self._monitor: Monitor | None = None
        self._ctl: socket.socket | None = None
        self._record: Any = None  # records.Record, written before anything else exists
        self._net: _network.VmNetwork | None = None  # network="bridge": lease, ports (vm/network.py)
        self._tap_fd: int | None = None  # our copy of the tap's fd, until QEMU holds its own
        # what we learned: the channels' state (agent frames, output) and QEMU's events
        self._ch = Channels(self._cond, stdout, stderr, on_violation=self._kill_qemu,
                            output_limit=spec.output_limit)
        self._accel = _accel.Verdict("tcg", "not started")
        self._started = False
        self._paused = False
        self._shutdown: dict[str, Any] | None = None
        self._panicked = False
        self._ids = itertools.count(1)
        self._usage = Usage()
        self._closed = False
        # Who reaps QEMU and releases the VM's host resources once a complete run
        # has ended (see wait()); None: wait() does it before it returns.
        self.release_later: Callable[[Callable[[], None]], None] | None = None
        # what a snapshot needs to say how this guest was made (vm/vm_snapshot.py)
        self._cfg: machine.MachineConfig | None = None
        self._initrd: bytes | Path | None = None
        self._agent_bin: Path | None = None

    # ---- properties ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """QEMU's pid while it runs."""
        return self._qemu.pid if self._qemu is not None and self._qemu.returncode is None else None

    @property
    def accelerator(self) -> str:
        """"kvm" or "tcg"."""
        return self._accel.accelerator

    @property
    def accelerator_reason(self) -> str:
        """Why that accelerator: one sentence for humans."""
        return self._accel.reason

    @property
    def kernel_release(self) -> str:
        """The guest kernel's release, as the agent's uname(2) reported it."""
        return self._ch.state.release

    @property
    def ip(self) -> str | None:
        """The guest's address on the bridge (network="bridge"), else None."""
        return None if self._net is None else self._net.address

    # ---- start: plan, then execute ---------------------------------------------

    def start(self) -> None:
        self._check("start")
        self._started = True
        self._started_at = time.monotonic()
        try:
            self._boot()
        except OSError as e:
            self.close()
            raise start_error(e, "each holds its QEMU's channels and a memfd") from e
        except BaseException:
            self.close()
            raise
        # A Spec timeout shorter than the boot ends it already (_wait_for_start).
        self._set_state(EXITED if self._result is not None else RUNNING)

    def _boot(self) -> None:
        """Plan (pure), find the host's parts, then execute the plan step by step."""
        plan = _plan.plan_vm(self.spec, self._sharing, _default_rootfs,
                             _network.GUEST_MODULES if self.spec.network == "bridge" else ())
        # -- the host's parts: QEMU, virtiofsd, the kernel, the agent, the accelerator
        qemu = find_qemu()
        virtiofsd = find_virtiofsd() if plan.needs_virtiofs else ""
        if plan.needs_virtiofs and os.geteuid() != 0:
            raise PreflightError("virtiofsd needs root here: run VMs as root (or rootfs_sharing='initramfs')")
        kernel = ensure_kernel(plan.spec.kernel)
        agent_bin = _agent.build_agent()
        modules = modules_for(kernel, plan.modules)
        self._accel = _accel.choose(kernel, qemu_version(qemu), lambda: kvm_probe(qemu, kernel, agent_bin))
        # -- execute: the record first, naming what is about to exist; then the
        # network, the initramfs, virtiofsd and QEMU.  Each process starts held
        # (see minibox.owner.Held): it runs only once the record and the
        # keeper know it, so a caller killed at any instant leaves nothing
        # `minibox gc` cannot find, and the keeper ends what it knows.
        steps = StartSteps()
        self._record = self._create_record(plan.spec)
        steps.done("record")
        if plan.make_mount_points:
            virtiofs.make_mount_points(plan.rootfs, plan.spec.mounts)
        if plan.spec.network == "bridge":
            # the lease (and published ports); close() gives them back
            self._net = _network.VmNetwork.prepare(self._id, plan.spec)
            self._record.update(network=self._net.record())
            steps.done("network")
        image = guest_initramfs(plan.spec, agent_bin, modules, plan.guest_mounts, self._stdin,
                                packed_root=plan.packed_root, network=self._net)
        self._memfd = os.memfd_create(f"minibox-initramfs-{self._id}", 0)
        os.write(self._memfd, image)
        child_fds: list[int] = [self._memfd]
        virtiofs_fds = self._start_virtiofsd(virtiofsd, plan.shares, steps)
        child_fds += [fd for _, fd in virtiofs_fds]
        ours, theirs = self._channel_pairs()
        child_fds += [sock.fileno() for sock in theirs]
        cfg = _plan.machine_config(
            plan, qemu=qemu, kernel=str(kernel.path), initrd=f"/dev/fd/{self._memfd}",
            accel=self._accel.accelerator, machine_type=self._machine, memory=self._memory,
            channels=_plan.ChannelFds(theirs[0].fileno(), theirs[1].fileno(),
                                      (theirs[2].fileno(), theirs[3].fileno(), theirs[4].fileno())),
            virtiofs_fds=virtiofs_fds)
        self._cfg, self._initrd, self._agent_bin = cfg, image, agent_bin
        if self._net is not None:
            # A tap is a NIC whose wire is an fd; QEMU inherits it (-netdev tap,fd=N).
            # Made here, in the thread that starts QEMU (see VmNetwork.open_tap).
            self._tap_fd = self._net.open_tap()
            child_fds.append(self._tap_fd)
            cfg.tap_fd, cfg.mac = self._tap_fd, self._net.mac
            steps.done("tap")
        self._run_qemu(machine.qemu_argv(cfg), child_fds, ours, steps)
        self._wait_for_start(plan.spec)

    def _run_qemu(self, argv: list[str], child_fds: list[int], ours: Sequence[socket.socket],
                  steps: StartSteps) -> None:
        """Start QEMU (supervised, see _start_qemu), pump its channels and connect QMP.

        ``ours`` are our ends of :meth:`_channel_pairs` (QMP, console,
        control, stdout, stderr); every path that starts a QEMU -- a cold
        boot, a template boot or clone, a restore, minibox-oci-vm's
        supervisor -- goes through here.
        """
        qmp_sock, console, ctl, out, err = ours
        self._ctl = ctl
        err_r = self._start_qemu(argv, child_fds)
        steps.done("qemu")
        self._ch.start(f"vm-{self._id}-io", console, out, err, ctl, err_r)
        try:
            self._monitor = Monitor(qmp_sock, self._on_event, name=f"minibox-{self._id}")
        except Exception as e:
            raise SetupError("qmp", None, f"QEMU did not answer on QMP: {self._ch.qemu_error()}") from e

    def _wait_for_hello(self, step: str, what: str) -> None:
        """Wait until the agent has said hello (it then waits for its run); SetupError(step) if it never does."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._ch.state.release) or self._ended(), BOOT_TIMEOUT)
            hello, broken = self._ch.state.release, self._channel_error()
        if broken is not None:
            raise broken
        if not hello:
            raise SetupError(step, None, self._why_it_died(what))

    def _create_record(self, spec: Spec) -> Any:
        """This VM's record, before anything it names exists (see minibox/records.py)."""
        from ..records import Record

        network = None
        if spec.network == "bridge":
            from ..network import config_from_env

            config = config_from_env()
            network = {"id": self._id, "bridge": config.bridge, "link": _network.tap_name(self._id),
                       "nft_table": config.nft_table if spec.ports else None}
        return Record.create("vm", self._id, network=network)

    def _channel_pairs(self) -> tuple[list[socket.socket], list[socket.socket]]:
        """One socketpair per channel (QMP, console, control, stdout, stderr): we keep
        the first list's ends, QEMU inherits the second's.  Both close with the VM."""
        ours: list[socket.socket] = []
        theirs: list[socket.socket] = []
        for _ in range(5):
            a, b = socket.socketpair()
            self._socks += [a, b]
            ours.append(a)
            theirs.append(b)
        return ours, theirs

    def _start_virtiofsd(self, virtiofsd: str, shares: Sequence[virtiofs.Share],
                         steps: StartSteps) -> list[tuple[str, int]]:
        """One virtiofsd per share, each held until recorded and kept; the (tag, fd) pairs QEMU inherits."""
        fds: list[tuple[str, int]] = []
        if not shares:
            return fds
        guard = str(virtiofs.build_guard())
        for share in shares:
            held = Held()
            try:
                proc, qemu_end = virtiofs.start(virtiofsd, share, guard, wrap=held.argv, extra_fds=(held.fd,))
                self._socks.append(qemu_end)
                self._helpers.append(proc)
                held.supervise(proc.pid, self._record, "virtiofsd")
                held.go()
            finally:
                held.close()
            fds.append((share.tag, qemu_end.fileno()))
            steps.done("virtiofsd")
        return fds

    def _start_qemu(self, argv: list[str], child_fds: list[int]) -> int:
        """Start QEMU with ``child_fds``: held until recorded and kept, then released; its stderr's read end."""
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        held = Held()
        try:
            try:
                self._qemu = subprocess.Popen(held.argv(argv), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=err_w,
                                              pass_fds=[*child_fds, held.fd], start_new_session=True)
            except OSError as e:
                os.close(err_r)
                raise PreflightError(f"cannot start {argv[0]}: {e.strerror}") from e
            finally:
                os.close(err_w)
            # If this process dies from here on, the keeper ends QEMU (and the
            # virtiofsd before it); if the keeper dies too, gc finds them in the record.
            held.supervise(self._qemu.pid, self._record, "qemu")
            if self._net is not None:
                self._net.started(self._qemu.pid)  # the lease now names QEMU
            held.go()
        finally:
            held.close()
        if self._tap_fd is not None:
            # QEMU holds the tap now: with our copy closed it lives exactly as long as QEMU.
            _network.close_fd(self._tap_fd)
            self._tap_fd = None
        # QEMU holds its ends now; ours must go, or EOF would never come.
        for sock in list(self._socks):
            if sock.fileno() in child_fds:
                self._socks.remove(sock)
                sock.close()
        if self._memfd is not None:  # the initramfs (a restored VM has none)
            os.close(self._memfd)
            self._memfd = None
        return err_r

    def _wait_for_start(self, spec: Spec) -> None:
        """Wait until the agent reports the command started; raise or time out otherwise."""
        boot_deadline = BOOT_TIMEOUT
        if spec.timeout is not None:
            boot_deadline = min(boot_deadline, spec.timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._ch.state.running or self._ended(), boot_deadline)
            running, failure, ended = self._ch.state.running, self._ch.state.failure, self._ended()
            broken = self._channel_error()
        if broken is not None:
            raise broken
        if running:
            return
        if failure is not None:
            raise self._failure_error(failure)
        if not ended and spec.timeout is not None and spec.timeout <= BOOT_TIMEOUT:
            self._result = self._timeout_result()
            return
        raise SetupError("boot", None, self._why_it_died("the guest never started the command"))

    # ---- QMP events -------------------------------------------------------------------

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        with self._cond:
            if name == "SHUTDOWN":
                self._shutdown = data
            elif name == "STOP":
                self._paused = True
            elif name == "RESUME":
                self._paused = False
            elif name == "GUEST_PANICKED":
                self._panicked = True
            self._cond.notify_all()

    def _ended(self) -> bool:
        """The guest is gone or going: exited, failed, shut down, or QEMU died."""
        st = self._ch.state
        return (st.main_exit is not None or st.failure is not None
                or self._shutdown is not None or self._panicked or st.io_done
                or st.violation is not None or st.pump_error is not None)

    def _drain_after_poweroff(self) -> None:
        """The guest powered off (QEMU paused): let the pump catch up before deciding how it ended.

        The agent's last frames (the exit status) may still be on their way
        when QEMU reports the poweroff, behind whatever the guest sent
        before (a guest flooding its control port).  What QEMU already
        wrote to our sockets still arrives; what sits in the guest's
        virtqueues does not (measured: a paused QEMU relays no more).  So
        wait while the pump makes progress, until it has the exit, or read
        nothing for :data:`DRAIN_IDLE` seconds.
        """
        st = self._ch.state

        def decided() -> bool:
            return (st.main_exit is not None or st.failure is not None or st.io_done
                    or self._channel_error() is not None)

        while True:
            with self._cond:
                if self._shutdown is None or decided():
                    return
                seen = self._ch.bytes_read
                if self._cond.wait_for(decided, DRAIN_IDLE):
                    return
            if self._ch.bytes_read == seen:
                return

    def _channel_error(self) -> SetupError | None:
        """The guest broke the agent protocol (ProtocolError), or the I/O pump failed: what to raise."""
        st = self._ch.state
        if st.violation is not None:
            return st.violation
        if st.pump_error is not None:
            error = SetupError("vm channels", None, f"the host's I/O thread failed: {st.pump_error!r}")
            error.__cause__ = st.pump_error
            return error
        return None

    def _kill_qemu(self) -> None:
        """End the VM at once (from the pump thread, on a protocol violation): SIGKILL our own child."""
        qemu = self._qemu
        if qemu is not None and qemu.poll() is None:
            qemu.kill()

    # ---- ending ---------------------------------------------------------------

    def _why_it_died(self, what: str) -> str:
        tail = self._ch.console_tail()
        qemu_err = self._ch.qemu_err.decode(errors="replace").strip()
        parts = [what]
        console = self._ch.console.decode(errors="replace").replace("\r", "")
        panic = [line for line in console.splitlines() if "Kernel panic" in line]
        if panic:
            parts = ["the guest kernel panicked: " + panic[-1].split("Kernel panic - ", 1)[-1]]
        elif self._panicked:
            parts = ["the guest kernel panicked"]
        if tail:
            parts.append("last console lines:\n" + tail)
        if qemu_err:
            parts.append("QEMU said: " + qemu_err)
        return "; ".join(parts)

    def _failure_error(self, failure: tuple[str, int, str]) -> SetupError:
        step, err, detail = failure
        if step == "execve" and err:
            return exec_failure(step, err, detail or None)
        return SetupError(step, err or None, detail or None)

    def _read_usage(self) -> None:
        if self._qemu is not None and self._qemu.returncode is None:
            _, hwm, cpu = _proc_usage(self._qemu.pid)
            self._usage = Usage(memory_peak_bytes=hwm, cpu_seconds=cpu)

    def _timeout_result(self) -> Result:
        self._read_usage()
        self._stop_qemu()
        out, err = self._ch.captured()
        return make_result(None, None, started=self._started_at, timed_out=True, stdout=out, stderr=err,
                           usage=self._usage)

    def _stop_qemu(self, graceful: bool = False) -> None:
        """End QEMU: ``quit`` over QMP when graceful, SIGKILL otherwise; then drain the output."""
        qemu = self._qemu
        if qemu is None:
            return
        if graceful and qemu.returncode is None and self._monitor is not None:
            try:
                self._monitor.execute("quit", timeout=5)
            except SetupError:
                pass  # QEMU closes QMP as it quits; the wait below decides
            try:
                qemu.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if qemu.poll() is None:
            qemu.kill()  # our own child, by pid
        qemu.wait()
        self._ch.join()

    def wait(self, timeout: float | None = None) -> Result:
        self._check("wait")
        if self._result is not None:
            self._free()
            return self._result
        if timeout is None and self.spec.timeout is not None:
            timeout = max(0.0, self.spec.timeout - (time.monotonic() - self._started_at))
        with self._cond:
            self._cond.wait_for(self._ended, timeout)
        self._drain_after_poweroff()
        with self._cond:
            main_exit, failure = self._ch.state.main_exit, self._ch.state.failure
        handed_off = False
        try:
            complete = False
            if main_exit is not None:
                # All of the command's output is here (the exit frame counts it; Channels.output_complete),
                # or, from a guest that cannot count, the agent powers off right after reporting.
                with self._cond:
                    self._cond.wait_for(lambda: self._ch.output_complete() or self._shutdown is not None
                                        or self._channel_error() is not None, POWEROFF_TIMEOUT)
                    complete = self._ch.output_complete()
            with self._cond:
                broken = self._channel_error()
            if broken is not None:
                self._stop_qemu()
                raise broken
            if main_exit is not None:
                self._read_usage()
                # Complete: nothing the guest still does can matter (its processes are gone, its
                # writes to shares synced before it reported), so SIGKILL rather than wait for it.
                if complete and self.release_later is not None and self._kill_for_release_later():
                    handed_off = True  # SIGKILLed; the reap and the release need not delay the Result
                else:
                    self._stop_qemu(graceful=not complete)
                code, sig = main_exit
                out, err = self._ch.captured()
                self._result = make_result(code, sig, started=self._started_at, stdout=out, stderr=err,
                                           oom=self._ch.state.main_oom, usage=self._usage)
            elif failure is not None:
                self._stop_qemu()
                raise self._failure_error(failure)
            elif not self._ended():
                self._result = self._timeout_result()
            else:
                self._stop_qemu()
                raise SetupError("guest", None, self._why_it_died("the VM stopped before the command ended"))
        finally:
            if handed_off:
                assert self.release_later is not None
                self.release_later(self._release)
            else:
                self._free()
            self._set_state(EXITED if self._result is not None else CLOSED)
        return self._result

    def _kill_for_release_later(self) -> bool:
        """SIGKILL QEMU and claim the release for ``release_later``; False if close() has claimed it.

        QEMU is killed here, before the Result is returned, so that nothing
        of the guest runs on once the caller has it; only the wait for the
        kernel to tear the process down (~2-3 ms for a clone) and the release
        of the record, sockets and network leave the caller's path.  A caller
        killed meanwhile leaves a dying QEMU and a record, which its keeper
        and ``minibox gc`` end as for any VM.
        """
        with self._close_lock:
            if self._closed:
                return False
            self._closed = True  # close() from now on finds the release under way
        qemu = self._qemu
        if qemu is not None and qemu.poll() is None:
            qemu.kill()  # our own child, by pid
        return True

    # ---- verbs while it runs ----------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._ctl is None:
            raise MiniboxError("the VM is not running")
        with self._send_lock:
            try:
                self._ctl.sendall(data)
            except OSError as e:
                raise SetupError("control", e.errno, "the guest agent's port") from e

    def _command_ended(self) -> bool:
        with self._cond:
            return self._ended()

    def exec(self, argv: Sequence[str], timeout: float | None = None, *, stdin: bytes | None = None,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             user: tuple[int, int] | None = None, tty: bool = False) -> Result:
        """Run ``argv`` in the running guest through the agent; see :meth:`Sandbox.exec`.

        The agent applies the Spec's hardening to it as to the command.
        ``stdin`` travels in the request frame, so it is bounded by the
        frame size (:data:`agent.EXEC_STDIN_MAX`).
        """
        self._check("exec")
        request = self._exec_spec(argv, env, cwd, user)
        if stdin is not None and len(stdin) > _agent.EXEC_STDIN_MAX:
            raise SpecError("stdin", f"at most {_agent.EXEC_STDIN_MAX} bytes go to a command in a VM")
        ident = next(self._ids)
        ex = self._ch.state.execs[ident] = ExecState.capped(self._ch.output_limit)
        t0 = time.monotonic()
        env_ = command_env(request.env, self.spec.hostname, request.user[0])
        self._send(_agent.exec_frame(ident, request.argv, env=env_, cwd=request.cwd,
                                     user=request.user, tty=bool(tty), stdin=stdin))
        timed_out = False

        def finished() -> bool:
            return ex.exit is not None or ex.failure is not None or self._ended()

        with self._cond:
            if not self._cond.wait_for(finished, timeout):
                timed_out = True
        if timed_out:
            self._send(_agent.kill_frame(ident, _signal.SIGKILL))
            with self._cond:
                self._cond.wait_for(finished, POWEROFF_TIMEOUT)
        with self._cond:
            del self._ch.state.execs[ident]
            broken = self._channel_error()
        if broken is not None:
            raise broken
        if ex.failure is not None:
            raise self._failure_error(ex.failure)
        if ex.exit is None and not timed_out:
            if self._ch.state.main_exit is not None:  # the command ended, and the guest with it
                raise StateError("exec", EXITED, "its command has exited (wait() returns its Result)")
            raise SetupError("guest", None, "the VM ended while the exec'd command ran")
        code, sig = ex.exit if ex.exit is not None else (None, None)
        return make_result(code, sig, started=t0, timed_out=timed_out, oom=ex.oom, stdout=ex.out.value(),
                           stderr=ex.err.value(), usage=ex.usage)

    def kill(self, sig: int = _signal.SIGKILL) -> None:
        """Send ``sig`` to the command's process group in the guest (through the agent)."""
        self._check("kill")
        with self._cond:
            alive = self._ch.state.running and not self._ended() and not self._closed
        if alive:
            self._send(_agent.kill_frame(0, int(sig)))

    def pause(self) -> None:
        """Stop the vCPUs (QMP ``stop``): the whole guest freezes, clocks included."""
        self._check("pause")
        assert self._monitor is not None
        self._monitor.execute("stop")
        self._set_state(PAUSED)

    def resume(self) -> None:
        """Restart the vCPUs (QMP ``cont``)."""
        self._check("resume")
        assert self._monitor is not None
        self._monitor.execute("cont")
        self._set_state(RUNNING)

    @property
    def paused(self) -> bool:
        """Whether QEMU reported the guest stopped (QMP STOP/RESUME events)."""
        if self._monitor is not None:
            status = self._monitor.execute("query-status")
            return str(status.get("status")) == "paused"
        return False

    def stats(self) -> Stats:
        """QEMU's resident memory (peak included) and CPU time, from /proc.

        That is what the VM costs the host; the guest's own view of memory
        is :meth:`guest_memory_bytes`.  ``pids`` is None: the guest's
        processes are not the host's to count.
        """
        self._check("stats")
        if self._qemu is None or self._qemu.returncode is not None:
            raise StateError("stats", EXITED, "QEMU has exited; wait() for the Result")
        rss, hwm, cpu = _proc_usage(self._qemu.pid)
        return Stats(memory_bytes=rss, memory_peak_bytes=hwm, cpu_seconds=cpu, pids=None)

    def guest_memory_bytes(self) -> int:
        """The guest's RAM as QEMU configured it (QMP ``query-memory-size-summary``)."""
        if self._monitor is None:
            raise MiniboxError("the VM is not running")
        summary = self._monitor.execute("query-memory-size-summary")
        return int(summary["base-memory"]) + int(summary.get("plugged-memory", 0))

    # ---- snapshots (vm/vm_snapshot.py) ------------------------------------------

    def snapshot(self, path: str | os.PathLike[str]) -> None:
        """Save the running guest to the file ``path``: pause, save device state and RAM, resume.

        The file holds a manifest (QEMU version, machine arguments, kernel,
        initramfs and agent hashes, memory, vCPUs), the initramfs and QEMU's
        migration stream; :meth:`restore` checks the manifest before QEMU
        sees anything.  A paused VM stays paused.  Refused with
        :class:`~minibox.vm.vm_snapshot.SnapshotError` for a VM with
        virtio-fs shares (the default cold boot's rootfs, bind mounts: QEMU
        7.2 cannot migrate vhost-user-fs; use ``rootfs_sharing="initramfs"``
        or a Spec that starts from a template) or on the bridge.
        """
        from .vm_snapshot import save

        save(self, Path(path))

    @classmethod
    def restore(cls, path: str | os.PathLike[str], *, stdout: int | None = None, stderr: int | None = None,
                timeout: float | None = None) -> VirtualMachine:
        """A running VM restored from a :meth:`snapshot` file, supervised like a cold-booted one.

        Its command goes on from where the snapshot caught it, with the
        host's wall clock and freshly reseeded entropy; ``timeout`` (seconds
        from now) bounds it.  Restoring one file twice gives two independent
        VMs.  :class:`~minibox.vm.vm_snapshot.SnapshotMismatchError` names
        what does not match this host (nothing is started), and a truncated
        or damaged file is refused the same way.
        """
        from .vm_snapshot import restore

        return restore(Path(path), stdout=stdout, stderr=stderr, timeout=timeout)

    # ---- cleanup --------------------------------------------------------------

    def close(self) -> None:
        """Kill QEMU and virtiofsd if they still run and release every host resource."""
        self._free()
        self._set_state(CLOSED)

    def _free(self) -> None:
        """Everything close() does but the state change; wait() ends with it too."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._release()

    def _release(self) -> None:
        """End QEMU (if it still runs) and virtiofsd, release every host resource (_free claimed them)."""
        self._stop_qemu()
        if self._monitor is not None:
            self._monitor.close()
        self._ch.join()  # QEMU is gone: the reader sees EOF on every channel
        # Then our ends of the sockets: a virtiofsd whose QEMU never started
        # is still connected to us, and exits as soon as we hang up.
        for s in self._socks:
            s.close()
        self._socks.clear()
        for helper in self._helpers:  # virtiofsd exits when its peer hangs up; make sure
            try:
                helper.wait(2)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None
        # The tap went with QEMU; the port rules and the lease are given back here.
        _network.close_fd(self._tap_fd)
        self._tap_fd = None
        net_error: BaseException | None = None
        if self._net is not None:
            try:
                self._net.release()
            except (OSError, MiniboxError) as e:
                net_error = e  # the state file stays, so `minibox gc` can finish the job
        if self._record is not None:
            if net_error is None:
                self._record.remove()
            else:
                self._record.abandon()  # `minibox gc` finishes the job
            self._record = None
        with self._cond:
            self._cond.notify_all()
        if net_error is not None:
            raise net_error

    def __del__(self) -> None:
        if getattr(self, "_qemu", None) is not None and not getattr(self, "_closed", True):
            print(f"minibox: VirtualMachine {self._id} was not closed; killing QEMU", file=sys.stderr)
            self.close()
