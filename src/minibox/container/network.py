"""A container's network on the minibox bridge: a veth pair into its network namespace.

Kernel features: network namespaces (network_namespaces(7)) give the
container its own interfaces, addresses, routes and ports; a veth(4) pair
is the cable from that namespace to the host, whose host end is a port of
the minibox bridge.  Routes and addresses are set over rtnetlink(7) with
pyroute2 (the concepts of ip-route(8) and ip-address(8)).  The lease, the
ports, the /etc files and the release are the bridge port's lifecycle that a
VM shares (:mod:`minibox.network.attachment`); what is a container's own is
the veth, and how the /etc files reach the rootfs.

The life of a bridged container, as :class:`minibox.container.Container`
drives it:

1. :meth:`NetworkAttachment.prepare` -- before the child exists: acquire
   a :class:`~minibox.network.attachment.BridgePort` (lease, ports) and write
   the container's /etc/hosts, /etc/resolv.conf and /etc/hostname under
   ``runtime_dir()/network/sandboxes/<id>/``.
2. :meth:`NetworkAttachment.mount_ops` -- steps for the child's mount plan
   that bind-mount those files (read-only) over the rootfs's own; the
   rootfs is never written.  A rootfs without such a file keeps not having it.
3. :meth:`NetworkAttachment.attach` -- while the child waits before exec:
   create the veth pair with its inner end born inside the child's network
   namespace (IFLA_NET_NS_PID) as ``eth0``, address it, bring it up, and
   route everything via the bridge's gateway address.
4. :meth:`NetworkAttachment.release` -- on every exit path: port rules,
   veth, files, lease (and with the last lease, the bridge).  Idempotent.

:func:`release_stale` does step 4 from a state-file record, for
``minibox gc`` after a caller was killed.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..errors import SpecError
from ..images.paths import open_in_root, opened_root
from ..network.attachment import ETC_FILES, BridgePort, release_record
from ..spec import Spec
from .rootfs import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MountOp, bind


def veth_name(container_id: str) -> str:
    """The host end of a container's veth pair: ``mbv`` + 12 id characters (IFNAMSIZ is 16)."""
    return f"mbv{container_id[:12]}"


class NetworkAttachment:
    """One container's place on the minibox bridge.  Build it with :meth:`prepare`."""

    def __init__(self, container_id: str, port: BridgePort) -> None:
        self.container_id = container_id
        self.port = port
        self.link = port.link

    # -- 1. before the child exists ---------------------------------------------

    @classmethod
    def prepare(cls, container_id: str, spec: Spec) -> NetworkAttachment:
        """Lease an address, publish the ports, write the /etc files; SpecError on a bad --ip or -p."""
        if os.geteuid() != 0:
            raise SpecError("network", "'bridge' needs root (a veth in the host's namespace); use 'none' or 'host'")
        if "net" not in spec.effective_namespaces:
            raise SpecError("network", "'bridge' needs a network namespace; keep 'net' in namespaces")
        port = BridgePort.acquire(container_id, "container", veth_name(container_id), spec)
        try:
            port.write_etc_files()
        except BaseException:
            port.release()
            raise
        return cls(container_id, port)

    @property
    def address(self) -> str:
        """The container's IPv4 address on the bridge."""
        return self.port.address

    @property
    def gateway(self) -> str:
        """The bridge's own address: the container's default route, and where published ports listen."""
        return self.port.gateway

    # -- 2. the child's mount plan ----------------------------------------------

    def mount_ops(self, rootfs: str) -> list[MountOp]:
        """Read-only bind mounts of the generated /etc files over the rootfs's own ones.

        Only files that exist in ``rootfs`` (looked up inside it, through an
        fd) get one; the child resolves the paths inside its root again.
        """
        ops: list[MountOp] = []
        with opened_root(rootfs) as root:
            for filename in ETC_FILES:
                try:
                    fd = open_in_root(root, f"/etc/{filename}")
                except OSError:
                    continue  # creating it would modify the rootfs
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        continue
                finally:
                    os.close(fd)
                ops.append(bind(f"/etc/{filename}", str(self.port.files_dir / filename),
                                MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
        return ops

    # -- 3. while the child waits -----------------------------------------------

    def attach(self, pid: int) -> None:
        """Plug the container whose init is ``pid`` into the bridge (veth, eth0, address, route)."""
        from ..network import bridge

        lease = self.port.lease
        with bridge.opened() as ipr:
            bridge.add_veth(ipr, self.link, self.port.config.bridge, pid, peer_name="eth0", peer_mac=self.port.mac)
        try:
            netns = f"/proc/{pid}/ns/net"
            bridge.configure_inside(netns, "eth0", lease.address, lease.gateway)
            allow_unprivileged_ping(netns)
            self.port.running(pid)
        except BaseException:
            with bridge.opened() as ipr:
                bridge.delete_link(ipr, self.link)
            raise

    # -- 4. on every exit path --------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What :func:`release_stale` needs, for the container's state file."""
        return self.port.record()

    def release(self) -> None:
        """Remove port rules, the veth, the /etc files and the lease.  Idempotent."""
        self.port.release()


#: Every group may open ICMP echo sockets: the sysctl's widest range (icmp(7), "ping_group_range").
PING_GROUP_RANGE = "0 2147483647"


def allow_unprivileged_ping(netns_path: str) -> None:
    """Set ``net.ipv4.ping_group_range`` in the container's network namespace, never the host's.

    The default capabilities leave out ``CAP_NET_RAW`` (raw sockets forge any
    packet), so ``ping`` uses an unprivileged ICMP echo socket,
    ``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``; the kernel allows one only
    to groups in this range, and a new namespace starts with none (``1 0``).
    Files under /proc/sys/net belong to the network namespace of the thread
    that opens them, so a helper thread in the container's namespace writes it
    (:func:`minibox.network.bridge.run_in_netns`).  This is what podman does.
    """
    from ..errors import SetupError
    from ..network import bridge

    def write() -> None:
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
            f.write(PING_GROUP_RANGE)

    try:
        bridge.run_in_netns(netns_path, write)
    except OSError as e:
        raise SetupError("network", e.errno, detail="net.ipv4.ping_group_range") from e


def release_stale(record: dict[str, Any]) -> None:
    """Clean up after a dead container from its state-file record (``minibox gc``)."""
    release_record(record)
