"""The host side of minibox networking, shared by containers and VMs.

Kernel features: a Linux bridge is a software switch (ip-link(8) "type
bridge"); every sandbox on ``network="bridge"`` plugs one port into it -- a
veth(4) end for a container (its peer lives in the container's network
namespace, network_namespaces(7)), a tap device for a VM (its other side is
QEMU's virtio-net).  Addresses come from minibox's own IPAM, checked against
the host's routing table (rtnetlink(7)); published ports are nftables DNAT
rules (nft(8)) in a table minibox owns.

Modules:

* :mod:`minibox.network.bridge` -- rtnetlink through pyroute2: the bridge,
  veth and tap ports, a netlink socket inside another network namespace,
  the route table and the subnet collision check.
* :mod:`minibox.network.ipam` -- address leases, persisted in
  ``runtime_dir()/network/`` under an flock(2), so that threads and processes
  starting sandboxes at once never share an address.
* :mod:`minibox.network.ports` -- ``-p HOSTPORT:PORT`` as nftables rules.
* :mod:`minibox.network.guard` -- what each port may send (its own MAC and
  address only) and reach (not the host, unless ``Spec.host_access``; never
  off the bridge), as nftables rules per port.
* :mod:`minibox.network.nft` -- running nft(8); minibox's own tables, and
  the rules that belong to one sandbox.
* :mod:`minibox.network.attachment` -- one port of the bridge from lease to
  release, container or VM alike: lease, ports, generated /etc files, and
  the undo of its record.

Nothing here routes or NATs traffic off the machine: the bridge has no
uplink, IP forwarding is never enabled (and where the host enables it, each
port's forward rules drop what would leave the bridge), and the only NAT
rule is DNAT for connections the host itself makes to the bridge's gateway
address.

Configuration (read when a sandbox starts, so tests can point minibox at a
bridge of their own): ``MINIBOX_BRIDGE`` (default ``minibox0``),
``MINIBOX_SUBNET`` (default: the first /24 of 10.88.0.0/16 that no host route
overlaps; an explicit subnet that collides is refused) and
``MINIBOX_NFT_TABLE`` (default ``minibox``; one table of that name in the
``ip`` and one in the ``bridge`` family).

pyroute2 is imported lazily, inside functions: ``network="none"`` never pays
for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import PreflightError
from ..paths import runtime_dir

DEFAULT_BRIDGE = "minibox0"
#: The pool minibox picks its default /24 from, first free one wins.
DEFAULT_POOL = ipaddress.IPv4Network("10.88.0.0/16")
DEFAULT_PREFIXLEN = 24
DEFAULT_NFT_TABLE = "minibox"

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class NetworkConfig:
    """Which bridge, subnet and nft table sandboxes use; see :func:`config_from_env`.

    ``subnet=None`` lets minibox choose a free /24 from :data:`DEFAULT_POOL`.
    """

    bridge: str = DEFAULT_BRIDGE
    subnet: ipaddress.IPv4Network | None = None
    nft_table: str = DEFAULT_NFT_TABLE

    def __post_init__(self) -> None:
        if not _IFNAME_RE.match(self.bridge):
            raise PreflightError(f"bridge name {self.bridge!r} is not a valid interface name (1-15 of [A-Za-z0-9_.-])")
        if not _TABLE_RE.match(self.nft_table):
            raise PreflightError(f"nft table name {self.nft_table!r} is invalid (letters, digits, '_')")
        if self.subnet is not None:
            if not self.subnet.is_private:
                raise PreflightError(f"subnet {self.subnet} is not a private range (RFC 1918)")
            if not 16 <= self.subnet.prefixlen <= 29:
                raise PreflightError(f"subnet {self.subnet}: use a prefix length between /16 and /29")


def config_from_env() -> NetworkConfig:
    """The configuration named by ``MINIBOX_BRIDGE``, ``MINIBOX_SUBNET``, ``MINIBOX_NFT_TABLE``."""
    subnet_text = os.environ.get("MINIBOX_SUBNET") or None
    subnet = None
    if subnet_text:
        try:
            subnet = ipaddress.IPv4Network(subnet_text, strict=True)
        except ValueError as e:
            raise PreflightError(f"MINIBOX_SUBNET={subnet_text!r} is not an IPv4 network like 10.88.0.0/24") from e
    return NetworkConfig(bridge=os.environ.get("MINIBOX_BRIDGE") or DEFAULT_BRIDGE, subnet=subnet,
                         nft_table=os.environ.get("MINIBOX_NFT_TABLE") or DEFAULT_NFT_TABLE)


def network_dir() -> Path:
    """``runtime_dir()/network``: lease files and the generated /etc files."""
    path = runtime_dir() / "network"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextlib.contextmanager
def locked() -> Iterator[Path]:
    """Hold the network lock: flock(2) on the ``network_dir()`` directory itself.

    Every open() makes a new open file description, and flock locks belong
    to those, so this excludes other threads of this process as well as
    other processes.  Locking the directory (not a file in it) leaves no
    lock file to race on when the state is removed.
    """
    path = network_dir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing the last fd of the description drops the lock
