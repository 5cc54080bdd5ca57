"""config.json as the Spec of a microVM (oci/vm_runtime.py: vm_spec): what is kept, what is refused.

Pure translation: no root, no VM.  The bundle is what podman writes for
``podman run --memory 256m --cpus 1.5 -v SRC:/data:ro -t IMAGE sh``, cut
down to the fields that matter here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from minibox.oci import config as config_mod
from minibox.oci.state import OciError
from minibox.oci.vm_runtime import HOST_MEMORY_HEADROOM, host_limits, vm_spec


def _raw(data: Path, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"terminal": True, "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                    "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "FOO=a=b"], "cwd": "/tmp",
                    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["size=65536k"]},
            {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "resources": {"memory": {"limit": 256 << 20, "swap": 512 << 20},
                          "cpu": {"quota": 150000, "period": 100000, "shares": 1024}, "pids": {"limit": 64}},
            "sysctl": {"net.ipv4.ping_group_range": "0 0"},
        },
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section][name] = value
        else:
            raw[section] = value
    return raw


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def test_a_podman_like_bundle_becomes_the_spec_the_python_api_takes(bundle: Path) -> None:
    cfg = config_mod.parse(_raw(bundle / "data"), str(bundle))
    warnings: list[str] = []
    spec = vm_spec(cfg, warnings)
    assert list(spec.argv) == ["sh", "-c", "echo hi"]
    assert spec.rootfs == str((bundle / "rootfs").resolve()) and spec.readonly_rootfs
    assert dict(spec.env) == {"PATH": "/bin", "FOO": "a=b"}
    assert (spec.cwd, spec.user, spec.hostname, spec.tty) == ("/tmp", (1000, 1000), "box", True)
    assert spec.network == "none" and spec.no_new_privileges
    # the guest kernel's own file systems are left to the agent; tmpfs and binds are kept
    assert [(m.kind, m.target, m.readonly) for m in spec.mounts] == [("tmpfs", "/run", False),
                                                                     ("bind", "/data", True)]
    assert spec.mounts[0].size is not None
    # memory is the guest's RAM, the CPU quota its vCPUs (rounded up), pids its cgroup's limit
    assert (spec.limits.memory_bytes, spec.limits.cpus, spec.limits.pids) == (256 << 20, 1.5, 64)
    from minibox.policy.capabilities import capability_set

    assert capability_set(spec) == {"CAP_CHOWN", "CAP_KILL"}
    assert dict(spec.rlimits) == {"RLIMIT_NOFILE": (1024, 1024)}
    joined = " ".join(warnings)
    for field in ("memory.swap", "linux.sysctl", "additionalGids"):
        assert field in joined, f"{field} is not applied, and the log says so"
    # the CPU quota and shares limit QEMU's threads in the VM's host cgroup (host_limits), so no warning;
    # the memory limit there is the guest's RAM plus the headroom for QEMU itself
    assert "cpu.shares" not in joined
    host = host_limits(cfg, spec)
    assert (host.cpus, host.memory_bytes) == (1.5, (256 << 20) + HOST_MEMORY_HEADROOM)
    assert host.cpu_weight is not None and host.pids is None


def test_pinned_cpus_pin_the_vms_host_threads(bundle: Path) -> None:
    cfg = config_mod.parse(_raw(bundle / "data", linux__resources={"cpu": {"cpus": "0"}}), str(bundle))
    spec = vm_spec(cfg, [])
    assert host_limits(cfg, spec).cpuset == "0"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"linux__uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
      "linux__gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
      "linux__namespaces": [{"type": "mount"}, {"type": "user"}]}, "uidMappings"),
    ({"linux__devices": [{"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232}]}, "/dev/kvm"),
    ({"mounts": [{"destination": "/x", "type": "overlay", "source": "overlay"}]}, "overlay"),
    ({"linux__resources": {"memory": {"limit": 64 << 20}}}, "at least 96M"),
])
def test_what_a_vm_cannot_honour_is_refused_naming_the_field(bundle: Path, changes: dict[str, Any],
                                                            expected: str) -> None:
    cfg = config_mod.parse(_raw(bundle / "data", **changes), str(bundle))
    with pytest.raises(OciError, match=expected.replace(".", r"\.")):
        vm_spec(cfg, [])
