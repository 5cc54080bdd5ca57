"""The bridge port's guard rules as data, the Spec field that opens the host, and the rules
accepted and removed by the kernel (root; in a network namespace of the test's own).

The rules' effect on real frames is shown by tests/security/test_bridge_isolation.py.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from minibox import Spec, SpecError
from minibox.network import bridge as br
from minibox.network import guard, nft
from minibox.network.attachment import port_mac

from ..conftest import needs_root


def _guard(host_access: bool = False) -> guard.PortGuard:
    return guard.PortGuard("0123456789ab", "mbt1", "mbv0123456789ab", port_mac("0123456789ab"),
                           ipaddress.IPv4Address("10.213.4.7"), host_access=host_access)


def test_every_rule_names_its_owner_and_its_port() -> None:
    rules = [line for line in guard.commands("mbtest", _guard()) if line.startswith("add rule")]
    assert rules and all('comment "0123456789ab mbv0123456789ab: ' in line for line in rules)
    layer2 = [line for line in rules if line.startswith("add rule bridge mbtest ports ")]
    assert all('iifname "mbv0123456789ab"' in line for line in layer2)
    # its own MAC and address only, for Ethernet, ARP and IPv4 alike; nothing else passes
    for fragment in ("ether saddr != 02:01:23:45:67:89 drop", "ether type != { ip, arp } drop",
                     "arp saddr ether != 02:01:23:45:67:89 drop", "arp saddr ip != 10.213.4.7 drop",
                     "ip saddr != 10.213.4.7 drop"):
        assert any(fragment in line for line in layer2), fragment


def test_the_host_is_closed_unless_the_spec_opens_it() -> None:
    closed = [line for line in guard.commands("mbtest", _guard()) if " host " in line and "add rule" in line]
    assert closed == [line for line in closed if "ct state != { established, related } drop" in line]
    assert len(closed) == 1 and 'iifname "mbt1" ip saddr 10.213.4.7' in closed[0]
    opened = [line for line in guard.commands("mbtest", _guard(True)) if " host " in line and "add rule" in line]
    assert opened == []


def test_forwarding_off_the_bridge_is_dropped_either_way() -> None:
    for host_access in (False, True):
        forward = [line for line in guard.commands("mbtest", _guard(host_access))
                   if line.startswith("add rule ip mbtest forward")]
        assert len(forward) == 2 and all(line.split(" comment ")[0].endswith("drop") for line in forward)


def test_port_mac_is_locally_administered_unicast_and_names_the_sandbox() -> None:
    assert port_mac("0123456789ab") == "02:01:23:45:67:89"
    odd = port_mac("not-hex-at-all")
    assert odd.startswith("02:") and len(odd.split(":")) == 6


@pytest.mark.parametrize("network", ["none", "host"])
def test_host_access_is_refused_off_the_bridge(network: str) -> None:
    with pytest.raises(SpecError) as err:
        Spec(argv=["true"], network=network, host_access=True)
    assert err.value.field == "host_access"


def test_host_access_must_be_a_bool() -> None:
    with pytest.raises(SpecError) as err:
        Spec(argv=["true"], network="bridge", host_access="yes")  # type: ignore[arg-type]
    assert err.value.field == "host_access"
    assert Spec(argv=["true"], network="bridge", host_access=True).host_access is True


@pytest.fixture
def private_netns() -> Iterator[str]:
    """A network namespace of the test's own (/proc/PID/fd/N), so no rule ever reaches the host's tables."""
    libc = ctypes.CDLL(None, use_errno=True)
    holder: list[int] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            assert libc.unshare(0x40000000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWNET
            holder.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
            assert libc.setns(own, 0x40000000) == 0
        finally:
            os.close(own)

    helper = threading.Thread(target=make)
    helper.start()
    helper.join()
    assert holder, "could not create a network namespace"
    try:
        yield f"/proc/{os.getpid()}/fd/{holder[0]}"
    finally:
        os.close(holder[0])


@needs_root
@pytest.mark.parametrize("backend", ["libnftables", "nft binary"])
def test_the_kernel_takes_the_rules_and_removal_leaves_only_the_others(
        private_netns: str, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    if backend == "nft binary":
        monkeypatch.setattr(nft, "_libnftables", lambda: None)
    elif nft._libnftables() is None:
        pytest.skip("libnftables.so.1 is not installed")
    other = guard.PortGuard("ffffffffffff", "mbt1", "mbvffffffffffff", port_mac("ffffffffffff"),
                            ipaddress.IPv4Address("10.213.4.8"))

    def work() -> tuple[set[str | None], set[str | None], bool, bool]:
        nft.apply(guard.commands("mbtest", _guard()))
        nft.apply(guard.commands("mbtest", other))
        both = {nft.owner_of(r) for family in nft.FAMILIES for r in nft.rules("mbtest", family)}
        nft.remove_owner("mbtest", "0123456789ab")
        left = {nft.owner_of(r) for family in nft.FAMILIES for r in nft.rules("mbtest", family)}
        nft.remove_owner("mbtest", "ffffffffffff")
        return both, left, nft.table_exists("mbtest", "ip"), nft.table_exists("mbtest", "bridge")

    both, left, ip_left, bridge_left = br.run_in_netns(private_netns, work)
    assert both == {"0123456789ab", "ffffffffffff"}
    assert left == {"ffffffffffff"}
    assert not ip_left and not bridge_left  # the tables go with their last rule


def _new_netns() -> int:
    """An fd of a new network namespace (made by a helper thread, which then returns to its own)."""
    libc = ctypes.CDLL(None, use_errno=True)
    holder: list[int] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            assert libc.unshare(0x40000000) == 0, os.strerror(ctypes.get_errno())
            holder.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
            assert libc.setns(own, 0x40000000) == 0
        finally:
            os.close(own)

    helper = threading.Thread(target=make)
    helper.start()
    helper.join()
    assert holder, "could not create a network namespace"
    return holder[0]


@needs_root
def test_a_router_host_forwards_nothing_from_a_guarded_port() -> None:
    """Where the host routes (ip_forward=1), the forward rules keep the port's traffic on the bridge.

    Three namespaces of the test's own stand for the host (a router: forwarding on, a bridge
    with one port), a sandbox on the port, and a machine beyond another interface.  Forwarding
    is switched on only inside the router namespace (the sysctl is per namespace).
    """
    router, sandbox, outside = _new_netns(), _new_netns(), _new_netns()
    path = {fd: f"/proc/{os.getpid()}/fd/{fd}" for fd in (router, sandbox, outside)}
    mac = port_mac("0123456789ab")
    try:
        with br.opened(path[router]) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.addr("add", index=br.link_index(ipr, "br0"), address="10.77.0.1", prefixlen=24)
            ipr.link("set", index=br.link_index(ipr, "br0"), state="up")
            ipr.link("add", ifname="port0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": sandbox,
                                                               "address": mac})
            ipr.link("set", index=br.link_index(ipr, "port0"), master=br.link_index(ipr, "br0"), state="up")
            ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": outside})
            ipr.addr("add", index=br.link_index(ipr, "up0"), address="10.78.0.1", prefixlen=24)
            ipr.link("set", index=br.link_index(ipr, "up0"), state="up")
        for fd, address, gateway in ((sandbox, "10.77.0.2", "10.77.0.1"), (outside, "10.78.0.2", "10.78.0.1")):
            br.configure_inside(path[fd], "eth0", ipaddress.IPv4Interface(f"{address}/24"),
                                ipaddress.IPv4Address(gateway))

        def forwarding_on() -> None:
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1")

        br.run_in_netns(path[router], forwarding_on)
        receiver = br.run_in_netns(path[outside], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sender = br.run_in_netns(path[sandbox], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with receiver, sender:
            receiver.bind(("0.0.0.0", 9999))
            receiver.settimeout(3)
            sender.sendto(b"before", ("10.78.0.2", 9999))
            assert receiver.recv(64) == b"before"  # the router forwards: the path works
            rules = guard.commands("mbfwd", guard.PortGuard("0123456789ab", "br0", "port0", mac,
                                                            ipaddress.IPv4Address("10.77.0.2")))
            br.run_in_netns(path[router], lambda: nft.apply(rules))
            sender.sendto(b"after", ("10.78.0.2", 9999))
            receiver.settimeout(2)
            with pytest.raises(TimeoutError):
                receiver.recv(64)
    finally:
        for fd in (router, sandbox, outside):
            os.close(fd)  # the namespaces, their links and the rules go with the last reference
