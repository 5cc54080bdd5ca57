"""The "Try it yourself" blocks of docs/*.md run, and leave the host as they found it.

Every fenced block whose info string is exactly ``sh try-it`` rebuilds one
chapter's step with the plain tools (unshare, nsenter, lsns, ip netns,
cgroupfs writes, setpriv, qemu-system-x86_64), without minibox.  Each is run
here as a reader would run it -- ``sh -eu`` as root, from an empty
directory, with minibox's venv on ``PATH`` (the VM block asks ``minibox
kernel`` for the guest kernel) -- and must exit 0.

A block must work inside namespaces, cgroups and directories it makes and
removes itself; afterwards the host's host name, mount table, network
namespaces, network devices, pids-cgroup children and the block's temporary
directory are compared with what they were before.  What each block prints
is checked against a line the chapter promises (``EXPECT`` below), so a
block whose tools silently did nothing fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..unit.test_docs import Block, try_it_blocks

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="try-it blocks create namespaces and cgroups: needs root")]

TIMEOUT = 180

#: For each chapter, text its block's output must contain: the effect the chapter teaches.
EXPECT: dict[str, tuple[str, ...]] = {
    "spawn.md": ("pid 1 on tryit, devices: lo", "CapEff:\t0000000000000000", "NoNewPrivs:\t1",
                 "open files at most: 256"),
    "namespaces.md": ("tryit", "message queues, box: 1", "monotonic        3600",
                      "boottime         3600"),
    "rootfs.md": ("/ now holds: /bin /old /proc", "/old is empty: 0 entries"),
    "cgroups.md": ("a fork failed", "refused forks (pids.events): max "),
    "hardening.md": ("with CAP_SYS_ADMIN: mounted (privately)", "without capabilities: refused (EPERM)",
                     "sethostname refused too"),
    "networking.md": ("1 packets received", "the host has no tryit0"),
    "vm.md": ("guest: kernel ", "I am pid 1"),
}


def _host_view() -> dict[str, object]:
    """What a try-it block must not change on the host."""
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f)
    pids_root = Path("/sys/fs/cgroup/pids")
    if not pids_root.is_dir():
        pids_root = Path("/sys/fs/cgroup")
    return {
        "hostname": socket.gethostname(),
        "mounts": mounts,
        # minibox's own devices ("mb...") and namespaces of concurrent test runs come and go
        # on this shared host; a block's would be named as in the block (tryit0, veth0, eth0).
        "netns": sorted(n for n in os.listdir("/run/netns") if "tryit" in n) if os.path.isdir("/run/netns") else [],
        "links": sorted(n for n in os.listdir("/sys/class/net") if not n.startswith("mb")),
        "cgroups": sorted(p.name for p in pids_root.iterdir() if p.name.startswith("minibox-tryit")),
    }


def test_every_chapter_block_has_an_expectation() -> None:
    assert {b.path.name for b in try_it_blocks()} == set(EXPECT)


@pytest.mark.parametrize("block", try_it_blocks(), ids=lambda b: b.name)
def test_try_it_block(block: Block, tmp_path: Path) -> None:
    if block.path.name == "vm.md" and shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, TMPDIR=str(scratch), PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               LC_ALL="C")
    before = _host_view()
    proc = subprocess.run(["sh", "-eu", "-c", block.code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    after = _host_view()
    assert proc.returncode == 0, (
        f"{block.name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    for wanted in EXPECT[block.path.name]:
        assert wanted in proc.stdout, f"{block.name}: {wanted!r} not in its output:\n{proc.stdout}"
    assert after == before, f"{block.name} changed the host: before {before}, after {after}"
    assert not list(scratch.iterdir()), f"{block.name} left temp files: {list(scratch.iterdir())}"
    assert not list(cwd.iterdir()), f"{block.name} left files in its directory: {list(cwd.iterdir())}"
