"""What a VM leaves on the host if the Python process that started it is killed.

A :class:`~minibox.vm.VirtualMachine` owns two kinds of host processes:
QEMU and one ``virtiofsd`` per shared directory.  Its ``close()`` ends them
on every exit path the Python process lives through; a SIGKILL of that
process is not one of them.  QEMU does not exit when the peer of its QMP
socket goes away (measured: it keeps running, and a guest that powers off
merely *pauses* it under ``-action shutdown=pause``), so an orphaned QEMU
would live forever; virtiofsd exits once QEMU hangs up.

So each VM writes ``runtime_dir()/vm-<id>.json`` naming its owner (the
Python process) and every process it started, each as *pid + start time*
(field 22 of /proc/PID/stat, proc(5)), because a pid alone may have been
reused by an unrelated process by the time anyone looks.  ``minibox gc``
(:func:`minibox.container.state.collect_garbage`) calls
:func:`collect_dead_vms`: for each record whose owner is gone it kills the
recorded processes that are still *the same processes* -- through a pidfd
opened before the start time is checked (pidfd_open(2)), so the signal
cannot reach a process that took the pid over in between -- and removes the
record.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from ..paths import runtime_dir
from ..procfs import start_time as process_start_time
from ..procfs import stat

#: How long gc waits for one killed process to be gone.
KILL_WAIT = 5.0


class ProcessRecord(TypedDict):
    """One process, identified so that a reused pid is not mistaken for it."""

    pid: int
    starttime: int | None


def identify(pid: int) -> ProcessRecord:
    """``pid`` with its current start time, for a state file."""
    return {"pid": pid, "starttime": process_start_time(pid)}


def record_path(vm_id: str) -> Path:
    return runtime_dir() / f"vm-{vm_id}.json"


def write_record(vm_id: str, qemu_pid: int, helper_pids: Sequence[int],
                 network: dict[str, Any] | None = None) -> Path:
    """Write (atomically) the state file of VM ``vm_id``, owned by this process; return its path.

    ``network`` is :meth:`minibox.vm.network.VmNetwork.record` of a bridged
    VM: its lease, tap and port rules, released by gc once QEMU is dead.
    """
    record: dict[str, Any] = {
        "kind": "vm",
        "id": vm_id,
        "owner": identify(os.getpid()),
        "qemu": identify(qemu_pid),
        "helpers": [identify(pid) for pid in helper_pids],
        "started": time.time(),
    }
    if network is not None:
        record["network"] = network
    path = record_path(vm_id)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def _as_process(value: Any) -> ProcessRecord | None:
    """A recorded process; a bare pid (no start time, so not verifiable) counts as unknown."""
    if isinstance(value, dict) and isinstance(value.get("pid"), int):
        start = value.get("starttime")
        return {"pid": value["pid"], "starttime": start if isinstance(start, int) else None}
    if isinstance(value, int):
        return {"pid": value, "starttime": None}
    return None


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits for its parent to reap it (state Z)."""
    st = stat(pid)
    return st is None or st.state == "Z"


def is_running(proc: ProcessRecord) -> bool:
    """Whether the recorded process still runs: same pid *and* same start time, not a zombie."""
    return (proc["pid"] > 0 and proc["starttime"] is not None
            and process_start_time(proc["pid"]) == proc["starttime"] and not _zombie(proc["pid"]))


def _owner_gone(owner: ProcessRecord | None) -> bool:
    if owner is None:
        return True
    if owner["starttime"] is None:  # an older record: trust the pid only to say "alive"
        return process_start_time(owner["pid"]) is None
    return not is_running(owner)


def kill_verified(proc: ProcessRecord, timeout: float = KILL_WAIT) -> bool:
    """SIGKILL the recorded process if it is still that process; wait until it is gone.

    Returns whether it was killed.  A pid whose start time differs (or is
    unknown) is left alone: it is someone else's process now.
    """
    if proc["starttime"] is None or proc["pid"] <= 0:
        return False
    try:
        pidfd = os.pidfd_open(proc["pid"])
    except ProcessLookupError:
        return False
    try:
        # The pidfd pins the process it was opened for: if the start time still
        # matches now, that process is the recorded one, and the signal goes to it.
        if process_start_time(proc["pid"]) != proc["starttime"]:
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return False
        select.select([pidfd], [], [], timeout)  # readable once it has exited
        return True
    finally:
        os.close(pidfd)


def collect_dead_vms() -> list[str]:
    """Kill the QEMU and virtiofsd of every VM whose owner is gone, remove their records; return the ids."""
    directory = runtime_dir()
    cleaned: list[str] = []
    for path in sorted(directory.glob("vm-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written right now, or not ours to judge
        if not isinstance(record, dict) or record.get("kind") != "vm":
            continue
        if not _owner_gone(_as_process(record.get("owner"))):
            continue
        # QEMU first: virtiofsd exits by itself once QEMU hangs up.
        for value in [record.get("qemu"), *record.get("helpers", [])]:
            proc = _as_process(value)
            if proc is not None:
                kill_verified(proc)
        if isinstance(record.get("network"), dict):
            # QEMU is gone, and its tap with it: give back the lease and the port rules.
            from .network import release_stale

            try:
                release_stale(record["network"])
            except Exception as e:  # keep the record: the next gc tries again
                logging.getLogger("minibox.vm").warning("minibox gc: VM %s: network not released: %s",
                                                        record.get("id"), e)
                continue
        path.unlink(missing_ok=True)
        cleaned.append(str(record.get("id", path.stem.removeprefix("vm-"))))
    return cleaned
