"""A new pty per container (issue 4 item 7) and rootless mode (item 6).

TTY: the container gets a pseudo-terminal allocated in its *own* devpts
instance, in a new session; the CLI relays the caller's terminal to it and
forwards the window size.

Rootless: an unprivileged user runs containers through a user namespace
that maps its own uid to root inside.  The tests create a system user for
the purpose (removed afterwards), fork, drop to it in the child (so the
already-imported minibox is used and no file under /root needs to be
readable), run minibox there and send the outcome back.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import minibox
from minibox import Limits, Spec
from minibox.images.busybox import build_busybox_rootfs

from ..conftest import child_pids, needs_root

pytestmark = needs_root

ROOTLESS_USER = f"mbx-rootless-{os.getpid()}"


# -- TTY ----------------------------------------------------------------------------

def test_tty_is_the_containers_own_pty() -> None:
    result = minibox.run(Spec(argv=["sh", "-c", "tty; ls /dev/pts; readlink /proc/self/fd/0"], tty=True))
    lines = result.stdout.decode().replace("\r", "").split("\n")
    assert lines[0] == "/dev/pts/0"  # a name that resolves inside: its own devpts instance
    assert lines[1].split() == ["0", "ptmx"]
    assert lines[2] == "/dev/pts/0"


def test_tty_session_is_new_and_the_pty_is_the_controlling_terminal() -> None:
    # ps -o sid,tty: the shell leads its own session on pts/0
    result = minibox.run(Spec(argv=["sh", "-c", "cat /proc/self/stat"], tty=True))
    fields = result.stdout.decode().split(") ")[1].split()
    session, tty_nr = int(fields[3]), int(fields[4])
    assert session == 1  # setsid() in the container's pid namespace: pid 1 leads it
    assert os.major(tty_nr) == 136 and os.minor(tty_nr) == 0  # /dev/pts/0


def _pump(fd: int, seconds: float, until: bytes | None = None) -> bytes:
    """Read ``fd`` for up to ``seconds``, or until ``until`` has arrived (a generous bound, not a timing)."""
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end and (until is None or until not in out):
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def test_cli_tty_relays_keys_window_size_and_exit_code() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "minibox.cli", "run", "-t", "--", "sh"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        _pump(master, 30.0, until=b"# ")  # the container's shell prompt
        os.write(master, b"echo typed-$((6*7)); stty size; exit 4\r")
        out = _pump(master, 30.0, until=b"33 101")
        assert proc.wait(timeout=10) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"typed-42" in out
    assert b"33 101" in out


def test_callers_terminal_passed_as_stdin_is_not_a_controlling_tty() -> None:
    # Given the caller's terminal as stdin (no -t), the container still runs
    # in a new session with no controlling terminal, so TIOCSTI on it needs
    # CAP_SYS_ADMIN (dropped) and is refused by seccomp anyway (see the
    # probe's tiocsti check in test_hardening.py).
    master, slave = os.openpty()
    try:
        result = minibox.run(Spec(argv=["sh", "-c", "cat /proc/self/stat"]), stdin=slave)
        fields = result.stdout.decode().split(") ")[1].split()
        assert int(fields[3]) == 1 and int(fields[4]) == 0  # own session, no controlling tty
    finally:
        os.close(master)
        os.close(slave)


# -- rootless ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rootless_user() -> Iterator[tuple[int, int]]:
    """A fresh unprivileged system user: (uid, gid).  Removed after the module."""
    import pwd

    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ROOTLESS_USER],
                   check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(ROOTLESS_USER)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", ROOTLESS_USER], check=False, capture_output=True)


@pytest.fixture(scope="module")
def rootless_home(rootless_user: tuple[int, int]) -> Iterator[str]:
    """A directory the rootless user owns, holding a rootfs and minibox's state."""
    uid, gid = rootless_user
    home = tempfile.mkdtemp(prefix="minibox-rootless-")
    os.chmod(home, 0o755)
    rootfs = build_busybox_rootfs(os.path.join(home, "rootfs"))
    for directory, dirs, files in os.walk(rootfs):  # a rootless user owns its rootfs
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            os.lchown(name, uid, gid)
    for sub in ("state", "run"):
        os.mkdir(os.path.join(home, sub))
        os.chown(os.path.join(home, sub), uid, gid)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def as_user(user: tuple[int, int], home: str, work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child that dropped to ``user`` (uid, gid); return its JSON result."""
    uid, gid = user
    # Import lazily-loaded modules before forking: the child may not read /root.
    import encodings.ascii  # noqa: F401

    import minibox.container.cgroups
    import minibox.container.container
    import minibox.policy.capabilities
    import minibox.policy.rlimits
    import minibox.policy.seccomp  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            # Changing uid made this process non-dumpable, which makes the
            # /proc files of its children root-owned; a user who logged in
            # as that user would be dumpable, so restore that.
            import prctl

            prctl.set_dumpable(True)
            os.environ["MINIBOX_STATE_DIR"] = os.path.join(home, "state")
            os.environ["MINIBOX_RUNTIME_DIR"] = os.path.join(home, "run")
            os.environ["HOME"] = home
            payload = {"ok": work()}
        except BaseException as e:
            payload = {"error": type(e).__name__, "message": str(e)}
            status = 1
        os.write(write_end, json.dumps(payload).encode())
        os._exit(status)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_rootless_user_gets_the_same_isolation(rootless_home: str, rootless_user: tuple[int, int],
                                               tmp_path: Path) -> None:
    rootfs = os.path.join(rootless_home, "rootfs")
    # A host file the user CAN read on the host, at a path that also exists
    # (as a directory) in the rootfs: inside, it must not be there.
    marker_dir = Path("/tmp") / f"minibox-rootless-{os.getpid()}-{tmp_path.name}"
    marker_dir.mkdir(mode=0o755)
    marker = marker_dir / "host-secret"
    marker.write_text("host-only content\n")
    marker.chmod(0o644)

    def work() -> Any:
        on_host = open(marker).read()
        r = minibox.run(Spec(argv=["sh", "-c", "echo $$; hostname; id -u; cat /proc/self/uid_map; "
                                   "ls /sys/class/net; grep CapEff /proc/self/status; "
                                   f"cat {marker} 2>&1 | head -1"],
                             rootfs=rootfs, hostname="rootless"))
        return {"out": r.stdout.decode(), "err": r.stderr.decode(), "code": r.exit_code, "uid": os.geteuid(),
                "on_host": on_host}

    try:
        got = as_user(rootless_user, rootless_home, work)
    finally:
        marker.unlink()
        marker_dir.rmdir()

    assert "ok" in got, got
    assert got["ok"]["uid"] == rootless_user[0]
    assert got["ok"]["on_host"] == "host-only content\n"  # the user reads it on the host...
    lines = got["ok"]["out"].split("\n")
    assert lines[0] == "1" and lines[1] == "rootless" and lines[2] == "0"
    assert lines[3].split() == ["0", str(rootless_user[0]), "1"]  # root inside is the user outside
    assert lines[4] == "lo"
    assert lines[5].split()[1] == "00000000800405fb"  # the default set, in its own user namespace
    assert "No such file" in lines[6] and "host-only" not in got["ok"]["out"]  # ...but not inside
    assert child_pids() == []


def test_rootless_limits_fail_clearly_instead_of_being_ignored(rootless_home: str,
                                                              rootless_user: tuple[int, int]) -> None:
    rootfs = os.path.join(rootless_home, "rootfs")

    def work() -> Any:
        return minibox.run(Spec(argv=["true"], rootfs=rootfs, limits=Limits(memory="64M"))).exit_code

    got = as_user(rootless_user, rootless_home, work)
    assert got.get("error") == "PreflightError", got
    assert "cgroup" in got["message"] and "delegate" in got["message"]


def test_rootless_cannot_reach_host_root_files(rootless_home: str, rootless_user: tuple[int, int]) -> None:
    rootfs = os.path.join(rootless_home, "rootfs")

    def work() -> Any:
        # root inside may not read what the user outside may not read
        r = minibox.run(Spec(argv=["sh", "-c", "cat /secret/shadow 2>&1; echo rc=$?"], rootfs=rootfs,
                             mounts=[minibox.Mount.bind("/etc", "/secret", readonly=True)]))
        return r.stdout.decode()

    got = as_user(rootless_user, rootless_home, work)
    assert "ok" in got, got
    assert "Permission denied" in got["ok"] and "rc=1" in got["ok"]
