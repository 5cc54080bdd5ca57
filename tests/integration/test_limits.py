"""Resource limits through the public API: what a user of Container/run sees.

The cgroup module itself is tested in test_cgroups_real.py; here the same
limits are exercised end to end: a Spec with Limits, a Result with a reason,
stats() while running, pause/resume, and nothing left afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import minibox
from minibox import Container, Limits, Spec

from ..conftest import child_pids, needs_root

pytestmark = needs_root


def _container_cgroups_left(box_id: str) -> list[str]:
    from minibox.container.cgroups import parent_dirs

    return [f"{d}/{box_id}" for d in parent_dirs().values() if os.path.exists(f"{d}/{box_id}")]


def test_oom_kill_is_reported_and_the_cgroup_removed() -> None:
    box = Container(Spec(argv=["sh", "-c", "x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"],
                         limits=Limits(memory="32M")))
    with box:
        result = box.wait(timeout=60)
    assert result.reason == "oom"
    assert result.shell_status == 137
    assert b"survived" not in result.stdout
    assert result.usage.memory_peak_bytes is not None and result.usage.memory_peak_bytes <= 32 << 20
    assert _container_cgroups_left(box.id) == []


def test_fork_bomb_is_contained_by_pids() -> None:
    host_tasks_before = len(os.listdir("/proc"))
    with Container(Spec(argv=["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 2; echo alive"],
                        limits=Limits(pids=32))) as box:
        time.sleep(1)
        stats = box.stats()
        assert stats.pids is not None and stats.pids <= 32
        box.kill()
        result = box.wait(timeout=30)
    assert b"Resource temporarily unavailable" in result.stderr or b"can't fork" in result.stderr
    assert result.usage.pids_peak is None or result.usage.pids_peak <= 32
    assert len(os.listdir("/proc")) < host_tasks_before + 20
    assert _container_cgroups_left(box.id) == []
    assert child_pids() == []


def test_cpu_limit_half_a_cpu() -> None:
    with Container(Spec(argv=["sh", "-c", "while :; do :; done"], limits=Limits(cpus=0.5))) as box:
        time.sleep(0.3)
        before = box.stats().cpu_seconds
        t0 = time.monotonic()
        time.sleep(2)
        after = box.stats().cpu_seconds
        elapsed = time.monotonic() - t0
        throttled = _throttled_periods(box.cgroup_paths)
    assert before is not None and after is not None
    rate = (after - before) / elapsed
    # The limit is an upper bound (CFS bandwidth: 50 ms per 100 ms period).
    # How much less a busy loop gets depends on the machine's load: either
    # the kernel throttled it (its own counter says the bound bit), or the
    # machine was too busy to give it even half a CPU.  Running at half a
    # CPU or more without ever being throttled means the limit is missing.
    assert rate <= 0.6, rate
    assert throttled > 0 or rate < 0.5, (rate, throttled)


def _throttled_periods(paths: dict[str, str]) -> int:
    """nr_throttled from cpu.stat (v1 cpu controller, or the v2 directory)."""
    directory = paths.get("cpu") or paths["unified"]
    with open(os.path.join(directory, "cpu.stat")) as f:
        return int(dict(line.split() for line in f)["nr_throttled"])


def test_pause_stops_a_counter_and_resume_continues_it(tmp_path: object) -> None:
    # The counter is the length of a file the loop appends to (appends
    # never leave the file momentarily empty, unlike rewrites).
    script = "while :; do echo . >> /tmp/count; done"
    with Container(Spec(argv=["sh", "-c", script], limits=Limits(pids=8))) as box:
        # Read through the container's root from the host: an exec would
        # join the frozen cgroup and freeze too.
        counter = f"/proc/{box.pid}/root/tmp/count"
        time.sleep(0.3)
        box.pause()
        first = os.stat(counter).st_size
        time.sleep(0.5)
        second = os.stat(counter).st_size
        assert first == second > 0, "the counter advanced while paused"
        box.resume()
        time.sleep(0.3)
        assert os.stat(counter).st_size > second


def test_stats_report_growing_memory() -> None:
    script = ("a=''; for i in 1 2 3 4 5 6; do a=\"$a$(head -c 2000000 /dev/zero | tr '\\0' x)\"; sleep 0.3; done; "
              "sleep 5")
    with Container(Spec(argv=["sh", "-c", script], limits=Limits(memory="128M"))) as box:
        samples = []
        for _ in range(5):
            time.sleep(0.35)
            samples.append(box.stats().memory_bytes or 0)
    assert samples[-1] > samples[0] + 4_000_000, samples


def test_usage_of_a_limited_run() -> None:
    result = minibox.run(Spec(argv=["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"],
                              limits=Limits(memory="64M", pids=16)))
    assert result.reason == "exited"
    assert result.usage.cpu_seconds and result.usage.cpu_seconds > 0
    assert result.usage.memory_peak_bytes and result.usage.memory_peak_bytes > 0


def test_timeout_with_limits_removes_the_cgroup() -> None:
    box = Container(Spec(argv=["sleep", "30"], limits=Limits(memory="64M"), timeout=0.3))
    with box:
        result = box.wait()
    assert result.reason == "timeout"
    assert _container_cgroups_left(box.id) == []


def test_exception_in_with_block_removes_the_cgroup() -> None:
    box = Container(Spec(argv=["sleep", "30"], limits=Limits(pids=8)))
    with pytest.raises(KeyError), box:
        raise KeyError("caller bug")
    assert _container_cgroups_left(box.id) == []


def test_cli_reports_oom_with_137_and_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "minibox.cli", "run", "--memory", "32M", "--",
                          "sh", "-c", "x=$(head -c 104857600 /dev/zero | tr '\\0' a)"],
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 137
    assert b"memory limit" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("flag", "value"), [("--memory", "12Q"), ("--cpus", "lots"), ("--pids", "-1"),
                                             ("--cpuset", "a"), ("--cpu-weight", "0"), ("--memory-swap", "1M")])
def test_cli_bad_limit_flags_exit_125_naming_the_flag(flag: str, value: str) -> None:
    out = subprocess.run([sys.executable, "-m", "minibox.cli", "run", flag, value, "--", "true"],
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 125
    assert flag.encode() in out.stderr


def test_gc_removes_what_a_killed_caller_left() -> None:
    # A caller that starts a limited container and is SIGKILLed leaves a cgroup and a state file.
    code = ("import minibox, os, sys; from minibox import Container, Spec, Limits;"
            "b = Container(Spec(argv=['sleep', '30'], limits=Limits(pids=8))); b.start();"
            "print(b.id, b.pid, flush=True); os.kill(os.getpid(), 9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False,
                         env=os.environ.copy())
    box_id, pid = out.stdout.split()
    assert _container_cgroups_left(box_id.decode())
    # its init died with the caller (the owner's keeper killed it); the cgroup is gc's
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{int(pid)}") and time.monotonic() < deadline:
        time.sleep(0.05)
    gc = subprocess.run([sys.executable, "-m", "minibox.cli", "gc"], capture_output=True, timeout=60, check=False)
    assert gc.returncode == 0 and box_id in gc.stdout
    assert _container_cgroups_left(box_id.decode()) == []
