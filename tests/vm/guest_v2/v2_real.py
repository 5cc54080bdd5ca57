"""The cgroup v2 backend against a real cgroup2-only kernel (run inside a minibox guest).

This module is what ``tests/vm/test_cgroup_v2_in_guest.py`` runs *inside* a
microVM whose kernel has only a cgroup2 hierarchy mounted at /sys/fs/cgroup
(the project's own hosts are hybrid v1 machines, so the v2 backend cannot be
exercised on them beyond the core files).  It skips itself anywhere else.

The guest's "administrator" (the outer test's command) mounts cgroup2 and
enables ``cpuset cpu memory pids`` in the root's ``cgroup.subtree_control``,
as systemd does on a real v2 host; minibox itself never writes the root's
settings.  Everything below that is minibox's: ``<own cgroup>/minibox/<id>``,
the limit files, attach, ``memory.events``, ``cgroup.freeze``,
``cgroup.kill``, removal, and a Container started with clone3's
``CLONE_INTO_CGROUP``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from minibox.container import cgroups
from minibox.container.cgroups import Cgroup, detect_layout
from minibox.errors import PreflightError
from minibox.spec import Limits

MiB = 1 << 20
ROOT = Path("/sys/fs/cgroup")


def _v2_only_host() -> bool:
    """cgroup2 mounted with memory/pids/cpu available, and no v1 hierarchy at all."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    types = [line.partition(" - ")[2].split()[:1] for line in mounts.splitlines()]
    if ["cgroup"] in types or ["cgroup2"] not in types:
        return False
    try:
        return {"memory", "pids", "cpu"} <= set((ROOT / "cgroup.controllers").read_text().split())
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
    pytest.mark.skipif(not _v2_only_host(), reason="needs a cgroup2-only host (tests/vm/test_cgroup_v2_in_guest.py "
                                                   "boots one)"),
]

WAIT_FOR_GO = "import sys\nsys.stdin.readline()\n"


def py(script: str) -> list[str]:
    """A Python child that waits for "go" on stdin, then runs ``script``."""
    return [sys.executable, "-I", "-S", "-c", WAIT_FOR_GO + script]


def read(cg: Cgroup, name: str) -> str:
    return Path(cg.paths["unified"], name).read_text().strip()


def keyed(cg: Cgroup, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(cg, name).splitlines())}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class Box:
    """A cgroup plus the processes a test started in it; cleaned up by the fixture."""

    def __init__(self, limits: Limits) -> None:
        self.cgroup = Cgroup.create(f"test-{uuid.uuid4().hex[:12]}", limits)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` (which first reads one line), attach it, and send it "go"."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, stdin=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        self.cgroup.attach(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        return proc

    def close(self) -> None:
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
            self.cgroup.kill_all()
            for proc in self.procs:
                proc.wait(timeout=30)
                if proc.stdin:
                    proc.stdin.close()
        finally:
            self.cgroup.remove()
        assert not os.path.exists(self.cgroup.paths["unified"])


@pytest.fixture
def box() -> Iterator[Callable[[Limits], Box]]:
    made: list[Box] = []

    def make(limits: Limits) -> Box:
        made.append(Box(limits))
        return made[-1]

    try:
        yield make
    finally:
        for b in made:
            b.close()


def test_the_layout_is_v2_and_the_parent_is_under_our_own_cgroup() -> None:
    layout = detect_layout()
    assert layout.kind == "v2"
    assert layout.unified is not None and layout.unified.mountpoint == str(ROOT)
    own = Path("/proc/self/cgroup").read_text().strip()
    assert own == "0::/"  # the guest's init put everything in the root cgroup
    assert cgroups.parent_dirs() == {"unified": f"{ROOT}/minibox"}


def test_every_limit_lands_in_its_v2_file(box: Callable[[Limits], Box]) -> None:
    limits = Limits(memory="64M", memory_swap="64M", pids=32, cpus=0.5, cpu_weight=200, cpuset="0")
    b = box(limits)
    cg = b.cgroup
    assert cg.version == 2 and cg.paths["unified"].startswith(f"{ROOT}/minibox/test-")
    assert read(cg, "memory.max") == str(64 * MiB)
    assert read(cg, "memory.swap.max") == "0"  # memory_swap - memory: no swap at all
    assert read(cg, "pids.max") == "32"
    assert read(cg, "cpu.max") == "50000 100000"
    assert read(cg, "cpu.weight") == "200"
    assert read(cg, "cpuset.cpus") == "0"
    enabled = set((ROOT / "minibox" / "cgroup.subtree_control").read_text().split())
    assert {"memory", "pids", "cpu", "cpuset"} <= enabled
    proc = b.start(py("print('ok', flush=True)\nsys.stdin.readline()"), stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    assert cg.procs() == [proc.pid]
    assert Path(f"/proc/{proc.pid}/cgroup").read_text().strip() == "0::" + cg.paths["unified"][len(str(ROOT)):]
    stats = cg.stats()
    assert stats.pids == 1
    assert stats.memory_bytes is not None and stats.memory_bytes > 0
    assert stats.memory_peak_bytes is not None and stats.memory_peak_bytes >= stats.memory_bytes  # memory.peak


def test_memory_limit_oom_kills_and_memory_events_says_so(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(memory="32M"))
    proc = b.start(py("data = b'\\x01' * (100 << 20)\nprint('survived')"), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -9 and out == b""
    assert keyed(b.cgroup, "memory.events")["oom_kill"] >= 1
    assert b.cgroup.oom_killed() is True
    usage = b.cgroup.usage()
    assert usage.memory_peak_bytes is not None and usage.memory_peak_bytes <= 32 * MiB
    b.close()
    assert b.cgroup.oom_killed() is True  # the verdict outlives the cgroup


def test_a_process_within_its_limit_is_not_oom(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(memory="64M"))
    proc = b.start(py("data = b'\\x01' * (8 << 20)"))
    assert proc.wait(timeout=120) == 0
    assert b.cgroup.oom_killed() is False
    assert keyed(b.cgroup, "memory.events")["oom_kill"] == 0


def test_fork_bomb_under_pids_max_gets_eagain(box: Callable[[Limits], Box], tmp_path: Path) -> None:
    b = box(Limits(pids=16))
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        b.start(["/bin/bash", "-c", "read go; bomb() { bomb | bomb & }; bomb; wait"],
                stdout=subprocess.DEVNULL, stderr=stderr)
    assert wait_for(lambda: "Resource temporarily unavailable" in errors.read_text(errors="replace"), 120)
    assert keyed(b.cgroup, "pids.events")["max"] >= 1  # the kernel counted refused forks
    stats = b.cgroup.stats()
    assert stats.pids is not None and stats.pids <= 16
    b.cgroup.kill_all()
    assert b.cgroup.procs() == []
    peak = b.cgroup.usage().pids_peak  # pids.peak
    assert peak is not None and 2 <= peak <= 16


def test_cpu_max_throttles_a_busy_loop(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(cpus=0.2))
    proc = b.start(py("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.5: pass"))
    assert proc.wait(timeout=120) == 0
    stat = keyed(b.cgroup, "cpu.stat")
    assert stat["nr_throttled"] > 0 and stat["throttled_usec"] > 0  # cpu.max was enforced
    cpu = b.cgroup.stats().cpu_seconds
    assert cpu is not None and cpu > 0


def test_freeze_stops_a_counter_and_thaw_resumes_it(box: Callable[[Limits], Box], tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_bytes(b"0")
    b = box(Limits())
    b.start(py(f"import os, time\nfd = os.open({str(counter)!r}, os.O_WRONLY)\nn = 0\n"
               "while True:\n    n += 1\n    os.pwrite(fd, b'%12d' % n, 0)\n    time.sleep(0.005)"))

    def value() -> int:
        return int(counter.read_bytes() or b"0")

    assert wait_for(lambda: value() > 0)
    b.cgroup.freeze()
    assert keyed(b.cgroup, "cgroup.events")["frozen"] == 1
    frozen_at = value()
    time.sleep(0.5)
    assert value() == frozen_at
    b.cgroup.thaw()
    assert keyed(b.cgroup, "cgroup.events")["frozen"] == 0
    assert wait_for(lambda: value() > frozen_at)


def test_cgroup_kill_empties_the_cgroup_forks_included(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(pids=16))
    b.start(["/bin/sh", "-c", "read go; sleep 1000 & sleep 1000 & wait"])
    assert wait_for(lambda: len(b.cgroup.procs()) == 3)
    b.cgroup.kill_all()  # one write to cgroup.kill
    assert b.cgroup.procs() == []
    assert all(p.wait(timeout=30) == -9 for p in b.procs)


def test_kill_all_of_a_frozen_cgroup(box: Callable[[Limits], Box]) -> None:
    b = box(Limits())
    b.start(["/bin/sh", "-c", "read go; sleep 1000 & wait"])
    assert wait_for(lambda: len(b.cgroup.procs()) == 2)
    b.cgroup.freeze()
    b.cgroup.kill_all()
    assert b.cgroup.procs() == []


def test_no_internal_processes_is_a_preflight_error_with_a_hint() -> None:
    """v2 gives controllers only to children of cgroups without processes of their own."""
    busy = ROOT / f"busy-{uuid.uuid4().hex[:8]}"
    busy.mkdir()
    proc = subprocess.Popen(["/bin/sh", "-c", "read go"], stdin=subprocess.PIPE)
    try:
        (busy / "cgroup.procs").write_text(str(proc.pid))
        with pytest.raises(PreflightError) as info:
            Cgroup.create("test-busy", Limits(memory="64M"), parent=f"/{busy.name}")
        assert cgroups.PARENT_ENV in str(info.value)
        assert not (busy / "test-busy").exists()  # nothing half-made is left
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        busy.rmdir()


def test_container_starts_inside_its_cgroup_by_clone_into_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Container with limits, end to end: clone3(CLONE_INTO_CGROUP), no attach afterwards."""
    from minibox import Container, Spec

    def no_attach(self: Cgroup, pid: int) -> None:
        raise AssertionError(f"attach({pid}) was called: the child did not start inside its cgroup")

    monkeypatch.setattr(Cgroup, "attach", no_attach)
    with Container(Spec(argv=["sh", "-c", "echo started; read line; exit 0"], limits=Limits(memory="64M", pids=16)),
                   stdin=b"") as box:
        directory = box.cgroup_paths["unified"]
        assert directory.startswith(f"{ROOT}/minibox/")
        assert box.pid is not None and box.pid in [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
        assert Path(directory, "memory.max").read_text().strip() == str(64 * MiB)
        result = box.wait(timeout=120)
    assert result.reason == "exited" and result.exit_code == 0
    assert result.stdout == b"started\n"
    assert not os.path.exists(directory)


def test_container_oom_is_reported_from_memory_events() -> None:
    from minibox import Container, Spec

    box = Container(Spec(argv=["sh", "-c", "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"],
                         limits=Limits(memory="32M")))
    with box:
        result = box.wait(timeout=120)
    assert result.reason == "oom" and result.signal == 9
    assert b"survived" not in result.stdout
    assert result.usage.memory_peak_bytes is not None and result.usage.memory_peak_bytes <= 32 * MiB
    assert not os.path.exists(f"{ROOT}/minibox/{box.id}")


def test_zz_nothing_left_under_the_minibox_parent() -> None:
    parent = ROOT / "minibox"
    if parent.is_dir():
        assert [e.name for e in os.scandir(parent) if e.is_dir()] == []
    cgroups.prune_parents()
    assert not parent.exists()
