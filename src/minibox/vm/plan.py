"""The VM plan: a Spec turned into what to share, what to mount and what to boot.

As runc splits its ``configs`` from ``specconv`` and Firecracker its
``vmm_config`` from the builder, the VM path decides everything it can
*before* it creates anything, as plain data:

* the effective Spec (the shared default rootfs is read-only, with a
  private /tmp, as for containers);
* the virtio-fs shares: the rootfs and each bind mount's directory, each
  one served by its own virtiofsd (virtiofs.py), read-only at the host when
  the guest must not write it;
* the guest's mounts, as the agent's config records them (agent.py);
* the kernel modules the agent loads;
* the initramfs members (initramfs.py) and QEMU's configuration (machine.py).

Nothing here needs root, starts a process or writes outside memory, so the
whole plan can be checked in a unit test; ``VirtualMachine._boot`` executes it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..spec import DEFAULT_TMPFS_SIZE, Mount, Spec
from . import agent as _agent
from . import initramfs, machine
from .virtiofs import Share

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .network import VmNetwork

#: Kernel modules the agent loads, in addition to their dependencies.
GUEST_MODULES = ("virtio_mmio", "virtio_console", "virtiofs")
#: Without virtio-fs (rootfs packed into the initramfs, no bind mounts).
GUEST_MODULES_NO_FS = ("virtio_mmio", "virtio_console")
#: How the rootfs reaches the guest (docs/vm.md, "Sharing the rootfs").
SHARING_MODES = ("virtiofs", "initramfs")


@dataclass(frozen=True)
class VmPlan:
    """Everything decided about one VM before anything exists."""

    spec: Spec                               # the effective Spec
    rootfs: str                              # host directory of the guest's root
    sharing: str                             # "virtiofs" or "initramfs"
    shares: tuple[Share, ...]                # one virtiofsd each
    guest_mounts: tuple[_agent.GuestMount, ...]
    modules: tuple[str, ...]                 # kernel modules to load (deps added by kernel.py)
    make_mount_points: bool                  # a read-only shared rootfs: the host makes them

    @property
    def needs_virtiofs(self) -> bool:
        return bool(self.shares)

    @property
    def packed_root(self) -> str | None:
        """The directory to copy into the initramfs as /newroot, if any."""
        return self.rootfs if self.sharing == "initramfs" else None


def effective_spec(spec: Spec) -> Spec:
    """``spec`` as the VM runs it.

    minibox's own rootfs is shared by every sandbox that does not name one:
    read-only (enforced on virtiofsd's side) with a private /tmp, as for
    containers.
    """
    if spec.rootfs is not None:
        return spec
    mounts = tuple(spec.mounts)
    if not any(m.target == "/tmp" for m in mounts):
        mounts += (Mount.tmpfs("/tmp"),)
    return dataclasses.replace(spec, readonly_rootfs=True, mounts=mounts)


def needs_virtiofs(spec: Spec, sharing: str) -> bool:
    """Whether any directory is shared with virtiofsd (which needs root here)."""
    return sharing == "virtiofs" or any(m.kind == "bind" for m in spec.mounts)


def shares_and_mounts(spec: Spec, rootfs: str,
                      sharing: str) -> tuple[list[Share], list[_agent.GuestMount]]:
    """The virtio-fs shares and the guest mounts for ``spec``'s rootfs and mounts.

    A bind of a directory is shared as it is; a bind of a file shares its
    parent directory and the agent binds the one file out of it.
    """
    shares = [Share("rootfs", rootfs, spec.readonly_rootfs)] if sharing == "virtiofs" else []
    guest_mounts: list[_agent.GuestMount] = []
    for i, m in enumerate(spec.mounts):
        if m.kind == "tmpfs":
            # the same default bound as a container's (guest memory here, but the same Spec meaning)
            guest_mounts.append(_agent.GuestMount("tmpfs", "", "", m.target, m.readonly,
                                                  str(DEFAULT_TMPFS_SIZE if m.size is None else m.size)))
            continue
        assert m.source is not None
        tag = f"mount{i}"
        if os.path.isdir(m.source):
            shares.append(Share(tag, m.source, m.readonly))
            guest_mounts.append(_agent.GuestMount("dir", tag, "", m.target, m.readonly, ""))
        else:
            parent, name = os.path.split(m.source)
            shares.append(Share(tag, parent, m.readonly))
            guest_mounts.append(_agent.GuestMount("file", tag, name, m.target, m.readonly, ""))
    return shares, guest_mounts


def plan_vm(spec: Spec, sharing: str, default_rootfs: Callable[[], str],
            guest_network_modules: Sequence[str] = ()) -> VmPlan:
    """The plan for ``spec``; ``default_rootfs`` names minibox's image when the Spec has none."""
    spec = effective_spec(spec)
    rootfs = spec.rootfs or default_rootfs()
    virtiofs = needs_virtiofs(spec, sharing)
    modules = (GUEST_MODULES if virtiofs else GUEST_MODULES_NO_FS) + tuple(guest_network_modules)
    shares, guest_mounts = shares_and_mounts(spec, rootfs, sharing)
    return VmPlan(spec=spec, rootfs=rootfs, sharing=sharing, shares=tuple(shares),
                  guest_mounts=tuple(guest_mounts), modules=modules,
                  make_mount_points=spec.readonly_rootfs and sharing == "virtiofs")


def guest_initramfs(spec: Spec, agent_bin: Path, modules: Sequence[tuple[str, bytes]],
                    mounts: Sequence[_agent.GuestMount], stdin: bytes | None,
                    packed_root: str | None = None, network: VmNetwork | None = None,
                    config: bytes | None = None) -> bytes:
    """The guest's whole first root: the agent as /init, its modules, the Spec, stdin.

    With ``packed_root`` that directory is copied in as /newroot (the
    "initramfs" rootfs sharing); otherwise the agent mounts the virtiofs tag
    "rootfs" there.  With ``network`` (bridge mode) the agent is told the
    NIC's address, and the generated /etc files go to /minibox/etc for it to
    bind-mount over the rootfs's own.  ``config`` replaces the agent's config
    written from ``spec`` (the OCI runtime boots its VMs waiting for the run).
    """
    entries = [initramfs.directory(d) for d in ("dev", "proc", "sys", "minibox", "minibox/modules")]
    entries += initramfs.tree(packed_root, "newroot") if packed_root else [initramfs.directory("newroot")]
    etc_binds: list[tuple[str, str]] = []
    if network is not None:
        entries.append(initramfs.directory("minibox/etc"))
        for name, text in network.etc_files().items():
            entries.append(initramfs.file(f"minibox/etc/{name}", text.encode(), 0o644))
            etc_binds.append((f"/minibox/etc/{name}", f"/etc/{name}"))
    if config is None:
        config = _agent.encode_config(spec, mounts, root_tag="" if packed_root else "rootfs",
                                      has_stdin=stdin is not None,
                                      network=network.guest_config() if network is not None else None,
                                      files=etc_binds)
    entries += [
        initramfs.chardev("dev/console", 5, 1),
        initramfs.file("init", agent_bin.read_bytes(), 0o755),
        initramfs.file("minibox/config", config, 0o600),
    ]
    entries += [initramfs.file(f"minibox/modules/{i:02d}-{name}.ko", data) for i, (name, data) in enumerate(modules)]
    if stdin is not None:
        entries.append(initramfs.file("minibox/stdin", stdin, 0o600))
    return initramfs.build(entries)


def probe_initramfs(agent_bin: Path) -> bytes:
    """The initramfs of the KVM probe boot: the agent in probe mode, nothing else."""
    probe_spec = Spec(argv=["/probe"])
    return initramfs.build([
        initramfs.directory("dev"), initramfs.directory("proc"), initramfs.directory("sys"),
        initramfs.directory("minibox"), initramfs.chardev("dev/console", 5, 1),
        initramfs.file("init", agent_bin.read_bytes(), 0o755),
        initramfs.file("minibox/config", _agent.encode_config(probe_spec, [], probe=True)),
    ])


@dataclass(frozen=True)
class ChannelFds:
    """The fds QEMU inherits for its channels (machine.py): QMP, console, the agent's ports."""

    qmp: int
    console: int
    ports: tuple[int, int, int]  # minibox.control, minibox.stdout, minibox.stderr


def machine_config(plan: VmPlan, *, qemu: str, kernel: str, initrd: str, accel: str,
                   machine_type: str, memory: int, channels: ChannelFds,
                   virtiofs_fds: Sequence[tuple[str, int]]) -> machine.MachineConfig:
    """QEMU's configuration for ``plan`` once its files and fds exist (argv: machine.qemu_argv)."""
    return machine.MachineConfig(
        qemu=qemu, kernel=kernel, initrd=initrd,
        cmdline=machine.kernel_cmdline(), memory=memory, cpus=machine.vcpus(plan.spec),
        accel=accel, machine=machine_type,
        qmp_fd=channels.qmp, console_fd=channels.console,
        port_fds=list(zip(machine.PORTS, channels.ports, strict=True)),
        virtiofs_fds=list(virtiofs_fds),
    )
