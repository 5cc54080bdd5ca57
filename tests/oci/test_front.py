"""minibox-oci's C front end (csrc/oci/front.c): state, start and delete without Python, the rest handed over.

What a user (an engine) checks: the front end prints the same state as
the Python implementation in every status, does start and delete alone
(a copy of it with no Python to hand over to still does them), and hands
everything it does not do -- hooks, a forged or unknown record, a --root
others can write to, a busy cgroup -- to Python, which does it right.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MINIBOX_OCI, Oci, cgroup_dirs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="minibox-oci makes cgroups and namespaces: needs root")

PYTHON_OCI = str(Path(sys.executable).parent.parent / "libexec" / "minibox" / "minibox-oci")


def _front_installed() -> bool:
    with open(MINIBOX_OCI, "rb") as f:
        return f.read(4) == b"\x7fELF"


needs_front = pytest.mark.skipif(not _front_installed(), reason="minibox-oci is the Python script alone "
                                 "(csrc/oci/front.c did not build: no C compiler when make setup ran)")


@pytest.fixture
def lone_front(tmp_path: Path) -> str:
    """A copy of the front end with nothing to hand over to: whatever it does, it did without Python."""
    bindir = tmp_path / "lone" / "bin"
    bindir.mkdir(parents=True)
    shutil.copy(MINIBOX_OCI, bindir / "minibox-oci")
    return str(bindir / "minibox-oci")


def _run(binary: str, oci: Oci, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, "--root", str(oci.root), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _handed_over(done: subprocess.CompletedProcess[str]) -> bool:
    """The lone front end tried to hand this verb to Python (which it does not have)."""
    return done.returncode == 127 and "libexec/minibox/minibox-oci" in done.stderr


@needs_front
def test_the_front_end_prints_pythons_state_in_every_status(oci: Oci) -> None:
    oci.write_config(["sleep", "600"])
    oci.create("c1")

    def both() -> tuple[str, str]:
        front = _run(MINIBOX_OCI, oci, "state", "c1")
        python = _run(PYTHON_OCI, oci, "state", "c1")
        assert front.returncode == python.returncode == 0, (front.stderr, python.stderr)
        assert front.stdout == python.stdout
        return json.loads(front.stdout)["status"], front.stdout

    assert both()[0] == "created"
    oci("start", "c1")
    assert both()[0] == "running"
    oci("pause", "c1")
    assert both()[0] == "paused"
    oci("resume", "c1")
    pid = oci.state("c1")["pid"]
    oci("kill", "c1", "KILL")
    oci.reap(pid)
    status, text = both()
    assert status == "stopped" and json.loads(text)["pid"] == 0
    oci("delete", "c1")


@needs_front
def test_state_start_and_delete_need_no_python(oci: Oci, lone_front: str) -> None:
    oci.write_config(["sleep", "600"])
    oci.create("c1")
    state = json.loads(_run(lone_front, oci, "state", "c1").stdout)
    assert state["status"] == "created" and state["id"] == "c1" and state["bundle"] == str(oci.bundle)
    started = _run(lone_front, oci, "start", "c1")
    assert started.returncode == 0, started.stderr
    assert json.loads(_run(lone_front, oci, "state", "c1").stdout)["status"] == "running"
    # the user's command runs, no longer the gate (csrc/oci/gate.c) it waited in
    with open(f"/proc/{state['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"600"]
    os.kill(state["pid"], 9)
    oci.reap(state["pid"])
    deleted = _run(lone_front, oci, "delete", "c1")
    assert deleted.returncode == 0, deleted.stderr
    assert not (oci.root / "c1").exists(), "the record is gone"
    assert cgroup_dirs("c1") == [], "the cgroup is gone"


@needs_front
def test_what_the_front_end_does_not_do_goes_to_python(oci: Oci, lone_front: str) -> None:
    oci.write_config(["sleep", "600"])
    # an unknown id, another verb, an unknown flag: all Python's
    assert _handed_over(_run(lone_front, oci, "state", "nothere"))
    assert _handed_over(_run(lone_front, oci, "list"))
    assert _handed_over(_run(lone_front, oci, "state", "--bogus", "c1"))
    oci.create("c1")
    assert _handed_over(_run(lone_front, oci, "delete", "c1")), "a created container is not stopped"
    oci("start", "c1")
    assert _handed_over(_run(lone_front, oci, "start", "c1")), "start of a running container"
    assert _handed_over(_run(lone_front, oci, "delete", "--force", "c1")), "delete --force of a running one"
    # and the real front end hands them over: Python's errors, Python's --force
    refused = oci("start", "c1", check=False)
    assert refused.returncode == 1 and "it is running, not created" in refused.stderr
    pid = oci.state("c1")["pid"]
    oci("delete", "--force", "c1")
    oci.reap(pid)
    assert not (oci.root / "c1").exists() and cgroup_dirs("c1") == []
    missing = oci("state", "c1", check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


@needs_front
def test_a_container_with_hooks_is_pythons(oci: Oci, lone_front: str, tmp_path: Path) -> None:
    marker = tmp_path / "poststop-ran"
    oci.write_config(["true"], hooks={"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]})
    oci.create("c1")
    assert not (oci.root / "c1" / "light-state").exists()
    assert _handed_over(_run(lone_front, oci, "state", "c1"))
    pid = oci.state("c1")["pid"]
    oci("start", "c1")
    oci.reap(pid)
    oci("delete", "c1")
    assert marker.exists(), "Python ran the poststop hook"


@needs_front
@pytest.mark.parametrize("forged", [
    "cgroup /sys/fs/cgroup/pids/../../../etc",     # a path out of cgroupfs
    "cgroup relative/dir",                          # not absolute
    "parent /etc",                                  # a parent outside cgroupfs
    "hooks poststop",                               # a key the front end does not know
    "pid 1x",                                       # not a number
])
def test_a_forged_record_line_is_never_acted_on(oci: Oci, lone_front: str, forged: str) -> None:
    """A line the front end does not accept makes the whole record Python's, which reads state.json."""
    oci.write_config(["true"])
    oci.create("c1")
    light = oci.root / "c1" / "light-state"
    head, _, tail = light.read_text().partition("\n\n")
    light.write_text(f"{head}\n{forged}\n\n{tail}")
    pid = oci.state("c1")["pid"]
    oci("start", "c1")
    oci.reap(pid)
    assert _handed_over(_run(lone_front, oci, "delete", "c1"))
    assert oci.root.joinpath("c1").exists() and os.path.isdir("/etc")
    oci("delete", "c1")
    assert not (oci.root / "c1").exists() and cgroup_dirs("c1") == []


@needs_front
def test_a_recycled_pid_is_stopped_not_signalled(oci: Oci, lone_front: str) -> None:
    """The record's start time no longer matches the process with that pid: "stopped", pid 0."""
    oci.write_config(["sleep", "600"])
    oci.create("c1")
    light = oci.root / "c1" / "light-state"
    state = oci.state("c1")
    text = light.read_text()
    start_line = next(line for line in text.splitlines() if line.startswith("starttime "))
    light.write_text(text.replace(start_line, f"starttime {int(start_line.split()[1]) + 1}"))
    shown = json.loads(_run(lone_front, oci, "state", "c1").stdout)
    assert shown["status"] == "stopped" and shown["pid"] == 0
    assert _handed_over(_run(lone_front, oci, "start", "c1")), "start of a stopped container is Python's"
    assert os.path.exists(f"/proc/{state['pid']}"), "the real init was not touched"
    light.write_text(text)
    oci("delete", "--force", "c1")
    oci.reap(state["pid"])


@needs_front
def test_a_root_others_can_write_is_refused_by_python(oci: Oci, lone_front: str) -> None:
    oci.write_config(["true"])
    oci.create("c1")
    pid = oci.state("c1")["pid"]
    os.chmod(oci.root, 0o777)
    try:
        assert _handed_over(_run(lone_front, oci, "state", "c1"))
        refused = oci("state", "c1", check=False)
        assert refused.returncode == 1 and "writable by group or others" in refused.stderr
    finally:
        os.chmod(oci.root, 0o700)
    oci("start", "c1")
    oci.reap(pid)
    oci("delete", "c1")


@needs_front
def test_delete_hands_a_busy_cgroup_to_python_which_ends_what_is_left(oci: Oci) -> None:
    """The init has gone but an exec'd process still runs in the cgroup: rmdir is EBUSY.

    No pid namespace: with one, the init's death would have ended the exec'd process too.
    """
    oci.write_config(["sleep", "600"], linux__namespaces=[{"type": t} for t in ("network", "ipc", "uts", "mount")])
    oci.create("c1")
    oci("start", "c1")
    state = oci.state("c1")
    oci("exec", "--detach", "c1", "sleep", "600")
    os.kill(state["pid"], 9)
    oci.reap(state["pid"])
    left = [p for d in cgroup_dirs("c1") if d.split("/")[4] == "pids"
            for p in Path(d, "cgroup.procs").read_text().split()]
    assert left, "the exec'd sleep is still in the cgroup"
    oci("delete", "c1")
    assert not (oci.root / "c1").exists() and cgroup_dirs("c1") == []
    for pid in left:
        try:
            assert oci.reap(int(pid)) == 137, "Python's delete killed it"
        except ChildProcessError:
            assert not os.path.exists(f"/proc/{pid}"), f"process {pid} of the deleted container still runs"
