"""The cgroup v2 backend against a temporary directory that imitates cgroup2.

No root and no real cgroup: a small fake of the kernel's side (mkdir creates
the interface files the parent's subtree_control grants; writes to
cgroup.subtree_control, cgroup.freeze and cgroup.kill behave as the kernel
does) records every write, and the tests check the exact files and values,
as Documentation/admin-guide/cgroup-v2.rst names them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox.container import cgroups
from minibox.container.cgroups import Cgroup, detect_layout
from minibox.errors import PreflightError, SetupError, SpecError
from minibox.sandbox import Stats, Usage
from minibox.spec import Limits

ALL = "cpuset cpu io memory hugetlb pids rdma misc"
CONTROLLER_FILES = {
    "memory": {"memory.max": "max", "memory.swap.max": "max", "memory.current": "0", "memory.peak": "0",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.peak": "0"},
    "cpu": {"cpu.max": "max 100000", "cpu.weight": "100"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": "", "cpuset.cpus.effective": "0-1"},
}


class FakeCgroup2:
    """Just enough of cgroup2's behaviour, on a plain directory tree."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.writes: list[tuple[str, str]] = []
        self.busy: set[str] = set()          # directories holding processes (subtree_control -> EBUSY)
        self.freezes = True                   # whether cgroup.freeze takes effect
        self.swap = True                      # whether the kernel has swap accounting
        root.mkdir()
        self._populate(root, ALL.split())
        monkeypatch.setattr(cgroups.files, "mkdir", self.mkdir)
        monkeypatch.setattr(cgroups.files, "rmdir", self.rmdir)
        monkeypatch.setattr(cgroups.files, "write", self.write)

    def rel(self, path: str | Path) -> str:
        return str(Path(path).relative_to(self.root))

    def _populate(self, d: Path, controllers: list[str]) -> None:
        files = {"cgroup.procs": "", "cgroup.controllers": " ".join(controllers), "cgroup.subtree_control": "",
                 "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0", "cgroup.kill": "",
                 "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"}
        for c in controllers:
            files.update(CONTROLLER_FILES.get(c, {}))
        if not self.swap:
            files.pop("memory.swap.max", None)
        for name, text in files.items():
            (d / name).write_text(text)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        granted = (Path(path).parent / "cgroup.subtree_control").read_text().split()
        self._populate(Path(path), granted)

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
        if p.name == "cgroup.subtree_control":
            if self.rel(p.parent) in self.busy:
                raise OSError(errno.EBUSY, "Device or resource busy", path)
            enabled = p.read_text().split()
            for token in value.split():
                name = token[1:]
                if token[0] == "+" and name not in enabled:
                    enabled.append(name)
            p.write_text(" ".join(enabled))
            for child in (c for c in p.parent.iterdir() if c.is_dir()):  # children gain the controllers
                (child / "cgroup.controllers").write_text(" ".join(enabled))
                for c in enabled:
                    for name, text in CONTROLLER_FILES.get(c, {}).items():
                        if not (child / name).exists() and (self.swap or name != "memory.swap.max"):
                            (child / name).write_text(text)
        elif p.name == "cgroup.procs":
            p.write_text(p.read_text() + value + "\n")
        elif p.name == "cgroup.freeze":
            p.write_text(value)
            if self.freezes:
                (p.parent / "cgroup.events").write_text(f"populated 1\nfrozen {value}\n")
        elif p.name == "cgroup.kill":
            (p.parent / "cgroup.procs").write_text("")
        else:
            p.write_text(value)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCgroup2]:
    monkeypatch.delenv(cgroups.PARENT_ENV, raising=False)
    fs = FakeCgroup2(tmp_path / "cgroup", monkeypatch)
    # A systemd-like host: controllers granted down to user.slice; the caller sits in app.scope.
    (fs.root / "cgroup.subtree_control").write_text("cpuset cpu io memory pids")
    fs.mkdir(str(fs.root / "user.slice"))
    (fs.root / "user.slice" / "cgroup.subtree_control").write_text("cpuset cpu memory pids")
    fs.mkdir(str(fs.root / "user.slice" / "app.scope"))
    yield fs


def layout_for(fake: FakeCgroup2, tmp_path: Path, own: str = "/user.slice/app.scope") -> cgroups.CgroupLayout:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"30 22 0:26 / {fake.root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    proc_cgroup = tmp_path / "cgroup.self"
    proc_cgroup.write_text(f"0::{own}\n")
    return detect_layout(str(mountinfo), str(proc_cgroup))


FULL = Limits(memory="64M", memory_swap="96M", cpus=0.5, cpu_weight=300, pids=64, cpuset="1")


def test_a_cgroup2_only_host_is_v2(fake: FakeCgroup2, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    assert layout.kind == "v2" and layout.version == 2 and str(layout) == "v2"
    assert layout.hierarchies["unified"].mountpoint == str(fake.root)


def test_the_record_names_exactly_the_directory_create_makes(fake: FakeCgroup2, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    planned = cgroups.planned_paths("c1", FULL, layout=layout)
    assert Cgroup.create("c1", FULL, layout=layout).paths == planned


def test_create_writes_exactly_the_v2_files(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", FULL, layout=layout_for(fake, tmp_path))
    own = "user.slice/app.scope"
    assert cg.version == 2
    assert cg.paths == {"unified": str(fake.root / own / "minibox" / "c1")}
    enable = "+memory +pids +cpu +cpuset"
    assert fake.writes == [
        (f"{own}/cgroup.subtree_control", enable),           # the caller's cgroup grants them to minibox/
        (f"{own}/minibox/cgroup.subtree_control", enable),   # minibox/ grants them to the container
        (f"{own}/minibox/c1/memory.max", str(64 << 20)),
        (f"{own}/minibox/c1/memory.swap.max", str(32 << 20)),  # memory_swap - memory
        (f"{own}/minibox/c1/cpu.max", "50000 100000"),
        (f"{own}/minibox/c1/cpu.weight", "300"),
        (f"{own}/minibox/c1/pids.max", "64"),
        (f"{own}/minibox/c1/cpuset.cpus", "1"),
    ]
    # Nothing above the caller's own cgroup was touched.
    assert all(path.startswith(own + "/") for path, _ in fake.writes)


def test_a_second_container_finds_the_controllers_enabled(fake: FakeCgroup2, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    first = Cgroup.create("c1", Limits(memory="64M", pids=10), layout=layout)
    fake.writes.clear()
    second = Cgroup.create("c2", Limits(memory="32M"), layout=layout)
    assert fake.writes == [("user.slice/app.scope/minibox/c2/memory.max", str(32 << 20))]
    for cg in (first, second):
        cg.remove()


def test_no_limits_still_gets_memory_and_pids_for_stats(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    assert ("user.slice/app.scope/minibox/cgroup.subtree_control", "+memory +pids") in fake.writes
    assert not [w for w in fake.writes if "/c1/" in w[0]]
    assert cg.stats() == Stats(memory_bytes=0, memory_peak_bytes=0, cpu_seconds=0.0, pids=0)


def test_attach_clone_fd_procs(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(pids=8), layout=layout_for(fake, tmp_path))
    fake.writes.clear()
    cg.attach(4242)
    assert fake.writes == [("user.slice/app.scope/minibox/c1/cgroup.procs", "4242")]
    assert cg.procs() == [4242]
    fd = cg.clone_into_fd()
    assert fd is not None
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(cg.paths["unified"]))
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_stats_usage_and_oom_read_the_v2_counters(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(memory="32M"), layout=layout_for(fake, tmp_path))
    d = Path(cg.paths["unified"])
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.peak").write_text("33554432\n")
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    (d / "pids.current").write_text("3\n")
    (d / "pids.peak").write_text("7\n")
    assert cg.stats() == Stats(memory_bytes=1 << 20, memory_peak_bytes=32 << 20, cpu_seconds=1.5, pids=3)
    assert cg.usage() == Usage(memory_peak_bytes=32 << 20, cpu_seconds=1.5, pids_peak=7)
    assert cg.oom_killed() is False
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert cg.oom_killed() is True
    (d / "memory.peak").unlink()  # kernels before 5.19 have no memory.peak
    assert cg.stats().memory_peak_bytes is None
    # remove() keeps the verdict and the usage: the evidence outlives the directory.
    cg.remove()
    assert not d.exists()
    assert cg.oom_killed() is True
    assert cg.usage() == Usage(memory_peak_bytes=None, cpu_seconds=1.5, pids_peak=7)


def test_freeze_and_thaw_wait_for_cgroup_events(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    d = Path(cg.paths["unified"])
    cg.freeze()
    assert (d / "cgroup.freeze").read_text() == "1" and "frozen 1" in (d / "cgroup.events").read_text()
    cg.thaw()
    assert (d / "cgroup.freeze").read_text() == "0" and "frozen 0" in (d / "cgroup.events").read_text()


def test_a_freeze_that_never_completes_is_bounded_and_undone(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    fake.freezes = False
    with pytest.raises(SetupError) as info:
        cg.freeze(timeout=0.05)
    assert info.value.step == "cgroup freeze" and info.value.errno == errno.ETIMEDOUT
    assert (Path(cg.paths["unified"]) / "cgroup.freeze").read_text() == "0"


def test_kill_all_uses_cgroup_kill(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    (Path(cg.paths["unified"]) / "cgroup.procs").write_text("111\n222\n")
    fake.writes.clear()
    cg.kill_all()
    assert fake.writes == [("user.slice/app.scope/minibox/c1/cgroup.kill", "1")]
    assert cg.procs() == []


def test_remove_keeps_the_shared_parent_while_used_and_is_idempotent(fake: FakeCgroup2, tmp_path: Path) -> None:
    first = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    second = Cgroup.create("c2", Limits(), layout=layout_for(fake, tmp_path))
    first.remove()
    first.remove()
    assert not Path(first.paths["unified"]).exists()
    assert (fake.root / "user.slice/app.scope/minibox").is_dir()  # c2 still uses it
    second.remove()
    assert not (fake.root / "user.slice/app.scope/minibox").exists()  # gone with its last user
    assert cgroups.prune_parents(layout=layout_for(fake, tmp_path)) == []


def test_remove_of_a_busy_cgroup_is_bounded_ebusy(fake: FakeCgroup2, tmp_path: Path) -> None:
    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    (Path(cg.paths["unified"]) / "cgroup.procs").write_text("4242\n")
    with pytest.raises(SetupError) as info:
        cg.remove()
    assert (info.value.step, info.value.errno, info.value.detail) == ("cgroup remove", errno.EBUSY, cg.paths["unified"])
    assert isinstance(info.value.__cause__, OSError)


def test_a_caller_cgroup_with_processes_cannot_delegate(fake: FakeCgroup2, tmp_path: Path) -> None:
    fake.busy.add("user.slice/app.scope")  # the no-internal-processes rule
    with pytest.raises(PreflightError, match=cgroups.PARENT_ENV):
        Cgroup.create("c1", Limits(memory="64M"), layout=layout_for(fake, tmp_path))
    assert not (fake.root / "user.slice/app.scope/minibox/c1").exists()


def test_the_host_root_cgroup_is_never_rewritten(fake: FakeCgroup2, tmp_path: Path) -> None:
    (fake.root / "cgroup.subtree_control").write_text("cpu io")  # no memory, no pids at the root
    with pytest.raises(PreflightError, match="root cgroup"):
        Cgroup.create("c1", Limits(memory="64M"), layout=layout_for(fake, tmp_path, own="/"))
    assert fake.writes == []


def test_a_configured_parent_is_used(fake: FakeCgroup2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_for(fake, tmp_path)
    monkeypatch.setenv(cgroups.PARENT_ENV, "/user.slice/ci/boxes")
    cg = Cgroup.create("c1", Limits(pids=5), layout=layout)
    assert cg.paths == {"unified": str(fake.root / "user.slice/ci/boxes/c1")}
    assert ("user.slice/ci/cgroup.subtree_control", "+memory +pids") in fake.writes
    cg2 = Cgroup.create("c2", Limits(), parent="sub", layout=layout)  # relative: under the caller's cgroup
    assert cg2.paths == {"unified": str(fake.root / "user.slice/app.scope/sub/c2")}


def test_missing_swap_accounting_is_a_spec_error_and_cleans_up(fake: FakeCgroup2, tmp_path: Path) -> None:
    fake.swap = False
    layout = layout_for(fake, tmp_path)
    with pytest.raises(SpecError) as info:
        Cgroup.create("c1", Limits(memory="64M", memory_swap="128M"), layout=layout)
    assert info.value.field == "limits.memory_swap"
    assert not (fake.root / "user.slice/app.scope/minibox/c1").exists()


def test_an_existing_container_is_not_clobbered(fake: FakeCgroup2, tmp_path: Path) -> None:
    layout = layout_for(fake, tmp_path)
    first = Cgroup.create("c1", Limits(memory="64M"), layout=layout)
    with pytest.raises(SetupError) as info:
        Cgroup.create("c1", Limits(memory="32M"), layout=layout)
    assert info.value.errno == errno.EEXIST
    assert (Path(first.paths["unified"]) / "memory.max").read_text() == str(64 << 20)


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_bad_names_are_refused_before_anything_exists(fake: FakeCgroup2, tmp_path: Path, name: str) -> None:
    with pytest.raises(SetupError) as info:  # the name is minibox's container id, not a Spec field
        Cgroup.create(name, Limits(), layout=layout_for(fake, tmp_path))
    assert info.value.errno == errno.EINVAL and info.value.step == "cgroup"
    assert fake.writes == []


def test_from_paths_round_trips_through_json(fake: FakeCgroup2, tmp_path: Path) -> None:
    import json

    cg = Cgroup.create("c1", Limits(), layout=layout_for(fake, tmp_path))
    again = Cgroup.from_paths(cg.version, json.loads(json.dumps(cg.paths)))
    assert cgroups.remove_stale(again.version, again.paths) is True
    assert not Path(cg.paths["unified"]).exists()
    assert cgroups.remove_stale(again.version, again.paths) is False
