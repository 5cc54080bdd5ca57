"""Bridge, veth and tap devices over rtnetlink, with pyroute2.

Kernel features: rtnetlink(7) -- the netlink protocol behind ip-link(8),
ip-address(8) and ip-route(8) -- used here through pyroute2's ``IPRoute``,
never by running ``ip``.  A bridge is a software switch; a veth(4) pair is
a virtual cable whose two ends may live in different network namespaces
(network_namespaces(7)); a tap device is a cable whose other end is a file
descriptor (QEMU's virtio-net backend, tuntap).

A netlink socket belongs to the network namespace of the thread that
created it, for its whole life.  :func:`netlink_socket` uses that: a short
helper *thread* setns(2)es into the target namespace, creates the socket
and returns to its own namespace; the socket then configures the other
namespace from any thread.  setns(CLONE_NEWNET) changes only the calling
thread, so the rest of the process (and other threads starting containers
at the same time) never notices.  pyroute2's own ``netns=`` support forks a
helper process instead, which DESIGN.md rules out in a threaded program.

Ownership: a bridge minibox creates carries the interface alias
``minibox`` (IFLA_IFALIAS); only such a bridge is ever deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import PreflightError, SetupError

OWNER_ALIAS = "minibox"
CLONE_NEWNET = 0x40000000
ENODEV = 19
EEXIST = 17

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

T = TypeVar("T")
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a helper thread that setns(2)es into ``netns_path`` first, and back after.

    Only the helper thread changes namespace; the caller's threads never do.
    Whatever ``fn`` creates that binds to "the current namespace" (a socket,
    a tun device) belongs to ``netns_path``.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            failure.append(e)
            return
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                result.append(fn())
            finally:
                try:
                    _setns(own)
                except OSError:  # pragma: no cover - cannot happen for a namespace we came from
                    os.abort()  # a thread stuck in a foreign namespace must not run on
        except BaseException as e:
            failure.append(e)
        finally:
            os.close(own)

    helper = threading.Thread(target=work, name="minibox-netns")
    helper.start()
    helper.join()
    if failure:
        raise failure[0]
    return result[0]


def netlink_socket(netns_path: str, protocol: int = socket.NETLINK_ROUTE) -> socket.socket:
    """A netlink socket living in the network namespace at ``netns_path`` (e.g. /proc/PID/ns/net)."""
    return run_in_netns(netns_path, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol))


def iproute(netns_path: str | None = None) -> Any:
    """A pyroute2 ``IPRoute``, in this namespace or the one at ``netns_path``. Close it after use.

    Use it from the thread that made it: pyroute2 keeps its transport per
    thread, and would rebuild the socket in another one.
    """
    from pyroute2 import IPRoute

    if netns_path is None:
        return IPRoute()
    sock = netlink_socket(netns_path)
    return IPRoute(fileno=sock.detach())


@contextlib.contextmanager
def opened(netns_path: str | None = None) -> Iterator[Any]:
    """``with opened() as ipr:`` -- :func:`iproute`, closed afterwards."""
    ipr = iproute(netns_path)
    try:
        yield ipr
    finally:
        ipr.close()


def _errno(error: BaseException) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    return getattr(error, "errno", None)


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_alias(ipr: Any, index: int) -> str | None:
    links = ipr.get_links(index)
    return links[0].get("IFLA_IFALIAS") if links else None


def link_kind(ipr: Any, index: int) -> str | None:
    links = ipr.get_links(index)
    if not links:
        return None
    info = links[0].get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def bridge_address(ipr: Any, name: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address (with prefix) on bridge ``name``, or None."""
    index = link_index(ipr, name)
    if index is None:
        return None
    for msg in ipr.get_addr(family=socket.AF_INET, index=index):
        return ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
    return None


def ensure_bridge(ipr: Any, name: str, gateway: ipaddress.IPv4Interface) -> bool:
    """Make sure bridge ``name`` exists, holds ``gateway`` (e.g. 10.88.0.1/24) and is up.

    Returns True when this call created it.  A bridge that exists already
    is used only if it holds exactly that address (it is never changed).
    """
    index = link_index(ipr, name)
    if index is not None:
        if link_kind(ipr, index) != "bridge":
            raise PreflightError(f"interface {name!r} exists and is not a bridge; choose another MINIBOX_BRIDGE")
        have = bridge_address(ipr, name)
        if have != gateway:
            raise PreflightError(f"bridge {name!r} exists with address {have}, not {gateway}; "
                                 "minibox does not change interfaces it did not create")
        return False
    try:
        # A fixed, locally administered MAC: otherwise the bridge takes the
        # lowest MAC of its ports, and changes it as sandboxes come and go.
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        ipr.link("add", ifname=name, kind="bridge", address=mac)
    except Exception as e:
        if _errno(e) == EEXIST:  # another process was quicker (it holds the lock, so: not minibox)
            raise PreflightError(f"bridge {name!r} appeared while minibox was creating it") from e
        raise SetupError("bridge", _errno(e), detail=name) from e
    try:
        index = link_index(ipr, name)
        assert index is not None
        ipr.link("set", index=index, ifalias=OWNER_ALIAS)
        ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
        ipr.link("set", index=index, state="up")
    except Exception as e:
        with contextlib.suppress(Exception):
            ipr.link("del", ifname=name)
        raise SetupError("bridge", _errno(e), detail=name) from e
    return True


def remove_bridge(ipr: Any, name: str) -> bool:
    """Delete bridge ``name`` if minibox created it (alias ``minibox``); True if deleted."""
    index = link_index(ipr, name)
    if index is None or link_alias(ipr, index) != OWNER_ALIAS:
        return False
    return delete_link(ipr, name)


def delete_link(ipr: Any, name: str) -> bool:
    """Delete interface ``name``; False when it is already gone (idempotent)."""
    try:
        ipr.link("del", ifname=name)
    except Exception as e:
        if _errno(e) == ENODEV:
            return False
        raise SetupError("delete link", _errno(e), detail=name) from e
    return True


def add_veth(ipr: Any, host_name: str, bridge: str, peer_pid: int, peer_name: str = "eth0",
             peer_mac: str | None = None) -> None:
    """A veth pair: ``host_name`` enslaved to ``bridge`` and up; its peer created directly
    in the network namespace of process ``peer_pid`` (IFLA_NET_NS_PID) as ``peer_name``,
    with the MAC ``peer_mac`` (the one the port's guard rules let through) when given.

    On failure nothing is left (deleting one end of a veth deletes both).
    """
    bridge_index = link_index(ipr, bridge)
    if bridge_index is None:
        raise SetupError("veth", ENODEV, detail=f"bridge {bridge} is gone")
    try:
        peer: dict[str, Any] = {"ifname": peer_name, "net_ns_pid": peer_pid}
        if peer_mac is not None:
            peer["address"] = peer_mac
        ipr.link("add", ifname=host_name, kind="veth", peer=peer)
    except Exception as e:
        raise SetupError("veth", _errno(e), detail=host_name) from e
    try:
        index = link_index(ipr, host_name)
        assert index is not None
        ipr.link("set", index=index, master=bridge_index, state="up")
    except Exception as e:
        with contextlib.suppress(Exception):
            ipr.link("del", ifname=host_name)
        raise SetupError("veth", _errno(e), detail=host_name) from e


def open_tap(ipr: Any, name: str, bridge: str | None, *, vnet_hdr: bool = False) -> int:
    """Create tap device ``name`` on ``bridge``, up, and return its fd (for QEMU's ``-netdev tap,fd=N``).

    With ``bridge=None`` the tap is left down and on no bridge: a NIC whose
    wire leads nowhere (a VM template's boot, vm/clone.py).

    The tap is made with TUNSETIFF on /dev/net/tun (see the kernel's
    Documentation/networking/tuntap.rst) and is *not* persistent: it
    vanishes when the last copy of the fd is closed -- when QEMU exits, on
    every path.  It is created in the calling thread's network namespace,
    so ``ipr`` must talk to that same namespace.  ``vnet_hdr`` sets
    IFF_VNET_HDR (QEMU's ``vnet_hdr=on``).
    """
    bridge_index = link_index(ipr, bridge) if bridge is not None else None
    if bridge is not None and bridge_index is None:
        raise SetupError("tap", ENODEV, detail=f"bridge {bridge} is gone")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError("tap", e.errno, detail="/dev/net/tun") from e
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if bridge_index is not None:
            index = link_index(ipr, name)
            if index is None:
                raise OSError(ENODEV, "tap not visible through this netlink socket (another namespace?)")
            ipr.link("set", index=index, master=bridge_index, state="up")
    except Exception as e:
        os.close(fd)  # the tap goes with its only fd
        raise SetupError("tap", _errno(e), detail=name) from e
    return fd


def configure_inside(netns_path: str, ifname: str, address: ipaddress.IPv4Interface,
                     gateway: ipaddress.IPv4Address) -> None:
    """In the namespace at ``netns_path``: address ``ifname``, bring it up, default route via ``gateway``."""
    try:
        with opened(netns_path) as ipr:
            index = link_index(ipr, ifname)
            if index is None:
                raise SetupError("network", ENODEV, detail=f"{ifname} missing in the container")
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway))
    except SetupError:
        raise
    except Exception as e:
        raise SetupError("network", _errno(e), detail=f"configure {ifname}") from e


# -- routes and subnet choice -------------------------------------------------------

_DEFAULT_POOL = ipaddress.IPv4Network("10.88.0.0/16")


@dataclass(frozen=True)
class Route:
    """One IPv4 route of the host: its destination network and device name."""

    network: ipaddress.IPv4Network
    device: str | None


def host_routes(ipr: Any) -> list[Route]:
    """Every IPv4 route with a destination (all tables; default routes left out)."""
    names = {int(link["index"]): link.get("IFLA_IFNAME") for link in ipr.get_links()}
    routes: list[Route] = []
    for msg in ipr.get_routes(family=socket.AF_INET):
        dst_len = int(msg["dst_len"])
        dst = msg.get("RTA_DST")
        if dst is None or dst_len == 0:
            continue  # the default route overlaps everything and is not a collision
        network = ipaddress.IPv4Network(f"{dst}/{dst_len}", strict=False)
        oif = msg.get("RTA_OIF")
        routes.append(Route(network, names.get(int(oif)) if oif is not None else None))
    return routes


def find_collision(subnet: ipaddress.IPv4Network, routes: Iterable[Route],
                   own_device: str | None = None) -> Route | None:
    """The first route that overlaps ``subnet``, ignoring routes on ``own_device`` (our bridge)."""
    for route in routes:
        if own_device is not None and route.device == own_device:
            continue
        if route.network.overlaps(subnet):
            return route
    return None


def choose_subnet(requested: ipaddress.IPv4Network | None, routes: Iterable[Route], *,
                  own_device: str | None = None,
                  pool: ipaddress.IPv4Network = _DEFAULT_POOL,
                  prefixlen: int = 24) -> tuple[ipaddress.IPv4Network, str | None]:
    """Pick the bridge's subnet: ``(subnet, message)``.

    An explicit ``requested`` subnet that overlaps a host route is refused
    (PreflightError).  Otherwise the first /``prefixlen`` of ``pool`` that
    overlaps no route wins; when that is not the pool's first, ``message``
    says why it moved.
    """
    routes = list(routes)
    if requested is not None:
        hit = find_collision(requested, routes, own_device)
        if hit is not None:
            raise PreflightError(f"subnet {requested} collides with the host route {hit.network}"
                                 f"{f' on {hit.device}' if hit.device else ''}; choose another MINIBOX_SUBNET")
        return requested, None
    first: ipaddress.IPv4Network | None = None
    first_hit: Route | None = None
    for candidate in pool.subnets(new_prefix=prefixlen):
        hit = find_collision(candidate, routes, own_device)
        if hit is None:
            if first is None:
                return candidate, None
            where = f" on {first_hit.device}" if first_hit and first_hit.device else ""
            return candidate, (f"minibox: {first} collides with the host route "
                               f"{first_hit.network if first_hit else '?'}{where}; using {candidate}")
        if first is None:
            first, first_hit = candidate, hit
    raise PreflightError(f"every /{prefixlen} of {pool} collides with a host route; set MINIBOX_SUBNET")
