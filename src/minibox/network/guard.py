"""What a bridge port may send, and where to: no spoofing, the host closed, nothing forwarded.

Kernel feature: netfilter through nft(8), in two families.  The ``bridge``
family filters Ethernet frames as the bridge receives them from a port
(the ``prerouting`` hook, before the bridge decides where a frame goes,
so it covers frames to other ports and to the host alike); the ``ip``
family filters IPv4 packets the host receives (``input``) and routes
(``forward``).  See nft(8), "ADDRESS FAMILIES" and "ARP HEADER EXPRESSION".

A sandbox on the bridge is untrusted.  With ``CAP_NET_RAW`` (or a VM's
root, which always has it inside its own kernel) it can write any frame it
likes: forge another sandbox's MAC or IP, answer ARP for the gateway or a
neighbour (ARP poisoning), or open connections to services the host binds
to ``0.0.0.0``.  So every port gets, installed with its lease and removed
with it (rules tagged with the owner's id, :mod:`minibox.network.nft`):

``bridge <table>``, chain ``ports`` -- from the sandbox's veth or tap
(``iifname``), drop every frame whose

* Ethernet source is not the port's own MAC (no MAC spoofing, no flooding
  of the bridge's forwarding table);
* EtherType is neither IPv4 nor ARP (IPv6, VLAN tags and the rest: minibox's
  bridge is IPv4 only, so nothing unfiltered gets through);
* ARP header is not Ethernet/IPv4, or whose ARP *sender* MAC or IP is not the
  port's own (no ARP replies or gratuitous ARP for someone else's address);
* IPv4 source is not the port's leased address.

``ip <table>``, chain ``host`` (hook ``input``) -- unless the Spec sets
``host_access=True``: from the bridge, with the port's (now authentic)
source address, drop everything that is not part of a connection the host
itself opened (``ct state != {established, related}``).  A sandbox cannot
connect to the gateway address or to any other address of the host (a
packet to any of them is delivered locally, so it passes ``input``); the
replies of a published port (the host connects, :mod:`minibox.network.ports`)
are ``established`` and pass.

``ip <table>``, chain ``forward`` -- always: drop the port's packets routed
off the bridge and packets routed onto the bridge for it from elsewhere.
minibox never enables IP forwarding, but the host's administrator may have
(a router, a Docker host); these rules keep "nothing leaves the machine"
true either way.

Sandboxes on the bridge still reach each other directly (layer 2, never
through these IP hooks).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import locked, nft

BRIDGE_CHAIN = "ports"
INPUT_CHAIN = "host"
FORWARD_CHAIN = "forward"


@dataclass(frozen=True)
class PortGuard:
    """The rules of one port: whose it is, the link it arrives on, and what it may claim to be."""

    owner: str
    bridge: str
    link: str
    mac: str
    address: ipaddress.IPv4Address
    host_access: bool = False


def commands(table: str, guard: PortGuard) -> list[str]:
    """The nft commands that install ``guard`` into minibox's ``table`` (pure: no nft run here)."""
    port, mac, ip = f'iifname "{guard.link}"', guard.mac, guard.address

    def tag(why: str) -> str:
        return f'comment "{guard.owner} {guard.link}: {why}"'

    layer2 = [f"ether saddr != {mac} drop {tag('its own MAC only')}",
              f"ether type != {{ ip, arp }} drop {tag('IPv4 and ARP only')}",
              f"arp htype != 1 drop {tag('ARP for Ethernet only')}",
              f"arp ptype != ip drop {tag('ARP for IPv4 only')}",
              f"arp hlen != 6 drop {tag('ARP with 6-byte MACs only')}",
              f"arp plen != 4 drop {tag('ARP with 4-byte addresses only')}",
              f"arp saddr ether != {mac} drop {tag('ARP sender is its own MAC')}",
              f"arp saddr ip != {ip} drop {tag('ARP sender is its own address')}",
              f"ip saddr != {ip} drop {tag('IPv4 source is its own address')}"]
    lines = [f"add table bridge {table}",
             f"add chain bridge {table} {BRIDGE_CHAIN} {{ type filter hook prerouting priority -200; "
             "policy accept; }",
             *(f"add rule bridge {table} {BRIDGE_CHAIN} {port} {rule}" for rule in layer2),
             f"add table ip {table}",
             f"add chain ip {table} {INPUT_CHAIN} {{ type filter hook input priority 0; policy accept; }}",
             f"add chain ip {table} {FORWARD_CHAIN} {{ type filter hook forward priority 0; policy accept; }}"]
    on_bridge = f'iifname "{guard.bridge}"'
    if not guard.host_access:
        lines.append(f"add rule ip {table} {INPUT_CHAIN} {on_bridge} ip saddr {ip} "
                     f"ct state != {{ established, related }} drop {tag('no connections to the host')}")
    lines += [f"add rule ip {table} {FORWARD_CHAIN} {on_bridge} ip saddr {ip} oifname != \"{guard.bridge}\" "
              f"drop {tag('nothing routed off the bridge')}",
              f"add rule ip {table} {FORWARD_CHAIN} oifname \"{guard.bridge}\" ip daddr {ip} "
              f"iifname != \"{guard.bridge}\" drop {tag('nothing routed onto the bridge')}"]
    return lines


def install(table: str, guard: PortGuard) -> None:
    """Add ``guard``'s rules in one transaction (all or none).  Remove them with
    :func:`minibox.network.nft.remove_owner`."""
    with locked():
        nft.apply(commands(table, guard))
