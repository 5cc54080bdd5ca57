"""linux.namespaces joined by path: pid, user and mount, as a pod's second container joins its sandbox.

A sandbox container holds its namespaces (it runs ``sleep``); a second
container names them by /proc/PID/ns/* and must end up inside them: the
same namespace inode (namespaces(7): two processes share a namespace
exactly when those inodes are equal), and it sees the sandbox's processes,
user mapping and files.  The pid, user and mount namespaces are joined
before the clone by an intermediate process (csrc/spawn.c's join_and_fork);
net, ipc and uts joins are covered by tests/oci/test_podman.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_root

from .conftest import Oci, cgroup_dirs, default_config

pytestmark = [needs_root, pytest.mark.root]

ID_MAP = [{"containerID": 0, "hostID": 200000, "size": 65536}]


@pytest.fixture(scope="module")
def open_rootfs() -> Iterator[Path]:
    """The busybox rootfs in a directory the sandbox's mapped root (uid 200000) may walk through.

    (pytest's own temporary directories are mode 0700.)
    """
    from minibox.images.busybox import build_busybox_rootfs

    top = Path(tempfile.mkdtemp(prefix="minibox-oci-ns-"))
    try:
        top.chmod(0o755)
        yield build_busybox_rootfs(top / "rootfs")
    finally:
        shutil.rmtree(top)


def _bundle(oci: Oci, name: str, config: dict[str, Any], rootfs: Path) -> str:
    bundle = oci.bundle.parent / name
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(rootfs)
    (bundle / "config.json").write_text(json.dumps(config))
    return str(bundle)


def _run(oci: Oci, name: str, config: dict[str, Any], rootfs: Path, check: bool = True) -> Any:
    bundle = _bundle(oci, name, config, rootfs)
    oci.ids.append(name)
    return oci("run", "--bundle", bundle, name, check=check)


@pytest.fixture
def sandbox(oci: Oci, open_rootfs: Path) -> Iterator[int]:
    """A running container in new pid, user (mapped to 200000), mount, net, ipc and uts namespaces."""
    config = default_config(["sh", "-c", "echo from-the-sandbox > /tmp/marker; exec sleep 60"])
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = config["linux"]["gidMappings"] = ID_MAP
    oci.ids.append("sandbox")
    oci("create", "--bundle", _bundle(oci, "sandbox-bundle", config, open_rootfs), "sandbox")
    pid = oci.state("sandbox")["pid"]
    oci("start", "sandbox")
    for _ in range(200):   # the marker is written once the command runs
        if os.path.exists(f"/proc/{pid}/root/tmp/marker"):
            break
        os.sched_yield()
    yield pid
    oci("delete", "--force", "sandbox")
    oci.reap(pid)


def _inode(pid: int | str, name: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{name}")


def test_joins_the_pid_and_user_namespace_by_path(oci: Oci, sandbox: int, open_rootfs: Path) -> None:
    config = default_config(["sh", "-c", "readlink /proc/self/ns/pid; readlink /proc/self/ns/user; id -u; "
                                         "cat /proc/self/uid_map; ps -o pid,args"])
    config["linux"]["namespaces"] = [{"type": "pid", "path": f"/proc/{sandbox}/ns/pid"},
                                     {"type": "user", "path": f"/proc/{sandbox}/ns/user"},
                                     *({"type": t} for t in ("network", "ipc", "uts", "mount"))]
    out = _run(oci, "joiner", config, open_rootfs).stdout.split("\n")
    assert out[0:2] == [_inode(sandbox, "pid"), _inode(sandbox, "user")]
    assert out[2] == "0", "root of the sandbox's user namespace"
    assert out[3].split() == ["0", "200000", "65536"]
    assert any(line.split()[:2] == ["1", "sleep"] for line in out[4:] if line.strip()), \
        f"the sandbox's command is pid 1 of the joined pid namespace: {out}"
    assert _inode("self", "user") != _inode(sandbox, "user")
    assert not (oci.root / "joiner").exists() and not cgroup_dirs("joiner")


def test_joins_the_mount_namespace_by_path_without_touching_it(oci: Oci, sandbox: int, open_rootfs: Path) -> None:
    mounts_before = Path(f"/proc/{sandbox}/mountinfo").read_text()
    config = default_config(["sh", "-c", "readlink /proc/self/ns/mnt; cat /tmp/marker"])
    config["root"]["readonly"] = False
    config["mounts"] = []
    del config["linux"]["maskedPaths"], config["linux"]["readonlyPaths"], config["hostname"]
    config["linux"]["namespaces"] = [{"type": "mount", "path": f"/proc/{sandbox}/ns/mnt"},
                                     {"type": "pid", "path": f"/proc/{sandbox}/ns/pid"}]
    out = _run(oci, "mnt-joiner", config, open_rootfs).stdout.split("\n")
    assert out[0] == _inode(sandbox, "mnt")
    assert out[1] == "from-the-sandbox", "the sandbox's own /tmp"
    assert Path(f"/proc/{sandbox}/mountinfo").read_text() == mounts_before, "no mount added to the sandbox"


def test_joining_refuses_what_the_joined_namespace_already_decides(oci: Oci, sandbox: int, open_rootfs: Path) -> None:
    config = default_config(["true"])
    config["linux"]["namespaces"] = [{"type": "user", "path": f"/proc/{sandbox}/ns/user"},
                                     *({"type": t} for t in ("pid", "mount"))]
    config["linux"]["uidMappings"] = ID_MAP
    refused = _run(oci, "mapped", config, open_rootfs, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "linux.uidMappings" in refused.stderr and "linux.namespaces[0].path" in refused.stderr

    config = default_config(["true"])   # with its mounts, masked paths, read-only root
    config["linux"]["namespaces"] = [{"type": "mount", "path": f"/proc/{sandbox}/ns/mnt"}]
    refused = _run(oci, "mounted", config, open_rootfs, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("minibox-oci: config.json: mounts")
    assert not (oci.root / "mapped").exists() and not (oci.root / "mounted").exists()
    assert not cgroup_dirs("mapped") and not cgroup_dirs("mounted")


def test_exec_still_works_once_the_holder_of_a_joined_namespace_has_gone(oci: Oci, open_rootfs: Path) -> None:
    # a pod's infra container may stop while the others run on in its network namespace
    oci.ids += ["holder", "member"]
    oci("create", "--bundle", _bundle(oci, "holder-bundle", default_config(["sleep", "60"]), open_rootfs), "holder")
    holder = oci.state("holder")["pid"]
    config = default_config(["sleep", "60"])
    config["linux"]["namespaces"] = [{"type": "network", "path": f"/proc/{holder}/ns/net"},
                                     *({"type": t} for t in ("pid", "ipc", "uts", "mount"))]
    oci("create", "--bundle", _bundle(oci, "member-bundle", config, open_rootfs), "member")
    member = oci.state("member")["pid"]
    oci("start", "member")
    net = _inode(holder, "net")
    oci("delete", "--force", "holder")
    oci.reap(holder)
    assert oci("exec", "member", "readlink", "/proc/self/ns/net").stdout.strip() == net
    oci("delete", "--force", "member")
    oci.reap(member)


def test_joins_a_bind_mounted_network_namespace(oci: Oci, open_rootfs: Path, tmp_path: Path) -> None:
    # what CNI hands the CRI for a pod (/var/run/netns/cni-...): a namespace
    # kept by a bind mount of its nsfs file, with no process inside
    import subprocess

    path = tmp_path / "netns"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    try:
        config = default_config(["readlink", "/proc/self/ns/net"])
        config["linux"]["namespaces"] = [{"type": "network", "path": str(path)},
                                         *({"type": t} for t in ("pid", "ipc", "uts", "mount"))]
        out = _run(oci, "netns-joiner", config, open_rootfs).stdout.strip()
        assert out == f"net:[{os.stat(path).st_ino}]"
    finally:
        subprocess.run(["umount", str(path)], check=True)
