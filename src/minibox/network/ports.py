"""Published ports (``-p HOSTPORT:PORT``) as nftables DNAT rules in a table minibox owns.

Kernel feature: netfilter's NAT, driven by nft(8).  One table,
``ip minibox`` (configurable), with one chain on the ``output`` hook: the
hook that sees packets *this host* generates.  A rule per published port::

    ip daddr 10.88.0.1 tcp dport 8080 dnat to 10.88.0.2:80 comment "<owner> ..."

rewrites a connection the host opens to the bridge's gateway address on
HOSTPORT so it reaches the sandbox's PORT instead; conntrack rewrites the
replies back.  The kernel re-routes the packet after the output hook (the
new destination is on the bridge), and its source address is already the
gateway's, so no masquerading and no ``route_localnet`` are needed.

What is reachable, exactly: ``GATEWAY:HOSTPORT`` from processes on the
host (in the host's network namespace).  Not 127.0.0.1:HOSTPORT, not the
host's other addresses, and not from other machines: minibox never turns on
IP forwarding and never adds a prerouting rule, so nothing from outside is
ever let in (and :mod:`minibox.network.guard`'s forward rules drop it even
where the host forwards), and nothing leaves the machine.  Sandboxes reach one
another directly by address on the bridge.

Rules carry the owner's id in their comment.  They are added in one nft
transaction (all or none) and removed with the owner's other rules by
:func:`minibox.network.nft.remove_owner`; the table goes with its last
rule.  Every change happens under :func:`minibox.network.locked`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SpecError
from . import locked, nft

CHAIN = "output"


@dataclass(frozen=True)
class PortRule:
    """One published port, as read back from the table."""

    owner: str
    gateway: str
    host_port: int
    address: str
    port: int
    handle: int


def _comment(owner: str, gateway: str, host_port: int, address: str, port: int) -> str:
    return f"{owner} {gateway}:{host_port}->{address}:{port}"


def _parse_comment(comment: str, handle: int) -> PortRule | None:
    try:
        owner, mapping = comment.split(" ", 1)
        left, right = mapping.split("->")
        gateway, host_port = left.rsplit(":", 1)
        address, port = right.rsplit(":", 1)
        return PortRule(owner, gateway, int(host_port), address, int(port), handle)
    except ValueError:
        return None


def table_exists(table: str) -> bool:
    """Whether ``ip TABLE`` exists (where published ports live)."""
    return nft.table_exists(table, "ip")


def rules(table: str) -> list[PortRule]:
    """The published ports in ``table`` (empty when the table does not exist)."""
    found = []
    for rule in nft.rules(table, "ip"):
        if rule.get("chain") == CHAIN and "comment" in rule:
            parsed = _parse_comment(str(rule["comment"]), int(rule["handle"]))
            if parsed is not None:
                found.append(parsed)
    return found


def publish(table: str, owner: str, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address,
            ports: Sequence[tuple[int, int]]) -> None:
    """DNAT ``gateway:host_port`` to ``address:port`` for each pair; all or none.

    SpecError (naming ``ports[i]``) when another sandbox already publishes
    that host port on that gateway.
    """
    if not ports:
        return
    with locked():
        publish_locked(table, owner, gateway, address, ports)


def publish_locked(table: str, owner: str, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address,
                   ports: Sequence[tuple[int, int]]) -> None:
    """:func:`publish` for a caller that holds :func:`minibox.network.locked`."""
    existing = {(r.gateway, r.host_port): r.owner for r in rules(table)}
    seen: set[int] = set()
    for i, (host_port, _port) in enumerate(ports):
        other = existing.get((str(gateway), host_port))
        if other is not None:
            raise SpecError(f"ports[{i}]", f"host port {host_port} on {gateway} is already published by {other}")
        if host_port in seen:
            raise SpecError(f"ports[{i}]", f"host port {host_port} is published twice")
        seen.add(host_port)
    lines = [f"add table ip {table}",
             f"add chain ip {table} {CHAIN} {{ type nat hook output priority -100; policy accept; }}"]
    for host_port, port in ports:
        comment = _comment(owner, str(gateway), host_port, str(address), port)
        lines.append(f"add rule ip {table} {CHAIN} ip daddr {gateway} tcp dport {host_port} "
                     f"dnat to {address}:{port} comment \"{comment}\"")
    nft.apply(lines)
