"""A container's processes move themselves into its cgroups, and land in every one of them.

On cgroup v1 the child writes "0" to each hierarchy's ``tasks`` file
(Cgroup.self_join_files): a thread moving itself skips the kernel's global
threadgroup lock and its RCU grace period.  These tests check, from the
host, what a user relies on: on every clone mode the container's init is in
each of its cgroups, a process started by ``exec`` is counted and limited
there too, and the limits still hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import minibox.container.container as container_mod
from minibox import Container, Limits, Spec
from minibox.container.cgroups import detect_layout
from minibox.container.spawn import ChildPlan
from tests.conftest import needs_root

pytestmark = needs_root

MODES = {
    # default namespaces, no user namespace, no network: CLONE_VM|CLONE_VFORK
    "vfork": None,
    # a time namespace needs the parent between clone and exec: clone3
    "clone": ("pid", "mnt", "uts", "ipc", "net", "cgroup", "time"),
    # a user namespace too (the parent writes the id maps first)
    "clone+userns": ("user", "pid", "mnt", "uts", "ipc", "net", "cgroup"),
}


@pytest.fixture
def join_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Records how many join fds each container's child was given."""
    seen: list[int] = []
    real = container_mod.spawn

    def recording(plan: ChildPlan) -> tuple[int, int]:
        seen.append(len(plan.cgroup_procs_fds))
        return real(plan)

    monkeypatch.setattr(container_mod, "spawn", recording)
    yield seen


def procs_of(directory: str) -> set[int]:
    with open(f"{directory}/cgroup.procs") as f:
        return {int(line) for line in f if line.strip()}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_init_is_in_every_cgroup_of_the_container(mode: str, join_files: list[int]) -> None:
    spec = Spec(argv=["sleep", "30"], limits=Limits(memory="64M", pids=16), namespaces=MODES[mode])
    with Container(spec) as box:
        paths = box.cgroup_paths
        assert paths, "a container with limits has cgroups"
        for controller, directory in paths.items():
            assert procs_of(directory) == {box.pid}, f"{controller}: {directory}"
        assert box.stats().pids == 1
        box.kill()
    if detect_layout().version == 1:
        # the child joined by itself, one fd per directory (no attach() from the parent)
        assert join_files == [len(set(paths.values()))]


def test_a_process_started_by_exec_is_counted_in_the_containers_cgroup() -> None:
    with Container(Spec(argv=["sleep", "30"], limits=Limits(pids=16))) as box:
        results = []
        worker = threading.Thread(target=lambda: results.append(box.exec(["sleep", "2"])))
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while box.stats().pids != 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert box.stats().pids == 2, "the exec'd sleep is not in the container's pids cgroup"
        finally:
            worker.join(30)
        box.kill()
    assert results and results[0].exit_code == 0


def test_the_pids_limit_holds_for_a_process_started_by_exec() -> None:
    # init (1) + the exec'd shell (2) fill pids.max = 2: the shell cannot fork
    with Container(Spec(argv=["sleep", "30"], limits=Limits(pids=2))) as box:
        result = box.exec(["sh", "-c", "sleep 1 & echo forked"])
        box.kill()
    assert b"forked" not in result.stdout
    assert b"can't fork" in result.stderr or b"Resource temporarily unavailable" in result.stderr, result.stderr
