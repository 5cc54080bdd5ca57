"""A VM's network on the minibox bridge: a tap device whose other end is the guest's NIC.

Kernel features: a tap device (the kernel's Documentation/networking/
tuntap.rst) is a network interface whose "wire" is a file descriptor: every
Ethernet frame the bridge sends to it can be read from the fd, every frame
written to the fd comes out of the interface.  QEMU's ``-netdev tap,fd=N``
(QEMU docs: "Invocation", ``-netdev tap``) reads and writes that fd on
behalf of the guest's virtio-net device (``virtio-net-device`` on microvm's
virtio-mmio bus, ``virtio-net-pci`` on q35/pc), so the guest's ``eth0`` is
one port of the minibox bridge, next to the containers' veths.

This is the VM counterpart of :mod:`minibox.container.network`; the lease,
the ports and the release are the bridge port's lifecycle both share
(:mod:`minibox.network.attachment`).  The difference is the point: a container's eth0 is a veth end *in a network
namespace of the host kernel* that minibox configures from the host over
rtnetlink; a VM's eth0 belongs to *another kernel*, which the host cannot
configure.  The host only hands the guest agent its address and gateway
(config record ``N``, see :mod:`minibox.vm.agent`) and the agent sets them
from inside with ioctl(2)s (netdevice(7), SIOCSIFADDR ... SIOCADDRT).

The life of a bridged VM, as :class:`minibox.vm.VirtualMachine` drives it:

1. :meth:`VmNetwork.prepare` -- before QEMU exists: acquire a
   :class:`~minibox.network.attachment.BridgePort` (lease an address,
   creating the bridge with the first lease; publish the Spec's ports).
2. :meth:`VmNetwork.open_tap` -- in the thread that starts QEMU: create a
   *non-persistent* tap on the bridge and return its fd, which QEMU inherits
   (``pass_fds``).  The tap vanishes when the last copy of the fd closes,
   i.e. when QEMU exits, on every path, even SIGKILL.
3. :meth:`VmNetwork.guest_config` and :meth:`VmNetwork.etc_files` -- what
   goes into the initramfs: the address for the agent, and the /etc/hosts,
   /etc/resolv.conf and /etc/hostname the agent bind-mounts (read-only)
   over the rootfs's own *inside the guest*; the shared rootfs directory on
   the host is never written.
4. :meth:`VmNetwork.started` -- QEMU runs: the lease records QEMU's pid.
5. :meth:`VmNetwork.release` -- every exit path, after QEMU is gone: port
   rules, the tap (if it somehow survived), the lease (and with the last
   lease, the bridge).  Idempotent.

:func:`release_stale` does step 5 from the VM state file's record, for
``minibox gc`` after a caller was killed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..network.attachment import BridgePort, port_mac, release_record
from ..spec import Spec

#: The guest's NIC name: the only NIC, named by the guest kernel (no udev in the initramfs).
GUEST_IFNAME = "eth0"
#: Kernel modules the guest needs for virtio-net (their dependencies, failover and
#: net_failover on Debian's cloud kernel, come from each module's ``depends=``).
GUEST_MODULES = ("virtio_net",)


def tap_name(vm_id: str) -> str:
    """The host's tap device of a VM: ``mbtap`` + 10 id characters (IFNAMSIZ is 16)."""
    return f"mbtap{vm_id[:10]}"


def guest_mac(vm_id: str) -> str:
    """The guest NIC's MAC: the port's, which its guard rules let through (see attachment.port_mac)."""
    return port_mac(vm_id)


@dataclass(frozen=True)
class GuestNetwork:
    """What the guest agent needs to configure its NIC: config record ``N``."""

    ifname: str
    address: str    # "10.88.0.7"
    prefixlen: int  # 24
    gateway: str    # "10.88.0.1"


class VmNetwork:
    """One VM's place on the minibox bridge.  Build it with :meth:`prepare`."""

    def __init__(self, vm_id: str, port: BridgePort) -> None:
        self.vm_id = vm_id
        self.port = port
        self.link = port.link
        self.mac = port.mac

    # -- 1. before QEMU exists ----------------------------------------------------

    @classmethod
    def prepare(cls, vm_id: str, spec: Spec) -> VmNetwork:
        """Lease an address and publish the ports; SpecError on a bad --ip or -p.  Leaves nothing on failure."""
        if os.geteuid() != 0:
            raise SpecError("network", "'bridge' needs root (a tap device on the host's bridge); use 'none'")
        return cls(vm_id, BridgePort.acquire(vm_id, "vm", tap_name(vm_id), spec))

    @property
    def address(self) -> str:
        """The guest's IPv4 address on the bridge."""
        return self.port.address

    @property
    def gateway(self) -> str:
        """The bridge's own address: the guest's default route, and where published ports listen."""
        return self.port.gateway

    # -- 2. in the thread that starts QEMU ------------------------------------------

    def open_tap(self) -> int:
        """Create the tap on the bridge (up) and return its fd for ``-netdev tap,fd=N``.

        Call it from the thread that starts QEMU: the tap is created in the
        calling thread's network namespace, and the pyroute2 socket used to
        enslave it is made (and used) in this same thread.  The fd is
        close-on-exec; QEMU gets it through ``pass_fds``.  The caller closes
        its own copy once QEMU holds one, so the tap lives exactly as long
        as QEMU.
        """
        from ..network import bridge

        with bridge.opened() as ipr:
            return bridge.open_tap(ipr, self.link, self.port.config.bridge)

    # -- 3. the initramfs ---------------------------------------------------------

    def guest_config(self) -> GuestNetwork:
        return GuestNetwork(GUEST_IFNAME, self.address, self.port.prefixlen, self.gateway)

    def etc_files(self) -> dict[str, str]:
        """name -> contents of the guest's /etc files; the same text a bridged container gets."""
        return self.port.etc_files()

    # -- 4. QEMU runs ---------------------------------------------------------------

    def started(self, qemu_pid: int) -> None:
        """Record QEMU in the lease: while it lives, the lease is not reclaimed."""
        self.port.running(qemu_pid)

    # -- 5. on every exit path --------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What :func:`release_stale` needs, for the VM's state file (the shape a container's has)."""
        return self.port.record()

    def release(self) -> None:
        """Remove port rules, the tap (normally gone with QEMU already) and the lease.  Idempotent."""
        self.port.release()


def release_stale(record: dict[str, Any]) -> None:
    """Clean up after a dead VM from its state-file record (``minibox gc``); QEMU must be gone first."""
    release_record(record)


def close_fd(fd: int | None) -> None:
    """Close a tap fd we still hold (a failure before QEMU took it); the tap goes with it."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
