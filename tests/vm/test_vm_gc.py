"""A VM whose owner was SIGKILLed: the keeper ends it, `minibox gc` cleans up.

A caller killed with SIGKILL never reaches ``VirtualMachine.close()``.
QEMU does not exit when its QMP peer goes away, so each owning process has
a watchdog (minibox-keeper) that kills QEMU and virtiofsd when the owner's
socket closes.  If the keeper died too, ``minibox gc`` must kill exactly those
processes (pid and start time verified) and remove the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from minibox import gc, records

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd needs root"),
]

OWNER = textwrap.dedent("""
    import json, os, signal, sys
    from minibox import Spec
    from minibox.vm import VirtualMachine
    vm = VirtualMachine(Spec(argv=["sleep", "1000"], rootfs=sys.argv[1]))
    vm.start()
    print(json.dumps({"id": vm.id, "qemu": vm.pid, "helpers": [p.pid for p in vm._helpers]}), flush=True)
    if sys.argv[2] == "keeper-too":
        import time
        from minibox import owner
        keeper = owner.keeper_pid()
        os.kill(keeper, signal.SIGKILL)  # as if the OOM killer took both
        while os.path.exists(f"/proc/{keeper}") and open(f"/proc/{keeper}/stat").read().split()[2] != "Z":
            time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _killed_owner(rootfs: str, mode: str) -> tuple[dict[str, Any], records.ProcessRecord,
                                                  list[records.ProcessRecord], Path]:
    """Run OWNER (``mode``: "keeper-only" or "keeper-too"); what it started, and its VM record."""
    owner = subprocess.run([sys.executable, "-c", OWNER, rootfs, mode], capture_output=True, timeout=300)
    assert owner.returncode == -9, owner.stderr.decode(errors="replace")
    started: dict[str, Any] = json.loads(owner.stdout)
    qemu = records.identify(started["qemu"])
    helpers = [records.identify(pid) for pid in started["helpers"]]
    return started, qemu, helpers, Path(records.path_of(started["id"]))


def test_the_keeper_ends_the_vm_of_a_killed_caller(rootfs: str) -> None:
    _, qemu, helpers, record = _killed_owner(rootfs, "keeper-only")
    try:
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in (qemu, *helpers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in (qemu, *helpers)), "QEMU outlived its owner"
        gc = subprocess.run([sys.executable, "-m", "minibox.cli", "gc"], capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert not record.exists()
    finally:
        for proc in (qemu, *helpers):
            records.kill_verified(proc)
        record.unlink(missing_ok=True)


def _gone(proc: records.ProcessRecord) -> bool:
    """Exited (a zombie waiting for its new parent, init, to reap it counts) or never this process."""
    return not records.is_running(proc)


def test_gc_kills_what_a_killed_caller_and_its_keeper_left(rootfs: str) -> None:
    started, qemu, helpers, record = _killed_owner(rootfs, "keeper-too")
    try:
        # What the killed caller left: a running QEMU, its virtiofsd, the record naming them.
        assert qemu["starttime"] is not None, "QEMU died with its owner"
        assert Path(f"/proc/{qemu['pid']}/comm").read_text().startswith("qemu-system")
        assert helpers and all(h["starttime"] is not None for h in helpers)
        saved = json.loads(record.read_text())
        recorded = {p["role"]: [] for p in saved["processes"]}
        for p in saved["processes"]:
            recorded[p["role"]].append({"pid": p["pid"], "starttime": p["starttime"]})
        assert recorded == {"virtiofsd": helpers, "qemu": [qemu]}
        assert saved["owner"]["pid"] != os.getpid()

        gc = subprocess.run([sys.executable, "-m", "minibox.cli", "gc"], capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert f"removed vm {started['id']}" in gc.stdout

        assert _gone(qemu)
        deadline = time.monotonic() + 30  # virtiofsd exits once QEMU has hung up
        while not all(_gone(h) for h in helpers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(h) for h in helpers)
        assert not record.exists()
    finally:
        for proc in (qemu, *helpers):  # only what this test's own child started, identity verified
            records.kill_verified(proc)
        record.unlink(missing_ok=True)


def test_gc_leaves_a_live_callers_vm_alone(rootfs: str, no_leaks: None) -> None:
    from minibox import Spec
    from minibox.vm import VirtualMachine

    with VirtualMachine(Spec(argv=["sleep", "1000"], rootfs=rootfs)) as vm:  # started by `with`
        qemu = records.identify(vm.pid or 0)
        report = gc.collect()
        assert f"vm {vm.id}" not in report.removed
        assert any(what == f"vm {vm.id}" and "alive" in why for what, why in report.skipped)
        assert records.is_running(qemu)
        assert os.path.exists(records.path_of(vm.id))
        vm.kill()


def test_gc_does_not_kill_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    """A record whose pids now belong to other processes: the record goes, the processes stay."""
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        me = records.identify(bystander.pid)
        assert me["starttime"] is not None
        stale = {"format": records.FORMAT, "kind": "vm", "id": "gc-test-reused",
                 "owner": {"pid": 2 ** 22 + 1, "starttime": 1, "lock": str(tmp_path / "gone.lock")},
                 "processes": [{"pid": bystander.pid, "starttime": me["starttime"] - 1, "role": "qemu"},
                               {"pid": os.getpid(), "starttime": 12345, "role": "virtiofsd"}]}
        os.makedirs(os.path.dirname(records.path_of("x")), exist_ok=True)
        path = Path(records.path_of("gc-test-reused"))
        path.write_text(json.dumps(stale))
        assert "vm gc-test-reused" in gc.collect().removed
        assert not path.exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
