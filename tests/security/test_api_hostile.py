"""Probes of the Python API's container path by a hostile process inside it.

minibox's users sandbox code they do not trust: what runs inside may try to
exhaust the host through the container's own resources, or to make the
caller's :meth:`Container.exec` and :meth:`Container.wait` hang, leak or
lie.  Each test here fails if the hole it names were open; what it tries
runs inside the container only.  Probes that held are kept, so a change
that opens one again is caught.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

import minibox
from minibox import Container, Spec
from minibox.container.plan import DEFAULT_LAYER_SIZE

from ..conftest import needs_root

pytestmark = needs_root


def _df_kib(result: minibox.Result) -> dict[str, int]:
    """``{mount point: size in KiB}`` from the output of ``df -k``."""
    sizes = {}
    for line in result.stdout.decode().splitlines()[1:]:
        fields = line.split()
        sizes[fields[-1]] = int(fields[1])
    return sizes


# -- the default container's writable layer and /tmp are host memory ---------------------------

def test_the_default_layer_and_tmp_are_bounded_without_limits() -> None:
    # A default container has no cgroup: its tmpfs pages are charged to no
    # bound of its own.  Unbounded, each tmpfs offered half the host's RAM
    # (12 GiB of 24 here) to 'head -c 20G /dev/zero > /tmp/f'.
    result = minibox.run(Spec(argv=["df", "-k", "/", "/tmp"], timeout=10))
    assert result.exit_code == 0, result.stderr
    sizes = _df_kib(result)
    assert sizes["/"] * 1024 <= DEFAULT_LAYER_SIZE
    assert sizes["/tmp"] * 1024 <= DEFAULT_LAYER_SIZE


@pytest.mark.parametrize("where", ["/tmp/fill", "/fill"])
def test_filling_the_layer_or_tmp_stops_at_the_bound(where: str) -> None:
    script = f"head -c 16777216 /dev/zero > {where}; echo rc=$?; wc -c < {where}"
    result = minibox.run(Spec(argv=["sh", "-c", script], rootfs_overlay_size="4M", timeout=10))
    lines = result.stdout.decode().split()
    assert lines[0] == "rc=1", result.stderr  # the write failed (ENOSPC) ...
    assert int(lines[1]) <= 4 << 20  # ... at the bound


# -- Container.exec, the entry point of whoever already runs inside ------------------------------

@pytest.fixture
def box() -> Iterator[Container]:
    """A running default container (its init sleeps) to exec into."""
    container = Container(Spec(argv=["sleep", "60"], timeout=120))
    container.start()
    try:
        yield container
    finally:
        container.close()


def _tasks_inside(box: Container, name: str) -> int:
    """How many live processes named ``name`` run in ``box`` (its init, sleep, reaps none: zombies don't count)."""
    script = ("n=0; for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null); "
              f"[ \"$2\" = '({name})' ] && [ \"$3\" != Z ] && n=$((n+1)); done; echo $n")
    return int(box.exec(["sh", "-c", script], timeout=10).stdout)


def test_an_exec_flooding_output_from_many_processes_ends_at_its_timeout(box: Container) -> None:
    # Before: the deadline was looked at only when poll() came back empty,
    # which a flood of output never lets it do, and the timeout killed the
    # exec'd shell only: its four writers flooded on through the 5 s drain
    # (7.6 s and 574 MB for timeout=1) and ran on in the container.
    started = time.monotonic()
    result = box.exec(["sh", "-c", "yes & yes & yes & yes & wait"], timeout=1)
    took = time.monotonic() - started
    assert result.reason == "timeout"
    assert took < 3.5, f"exec(timeout=1) took {took:.1f} s"
    assert _tasks_inside(box, "yes") == 0


def test_an_exec_whose_background_child_holds_stdout_ends_at_its_timeout(box: Container) -> None:
    # The exec'd shell exits at once; its child keeps the stdout pipe open.
    # The caller waits for the pipe (as subprocess and docker exec do) --
    # but no longer than the timeout, and the child is gone afterwards.
    started = time.monotonic()
    result = box.exec(["sh", "-c", "sleep 1000 & echo started"], timeout=1)
    took = time.monotonic() - started
    assert result.stdout == b"started\n"
    assert took < 3.5, f"exec(timeout=1) took {took:.1f} s"
    assert _tasks_inside(box, "sleep") == 1  # the init's own


def test_a_flood_of_exec_output_arrives_whole_and_leaks_no_fd_or_thread(box: Container) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for _ in range(3):
        result = box.exec(["sh", "-c", "head -c 20000000 /dev/zero; head -c 3000000 /dev/zero >&2"], timeout=30)
        assert (len(result.stdout), len(result.stderr)) == (20000000, 3000000)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads
