"""Which file a process writes "0" to, to move itself into a cgroup (Cgroup.self_join_files)."""

from __future__ import annotations

from minibox.container.cgroups import Cgroup


def test_v1_moves_the_thread_through_tasks_once_per_directory() -> None:
    # cpu and cpuacct co-mounted share one directory: one write is enough
    cgroup = Cgroup.from_paths(1, {"memory": "/m/x", "cpu": "/c/x", "cpuacct": "/c/x", "pids": "/p/x"})
    assert cgroup.self_join_files() == ["/m/x/tasks", "/c/x/tasks", "/p/x/tasks"]


def test_v2_moves_the_process_through_cgroup_procs() -> None:
    assert Cgroup.from_paths(2, {"unified": "/u/x"}).self_join_files() == ["/u/x/cgroup.procs"]
