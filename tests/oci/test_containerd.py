"""containerd drives minibox-oci through its runc shim (io.containerd.runc.v2 with --runc-binary).

The test starts its own containerd: private root, state and sockets under a
temporary directory, the CRI plugin disabled.  The image is an OCI archive
written here from the busybox rootfs (one uncompressed layer) and loaded
with ``ctr image import``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root

from .conftest import MINIBOX_OCI

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(shutil.which("containerd") is None or shutil.which("ctr") is None,
                                 reason="containerd is not installed (make setup installs it)")]

IMAGE = "localhost/minibox-busybox:latest"


def _blob(archive: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def oci_archive(rootfs: Path, target: Path, name: str = IMAGE, cmd: tuple[str, ...] = ("sh",)) -> None:
    """An OCI image layout (image-spec image-layout.md) in a tar: one layer, config, manifest, index."""
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer:
        layer.add(rootfs, arcname=".")
    layer_data = layer_buffer.getvalue()
    with tarfile.open(target, "w") as archive:
        layer_digest = _blob(archive, layer_data)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": list(cmd)},
                             "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _blob(archive, config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": len(layer_data)}]}).encode()
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _blob(archive, manifest),
            "size": len(manifest), "annotations": {"io.containerd.image.name": name,
                                                   "org.opencontainers.image.ref.name": "latest"}}]}).encode()
        for name, data in (("index.json", index), ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


class Ctr:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.state = base / "oci-state"
        wrapper = base / "minibox-oci"
        wrapper.write_text(f'#!/bin/sh\nexec {MINIBOX_OCI} "$@"\n')
        wrapper.chmod(0o755)
        self.runtime = str(wrapper)

    def __call__(self, *args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "minibox", *args],
                              capture_output=True, text=True, timeout=120, check=False,
                              **kwargs)  # type: ignore[call-overload]
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory, oci_rootfs: Path) -> Iterator[Ctr]:
    base = tmp_path_factory.mktemp("ctd")
    runner = Ctr(base)
    (base / "config.toml").write_text(f"""\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{runner.socket}"
[ttrpc]
  address = "{runner.socket}.ttrpc"
[debug]
  address = "{base}/debug.sock"
""")
    log = open(base / "containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while runner("version", check=False).returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, (base / "containerd.log").read_text()
            time.sleep(0.2)
        oci_archive(oci_rootfs, base / "image.tar")
        runner("image", "import", str(base / "image.tar"))
        yield runner
    finally:
        for line in runner("container", "ls", "-q", check=False).stdout.split():
            runner("task", "kill", "-s", "KILL", line, check=False)
            runner("task", "delete", "-f", line, check=False)
            runner("container", "rm", line, check=False)
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f if str(base) in line]
        for mountpoint in reversed(mounted):  # snapshot mounts containerd left (ours: under base)
            subprocess.run(["umount", mountpoint], check=False)
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if str(base) in line], "containerd left mounts behind"
        shutil.rmtree(base, ignore_errors=True)


def _leftovers(container_id: str) -> list[str]:
    import glob

    # ctr asks for cgroupsPath /NAMESPACE/ID (here /minibox/ID); without one, minibox's own <id>.<random>
    return (glob.glob(f"/sys/fs/cgroup/*/minibox/{container_id}")
            + glob.glob(f"/sys/fs/cgroup/*/**/minibox/{container_id}.*", recursive=True))


def test_ctr_run_exit_code_and_output(ctr: Ctr) -> None:
    done = ctr("run", "--rm", "--runc-binary", ctr.runtime, IMAGE, "mbx-ctr-run", "sh", "-c",
               "echo hi from $$; exit 3", check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hi from 1\n", "the command is pid 1 of its own pid namespace"
    assert not _leftovers("mbx-ctr-run")


def test_ctr_detached_exec_pause_kill(ctr: Ctr) -> None:
    name = "mbx-ctr-detached"
    ctr("run", "-d", "--runc-binary", ctr.runtime, IMAGE, name, "sh", "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done")
    try:
        done = ctr("task", "exec", "--exec-id", "e1", name, "sh", "-c", "exit 5", check=False)
        assert done.returncode == 5, done.stderr
        pid = int(ctr("task", "ls").stdout.split(name, 1)[1].split()[0])
        with open(f"/proc/{pid}/cgroup") as f:
            where = dict(line.split(":", 2)[1:] for line in f.read().splitlines())
        assert where["memory"] == where["pids"] == f"/minibox/{name}", "the cgroupsPath ctr asks for"
        ctr("task", "pause", name)
        assert "PAUSED" in ctr("task", "ls").stdout
        ctr("task", "resume", name)
        pids = ctr("task", "ps", name).stdout
        assert len(pids.strip().splitlines()) >= 2
        ctr("task", "kill", name)   # SIGTERM: the trap exits 0
        deadline = time.monotonic() + 20
        while "STOPPED" not in ctr("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ctr("task", "delete", name)
    finally:
        ctr("task", "delete", "-f", name, check=False)
        ctr("container", "rm", name, check=False)
    assert not _leftovers(name)
