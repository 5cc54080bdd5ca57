"""A VirtualMachine restored from a template, and the one boot a template is made of.

Both are VirtualMachines that start QEMU through the same supervised path
as a cold boot (``VirtualMachine._start_qemu``: the record first, QEMU held
until the record and the keeper know it), so a caller killed at any instant
of a restore leaves nothing ``minibox gc`` cannot find.  They differ from a
cold boot only in QEMU's arguments (guest RAM in the template's file,
``-incoming defer``) and in what they say to the agent:

* :class:`TemplateBoot` boots the guest with the agent in template mode,
  waits for its hello (the agent then waits for a run config), and saves
  it (snapshot.save) into the template's files;
* :class:`TemplateClone` restores a template (snapshot.load), resumes it,
  and sends the agent the run: stdin, then the Spec with the host's clock
  and fresh random bytes (agent.encode_run_config).  A clone inherits the
  template's RAM, so without those it would share the template's wall
  clock and its CRNG state with every other clone.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import MiniboxError, SetupError, SpecError
from ..network.attachment import etc_files
from ..owner import StartSteps
from ..spec import Limits, Spec
from . import accel as _accel
from . import agent as _agent
from . import machine, snapshot
from . import network as _network
from . import plan as _plan
from . import templates as _templates
from .channels import ExecState
from .kernel import ensure_kernel, modules_for
from .virtual_machine import VirtualMachine, _default_rootfs, find_qemu, kvm_probe, qemu_version

#: After the hello, the template's guest is given this long to settle into
#: its wait (the agent brings lo up, then polls) before it is saved.
SETTLE = 0.3
#: Random bytes credited to each clone's input pool (random(4): up to 512 bytes per RNDADDENTROPY here).
ENTROPY_BYTES = 64
#: stdin is sent to a clone in frames of this size.
STDIN_CHUNK = 256 << 10
#: A pooled clone's warm-up (a throwaway /bin/true under TCG) answers within this (seconds).
WARM_UP_TIMEOUT = 30.0


def resolve_parts(spec: Spec) -> tuple[_templates.Parts, _accel.Verdict]:
    """The host's parts for a template-eligible ``spec``, and the accelerator verdict."""
    qemu = find_qemu()
    kernel = ensure_kernel(spec.kernel)
    agent_bin = _agent.build_agent()
    version = qemu_version(qemu)
    verdict = _accel.choose(kernel, version, lambda: kvm_probe(qemu, kernel, agent_bin))
    bridged = spec.network == "bridge"
    modules = _plan.GUEST_MODULES_NO_FS + (_network.GUEST_MODULES if bridged else ())
    parts = _templates.Parts(
        qemu=qemu, qemu_version=version, kernel=kernel, agent=agent_bin,
        modules=tuple(modules_for(kernel, modules)), rootfs=_default_rootfs(),
        accel=verdict.accelerator, memory=machine.memory_bytes(spec), cpus=machine.vcpus(spec),
        network=bridged)
    return parts, verdict


class _FromFiles(VirtualMachine):
    """What a template boot and a clone share: QEMU started on the template's files, supervised."""

    def _launch(self, parts: _templates.Parts, initrd: Path, extra: list[str], steps: StartSteps) -> None:
        """Record, start QEMU on the template's files through the supervised path, connect QMP."""
        self._record = self._create_record(self.spec)
        steps.done("record")
        tap = self._open_tap(steps) if parts.network else None

        def config(fds: tuple[int, int, int, int, int]) -> machine.MachineConfig:
            cfg = parts.config(str(initrd), fds, tap)
            cfg.extra = extra
            return cfg

        self._agent_bin, self._initrd = parts.agent, initrd
        self._start_configured(config, [] if tap is None else [tap], steps)

    def _open_tap(self, steps: StartSteps) -> int:
        """The NIC's tap (in self._tap_fd, which _start_qemu closes once QEMU holds it)."""
        raise NotImplementedError

    def _start_configured(self, config: Callable[[tuple[int, int, int, int, int]], machine.MachineConfig],
                          extra_fds: list[int], steps: StartSteps) -> None:
        """Start QEMU (the record exists) as ``config(channel fds)`` says, ``extra_fds`` inherited too."""
        ours, theirs = self._channel_pairs()
        child_fds = [sock.fileno() for sock in theirs] + extra_fds
        cfg = config((theirs[0].fileno(), theirs[1].fileno(), theirs[2].fileno(), theirs[3].fileno(),
                      theirs[4].fileno()))
        self._cfg = cfg
        self._run_qemu(machine.qemu_argv(cfg), child_fds, ours, steps)


class TemplateBoot(_FromFiles):
    """The template's one cold boot: the agent in template mode, RAM in ``work/ram`` (shared mapping)."""

    def __init__(self, parts: _templates.Parts, work: Path) -> None:
        limits = Limits(memory=parts.memory, cpus=parts.cpus if parts.cpus > 1 else None)
        super().__init__(Spec(argv=["/minibox-template"], limits=limits), rootfs_sharing="initramfs")
        self._parts = parts
        self._work = work

    def _boot(self) -> None:
        extra = snapshot.ram_args(str(self._work / "ram"), self._parts.memory, share=True)
        self._launch(self._parts, self._work / "initrd", extra, StartSteps())
        self._wait_for_hello("template", "the template's guest never said hello")

    def _open_tap(self, steps: StartSteps) -> int:
        """A tap on no bridge, down: the template's NIC must exist (clones have one), but talks to nobody."""
        from ..network import bridge

        with bridge.opened() as ipr:
            self._tap_fd = bridge.open_tap(ipr, f"mbtpl{self._id[:10]}", None)
        steps.done("tap")
        return self._tap_fd

    def save(self) -> str:
        """Pause the waiting guest (started: ``with TemplateBoot(...)``) and save it; its kernel release."""
        time.sleep(SETTLE)
        assert self._monitor is not None
        fd = os.open(self._work / "state", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            snapshot.save(self._monitor, fd)
        finally:
            os.close(fd)
        return self._ch.state.release


class TemplateClone(_FromFiles):
    """``spec`` run by a guest restored from a template: same verbs and Result as a cold-booted VM.

    :meth:`restore_template` (called by :meth:`start`, or ahead of time by a Pool)
    brings a clone to the point where its agent waits; :meth:`start` then
    gives it the run.  :class:`SpecError` if ``spec`` cannot use a template
    (:func:`templates.ineligible` says why).
    """

    def __init__(self, spec: Spec, *, stdin: bytes | None = None, stdout: int | None = None,
                 stderr: int | None = None) -> None:
        why = _templates.ineligible(spec, stdin=stdin)
        if why is not None:
            raise SpecError("isolation", f"this Spec cannot start from a VM template: {why}; "
                                         "use VirtualMachine(spec) (a cold boot)")
        super().__init__(spec, stdin=stdin, stdout=stdout, stderr=stderr, rootfs_sharing="initramfs")
        self._restored = False
        self.restore_seconds = 0.0

    def restore_template(self) -> None:
        """Restore the template (built first if needed) and resume it; the agent waits for its run."""
        if self._restored:
            return
        self._restored = True
        t0 = time.monotonic()
        try:
            parts, verdict = resolve_parts(self.spec)
            self._accel = _accel.Verdict(verdict.accelerator, verdict.reason + "; started from a VM template")
            template = _templates.ensure(parts)
            if os.statvfs(template.ram).f_flag & os.ST_RDONLY:
                # QEMU 7.2 opens a file backend read-write even for a private mapping
                raise _templates.TemplateError(f"{template.ram} is on a read-only file system")
            extra = snapshot.ram_args(str(template.ram), parts.memory, share=False) + snapshot.incoming_args()
            self._launch(parts, template.initrd, extra, StartSteps())
            with self._cond:
                self._ch.state.release = template.kernel_release
            assert self._monitor is not None
            fd = os.open(template.state, os.O_RDONLY | os.O_CLOEXEC)
            try:
                snapshot.load(self._monitor, fd)
            finally:
                os.close(fd)
            self._monitor.execute("cont")
        except BaseException:
            self.close()
            raise
        self.restore_seconds = time.monotonic() - t0

    def warm_up(self) -> bool:
        """Have the restored, waiting agent go once through the run's paths ('u'); whether it did.

        A pool does this in its background thread: the run's clock setting,
        reseed, mounts, fork and exec are then already translated by QEMU
        (its TCG cache starts empty after a restore) when the run comes.  The
        agent forks a throwaway ``/bin/true`` of the image with the Spec's
        policy (capabilities, seccomp, rlimits) and user, and reaps it;
        nothing of it remains that the run can see.  False (the clone still usable,
        only not warmed) if the agent refused or the image has no
        ``/bin/true``; an error if the guest broke or did not answer.
        """
        if not self.restored or self._started:
            raise MiniboxError("only a restored clone waiting for its run warms up")
        ident = next(self._ids)
        ex = self._ch.state.execs[ident] = ExecState.capped(self._ch.output_limit)
        self._send(_agent.warm_up_frame(ident, time.time_ns(), secrets.token_bytes(ENTROPY_BYTES),
                                        _plan.effective_spec(self.spec)))
        with self._cond:
            self._cond.wait_for(lambda: ex.exit is not None or ex.failure is not None or self._ended(),
                                WARM_UP_TIMEOUT)
            del self._ch.state.execs[ident]
            broken = self._channel_error()
        if broken is not None:
            raise broken
        if ex.exit is None and ex.failure is None:
            raise SetupError("warm-up", None, self._why_it_died("the clone's agent did not answer its warm-up"))
        return ex.exit == (0, None)  # /bin/true exited 0

    def _open_tap(self, steps: StartSteps) -> int:
        """This clone's place on the bridge, as a cold boot gets it: a lease, guard rules, a tap."""
        self._net = _network.VmNetwork.prepare(self._id, self.spec)
        self._record.update(network=self._net.record())
        steps.done("network")
        # Made here, in the thread that starts QEMU (see VmNetwork.open_tap).
        self._tap_fd = self._net.open_tap()
        steps.done("tap")
        return self._tap_fd

    def assign(self, spec: Spec, stdin: bytes | None = None) -> None:
        """Give a restored, not yet started clone another run of the same shape (a Pool's hand-out)."""
        check_same_shape(self.spec, spec, stdin)
        if self._started:
            raise MiniboxError("this clone was already started")
        self.spec = spec
        self._stdin = stdin
        self._ch.set_output_limit(spec.output_limit)  # the buffers were made for the pool's Spec

    def _boot(self) -> None:
        self.restore_template()
        self._t0 = time.monotonic()
        spec = _plan.effective_spec(self.spec)
        if self._stdin is not None:
            for i in range(0, len(self._stdin), STDIN_CHUNK):
                self._send(_agent.frame(_agent.STDIN, 0, self._stdin[i:i + STDIN_CHUNK]))
        net = self._net
        self._send(_agent.frame(_agent.RUN, 0, _agent.encode_run_config(
            spec, _templates.guest_mounts(spec), has_stdin=self._stdin is not None,
            clock_ns=time.time_ns(), entropy=secrets.token_bytes(ENTROPY_BYTES),
            network=None if net is None else net.guest_config(), mac="" if net is None else net.mac,
            etc_files=None if net is None else etc_files(spec.hostname, net.address, net.gateway))))
        self._wait_for_start(spec)

    @property
    def restored(self) -> bool:
        return self._restored and not self._closed


def check_same_shape(made_for: Spec, spec: Spec, stdin: bytes | None) -> None:
    """SpecError unless ``spec`` can run in a clone restored for ``made_for`` (same template)."""
    why = _templates.ineligible(spec, stdin=stdin)
    if why is not None:
        raise SpecError("spec", f"this Spec cannot start from a VM template: {why}")
    for what, mine, theirs in (("limits.memory", machine.memory_bytes(made_for), machine.memory_bytes(spec)),
                               ("limits.cpus", machine.vcpus(made_for), machine.vcpus(spec)),
                               ("kernel", made_for.kernel, spec.kernel),
                               # a bridged clone has its lease, guard rules and ports from the restore on
                               ("network", made_for.network, spec.network),
                               ("ports", list(made_for.ports), list(spec.ports)),
                               ("ip", made_for.ip, spec.ip),
                               ("host_access", made_for.host_access, spec.host_access)):
        if mine != theirs:
            raise SpecError(what, f"the pool's VMs were made with {what}={mine!r}, the Spec asks for {theirs!r}")


def template_clone_or_none(spec: Spec, stdin: bytes | None, **kw: object) -> str | None:
    """Why ``run_vm`` cannot use a template for these arguments, or None."""
    machine_type = kw.get("machine_type", "microvm")
    sharing = kw.get("rootfs_sharing")
    extra = set(kw) - {"machine_type", "rootfs_sharing"}
    if extra:
        return f"arguments {sorted(extra)}"
    if not isinstance(machine_type, str) or not (sharing is None or isinstance(sharing, str)):
        raise MiniboxError("machine_type and rootfs_sharing are strings")
    return _templates.ineligible(spec, machine_type, sharing, stdin)
