"""A container's network on the minibox bridge: a veth pair into its network namespace.

Kernel features: network namespaces (network_namespaces(7)) give the
container its own interfaces, addresses, routes and ports; a veth(4) pair
is the cable from that namespace to the host, whose host end is a port of
the minibox bridge.  Routes and addresses are set over rtnetlink(7) with
pyroute2 (the concepts of ip-route(8) and ip-address(8)); see
:mod:`minibox.network` for the bridge, leases and published ports.

The life of a bridged container, as :class:`minibox.container.Container`
drives it:

1. :meth:`NetworkAttachment.prepare` -- before the child exists: lease an
   address (creating the bridge with the first lease), write the
   container's /etc/hosts, /etc/resolv.conf and /etc/hostname under
   ``runtime_dir()/network/sandboxes/<id>/`` and publish its ports.
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
from typing import Any

from ..errors import SpecError
from ..images.paths import resolve_in_root
from ..network import NetworkConfig, config_from_env
from ..network.sandbox import ETC_FILES, etc_files, release_record
from ..spec import Spec
from .rootfs import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, OP_MOUNT, OP_REMOUNT, MountOp


def veth_name(container_id: str) -> str:
    """The host end of a container's veth pair: ``mbv`` + 12 id characters (IFNAMSIZ is 16)."""
    return f"mbv{container_id[:12]}"


class NetworkAttachment:
    """One container's place on the minibox bridge.  Build it with :meth:`prepare`."""

    def __init__(self, container_id: str, spec: Spec, config: NetworkConfig, lease: Any) -> None:
        from ..network import ipam

        self.container_id = container_id
        self.spec = spec
        self.config = config
        self.lease = lease
        self.link = veth_name(container_id)
        self.files_dir = ipam.owner_dir(container_id)
        self._released = False

    # -- 1. before the child exists ---------------------------------------------

    @classmethod
    def prepare(cls, container_id: str, spec: Spec) -> NetworkAttachment:
        """Lease an address, write the /etc files, publish the ports; SpecError on a bad --ip or -p."""
        if os.geteuid() != 0:
            raise SpecError("network", "'bridge' needs root (a veth in the host's namespace); use 'none' or 'host'")
        if "net" not in spec.effective_namespaces:
            raise SpecError("network", "'bridge' needs a network namespace; keep 'net' in namespaces")
        from ..network import ipam

        config = config_from_env()
        lease = ipam.acquire(container_id, config, requested=spec.ip, kind="container",
                             link=veth_name(container_id), nft_table=config.nft_table if spec.ports else None)
        self = cls(container_id, spec, config, lease)
        try:
            self._write_files()
            if spec.ports:
                from ..network import ports

                ports.publish(config.nft_table, container_id, lease.gateway, lease.address.ip, spec.ports)
        except BaseException:
            self.release()
            raise
        return self

    @property
    def address(self) -> str:
        """The container's IPv4 address on the bridge."""
        return str(self.lease.address.ip)

    @property
    def gateway(self) -> str:
        """The bridge's own address: the container's default route, and where published ports listen."""
        return str(self.lease.gateway)

    def _write_files(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        for filename, text in etc_files(self.spec.hostname, self.address, self.gateway).items():
            path = self.files_dir / filename
            path.write_text(text)
            path.chmod(0o644)

    # -- 2. the child's mount plan ----------------------------------------------

    def mount_ops(self, rootfs: str, mounted_at: str | None = None) -> list[MountOp]:
        """Read-only bind mounts of the generated /etc files over the rootfs's own ones.

        ``mounted_at`` is where the child will see ``rootfs`` when that differs
        (an overlay root, see rootfs.overlay_root).
        """
        ops: list[MountOp] = []
        for filename in ETC_FILES:
            try:
                found = resolve_in_root(rootfs, f"/etc/{filename}")
            except OSError:
                continue
            target = (mounted_at or rootfs) + found[len(rootfs):]
            if not os.path.isfile(found):
                continue  # creating it would modify the rootfs
            ops += [MountOp(OP_MOUNT, target, source=str(self.files_dir / filename), flags=MS_BIND),
                    MountOp(OP_REMOUNT, target, flags=MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)]
        return ops

    # -- 3. while the child waits -----------------------------------------------

    def attach(self, pid: int) -> None:
        """Plug the container whose init is ``pid`` into the bridge (veth, eth0, address, route)."""
        from ..network import bridge, ipam

        with bridge.opened() as ipr:
            bridge.add_veth(ipr, self.link, self.config.bridge, pid, peer_name="eth0")
        try:
            bridge.configure_inside(f"/proc/{pid}/ns/net", "eth0", self.lease.address, self.lease.gateway)
            ipam.update(self.config.bridge, self.container_id, pid=ipam.sandbox_identity(pid))
        except BaseException:
            with bridge.opened() as ipr:
                bridge.delete_link(ipr, self.link)
            raise

    # -- 4. on every exit path --------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What :func:`release_stale` needs, for the container's state file."""
        return {"id": self.container_id, "bridge": self.config.bridge, "link": self.link,
                "address": self.address, "nft_table": self.config.nft_table if self.spec.ports else None,
                "files": str(self.files_dir)}

    def release(self) -> None:
        """Remove port rules, the veth, the /etc files and the lease.  Idempotent."""
        if self._released:
            return
        release_record(self.record())
        self._released = True


def release_stale(record: dict[str, Any]) -> None:
    """Clean up after a dead container from its state-file record (``minibox gc``)."""
    release_record(record)
