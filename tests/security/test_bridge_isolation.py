"""The bridge cannot be spoofed, and the host is not open to its sandboxes (issue 10, section 4).

The attacker is a sandbox on the bridge that holds CAP_NET_RAW (added
explicitly with ``cap_add``; the default set no longer has it) and writes
whatever Ethernet frame it likes with a static tool (rawnet.c, built here,
bind-mounted read-only).  The witness is a second sandbox that records every
frame carrying the test's marker from a packet socket on its own eth0.  Each
attack ends with one legitimate frame (``MARKER-END``) that must arrive: it
shows the witness was listening and the path works, so "nothing forged
arrived" cannot pass vacuously.

Safety: a bridge, subnet and nft table of this module's own (as in
tests/network/), a veth pair in the host's namespace with one test address
standing for "the host's other addresses", and a listener on an ephemeral port this test
opens.  Every forged address is a field in a frame on the test bridge;
nothing is routed.  A module fixture checks that no link, nft table or lease
is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minibox import Container, Mount, Spec
from minibox.container.network import veth_name
from minibox.network import bridge as br
from minibox.network import ipam, network_dir, nft
from minibox.network.attachment import port_mac
from minibox.vm import VirtualMachine
from minibox.vm.network import tap_name

from ..conftest import needs_root
from ..network.helpers import free_test_subnet, links, nft_tables, on_test_network, read_from

pytestmark = needs_root

HERE = Path(__file__).parent
BRIDGE = f"mbi{os.getpid() % 100000}"
TABLE = f"minibox_iso{os.getpid() % 100000}"
DUMMY = f"mbd{os.getpid() % 100000}"
#: An address no sandbox or host has: a forged IPv4 source (a field in a frame on the test bridge).
ARBITRARY = "192.0.2.77"


@pytest.fixture(scope="module", autouse=True)
def test_network() -> Iterator[ipaddress.IPv4Network]:
    """Point minibox at a test bridge/subnet/table; afterwards, check nothing is left."""
    with on_test_network("10.215.0.0/16", BRIDGE, TABLE) as subnet:
        yield subnet
    time.sleep(0.2)  # a dying netns drops its veth end asynchronously
    # Only names this module made: other sessions may create links and tables meanwhile.
    assert {BRIDGE, DUMMY, DUMMY + "p", *PORT_NAMES} & links() == set(), "interfaces left behind"
    assert {t for t in nft_tables() if t.split()[1] == TABLE} == set(), "nft tables left behind"
    assert not (network_dir() / f"{BRIDGE}.json").exists(), "lease file left behind"


#: The host-side veth and tap names of every sandbox this module made.
PORT_NAMES: list[str] = []


def made(box: Container | VirtualMachine) -> None:
    PORT_NAMES.append(tap_name(box.id) if isinstance(box, VirtualMachine) else veth_name(box.id))


@pytest.fixture(autouse=True)
def nothing_left_per_test() -> Iterator[None]:
    yield
    assert set(PORT_NAMES) & links() == set(), "veth or tap left behind"
    assert BRIDGE not in links(), "the bridge outlived its last sandbox"
    assert not nft.table_exists(TABLE, "ip") and not nft.table_exists(TABLE, "bridge"), "rules left behind"
    assert ipam.leases(BRIDGE) == {}


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the static rawnet binary, to bind-mount read-only at /t."""
    out = tmp_path_factory.mktemp("rawnet")
    out.chmod(0o755)
    subprocess.run(["cc", "-static", "-O2", "-Wall", "-o", str(out / "rawnet"), str(HERE / "rawnet.c")],
                   check=True)
    return out


def sandbox_spec(tools: Path, argv: list[str], **kw: Any) -> Spec:
    return Spec(argv=argv, network="bridge", mounts=[Mount.bind(str(tools), "/t", readonly=True)], **kw)


@contextlib.contextmanager
def sleeping(tools: Path, **kw: Any) -> Iterator[Container]:
    box = Container(sandbox_spec(tools, ["sleep", "120"], **kw))
    made(box)
    try:
        box.start()
        yield box
    finally:
        box.close()


@contextlib.contextmanager
def witness(tools: Path, marker: str, tmp_path: Path) -> Iterator[tuple[Container, Path]]:
    """A container recording every frame with ``marker`` on its eth0; yields once it listens."""
    out = tmp_path / f"witness-{marker}.txt"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    box = Container(sandbox_spec(tools, ["/t/rawnet", "sniff", "eth0", "90", marker], cap_add=["NET_RAW"]),
                    stdout=fd)
    made(box)
    try:
        box.start()
        os.close(fd)
        fd = -1
        deadline = time.monotonic() + 30
        while "ready" not in out.read_text():
            assert time.monotonic() < deadline, f"the witness never listened: {out.read_text()!r}"
            time.sleep(0.05)
        yield box, out
    finally:
        if fd >= 0:
            os.close(fd)
        box.close()


def seen(box: Container, out: Path) -> list[str]:
    """The witness's frame lines, after it saw the END frame (or gave up)."""
    box.wait(timeout=120)
    return [line for line in out.read_text().splitlines() if line.startswith("ethertype=")]


def frame(kind: str, ether_src: str, ether_dst: str, src_ip: str, dst_ip: str, marker: str) -> str:
    return f"/t/rawnet frame eth0 {kind} {ether_src} {ether_dst} {src_ip} {dst_ip} {marker}"


def host_arp(address: str) -> str | None:
    """The host's neighbour entry (MAC) for ``address`` on the test bridge, from /proc/net/arp."""
    for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[0] == address and fields[5] == BRIDGE and fields[3] != "00:00:00:00:00:00":
            return fields[3]
    return None


# -- layer 2 and 3: no forged frames ------------------------------------------------

def test_forged_arp_mac_ipv6_and_source_addresses_never_reach_a_neighbour(tools: Path, tmp_path: Path) -> None:
    marker = "mbx" + os.urandom(4).hex()
    with sleeping(tools) as victim, sleeping(tools, cap_add=["NET_RAW"]) as attacker, \
            witness(tools, marker, tmp_path) as (watcher, out):
        mine, theirs = port_mac(attacker.id), port_mac(victim.id)
        me, them, to = attacker.ip, victim.ip, watcher.ip
        assert me and them and to
        dst = port_mac(watcher.id)
        script = "; ".join([
            frame("arp", mine, dst, me, to, marker),                  # legitimate: arrives
            frame("arp", mine, dst, them, to, marker),                # ARP poisoning: the victim's IP at my MAC
            frame("arp", theirs, dst, them, to, marker),              # ...with the victim's MAC too
            frame("udp", mine, dst, them, to, marker),                # IPv4 from the victim's address
            frame("udp", mine, dst, ARBITRARY, to, marker),           # IPv4 from an arbitrary address
            frame("udp", theirs, dst, me, to, marker),                # my address, the victim's MAC
            frame("ipv6", mine, dst, me, to, marker),                 # IPv6 (the bridge is IPv4 only)
            frame("udp", mine, dst, me, to, marker + "-END"),         # legitimate: arrives, and ends the witness
        ])
        sent = attacker.exec(["/bin/sh", "-c", script], timeout=60)
        assert sent.exit_code == 0 and sent.stdout.decode().count("sent") == 8, sent
        lines = seen(watcher, out)
    assert lines == [f"ethertype=0x0806 src={mine} from={me}", f"ethertype=0x0800 src={mine} from={me}"], lines


def test_the_host_arp_entry_of_a_sandbox_cannot_be_poisoned(tools: Path) -> None:
    with sleeping(tools) as victim, sleeping(tools, cap_add=["NET_RAW"]) as attacker:
        assert victim.ip and attacker.ip
        with contextlib.suppress(OSError), socket.create_connection((victim.ip, 9), timeout=2):
            pass  # the host resolves the victim's MAC (a refused connection is enough)
        assert host_arp(victim.ip) == port_mac(victim.id)
        bridge_mac = Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip()
        gateway = str(ipaddress.IPv4Interface(f"{victim.ip}/24").network.network_address + 1)
        # Replies claiming the victim's address, spread over more than the kernel's
        # neighbour locktime (1 s), so an unguarded host would take one of them.
        poison = frame("arp", port_mac(attacker.id), bridge_mac, victim.ip, gateway, "poison")
        done = attacker.exec(["/bin/sh", "-c", f"for i in 1 2 3 4; do {poison}; sleep 0.5; done"], timeout=60)
        assert done.exit_code == 0, done
        assert host_arp(victim.ip) == port_mac(victim.id)


def test_rules_come_and_go_with_each_lease(tools: Path) -> None:
    def owners() -> set[str | None]:
        return {nft.owner_of(rule) for family in nft.FAMILIES for rule in nft.rules(TABLE, family)}

    with sleeping(tools) as first:
        with sleeping(tools, host_access=True) as second:
            assert owners() == {first.id, second.id}
            hosts = [r for r in nft.rules(TABLE, "ip") if r["chain"] == "host"]
            assert [nft.owner_of(r) for r in hosts] == [first.id]  # host_access: no host rule
        assert owners() == {first.id}


# -- the host's own addresses -------------------------------------------------------

@pytest.fixture
def host_service(test_network: ipaddress.IPv4Network) -> Iterator[tuple[socket.socket, list[str]]]:
    """A TCP listener on 0.0.0.0 (an ephemeral port), and the host addresses to try:
    the bridge's gateway and the address of an interface made here (a veth pair, both
    ends in the host's namespace: this kernel has no dummy driver)."""
    other = free_test_subnet("10.216.0.0/16").network_address + 1
    with br.opened() as ipr:
        ipr.link("add", ifname=DUMMY, kind="veth", peer={"ifname": DUMMY + "p"})
        try:
            index = br.link_index(ipr, DUMMY)
            ipr.addr("add", index=index, address=str(other), prefixlen=32)
            ipr.link("set", index=index, state="up")
            with socket.socket() as listener:
                listener.bind(("0.0.0.0", 0))
                listener.listen(8)
                listener.setblocking(False)
                yield listener, [str(test_network.network_address + 1), str(other)]
        finally:
            br.delete_link(ipr, DUMMY)


def accepted(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize("host_access", [False, True])
def test_the_host_is_closed_unless_the_spec_opens_it(tools: Path, host_service: tuple[socket.socket, list[str]],
                                                     host_access: bool) -> None:
    listener, addresses = host_service
    port = listener.getsockname()[1]
    script = "; ".join(f"nc -w 3 {a} {port} -e /bin/true; echo {a}=$?" for a in addresses)
    with sleeping(tools, host_access=host_access) as box:
        result = box.exec(["/bin/sh", "-c", script], timeout=60)
    time.sleep(0.2)
    assert accepted(listener) == (len(addresses) if host_access else 0), result
    for address in addresses:
        assert (f"{address}=0" in result.stdout.decode()) is host_access, result


def test_published_ports_and_the_hosts_own_connections_still_work(tools: Path,
                                                                  test_network: ipaddress.IPv4Network) -> None:
    gateway = str(test_network.network_address + 1)
    box = Container(sandbox_spec(tools, ["/bin/sh", "-c", "echo published | nc -l -p 80"], ports=[(18190, 80)]))
    made(box)
    with box:
        assert read_from(gateway, 18190, timeout=30) == b"published\n"
    with sleeping(tools) as box:  # the host connects to a sandbox directly; the replies come back
        assert box.ip
        with contextlib.suppress(OSError), socket.create_connection((box.ip, 9), timeout=2):
            pass
        assert host_arp(box.ip) == port_mac(box.id)


# -- ping without NET_RAW -----------------------------------------------------------

def test_ping_works_without_net_raw_and_frames_cannot_be_forged(tools: Path) -> None:
    with sleeping(tools) as peer, sleeping(tools) as box:
        assert peer.ip
        status = box.exec(["/bin/sh", "-c", "grep CapEff /proc/self/status"], timeout=30).stdout.decode()
        assert not int(status.split()[1], 16) >> 13 & 1, status  # CAP_NET_RAW is not held
        pinged = box.exec(["/t/rawnet", "ping", peer.ip], timeout=30)
        assert pinged.exit_code == 0 and f"reply from {peer.ip}" in pinged.stdout.decode(), pinged
        forged = box.exec(["/bin/sh", "-c", frame("udp", port_mac(box.id), port_mac(peer.id), peer.ip, peer.ip,
                                                  "x")], timeout=30)
        assert "error socket(AF_PACKET): Operation not permitted" in forged.stdout.decode(), forged


# -- a VM on the bridge gets the same rules on its tap ------------------------------

def test_a_vm_guest_cannot_spoof_or_reach_the_host_either(tools: Path, tmp_path: Path, busybox_rootfs: str,
                                                           test_network: ipaddress.IPv4Network,
                                                           host_service: tuple[socket.socket, list[str]]) -> None:
    """One boot: the guest is root in its own kernel, so it can write any frame on its NIC."""
    listener, addresses = host_service
    port = listener.getsockname()[1]
    marker = "mbv" + os.urandom(4).hex()
    me, gateway = str(test_network.network_address + 200), str(test_network.network_address + 1)
    with witness(tools, marker, tmp_path) as (watcher, out):
        to, dst = watcher.ip, port_mac(watcher.id)
        assert to
        vm = VirtualMachine(Spec(argv=["/bin/sh", "-c", "; ".join([
            "mac=$(cat /sys/class/net/eth0/address)",
            frame("arp", "$mac", dst, me, to, marker),                 # legitimate: arrives
            frame("arp", "$mac", dst, gateway, to, marker),            # "the gateway is at my MAC"
            frame("udp", "$mac", dst, ARBITRARY, to, marker),          # an arbitrary source address
            frame("udp", "02:00:00:00:00:99", dst, me, to, marker),    # a MAC that is not the port's
            frame("ipv6", "$mac", dst, me, to, marker),
            *(f"nc -w 3 {a} {port} -e /bin/true; echo {a}=$?" for a in addresses),
            frame("udp", "$mac", dst, me, to, marker + "-END"),
        ])], rootfs=busybox_rootfs, network="bridge", ip=me, cap_add=["NET_RAW"],
            mounts=[Mount.bind(str(tools), "/t", readonly=True)], timeout=240))
        made(vm)
        with vm:
            result = vm.wait()
        lines = seen(watcher, out)
    text = result.stdout.decode()
    assert text.count("sent") == 6, result
    mine = port_mac(vm.id)
    assert lines == [f"ethertype=0x0806 src={mine} from={me}", f"ethertype=0x0800 src={mine} from={me}"], lines
    time.sleep(0.2)
    assert accepted(listener) == 0
    assert all(f"{a}=0" not in text for a in addresses), text
