"""Fixtures for minibox-oci: a bundle from the busybox rootfs, a private --root, a subreaper.

The engines (conmon, the containerd shim) are subreapers: a container's
init, orphaned when ``minibox-oci create`` returns, becomes their child and
they read its exit status.  The ``oci`` fixture makes the test process play
that part for the duration of one test (prctl(2) PR_SET_CHILD_SUBREAPER).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MINIBOX_OCI = str(Path(sys.executable).parent / "minibox-oci")


def default_config(args: list[str]) -> dict[str, Any]:
    """What ``minibox-oci spec`` writes, made non-interactive, running ``args``."""
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"], "cwd": "/",
                    "capabilities": {k: ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
                                     for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "ocitest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "resources": {"pids": {"limit": 64}},
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys"],
        },
    }


class Oci:
    """Runs minibox-oci with a private --root and remembers the containers it made."""

    def __init__(self, root: Path, bundle: Path) -> None:
        self.root = root
        self.bundle = bundle
        self.ids: list[str] = []

    def write_config(self, args: list[str], **changes: Any) -> dict[str, Any]:
        config = default_config(args)
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                config[section][name] = value
            else:
                config[section] = value
        (self.bundle / "config.json").write_text(json.dumps(config))
        return config

    def __call__(self, *args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a container's init inherits our stdout and stderr
        # (they are its stdio) and would hold a pipe open past our return.
        import tempfile

        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            inp = kwargs.pop("input", None)
            if inp is not None:
                stdin = tempfile.TemporaryFile("w+")
                stdin.write(inp)
                stdin.seek(0)
                kwargs["stdin"] = stdin
            prefix = kwargs.pop("prefix", [])
            run = subprocess.run([*prefix, MINIBOX_OCI, "--root", str(self.root), *args], text=True, check=False,
                                 timeout=60, stdout=out, stderr=err, **kwargs)
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(run.args, run.returncode, out.read(), err.read())
        if check and done.returncode != 0:
            raise AssertionError(f"minibox-oci {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def create(self, container_id: str, *extra: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.ids.append(container_id)
        return self("create", "--bundle", str(self.bundle), *extra, container_id, **kwargs)

    def state(self, container_id: str) -> dict[str, Any]:
        return json.loads(self("state", container_id).stdout)

    def reap(self, pid: int) -> int:
        """Wait for a container init we inherited; its exit code (128+N for signal N)."""
        import select

        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], 20)[0]:
                with open(f"/proc/{pid}/status") as f:
                    info = f.read()
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"container init {pid} did not exit within 20 s: {info}")
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def cgroup_dirs(container_id: str) -> list[str]:
    return [p for p in glob.glob(f"/sys/fs/cgroup/*/**/minibox/{container_id}.*", recursive=True)]


@pytest.fixture(scope="session")
def oci_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from minibox.images.busybox import build_busybox_rootfs

    return build_busybox_rootfs(tmp_path_factory.mktemp("oci-bundle") / "rootfs")


@pytest.fixture
def oci(tmp_path: Path, oci_rootfs: Path) -> Iterator[Oci]:
    import prctl

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(oci_rootfs)
    runner = Oci(tmp_path / "state", bundle)
    prctl.set_child_subreaper(True)
    try:
        yield runner
    finally:
        for container_id in runner.ids:
            if (runner.root / container_id).exists():
                pid = json.loads((runner.root / container_id / "state.json").read_text()).get("pid", 0)
                runner("delete", "--force", container_id, check=False)
                if pid:
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass
        prctl.set_child_subreaper(False)
        shutil.rmtree(runner.root, ignore_errors=True)
