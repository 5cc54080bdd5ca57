"""The hypervisor path: the same Spec, run under its own guest kernel in QEMU.

``VirtualMachine(spec)`` is the :class:`~minibox.sandbox.Sandbox` of this
path; :func:`run_vm` is ``minibox.run(spec, isolation="vm")``;
:func:`ensure_kernel` is ``minibox kernel``.  One concept per module:

* machine.py     -- the QEMU command line (microvm, inherited fds)
* qmp.py         -- QMP over qemu.qmp: pause, resume, quit, events
* kernel.py      -- finding/provisioning the guest kernel, PVH vmlinux
* initramfs.py   -- the cpio newc archive the kernel boots into
* accel.py       -- KVM or TCG, decided by a probe boot
* agent.py       -- the guest agent: build, config, framed protocol
* plan.py        -- Spec -> shares, guest mounts, modules, initramfs, QEMU config (pure)
* virtiofs.py    -- virtiofsd: one per shared directory, read-only binds
* channels.py    -- the I/O pump and the agent's frames turned into state
* network.py     -- network="bridge": a lease, a tap on the bridge, published ports
* virtual_machine.py -- VirtualMachine itself: plan, then execute
"""

from __future__ import annotations

import sys
from typing import Any

from ..sandbox import Result
from ..spec import Spec
from .kernel import KernelInfo, ensure_kernel
from .virtual_machine import VirtualMachine

_announced = False


def run_vm(spec: Spec, *, stdin: bytes | None = None, stdout: int | None = None,
           stderr: int | None = None, announce: bool = False, **kw: Any) -> Result:
    """Boot a VM for ``spec``, run its command to the end, return the Result.

    ``announce=True`` (the CLI) says once per process, on stderr, which
    accelerator is used and why.
    """
    global _announced
    with VirtualMachine(spec, stdin=stdin, stdout=stdout, stderr=stderr, **kw) as vm:
        assert isinstance(vm, VirtualMachine)
        if announce and not _announced:
            _announced = True
            print(f"minibox: {vm.accelerator_reason}", file=sys.stderr)
        return vm.wait()


__all__ = ["VirtualMachine", "run_vm", "ensure_kernel", "KernelInfo"]
