"""VM networking: a tap on the minibox bridge, virtio-net and eth0 in the guest.

The point of the design: a container (a veth into a network namespace of
the host kernel) and a VM (a tap whose other end is QEMU's virtio-net, in
front of a guest kernel) are ports of the same bridge and talk like two
containers do.

Safety: like test_container_network.py, every test uses a bridge, subnet
and nft table of its own (MINIBOX_BRIDGE, MINIBOX_SUBNET, MINIBOX_NFT_TABLE,
clear of the host's routes), and the only traffic is between interfaces the
tests create: taps, veths, and the test bridge's own address.  A module
fixture checks that no tap, veth, bridge, lease, nft table or VM state file
is left.  The guests boot under TCG here (a few seconds each).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from minibox import Container, Mount, PreflightError, Spec, SpecError
from minibox.container.network import veth_name
from minibox.network import bridge as br
from minibox.network import ipam, network_dir, ports
from minibox.paths import runtime_dir
from minibox.vm import VirtualMachine
from minibox.vm import network as vmnet

from ..conftest import needs_root
from .helpers import links, nft_tables, on_test_network, read_from

pytestmark = needs_root

BRIDGE = f"mbn{os.getpid() % 100000}"
TABLE = f"minibox_vmt{os.getpid() % 100000}"





def _vm_records() -> set[str]:
    return {p.name for p in runtime_dir().glob("vm-*.json")}


@pytest.fixture(scope="module", autouse=True)
def test_network() -> Iterator[ipaddress.IPv4Network]:
    """Point minibox at a test bridge/subnet/table; afterwards, check nothing is left."""
    with on_test_network("10.214.0.0/16", BRIDGE, TABLE) as subnet:
        yield subnet
    assert BRIDGE not in links(), "the test bridge was left behind"
    assert set(PORT_NAMES) & links() == set(), "interfaces left behind"
    assert {t for t in nft_tables() if t.split()[1] == TABLE} == set(), "nft tables left behind"
    assert list(network_dir().glob("*.json")) == [], "lease files left behind"


#: Every sandbox a test made here (other sessions may run sandboxes on this host at the same time).
MADE: list[Container | VirtualMachine] = []
#: The veth and tap names of every sandbox of this module, the gc test's too.
PORT_NAMES: list[str] = []


def _port_name(box: Container | VirtualMachine) -> str:
    return vmnet.tap_name(box.id) if isinstance(box, VirtualMachine) else veth_name(box.id)


@pytest.fixture(autouse=True)
def nothing_left_per_test() -> Iterator[None]:
    records_before = _vm_records()
    MADE.clear()
    yield
    PORT_NAMES.extend(map(_port_name, MADE))
    left = [name for name in map(_port_name, MADE) if name in links()]
    assert left == [], "tap or veth left behind"
    assert BRIDGE not in links(), "the bridge outlived its last sandbox"
    assert not ports.table_exists(TABLE)
    assert ipam.leases(BRIDGE) == {}
    assert _vm_records() - records_before == set(), "VM state file left behind"


def vm(busybox_rootfs: str, script: str, **kw: Any) -> VirtualMachine:
    box = VirtualMachine(Spec(argv=["/bin/sh", "-c", script], rootfs=busybox_rootfs, network="bridge", **kw))
    MADE.append(box)
    return box


def bridged(script: str, **kw: Any) -> Container:
    box = Container(Spec(argv=["/bin/sh", "-c", script], network="bridge", **kw))
    MADE.append(box)
    return box


@contextlib.contextmanager
def running_vm(box: VirtualMachine) -> Iterator[VirtualMachine]:
    with box:
        yield box


@contextlib.contextmanager
def running(box: Container) -> Iterator[Container]:
    with box:
        yield box


def gateway_of(subnet: ipaddress.IPv4Network) -> str:
    return str(subnet.network_address + 1)


# -- the guest's side ------------------------------------------------------------------

def test_a_vm_gets_its_leased_address_eth0_up_and_etc_files(test_network: ipaddress.IPv4Network,
                                                            busybox_rootfs: str) -> None:
    hosts_before = open(f"{busybox_rootfs}/etc/hosts", "rb").read()
    script = ("ls /sys/class/net; ip -o -4 addr show eth0; ip -o link show eth0; ip route; "
              "cat /etc/hosts /etc/hostname; echo x > /etc/hosts 2>/dev/null || echo read-only")
    with running_vm(vm(busybox_rootfs, script, hostname="vmbox")) as box:
        ip = box.ip
        # the host's end: a tap, a port of the test bridge, named after the VM
        with br.opened() as ipr:
            tap = br.link_index(ipr, vmnet.tap_name(box.id))
            assert tap is not None and br.link_kind(ipr, tap) == "tun"
            assert ipr.get_links(tap)[0].get("IFLA_MASTER") == br.link_index(ipr, BRIDGE)
        result = box.wait(120)
    out = result.stdout.decode()
    assert result.exit_code == 0, (out, result.stderr)
    assert ip is not None and ipaddress.IPv4Address(ip) in test_network
    assert out.split()[:2] == ["eth0", "lo"]
    assert f"inet {ip}/{test_network.prefixlen}" in out
    link = next(line for line in out.splitlines() if ": eth0: <" in line)
    assert ",UP," in link and "LOWER_UP" in link
    assert vmnet.guest_mac(box.id) in link
    assert f"default via {gateway_of(test_network)} dev eth0" in out
    assert f"{ip}\tvmbox" in out and "\nvmbox\n" in out
    assert out.rstrip().endswith("read-only")
    assert open(f"{busybox_rootfs}/etc/hosts", "rb").read() == hosts_before  # the shared rootfs is untouched
    assert vmnet.tap_name(box.id) not in links()  # gone with QEMU


def test_host_networking_is_still_refused_for_a_vm(busybox_rootfs: str) -> None:
    with pytest.raises(SpecError, match="host's network stack"):
        VirtualMachine(Spec(argv=["true"], rootfs=busybox_rootfs, network="host"))


# -- a container and a VM on one bridge ---------------------------------------------------

CONNECT = "for i in $(seq 150); do echo {msg} | nc {ip} 8080 && exit 0; sleep 0.2; done; exit 1"
# The listener's stdin stays open (busybox nc stops at its own stdin's EOF,
# possibly before the peer's bytes arrive); then it stays alive for exec.
LISTEN = "sleep 60 | nc -l -p 8080 > /tmp/got; exec sleep 60"


def _received(box: Container | VirtualMachine, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        got = box.exec(["cat", "/tmp/got"], timeout=30).stdout
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_a_container_and_a_vm_exchange_tcp_both_ways(busybox_rootfs: str) -> None:
    # The VM's /tmp is a tmpfs: its rootfs is the host's directory (virtiofs).
    guest = vm(busybox_rootfs, LISTEN, mounts=[Mount.tmpfs("/tmp")])
    with running(bridged(LISTEN, mounts=[Mount.tmpfs("/tmp")])) as box, running_vm(guest) as machine:
        assert box.ip and machine.ip and box.ip != machine.ip
        container_to_vm = box.exec(["/bin/sh", "-c", CONNECT.format(msg="from-container", ip=machine.ip)],
                                   timeout=60)
        vm_to_container = machine.exec(["/bin/sh", "-c", CONNECT.format(msg="from-vm", ip=box.ip)], timeout=60)
        assert container_to_vm.exit_code == 0, container_to_vm
        assert vm_to_container.exit_code == 0, vm_to_container
        assert _received(machine) == b"from-container\n"
        assert _received(box) == b"from-vm\n"
        box.kill()
        machine.kill()


# -- template clones on the bridge ---------------------------------------------------------

CLONE_PROBE = "ip -o link show eth0; ip -o -4 addr show eth0; ip route; cat /etc/hostname /etc/hosts"


def clone(script: str, **kw: Any) -> VirtualMachine:
    from minibox.vm.clone import TemplateClone

    box = TemplateClone(Spec(argv=["/bin/sh", "-c", script], network="bridge", mounts=[Mount.tmpfs("/tmp")], **kw))
    MADE.append(box)
    return box


def test_two_bridged_clones_of_one_template_have_their_own_mac_and_address_and_talk(
        test_network: ipaddress.IPv4Network) -> None:
    """Restored from one template (one NIC state in its RAM), each clone is a port of its own."""
    from minibox.vm import templates

    assert templates.ineligible(Spec(argv=["true"], network="bridge")) is None
    first, second = clone(LISTEN, hostname="one"), clone(LISTEN, hostname="two")
    with running_vm(first) as a, running_vm(second) as b:
        assert a.restore_seconds > 0 and b.restore_seconds > 0  # restored, not booted  # type: ignore[attr-defined]
        views = [box.exec(["/bin/sh", "-c", CLONE_PROBE], timeout=60).stdout.decode() for box in (a, b)]
        for box, view, name in ((a, views[0], "one"), (b, views[1], "two")):
            assert box.ip is not None and ipaddress.IPv4Address(box.ip) in test_network
            link = next(line for line in view.splitlines() if ": eth0: <" in line)
            assert vmnet.guest_mac(box.id) in link and ",UP," in link, view  # its own MAC, set before link up
            assert f"inet {box.ip}/{test_network.prefixlen}" in view
            assert f"default via {gateway_of(test_network)} dev eth0" in view
            assert f"\n{name}\n" in view and f"{box.ip}\t{name}" in view  # its own /etc/hostname and hosts
        assert a.ip != b.ip and vmnet.guest_mac(a.id) != vmnet.guest_mac(b.id)
        # each reaches the other's listener through the bridge, under its guard rules
        a_to_b = a.exec(["/bin/sh", "-c", CONNECT.format(msg="from-one", ip=b.ip)], timeout=60)
        b_to_a = b.exec(["/bin/sh", "-c", CONNECT.format(msg="from-two", ip=a.ip)], timeout=60)
        assert (a_to_b.exit_code, b_to_a.exit_code) == (0, 0), (a_to_b, b_to_a)
        assert _received(b) == b"from-one\n" and _received(a) == b"from-two\n"
        a.kill()
        b.kill()


def test_a_bridged_pool_vm_is_addressed_when_handed_out(test_network: ipaddress.IPv4Network) -> None:
    from minibox.vm import Pool

    spec = Spec(argv=["true"], network="bridge")
    with Pool(spec, size=1) as pool:
        vm = pool.take(Spec(argv=["/bin/sh", "-c", "ip -o -4 addr show eth0; ip -o link show eth0"],
                            network="bridge"))
        MADE.append(vm)
        with vm:
            ip, result = vm.ip, vm.wait(60)
        pool.wait_ready(120)
        MADE.extend(pool._ready)
        with pytest.raises(SpecError, match="network"):
            pool.take(Spec(argv=["true"]))  # a pool's VMs have their place on the bridge already
    assert ip is not None and ipaddress.IPv4Address(ip) in test_network
    assert f"inet {ip}/" in result.stdout.decode() and vmnet.guest_mac(vm.id) in result.stdout.decode(), result


# -- published ports --------------------------------------------------------------------


def test_a_published_port_reaches_a_server_in_the_vm(test_network: ipaddress.IPv4Network,
                                                     busybox_rootfs: str) -> None:
    with running_vm(vm(busybox_rootfs, "echo served-from-vm | nc -l -p 80", ports=[(18190, 80)])) as box:
        rule = ports.rules(TABLE)[0]
        assert (rule.owner, rule.host_port, rule.address, rule.port) == (box.id, 18190, box.ip, 80)
        assert read_from(gateway_of(test_network), 18190, timeout=60) == b"served-from-vm\n"
        assert box.wait(60).stdout == b"ping\n"
    assert not ports.table_exists(TABLE)


# -- failures half way, and gc ----------------------------------------------------------------

def test_a_host_port_taken_by_a_container_is_refused_and_the_vm_leaves_nothing(busybox_rootfs: str) -> None:
    with running(bridged("sleep 30", ports=[(18191, 80)])) as first:
        second = vm(busybox_rootfs, "true", ports=[(18191, 80)])
        with pytest.raises(SpecError) as err:
            second.start()
        second.close()
        assert err.value.field == "ports[0]"
        assert [r.owner for r in ports.rules(TABLE)] == [first.id]
        assert len(ipam.leases(BRIDGE)) == 1
        first.kill()


def test_a_failure_after_the_tap_exists_leaves_nothing(monkeypatch: pytest.MonkeyPatch,
                                                       busybox_rootfs: str) -> None:
    seen: list[str] = []
    real_popen = subprocess.Popen

    def qemu_fails(argv: list[str], *args: Any, **kw: Any) -> Any:
        if "-kernel" not in argv:  # virtiofsd, qemu --version: the real thing
            return real_popen(argv, *args, **kw)
        seen.extend(name for name in links() if name.startswith("mbtap"))
        raise OSError(errno.ENOEXEC, "simulated")

    monkeypatch.setattr(subprocess, "Popen", qemu_fails)  # the module virtual_machine uses
    box = vm(busybox_rootfs, "true", ports=[(18192, 80)])
    with pytest.raises(PreflightError, match="simulated"):
        box.start()
    box.close()
    assert seen == [vmnet.tap_name(box.id)]  # it existed; the per-test fixture checks it is gone


OWNER = """
import json, os, signal, sys
from minibox import Spec
from minibox.vm import VirtualMachine
vm = VirtualMachine(Spec(argv=["sleep", "1000"], rootfs=sys.argv[1], network="bridge", ports=[(18193, 80)]))
vm.start()
print(json.dumps({"id": vm.id, "qemu": vm.pid}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_gc_releases_the_network_of_a_killed_callers_vm(busybox_rootfs: str) -> None:
    owner = subprocess.run([sys.executable, "-c", OWNER, busybox_rootfs], capture_output=True, timeout=300,
                           env=os.environ.copy(), check=False)
    assert owner.returncode == -signal.SIGKILL, owner.stderr.decode(errors="replace")
    started = json.loads(owner.stdout)
    qemu = started["qemu"]
    try:
        # what the killed caller left: QEMU (so the tap), the lease, the port rule
        assert vmnet.tap_name(started["id"]) in links()
        assert ports.table_exists(TABLE) and len(ipam.leases(BRIDGE)) == 1
        from minibox.gc import collect

        assert f"vm {started['id']}" in collect().removed
        assert vmnet.tap_name(started["id"]) not in links()  # gone with the QEMU gc killed
        PORT_NAMES.append(vmnet.tap_name(started["id"]))
    finally:
        # only if gc failed: the QEMU this test's own child started, by pid
        with contextlib.suppress(OSError):
            if open(f"/proc/{qemu}/comm").read().startswith("qemu-system"):
                os.kill(qemu, signal.SIGKILL)
    # the per-test fixture checks that tap, bridge, table, lease and record are gone
