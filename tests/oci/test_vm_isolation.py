"""minibox-oci with ``minibox.isolation=vm``: the same verbs, a microVM behind them.

Driven directly, as an engine would (the test process is the subreaper
that reaps the VM supervisor and reads its exit status).  VM boots are
seconds under TCG, so each test boots once and checks several things on
that one VM.  Leftovers are checked after each: no host process of the VM
(supervisor, QEMU, virtiofsd), no minibox record, no state directory.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from minibox import records
from tests.conftest import needs_root

from .conftest import MINIBOX_OCI, Oci

pytestmark = [needs_root, pytest.mark.root, pytest.mark.vm]

MINIBOX_OCI_VM = MINIBOX_OCI + "-vm"
VM = {"minibox.isolation": "vm"}


@pytest.fixture(autouse=True)
def _needs_vm_host() -> None:
    from minibox.errors import MiniboxError
    from minibox.vm import ensure_kernel

    if not os.path.exists("/usr/lib/qemu/virtiofsd") or not any(
            os.access(os.path.join(d, "qemu-system-x86_64"), os.X_OK) for d in os.environ["PATH"].split(":")):
        pytest.skip("QEMU or virtiofsd is not installed")
    try:
        ensure_kernel(None)
    except MiniboxError as e:
        pytest.skip(f"no guest kernel: {e}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _assert_nothing_left(oci: Oci, container_id: str, pids: list[int], vm_id: str) -> None:
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "every host process of the VM is gone"
    assert not (oci.root / container_id).exists(), "the state directory is gone"
    assert records.load(records.path_of(vm_id)) is None, "the VM's minibox record is gone"
    from minibox.owner import owners_dir

    assert not [name for name in os.listdir(owners_dir()) if name.split("-")[0] == str(pids[0])], \
        "the supervisor's owner lock file is gone"
    _reap_orphans()


def _reap_orphans() -> None:
    """Reap what the engine's subreaper (us) inherits: the supervisor's keeper, and the QEMU and
    virtiofsd of a supervisor that was killed; each must exit by itself first."""
    from minibox import procfs

    deadline = time.monotonic() + 10
    while True:
        running = []
        for child in procfs.children(os.getpid()):
            try:
                comm = Path(f"/proc/{child.pid}/comm").read_text().strip()
            except OSError:
                continue
            if not comm.startswith(("minibox-keeper", "qemu-system", "virtiofsd")):
                continue
            if child.state == "Z":
                os.waitpid(child.pid, 0)
            else:
                running.append(f"{child.pid} {comm}")
        if not running:
            return
        assert time.monotonic() < deadline, f"still running: {running}"
        time.sleep(0.05)


def _run(args: list[str], *, stdin: str = "", timeout: float = 60) -> tuple[int, str, str]:
    """Run a command with files (not pipes) for its stdio: the supervisor inherits them."""
    with tempfile.TemporaryFile("w+") as inp, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        inp.write(stdin)
        inp.seek(0)
        code = subprocess.run(args, stdin=inp, stdout=out, stderr=err, timeout=timeout, check=False).returncode
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def test_refused_fields_fail_create_with_one_line_and_leave_nothing(oci: Oci) -> None:
    """What a VM cannot honour is refused before anything boots (no VM is started here)."""
    cases = [
        ({"linux__namespaces": [{"type": "mount"}, {"type": "network", "path": f"/proc/{os.getpid()}/ns/net"}]},
         "cannot join a namespace of the host"),
        ({"linux__resources": {"memory": {"limit": 32 << 20}}}, "at least 96M"),
        ({"mounts": [{"destination": "/x", "type": "overlay", "source": "overlay"}]}, "bind (virtiofs) and tmpfs"),
    ]
    for i, (changes, expected) in enumerate(cases):
        oci.write_config(["true"], annotations=VM, **changes)
        done = oci.create(f"bad{i}", check=False)
        assert done.returncode != 0 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (oci.root / f"bad{i}").exists()
    oci.write_config(["true"], annotations=VM)
    done = oci.create("fds", "--preserve-fds", "1", check=False, pass_fds=[3] if _has_fd3() else [])
    assert done.returncode != 0 and "--preserve-fds" in done.stderr
    features = json.loads(oci("features").stdout)
    assert "vm" in features["annotations"]["minibox.isolation"]


def _has_fd3() -> bool:
    try:
        os.fstat(3)
    except OSError:
        return False
    return True


def test_lifecycle_exec_pause_kill_delete(oci: Oci, tmp_path: Path) -> None:
    """create/start/state/ps/exec/pause/resume/kill/delete on one VM, selected by the annotation."""
    oci.write_config(["sh", "-c", "trap 'echo got TERM; exit 42' TERM; echo started; "
                      "while true; do sleep 0.1; done"], annotations=VM,
                     linux__resources={"memory": {"limit": 192 << 20}, "cpu": {"quota": 150000, "period": 100000}})
    pid_file = tmp_path / "pid"
    out_path = tmp_path / "out"
    with open(out_path, "w+") as out, tempfile.TemporaryFile("w+") as err:
        # files, not pipes: the supervisor inherits create's stdio (its command's)
        oci.ids.append("v1")
        code = subprocess.run([MINIBOX_OCI, "--root", str(oci.root), "create", "--bundle", str(oci.bundle),
                               "--pid-file", str(pid_file), "v1"], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=err, timeout=120, check=False).returncode
        err.seek(0)
        assert code == 0, err.read()
    pid = int(pid_file.read_text())
    state = oci.state("v1")
    assert state["status"] == "created" and state["pid"] == pid
    # the supervisor is our child now (we play the engine's subreaper)
    assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())
    vm_id = json.loads((oci.root / "v1" / "state.json").read_text())["vm"]
    pids = json.loads(oci("ps", "--format", "json", "v1").stdout)
    assert pids[0] == pid and len(pids) >= 3, "the supervisor, QEMU and a virtiofsd"
    assert "qemu-system" in Path(f"/proc/{pids[1]}/cmdline").read_text()

    oci("start", "v1")
    assert oci.state("v1")["status"] == "running"
    done = oci("exec", "v1", "sh", "-c", "hostname; exit 5", check=False, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (5, "ocitest\n"), done.stderr
    done = oci("exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000", "v1",
               "sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)", stdin=subprocess.DEVNULL)
    assert done.stdout == "bar /tmp 1000:1000\n"
    # linux.resources sized the VM: 2 vCPUs for a quota of 1.5 CPUs, 192 MiB of RAM
    done = oci("exec", "v1", "sh", "-c", "nproc; grep MemTotal /proc/meminfo", stdin=subprocess.DEVNULL)
    cpus, memory = done.stdout.splitlines()
    assert int(cpus) == 2
    assert 128 << 10 < int(memory.split()[1]) <= 192 << 10, memory
    done = oci("exec", "v1", "cat", input="through stdin\n")
    assert done.stdout == "through stdin\n"
    missing = oci("exec", "v1", "no-such-command", check=False, stdin=subprocess.DEVNULL)
    assert missing.returncode != 0 and "executable file not found" in missing.stderr

    relay_pid_file = tmp_path / "exec.pid"
    oci("exec", "--detach", "--pid-file", str(relay_pid_file), "v1", "sh", "-c", "sleep 1; exit 9",
        stdin=subprocess.DEVNULL)
    relay = int(relay_pid_file.read_text())
    assert oci.reap(relay) == 9, "the relay process exits with the exec'd command's status"

    oci("pause", "v1")
    assert oci.state("v1")["status"] == "paused"
    refused = oci("delete", "v1", check=False)
    assert refused.returncode != 0 and "not stopped" in refused.stderr
    oci("resume", "v1")
    assert oci.state("v1")["status"] == "running"

    oci("kill", "v1", "TERM")
    assert oci.reap(pid) == 42, "the supervisor exits with the guest command's status"
    assert oci.state("v1")["status"] == "stopped"
    assert "started\ngot TERM\n" in out_path.read_text()
    # once it has ended: what containerd's shim reads as "already finished", and --all succeeds (as runc)
    late = oci("kill", "v1", "TERM", check=False)
    assert late.returncode != 0 and "container not running" in late.stderr
    oci("kill", "--all", "v1", "KILL")
    oci("delete", "v1")
    _assert_nothing_left(oci, "v1", pids, vm_id)


def _read_until(fd: int, expected: bytes, timeout: float = 30) -> bytes:
    """What a pty master gives until ``expected`` is in it (an AssertionError with what came, else)."""
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while expected not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no {expected!r} in {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every slave is closed
            chunk = b""
        assert chunk, f"the pty closed without {expected!r}: {seen!r}"
        seen += chunk
    return seen


def test_exec_tty_carries_input_and_resizes_to_the_guest(oci: Oci, tmp_path: Path) -> None:
    """``exec --tty --console-socket --detach``, as conmon runs ``podman exec -it``: what the engine
    writes to the pty master it received is typed into the guest command's pty; its size follows."""
    import fcntl
    import socket
    import struct
    import termios

    oci.write_config(["sleep", "600"], annotations=VM)
    pid_file = tmp_path / "pid"
    oci.create("v6", "--pid-file", str(pid_file), stdin=subprocess.DEVNULL)
    pid = int(pid_file.read_text())
    vm_id = json.loads((oci.root / "v6" / "state.json").read_text())["vm"]
    pids = json.loads(oci("ps", "--format", "json", "v6").stdout)
    oci("start", "v6")
    console = tmp_path / "console.sock"
    relay_pid_file = tmp_path / "exec.pid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(console))
        listener.listen(1)
        oci("exec", "--tty", "--console-socket", str(console), "--detach", "--pid-file", str(relay_pid_file),
            "v6", "sh", "-c", "read x; echo got:$x; read y; echo size:$(stty size); exit 3",
            stdin=subprocess.DEVNULL)
        conn, _ = listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    master = fds[0]
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        os.write(master, b"hello\n")
        seen = _read_until(master, b"got:hello")
        assert b"hello\r\n" in seen, "the guest's tty echoes what was typed"
        os.write(master, b"\n")
        _read_until(master, b"size:33 101")
        relay = int(relay_pid_file.read_text())
        assert oci.reap(relay) == 3, "the relay exits with the exec'd command's status"
    finally:
        os.close(master)
    oci("kill", "v6", "KILL")
    oci.reap(pid)
    oci("delete", "v6")
    _assert_nothing_left(oci, "v6", pids, vm_id)


def test_run_streams_stdio_and_a_killed_supervisor_leaves_nothing_after_gc(oci: Oci, tmp_path: Path) -> None:
    """minibox-oci-vm (the executable's name selects the VM): stdin streamed, stdout/stderr, exit code."""
    oci.write_config(["sh", "-c", "read line; echo \"$line|$FOO|$(pwd)|$(id -u)\"; cat; echo oops >&2; exit 7"],
                     process__env=["PATH=/bin", "FOO=bar"], process__cwd="/tmp",
                     process__user={"uid": 1000, "gid": 1000})
    oci.ids.append("v3")
    code, out, err = _run([MINIBOX_OCI_VM, "--root", str(oci.root), "run", "--bundle", str(oci.bundle), "v3"],
                          stdin="first\nsecond\nthird\n", timeout=120)
    assert code == 7, err
    assert out == "first|bar|/tmp|1000\nsecond\nthird\n"
    assert err == "oops\n"
    assert not (oci.root / "v3").exists(), "run deletes the container it ran"
    _reap_orphans()

    # a supervisor killed outright: its keeper ends QEMU and virtiofsd, gc its record and cgroup,
    # delete the rest
    parent = f"minibox-vm-test-{os.getpid()}"
    oci.write_config(["sleep", "60"], annotations=VM, linux__cgroupsPath=f"/{parent}/v4")
    pid_file = tmp_path / "pid"
    oci.create("v4", "--pid-file", str(pid_file), stdin=subprocess.DEVNULL)
    pid = int(pid_file.read_text())
    vm_id = json.loads((oci.root / "v4" / "state.json").read_text())["vm"]
    pids = json.loads(oci("ps", "--format", "json", "v4").stdout)
    os.kill(pid, signal.SIGKILL)
    assert oci.reap(pid) == 137
    assert oci.state("v4")["status"] == "stopped"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "the keeper ended QEMU and virtiofsd"
    from minibox import gc

    cgroups = glob.glob(f"/sys/fs/cgroup/*/{parent}/v4")
    assert len(cgroups) >= 4, "memory, pids, cpuacct and freezer at least"
    report = gc.collect()
    assert f"vm {vm_id}" in report.removed
    assert not [d for d in cgroups if os.path.exists(d)], "gc removed the VM's host cgroup"
    oci("delete", "v4")
    assert not glob.glob(f"/sys/fs/cgroup/*/{parent}"), "delete removed the parent create made"
    _assert_nothing_left(oci, "v4", pids, vm_id)


def _in_cgroup(directory: str, pid: int) -> bool:
    return str(pid) in Path(directory, "cgroup.procs").read_text().split()


def test_host_processes_in_the_cgroup_asked_for_with_the_cpu_limits(oci: Oci, tmp_path: Path) -> None:
    """``linux.cgroupsPath``: the supervisor, QEMU and virtiofsd run in that cgroup, whose CPU knobs
    carry ``linux.resources.cpu``; the engine reads the VM's usage there; delete removes it."""
    parent = f"minibox-vm-test-{os.getpid()}"
    oci.write_config(["sleep", "600"], annotations=VM, linux__cgroupsPath=f"/{parent}/v7",
                     linux__resources={"memory": {"limit": 160 << 20},
                                       "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0"}})
    pid_file = tmp_path / "pid"
    done = oci.create("v7", "--pid-file", str(pid_file), stdin=subprocess.DEVNULL)
    assert "shares" not in done.stderr, "cpu.shares is applied, not warned about"
    pid = int(pid_file.read_text())
    vm_id = json.loads((oci.root / "v7" / "state.json").read_text())["vm"]
    pids = json.loads(oci("ps", "--format", "json", "v7").stdout)
    qemu = pids[1]
    assert "qemu-system" in Path(f"/proc/{qemu}/cmdline").read_text()
    directories = {c: f"/sys/fs/cgroup/{c}/{parent}/v7" for c in ("cpu", "cpuacct", "memory", "pids", "cpuset")}
    for directory in directories.values():
        for member in pids:  # the supervisor, QEMU, each virtiofsd
            assert _in_cgroup(directory, member), f"{member} in {directory}"
    cpu = directories["cpu"]
    assert int(Path(cpu, "cpu.cfs_quota_us").read_text()) * 2 == int(Path(cpu, "cpu.cfs_period_us").read_text())
    assert int(Path(cpu, "cpu.shares").read_text()) > 2
    assert Path(directories["cpuset"], "cpuset.cpus").read_text().strip() == "0"
    assert Path(f"/proc/{qemu}/status").read_text().split("Cpus_allowed_list:")[1].split()[0] == "0"
    from minibox.oci.vm_runtime import HOST_MEMORY_HEADROOM

    memory_limit = int(Path(directories["memory"], "memory.limit_in_bytes").read_text())
    assert memory_limit == (160 << 20) + HOST_MEMORY_HEADROOM, "the guest's RAM, and QEMU's headroom"
    oci("start", "v7")
    done = oci("exec", "v7", "sh", "-c", "nproc; grep MemTotal /proc/meminfo", stdin=subprocess.DEVNULL)
    cpus, memory = done.stdout.splitlines()
    assert int(cpus) == 1 and int(memory.split()[1]) <= 160 << 10, "the guest is sized as before"
    # what an engine's stats read: the VM's memory and CPU time, charged to this cgroup
    assert int(Path(directories["memory"], "memory.usage_in_bytes").read_text()) > 64 << 20
    assert int(Path(directories["cpuacct"], "cpuacct.usage").read_text()) > 0
    oci("kill", "v7", "KILL")
    oci.reap(pid)
    oci("delete", "v7")
    assert not [d for d in directories.values() if os.path.exists(d)], "delete removed the cgroup"
    assert not [c for c in directories if os.path.exists(f"/sys/fs/cgroup/{c}/{parent}")], \
        "and the parent create made for it"
    _assert_nothing_left(oci, "v7", pids, vm_id)


def test_a_create_killed_while_booting_leaves_nothing(oci: Oci, tmp_path: Path) -> None:
    """The caller of create dies mid-boot: its supervisor notices, ends the VM and removes the state;
    gc removes its host cgroup once it has exited."""
    parent = f"minibox-vm-test-{os.getpid()}"
    oci.write_config(["true"], annotations=VM, linux__cgroupsPath=f"/{parent}/v5")
    oci.ids.append("v5")
    caller = subprocess.Popen([MINIBOX_OCI, "--root", str(oci.root), "create", "--bundle", str(oci.bundle), "v5"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = oci.root / "v5" / "state.json"
    deadline = time.monotonic() + 30
    supervisor = 0
    while not supervisor and time.monotonic() < deadline:
        try:
            supervisor = json.loads(state_file.read_text()).get("pid", 0)
        except (OSError, ValueError):
            time.sleep(0.01)
    assert supervisor, "create forked its supervisor"
    caller.kill()
    caller.wait()
    assert oci.reap(supervisor) == 1, "the supervisor ends once it finds its caller gone"
    assert not (oci.root / "v5").exists()
    from minibox import gc

    gc.collect()
    leftover = [r for _, r in records.all_records() if r is not None and r.get("kind") == "vm"
                and r.get("owner", {}).get("pid") == supervisor]
    assert not leftover, "no VM record of that supervisor is left"
    assert not glob.glob(f"/sys/fs/cgroup/*/{parent}/v5"), "nor its host cgroup"
    for directory in glob.glob(f"/sys/fs/cgroup/*/{parent}"):  # the parent: the engine's, here ours
        os.rmdir(directory)
    _reap_orphans()
