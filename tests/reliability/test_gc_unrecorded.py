"""Cgroups no record names: gc says what it skips and why, and removes only what is nobody's."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

from minibox import gc
from minibox.container.cgroups import Cgroup
from minibox.spec import Limits

from ..conftest import needs_root

pytestmark = needs_root


def _age(cgroup: Cgroup, seconds: float) -> None:
    then = time.time() - seconds
    for directory in cgroup.paths.values():
        os.utime(directory, (then, then))


def test_an_empty_unrecorded_cgroup_is_removed_once_past_the_grace_and_reported_before() -> None:
    cg = Cgroup.create(f"gc-{uuid.uuid4().hex[:12]}", Limits(pids=8))
    name = os.path.basename(next(iter(cg.paths.values())))
    try:
        report = gc.collect()
        assert [why for what, why in report.skipped if what == f"cgroup {name}"] != []
        assert all(os.path.isdir(d) for d in cg.paths.values())
        _age(cg, gc.UNRECORDED_GRACE + 1)
        report = gc.collect()
        assert f"cgroup {name} (unrecorded)" in report.removed
        assert not any(os.path.isdir(d) for d in cg.paths.values())
    finally:
        cg.remove()


def test_an_unrecorded_cgroup_holding_processes_is_reported_never_killed() -> None:
    cg = Cgroup.create(f"gc-{uuid.uuid4().hex[:12]}", Limits(pids=8))
    name = os.path.basename(next(iter(cg.paths.values())))
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        cg.attach(proc.pid)
        _age(cg, gc.UNRECORDED_GRACE + 1)
        report = gc.collect()
        assert any(what == f"cgroup {name}" and "holds processes" in why for what, why in report.skipped)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        cg.kill_all()
        cg.remove()
