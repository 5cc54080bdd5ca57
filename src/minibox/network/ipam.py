"""IP address management: leases on the minibox bridge, safe across threads and processes.

Kernel features: flock(2) for mutual exclusion between processes, and the
IPv4 routing table read over rtnetlink(7) (see :mod:`minibox.network.bridge`)
to keep the bridge's subnet clear of the host's own networks.

One JSON file per bridge, ``runtime_dir()/network/<bridge>.json``, holds the
bridge's subnet, whether minibox created the bridge, and the leases::

    {"bridge": "minibox0", "subnet": "10.88.0.0/24", "gateway": "10.88.0.1",
     "created": true,
     "leases": {"10.88.0.2": {"owner": "3f2a...", "kind": "container",
                              "holder": [4242, 123456], "pid": [4250, 123460],
                              "link": "mbv3f2a...", "nft_table": "minibox"}}}

Every read-modify-write happens under :func:`minibox.network.locked`, so
twenty threads or processes starting at once get twenty addresses.  The
file lives in the runtime directory (a tmpfs under /run for root), like
the bridge itself it does not survive a reboot.

A lease names the process that took it (``holder``) and, once known, the
sandbox's own process (``pid``), each with its start time so a recycled pid
is not mistaken for it.  A lease whose processes are both gone is
reclaimed -- its veth or tap and its rules removed -- before a new
address is handed out; ``minibox gc`` does the same for whole records.

The bridge is created with the first lease and removed with the last one,
when minibox created it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PreflightError, SpecError
from ..procfs import start_time
from . import DEFAULT_POOL, DEFAULT_PREFIXLEN, NetworkConfig, locked, network_dir

log = logging.getLogger("minibox.network")


@dataclass(frozen=True)
class Lease:
    """An address on the bridge, held by sandbox ``owner``.

    ``address`` carries the prefix length (``10.88.0.2/24``); ``gateway`` is
    the bridge's own address, the sandbox's default route.
    """

    owner: str
    bridge: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.address.network


def _state_path(bridge: str) -> Path:
    return network_dir() / f"{bridge}.json"


def owner_dir(owner: str) -> Path:
    """A scratch directory for sandbox ``owner`` (generated /etc files); removed with its lease."""
    return network_dir() / "sandboxes" / owner


def _load(bridge: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(_state_path(bridge).read_text())
        return data
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise PreflightError(f"{_state_path(bridge)} is damaged; remove it (and the bridge) by hand") from e


def _save(bridge: str, state: dict[str, Any]) -> None:
    path = _state_path(bridge)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _alive(ident: list[int] | None) -> bool:
    return bool(ident) and start_time(int(ident[0])) == ident[1]  # type: ignore[index]


def _me() -> list[int]:
    pid = os.getpid()
    return [pid, start_time(pid) or 0]


def leases(bridge: str) -> dict[str, dict[str, Any]]:
    """The current leases of ``bridge`` (address -> entry), read under the lock."""
    with locked():
        state = _load(bridge)
    return dict(state["leases"]) if state else {}


def _pick_subnet(ipr: Any, config: NetworkConfig, state: dict[str, Any] | None) -> tuple[
        ipaddress.IPv4Interface, bool]:
    """The bridge's gateway interface (10.88.0.1/24) and whether minibox owns the bridge."""
    from . import bridge as br

    if state is not None:
        gateway = ipaddress.IPv4Interface(f"{state['gateway']}/{ipaddress.IPv4Network(state['subnet']).prefixlen}")
        if config.subnet is not None and config.subnet != gateway.network:
            raise PreflightError(f"bridge {config.bridge} already uses {gateway.network}, not {config.subnet}")
        return gateway, bool(state.get("created"))
    existing = br.link_index(ipr, config.bridge)
    if existing is not None:
        # A bridge without a state file: made by someone else, or left by a
        # minibox whose state was lost.  Use its address, never change it.
        have = br.bridge_address(ipr, config.bridge)
        if have is None:
            raise PreflightError(f"interface {config.bridge!r} exists without an IPv4 address; "
                                 "minibox does not change interfaces it did not create")
        if config.subnet is not None and config.subnet != have.network:
            raise PreflightError(f"bridge {config.bridge} exists with {have.network}, not {config.subnet}")
        return have, br.link_alias(ipr, existing) == br.OWNER_ALIAS
    subnet, message = br.choose_subnet(config.subnet, br.host_routes(ipr), own_device=config.bridge,
                                       pool=DEFAULT_POOL, prefixlen=DEFAULT_PREFIXLEN)
    if message:
        log.warning("%s", message)
    gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
    return gateway, True


def _reclaim_stale(state: dict[str, Any]) -> None:
    """Drop leases whose holder and sandbox processes are both gone, with what they left."""
    from . import bridge as br
    from . import nft

    for address, entry in list(state["leases"].items()):
        if _alive(entry.get("holder")) or _alive(entry.get("pid")):
            continue
        log.info("minibox: reclaiming %s from dead sandbox %s", address, entry.get("owner"))
        _cleanup_entry(entry, br, nft)
        del state["leases"][address]


def _cleanup_entry(entry: dict[str, Any], br: Any, nft: Any) -> None:
    if entry.get("link"):
        with br.opened() as ipr:
            br.delete_link(ipr, entry["link"])
    if entry.get("nft_table"):
        nft.remove_owner(entry["nft_table"], entry["owner"])
    shutil.rmtree(owner_dir(entry["owner"]), ignore_errors=True)


def acquire(owner: str, config: NetworkConfig, *, requested: str | None = None, kind: str = "container",
            link: str | None = None, nft_table: str | None = None) -> Lease:
    """Lease an address for sandbox ``owner`` on ``config.bridge``, creating the bridge if needed.

    ``requested`` is a fixed address (``--ip``); SpecError when it is outside
    the subnet, reserved or taken.  ``link`` (the veth or tap name) and
    ``nft_table`` are recorded so a reclaimed lease can be cleaned fully.
    """
    from . import bridge as br

    with locked():
        state = _load(config.bridge)
        with br.opened() as ipr:
            gateway, owned = _pick_subnet(ipr, config, state)
            subnet = gateway.network
            if state is None:
                state = {"bridge": config.bridge, "subnet": str(subnet), "gateway": str(gateway.ip),
                         "created": owned, "leases": {}}
            _reclaim_stale(state)
            taken = set(state["leases"])
            if requested is not None:
                try:
                    wanted = ipaddress.IPv4Address(requested)
                except ValueError as e:
                    raise SpecError("ip", f"{requested!r} is not an IPv4 address") from e
                if wanted not in subnet:
                    raise SpecError("ip", f"{wanted} is outside the bridge's subnet {subnet}")
                if wanted in (subnet.network_address, subnet.broadcast_address, gateway.ip):
                    raise SpecError("ip", f"{wanted} is reserved (network, broadcast or the gateway)")
                if str(wanted) in taken:
                    raise SpecError("ip", f"{wanted} is already leased to {state['leases'][str(wanted)]['owner']}")
                address = wanted
            else:
                for candidate in subnet.hosts():
                    if candidate != gateway.ip and str(candidate) not in taken:
                        address = candidate
                        break
                else:
                    raise PreflightError(f"no free address left in {subnet} on {config.bridge}")
            created_now = br.ensure_bridge(ipr, config.bridge, gateway)
            if created_now:
                state["created"] = True
            state["leases"][str(address)] = {"owner": owner, "kind": kind, "holder": _me(), "pid": None,
                                             "link": link, "nft_table": nft_table}
            try:
                _save(config.bridge, state)
            except OSError:
                if created_now:
                    br.remove_bridge(ipr, config.bridge)
                raise
    return Lease(owner=owner, bridge=config.bridge,
                 address=ipaddress.IPv4Interface(f"{address}/{subnet.prefixlen}"), gateway=gateway.ip)


def update(bridge: str, owner: str, **fields: Any) -> None:
    """Set fields of ``owner``'s lease: ``pid=[pid, starttime]``, ``link=...``, ``nft_table=...``."""
    with locked():
        state = _load(bridge)
        if state is None:
            return
        for entry in state["leases"].values():
            if entry["owner"] == owner:
                entry.update(fields)
        _save(bridge, state)


def sandbox_identity(pid: int) -> list[int] | None:
    """``[pid, starttime]`` for :func:`update` (``pid=``), or None if the process is gone."""
    start = start_time(pid)
    return None if start is None else [pid, start]


def release(bridge: str, owner: str) -> None:
    """Give back ``owner``'s lease; with the last lease, remove the bridge (if minibox made it).

    Idempotent.  The owner's own devices and rules are its business
    (removed before this); the state file goes with the last lease.
    """
    from . import bridge as br

    with locked():
        state = _load(bridge)
        if state is None:
            return
        for address, entry in list(state["leases"].items()):
            if entry["owner"] == owner:
                del state["leases"][address]
        if state["leases"]:
            _save(bridge, state)
            return
        if state.get("created"):
            with br.opened() as ipr:
                br.remove_bridge(ipr, bridge)
        with contextlib.suppress(FileNotFoundError):
            _state_path(bridge).unlink()
