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
* snapshot.py    -- saving/restoring a paused guest (QEMU migration to a file)
* templates.py   -- VM templates: key, manifest, build once, check on restore
* clone.py       -- TemplateClone (a VM restored from a template) and TemplateBoot
* pool.py        -- Pool: restored clones kept warm, one per run
* vm_snapshot.py -- a running VM saved to one file and restored (vm.snapshot, VirtualMachine.restore)
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
           stderr: int | None = None, announce: bool = False, template: bool = True, **kw: Any) -> Result:
    """Boot a VM for ``spec``, run its command to the end, return the Result.

    With ``template=True`` (the default) a Spec that allows it starts from a
    VM template (vm/templates.py: restored, not booted; built on first use),
    else the VM boots cold.  ``announce=True`` (the CLI) says once per
    process, on stderr, which accelerator is used and why.
    """
    global _announced
    from .clone import TemplateClone, template_clone_or_none
    from .templates import TemplateError

    vm: VirtualMachine = VirtualMachine(spec, stdin=stdin, stdout=stdout, stderr=stderr, **kw)
    if template and template_clone_or_none(spec, stdin, **kw) is None:
        clone = TemplateClone(spec, stdin=stdin, stdout=stdout, stderr=stderr)
        try:
            clone.restore_template()
            vm = clone
        except TemplateError as e:  # no template can be made here (e.g. a read-only state dir): boot cold
            import logging

            logging.getLogger("minibox").info("no VM template, booting cold: %s", e)
    with vm:
        assert isinstance(vm, VirtualMachine)
        if announce and not _announced:
            _announced = True
            print(f"minibox: {vm.accelerator_reason}", file=sys.stderr)
        return vm.wait()


def __getattr__(name: str) -> Any:
    # PEP 562: the template path loads on first use
    if name == "Pool":
        from .pool import Pool

        return Pool
    if name == "TemplateClone":
        from .clone import TemplateClone

        return TemplateClone
    if name in ("SnapshotError", "SnapshotMismatchError"):
        from . import vm_snapshot

        return getattr(vm_snapshot, name)
    raise AttributeError(f"module 'minibox.vm' has no attribute {name!r}")


__all__ = ["VirtualMachine", "run_vm", "ensure_kernel", "KernelInfo", "Pool", "TemplateClone", "SnapshotError",
           "SnapshotMismatchError"]
