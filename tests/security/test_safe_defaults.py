"""Safe defaults for untrusted code (issue 10, section 5).

* The shared default image: root-owned, no host-writable directory, a
  private /tmp per container; an unprivileged host user can plant nothing
  in it, and an image someone else could have written is refused.
* A named rootfs can get a private, bounded writable layer instead of
  being written in place.
* Without ``-t`` the CLI relays the caller's terminal through pipes: the
  container cannot change the terminal (tcsetattr fails with ENOTTY).
* A fork bomb in a default container (no limits, no cgroup) stays bounded.

The unprivileged user is a freshly created system user (see
test_tty_and_rootless.py, whose helpers this module reuses).
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import minibox
from minibox import PreflightError, Spec
from minibox.images import busybox

from ..conftest import needs_root
from .test_tty_and_rootless import as_user, rootless_home, rootless_user  # noqa: F401 (fixtures)

pytestmark = needs_root


# -- the shared default image ------------------------------------------------------------

def test_default_image_has_no_host_writable_entry(busybox_rootfs: str) -> None:
    for directory, dirs, files in os.walk(busybox_rootfs):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            st = os.lstat(name)
            assert st.st_uid == 0, name
            if not stat.S_ISLNK(st.st_mode):
                assert not st.st_mode & 0o022, f"{name} is mode {stat.S_IMODE(st.st_mode):o}"


def test_each_default_container_has_its_own_world_writable_tmp(busybox_rootfs: str) -> None:
    first = minibox.run(Spec(argv=["sh", "-c", "stat -c %a /tmp; echo secret > /tmp/left; ls /tmp"],
                             user=(65534, 65534)))
    assert first.exit_code == 0, first.stderr
    assert first.stdout.split() == [b"1777", b"left"]  # writable by a non-root user inside
    second = minibox.run(Spec(argv=["ls", "-A", "/tmp"]))
    assert second.stdout == b""  # the next container does not see it
    assert os.listdir(os.path.join(busybox_rootfs, "tmp")) == []  # nor does the host image


def test_unprivileged_host_user_cannot_plant_anything(busybox_rootfs: str, rootless_home: str,  # noqa: F811
                                                      rootless_user: tuple[int, int]) -> None:  # noqa: F811
    image = busybox_rootfs
    targets = {
        "file in tmp": os.path.join(image, "tmp", "planted"),
        "file in etc": os.path.join(image, "etc", "planted"),
        "file at the top": os.path.join(image, "planted"),
    }

    def work() -> Any:
        outcome: dict[str, str] = {}
        for what, path in targets.items():
            try:
                with open(path, "w") as f:
                    f.write("planted")
                outcome[what] = "written"
            except OSError as e:
                outcome[what] = errno.errorcode[e.errno or 0]
        try:
            os.symlink("/etc/shadow", os.path.join(image, "tmp", "shadow"))
            outcome["symlink"] = "created"
        except OSError as e:
            outcome["symlink"] = errno.errorcode[e.errno or 0]
        try:  # swapping the whole image needs write access to its parent
            os.rename(image, image + ".moved")
            outcome["rename"] = "renamed"
        except OSError as e:
            outcome["rename"] = errno.errorcode[e.errno or 0]
        return outcome

    got = as_user(rootless_user, rootless_home, work)
    assert got.get("ok") == {"file in tmp": "EACCES", "file in etc": "EACCES", "file at the top": "EACCES",
                             "symlink": "EACCES", "rename": "EACCES"}, got
    assert not os.path.lexists(os.path.join(image, "tmp", "shadow"))


@pytest.fixture
def fresh_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A state directory of its own, so default_rootfs() builds and checks a new image."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    monkeypatch.setenv("MINIBOX_STATE_DIR", str(state))
    yield str(state)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.parametrize("plant", ["file owned by a user", "group-writable directory",
                                   "world-writable tmp", "state dir writable by others"])
def test_an_image_another_user_could_write_is_refused(fresh_state: str, plant: str) -> None:
    image = os.path.join(fresh_state, "rootfs", busybox.DEFAULT_IMAGE)
    busybox.build_busybox_rootfs(image, shared=True)
    os.chmod(os.path.dirname(image), 0o755)
    if plant == "file owned by a user":
        os.lchown(os.path.join(image, "etc", "passwd"), 65534, 65534)
        culprit = os.path.join(image, "etc", "passwd")
    elif plant == "group-writable directory":
        os.chmod(os.path.join(image, "bin"), 0o775)
        culprit = os.path.join(image, "bin")
    elif plant == "world-writable tmp":  # the layout of images built before this check
        os.chmod(os.path.join(image, "tmp"), 0o1777)
        culprit = os.path.join(image, "tmp")
    else:
        os.chmod(fresh_state, 0o777)
        culprit = fresh_state
    with pytest.raises(PreflightError) as info:
        minibox.run(Spec(argv=["true"]))
    assert culprit in str(info.value) and "refusing the default image" in str(info.value)
    os.chmod(fresh_state, 0o755)


def test_the_world_writable_tmp_of_an_older_image_is_closed(fresh_state: str) -> None:
    legacy = busybox.build_busybox_rootfs(os.path.join(fresh_state, "rootfs", "busybox"))  # the old layout
    assert stat.S_IMODE(os.stat(legacy / "tmp").st_mode) == 0o1777
    minibox.run(Spec(argv=["true"]))  # builds the current image, and closes the old one's tmp
    assert stat.S_IMODE(os.stat(legacy / "tmp").st_mode) == 0o755


def test_a_sound_fresh_image_is_accepted(fresh_state: str) -> None:
    result = minibox.run(Spec(argv=["cat", "/etc/hostname"]))
    assert result.stdout == b"minibox\n"
    image = os.path.join(fresh_state, "rootfs", busybox.DEFAULT_IMAGE)
    assert stat.S_IMODE(os.stat(os.path.join(image, "tmp")).st_mode) == 0o755


# -- a named rootfs under a private, bounded layer --------------------------------------

def test_rootfs_overlay_keeps_the_host_directory_untouched(scratch_rootfs: str) -> None:
    before = sorted(os.listdir(scratch_rootfs))
    passwd = Path(scratch_rootfs, "etc/passwd").read_bytes()
    result = minibox.run(Spec(argv=["sh", "-c", "echo new > /created; echo x >> /etc/passwd; rm /bin/ls; "
                                    "mkdir /data; cat /created; grep -c x /etc/passwd"],
                              rootfs=scratch_rootfs, rootfs_overlay=True, mounts=[minibox.Mount.tmpfs("/data")]))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == b"new"  # the writes landed, inside
    assert sorted(os.listdir(scratch_rootfs)) == before  # no /created, no /data mount point
    assert Path(scratch_rootfs, "etc/passwd").read_bytes() == passwd
    assert os.path.lexists(os.path.join(scratch_rootfs, "bin/ls"))


def test_rootfs_overlay_size_bounds_the_writes(scratch_rootfs: str) -> None:
    result = minibox.run(Spec(argv=["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=64; echo rc=$?; "
                                    "stat -c %s /big"],
                              rootfs=scratch_rootfs, rootfs_overlay=True, rootfs_overlay_size="8M"))
    assert b"No space left on device" in result.stderr
    rc, size = result.stdout.split()
    assert rc == b"rc=1"
    assert 0 < int(size) <= 8 << 20  # the layer's tmpfs holds the work directory too
    assert not os.path.exists(os.path.join(scratch_rootfs, "big"))


def test_without_rootfs_overlay_a_named_rootfs_is_written_in_place(scratch_rootfs: str) -> None:
    minibox.run(Spec(argv=["sh", "-c", "echo in-place > /created"], rootfs=scratch_rootfs))
    assert Path(scratch_rootfs, "created").read_text() == "in-place\n"


@pytest.mark.parametrize(("kwargs", "field"), [(dict(rootfs_overlay=True), "rootfs_overlay"),
                                               (dict(rootfs_overlay_size="8M"), "rootfs_overlay_size")])
def test_a_vm_refuses_the_overlay_fields_it_cannot_honour(scratch_rootfs: str, kwargs: dict[str, Any],
                                                          field: str) -> None:
    with pytest.raises(minibox.SpecError) as info:  # refused before anything is started
        minibox.VirtualMachine(Spec(argv=["true"], rootfs=scratch_rootfs, **kwargs))
    assert info.value.field == field


def test_cli_rootfs_overlay_flags(scratch_rootfs: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "minibox.cli", "run", "--rootfs", scratch_rootfs,
                           "--rootfs-overlay", "--rootfs-overlay-size", "4M", "--",
                           "sh", "-c", "touch /mark && dd if=/dev/zero of=/big bs=1M count=8"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"No space left" in proc.stderr
    assert not os.path.exists(os.path.join(scratch_rootfs, "mark"))


# -- the terminal without -t ----------------------------------------------------------------

def _drain(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end and select.select([fd], [], [], 0.1)[0]:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    return out


@pytest.mark.parametrize("interactive", [True, False])
def test_cli_without_tty_relays_the_terminal_through_pipes(interactive: bool) -> None:
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    script = ("for fd in 0 1 2; do stty -F /proc/self/fd/$fd raw -echo 2>/dev/null; echo fd$fd=$?; done; "
              "[ -t 1 ] || echo stdout-is-no-tty")
    flags = ["-i"] if interactive else []
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minibox.cli", "run", *flags, "--", "sh", "-c", script],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out = _drain(master, 1.0).replace(b"\r", b"")
        after = termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)
    # tcsetattr on every std fd failed (ENOTTY: a pipe, or /dev/null for stdin without -i)
    assert out.split() == [b"fd0=1", b"fd1=1", b"fd2=1", b"stdout-is-no-tty"], out
    assert after == before  # the caller's terminal is as it was


def test_cli_relay_passes_stdin_and_large_output() -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minibox.cli", "run", "-i", "--", "sh", "-c",
                                 "read line; echo got-$line; head -c 300000 /dev/zero | tr '\\0' x; echo"],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.write(master, b"hello\n")
        out = b""
        end = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < end:
            out += _drain(master, 0.2)
        out += _drain(master, 0.5)
        assert proc.wait(timeout=5) == 0
    finally:
        os.close(master)
        os.close(slave)
    assert b"got-hello" in out
    assert out.count(b"x") == 300000


# -- a fork bomb without limits -------------------------------------------------------------

def _host_tasks() -> int:
    with open("/proc/loadavg") as f:  # "0.00 0.01 0.05 3/412 12345": running/total tasks
        return int(f.read().split()[3].split("/")[1])


def test_fork_bomb_in_a_default_container_stays_bounded() -> None:
    from minibox.container.plan import DEFAULT_PID_BOUND, pid_bound_supported

    if not pid_bound_supported():
        pytest.skip("the kernel has no per-namespace pid_max (Linux >= 6.14); use Limits(pids=...)")
    base = _host_tasks()
    # A classic bomb, made to stop by itself: every process keeps forking
    # (sleeping children stay alive) until the deadline passes.
    script = ("end=$(( $(date +%s) + 4 )); "
              "bomb() { while [ $(date +%s) -lt $end ]; do (sleep 6 &) 2>/dev/null; bomb & done; }; "
              "bomb 2>/dev/null & sleep 5; ls /proc | grep -c '^[0-9]'")
    peak = 0
    import threading

    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _host_tasks() - base)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = minibox.run(Spec(argv=["sh", "-c", script], timeout=20))
    finally:
        done.set()
        watcher.join()
    assert result.reason in ("exited", "timeout")
    print(f"fork bomb: host tasks peaked at +{peak} (bound {DEFAULT_PID_BOUND}); "
          f"inside at the end: {result.stdout.decode().strip()}")
    # the container's own count, and the host's view of it: both stay under the bound
    assert peak <= DEFAULT_PID_BOUND + 50  # other processes of this busy machine come and go
    assert peak > DEFAULT_PID_BOUND // 2  # the bomb did run into it


# -- a non-root user gets a host uid of its own ------------------------------------------------

def _as_uid(uid: int, work: Any) -> Any:
    """Run ``work()`` in a forked child with all its ids set to ``uid``; return what it returns."""
    import json

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            payload = work()
        except BaseException as e:
            payload = f"{type(e).__name__}: {e}"
        os.write(write_end, json.dumps(payload).encode())
        os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


def _host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _reach(pid: int) -> Any:
    def work() -> dict[str, str]:
        outcome = {}
        for what, attempt in (("signal", lambda: os.kill(pid, 0)),
                              ("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())):
            try:
                attempt()
                outcome[what] = "allowed"
            except OSError as e:
                outcome[what] = errno.errorcode[e.errno or 0]
        return outcome
    return _as_uid(65534, work)


def test_non_root_user_runs_as_a_private_host_uid() -> None:
    from minibox.container.userns import PRIVATE_IDS

    spec = Spec(argv=["sh", "-c", "id -u; exec sleep 30"], user=(65534, 65534), env={"SECRET": "s3cret"})
    with minibox.Container(spec, stdout=None) as box:
        assert box.pid is not None
        host_uid = _host_uid(box.pid)
        got = _reach(box.pid)
        inside = box.exec(["id", "-u"]).stdout
    assert host_uid in PRIVATE_IDS  # not 65534: the host's nobody is someone else
    assert got == {"signal": "EPERM", "environ": "EACCES"}, got  # a host process of uid 65534 is a stranger
    assert inside == b"65534\n"  # inside, the user is who the Spec says


def test_two_containers_of_the_same_user_do_not_share_a_host_uid() -> None:
    spec = Spec(argv=["sleep", "30"], user=(1000, 1000))
    with minibox.Container(spec) as one, minibox.Container(spec) as two:
        assert one.pid is not None and two.pid is not None
        assert _host_uid(one.pid) != _host_uid(two.pid)


def test_naming_the_namespaces_without_user_shares_the_host_uid_as_asked() -> None:
    # the documented opt-out (docker's --user semantics): then the host's uid 65534 can reach it
    spec = Spec(argv=["sleep", "30"], user=(65534, 65534), namespaces=["pid", "mnt", "uts", "ipc", "net", "cgroup"])
    with minibox.Container(spec) as box:
        assert box.pid is not None
        assert _host_uid(box.pid) == 65534
        assert _reach(box.pid)["signal"] == "allowed"
