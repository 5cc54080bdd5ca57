"""Real cgroups on this host: limits enforced, counters read, freezer, kill, removal.

Root only, no container needed: each test creates a cgroup with
:meth:`Cgroup.create`, starts an ordinary child with :class:`subprocess.Popen`
that waits for a line on stdin, attaches it, and only then lets it go, so
everything it does after "go" is charged to the cgroup.  Every process a test
starts is killed by its pid and every cgroup removed in a ``finally``; the
last test checks that nothing is left under the minibox parent in any
hierarchy.
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
from minibox.errors import SetupError, SpecError
from minibox.spec import Limits

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
]

WAIT_FOR_GO = "import sys\nsys.stdin.readline()\n"


def py(script: str) -> list[str]:
    """A Python child that waits for "go" on stdin, then runs ``script``."""
    return [sys.executable, "-I", "-S", "-c", WAIT_FOR_GO + script]
MiB = 1 << 20


class Box:
    """A cgroup plus the processes a test started in it; cleaned up by the fixture."""

    def __init__(self, limits: Limits) -> None:
        self.cgroup = Cgroup.create(f"test-{uuid.uuid4().hex[:12]}", limits)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` (which first reads one line), attach it, and send it "go"."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv, stdin=subprocess.PIPE, preexec_fn=None, **kwargs)  # type: ignore[call-overload]
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
                    proc.kill()  # by pid: only what this test started
            self.cgroup.kill_all()
            for proc in self.procs:
                proc.wait(timeout=10)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream:
                        stream.close()
        finally:
            self.cgroup.remove()
        assert not any(os.path.exists(d) for d in self.cgroup.paths.values())


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


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_this_host_is_detected_from_its_mount_table() -> None:
    layout = detect_layout()
    mounts = Path("/proc/self/mountinfo").read_text()
    # Decide independently: v2 when a cgroup2 mount offers memory, pids or cpu
    # (or no v1 memory hierarchy exists); v1 otherwise (a hybrid host whose
    # cgroup2 mount holds only e.g. hugetlb, like these machines).
    v2_useful = v1_memory = False
    for line in mounts.splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _source, options = tail.split()[:3]
        mountpoint = fields.split()[4]
        if fstype == "cgroup2":
            controllers = set(Path(mountpoint, "cgroup.controllers").read_text().split())
            v2_useful = v2_useful or bool(controllers & {"memory", "pids", "cpu"})
        elif fstype == "cgroup" and "memory" in options.split(","):
            v1_memory = True
    assert layout.kind == ("v2" if v2_useful or not v1_memory else "v1")
    own = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    parents = cgroups.parent_dirs()
    if layout.kind == "v1":
        assert parents["memory"] == layout.hierarchies["memory"].mountpoint + own["memory"].rstrip("/") + "/minibox"


def test_memory_limit_oom_kills_and_says_so(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(memory="32M", memory_swap="32M"))
    proc = b.start(py("data = b'\\x01' * (100 << 20)\nprint('survived')"), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -9 and out == b""  # SIGKILL: the shell would say 137
    assert b.cgroup.oom_killed() is True
    usage = b.cgroup.usage()
    assert usage.memory_peak_bytes is not None and usage.memory_peak_bytes <= 32 * MiB
    b.close()
    assert b.cgroup.oom_killed() is True  # the verdict outlives the cgroup


def test_a_process_within_its_limit_is_not_oom(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(memory="64M"))
    proc = b.start(py("data = b'\\x01' * (8 << 20)"))
    assert proc.wait(timeout=30) == 0
    assert b.cgroup.oom_killed() is False


def test_fork_bomb_under_pids_limit_gets_eagain(box: Callable[[Limits], Box], tmp_path: Path) -> None:
    b = box(Limits(pids=32))
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        b.start(["/bin/bash", "-c", "read go; bomb() { bomb | bomb & }; bomb; wait"],
                stdout=subprocess.DEVNULL, stderr=stderr)
    assert wait_for(lambda: "Resource temporarily unavailable" in errors.read_text(errors="replace"), 30)
    stats = b.cgroup.stats()
    assert stats.pids is not None and stats.pids <= 32  # the host's process table is not flooded
    b.cgroup.kill_all()
    assert b.cgroup.procs() == []
    usage = b.cgroup.usage()
    assert usage.pids_peak is None or usage.pids_peak <= 32


def test_cpus_half_uses_half_a_cpu(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(cpus=0.5))
    start = time.monotonic()
    proc = b.start(py("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2: pass"))
    assert proc.wait(timeout=30) == 0
    wall = time.monotonic() - start
    cpu = b.cgroup.stats().cpu_seconds
    assert cpu is not None
    # An upper bound (how much less it gets depends on the machine's load),
    # and the kernel's own word that the quota bit (throttled periods) unless
    # the machine was too busy to give it even half a CPU.
    rate = cpu / wall
    assert rate <= 0.6, f"{cpu:.2f} cpu s in {wall:.2f} s"
    directory = b.cgroup.paths.get("cpu") or b.cgroup.paths["unified"]
    stat = dict(line.split() for line in Path(directory, "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0 or rate < 0.5, (rate, stat)


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
    frozen_at = value()
    time.sleep(0.3)
    assert value() == frozen_at
    b.cgroup.thaw()
    assert wait_for(lambda: value() > frozen_at, 5)


def test_stats_report_growing_memory(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(memory="256M"))
    proc = b.start(py("keep = []\nfor line in sys.stdin:\n"
                         "    keep.append(b'\\x01' * (16 << 20))\n    print('ok', flush=True)"),
                   stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    seen = []
    for _ in range(4):
        proc.stdin.write(b"more\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ok\n"
        stats = b.cgroup.stats()
        assert stats.memory_bytes is not None and stats.memory_peak_bytes is not None
        assert stats.memory_peak_bytes >= stats.memory_bytes
        assert stats.pids == 1
        seen.append(stats.memory_bytes)
    assert seen == sorted(seen) and seen[-1] - seen[0] >= 40 * MiB
    assert b.cgroup.procs() == [proc.pid]
    cpu = b.cgroup.stats().cpu_seconds
    assert cpu is not None and cpu > 0


def test_kill_all_empties_the_cgroup(box: Callable[[Limits], Box]) -> None:
    b = box(Limits(pids=16))
    b.start(["/bin/sh", "-c", "read go; sleep 1000 & sleep 1000 & wait"])
    assert wait_for(lambda: len(b.cgroup.procs()) == 3)
    b.cgroup.kill_all()
    assert b.cgroup.procs() == []


def test_kill_all_of_a_paused_cgroup(box: Callable[[Limits], Box]) -> None:
    b = box(Limits())
    b.start(["/bin/sh", "-c", "read go; sleep 1000 & wait"])
    assert wait_for(lambda: len(b.cgroup.procs()) == 2)
    b.cgroup.freeze()
    b.cgroup.kill_all()
    assert b.cgroup.procs() == []


def test_remove_of_a_busy_cgroup_is_reported_then_succeeds(box: Callable[[Limits], Box]) -> None:
    b = box(Limits())
    b.start(["/bin/sh", "-c", "read go; exec sleep 1000"])
    started = time.monotonic()
    with pytest.raises(SetupError) as info:
        b.cgroup.remove()
    assert info.value.step == "cgroup remove" and info.value.errno == 16  # EBUSY, after a short retry
    assert time.monotonic() - started < 5
    b.cgroup.kill_all()
    b.cgroup.remove()
    b.cgroup.remove()  # idempotent
    assert not any(os.path.exists(d) for d in b.cgroup.paths.values())


def test_gc_removes_a_cgroup_whose_owner_forgot_it() -> None:
    cg = Cgroup.create(f"test-{uuid.uuid4().hex[:12]}", Limits(pids=8))
    proc = subprocess.Popen(["/bin/sh", "-c", "read go; exec sleep 1000"], stdin=subprocess.PIPE, preexec_fn=None)
    try:
        cg.attach(proc.pid)
        state = (cg.version, dict(cg.paths))  # what the lead's state file keeps
        assert cgroups.remove_stale(*state) is True
        assert proc.wait(timeout=10) == -9
        assert not any(os.path.exists(d) for d in cg.paths.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cg.kill_all()
        cg.remove()


def test_v2_core_files_on_this_hosts_cgroup2_mount(tmp_path: Path) -> None:
    """The v2 backend for real, as far as this host allows: its cgroup2 mount has no
    memory/pids/cpu controller, but attach, cpu.stat, cgroup.freeze and cgroup.kill are core."""
    layout = detect_layout()
    if layout.kind == "v2":
        unified = layout
    else:
        assert layout.unified is not None, "this host has a cgroup2 mount (see HOST-FACTS.md)"
        unified = cgroups.CgroupLayout("v2", {"unified": layout.unified}, layout.unified, layout.proc_cgroup)
        if "memory" not in layout.unified.controllers:
            with pytest.raises(SpecError) as info:  # a limit this mount cannot enforce
                Cgroup.create(f"test-{uuid.uuid4().hex[:12]}", Limits(memory="64M"), layout=unified)
            assert info.value.field == "limits.memory"
    cg = Cgroup.create(f"test-{uuid.uuid4().hex[:12]}", Limits(), layout=unified)
    counter = tmp_path / "counter"
    counter.write_bytes(b"0")
    proc = subprocess.Popen(py(f"import os, time\nfd = os.open({str(counter)!r}, os.O_WRONLY)\nn = 0\n"
                               "while True:\n    n += 1\n    os.pwrite(fd, b'%12d' % n, 0)\n    time.sleep(0.005)"),
                            stdin=subprocess.PIPE, preexec_fn=None)
    try:
        assert cg.version == 2
        fd = cg.clone_into_fd()
        assert fd is not None
        os.close(fd)
        cg.attach(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert cg.procs() == [proc.pid]
        assert wait_for(lambda: int(counter.read_bytes()) > 0)
        cg.freeze()
        frozen_at = int(counter.read_bytes())
        time.sleep(0.3)
        assert int(counter.read_bytes()) == frozen_at
        cg.thaw()
        assert wait_for(lambda: int(counter.read_bytes()) > frozen_at, 5)
        assert (cg.stats().cpu_seconds or 0) > 0
        cg.kill_all()  # cgroup.kill
        assert proc.wait(timeout=10) == -9
        assert cg.procs() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cg.kill_all()
        cg.remove()
    assert not os.path.exists(cg.paths["unified"])
    parent = cgroups.parent_dirs(layout=unified)["unified"]
    # the shared parent itself is removed with its last container
    assert not os.path.isdir(parent) or not [e.name for e in os.scandir(parent)
                                             if e.is_dir() and e.name.startswith("test-")]
    cgroups.prune_parents(layout=unified)


def test_zz_nothing_left_under_the_minibox_parent() -> None:
    """Runs last in this file: no container directory remains in any hierarchy."""
    for controller, parent in cgroups.parent_dirs().items():
        if os.path.isdir(parent):
            leftovers = [e.name for e in os.scandir(parent) if e.is_dir() and e.name.startswith("test-")]
            assert leftovers == [], f"{controller}: {leftovers} left in {parent}"
    cgroups.prune_parents()  # the parent itself, if no one else uses it now
