"""podman (and containerd's ctr) drive minibox-oci-vm: the same engines, a microVM per container.

The engines are set up as in test_podman.py and test_containerd.py; the
runtime is the second executable name, ``minibox-oci-vm``, as a
RuntimeClass's ``BinaryName`` would name it.  Each test boots one VM (TCG
here: seconds), so the checks are grouped.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root

from .conftest import MINIBOX_OCI
from .test_containerd import IMAGE as CTR_IMAGE
from .test_containerd import Ctr, ctr  # noqa: F401 (the fixture: a private containerd)
from .test_podman import IMAGE, Podman

pytestmark = [needs_root, pytest.mark.root, pytest.mark.vm,
              pytest.mark.skipif(shutil.which("podman") is None or shutil.which("conmon") is None,
                                 reason="podman and conmon are not installed (make setup installs them)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd") or shutil.which("qemu-system-x86_64")
                                 is None, reason="QEMU or virtiofsd is not installed")]


def wrapper_script(*args: str) -> str:
    """A shell wrapper running minibox-oci-vm with ``args`` first.

    conmon and the containerd shim start the runtime with an environment of
    their own: the wrapper carries our PYTHONPATH (a worktree's sources under
    test), as it carries ``--root``.
    """
    pythonpath = os.environ.get("PYTHONPATH")
    export = f"export PYTHONPATH={shlex.quote(pythonpath)}\n" if pythonpath else ""
    return f'#!/bin/sh\n{export}exec {shlex.join([MINIBOX_OCI + "-vm", *args])} "$@"\n'


class PodmanVm(Podman):
    """podman with a second runtime, ``minibox-vm``: a wrapper around minibox-oci-vm."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        wrapper = base / "minibox-oci-vm"
        wrapper.write_text(wrapper_script("--root", str(self.state)))
        wrapper.chmod(0o755)
        conf = base / "containers.conf"
        text = conf.read_text().replace('runtime_supports_json = ["minibox"]',
                                        'runtime_supports_json = ["minibox", "minibox-vm"]')
        conf.write_text(text + f'minibox-vm = ["{wrapper}"]\n')


@pytest.fixture(scope="module")
def podman_vm(tmp_path_factory: pytest.TempPathFactory, oci_rootfs: Path) -> Iterator[PodmanVm]:
    base = tmp_path_factory.mktemp("podman-vm")
    runner = PodmanVm(base)
    parents_before = set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(oci_rootfs, arcname=".")
    runner("import", str(tar), IMAGE)
    try:
        yield runner
    finally:
        runner("rm", "--all", "--force", "--time", "0", check=False)
        for parent in set(glob.glob("/sys/fs/cgroup/*/libpod_parent")) - parents_before:
            for directory in (f"{parent}/conmon", parent):  # conmon's own cgroup, if we made it
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
        with open("/proc/self/mountinfo") as f:
            mounted = [line for line in f if str(base) in line]
        assert not mounted, f"podman left mounts behind: {mounted}"
        shutil.rmtree(base, ignore_errors=True)


def _vm_processes(base: Path) -> list[str]:
    """VM supervisors and virtiofsd processes of this podman's containers (their paths are under base).

    QEMU names no path of ours, but it never outlives its supervisor and its
    virtiofsd (the keeper, and virtiofsd's exit when QEMU hangs up).
    """
    deadline = time.monotonic() + 10
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            cmdline = b" ".join(argv).decode(errors="replace")
            program = os.path.basename(argv[0].decode(errors="replace"))
            if str(base) in cmdline and (program == "virtiofsd" or
                                         (program.startswith("python") and "minibox-oci-vm" in cmdline)):
                found.append(f"{pid} {cmdline[:100]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_podman_run_rm_in_a_vm(podman_vm: PodmanVm, tmp_path: Path) -> None:
    """``podman run --rm`` through minibox-oci-vm: exit code, stdin, env, user, cwd, a read-only bind
    mount (virtiofs), and the guest's own kernel."""
    (tmp_path / "f").write_text("data\n")
    tmp_path.chmod(0o755)  # readable by the container's user 1000
    done = podman_vm("--runtime", "minibox-vm", "run", "--rm", "-i", "-e", "FOO=bar", "--user", "1000:1000",
                     "-w", "/tmp", "-v", f"{tmp_path}:/data:ro", IMAGE, "sh", "-c",
                     "cat; echo FOO=$FOO; echo $(id -u):$(id -g) $(pwd); cat /data/f; uname -r; "
                     "touch /data/g || exit 3", input="piped in\n", check=False)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["piped in", "FOO=bar", "1000:1000 /tmp", "data"]
    assert lines[4] != os.uname().release, "the command ran under the guest's kernel"
    assert "Read-only file system" in done.stderr and not (tmp_path / "g").exists()
    assert not list(podman_vm.state.iterdir()) if podman_vm.state.exists() else True
    assert not _vm_processes(podman_vm.base)
    assert not glob.glob(f"{podman_vm.base}/run/**/vm.sock", recursive=True)


def test_podman_memory_limit_is_the_guests_and_its_oom_is_137(podman_vm: PodmanVm) -> None:
    """``--memory`` sizes the guest; a command that keeps allocating is ended by the guest's OOM killer."""
    done = podman_vm("--runtime", "minibox-vm", "run", "--rm", "--memory", "128m", IMAGE, "sh", "-c",
                     "grep MemTotal /proc/meminfo; tail /dev/zero", check=False)
    assert done.returncode == 137, done.stderr
    assert int(done.stdout.split()[1]) <= 128 << 10, done.stdout
    assert not _vm_processes(podman_vm.base)


def test_podman_detached_vm_exec_pause_stop(podman_vm: PodmanVm) -> None:
    script = "trap 'echo got term; exit 0' TERM; while true; do sleep 0.1; done"
    container_id = podman_vm("--runtime", "minibox-vm", "run", "-d", "--cpus", "0.5", IMAGE, "sh", "-c",
                             script).stdout.strip()
    try:
        pid = int(podman_vm("inspect", "-f", "{{.State.Pid}}", container_id).stdout)
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{parent}/comm") as f:
            assert f.read().strip() == "conmon", "conmon reaps the VM supervisor"
        # the VM's host processes are in the cgroup podman asked for, under the CPU quota it set
        cgroup = f"/sys/fs/cgroup/cpu/libpod_parent/libpod-{container_id}"
        with open(f"{cgroup}/cgroup.procs") as f:
            assert str(pid) in f.read().split()
        with open(f"{cgroup}/cpu.cfs_quota_us") as f, open(f"{cgroup}/cpu.cfs_period_us") as g:
            assert int(f.read()) * 2 == int(g.read())
        stats = json.loads(podman_vm("stats", "--no-stream", "--format", "json", container_id).stdout)[0]
        used, unit = re.fullmatch(r"([\d.]+)([kMG]?B)", stats["mem_usage"].split(" / ")[0]).groups()  # type: ignore[union-attr]
        assert float(used) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit] > 64e6, "podman stats sees QEMU's memory"
        done = podman_vm("exec", container_id, "sh", "-c", "echo in $(hostname); exit 5", check=False)
        assert done.returncode == 5 and done.stdout == f"in {container_id[:12]}\n", done.stderr
        done = podman_vm("exec", "-i", container_id, "cat", input="exec stdin\n")
        assert done.stdout == "exec stdin\n"
        tty = podman_vm("exec", "-t", container_id, "tty", stdin=subprocess.DEVNULL)
        assert tty.stdout.strip().startswith("/dev/pts/")
        # -i -t: conmon writes the input into the pty master it received; the guest command reads it
        done = podman_vm("exec", "-i", "-t", container_id, "sh", "-c", "read line; echo got $line; exit 6",
                         input="typed\n", check=False)
        assert done.returncode == 6, done.stderr
        assert done.stdout.replace("\r", "").splitlines()[-1] == "got typed", done.stdout
        podman_vm("pause", container_id)
        assert podman_vm("inspect", "-f", "{{.State.Status}}", container_id).stdout.strip() == "paused"
        podman_vm("unpause", container_id)
        podman_vm("stop", "-t", "20", container_id)
        assert podman_vm("inspect", "-f", "{{.State.ExitCode}}", container_id).stdout.strip() == "0"
        assert "got term" in podman_vm("logs", container_id).stdout
    finally:
        podman_vm("rm", "-f", container_id, check=False)
    assert not podman_vm.leftovers(container_id)
    assert not _vm_processes(podman_vm.base)


def test_podman_run_with_a_terminal_in_a_vm(podman_vm: PodmanVm) -> None:
    """``run -i -t``: the host pty relayed to a pty in the guest, input included (echoed by the guest's tty)."""
    done = podman_vm("--runtime", "minibox-vm", "run", "--rm", "-i", "-t", IMAGE, "sh", "-c",
                     "tty; read line; echo got $line; exit 4", input="hello\n", check=False)
    assert done.returncode == 4, done.stderr
    lines = done.stdout.replace("\r", "").splitlines()
    # the guest's tty echoes the input as it arrives, maybe before `tty` prints
    assert any(line.startswith("/dev/pts/") for line in lines) and lines[-1] == "got hello", done.stdout


@pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                    reason="containerd is not installed (make setup installs it)")
def test_ctr_run_in_a_vm(ctr: Ctr) -> None:  # noqa: F811 (the fixture imported above)
    """containerd's runc shim with --runc-binary minibox-oci-vm: the exit code and output of a VM."""
    wrapper = ctr.base / "minibox-oci-vm"
    wrapper.write_text(wrapper_script())
    wrapper.chmod(0o755)
    done = ctr("run", "--rm", "--runc-binary", str(wrapper), CTR_IMAGE, "mbx-ctr-vm", "sh", "-c",
               "echo hi from $(uname -r); exit 3", check=False)
    assert done.returncode == 3, done.stderr
    words = done.stdout.split()
    assert words[:2] == ["hi", "from"] and words[2] != os.uname().release, "the guest's kernel ran it"
    assert not _vm_processes(ctr.base)


@pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                    reason="containerd is not installed (make setup installs it)")
def test_ctr_detached_vm_exec_pause_kill(ctr: Ctr) -> None:  # noqa: F811 (the fixture imported above)
    wrapper = ctr.base / "minibox-oci-vm"
    wrapper.write_text(wrapper_script())
    wrapper.chmod(0o755)
    name = "mbx-ctr-vm-detached"
    ctr("run", "-d", "--runc-binary", str(wrapper), CTR_IMAGE, name, "sh", "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    try:
        done = ctr("task", "exec", "--exec-id", "e1", name, "sh", "-c", "exit 5", check=False,
                   stdin=subprocess.DEVNULL)
        assert done.returncode == 5, done.stderr
        done = ctr("task", "exec", "--exec-id", "e2", name, "cat", input="streamed\n")
        assert done.stdout == "streamed\n"
        ctr("task", "pause", name)
        assert "PAUSED" in ctr("task", "ls").stdout
        ctr("task", "resume", name)
        pids = ctr("task", "ps", name).stdout.strip().splitlines()
        assert len(pids) >= 3, "the supervisor, QEMU and virtiofsd"
        # the shim reads the cgroup of the supervisor: the VM's host processes are charged there
        metrics = dict(line.split()[:2] for line in ctr("task", "metrics", name).stdout.splitlines()
                       if line.startswith(("memory.", "cpuacct.usage ")))
        assert int(metrics["memory.usage_in_bytes"]) > 64 << 20 and int(metrics["cpuacct.usage"]) > 0, metrics
        ctr("task", "kill", name)   # SIGTERM, to the guest command: the trap exits 0
        deadline = time.monotonic() + 30
        while "STOPPED" not in ctr("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ctr("task", "delete", name)
    finally:
        ctr("task", "delete", "-f", name, check=False)
        ctr("container", "rm", name, check=False)
    assert not _vm_processes(ctr.base)
