"""VirtualMachine end to end: the same Spec, the guest's own kernel.

Each test boots a real microVM (TCG here: ~1-3 s).  The tests check what a
user would: output, exit status, the guest's kernel and memory, and that
nothing is left behind on the host.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
from collections.abc import Iterator

import pytest

from minibox.errors import CommandNotFoundError, MiniboxError, SetupError, SpecError
from minibox.sandbox import Sandbox
from minibox.spec import Limits, Mount, Spec
from minibox.vm import VirtualMachine, run_vm

pytestmark = pytest.mark.usefixtures("no_leaks")


def sh(rootfs: str, script: str, **kw: object) -> Spec:
    return Spec(argv=["/bin/sh", "-c", script], rootfs=rootfs, **kw)  # type: ignore[arg-type]


def test_the_guest_runs_its_own_kernel(rootfs: str) -> None:
    with VirtualMachine(sh(rootfs, "uname -r")) as vm:
        assert isinstance(vm, VirtualMachine)
        result = vm.wait()
        release = vm.kernel_release
    assert result.reason == "exited" and result.exit_code == 0
    assert result.stdout.decode().strip() == release
    assert release and release != platform.release()


def test_exit_status_and_separate_stderr(rootfs: str) -> None:
    result = run_vm(sh(rootfs, "echo out; echo err >&2; exit 3"))
    assert (result.exit_code, result.signal, result.reason) == (3, None, "exited")
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert not result.ok and result.shell_status == 3


def test_a_signal_killed_command_comes_back_signaled(rootfs: str) -> None:
    result = run_vm(sh(rootfs, "kill -TERM $$"))
    assert result.reason == "signaled"
    assert result.exit_code is None and result.signal == signal.SIGTERM
    assert result.shell_status == 128 + signal.SIGTERM


def test_eight_megabytes_of_stdout_arrive_intact(rootfs: str) -> None:
    count = 1_200_000
    expected = "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    assert len(expected) >= 8 << 20
    result = run_vm(sh(rootfs, f"seq 1 {count}"))
    assert result.exit_code == 0
    assert len(result.stdout) == len(expected)
    assert result.stdout == expected


def test_spec_inside_the_guest(rootfs: str, tmp_path: object) -> None:
    """Hostname, env, cwd, uid/gid and stdin reach the command."""
    spec = sh(rootfs, 'echo "$(hostname) $GREETING $(pwd) $(id -u):$(id -g)"; cat',
              hostname="guest-one", env={"PATH": "/bin", "GREETING": "hello"}, cwd="/tmp", user=(65534, 65534))
    with VirtualMachine(spec, stdin=b"from stdin\n") as vm:
        result = vm.wait()
    assert result.stdout == b"guest-one hello /tmp 65534:65534\nfrom stdin\n"


def test_mounts_and_readonly_rootfs(rootfs: str, tmp_path: os.PathLike[str]) -> None:
    data = os.path.join(tmp_path, "data")
    os.mkdir(data)
    with open(os.path.join(data, "in.txt"), "w") as f:
        f.write("shared\n")
    single = os.path.join(tmp_path, "single.txt")
    with open(single, "w") as f:
        f.write("one file\n")
    spec = sh(rootfs,
              "cat /data/in.txt /etc/single.txt; echo new > /scratch/x && cat /scratch/x; "
              "touch /data/nope 2>/dev/null || echo data-ro; touch /nope 2>/dev/null || echo root-ro",
              readonly_rootfs=True,
              mounts=[Mount.bind(data, "/data", readonly=True), Mount.bind(single, "/etc/single.txt"),
                      Mount.tmpfs("/scratch", size="8M")])
    result = run_vm(spec)
    assert result.stdout == b"shared\none file\nnew\ndata-ro\nroot-ro\n", result.stderr
    assert not os.path.exists(os.path.join(data, "nope"))


def test_a_writable_bind_mount_writes_through_to_the_host(rootfs: str, tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "out")
    os.mkdir(out)
    result = run_vm(sh(rootfs, "echo written > /out/file", mounts=[Mount.bind(out, "/out")]))
    assert result.exit_code == 0
    with open(os.path.join(out, "file")) as f:
        assert f.read() == "written\n"


def test_memory_limit_sizes_the_guest(rootfs: str) -> None:
    result = run_vm(sh(rootfs, "grep MemTotal /proc/meminfo", limits=Limits(memory="192M")))
    kib = int(result.stdout.split()[1])
    assert 150 * 1024 < kib <= 192 * 1024


def test_output_to_callers_file_descriptor(rootfs: str, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "out.txt")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        result = run_vm(sh(rootfs, "echo to-a-file"), stdout=fd)
    finally:
        os.close(fd)
    assert result.stdout == b""
    with open(path) as f:
        assert f.read() == "to-a-file\n"


@pytest.fixture
def running(rootfs: str) -> Iterator[VirtualMachine]:
    with VirtualMachine(sh(rootfs, "sleep 600", hostname="exec-box", limits=Limits(memory="160M"))) as vm:
        assert isinstance(vm, VirtualMachine)
        yield vm


def test_exec_into_a_running_vm_twice(running: VirtualMachine) -> None:
    first = running.exec(["hostname"])
    second = running.exec(["/bin/sh", "-c", "echo again; echo oops >&2; exit 4"])
    assert (first.exit_code, first.stdout) == (0, b"exec-box\n")
    assert (second.exit_code, second.stdout, second.stderr) == (4, b"again\n", b"oops\n")
    assert running.exec(["uname", "-r"]).stdout.decode().strip() == running.kernel_release


def test_exec_of_a_missing_program(running: VirtualMachine) -> None:
    with pytest.raises(CommandNotFoundError) as info:
        running.exec(["/no/such/program"])
    assert info.value.errno == errno.ENOENT
    assert running.exec(["true"]).exit_code == 0  # the VM is still fine


def test_exec_timeout(running: VirtualMachine) -> None:
    result = running.exec(["sleep", "100"], timeout=1)
    assert result.reason == "timeout" and result.exit_code is None


def test_qemu_confines_itself(running: VirtualMachine) -> None:
    # -runas nobody and -sandbox on: a guest that breaks the device model
    # finds an unprivileged process under a seccomp filter, not root.
    assert running.pid is not None
    with open(f"/proc/{running.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Uid"].split()[:2] == ["65534", "65534"]
    assert status["Seccomp"].strip() == "2"


def _guest_uptime(box: Sandbox) -> float:
    """The guest's own clock, read through the Sandbox interface (any isolation would do)."""
    return float(box.exec(["cat", "/proc/uptime"]).stdout.split()[0])


def test_pause_stops_the_guest_and_resume_continues_it(running: VirtualMachine) -> None:
    import time

    before = _guest_uptime(running)
    host_start = time.monotonic()
    running.pause()
    assert running.paused
    time.sleep(2.0)
    running.resume()
    assert not running.paused
    after = _guest_uptime(running)
    host_elapsed = time.monotonic() - host_start
    # QEMU's virtual clock stops with the vCPUs: the 2 s the guest spent
    # paused are missing from its uptime, however slow this machine is.
    assert after - before < host_elapsed - 1.5, (before, after, host_elapsed)
    assert running.exec(["echo", "awake"]).stdout == b"awake\n"


def test_stats_and_kill(running: VirtualMachine) -> None:
    stats = running.stats()
    assert stats.memory_bytes and stats.memory_bytes > 0
    assert stats.cpu_seconds is not None and stats.cpu_seconds > 0
    assert running.guest_memory_bytes() == 160 << 20
    assert running.accelerator in ("kvm", "tcg") and running.accelerator_reason
    assert running.pid is not None
    running.kill(signal.SIGKILL)
    result = running.wait()
    assert (result.reason, result.signal) == ("signaled", signal.SIGKILL)
    assert result.usage.memory_peak_bytes and result.usage.memory_peak_bytes > 0
    assert running.pid is None


def test_timeout_kills_the_vm(rootfs: str) -> None:
    result = run_vm(sh(rootfs, "echo before; sleep 100", timeout=8))
    assert result.reason == "timeout"
    assert result.shell_status == 124


def test_wait_timeout_kills_the_vm(rootfs: str) -> None:
    with VirtualMachine(sh(rootfs, "sleep 100")) as vm:
        result = vm.wait(timeout=1)
    assert result.reason == "timeout"


def test_command_not_found(rootfs: str) -> None:
    with pytest.raises(CommandNotFoundError) as info:
        run_vm(Spec(argv=["no-such-command"], rootfs=rootfs))
    assert info.value.exit_status == 127


def test_exception_in_the_with_block_cleans_up(rootfs: str) -> None:
    with pytest.raises(RuntimeError):
        with VirtualMachine(sh(rootfs, "sleep 100")):
            raise RuntimeError("caller bug")


def test_guest_kernel_panic_is_a_setup_error(rootfs: str) -> None:
    with pytest.raises(SetupError) as info:
        run_vm(sh(rootfs, "echo c > /proc/sysrq-trigger; sleep 10"))
    assert "panic" in str(info.value).lower()


def test_close_is_idempotent_and_before_start_is_harmless(rootfs: str) -> None:
    vm = VirtualMachine(sh(rootfs, "true"))
    vm.close()
    vm.close()


def test_bad_specs_are_refused_before_anything_exists(rootfs: str) -> None:
    VirtualMachine(sh(rootfs, "true", network="bridge")).close()  # accepted (tests/network/test_vm_network.py)
    with pytest.raises(SpecError, match="host's network stack"):
        VirtualMachine(sh(rootfs, "true", network="host"))
    with pytest.raises(SpecError, match=r"limits\.memory"):
        VirtualMachine(sh(rootfs, "true", limits=Limits(memory="32M")))


def test_exec_before_start_is_an_error(rootfs: str) -> None:
    vm = VirtualMachine(sh(rootfs, "true"))
    with pytest.raises(MiniboxError):
        vm.exec(["true"])
    vm.close()


def test_rootfs_packed_into_the_initramfs(rootfs: str) -> None:
    """The alternative to virtiofs: a copy of the rootfs; guest writes stay in the guest."""
    with VirtualMachine(sh(rootfs, "echo guest-only > /written-in-guest && cat /written-in-guest"),
                        rootfs_sharing="initramfs") as vm:
        result = vm.wait()
    assert (result.exit_code, result.stdout) == (0, b"guest-only\n")
    assert not os.path.exists(os.path.join(rootfs, "written-in-guest"))


def test_the_shared_default_rootfs_is_read_only_at_the_host(tmp_path: os.PathLike[str]) -> None:
    # Read-only inside the guest is no boundary (its root can remount);
    # virtiofsd itself must refuse the writes.
    from minibox.images.busybox import default_rootfs

    marker = os.path.join(default_rootfs(), "bin", "written-by-a-guest")
    result = run_vm(Spec(argv=["sh", "-c", "mount -o remount,rw / ; touch /bin/written-by-a-guest; echo rc=$?; "
                                           "echo scratch > /tmp/x && cat /tmp/x"]),
                    template=False)  # a cold boot: the root is virtiofsd's (a clone's is a copy in its RAM)
    assert b"rc=1" in result.stdout and b"Read-only file system" in result.stderr
    assert b"scratch" in result.stdout  # a private, writable /tmp
    assert not os.path.exists(marker)


def test_a_readonly_bind_mount_is_read_only_at_the_host(rootfs: str, tmp_path: os.PathLike[str]) -> None:
    shared = os.path.join(tmp_path, "shared")
    os.mkdir(shared)
    script = "mount -o remount,rw /data; touch /data/new; echo rc=$?"
    result = run_vm(Spec(argv=["sh", "-c", script], rootfs=rootfs, mounts=[Mount.bind(shared, "/data", readonly=True)]))
    assert b"rc=1" in result.stdout
    assert os.listdir(shared) == []


def test_a_refused_qmp_command_keeps_qemus_error_class(running: VirtualMachine) -> None:
    from minibox.vm.qmp import QMPCommandError

    monitor = running._monitor  # the VM's own QMP connection
    assert monitor is not None
    with pytest.raises(QMPCommandError) as info:
        monitor.execute("no-such-command")
    assert info.value.error_class == "CommandNotFound" and info.value.step == "qmp"
    assert monitor.execute("query-status")["status"] == "running"  # the connection is still good
