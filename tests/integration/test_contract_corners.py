"""Corners of the contract no other test exercised: each observed from inside a real container.

The time namespace, tmpfs sizes, nodev/nosuid, memory_swap, cgroup=False,
resize_tty, a bad isolation, 126 through the API, the cause kept on a real
host error, and the CLI's exit 130 when it is interrupted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

import minibox
from minibox import CommandNotFoundError, Container, Limits, Mount, SetupError, Spec, SpecError

from ..conftest import child_pids, needs_root

pytestmark = needs_root


def sh(script: str, **fields: object) -> Spec:
    return Spec(argv=["/bin/sh", "-c", script], timeout=60, **fields)  # type: ignore[arg-type]


def test_the_time_namespace_is_the_containers_own() -> None:
    host = os.stat("/proc/self/ns/time").st_ino
    with_time = minibox.run(sh("stat -L -c %i /proc/self/ns/time",
                               namespaces=("user", "mnt", "pid", "uts", "ipc", "net", "cgroup", "time")))
    without = minibox.run(sh("stat -L -c %i /proc/self/ns/time",
                             namespaces=("mnt", "pid", "uts", "ipc", "net", "cgroup")))
    assert with_time.exit_code == 0, with_time.stderr
    assert int(with_time.stdout) != host
    assert int(without.stdout) == host  # not asked for: shared, as the Spec says


def test_a_tmpfs_size_is_a_hard_bound_and_mounts_are_nodev_nosuid() -> None:
    result = minibox.run(sh("grep ' /scratch ' /proc/self/mountinfo; "
                            "dd if=/dev/zero of=/scratch/fill bs=64k count=64 2>&1; echo dd=$?",
                            mounts=[Mount.tmpfs("/scratch", size="1M")]))
    out = result.stdout.decode()
    mountinfo = out.splitlines()[0]
    options = set(mountinfo.split(" - ")[0].split()[5].split(","))
    assert {"nosuid", "nodev"} <= options, mountinfo
    assert "size=1024k" in mountinfo.split(" - ")[1]
    assert "No space left on device" in out and "dd=1" in out  # 4 MiB into 1 MiB fails


def test_memory_swap_is_enforced_or_refused_by_name() -> None:
    try:
        result = minibox.run(sh("cat /proc/self/cgroup", limits=Limits(memory="64M", memory_swap="64M")))
    except SpecError as e:
        # this kernel has no swap accounting: refused, naming the field, never ignored
        assert e.field == "limits.memory_swap" and "swap" in str(e)
        return
    assert result.exit_code == 0


def test_cgroup_false_makes_no_cgroup_and_says_so_when_asked_to_pause() -> None:
    with Container(sh("sleep 30"), cgroup=False) as box:
        assert box.cgroup_paths == {}
        with pytest.raises(minibox.MiniboxError) as info:
            box.pause()
        assert "cgroup" in str(info.value)
        box.kill(signal.SIGKILL)
        assert box.wait().signal == signal.SIGKILL


def test_resize_tty_reaches_the_containers_terminal() -> None:
    # a new pty has no size (busybox stty prints an error for 0x0): wait for ours to arrive
    script = "until stty size 2>/dev/null | grep -q '^[1-9]'; do sleep 0.05; done; stty size"
    ours, theirs = pty.openpty()
    try:
        fcntl.ioctl(ours, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
        with Container(sh(script, tty=True)) as box:
            box.resize_tty(from_fd=ours)
            result = box.wait(timeout=30)
    finally:
        os.close(ours)
        os.close(theirs)
    assert result.reason == "exited", result
    assert result.stdout.replace(b"\r", b"").strip().splitlines()[-1] == b"33 77"


def test_a_bad_isolation_is_a_spec_error_naming_it() -> None:
    with pytest.raises(SpecError) as info:
        minibox.run(sh("true"), isolation="vmm")
    assert info.value.field == "isolation"


def test_a_file_that_is_not_executable_is_126_through_the_api() -> None:
    with pytest.raises(CommandNotFoundError) as info:
        minibox.run(Spec(argv=["/etc/passwd"]))
    assert info.value.exit_status == 126 and info.value.errno == errno.EACCES
    with pytest.raises(CommandNotFoundError) as missing:
        minibox.run(Spec(argv=["/no/such/command"]))
    assert missing.value.exit_status == 127 and missing.value.errno == errno.ENOENT


def test_a_real_host_error_keeps_its_cause_and_errno() -> None:
    from minibox.container.cgroups import Cgroup

    name = f"mbx-cause-{os.getpid()}"
    first = Cgroup.create(name, Limits())
    try:
        with pytest.raises(SetupError) as info:
            Cgroup.create(name, Limits())  # the kernel says EEXIST
        assert info.value.errno == errno.EEXIST
        assert isinstance(info.value.__cause__, FileExistsError)
    finally:
        first.remove()


def test_the_cli_exits_130_when_interrupted_and_leaves_nothing(tmp_path: Path) -> None:
    minibox_cli = Path(sys.executable).parent / "minibox"
    # A shell without job control starts background commands with SIGINT
    # ignored (CI's may), and an interpreter started so never installs its
    # KeyboardInterrupt handler: give the CLI SIGINT's default disposition,
    # as a terminal's ^C would find it.
    proc = subprocess.Popen([str(minibox_cli), "run", "--", "sleep", "300"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the container's sleep is the CLI's child
            kids = [p for p in _children_of(proc.pid)]
            if kids and any(_comm(k) == "sleep" for k in kids):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the container did not start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert _children_of(proc.pid) == [] and child_pids() == []


def _children_of(pid: int) -> list[int]:
    from minibox import procfs

    return [c.pid for c in procfs.children(pid)]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
