"""The container core, checked from inside the sandbox the way a user would.

Each namespace is verified from the inside (pid 1, hostname, mounts, the
net namespace holding only lo, ids, SysV IPC); results, timeouts, large
outputs, threads, exec and the errors of a failed setup are checked from
the outside, together with what must not leak (fds, mounts, children).
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import minibox
from minibox import CommandNotFoundError, Container, Limits, Mount, SetupError, Spec, SpecError
from minibox.spec import IdMap

from ..conftest import child_pids, host_mounts_mentioning, needs_root, open_fds

pytestmark = needs_root


def sh(script: str, **kw: object) -> minibox.Result:
    return minibox.run(Spec(argv=["/bin/sh", "-c", script], **kw))  # type: ignore[arg-type]


# -- namespaces, seen from inside ---------------------------------------------------

def test_command_is_pid_1_and_sees_only_its_processes() -> None:
    result = sh("echo $$; ls /proc | grep -c '^[0-9]'")
    pid, count = result.stdout.split()
    assert pid == b"1"
    # sh itself and the ls/grep pipeline: a handful, never the host's dozens
    assert int(count) <= 4
    assert result.reason == "exited" and result.exit_code == 0


def test_the_command_leads_a_session_of_its_own() -> None:
    # setsid() in the child: no session (and so no controlling terminal) is
    # shared with the caller.  Field 6 of /proc/PID/stat is the session id;
    # a session led from outside the pid namespace would read 0 here.
    result = minibox.run(Spec(argv=["sh", "-c", "cut -d' ' -f6 /proc/self/stat"]))
    assert result.stdout.strip() == b"1", result


def test_without_no_new_privileges_the_filter_is_still_installed() -> None:
    # no_new_privileges=False takes the other seccomp path in the child (the
    # filter goes in before the capabilities are dropped): it must still be there.
    result = minibox.run(Spec(argv=["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"],
                              no_new_privileges=False))
    status = dict(line.split(":\t") for line in result.stdout.decode().splitlines())
    assert status == {"NoNewPrivs": "0", "Seccomp": "2"}, result


@pytest.mark.parametrize("namespaces", [None, ("mnt", "pid", "uts", "ipc", "net", "cgroup")])
def test_a_non_root_user_keeps_none_of_the_callers_supplementary_groups(namespaces: object) -> None:
    # setgroups() in the child: the caller's groups (root's 0 among them)
    # would otherwise follow the command into the container.
    spec = Spec(argv=["grep", "^Groups:", "/proc/self/status"], user=(1000, 1000),
                namespaces=namespaces)  # type: ignore[arg-type]
    result = minibox.run(spec)
    assert result.stdout.decode().split()[1:] == ["1000"], result


def test_hostname_is_the_specs_and_the_host_keeps_its_own() -> None:
    before = socket.gethostname()
    result = sh("hostname; cat /proc/sys/kernel/hostname", hostname="box-42")
    assert result.stdout.split() == [b"box-42", b"box-42"]
    assert socket.gethostname() == before


@pytest.mark.parametrize("ns", ["pid", "mnt", "uts", "ipc", "net", "cgroup"])
def test_every_requested_namespace_differs_from_the_hosts(ns: str) -> None:
    inside = sh(f"readlink /proc/self/ns/{ns}").stdout.strip().decode()
    host = os.readlink(f"/proc/self/ns/{ns}")
    assert inside.startswith(f"{ns}:[")
    assert inside != host


def test_user_namespace_is_shared_unless_asked() -> None:
    inside = sh("readlink /proc/self/ns/user").stdout.strip().decode()
    assert inside == os.readlink("/proc/self/ns/user")


def test_net_namespace_has_only_loopback_and_it_is_up() -> None:
    result = sh("ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags")
    names = result.stdout.split()
    assert names[0] == b"lo" and len(names) == 3
    assert int(names[2], 16) & 0x1, "IFF_UP set on lo"


def test_host_network_mode_shares_the_hosts_devices() -> None:
    inside = sh("ls /sys/class/net", network="host").stdout.split()
    assert sorted(d.decode() for d in inside) == sorted(os.listdir("/sys/class/net"))


def test_host_files_outside_the_rootfs_are_unreachable(tmp_path: Path) -> None:
    marker = tmp_path / "host-file"
    marker.write_text("TOP-SECRET-CONTENT")
    result = sh(f"cat {marker} 2>&1; ls / ; cat /../../..{marker} 2>&1")
    assert b"TOP-SECRET-CONTENT" not in result.stdout
    assert b"No such file" in result.stdout


def test_mounts_made_inside_do_not_reach_the_host(scratch_rootfs: str) -> None:
    result = sh("mount -t tmpfs none /mnt && echo mounted", rootfs=scratch_rootfs, cap_add=["SYS_ADMIN"],
                seccomp="unconfined")
    assert b"mounted" in result.stdout
    assert host_mounts_mentioning(scratch_rootfs) == []


def test_uid_and_gid_maps_are_what_the_spec_says() -> None:
    result = sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g",
                namespaces=["user", "pid", "mnt", "uts", "ipc", "net"],
                uid_map=[IdMap(0, 200000, 1000)], gid_map=[IdMap(0, 300000, 1000)])
    lines = [line.split() for line in result.stdout.decode().splitlines()]
    assert lines[0] == ["0", "200000", "1000"]
    assert lines[1] == ["0", "300000", "1000"]
    assert lines[2:] == [["0"], ["0"]]


def test_user_namespace_own_id_mapping_by_default() -> None:
    result = sh("cat /proc/self/uid_map", namespaces=["user", "pid", "mnt", "uts", "ipc", "net"])
    assert result.stdout.split() == [b"0", str(os.geteuid()).encode(), b"1"]


def test_sysv_ipc_object_made_inside_is_invisible_outside(scratch_rootfs: str, tmp_path: Path) -> None:
    helper = Path(scratch_rootfs, "bin", "shmget")
    source = Path(__file__).parent.parent / "helpers" / "shmget.c"
    subprocess.run(["cc", "-static", "-O2", "-o", str(helper), str(source)], check=True)
    before = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    result = sh("shmget && cat /proc/sysvipc/shm | tail -n +2 | wc -l", rootfs=scratch_rootfs)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[1] == b"1"  # visible inside
    after = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    assert before == after  # never outside


def test_user_and_working_directory_and_env_apply() -> None:
    result = sh('id -u; id -g; pwd; echo "$GREETING"', user=(1234, 5678), cwd="/tmp",
                env={"PATH": "/bin:/usr/bin", "GREETING": "hi there"})
    assert result.stdout.decode().split("\n")[:4] == ["1234", "5678", "/tmp", "hi there"]


# -- mounts and the rootfs ----------------------------------------------------------------

def test_bind_mounts_readonly_and_readwrite(tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data").write_text("read me\n")
    result = sh("cat /in/data; echo x > /in/new 2>/dev/null || echo ro-refused; echo out > /out/file",
                mounts=[Mount.bind(str(ro), "/in", readonly=True), Mount.bind(str(rw), "/out")])
    assert result.stdout.split(b"\n")[:2] == [b"read me", b"ro-refused"]
    assert (rw / "file").read_text() == "out\n"
    assert not (ro / "new").exists()


def test_tmpfs_mount_and_readonly_rootfs(scratch_rootfs: str) -> None:
    result = sh("touch /etc/x 2>/dev/null || echo ro; touch /scratch/x && echo tmp-ok",
                rootfs=scratch_rootfs, readonly_rootfs=True, mounts=[Mount.tmpfs("/scratch")])
    assert result.stdout.split() == [b"ro", b"tmp-ok"]
    assert not Path(scratch_rootfs, "scratch", "x").exists()


def test_dev_is_minimal() -> None:
    result = sh("ls /dev")
    names = set(result.stdout.decode().split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= names
    assert not names & {"sda", "vda", "mem", "kmsg", "kvm"}


def test_symlinked_mount_target_stays_inside_the_rootfs(scratch_rootfs: str, tmp_path: Path) -> None:
    # A rootfs symlink pointing at an absolute path must resolve inside the rootfs.
    os.symlink("/etc", Path(scratch_rootfs) / "escape")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("inside\n")
    result = sh("cat /etc/f", rootfs=scratch_rootfs, mounts=[Mount.bind(str(src), "/escape")])
    assert result.stdout == b"inside\n"
    assert not Path("/etc/f").exists()


# -- results -------------------------------------------------------------------------

def test_exit_code_comes_back() -> None:
    result = sh("exit 3")
    assert (result.exit_code, result.signal, result.reason) == (3, None, "exited")
    assert result.shell_status == 3


def test_signal_comes_back() -> None:
    # Without a pid namespace: the kernel protects a namespace's pid 1 from
    # signals it has no handler for, even its own (pid_namespaces(7)).
    result = sh("kill -SEGV $$", namespaces=["mnt", "uts", "ipc", "net"])
    assert result.exit_code is None
    assert result.signal == signal.SIGSEGV and result.reason == "signaled"
    assert result.shell_status == 128 + signal.SIGSEGV


def test_stdout_and_stderr_are_separate() -> None:
    result = sh("echo out; echo err >&2")
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


def test_many_megabytes_of_output_arrive_intact() -> None:
    # 16 MiB on stdout and 4 MiB on stderr at once: a naive reader deadlocks
    result = sh("head -c 16777216 /dev/zero | tr '\\0' a; head -c 4194304 /dev/zero | tr '\\0' b >&2")
    assert len(result.stdout) == 16 << 20 and set(result.stdout) == {ord("a")}
    assert len(result.stderr) == 4 << 20


def test_stdin_bytes_are_fed() -> None:
    result = minibox.run(Spec(argv=["wc", "-c"]), stdin=b"x" * 300000)
    assert result.stdout.strip() == b"300000"


def test_timeout_kills_every_process_and_reports_it() -> None:
    start = time.monotonic()
    result = sh("sleep 100 & sleep 100 & sleep 100", timeout=0.5)
    assert result.reason == "timeout"
    assert result.shell_status == 124
    assert time.monotonic() - start < 30
    assert child_pids() == []


def test_duration_and_usage_are_measured() -> None:
    result = sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
    assert result.duration > 0
    assert result.usage.cpu_seconds is not None and result.usage.cpu_seconds > 0
    assert result.usage.memory_peak_bytes and result.usage.memory_peak_bytes > 0


def test_kernel_release_is_the_hosts() -> None:
    with Container(Spec(argv=["uname", "-r"])) as box:
        result = box.wait()
        assert result.stdout.decode().strip() == box.kernel_release == os.uname().release


# -- lifecycle -----------------------------------------------------------------------

def test_container_lifecycle_exec_kill_and_pidfd() -> None:
    with Container(Spec(argv=["sleep", "60"], hostname="life")) as box:
        assert box.pid and box.pidfd is not None
        first = box.exec(["hostname"])
        second = box.exec(["sh", "-c", "echo $$; ps -o pid,comm | grep -c sleep"])
        assert first.stdout == b"life\n" and first.exit_code == 0
        assert second.stdout.split()[1] == b"1"  # the container's own sleep, nobody else's
        missing = box.exec(["sh", "-c", "exit 7"])
        assert missing.exit_code == 7
        box.kill(signal.SIGKILL)
        result = box.wait(timeout=10)
        assert result.signal == signal.SIGKILL and result.reason == "signaled"
    assert child_pids() == []


def test_wait_timeout_kills_and_reports() -> None:
    with Container(Spec(argv=["sleep", "60"])) as box:
        result = box.wait(timeout=0.3)
    assert result.reason == "timeout"


def test_exception_in_with_block_cleans_up() -> None:
    fds = open_fds()
    with pytest.raises(RuntimeError), Container(Spec(argv=["sleep", "60"])) as box:
        pid = box.pid
        raise RuntimeError("caller failed")
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert open_fds() == fds
    assert child_pids() == []


# -- errors ------------------------------------------------------------------------------

def test_missing_command_is_a_clear_error_with_127_semantics() -> None:
    with pytest.raises(CommandNotFoundError) as info:
        minibox.run(Spec(argv=["no-such-command"]))
    assert info.value.errno == errno.ENOENT and info.value.exit_status == 127
    assert "no-such-command" in str(info.value)
    assert child_pids() == []


def test_failed_setup_step_names_the_step_and_leaves_nothing(scratch_rootfs: str) -> None:
    fds = open_fds()
    # /proc is a regular file in this rootfs: mounting procfs on it fails
    proc = Path(scratch_rootfs, "proc")
    proc.rmdir()
    proc.write_text("not a directory")
    with pytest.raises(SetupError) as info:
        minibox.run(Spec(argv=["true"], rootfs=scratch_rootfs))
    assert info.value.step == "mount" and info.value.errno == errno.ENOTDIR
    assert "/proc" in str(info.value)
    assert open_fds() == fds
    assert child_pids() == []
    assert host_mounts_mentioning(scratch_rootfs) == []


def test_bad_working_directory_fails_at_chdir() -> None:
    with pytest.raises(SetupError) as info:
        minibox.run(Spec(argv=["true"], cwd="/does/not/exist"))
    assert info.value.step == "chdir" and info.value.errno == errno.ENOENT


def test_invalid_specs_raise_before_anything_is_created(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = {
        "rootfs": dict(argv=["true"], rootfs=str(tmp_path / "missing")),
        "argv": dict(argv=[]),
        "hostname": dict(argv=["true"], hostname="bad host!"),
        "user": dict(argv=["true"], user=(-1, 0)),
        "cwd": dict(argv=["true"], cwd="relative"),
        "env['X']": dict(argv=["true"], env={"X": 1}),
        "mounts[0].target": dict(argv=["true"], mounts=[Mount.bind(str(tmp_path), "/../../etc")]),
    }
    for field, kwargs in cases.items():
        with pytest.raises(SpecError) as info:
            Spec(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field, (field, str(info.value))
    with pytest.raises(SpecError) as file_info:
        Spec(argv=["true"], rootfs=str(a_file))
    assert file_info.value.field == "rootfs" and "not a directory" in str(file_info.value)
    with pytest.raises(SpecError) as lim:
        Limits(memory="lots")
    assert lim.value.field == "limits.memory"


# -- concurrency ------------------------------------------------------------------------

def test_eight_threads_each_start_ten_containers() -> None:
    # The baseline holds what this process keeps for good (the owner's lock, the
    # keeper's socket: made by the first sandbox) and none of what an earlier
    # test's dropped objects still hold until the collector finalizes them (one
    # such fd, closed during this test, made it fail once in CI).
    minibox.run(Spec(argv=["true"]))
    gc.collect()
    fds = open_fds()
    failures: list[BaseException] = []
    outputs: list[bytes] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(10):
            try:
                r = minibox.run(Spec(argv=["echo", f"{n}-{i}"], hostname=f"t{n}"))
                with lock:
                    outputs.append(r.stdout)
            except BaseException as e:
                with lock:
                    failures.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert failures == []
    assert sorted(outputs) == sorted(f"{n}-{i}\n".encode() for n in range(8) for i in range(10))
    gc.collect()
    now = open_fds()
    assert now == fds, {fd: _fd_target(fd) for fd in now ^ fds}
    assert child_pids() == []


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "(closed)"


# -- the command line ------------------------------------------------------------------------

def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "minibox.cli", *args], capture_output=True, timeout=timeout,
                          check=False)


def test_cli_exit_codes_follow_docker_run() -> None:
    assert cli("run", "--", "sh", "-c", "exit 5").returncode == 5
    assert cli("run", "--", "sh", "-c", 'sh -c "kill -TERM \\$\\$"; exit $?').returncode == 128 + signal.SIGTERM
    assert cli("run", "--timeout", "0.3", "--", "sleep", "30").returncode == 124
    missing = cli("run", "--", "nope")
    assert missing.returncode == 127 and b"nope" in missing.stderr
    notexec = cli("run", "--", "/etc/passwd")
    assert notexec.returncode == 126
    bad = cli("run", "--memory", "lots", "--", "true")
    assert bad.returncode == 125 and b"--memory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_flags_reach_the_container(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from host")
    tmp_path.chmod(0o755)  # --user 7 must be able to read it
    out = cli("run", "--hostname", "clibox", "-e", "A=1", "-w", "/tmp", "--user", "7:8",
              "-v", f"{tmp_path}:/data:ro", "--", "sh", "-c", 'hostname; echo $A; pwd; id -u; id -g; cat /data/f')
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split("\n")[:6] == ["clibox", "1", "/tmp", "7", "8", "from host"]


def test_cli_rootfs_builder(tmp_path: Path) -> None:
    target = tmp_path / "fresh"
    out = cli("rootfs", "busybox", str(target))
    assert out.returncode == 0, out.stderr
    result = minibox.run(Spec(argv=["sh", "-c", "echo works"], rootfs=str(target)))
    assert result.stdout == b"works\n"
    again = cli("rootfs", "busybox", str(target))
    assert again.returncode == 125 and b"not an empty directory" in again.stderr


# -- an init as pid 1 ---------------------------------------------------------------------

def test_init_forwards_sigterm_and_reports_128_plus_n() -> None:
    with Container(Spec(argv=["sleep", "60"], init=True)) as box:
        ps = box.exec(["ps", "-o", "pid,comm"]).stdout.decode().split("\n")
        assert "minibox-i" in ps[1] and ps[2].split() == ["2", "sleep"]
        box.kill(signal.SIGTERM)  # without init, pid 1 would ignore this
        result = box.wait(timeout=10)
    assert result.reason == "exited" and result.exit_code == 128 + signal.SIGTERM


def test_init_reaps_orphans_and_passes_the_exit_code() -> None:
    result = sh("for i in 1 2 3; do (sleep 0.05 &); done; sleep 0.2; "
                "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l; exit 5", init=True)
    assert result.exit_code == 5
    assert result.stdout.strip() == b"0"  # no zombie left by the orphans


def test_init_reports_a_missing_command_like_without_it() -> None:
    with pytest.raises(CommandNotFoundError) as info:
        minibox.run(Spec(argv=["no-such-command"], init=True))
    assert info.value.errno == errno.ENOENT and "no-such-command" in str(info.value)


def test_init_binary_cannot_be_overwritten_from_inside() -> None:
    # CVE-2019-5736 (runc): root in the container rewriting /proc/1/exe
    result = sh("echo evil > /proc/1/exe && echo WROTE || echo refused; "
                "(exec 3>>/proc/1/exe; echo evil >&3) && echo APPENDED || echo refused", init=True)
    assert result.stdout.split() == [b"refused", b"refused"]


def test_the_shared_rootfs_gets_a_private_writable_layer() -> None:
    from minibox.images.busybox import default_rootfs

    image = default_rootfs()
    before = sorted(os.listdir(image))
    first = sh("echo mine > /etc/motd-test && cat /etc/motd-test; mkdir /newdir && echo made",
               mounts=[Mount.tmpfs("/brand-new-mount-point")])
    assert first.stdout.split() == [b"mine", b"made"], first.stderr
    second = sh("cat /etc/motd-test 2>&1; ls -d /newdir 2>&1")
    assert b"No such file" in second.stdout  # nothing leaks from one container to the next
    assert sorted(os.listdir(image)) == before  # not even the mount point reached the image
    assert not os.path.exists(os.path.join(image, "etc", "motd-test"))
