"""The bridge port's guard rules as data, and the Spec field that opens the host (no root needed).

The rules' effect on real frames is shown by tests/security/test_bridge_isolation.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from minibox import Spec, SpecError
from minibox.network import guard
from minibox.network.attachment import port_mac


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
