"""Snapshots of a running VM (issue 13): ``vm.snapshot(path)`` and ``VirtualMachine.restore(path)``.

What a user would check: a restore sees what the guest had (a file in its
tmpfs, a counting process that goes on counting), two restores of one file
go on independently (their own files, their own random bytes, the host's
clock), the original keeps running after the snapshot; a file made for
another QEMU or damaged or truncated is refused with the reason and nothing
runs; a VM whose state QEMU cannot save is refused up front; a caller
SIGKILLed in the middle of a restore leaves nothing once gc has run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minibox import Spec, VirtualMachine, gc, records
from minibox.errors import StateError
from minibox.vm import vm_snapshot
from minibox.vm.clone import TemplateClone
from minibox.vm.vm_snapshot import SnapshotError, SnapshotMismatchError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="VMs run as root here (QEMU -runas, the records)")

COUNTER = ("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/state; "
           "i=0; while :; do i=$((i+1)); echo $i > /tmp/next; mv /tmp/next /tmp/counter; sleep 0.05; done")
# (written aside and renamed: `echo > file` truncates first, and a reader in between gets nothing)


@dataclass
class Saved:
    path: Path
    state: str            # what the guest wrote to its tmpfs before the snapshot
    counter: int          # the counter when the snapshot was taken (at least)
    original_after: int   # the original's counter a moment after the snapshot


def _counter(vm: VirtualMachine) -> int:
    return int(vm.exec(["cat", "/tmp/counter"], timeout=60).stdout)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    """One snapshot of a VM whose command counts in a loop, made once for the module."""
    path = tmp_path_factory.mktemp("snapshots") / "counting.mbx"
    with TemplateClone(Spec(argv=["sh", "-c", COUNTER])) as vm:
        deadline = time.monotonic() + 60
        while vm.exec(["test", "-s", "/tmp/counter"]).exit_code != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        state = vm.exec(["cat", "/tmp/state"]).stdout.decode()
        counter = _counter(vm)
        vm.snapshot(path)
        time.sleep(0.3)
        after = _counter(vm)  # the original was resumed
    yield Saved(path, state, counter, after)


def test_two_restores_see_the_saved_state_and_go_on_independently(saved: Saved, no_leaks: None) -> None:
    assert saved.original_after > saved.counter, "the original VM did not run on after its snapshot"
    before = time.time()
    first = VirtualMachine.restore(saved.path)
    second = VirtualMachine.restore(saved.path)
    with first, second:
        assert first.state == second.state == "running"
        assert os.path.exists(records.path_of(first.id)), "a restored VM has its record, like a cold boot"
        for vm in (first, second):
            assert vm.exec(["cat", "/tmp/state"]).stdout.decode() == saved.state
        start = [_counter(first), _counter(second)]
        assert min(start) >= saved.counter
        first.exec(["sh", "-c", "echo first > /tmp/mine"])
        probe = ["sh", "-c", "cat /tmp/mine 2>/dev/null; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; "
                             "echo; date +%s"]
        out1, out2 = (vm.exec(probe).stdout.decode().split("\n") for vm in (first, second))
        assert out1[0] == "first" and out2[0] != "first", "a file written in one restore appeared in the other"
        rand1, rand2 = out1[1], out2[0]
        assert len(rand1) == len(rand2) == 32 and rand1 != rand2, "two restores read the same random bytes"
        clocks = [int(out1[2]), int(out2[1])]
        assert all(before - 2 <= c <= time.time() + 2 for c in clocks), (before, clocks)  # the host's clock
        time.sleep(0.3)
        assert _counter(first) > start[0] and _counter(second) > start[1], "a restored command stopped counting"
        first.kill()
        assert first.wait(timeout=60).signal is not None  # the command's end, reported as for any VM
        assert _counter(second) > start[1], "ending one restore ended the other"


def test_a_vm_whose_state_cannot_be_saved_is_refused_up_front(tmp_path: Path) -> None:
    path = tmp_path / "s.mbx"
    with pytest.raises(SnapshotError, match=r"virtio-fs.*rootfs_sharing='initramfs'"):
        VirtualMachine(Spec(argv=["true"])).snapshot(path)  # the default cold boot shares its rootfs
    with pytest.raises(SnapshotError, match="bridge"):
        VirtualMachine(Spec(argv=["true"], network="bridge"), rootfs_sharing="initramfs").snapshot(path)
    with pytest.raises(StateError):
        VirtualMachine(Spec(argv=["true"]), rootfs_sharing="initramfs").snapshot(path)  # not started
    assert not path.exists() and list(tmp_path.iterdir()) == []


def _edited(saved: Path, to: Path, **changes: object) -> Path:
    """A copy of the snapshot with manifest fields changed (the header rewritten in place)."""
    shutil.copyfile(saved, to)
    manifest = vm_snapshot.read_manifest(to)
    manifest.update(changes)
    header = vm_snapshot.MAGIC + json.dumps(manifest).encode()
    with open(to, "r+b") as f:
        f.write(header.ljust(vm_snapshot.HEADER_SIZE, b"\0"))
    return to


def test_a_foreign_damaged_or_truncated_snapshot_is_refused_and_nothing_runs(saved: Saved, tmp_path: Path,
                                                                            no_leaks: None) -> None:
    manifest = vm_snapshot.read_manifest(saved.path)
    with pytest.raises(SnapshotMismatchError, match=r"another QEMU version: '6\.2\.0'"):
        VirtualMachine.restore(_edited(saved.path, tmp_path / "qemu.mbx", qemu_version="6.2.0"))
    other_agent = _edited(saved.path, tmp_path / "agent.mbx", agent_sha256="0" * 64)
    with pytest.raises(SnapshotMismatchError, match="guest agent"):
        VirtualMachine.restore(other_agent)
    argv = [a.replace(f"{manifest['memory'] >> 20}M", "128M") for a in manifest["argv"]]
    with pytest.raises(SnapshotMismatchError, match="another memory: '256M', this host has '128M'"):
        VirtualMachine.restore(_edited(saved.path, tmp_path / "m1.mbx", memory=128 << 20))
    # a manifest edited consistently still cannot lie about the RAM in the stream (QEMU would exit)
    with pytest.raises(SnapshotMismatchError, match="256 MiB of guest RAM, its manifest says memory 128 MiB"):
        VirtualMachine.restore(_edited(saved.path, tmp_path / "m2.mbx", memory=128 << 20, argv=argv))
    truncated = tmp_path / "truncated.mbx"
    shutil.copyfile(saved.path, truncated)
    os.truncate(truncated, truncated.stat().st_size - 4096)
    with pytest.raises(SnapshotError, match="truncated"):
        VirtualMachine.restore(truncated)
    damaged = tmp_path / "damaged.mbx"
    shutil.copyfile(saved.path, damaged)
    with open(damaged, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SnapshotError, match="damaged"):
        VirtualMachine.restore(damaged)
    (tmp_path / "empty.mbx").write_bytes(b"")
    with pytest.raises(SnapshotError, match="not a minibox VM snapshot"):
        VirtualMachine.restore(tmp_path / "empty.mbx")


CHILD = textwrap.dedent("""
    import sys
    from minibox import VirtualMachine, records
    import minibox.vm.vm_snapshot as s
    real = s.RestoredVM._create_record
    def create_record(self, spec):  # say the id before anything exists
        print(self.id, flush=True)
        return real(self, spec)
    s.RestoredVM._create_record = create_record
    vm = VirtualMachine.restore(sys.argv[1])
    vm.close()
    print("closed", flush=True)
""")


def _orphans(since: float) -> list[int]:
    """QEMUs of a restore (RAM backend "memory-backend-ram,id=mem") re-parented since ``since``."""
    found = []
    boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        start = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
        if b"memory-backend-ram,id=mem" in cmdline and stat[0] != "Z" and stat[1] == "1" and start >= since - 1:
            found.append(int(entry))
    return found


def test_a_caller_killed_during_a_restore_leaves_nothing_after_gc(saved: Saved, no_leaks: None) -> None:
    since = time.time()
    for n in range(1, 6):
        run = subprocess.run([sys.executable, "-c", CHILD, str(saved.path)], capture_output=True, timeout=120,
                             check=False, env=dict(os.environ, MINIBOX_TEST_DIE_AFTER_STEP=str(n)))
        lines = run.stdout.decode().split()
        if run.returncode == 0:
            assert lines[-1] == "closed"
            break
        assert run.returncode == -9, run.stderr.decode(errors="replace")
        record = records.load(records.path_of(lines[0]))
        assert record is not None, f"step {n}: the record names the VM before anything exists"
        report = gc.collect()
        assert report.failed == [], report.failed
        assert not os.path.exists(records.path_of(lines[0]))
        deadline = time.monotonic() + 10
        while True:
            alive = [p for p in record["processes"]
                     if records.is_running(records.as_process(p) or {"pid": 0, "starttime": None})]
            orphans = _orphans(since)
            if (not alive and not orphans) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (alive, orphans) == ([], []), f"after dying at step {n}: {alive} {orphans}"
    else:
        pytest.fail("the restore still had steps after 5")
    assert n == 3, "record, QEMU, then done: a restore has two steps"
