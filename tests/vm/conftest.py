"""Fixtures of the VM tests: a busybox rootfs and the leak check.

These tests boot real guests (under TCG on the project's machines) and need
root, QEMU and virtiofsd; they are not skipped when those are present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _build_busybox_rootfs(root: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed for the VM tests (apt-get install busybox-static)"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split():
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp", "root"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox rootfs of this test session's own (tests may write into it)."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # pytest makes it 0700: other users inside could not reach /bin
    _build_busybox_rootfs(root)
    return str(root)


def _children(names: tuple[str, ...] = ("qemu-system", "virtiofsd")) -> list[int]:
    """Our processes (any depth) whose command name starts with one of ``names``."""
    from minibox import procfs

    me = os.getpid()
    parents: dict[int, int] = {}
    comms: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        st = procfs.stat(int(entry)) if entry.isdigit() else None
        if st is not None:
            parents[st.pid] = st.ppid
            comms[st.pid] = st.comm
    found = []
    for pid, comm in comms.items():
        p = pid
        while p > 1 and p in parents:
            p = parents[p]
            if p == me:
                if comm.startswith(names):
                    found.append(pid)
                break
    return found


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return fds


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """After the test: no QEMU/virtiofsd of ours, no VM state file, no new socket or memfd."""
    from minibox import owner, records

    before = {f for f in _open_fds() if f.startswith(("socket:", "/memfd:", "pipe:"))}
    states_before = set(Path(records.directory_name()).glob("*.json"))
    yield
    assert _children() == [], "QEMU or virtiofsd left running"
    assert set(Path(records.directory_name()).glob("*.json")) - states_before == set(), "VM state file left behind"
    after = {f for f in _open_fds() if f.startswith(("socket:", "/memfd:", "pipe:"))}
    keeper = owner.keeper_fd()  # the owner's keeper socket: one per process, for its life (minibox/owner.py)
    if keeper is not None:
        after.discard(os.readlink(f"/proc/self/fd/{keeper}"))
    assert after - before == set(), f"file descriptors left open: {after - before}"
