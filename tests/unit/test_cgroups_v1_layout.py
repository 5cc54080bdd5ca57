"""The cgroup v1 backend against a fake tree of per-controller hierarchies.

The fake imitates a hybrid host like the project's machines: one v1
hierarchy per controller (memory, pids, cpu, cpuacct, cpuset, freezer...)
plus a cgroup2 mount holding only hugetlb, the caller's memory cgroup a
per-command one (/process_api/<hash>) and every other at the root.  mkdir
creates the files the kernel would (a new cpuset has empty cpus and mems);
every write is recorded, and the tests check the exact files and values of
Documentation/admin-guide/cgroup-v1/*.rst.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox.container import cgroups
from minibox.container.cgroups import Cgroup, detect_layout, weight_to_shares
from minibox.errors import PreflightError, SetupError, SpecError
from minibox.sandbox import Stats, Usage
from minibox.spec import Limits

UNLIMITED = "9223372036854771712"
FILES = {
    "memory": {"memory.limit_in_bytes": UNLIMITED, "memory.memsw.limit_in_bytes": UNLIMITED,
               "memory.usage_in_bytes": "0", "memory.max_usage_in_bytes": "0", "memory.failcnt": "0",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", "memory.use_hierarchy": "1"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.peak": "0"},
    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024"},
    "cpuacct": {"cpuacct.usage": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "freezer": {"freezer.state": "THAWED"},
    "devices": {},
    "blkio": {},
}
OWN_MEMORY = "/process_api/62ccd1c4"


class FakeCgroup1:
    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch, mounts: list[tuple[str, ...]]) -> None:
        self.base = base
        self.mounts = {"+".join(m): base / ",".join(m) for m in mounts}
        self.writes: list[tuple[str, str]] = []
        self.swap = True
        for controllers, mountpoint in zip(mounts, self.mounts.values(), strict=True):
            mountpoint.mkdir(parents=True)
            self._populate(mountpoint, controllers)
            (mountpoint / "cgroup.procs").write_text("1\n")
        cpuset = self.dir("cpuset")
        (cpuset / "cpuset.cpus").write_text("0-1\n")
        (cpuset / "cpuset.mems").write_text("0\n")
        (base / "unified").mkdir()
        (base / "unified" / "cgroup.controllers").write_text("hugetlb\n")
        monkeypatch.setattr(cgroups.files, "mkdir", self.mkdir)
        monkeypatch.setattr(cgroups.files, "rmdir", self.rmdir)
        monkeypatch.setattr(cgroups.files, "write", self.write)
        # The caller's per-command memory cgroup already exists (the shell made it).
        os.makedirs(self.dir("memory") / OWN_MEMORY.strip("/"))
        self._populate(self.dir("memory") / OWN_MEMORY.strip("/"), ("memory",))

    def dir(self, controller: str) -> Path:
        return next(p for key, p in self.mounts.items() if controller in key.split("+"))

    def rel(self, path: str | Path) -> str:
        return str(Path(path).relative_to(self.base))

    def _populate(self, d: Path, controllers: tuple[str, ...]) -> None:
        (d / "cgroup.procs").write_text("")
        for c in controllers:
            for name, text in FILES[c].items():
                if self.swap or "memsw" not in name:
                    (d / name).write_text(text)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        mount = next(k for k, p in self.mounts.items() if Path(path).is_relative_to(p))
        self._populate(Path(path), tuple(mount.split("+")))

    def rmdir(self, path: str) -> None:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if any(p.is_dir() for p in d.iterdir()) or (d / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()

    def write(self, path: str, value: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self.writes.append((self.rel(p), value))
        if p.name == "cpuset.cpus":  # the kernel refuses CPUs the parent does not have
            allowed = (p.parent.parent / "cpuset.cpus").read_text().strip()
            if allowed == "0" and value != "0":
                raise OSError(errno.EINVAL, "Invalid argument", path)
        if p.name == "cgroup.procs":
            p.write_text(p.read_text() + value + "\n")
        else:
            p.write_text(value)


SEPARATE: list[tuple[str, ...]] = [
    ("cpu",), ("cpuacct",), ("cpuset",), ("memory",), ("devices",), ("freezer",), ("blkio",), ("pids",)]
COMOUNTED: list[tuple[str, ...]] = [
    ("cpu", "cpuacct"), ("cpuset",), ("memory",), ("devices",), ("freezer",), ("blkio",), ("pids",)]


def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: list[tuple[str, ...]]) -> FakeCgroup1:
    monkeypatch.delenv(cgroups.PARENT_ENV, raising=False)
    return FakeCgroup1(tmp_path / "cgroup", monkeypatch, mounts)


def layout_for(fake: FakeCgroup1, tmp_path: Path) -> cgroups.CgroupLayout:
    lines = ["22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw",
             f"31 23 0:28 / {fake.base} rw,relatime - tmpfs tmpfs rw,mode=755"]
    for i, (key, mountpoint) in enumerate(fake.mounts.items()):
        opts = ",".join(key.split("+"))
        lines.append(f"{32 + i} 31 0:{29 + i} / {mountpoint} rw,relatime - cgroup cgroup rw,{opts}")
    lines.append(f"40 31 0:37 / {fake.base}/systemd rw,relatime - cgroup cgroup rw,name=systemd")
    lines.append(f"41 31 0:38 / {fake.base}/unified rw,relatime - cgroup2 cgroup2 rw")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    own = {"memory": OWN_MEMORY}
    text = "".join(f"{9 - i}:{','.join(key.split('+'))}:{own.get(key, '/')}\n"
                   for i, key in enumerate(fake.mounts))
    (tmp_path / "cgroup.self").write_text("10:name=systemd:/\n" + text + "0::/\n")
    return detect_layout(str(tmp_path / "mountinfo"), str(tmp_path / "cgroup.self"))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCgroup1]:
    yield make(tmp_path, monkeypatch, SEPARATE)


FULL = Limits(memory="64M", memory_swap="96M", cpus=0.5, cpu_weight=100, pids=64, cpuset="1")


def test_a_hybrid_host_with_a_useless_cgroup2_is_v1(fake: FakeCgroup1, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    assert layout.kind == "v1" and layout.version == 1
    assert layout.unified is not None and layout.unified.controllers == ("hugetlb",)
    assert layout.hierarchies["memory"].mountpoint == str(fake.dir("memory"))
    assert "name=systemd" not in layout.hierarchies and "systemd" not in layout.hierarchies


def test_create_writes_exactly_the_v1_files(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", FULL, layout=layout_for(fake, tmp_path))
    assert cg.version == 1
    # Under the caller's own cgroup in each hierarchy: the per-command memory cgroup, the root elsewhere.
    assert cg.paths == {
        "memory": str(fake.dir("memory")) + f"{OWN_MEMORY}/minibox/c1",
        "pids": str(fake.dir("pids") / "minibox/c1"),
        "cpuacct": str(fake.dir("cpuacct") / "minibox/c1"),
        "freezer": str(fake.dir("freezer") / "minibox/c1"),
        "cpu": str(fake.dir("cpu") / "minibox/c1"),
        "cpuset": str(fake.dir("cpuset") / "minibox/c1"),
    }
    assert fake.writes == [
        ("cpuset/minibox/cpuset.cpus", "0-1"),       # a new cpuset parent gets its parent's cpus and mems
        ("cpuset/minibox/cpuset.mems", "0"),
        (f"memory{OWN_MEMORY}/minibox/c1/memory.limit_in_bytes", str(64 << 20)),
        (f"memory{OWN_MEMORY}/minibox/c1/memory.memsw.limit_in_bytes", str(96 << 20)),  # memory + swap
        ("cpu/minibox/c1/cpu.cfs_period_us", "100000"),
        ("cpu/minibox/c1/cpu.cfs_quota_us", "50000"),
        ("cpu/minibox/c1/cpu.shares", str(weight_to_shares(100))),
        ("pids/minibox/c1/pids.max", "64"),
        ("cpuset/minibox/c1/cpuset.cpus", "1"),
        ("cpuset/minibox/c1/cpuset.mems", "0"),     # copied from the parent
    ]
    # The host's own settings (memory.use_hierarchy, the root cpuset...) were not touched.
    assert all("/minibox/" in path for path, _ in fake.writes)


def test_a_second_container_reuses_the_initialised_cpuset_parent(fake: FakeCgroup1, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    Cgroup.create("c1", Limits(cpuset="0"), layout=layout)
    fake.writes.clear()
    Cgroup.create("c2", Limits(cpuset="0-1"), layout=layout)
    assert fake.writes == [("cpuset/minibox/c2/cpuset.cpus", "0-1"), ("cpuset/minibox/c2/cpuset.mems", "0")]


def test_only_needed_hierarchies_are_used(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(memory="32M"), layout=layout_for(fake, tmp_path))
    # memory (limit, OOM), pids (count), cpuacct (cpu time), freezer (pause, kill): always; cpu and cpuset on demand.
    assert sorted(cg.paths) == ["cpuacct", "freezer", "memory", "pids"]
    assert fake.writes == [(f"memory{OWN_MEMORY}/minibox/c1/memory.limit_in_bytes", str(32 << 20))]


@pytest.mark.parametrize("limits", [Limits(), Limits(memory="32M", pids=8), Limits(cpus=0.5), FULL],
                         ids=["none", "memory+pids", "cpus", "full"])
def test_the_record_names_exactly_the_directories_create_makes(fake: FakeCgroup1, tmp_path: Path,
                                                               limits: Limits) -> None:
    # The record is written before the cgroup exists; a mismatch would cost a rewrite on every start.
    layout = layout_for(fake, tmp_path)
    planned = cgroups.planned_paths("c1", limits, layout=layout)
    assert Cgroup.create("c1", limits, layout=layout).paths == planned


@pytest.mark.parametrize(("weight", "shares"), [(1, 2), (100, 2598), (10000, 262144)])
def test_weight_to_shares_known_values(weight: int, shares: int) -> None:
    assert weight_to_shares(weight) == shares


def test_weight_to_shares_inverts_the_runc_crun_formula() -> None:
    for weight in range(1, 10001):
        shares = weight_to_shares(weight)
        assert 2 <= shares <= 262144
        assert 1 + (shares - 2) * 9999 // 262142 == weight  # runc's ConvertCPUSharesToCgroupV2Value


def test_co_mounted_cpu_and_cpuacct_share_one_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make(tmp_path, monkeypatch, COMOUNTED)
    cg = Cgroup.create("c1", Limits(cpus=1.0), layout=layout_for(fake, tmp_path))
    assert cg.paths["cpu"] == cg.paths["cpuacct"] == str(fake.dir("cpu") / "minibox/c1")
    fake.writes.clear()
    cg.attach(4242)
    procs_writes = [path for path, _ in fake.writes]
    assert len(procs_writes) == len(set(procs_writes)) == 4   # memory, pids, cpu+cpuacct, freezer: once each
    assert cg.procs() == [4242]


def test_attach_writes_the_pid_into_every_hierarchy(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", FULL, layout=layout_for(fake, tmp_path))
    fake.writes.clear()
    cg.attach(4242)
    assert sorted(fake.writes) == sorted((fake.rel(d) + "/cgroup.procs", "4242") for d in cg.paths.values())
    assert cg.clone_into_fd() is None


def test_freeze_and_thaw_write_freezer_state(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    state = Path(cg.paths["freezer"]) / "freezer.state"
    cg.freeze()
    assert state.read_text() == "FROZEN"
    cg.thaw()
    assert state.read_text() == "THAWED"


def test_stats_usage_and_oom_evidence(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(memory="32M"), layout=layout_for(fake, tmp_path))
    mem, pids = Path(cg.paths["memory"]), Path(cg.paths["pids"])
    (mem / "memory.usage_in_bytes").write_text("2097152\n")
    (mem / "memory.max_usage_in_bytes").write_text("33554432\n")
    (Path(cg.paths["cpuacct"]) / "cpuacct.usage").write_text("2500000000\n")
    (pids / "pids.current").write_text("2\n")
    (pids / "pids.peak").write_text("9\n")
    assert cg.stats() == Stats(memory_bytes=2 << 20, memory_peak_bytes=32 << 20, cpu_seconds=2.5, pids=2)
    assert cg.usage() == Usage(memory_peak_bytes=32 << 20, cpu_seconds=2.5, pids_peak=9)
    assert cg.oom_killed() is False
    (mem / "memory.failcnt").write_text("17\n")  # the limit was hit, but reclaim coped: no kill
    assert cg.oom_killed() is False
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cg.oom_killed() is True
    (pids / "pids.peak").unlink()  # kernels before 6.x have no pids.peak in v1
    assert cg.usage().pids_peak is None
    cg.remove()
    assert cg.oom_killed() is True  # read before the directories went away


def test_old_kernels_without_the_oom_kill_counter_use_failcnt(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(memory="32M"), layout=layout_for(fake, tmp_path))
    mem = Path(cg.paths["memory"])
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert cg.oom_killed() is False
    (mem / "memory.failcnt").write_text("3\n")
    assert cg.oom_killed() is True


def test_remove_removes_every_directory_and_the_parent_with_its_last_user(fake: FakeCgroup1,
                                                                          tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    first = Cgroup.create("c1", FULL, layout=layout)
    second = Cgroup.create("c2", FULL, layout=layout)
    parents = cgroups.parent_dirs(layout=layout)
    first.remove()
    first.remove()  # idempotent
    assert not any(os.path.exists(d) for d in first.paths.values())
    assert all(os.path.isdir(d) for d in parents.values())  # c2 still uses them
    second.remove()
    assert not any(os.path.exists(d) for d in set(parents.values()))
    assert cgroups.prune_parents(layout=layout) == []


def test_remove_of_a_busy_cgroup_is_bounded_ebusy(fake: FakeCgroup1, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    (Path(cg.paths["memory"]) / "cgroup.procs").write_text("4242\n")
    with pytest.raises(SetupError) as info:
        cg.remove()
    assert (info.value.step, info.value.errno, info.value.detail) == ("cgroup remove", errno.EBUSY, cg.paths["memory"])
    assert not os.path.exists(cg.paths["pids"])  # the others went anyway


def test_swap_accounting_off_is_a_spec_error_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make(tmp_path, monkeypatch, SEPARATE)
    fake.swap = False
    with pytest.raises(SpecError) as info:
        Cgroup.create("c1", Limits(memory="64M", memory_swap="96M"), layout=layout_for(fake, tmp_path))
    assert info.value.field == "limits.memory_swap" and "swap accounting" in info.value.message
    assert not list(fake.base.rglob("c1"))


def test_a_cpu_the_parent_lacks_is_a_spec_error_and_cleans_up(fake: FakeCgroup1, tmp_path: Path) -> None:
    (fake.dir("cpuset") / "cpuset.cpus").write_text("0\n")
    with pytest.raises(SpecError) as info:
        Cgroup.create("c1", Limits(memory="64M", cpuset="1"), layout=layout_for(fake, tmp_path))
    assert info.value.field == "limits.cpuset"
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EINVAL
    assert not list(fake.base.rglob("c1"))


def test_a_missing_controller_for_a_limit_is_a_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make(tmp_path, monkeypatch, [m for m in SEPARATE if m != ("pids",)])
    with pytest.raises(SpecError) as info:
        Cgroup.create("c1", Limits(pids=10), layout=layout_for(fake, tmp_path))
    assert info.value.field == "limits.pids"
    cg = Cgroup.create("c2", Limits(), layout=layout_for(fake, tmp_path))  # without a pids limit it is fine
    assert "pids" not in cg.paths and cg.stats().pids is None


def test_an_absolute_configured_parent(fake: FakeCgroup1, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cgroups.PARENT_ENV, "/ci/boxes")
    cg = Cgroup.create("c1", Limits(cpuset="0"), layout=layout_for(fake, tmp_path))
    assert cg.paths["memory"] == str(fake.dir("memory") / "ci/boxes/c1")  # not under the per-command cgroup
    assert cg.paths["cpuset"] == str(fake.dir("cpuset") / "ci/boxes/c1")
    # Both new cpuset levels were initialised top-down before the container's.
    assert [w for w in fake.writes if w[0].startswith("cpuset/")][:4] == [
        ("cpuset/ci/cpuset.cpus", "0-1"), ("cpuset/ci/cpuset.mems", "0"),
        ("cpuset/ci/boxes/cpuset.cpus", "0-1"), ("cpuset/ci/boxes/cpuset.mems", "0")]


def test_a_parent_with_dotdot_is_refused(fake: FakeCgroup1, tmp_path: Path) -> None:
    with pytest.raises(PreflightError):  # host configuration, not a Spec field
        Cgroup.create("c1", Limits(), parent="../escape", layout=layout_for(fake, tmp_path))
    assert fake.writes == [] and not list(fake.base.rglob("c1"))


def test_a_parent_pruned_concurrently_is_recreated(fake: FakeCgroup1, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    Cgroup.create("c1", Limits(), layout=layout).remove()
    cgroups.prune_parents(layout=layout)
    cg = Cgroup.create("c2", Limits(), layout=layout)
    assert all(os.path.isdir(d) for d in cg.paths.values())

