"""What a live container leaves on the host, written down so it can be cleaned.

Namespaces vanish with their last process, but cgroups, network devices
and address leases do not: if the caller is killed (SIGKILL, OOM, power
cut of the Python process) nobody removes them.  Each container that owns
such resources gets a small JSON state file in ``runtime_dir()/containers``
naming its init pid (with the pid's start time, so a recycled pid is not
mistaken for it) and its resources.  ``minibox gc`` reads them and removes
what belongs to containers whose init is gone, and (through
``minibox.vm.leftovers``) the QEMU and virtiofsd processes of VMs whose
owner is gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from ..paths import runtime_dir
from ..procfs import start_time

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def state_path(container_id: str) -> Path:
    directory = runtime_dir() / "containers"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory / f"{container_id}.json"


def write_state(container_id: str, record: dict[str, Any]) -> None:
    path = state_path(container_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def remove_state(container_id: str) -> None:
    try:
        state_path(container_id).unlink()
    except FileNotFoundError:
        pass


def is_alive(record: dict[str, Any]) -> bool:
    pid = int(record.get("pid", 0))
    return pid > 0 and start_time(pid) == record.get("starttime")


def _clean_cgroup(record: dict[str, Any]) -> None:
    from .cgroups import remove_stale

    remove_stale(int(record["cgroup"]["version"]), dict(record["cgroup"]["paths"]))


def _clean_network(record: dict[str, Any]) -> None:
    from .network import release_stale

    release_stale(record["network"])


# Each kind of resource a record may name, and the function that removes it.
CLEANERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "cgroup": _clean_cgroup,
    "network": _clean_network,
}


def collect_garbage() -> list[str]:
    """Remove the leftovers of every dead container and VM; return their ids ("vm-<id>" for VMs)."""
    from ..vm.leftovers import collect_dead_vms
    from .cgroups import prune_parents, remove_empty_orphans

    vms = [f"vm-{vm_id}" for vm_id in collect_dead_vms()]
    directory = runtime_dir() / "containers"
    removed: list[str] = []
    paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if is_alive(record):
            continue
        for key, cleaner in CLEANERS.items():
            if key in record:
                cleaner(record)
        path.unlink(missing_ok=True)
        removed.append(str(record.get("id", path.stem)))
    # cgroups of callers killed before they wrote a state file
    removed += [f"{name} (unrecorded)" for name in remove_empty_orphans()]
    if removed:
        prune_parents()
    return vms + removed
