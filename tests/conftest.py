"""Shared fixtures: a busybox rootfs, root checks, and leak detection.

The suite runs as root on the project's CI machines; tests that need root
are skipped with the reason printed elsewhere, never faked.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Keep the tests' runtime state out of the host's /run/minibox, in a
# directory removed again when the test process exits.
if "MINIBOX_RUNTIME_DIR" not in os.environ:
    _runtime_dir = tempfile.mkdtemp(prefix="minibox-test-run-")
    os.environ["MINIBOX_RUNTIME_DIR"] = _runtime_dir
    atexit.register(shutil.rmtree, _runtime_dir, True)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts, cgroups)")


@pytest.fixture(scope="session")
def busybox_rootfs() -> str:
    """minibox's default busybox rootfs (built once, in the state directory)."""
    from minibox.images.busybox import default_rootfs

    return default_rootfs()


@pytest.fixture
def scratch_rootfs(tmp_path: Path) -> Iterator[str]:
    """A private busybox rootfs a test may modify; removed afterwards.

    Containers bind-mount only inside their own mount namespace, so nothing
    from the host can be mounted below it once the container is gone.
    """
    from minibox.images.busybox import build_busybox_rootfs

    path = build_busybox_rootfs(tmp_path / "rootfs")
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def host_mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if text in line]


class ChildList(list[int]):
    """A list of pids whose repr shows each one's state and command line."""

    def __repr__(self) -> str:
        parts = []
        for pid in self:
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                cmd, state = "?", "?"
            parts.append(f"{pid} [{state}] {cmd!r}")
        return "[" + ", ".join(parts) + "]"


def child_pids() -> list[int]:
    """Our own children (zombies included), from /proc/PID/stat's ppid."""
    from minibox import procfs

    return ChildList(child.pid for child in procfs.children(os.getpid()))


# -- the whole suite leaves nothing behind --------------------------------------------

def _leftover_snapshot() -> dict[str, set[str]]:
    """What minibox can leave on a host: cgroups, mounts, processes, links, nft tables, state."""
    import glob
    import shutil as _shutil
    import subprocess as _subprocess

    snap: dict[str, set[str]] = {
        "cgroups": {p for pattern in ("/sys/fs/cgroup/*/minibox/*/", "/sys/fs/cgroup/*/*/*/minibox/*/",
                                      "/sys/fs/cgroup/unified/**/minibox/*/")
                    for p in glob.glob(pattern, recursive=True)},
        "mounts": set(host_mounts_mentioning("minibox")),
        "children": {f"{pid} {open(f'/proc/{pid}/comm').read().strip()}" for pid in child_pids()
                     if os.path.exists(f"/proc/{pid}/comm")},
        "links": {name for name in os.listdir("/sys/class/net") if name.startswith(("mbv", "mbtap", "mbt", "minibox"))},
        "state": set(glob.glob(os.path.join(os.environ["MINIBOX_RUNTIME_DIR"], "**", "*.json"), recursive=True)),
    }
    if _shutil.which("nft") and os.geteuid() == 0:
        out = _subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        snap["nft tables"] = {line for line in out.splitlines() if "minibox" in line or " mbt" in line}
    return snap


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole suite: no cgroup, mount, process, link, nft table or state file of ours remains.

    bench/mutation.py sets MINIBOX_MUTATION_RUN: a mutant is judged by its
    tests alone, not by what other processes on the machine leave.
    """
    if os.environ.get("MINIBOX_MUTATION_RUN"):
        yield
        return
    before = _leftover_snapshot()
    yield
    import time

    deadline = time.monotonic() + 10  # a process or link may take a moment to go
    while True:
        after = _leftover_snapshot()
        leaked = {kind: sorted(after[kind] - before.get(kind, set())) for kind in after}
        leaked = {kind: items for kind, items in leaked.items() if items}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not leaked, f"the test suite left these behind: {leaked}"
