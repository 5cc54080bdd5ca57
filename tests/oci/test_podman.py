"""podman drives minibox-oci: the real engine, through conmon, as a user would run it.

Podman runs with private storage (vfs), run and tmp directories under a
temporary directory, the cgroupfs manager and no network (this host has
hybrid cgroups and no systemd), and an image imported from the busybox
rootfs.  The containers.conf is the one docs/oci.md shows, with the runtime
pointed at a two-line wrapper that adds a private ``--root`` for the test.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox.container.cgroups.files import rmdir_retrying
from tests.conftest import needs_root

from .conftest import MINIBOX_OCI

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(shutil.which("podman") is None or shutil.which("conmon") is None,
                                 reason="podman and conmon are not installed (make setup installs them)")]

IMAGE = "localhost/minibox-busybox:latest"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "oci-state"
        wrapper = base / "minibox-oci"
        wrapper.write_text(f'#!/bin/sh\nexec {MINIBOX_OCI} --root {self.state} "$@"\n')
        wrapper.chmod(0o755)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # podman asks root containers for 1048576 open files; a host whose
        # root lacks CAP_SYS_RESOURCE (this one) cannot grant more than its own
        (base / "containers.conf").write_text(f"""\
[containers]
netns = "none"
default_ulimits = ["nofile={hard}:{hard}", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "minibox"
runtime_supports_json = ["minibox"]

[engine.runtimes]
minibox = ["{wrapper}"]
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}

    def __call__(self, *args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        command = ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
                   "--tmpdir", str(self.base / "tmp"), "--storage-driver", "vfs", *args]
        # conmon writes an "oom" marker into its working directory: keep it in ours
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120,
                              check=False, cwd=self.base, **kwargs)  # type: ignore[call-overload]
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done  # type: ignore[no-any-return]

    def leftovers(self, container_id: str) -> list[str]:
        # the cgroup podman asks for (cgroupsPath /libpod_parent/libpod-ID), or one of minibox's own
        found = glob.glob(f"/sys/fs/cgroup/*/libpod_parent/**/libpod-{container_id}", recursive=True)
        found += glob.glob(f"/sys/fs/cgroup/*/**/minibox/{container_id}.*", recursive=True)
        if (self.state / container_id).exists():
            found.append(str(self.state / container_id))
        return found


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, oci_rootfs: Path) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman")
    runner = Podman(base)
    parents_before = set(glob.glob("/sys/fs/cgroup/*/libpod_parent"))
    tar = base / "busybox.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(oci_rootfs, arcname=".")
    runner("import", str(tar), IMAGE)
    try:
        yield runner
    finally:
        runner("rm", "--all", "--force", "--time", "0", check=False)
        # conmon's own cgroup (podman's cgroupfs layout) goes too, if we made it
        deadline = time.monotonic() + 5  # conmon may still be exiting after `rm` returns (EBUSY)
        for parent in set(glob.glob("/sys/fs/cgroup/*/libpod_parent")) - parents_before:
            for directory in (f"{parent}/conmon", parent):
                try:
                    rmdir_retrying(directory, deadline)
                except OSError:
                    pass
        with open("/proc/self/mountinfo") as f:
            mounted = [line for line in f if str(base) in line]
        assert not mounted, f"podman left mounts behind: {mounted}"
        shutil.rmtree(base, ignore_errors=True)


def test_run_passes_exit_code_env_and_stdin(podman: Podman) -> None:
    done = podman("run", "--rm", "-i", "-e", "FOO=bar", IMAGE, "sh", "-c", "cat; echo FOO=$FOO; exit 3",
                  input="piped in\n", check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "piped in\nFOO=bar\n"
    assert not list(podman.state.iterdir()) if podman.state.exists() else True


def test_missing_command_is_127(podman: Podman) -> None:
    done = podman("run", "--rm", IMAGE, "no-such-command", check=False)
    assert done.returncode == 127, done.stderr
    assert "not found" in done.stderr


def test_tty(podman: Podman) -> None:
    done = podman("run", "--rm", "-t", IMAGE, "sh", "-c", "tty; exit 4", stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 4, done.stderr
    assert done.stdout.strip() == "/dev/pts/0"


def test_detached_exec_pause_stop_and_rm(podman: Podman) -> None:
    script = "trap 'echo got term; exit 0' TERM; while true; do sleep 0.1; done"
    container_id = podman("run", "-d", "--name", "mbx-detached", IMAGE, "sh", "-c", script).stdout.strip()
    try:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", container_id).stdout)
        # no minibox process supervises it: its parent is conmon
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{parent}/comm") as f:
            assert f.read().strip() == "conmon"
        done = podman("exec", container_id, "sh", "-c", "echo in $(hostname); exit 5", check=False)
        assert done.returncode == 5 and done.stdout == f"in {container_id[:12]}\n", done.stderr
        tty = podman("exec", "-t", container_id, "tty", stdin=subprocess.DEVNULL)
        assert tty.stdout.strip().startswith("/dev/pts/")
        top = podman("top", container_id, "pid", "args").stdout
        assert "sleep" in top or "while true" in top
        podman("pause", container_id)
        assert podman("inspect", "-f", "{{.State.Status}}", container_id).stdout.strip() == "paused"
        podman("unpause", container_id)
        podman("stop", "-t", "10", container_id)
        assert podman("inspect", "-f", "{{.State.ExitCode}}", container_id).stdout.strip() == "0"
        assert "got term" in podman("logs", container_id).stdout
    finally:
        podman("rm", "-f", container_id, check=False)
    assert not podman.leftovers(container_id)


def test_container_is_in_the_cgroup_podman_asked_for(podman: Podman) -> None:
    container_id = podman("run", "-d", "--memory", "32m", IMAGE, "sleep", "60").stdout.strip()
    try:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", container_id).stdout)
        state = subprocess.run([MINIBOX_OCI, "--root", str(podman.state), "state", container_id],
                               capture_output=True, text=True, check=True).stdout
        config = json.loads((Path(json.loads(state)["bundle"]) / "config.json").read_text())
        asked = config["linux"]["cgroupsPath"]
        assert asked == f"/libpod_parent/libpod-{container_id}"   # podman's cgroupfs layout
        with open(f"/proc/{pid}/cgroup") as f:
            where = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
        assert where["memory"] == asked and where["pids"] == asked
        with open(f"/sys/fs/cgroup/memory{asked}/memory.limit_in_bytes") as f:
            assert int(f.read()) == 32 << 20
    finally:
        podman("rm", "-f", "-t", "0", container_id, check=False)
    assert not glob.glob(f"/sys/fs/cgroup/*{asked}"), "removed at delete"
    assert not podman.leftovers(container_id)


def test_second_container_joins_the_network_namespace(podman: Podman) -> None:
    first = podman("run", "-d", IMAGE, "sleep", "60").stdout.strip()
    try:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", first).stdout)
        theirs = os.readlink(f"/proc/{pid}/ns/net")
        done = podman("run", "--rm", "--network", f"container:{first}", IMAGE, "readlink", "/proc/self/ns/net")
        assert done.stdout.strip() == theirs
        assert json.loads(podman("inspect", first).stdout)[0]["State"]["Running"]
    finally:
        podman("rm", "-f", "-t", "0", first, check=False)
    assert not podman.leftovers(first)


INFRA_IMAGE = "localhost/minibox-pause:latest"


def test_pod_containers_share_the_infra_containers_network_ipc_uts_and_pid(podman: Podman) -> None:
    # A pod as Kubernetes makes one: an infra ("pause") container holds the
    # namespaces, the others join them by path.  With no network for
    # podman's own pause image, the infra image is the busybox one whose
    # command sleeps (pid 1 has no default action for SIGTERM: rm -t 0).
    podman("import", "--change", 'CMD ["sleep", "86400"]', str(podman.base / "busybox.tar"), INFRA_IMAGE)
    # sharing pid too, as a Kubernetes pod with shareProcessNamespace: the
    # containers join the infra's pid namespace by path (before their clone)
    pod = podman("pod", "create", "--name", "mbx-pod", "--infra-image", INFRA_IMAGE,
                 "--share", "ipc,net,uts,pid").stdout.strip()
    containers: list[str] = []
    try:
        server = podman("run", "-d", "--pod", pod, IMAGE, "sh", "-c",
                        "echo pong | nc -l -p 7777 -w 10 >/dev/null").stdout.strip()
        infra = json.loads(podman("pod", "inspect", pod).stdout)["InfraContainerID"]
        containers = [infra, server]
        pids = [int(podman("inspect", "-f", "{{.State.Pid}}", c).stdout) for c in containers]
        assert "sleep" in open(f"/proc/{pids[0]}/cmdline").read()
        shared = [os.readlink(f"/proc/{pids[0]}/ns/{ns}") for ns in ("net", "ipc", "uts", "pid")]
        assert [os.readlink(f"/proc/{pids[1]}/ns/{ns}") for ns in ("net", "ipc", "uts", "pid")] == shared
        # (the server exits once it has answered)
        client = podman("run", "--rm", "--pod", pod, IMAGE, "sh", "-c",
                        "for ns in net ipc uts pid; do readlink /proc/self/ns/$ns; done; hostname; "
                        "ps -o pid,args | grep -q '^ *1 sleep 86400' && echo sees-infra; "
                        "nc -w 5 127.0.0.1 7777 </dev/null").stdout.split("\n")
        assert client[0:4] == shared, "the client joined the infra container's net, ipc, uts and pid"
        assert client[4] == "mbx-pod", "the pod's host name, from the shared uts namespace"
        assert client[5] == "sees-infra", "the infra's command is pid 1 of the shared pid namespace"
        assert client[6] == "pong", "the two talk over the pod's loopback"
        assert shared[0] != os.readlink("/proc/self/ns/net")
    finally:
        podman("pod", "rm", "-f", "-t", "0", pod, check=False)
    assert "mbx-pod" not in podman("pod", "ps").stdout and podman("ps", "-aq").stdout == ""
    assert not glob.glob(f"/sys/fs/cgroup/*/libpod_parent/{pod}"), "the pod's cgroup is gone"
    for container_id in containers:
        assert not podman.leftovers(container_id)


def test_user_cwd_bind_mount_and_oom(podman: Podman, tmp_path: Path) -> None:
    done = podman("run", "--rm", "--user", "1000:1000", "-w", "/tmp", IMAGE, "sh", "-c", "id -u; id -g; pwd")
    assert done.stdout == "1000\n1000\n/tmp\n"
    (tmp_path / "f").write_text("data\n")
    done = podman("run", "--rm", "-v", f"{tmp_path}:/data:ro", IMAGE, "sh", "-c", "cat /data/f; touch /data/g",
                  check=False)
    assert done.returncode == 1 and done.stdout == "data\n" and "Read-only file system" in done.stderr
    assert not (tmp_path / "g").exists()
    # tail buffers /dev/zero looking for a newline until the memory cgroup's OOM killer ends it
    done = podman("run", "--rm", "--memory", "16m", IMAGE, "tail", "/dev/zero", check=False)
    assert done.returncode == 137, done.stderr
