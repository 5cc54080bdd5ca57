"""Container networking: none, bridge, published ports, leases, collisions and cleanup.

Safety: every test uses a bridge and subnet of its own (MINIBOX_BRIDGE,
MINIBOX_SUBNET, MINIBOX_NFT_TABLE, chosen below clear of the host's
routes), and the only traffic is between interfaces the tests create: the
containers' veths and the test bridge's own address.  The collision and tap
tests run inside a private network namespace made here.  A module fixture
checks that no veth, bridge, lease, /etc file or nft table is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import minibox
from minibox import Container, SetupError, Spec, SpecError
from minibox.network import bridge as br
from minibox.network import ipam, network_dir, ports

from ..conftest import needs_root
from .helpers import links, nft_tables, on_test_network, read_from

pytestmark = needs_root

BRIDGE = f"mbt{os.getpid() % 100000}"
TABLE = f"minibox_test{os.getpid() % 100000}"
CLONE_NEWNET = 0x40000000





@pytest.fixture(scope="module", autouse=True)
def test_network() -> Iterator[ipaddress.IPv4Network]:
    """Point minibox at a test bridge/subnet/table; afterwards, check nothing is left."""
    with on_test_network("10.213.0.0/16", BRIDGE, TABLE) as subnet:
        yield subnet
    time.sleep(0.2)  # a dying netns drops its veth end asynchronously; ours are deleted explicitly
    # Only what this module can have made: other sessions create links and tables meanwhile.
    assert not [name for name in links() if name.startswith("mbv") and _ours_or_loose(name)], "veth left behind"
    assert BRIDGE not in links()
    assert {t for t in nft_tables() if t.split()[1] == TABLE} == set(), "nft tables left behind"
    assert list(network_dir().glob("*.json")) == [], "lease files left behind"
    sandboxes = network_dir() / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == [], "generated /etc files left behind"


@pytest.fixture(autouse=True)
def nothing_left_per_test() -> Iterator[None]:
    yield
    assert BRIDGE not in links(), "the bridge outlived its last container"
    assert not [name for name in links() if name.startswith("mbv") and _ours_or_loose(name)], "veth left behind"
    assert not ports.table_exists(TABLE)
    assert ipam.leases(BRIDGE) == {}


def _ours_or_loose(link: str) -> bool:
    """A veth on this module's bridge, or on none (its bridge gone): not another session's."""
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{link}/master")) == BRIDGE
    except FileNotFoundError:
        return os.path.exists(f"/sys/class/net/{link}")  # no master (or the link went meanwhile)


def sh(script: str, **kw: object) -> minibox.Result:
    return minibox.run(Spec(argv=["/bin/sh", "-c", script], **kw))  # type: ignore[arg-type]


def bridged(script: str, **kw: object) -> Container:
    return Container(Spec(argv=["/bin/sh", "-c", script], network="bridge", **kw))  # type: ignore[arg-type]


@contextlib.contextmanager
def running(box: Container) -> Iterator[Container]:
    """``with box:`` typed as the Container (Sandbox.__enter__ is typed as Sandbox)."""
    with box:
        yield box


def gateway_of(subnet: ipaddress.IPv4Network) -> str:
    return str(subnet.network_address + 1)


# -- none and bridge, seen from inside -----------------------------------------------

def test_none_shows_only_lo() -> None:
    result = sh("ls /sys/class/net; tail -n +3 /proc/net/dev | cut -d: -f1")
    assert result.stdout.split() == [b"lo", b"lo"]


def test_bridge_gives_eth0_an_address_a_default_route_and_etc_files(
        test_network: ipaddress.IPv4Network, busybox_rootfs: str) -> None:
    hosts_before = open(f"{busybox_rootfs}/etc/hosts", "rb").read()
    with running(bridged("ls /sys/class/net; ip -o -4 addr show eth0; ip route; cat /etc/hosts /etc/hostname; "
                 "echo x > /etc/hosts 2>/dev/null || echo read-only", hostname="boxa")) as box:
        result = box.wait(10)
        ip = box.ip
    out = result.stdout.decode()
    assert ip is not None and ipaddress.IPv4Address(ip) in test_network
    assert out.split()[:2] == ["eth0", "lo"]
    assert f"inet {ip}/{test_network.prefixlen}" in out
    assert f"default via {gateway_of(test_network)} dev eth0" in out
    assert f"{ip}\tboxa" in out and "\nboxa\n" in out
    assert out.rstrip().endswith("read-only")
    assert open(f"{busybox_rootfs}/etc/hosts", "rb").read() == hosts_before  # the rootfs is not modified


def test_container_ip_is_none_without_bridge() -> None:
    with running(Container(Spec(argv=["true"]))) as box:
        assert box.ip is None


# -- TCP between containers ------------------------------------------------------------

CONNECT = "for i in $(seq 100); do echo {msg} | nc {ip} 8080 && exit 0; sleep 0.1; done; exit 1"


def test_two_containers_exchange_tcp_both_ways() -> None:
    # Both listen; each then connects to the other from inside its own
    # network namespace (exec joins the running container): A->B and B->A.
    # The listener's stdin must stay open: busybox nc stops at its own stdin's
    # EOF, possibly before the peer's bytes arrive.  Then stay alive for exec.
    listen = "sleep 20 | nc -l -p 8080 > /tmp/got; exec sleep 30"
    with running(bridged(listen)) as a, running(bridged(listen)) as b:
        assert a.ip and b.ip and a.ip != b.ip
        a_to_b = a.exec(["/bin/sh", "-c", CONNECT.format(msg="from-a", ip=b.ip)], timeout=20)
        b_to_a = b.exec(["/bin/sh", "-c", CONNECT.format(msg="from-b", ip=a.ip)], timeout=20)
        assert a_to_b.exit_code == 0 and b_to_a.exit_code == 0
        assert _received(b) == b"from-a\n"
        assert _received(a) == b"from-b\n"


def _received(box: Container, timeout: float = 10) -> bytes:
    """What the listener in ``box`` wrote to /tmp/got, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        got = box.exec(["cat", "/tmp/got"]).stdout
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# -- published ports ----------------------------------------------------------------


def test_published_port_reaches_a_server_in_the_container(test_network: ipaddress.IPv4Network) -> None:
    with running(bridged("echo served-from-container | nc -l -p 80", ports=[(18080, 80)])) as box:
        assert ports.rules(TABLE)[0].host_port == 18080
        data = read_from(gateway_of(test_network), 18080, timeout=10)
        assert data == b"served-from-container\n"
        assert box.wait(10).stdout == b"ping\n"
    assert not ports.table_exists(TABLE)


def test_a_host_port_published_twice_is_refused_and_the_second_leaves_nothing() -> None:
    with running(bridged("sleep 30", ports=[(18081, 80)])) as first:
        second = bridged("sleep 30", ports=[(18082, 80), (18081, 81)])
        with pytest.raises(SpecError) as err:
            second.start()
        second.close()
        assert err.value.field == "ports[1]"
        assert [r.owner for r in ports.rules(TABLE)] == [first.id]
        assert len(ipam.leases(BRIDGE)) == 1
        first.kill()


# -- addresses ----------------------------------------------------------------------

def test_twenty_containers_started_from_threads_get_twenty_addresses() -> None:
    boxes = [bridged("sleep 30") for _ in range(20)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def start(box: Container) -> None:
        try:
            barrier.wait()
            box.start()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(box,)) for box in boxes]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        addresses = [box.ip for box in boxes]
        assert len(set(addresses)) == 20 and None not in addresses
        # each one really holds its address
        results = [box.exec(["ip", "-o", "-4", "addr", "show", "eth0"]) for box in boxes[:3]]
        for box, result in zip(boxes, results, strict=False):
            assert f"inet {box.ip}/".encode() in result.stdout
    finally:
        for box in boxes:
            box.close()


def test_leases_from_several_processes_never_collide() -> None:
    # Each process keeps running until all have taken their leases: a lease
    # whose holder has exited is stale, and may rightly be handed out again.
    code = ("import sys; from minibox.network import config_from_env, ipam;"
            "c = config_from_env();"
            "print(' '.join(str(ipam.acquire(f'p{sys.argv[1]}-{i}', c, kind='test').address.ip)"
            " for i in range(5)), flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=os.environ.copy())
             for n in range(4)]
    try:
        outputs = [p.stdout.readline().split() if p.stdout else [] for p in procs]
        addresses = [a for out in outputs for a in out]
        assert len(addresses) == 20 and len(set(addresses)) == 20
    finally:
        for p in procs:
            p.communicate(timeout=120)
        for n in range(4):
            for i in range(5):
                ipam.release(BRIDGE, f"p{n}-{i}")


def test_a_fixed_ip_is_used_and_a_bad_one_refused(test_network: ipaddress.IPv4Network) -> None:
    fixed = str(test_network.network_address + 50)
    with running(bridged("sleep 30", ip=fixed)) as box:
        assert box.ip == fixed
        assert f"inet {fixed}/".encode() in box.exec(["ip", "-o", "-4", "addr", "show", "eth0"]).stdout
        second = bridged("true", ip=fixed)
        with pytest.raises(SpecError, match="already leased"):
            second.start()
        second.close()
        box.kill()
    for bad, words in ((str(test_network.network_address + 1), "reserved"), ("192.0.2.200", "outside")):
        box = bridged("true", ip=bad)
        with pytest.raises(SpecError, match=words) as err:
            box.start()
        box.close()
        assert err.value.field == "ip"
    with pytest.raises(SpecError, match="IPv4 address") as err:  # refused by the Spec itself
        bridged("true", ip="not-an-ip")
    assert err.value.field == "ip"


# -- failures half way and gc -------------------------------------------------------

def test_a_failure_while_attaching_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise SetupError("network", 1, detail="simulated")

    monkeypatch.setattr(br, "configure_inside", broken)
    box = bridged("true", ports=[(18083, 80)])
    with pytest.raises(SetupError, match="simulated"):
        box.start()
    box.close()
    # the per-test fixture checks veth, bridge, table and leases


def test_gc_removes_what_a_killed_caller_left() -> None:
    code = ("import os; from minibox import Container, Spec;"
            "b = Container(Spec(argv=['sleep', '60'], network='bridge', ports=[(18084, 80)])); b.start();"
            "print(b.id, b.pid, flush=True); os.kill(os.getpid(), 9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False,
                         env=os.environ.copy())
    box_id, pid = out.stdout.split()
    assert BRIDGE in links() and ports.table_exists(TABLE)
    # its init died with the caller (the owner's keeper killed it); the rest is gc's
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{int(pid)}") and time.monotonic() < deadline:
        time.sleep(0.05)
    from minibox.gc import collect

    assert f"container {box_id.decode()}" in collect().removed
    # the per-test fixture checks that veth, bridge, table and lease are gone


# -- subnet collisions --------------------------------------------------------------

def test_collision_checker_with_a_fake_route_list() -> None:
    routes = [br.Route(ipaddress.IPv4Network("10.88.0.0/24"), "fake0"),
              br.Route(ipaddress.IPv4Network("10.88.1.128/25"), "fake1"),
              br.Route(ipaddress.IPv4Network("10.88.9.0/24"), BRIDGE)]
    subnet, message = br.choose_subnet(None, routes)
    assert subnet == ipaddress.IPv4Network("10.88.2.0/24")
    assert message and "10.88.0.0/24" in message and "fake0" in message and "10.88.2.0/24" in message
    with pytest.raises(minibox.PreflightError, match=re.escape("collides with the host route 10.88.1.128/25 on fake1")):
        br.choose_subnet(ipaddress.IPv4Network("10.88.1.0/24"), routes)
    # a route on minibox's own bridge is not a collision
    assert br.choose_subnet(ipaddress.IPv4Network("10.88.9.0/24"), routes, own_device=BRIDGE)[0] \
        == ipaddress.IPv4Network("10.88.9.0/24")


@pytest.fixture
def private_netns() -> Iterator[str]:
    """A network namespace of the test's own, as a path (/proc/self/fd/N); gone when closed."""
    libc = ctypes.CDLL(None, use_errno=True)
    holder: list[int] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            assert libc.unshare(CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
            holder.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
            assert libc.setns(own, CLONE_NEWNET) == 0
        finally:
            os.close(own)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    assert holder, "could not create a network namespace"
    try:
        yield f"/proc/{os.getpid()}/fd/{holder[0]}"
    finally:
        os.close(holder[0])


def test_a_colliding_route_moves_the_default_subnet_and_refuses_an_explicit_one(private_netns: str) -> None:
    # The "host" here is a namespace the test made: a device (a bridge: this kernel
    # has no dummy driver) holding 10.88.0.0/24.
    with br.opened(private_netns) as ipr:
        ipr.link("add", ifname="fake0", kind="bridge")
        index = br.link_index(ipr, "fake0")
        ipr.addr("add", index=index, address="10.88.0.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
        routes = br.host_routes(ipr)
    assert any(r.network == ipaddress.IPv4Network("10.88.0.0/24") and r.device == "fake0" for r in routes)
    subnet, message = br.choose_subnet(None, routes)
    assert subnet == ipaddress.IPv4Network("10.88.1.0/24")
    assert message is not None and "fake0" in message
    with pytest.raises(minibox.PreflightError, match="collides"):
        br.choose_subnet(ipaddress.IPv4Network("10.88.0.0/24"), routes)


def test_an_explicit_colliding_subnet_refuses_to_start(monkeypatch: pytest.MonkeyPatch,
                                                        test_network: ipaddress.IPv4Network) -> None:
    fake = [br.Route(test_network, "fake0")]
    monkeypatch.setattr(br, "host_routes", lambda _ipr: fake)
    box = bridged("true")
    with pytest.raises(minibox.PreflightError, match=re.escape(f"{test_network} collides")):
        box.start()
    box.close()


def test_the_default_subnet_moves_with_a_message(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    real = br.host_routes
    blocked = ipaddress.IPv4Network("10.88.0.0/24")
    # first in the list: a real route on 10.88.0.0/24 (another session's bridge) must not be the one named
    monkeypatch.setattr(br, "host_routes", lambda ipr: [br.Route(blocked, "fake0"), *real(ipr)])
    monkeypatch.delenv("MINIBOX_SUBNET")
    caplog.set_level(logging.WARNING, logger="minibox.network")
    with running(bridged("true")) as box:
        assert box.ip is not None
        address = ipaddress.IPv4Address(box.ip)
        assert address in ipaddress.IPv4Network("10.88.0.0/16") and address not in blocked
        box.wait(10)
    assert any("collides with the host route 10.88.0.0/24 on fake0" in r.getMessage() for r in caplog.records)


# -- the pieces the VM side reuses ----------------------------------------------------

def test_tap_on_a_bridge_in_a_private_namespace(private_netns: str) -> None:
    gateway = ipaddress.IPv4Interface("10.99.0.1/24")
    with br.opened(private_netns) as ipr:
        assert br.ensure_bridge(ipr, "mbtap0", gateway) is True
        assert br.ensure_bridge(ipr, "mbtap0", gateway) is False  # already there, same address
        # the tun ioctl creates the tap in the calling thread's namespace: run it in ours
        # (with a netlink socket of that thread: a pyroute2 IPRoute belongs to its thread)
        def make_tap() -> int:
            with br.opened() as here:
                return br.open_tap(here, "mbtaptest", "mbtap0")

        fd = br.run_in_netns(private_netns, make_tap)
        tap = br.link_index(ipr, "mbtaptest")
        assert tap is not None and br.link_kind(ipr, tap) == "tun"
        assert ipr.get_links(tap)[0].get("IFLA_MASTER") == br.link_index(ipr, "mbtap0")
        assert "mbtaptest" not in links()  # not in the host's namespace
        os.close(fd)  # not persistent: gone with its fd
        assert br.link_index(ipr, "mbtaptest") is None
        assert br.remove_bridge(ipr, "mbtap0") is True
        assert br.link_index(ipr, "mbtap0") is None
