"""The cgroup namespace is rooted at the container's own cgroup, on every clone mode.

cgroup_namespaces(7): a new cgroup namespace takes as its root the cgroups
its creator is in *at that moment*.  A child that joins its cgroups after
the clone (vfork mode, and clone mode on cgroup v1, where the parent
attaches it) would see the host's layout (``/minibox/<id>``) in
/proc/self/cgroup; minibox has it unshare the namespace once it has
joined, as runc does.  Checked from inside, with the clone mode recorded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import minibox.container.container as container_mod
from minibox import Container, Limits, Spec
from minibox.container.spawn import ChildPlan
from tests.conftest import needs_root

pytestmark = needs_root

MODES = {
    # default namespaces, no user namespace, no network: CLONE_VM|CLONE_VFORK
    "vfork": None,
    # a time namespace needs the parent between clone and exec: clone3
    "clone": ("pid", "mnt", "uts", "ipc", "net", "cgroup", "time"),
    # a user namespace too (the parent writes the id maps)
    "clone+userns": ("user", "pid", "mnt", "uts", "ipc", "net", "cgroup"),
}


@pytest.fixture
def used_vfork(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Records, for each container started, whether it took the vfork mode."""
    seen: list[bool] = []
    real = container_mod.spawn

    def recording(plan: ChildPlan) -> tuple[int, int]:
        if plan.rootfs is not None:
            seen.append(plan.use_vfork)
        return real(plan)

    monkeypatch.setattr(container_mod, "spawn", recording)
    yield seen


def cgroup_lines(text: bytes) -> list[tuple[str, str]]:
    pairs = []
    for line in text.decode().splitlines():
        _, controllers, path = line.split(":", 2)
        pairs.append((controllers, path))
    return pairs


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_container_sees_its_cgroup_as_the_root(mode: str, used_vfork: list[bool]) -> None:
    spec = Spec(argv=["cat", "/proc/self/cgroup"], limits=Limits(pids=32, memory="64M"), namespaces=MODES[mode])
    with Container(spec) as box:
        result = box.wait(timeout=60)
        assert result.exit_code == 0, result.stderr
        inside = cgroup_lines(result.stdout)
        # the same cgroup, seen from outside, is minibox's own below the host's tree
        outside = box.cgroup_paths
    assert used_vfork == [mode == "vfork"]
    assert inside, "no cgroup lines"
    assert all(path == "/" for _, path in inside), inside
    assert outside and all(box.id in path for path in outside.values())


def test_exec_joins_the_same_rooted_namespace() -> None:
    spec = Spec(argv=["sleep", "30"], limits=Limits(pids=32))
    with Container(spec) as box:
        result = box.exec(["cat", "/proc/self/cgroup"])
        box.kill()
    assert result.exit_code == 0, result.stderr
    assert all(path == "/" for _, path in cgroup_lines(result.stdout)), result.stdout


@pytest.mark.parametrize("limited", [False, True], ids=["no-cgroup", "limits"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_exec_enters_every_namespace_on_every_clone_mode(mode: str, limited: bool) -> None:
    # exec takes its own fast path (vfork) when it can; a time namespace is one
    # setns(2) refuses to a process sharing its memory (EUSERS), so each mode's
    # namespaces are entered for real and compared, inode by inode, with the command's.
    limits = Limits(pids=32) if limited else Limits()
    spec = Spec(argv=["sleep", "30"], limits=limits, namespaces=MODES[mode])
    with Container(spec) as box:
        assert box.pid is not None
        names = sorted(spec.effective_namespaces)
        theirs = [os.readlink(f"/proc/{box.pid}/ns/{name}") for name in names]
        # busybox readlink takes one file at a time
        script = " ".join(f"readlink /proc/self/ns/{name};" for name in names)
        result = box.exec(["sh", "-c", script])
        box.kill()
    assert result.exit_code == 0, result.stderr
    assert result.stdout.decode().split() == theirs
