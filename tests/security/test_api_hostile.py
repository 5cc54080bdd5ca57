"""Probes of the Python API's container path by a hostile process inside it.

minibox's users sandbox code they do not trust: what runs inside may try to
exhaust the host through the container's own resources, or to make the
caller's :meth:`Container.exec` and :meth:`Container.wait` hang, leak or
lie.  Each test here fails if the hole it names were open; what it tries
runs inside the container only.  Probes that held are kept, so a change
that opens one again is caught.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import minibox
from minibox import Container, Spec
from minibox._native import lib
from minibox.container import spawn as spawn_mod
from minibox.container.plan import DEFAULT_LAYER_SIZE
from minibox.sandbox import OUTPUT_CAP

from ..conftest import needs_root

pytestmark = needs_root


def _df_kib(result: minibox.Result) -> dict[str, int]:
    """``{mount point: size in KiB}`` from the output of ``df -k`` (inodes, of ``df -i``)."""
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


def test_a_tmpfs_mount_without_a_size_is_bounded_too() -> None:
    # Mount.tmpfs("/scratch") gave the kernel's default: half the host's RAM
    # and half its pages in inodes, to a container with no cgroup to charge.
    mounts = [minibox.Mount.tmpfs("/scratch"), minibox.Mount.tmpfs("/sized", size="8M")]
    for command in (["df", "-k"], ["df", "-i"]):
        result = minibox.run(Spec(argv=[*command, "/scratch", "/sized"], mounts=mounts, timeout=10))
        assert result.exit_code == 0, result.stderr
        sizes = _df_kib(result)
        if command[1] == "-k":
            assert sizes["/scratch"] * 1024 == DEFAULT_LAYER_SIZE
            assert sizes["/sized"] == 8 * 1024  # a size given is kept
        else:
            assert sizes["/scratch"] == DEFAULT_LAYER_SIZE // 4096
            assert sizes["/sized"] == 8 * 1024 * 1024 // 4096


def test_empty_files_cannot_outgrow_the_bound_either() -> None:
    # tmpfs counts only data against size=; its inodes (~0.9 KiB of kernel
    # memory each, measured: 200,000 empty files took 174 MiB) were bounded
    # by half the host's RAM pages: 3 million per tmpfs here.
    result = minibox.run(Spec(argv=["df", "-i", "/", "/tmp"], timeout=10))
    assert result.exit_code == 0, result.stderr
    inodes = _df_kib(result)  # the same columns: the second is the inode count
    assert inodes["/"] <= DEFAULT_LAYER_SIZE // 4096
    assert inodes["/tmp"] <= DEFAULT_LAYER_SIZE // 4096
    script = "cd /tmp && seq 1 3000 | xargs touch 2>/dev/null; ls | wc -l"
    small = minibox.run(Spec(argv=["sh", "-c", script], rootfs_overlay_size="4M", timeout=20))
    assert int(small.stdout) <= 1024


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
        result = box.exec(["sh", "-c", "head -c 12000000 /dev/zero; head -c 3000000 /dev/zero >&2"], timeout=30)
        assert (len(result.stdout), len(result.stderr)) == (12000000, 3000000)  # below the cap: whole
    assert len(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads



# -- captured output is host memory in the caller's own process ---------------------------------

def _assert_capped(data: bytes, sent: int) -> None:
    """The first OUTPUT_CAP bytes intact, then one marker line naming how many were dropped."""
    body, marker = data[:OUTPUT_CAP], data[OUTPUT_CAP:]
    assert body == b"\0" * OUTPUT_CAP
    dropped = sent - OUTPUT_CAP
    assert marker == f"\n[minibox: output truncated, {dropped} bytes dropped after the first {OUTPUT_CAP}]\n".encode()


def test_a_run_flooding_its_output_keeps_the_caller_bounded() -> None:
    # Before: every byte was kept, and 'yes' grew the caller's own process
    # until the host's OOM killer chose a victim.  Now both isolations keep
    # the same bound (the VM's: tests/security/test_vm_guest_hostile.py), and
    # the command still runs to its end: the rest is read and counted.
    sent = OUTPUT_CAP + 5_000_000
    result = minibox.run(Spec(argv=["sh", "-c", f"head -c {sent} /dev/zero; head -c {sent} /dev/zero >&2; exit 3"],
                              timeout=60))
    assert result.exit_code == 3 and result.reason == "exited"
    _assert_capped(result.stdout, sent)
    _assert_capped(result.stderr, sent)


def test_an_exec_flooding_its_output_keeps_the_caller_bounded(box: Container) -> None:
    sent = OUTPUT_CAP + 1_000_000
    result = box.exec(["head", "-c", str(sent), "/dev/zero"], timeout=60)
    assert result.exit_code == 0
    _assert_capped(result.stdout, sent)


def test_a_tty_exec_flooding_its_output_keeps_the_caller_bounded(box: Container) -> None:
    # a pty turns nothing into anything else for NUL bytes (no output processing of \0)
    sent = OUTPUT_CAP + 1_000_000
    result = box.exec(["head", "-c", str(sent), "/dev/zero"], tty=True, timeout=60)
    assert result.exit_code == 0
    _assert_capped(result.stdout, sent)


def test_spec_output_limit_lowers_and_raises_the_bound_for_run_and_exec() -> None:
    # Spec.output_limit is the caller's say over the bound: lowered, a flood
    # costs less; raised, more arrives whole; the command runs on either way
    # (exit 0, the file it writes after its output exists).
    marker = f"\n[minibox: output truncated, {3000000 - (1 << 20)} bytes dropped after the first {1 << 20}]\n"
    lowered = Spec(argv=["sh", "-c", "head -c 3000000 /dev/zero; echo e >&2"], timeout=120, output_limit="1M")
    result = minibox.run(lowered)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"\0" * (1 << 20) + marker.encode(), b"e\n")
    with Container(dataclasses.replace(lowered, argv=["sleep", "60"])) as box:
        result = box.exec(["sh", "-c", "head -c 3000000 /dev/zero >&2; echo o; touch /tmp/done"], timeout=60)
        assert (result.exit_code, result.stdout, result.stderr) == (0, b"o\n", b"\0" * (1 << 20) + marker.encode())
        assert box.exec(["ls", "/tmp/done"]).exit_code == 0
    sent = OUTPUT_CAP + 1_000_000
    raised = minibox.run(Spec(argv=["head", "-c", str(sent), "/dev/zero"], output_limit=OUTPUT_CAP * 2, timeout=60))
    assert raised.stdout == b"\0" * sent
    unbounded = minibox.run(Spec(argv=["head", "-c", str(sent), "/dev/zero"], output_limit=None, timeout=60))
    assert unbounded.stdout == b"\0" * sent


def test_a_tty_exec_flooding_its_pty_ends_at_its_timeout(box: Container) -> None:
    started = time.monotonic()
    result = box.exec(["sh", "-c", "yes & yes & yes & yes & wait"], tty=True, timeout=1)
    assert result.reason == "timeout"
    assert time.monotonic() - started < 3.5
    assert _tasks_inside(box, "yes") == 0


def test_an_exec_whose_init_dies_midway_returns_and_the_next_is_a_state_error() -> None:
    fds = None
    for _ in range(2):  # the second round checks the first left no fd behind
        box = Container(Spec(argv=["sh", "-c", "sleep 0.4; exit 7"], timeout=30))
        box.start()
        try:
            started = time.monotonic()
            result = box.exec(["sh", "-c", "sleep 1000 & sleep 1000"])  # no timeout: the init's death ends it
            assert time.monotonic() - started < 5
            assert result.reason == "signaled"  # the pid namespace went with its init
            with pytest.raises(minibox.StateError):
                box.exec(["true"])
            assert box.wait().exit_code == 7
        finally:
            box.close()
        if fds is None:
            fds = sorted(os.listdir("/proc/self/fd"))
        else:
            assert sorted(os.listdir("/proc/self/fd")) == fds


def test_exec_stdin_nobody_reads_and_failed_execs_leak_nothing(box: Container) -> None:
    box.exec(["true"])  # the first exec may open what every later one shares
    fds = sorted(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    big = b"x" * (8 << 20)
    assert box.exec(["true"], stdin=big, timeout=10).reason == "exited"
    assert box.exec(["head", "-c", "3"], stdin=big, timeout=10).stdout == b"xxx"
    assert box.exec(["sleep", "100"], stdin=big, timeout=0.5).reason == "timeout"
    for _ in range(5):
        with pytest.raises(minibox.CommandNotFoundError):
            box.exec(["/nonexistent"])
        with pytest.raises(minibox.SetupError, match="chdir"):
            box.exec(["true"], cwd="/nonexistent")
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert threading.active_count() == threads


def test_exhausting_fds_and_threads_inside_leaves_the_caller_healthy(box: Container) -> None:
    # Every fd the rlimit allows, then a shell that cannot open one more; the host side sees one Result.
    script = ("i=3; while [ $i -lt 4000 ]; do eval \"exec $i</dev/null\" 2>/dev/null || break; i=$((i+1)); done; "
              "echo opened $i; cat /dev/null; echo cat=$?")
    result = box.exec(["sh", "-c", script], timeout=20)
    assert result.reason == "exited", result
    assert result.stdout.startswith(b"opened ")
    assert box.exec(["echo", "still"], timeout=10).stdout == b"still\n"

# -- signals, the keeper, and what is left when the init dies ------------------------------------

def test_signals_from_inside_reach_neither_the_keeper_nor_the_caller() -> None:
    from minibox import owner

    box = Container(Spec(argv=["sleep", "60"], timeout=60))
    box.start()
    try:
        keeper = owner.keeper_pid()
        assert keeper is not None
        # Root inside signals everything it can see, and the host pids of
        # the keeper and the caller by number (in its pid namespace they
        # name nothing, or its own processes).
        script = f"kill -9 {keeper} {os.getpid()} {os.getppid()} 2>/dev/null; kill -9 -1; echo done"
        result = box.exec(["sh", "-c", script], timeout=10)
        assert result.reason in ("exited", "signaled"), result
        os.kill(keeper, 0)  # alive ...
        assert os.readlink(f"/proc/{keeper}/exe") == owner.keeper_binary()  # ... and still the keeper
    finally:
        box.close()
    assert minibox.run(Spec(argv=["true"], timeout=10)).exit_code == 0


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def test_when_the_init_dies_escaped_processes_die_and_the_cgroup_goes() -> None:
    # A new session, a double fork (reparented to init), a process that
    # ignores SIGTERM/SIGHUP, and -- if the seccomp profile and the caps let it -- a
    # pid namespace of its own inside an unprivileged user namespace.
    script = ("setsid sleep 100 & (sleep 100 &); (trap '' TERM HUP; exec sleep 100) & "
              "unshare -Urpf sleep 100 2>/dev/null & sleep 0.3; echo ready; read x; exit 3")
    box = Container(Spec(argv=["sh", "-c", script], limits=minibox.Limits(pids=64), timeout=30),
                    stdin=b"go\n")
    box.start()
    try:
        time.sleep(0.6)
        paths = box.cgroup_paths
        assert paths
        procs_file = os.path.join(paths.get("pids", next(iter(paths.values()))), "cgroup.procs")
        with open(procs_file) as f:
            pids = [int(line) for line in f]
        assert len(pids) >= 4
        started = {pid: _start_time(pid) for pid in pids}
        result = box.wait()
    finally:
        box.close()
    assert result.exit_code == 3
    survivors = [pid for pid, start in started.items() if start is not None and _start_time(pid) == start]
    assert survivors == []
    assert not any(os.path.exists(path) for path in paths.values())



def _processes_running(argv: bytes) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == argv:
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def test_without_a_pid_namespace_the_cgroup_ends_a_child_in_its_own_session() -> None:
    # The caller left out the pid namespace but set limits: the init's exit
    # ended its process group only.  A child in a session of its own ran on
    # in the cgroup, whose removal then failed (EBUSY): wait() raised
    # SetupError instead of returning the Result, and the child survived.
    marker = b"sleep\x007731\x00"
    script = "setsid sh -c 'exec sleep 7731 >/dev/null 2>&1 </dev/null' & sleep 0.2; echo hi"
    try:
        result = minibox.run(Spec(argv=["sh", "-c", script], namespaces=["mnt", "uts", "ipc", "net"],
                                  limits=minibox.Limits(pids=50), timeout=20))
        assert result.stdout == b"hi\n"
        assert _processes_running(marker) == []
    finally:
        for pid in _processes_running(marker):  # the probe's own sleeper, if it survived
            os.kill(pid, 9)


@pytest.mark.parametrize("how", ["run", "Container"])
def test_without_a_pid_namespace_or_limits_a_child_in_its_own_session_still_ends(how: str) -> None:
    # The same escape without limits: minibox.run made no cgroup then (its fast
    # path), so nothing could find the child once it had left the process
    # group, and it ran on after the Result.  A container without a pid
    # namespace now always gets a cgroup: the one way to find all of it.
    marker = b"sleep\x007732\x00"
    script = "setsid sh -c 'exec sleep 7732 >/dev/null 2>&1 </dev/null' & sleep 0.2; echo hi"
    spec = Spec(argv=["sh", "-c", script], namespaces=["mnt", "uts", "ipc", "net"], timeout=20)
    try:
        if how == "run":
            result = minibox.run(spec)
        else:
            with Container(spec) as box:
                result = box.wait()
        assert result.stdout == b"hi\n"
        assert _processes_running(marker) == []
    finally:
        for pid in _processes_running(marker):  # the probe's own sleeper, if it survived
            os.kill(pid, 9)


def test_pause_stats_and_kill_stay_prompt_under_a_fork_storm_at_the_limits() -> None:
    script = ("(while :; do sleep 1 & done) 2>/dev/null & "
              "(while :; do x=$(head -c 1000000 /dev/zero); done) & yes > /dev/null")
    box = Container(Spec(argv=["sh", "-c", script], limits=minibox.Limits(pids=64, memory="64M"), timeout=30))
    box.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        box.pause()
        stats = box.stats()
        box.resume()
        box.kill()
        result = box.wait()
        assert time.monotonic() - started < 5
        assert 0 < stats.pids <= 64
        assert result.reason == "signaled"
    finally:
        box.close()

# -- a hostile image -----------------------------------------------------------------------------

@pytest.fixture
def hostile_rootfs(tmp_path: Path) -> Path:
    """A copy of the busybox image whose /etc files and directories point at the host."""
    from minibox.images.busybox import default_rootfs

    root = tmp_path / "rootfs"
    shutil.copytree(default_rootfs(), root, symlinks=True)
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    for name in ("passwd", "group", "hostname", "hosts", "resolv.conf", "nsswitch.conf"):
        (root / "etc" / name).unlink(missing_ok=True)
    os.mkfifo(root / "etc/passwd")  # who opens it to read blocks for ever
    os.symlink(str(host / "secret"), root / "etc/hostname")  # absolute: a host path
    os.symlink("../" * 12 + str(host / "secret").lstrip("/"), root / "etc/hosts")  # climbing
    with open(root / "etc/group", "wb") as f:  # sparse: 4 GiB to whoever reads it all
        f.truncate(4 << 30)
    os.symlink(str(host), root / "abs")
    os.symlink("../" * 12 + str(host).lstrip("/"), root / "up")
    return root


def test_hostile_etc_files_are_never_read_or_written(hostile_rootfs: Path) -> None:
    # minibox takes the user as numbers and sets the host name with
    # sethostname(2): no /etc file of the image is opened on its behalf.
    started = time.monotonic()
    # (Not 'id -u': busybox's own id opens /etc/passwd, and blocks on the fifo.)
    script = "hostname; awk '/^Uid/ {print $2}' /proc/self/status"
    result = minibox.run(Spec(argv=["sh", "-c", script], rootfs=str(hostile_rootfs), rootfs_overlay=True,
                              user=(1000, 1000), hostname="box", timeout=15))
    assert time.monotonic() - started < 10
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [b"box", b"1000"]


@pytest.mark.parametrize("through", ["abs", "up"])
@pytest.mark.parametrize("inside_too", [False, True])
def test_mount_targets_through_image_symlinks_stay_in_the_root(hostile_rootfs: Path, tmp_path: Path, through: str,
                                                                inside_too: bool) -> None:
    host = tmp_path / "host"
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("bound\n")
    if inside_too:  # the symlinks' targets exist inside the image as well: there the mounts must land
        (hostile_rootfs / str(host).lstrip("/")).mkdir(parents=True)
    spec = Spec(argv=["sh", "-c", f"cat /{through}/bound/file; ls /{through}/scratch"],
                rootfs=str(hostile_rootfs), rootfs_overlay=True, timeout=15,
                mounts=[minibox.Mount.bind(str(source), f"/{through}/bound", readonly=True),
                        minibox.Mount.tmpfs(f"/{through}/scratch", size="1M")])
    if inside_too:
        result = minibox.run(spec)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == b"bound\n"
    else:  # no such directory inside: refused, typed, naming the mount point
        with pytest.raises(minibox.SetupError, match=f"/{through}/bound"):
            minibox.run(spec)
    assert sorted(os.listdir(host)) == ["secret"]  # no mount point was made on the host
    assert (host / "secret").read_text() == "host secret\n"
    assert str(host) not in Path("/proc/self/mountinfo").read_text()



def test_a_bind_source_through_a_symlink_is_refused_naming_the_real_path(tmp_path: Path) -> None:
    # A directory the caller binds may be one a sandbox could write before (bound
    # read-write): a symlink planted on the path would bind something else, /etc say.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").symlink_to("/etc")
    with pytest.raises(minibox.SpecError) as info:
        minibox.Mount.bind(str(shared / "data"), "/data").validated(0)
    assert info.value.field == "mounts[0].source" and "'/etc'" in info.value.message
    with pytest.raises(minibox.SpecError, match=r"mounts\[0\]\.source"):
        Spec(argv=["true"], mounts=[minibox.Mount.bind(str(shared / "data" / "hostname"), "/h")])


@pytest.mark.parametrize("compat", [0, lib.MB_COMPAT_NO_OPENAT2])
def test_a_bind_source_swapped_for_a_symlink_after_the_spec_fails_the_start(
        tmp_path: Path, compat: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between the Spec's check and the start, the source (or a directory above it)
    # becomes a symlink to /etc.  Before: the child opened the path following it, and
    # the sandbox read the host's /etc/shadow.  Now the start fails, naming the mount.
    monkeypatch.setattr(spawn_mod, "COMPAT", compat)
    for swapped in ("source", "parent"):
        parent = tmp_path / swapped / "parent"
        source = parent / "etc"
        source.mkdir(parents=True)
        spec = Spec(argv=["sh", "-c", "cat /data/shadow"], timeout=15,
                    mounts=[minibox.Mount.bind(str(source), "/data", readonly=True)])
        source.rmdir()
        if swapped == "source":
            source.symlink_to("/etc")
        else:  # parent/etc is the host's /etc once parent is "/"
            parent.rmdir()
            parent.symlink_to("/")
        with pytest.raises(minibox.SetupError) as info:
            minibox.run(spec)
        assert info.value.errno == errno.ELOOP and "/data" in str(info.value), info.value


@pytest.mark.parametrize(("name", "climbing"), [("proc", False), ("proc", True), ("dev", False), ("dev", True),
                                                ("sys", True), ("tmp", False)])
def test_system_mount_points_that_are_image_symlinks_stay_in_the_root(hostile_rootfs: Path, tmp_path: Path,
                                                                      name: str, climbing: bool) -> None:
    host = tmp_path / "host"
    shutil.rmtree(hostile_rootfs / name)
    os.symlink(("../" * 12 + str(host).lstrip("/")) if climbing else str(host), hostile_rootfs / name)
    try:
        result = minibox.run(Spec(argv=["sh", "-c", "echo ran"], rootfs=str(hostile_rootfs), rootfs_overlay=True,
                                  timeout=10))
        assert result.stdout == b"ran\n", result.stderr
    except minibox.SetupError:
        pass  # refused is fine too; only the host matters here
    assert sorted(os.listdir(host)) == ["secret"]
    assert str(host) not in Path("/proc/self/mountinfo").read_text()


def test_root_inside_cannot_reach_or_raise_its_own_cgroup_limits() -> None:
    script = ("for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max "
              "/sys/fs/cgroup/memory/memory.limit_in_bytes; do echo 100000 > $f 2>/dev/null && echo WROTE $f; done; "
              "mkdir -p /tmp/cg; mount -t cgroup -o pids none /tmp/cg 2>/dev/null && echo MOUNTED v1; "
              "mount -t cgroup2 none /tmp/cg 2>/dev/null && echo MOUNTED v2; "
              "mount -t sysfs none /tmp/cg 2>/dev/null && echo MOUNTED sysfs; echo end")
    # No cgroup file system inside (none mounted, none mountable without CAP_SYS_ADMIN): nothing written.
    result = minibox.run(Spec(argv=["sh", "-c", script], limits=minibox.Limits(pids=40, memory="64M"), timeout=10))
    assert result.stdout == b"end\n", result.stdout

def test_bridge_etc_files_skip_an_image_fifo_and_stay_inside(hostile_rootfs: Path) -> None:
    from minibox.container.network import NetworkAttachment

    class Port:
        files_dir = Path("/nonexistent-files-dir")

    attachment = NetworkAttachment.__new__(NetworkAttachment)
    attachment.port = Port()  # type: ignore[assignment]
    ops: list[object] = []
    worker = threading.Thread(target=lambda: ops.extend(attachment.mount_ops(str(hostile_rootfs))), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "mount_ops blocked on the image's files"
    # /etc/hostname and /etc/hosts lead to the host's file, which does not exist inside the root:
    # nothing to cover, so nothing is mounted; a fifo is not a regular file either.
    assert ops == []
