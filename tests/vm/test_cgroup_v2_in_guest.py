"""The real cgroup v2 backend, tested inside a guest whose kernel mounts cgroup2 only.

The project's hosts are hybrid (cgroup v1 controllers, a cgroup2 mount with
only hugetlb), so the v2 backend's limit files, ``memory.events``,
``subtree_control`` and ``CLONE_INTO_CGROUP`` cannot be exercised on them.
A minibox VM can: its guest kernel (Debian 6.1 cloud) is ours, and its init
(the guest agent) mounts no cgroup hierarchy at all.  This test boots one
whose root is a small directory of mount points, bind-mounts the host's
``/usr``, ``/etc``, Python and this repository into it read-only (virtiofs),
and runs ``pytest tests/vm/guest_v2/v2_real.py`` there after mounting
cgroup2 at /sys/fs/cgroup and enabling its controllers in the root cgroup
(the job systemd does on a real v2 host).  It asserts on pytest's own summary
line that every inner test ran and passed: a skip would be a failure here.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from minibox import Limits, Mount, Spec
from minibox.vm import VirtualMachine

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd needs root"),
]

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "guest_v2" / "v2_real.py"


def _inner_test_count() -> int:
    tree = ast.parse(INNER.read_text())
    return sum(1 for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"))


def _host_python_mounts() -> list[Mount]:
    """Read-only bind mounts that let the guest run this very interpreter and venv."""
    wanted = [Path("/usr"), Path("/etc"), REPO]
    for prefix in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))):
        path = Path(prefix).resolve()
        if not any(path == w or w in path.parents for w in wanted):
            wanted.append(path)
    return [Mount.bind(str(p), str(p), readonly=True) for p in wanted]


def _guest_root(tmp_path: Path) -> Path:
    """A rootfs of mount points: merged-/usr symlinks, and /tmp, /proc, /sys, /dev."""
    root = tmp_path / "guest-root"
    root.mkdir()
    root.chmod(0o755)
    for d in ("usr", "etc", "tmp", "proc", "sys", "dev", "root"):
        (root / d).mkdir()
    for link in ("bin", "sbin", "lib", "lib64"):
        if Path("/", link).is_symlink():  # Debian 12: /bin -> usr/bin and so on
            (root / link).symlink_to(os.readlink(Path("/", link)))
        else:
            pytest.skip(f"/{link} is not a merged-/usr symlink on this host; bind it explicitly")
    return root


def test_the_v2_backend_passes_its_real_tests_in_a_cgroup2_only_guest(tmp_path: Path, no_leaks: None) -> None:
    inner = INNER.relative_to(REPO)
    script = " && ".join([
        # the agent mounts cgroup2 itself when the Spec has limits (the guest's own cgroup)
        "{ grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup; }",
        # and put the command in its cgroup: back to the root, where the inner tests expect
        # to start (a cgroup with members cannot hand controllers down)
        "echo $$ > /sys/fs/cgroup/cgroup.procs",
        # the guest's administrator hands the controllers down, as systemd does
        "echo '+cpuset +cpu +memory +pids' > /sys/fs/cgroup/cgroup.subtree_control",
        f"cd {shlex.quote(str(REPO))}",
        f"exec {shlex.quote(sys.executable)} -m pytest -p no:cacheprovider -v {shlex.quote(str(inner))}",
    ])
    spec = Spec(
        argv=["/bin/sh", "-c", script],
        rootfs=str(_guest_root(tmp_path)),
        env={
            "PATH": f"{os.path.dirname(sys.executable)}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",  # the repository is mounted read-only
            "MINIBOX_STATE_DIR": "/tmp/minibox-state",  # the guest builds its own busybox rootfs there
            "MINIBOX_RUNTIME_DIR": "/tmp/minibox-run",
        },
        limits=Limits(memory="512M"),  # pytest, a 100 MiB allocation to OOM-kill, and the guest kernel
        # the guest's administrator: it mounts cgroup2 and clones into cgroups (clone3), which the
        # default capabilities and seccomp profile refuse -- in a VM as in a container
        cap_add=["ALL"], seccomp="unconfined",
        # tmpfs first: the repository itself may live under /tmp (CI clones do)
        mounts=[Mount.tmpfs("/tmp"), *_host_python_mounts()],
        timeout=900,
    )
    with VirtualMachine(spec) as vm:
        result = vm.wait()
        release = vm.kernel_release
    output = result.stdout.decode(errors="replace")
    report = output + result.stderr.decode(errors="replace")
    assert release != os.uname().release  # it really ran under the guest kernel
    assert result.reason == "exited" and result.exit_code == 0, report[-6000:]
    summary = [line for line in output.splitlines() if re.match(r"=+ .* in [\d.]+s", line)]
    assert summary, report[-6000:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary[-1])}
    assert counts == {"passed": _inner_test_count()}, summary[-1]
