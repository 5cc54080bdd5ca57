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
    from minibox.container.busybox import default_rootfs

    return default_rootfs()


@pytest.fixture
def scratch_rootfs(tmp_path: Path) -> Iterator[str]:
    """A private busybox rootfs a test may modify; removed afterwards.

    Containers bind-mount only inside their own mount namespace, so nothing
    from the host can be mounted below it once the container is gone.
    """
    from minibox.container.busybox import build_busybox_rootfs

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
    me = os.getpid()
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        if int(fields[1]) == me:
            kids.append(int(entry))
    return ChildList(kids)
