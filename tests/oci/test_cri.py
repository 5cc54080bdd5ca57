"""containerd's CRI plugin runs pods with minibox-oci, selected by a RuntimeClass handler.

This is the path Kubernetes takes: the kubelet asks containerd's CRI service
(runtime.v1.RuntimeService, gRPC) for a pod sandbox with
``runtime_handler: minibox``, the name a RuntimeClass's ``handler`` gives;
containerd finds ``runtimes.minibox`` in its configuration and starts the runc
shim with ``BinaryName`` = minibox-oci.  The test plays the kubelet (no
kubelet is installed here): it starts its own containerd with the CRI plugin
on, configured with the TOML block that docs/oci.md shows -- read from the
document itself -- and makes the calls the kubelet makes for a one-container
pod (tests/oci/cri.py).  Offline, so: a host-network pod (no CNI plugin is
needed), and a sandbox ("pause") image imported from the busybox rootfs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root

from .conftest import MINIBOX_OCI
from .test_containerd import IMAGE, oci_archive

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install -e '.[test]' installs it)")

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                                 reason="containerd is not installed (make setup installs it)")]

PAUSE_IMAGE = "localhost/minibox-pause:latest"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "oci.md"
# the runc shim's default --root for the k8s.io namespace (containerd's process.RuncRoot)
SHIM_ROOT = "/run/containerd/runc/k8s.io"


def documented_runtime_block() -> str:
    """The ``runtimes.minibox`` TOML block of docs/oci.md, with BinaryName pointing at this minibox-oci."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    block = next(b for b in blocks if "containerd.runtimes.minibox]" in b)
    assert 'BinaryName = "/path/to/venv/bin/minibox-oci"' in block
    return block.replace("/path/to/venv/bin/minibox-oci", MINIBOX_OCI)


class Cri:
    def __init__(self, base: Path) -> None:
        from .cri import RuntimeService

        self.base = base
        self.socket = base / "containerd.sock"
        self.service = RuntimeService(str(self.socket))
        self.sandboxes: list[str] = []

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done


@pytest.fixture(scope="module")
def cri(tmp_path_factory: pytest.TempPathFactory, oci_rootfs: Path) -> Iterator[Cri]:
    base = tmp_path_factory.mktemp("cri")
    (base / "cni").mkdir()
    runner = Cri(base)
    # The CRI plugin on, with the documented handler next to the usual runc one.
    # restrict_oom_score_adj: the sandbox asks for oom_score_adj -998, and
    # lowering it needs CAP_SYS_RESOURCE, which root lacks on these hosts.
    (base / "config.toml").write_text(f"""\
version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{runner.socket}"
[ttrpc]
  address = "{runner.socket}.ttrpc"
[debug]
  address = "{base}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{base}/cni"
    conf_dir = "{base}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{documented_runtime_block()}""")
    log = open(base / "containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                runner.service.call("Version", [(1, "v1")], timeout=2)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline and daemon.poll() is None, (base / "containerd.log").read_text()
                time.sleep(0.2)
        oci_archive(oci_rootfs, base / "image.tar")
        oci_archive(oci_rootfs, base / "pause.tar", PAUSE_IMAGE, ("sleep", "86400"))
        for archive in ("image.tar", "pause.tar"):
            runner.ctr("image", "import", str(base / archive))
        yield runner
    finally:
        for sandbox in runner.sandboxes:   # the kubelet's clean-up: stop, then remove
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                try:
                    runner.service.call(method, [(1, sandbox)])
                except grpc.RpcError:
                    pass
        runner.service.close()
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
        _end_shims(runner.socket)
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f if str(base) in line]
        for mountpoint in reversed(mounted):
            subprocess.run(["umount", mountpoint], check=False)
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if str(base) in line], "containerd left mounts behind"
        shutil.rmtree(base, ignore_errors=True)


def _end_shims(socket: Path) -> None:
    """Shims outlive containerd by design; after a failed test, end those our containerd started."""
    import signal

    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"containerd-shim-runc-v2") and os.fsencode(str(socket)) in args:
            os.kill(int(entry), signal.SIGKILL)


def _minibox_state(container_id: str) -> dict[str, Any] | None:
    done = subprocess.run([MINIBOX_OCI, "--root", SHIM_ROOT, "state", container_id], capture_output=True, text=True,
                          check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_runtime_class_handler_runs_the_pod_with_minibox_oci(cri: Cri) -> None:
    from .cri import CONTAINER_EXITED, container_config, pod_config

    pod = pod_config("mbx-pod", "mbx-pod-uid")
    pod.append((3, str(cri.base / "pod-logs")))    # PodSandboxConfig.log_directory
    sandbox = cri.service.run_pod_sandbox(pod, "minibox")
    cri.sandboxes.append(sandbox)
    sandbox_state = _minibox_state(sandbox)
    assert sandbox_state is not None and sandbox_state["status"] == "running", "minibox-oci runs the sandbox"
    sandbox_pid = sandbox_state["pid"]
    assert "sleep" in Path(f"/proc/{sandbox_pid}/cmdline").read_text()

    command = ["sh", "-c", "echo hello from $$; readlink /proc/self/ns/pid; exit 3"]
    container = cri.service.create_container(sandbox, container_config("hello", IMAGE, command, "hello.log"), pod)
    cri.service.call("StartContainer", [(1, container)])
    deadline = time.monotonic() + 30
    while (status := cri.service.container_status(container)).get(3, [0])[0] != CONTAINER_EXITED:
        assert time.monotonic() < deadline, f"the container did not exit: {status}"
        time.sleep(0.1)
    assert status[7][0] == 3, "ContainerStatus.exit_code"
    # CRI's log format: "<time> stdout F <line>"
    lines = [line.split(" ", 3)[3] for line in (cri.base / "pod-logs" / "hello.log").read_text().splitlines()]
    # the pod's pid namespace (NamespaceOption.pid = POD) is the sandbox's, joined by path: sleep is its pid 1
    assert lines[0].startswith("hello from ") and lines[0] != "hello from 1"
    assert lines[1] == os.readlink(f"/proc/{sandbox_pid}/ns/pid")

    cri.service.call("RemoveContainer", [(1, container)])
    cri.service.call("StopPodSandbox", [(1, sandbox)])
    cri.service.call("RemovePodSandbox", [(1, sandbox)])
    cri.sandboxes.remove(sandbox)
    assert _minibox_state(sandbox) is None and _minibox_state(container) is None
    assert not os.path.exists(f"{SHIM_ROOT}/{sandbox}") and not os.path.exists(f"{SHIM_ROOT}/{container}")
    import glob

    assert not [p for i in (sandbox, container) for p in glob.glob(f"/sys/fs/cgroup/*/**/{i}*", recursive=True)]
