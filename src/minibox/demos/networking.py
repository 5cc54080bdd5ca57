"""Demo: a container and a VM talking over one bridge.

Kernel features: the Linux bridge (a software switch), veth(4) pairs into a
network namespace (network_namespaces(7)), tap devices (the kernel's
Documentation/networking/tuntap.rst) behind QEMU's ``-netdev tap`` and the
guest's virtio-net, and an nftables DNAT rule for a published port.

Both sandboxes ask for the same thing, ``Spec(network="bridge")``, and end
up as two ports of the same bridge.  How they get there differs, and that
difference is the container/VM difference in miniature: the container's
eth0 is a veth end in a namespace of *the host's* kernel, configured by
minibox from the host over rtnetlink; the VM's eth0 belongs to *its own*
kernel, behind a tap whose fd QEMU holds, and the guest agent configures it
from inside.  Then they exchange TCP both ways, and the host reaches a
server in the VM through a published port.

The bridge is minibox's default (``MINIBOX_BRIDGE``/``MINIBOX_SUBNET``
choose another).  All traffic stays between the bridge's own address, the
veth and the tap: no forwarding, no NAT to the outside.  Everything is
removed on every exit path, Ctrl-C included (the ``with`` blocks close the
sandboxes, which release the veth, the tap, the port rule, the leases and
-- with the last lease -- the bridge).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from minibox import Container, Mount, Result, Spec
from minibox.container import network as container_network
from minibox.network import bridge, config_from_env, guard, ipam, nft
from minibox.vm import VirtualMachine
from minibox.vm import network as vm_network

from ._narrate import heading, pointer, say, show

#: Each side listens here for the other's message.
PORT = 8080
#: The host port published to the VM's port 80 (on the bridge's own address).
HOST_PORT = 18480
# The listener's stdin stays open until the message arrived (busybox nc stops at
# its own stdin's EOF); afterwards the sandbox stays alive for exec.
LISTEN = f"sleep 120 | nc -l -p {PORT} > /tmp/got; exec sleep 120"
CONNECT = "for i in $(seq 150); do echo {msg} | nc {ip} {port} && exit 0; sleep 0.2; done; exit 1"


def _ports_of(bridge_name: str) -> list[tuple[str, str]]:
    """(name, kind) of every interface enslaved to ``bridge_name``, read over rtnetlink."""
    with bridge.opened() as ipr:
        index = bridge.link_index(ipr, bridge_name)
        found = []
        for link in ipr.get_links():
            if index is not None and link.get("IFLA_MASTER") == index:
                info = link.get("IFLA_LINKINFO")
                found.append((str(link.get("IFLA_IFNAME")), str(info.get("IFLA_INFO_KIND")) if info else "?"))
    return sorted(found)


def _netdev_args(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    picked = [f"{argv[i].decode()} {argv[i + 1].decode()}" for i in range(len(argv) - 1)
              if argv[i] == b"-netdev" or (argv[i] == b"-device" and b"virtio-net" in argv[i + 1])]
    return "  ".join(picked)


def _received(box: Container | VirtualMachine, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got = box.exec(["cat", "/tmp/got"], timeout=30).stdout
        if got or time.monotonic() > deadline:
            return got.decode().strip() or "(nothing)"
        time.sleep(0.1)


def _ask_published_port(gateway: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((gateway, HOST_PORT), timeout=2) as conn:
                conn.shutdown(socket.SHUT_WR)
                data = conn.recv(4096)
                if data:
                    return data.decode().strip()
        except OSError:
            pass
        if time.monotonic() > deadline:
            return "(no answer)"
        time.sleep(0.1)


def main() -> int:
    if os.geteuid() != 0:
        say("this demo needs root (it creates a bridge, a veth pair and a tap device): run it with sudo")
        return 1
    config = config_from_env()
    say("Two sandboxes, one Spec field: network=\"bridge\".  A container and a VM both become")
    say(f"ports of the bridge {config.bridge!r}; how they get there is the difference between them.")

    tmp = [Mount.tmpfs("/tmp")]  # the message lands in a tmpfs, not in the shared rootfs
    with Container(Spec(argv=["/bin/sh", "-c", LISTEN], network="bridge", hostname="box", mounts=tmp)) as box:
        heading("the container: a veth pair into its network namespace")
        show("its address", box.ip)
        show("the host's end of the pair", container_network.veth_name(box.id))
        say("  One RTM_NEWLINK makes the pair; the peer is born inside the container's namespace")
        say("  (IFLA_NET_NS_PID) as eth0.  minibox then sets eth0's address and route *from the host*:")
        say("  the container's namespace is just another namespace of the host's kernel.")
        pointer("veth pair, peer created in the child's namespace", bridge.add_veth)
        pointer("address and default route set from the host, over rtnetlink", bridge.configure_inside)
        show("inside: eth0", box.exec(["ip", "-o", "-4", "addr", "show", "eth0"]).stdout.decode().split("\\")[0])
        show("inside: kernel", box.exec(["uname", "-r"]).stdout.decode().strip() + "  (the host's: "
             + os.uname().release + ")")

        heading("the VM: a tap device whose other end is QEMU, then a guest kernel")
        say("  (booting a guest kernel; under TCG this takes a few seconds)")
        spec = Spec(argv=["/bin/sh", "-c", LISTEN], network="bridge", hostname="vm", mounts=tmp,
                    ports=[(HOST_PORT, 80)])
        with VirtualMachine(spec) as vm:
            show("its address", vm.ip)
            show("the host's tap", vm_network.tap_name(vm.id))
            say("  minibox opens /dev/net/tun, TUNSETIFF makes the tap, and the fd is all QEMU gets:")
            if vm.pid is not None:
                show("QEMU's NIC", _netdev_args(vm.pid))
            say("  The tap is not persistent: once QEMU holds the only fd, it lives exactly as long as QEMU.")
            pointer("the tap, made in the thread that starts QEMU", bridge.open_tap)
            pointer("the VM's attachment: lease, tap, ports, release", vm_network.VmNetwork)
            say("  The host cannot configure eth0 of *another kernel*.  It writes the address into the")
            say("  initramfs (config record N) and the guest agent sets it from inside with ioctls:")
            say("  csrc/agent/agent.c, setup_network(): SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT")
            pointer("the N record", vm_network.VmNetwork.guest_config)
            show("inside: eth0", vm.exec(["ip", "-o", "-4", "addr", "show", "eth0"]).stdout.decode().split("\\")[0])
            show("inside: kernel", vm.kernel_release + "  (its own)")

            heading("one bridge, two kinds of ports")
            for name, kind in _ports_of(config.bridge):
                show(name, f"{kind}  ({'a container' if kind == 'veth' else 'a VM' if kind == 'tun' else '?'})")
            leases = ipam.leases(config.bridge)
            for address, entry in sorted(leases.items()):
                if entry.get("owner") in (box.id, vm.id):
                    show(f"lease {address}", f"{entry['kind']} {entry['owner']} via {entry['link']}")

            heading("each port's guard: it sends only as itself, the host is closed, nothing is routed")
            say("  (nftables rules per port, read back from the kernel; the published port's DNAT is left out)")
            for owner in (box.id, vm.id):
                whys = [str(rule.get("comment", "")).split(": ", 1)[-1]
                        for family in nft.FAMILIES for rule in nft.rules(config.nft_table, family)
                        if nft.owner_of(rule) == owner and rule.get("chain") != "output"]
                show(owner, f"{len(whys)} rules: " + "; ".join(dict.fromkeys(whys)))
            pointer("the rules, installed with the lease", guard.commands)

            heading("TCP both ways, over the bridge (layer 2: no routing, no NAT)")
            assert box.ip is not None and vm.ip is not None
            to_vm = CONNECT.format(msg="hello-from-the-container", ip=vm.ip, port=PORT)
            to_box = CONNECT.format(msg="hello-from-the-vm", ip=box.ip, port=PORT)
            there = box.exec(["/bin/sh", "-c", to_vm], timeout=60)
            back = vm.exec(["/bin/sh", "-c", to_box], timeout=60)
            show(f"container -> {vm.ip}:{PORT}", "sent" if there.exit_code == 0 else f"failed {there}")
            show(f"vm -> {box.ip}:{PORT}", "sent" if back.exit_code == 0 else f"failed {back}")
            show("the VM received", _received(vm))
            show("the container received", _received(box))

            heading("a published port: the host reaches a server in the VM")
            with bridge.opened() as ipr:
                own = bridge.bridge_address(ipr, config.bridge)  # the bridge's own address: the gateway
            gateway = str(own.ip) if own is not None else "?"
            say(f"  nft DNAT on the output hook: {gateway}:{HOST_PORT} -> {vm.ip}:80, for the host's own connections")
            served: list[Result] = []
            server = threading.Thread(target=lambda: served.append(vm.exec(
                ["/bin/sh", "-c", "echo served-from-the-vm | nc -l -p 80"], timeout=60)), daemon=True)
            server.start()
            show(f"host -> {gateway}:{HOST_PORT}", _ask_published_port(gateway))
            server.join()
            vm.kill()
        box.kill()
    heading("after close(): what is left of both")
    links = set(os.listdir("/sys/class/net"))
    for name in (container_network.veth_name(box.id), vm_network.tap_name(vm.id)):
        show(f"device {name}", "still there" if name in links else "gone")
    mine = [address for address, entry in ipam.leases(config.bridge).items() if entry.get("owner") in (box.id, vm.id)]
    show("their leases", ", ".join(mine) or "none left")
    rules = [rule for family in nft.FAMILIES for rule in nft.rules(config.nft_table, family)
             if nft.owner_of(rule) in (box.id, vm.id)]
    show("their nftables rules", len(rules))
    show(f"bridge {config.bridge}", "present" if config.bridge in links else "absent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
