"""Spec, Limits and Mount validation: every bad field names itself, nothing is created."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from minibox import Limits, Mount, Result, Spec, SpecError
from minibox.spec import IdMap, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("64M", 64 << 20), ("64m", 64 << 20), ("1g", 1 << 30), ("512K", 512 << 10),
    ("512KiB", 512 << 10), ("1048576", 1 << 20), (4096 * 1024, 4 << 20), ("1.5G", 3 << 29),
])
def test_sizes_parse_like_docker(text: str | int, expected: int) -> None:
    assert parse_size(text, "limits.memory") == expected


@pytest.mark.parametrize("text", ["lots", "-5M", "0", "10X", "", True])
def test_bad_sizes_name_the_field(text: object) -> None:
    with pytest.raises(SpecError) as info:
        Limits(memory=text)  # type: ignore[arg-type]
    assert info.value.field == "limits.memory"


def test_limits_are_normalized() -> None:
    limits = Limits(memory="64M", memory_swap="128M", cpus=1, pids=10, cpuset="0")
    assert limits.memory == 64 << 20 and limits.memory_swap == 128 << 20 and limits.cpus == 1.0
    assert not limits.is_empty() and Limits().is_empty()


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(memory_swap="64M"), "limits.memory_swap"),
    (dict(memory="64M", memory_swap="32M"), "limits.memory_swap"),
    (dict(cpus=0), "limits.cpus"),
    (dict(cpus=1000), "limits.cpus"),
    (dict(cpus="half"), "limits.cpus"),
    (dict(cpu_weight=0), "limits.cpu_weight"),
    (dict(pids=0), "limits.pids"),
    (dict(cpuset="0-"), "limits.cpuset"),
    (dict(cpuset="999"), "limits.cpuset"),
    (dict(memory="1M"), "limits.memory"),
])
def test_bad_limits(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        Limits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_spec_is_frozen_and_defaults_are_sane() -> None:
    spec = Spec(argv=["true"])
    assert spec.argv == ("true",) and spec.network == "none" and spec.user == (0, 0)
    assert spec.effective_namespaces == ("pid", "mnt", "uts", "ipc", "net", "cgroup")
    assert Spec(argv=["true"], network="host").effective_namespaces == ("pid", "mnt", "uts", "ipc", "cgroup")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hostname = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(argv="echo hi"), "argv"),
    (dict(argv=[]), "argv"),
    (dict(argv=[""]), "argv[0]"),
    (dict(argv=["a", 3]), "argv[1]"),
    (dict(argv=["a\x00b"]), "argv[0]"),
    (dict(rootfs="relative/dir"), "rootfs"),
    (dict(rootfs="/no/such/dir"), "rootfs"),
    (dict(env={"A": 1}), "env['A']"),
    (dict(env={"A=B": "x"}), "env"),
    (dict(cwd="tmp"), "cwd"),
    (dict(hostname="-bad"), "hostname"),
    (dict(hostname="x" * 65), "hostname"),
    (dict(user=(0,)), "user"),
    (dict(user=("0", "0")), "user"),
    (dict(user=(2**32, 0)), "user"),
    (dict(network="wifi"), "network"),
    (dict(mounts=[Mount.tmpfs("relative")]), "mounts[0].target"),
    (dict(mounts=[Mount.tmpfs("/")]), "mounts[0].target"),
    (dict(mounts=[Mount.bind("/no/such/source", "/x")]), "mounts[0].source"),
    (dict(mounts=["/tmp:/tmp"]), "mounts[0]"),
    (dict(timeout=0), "timeout"),
    (dict(timeout="5"), "timeout"),
    (dict(namespaces=["pid", "bogus"]), "namespaces"),
    (dict(namespaces=["pid"]), "namespaces"),
    (dict(uid_map=[IdMap(0, 1000, 1)]), "uid_map"),
    (dict(seccomp="strict"), "seccomp"),
    (dict(ports=[(80, 80)]), "ports"),
    (dict(ports=[(0, 80)], network="bridge"), "ports[0]"),
    (dict(kernel="/no/kernel"), "kernel"),
])
def test_bad_spec_fields(kwargs: dict[str, object], field: str) -> None:
    kwargs.setdefault("argv", ["true"])
    with pytest.raises(SpecError) as info:
        Spec(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_rootfs_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(SpecError, match="not a directory"):
        Spec(argv=["true"], rootfs=str(f))


def test_mount_targets_are_normalized(tmp_path: Path) -> None:
    spec = Spec(argv=["true"], mounts=[Mount.bind(str(tmp_path), "//data/./x/"), Mount.tmpfs("/t", size="1M")])
    assert spec.mounts[0].target == "/data/x"
    assert spec.mounts[1].size == 1 << 20


def test_result_shell_status_and_description() -> None:
    assert Result(exit_code=3, signal=None, reason="exited").shell_status == 3
    assert Result(exit_code=None, signal=9, reason="signaled").shell_status == 137
    assert Result(exit_code=None, signal=9, reason="timeout").shell_status == 124
    assert "OOM" in Result(exit_code=None, signal=9, reason="oom").describe()
    assert Result(exit_code=None, signal=15, reason="signaled").describe() == "killed by SIGTERM"


# -- values the kernel would refuse (or silently mangle) are refused up front ----------

@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(memory="1" + "0" * 400), "limits.memory"),      # was an untyped OverflowError
    (dict(memory=2**64), "limits.memory"),                 # v1 memory.limit_in_bytes wraps round to 0
    (dict(memory="9" * 5000), "limits.memory"),            # more digits than int() converts
    (dict(memory="64M", memory_swap="1" + "0" * 30), "limits.memory_swap"),
    (dict(pids=10**12), "limits.pids"),                    # pids.max EINVAL, after the cgroup existed
    (dict(pids=4 * 1024 * 1024 + 1), "limits.pids"),
    (dict(cpuset="1-0"), "limits.cpuset"),                 # cpuset.cpus EINVAL, same
    (dict(cpuset="9" * 5000), "limits.cpuset"),
    (dict(cpus=10**5000), "limits.cpus"),                  # no float holds it
    (dict(cpus=float("nan")), "limits.cpus"),
    (dict(cpu_weight=10**5000), "limits.cpu_weight"),
])
def test_limits_the_kernel_refuses_are_spec_errors(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        Limits(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert len(str(info.value)) < 200  # the message quotes the value, cut short


def test_largest_values_the_kernel_accepts_pass() -> None:
    assert Limits(memory=2**63 - 1).memory == 2**63 - 1
    assert Limits(pids=4 * 1024 * 1024).pids == 4 * 1024 * 1024
    assert Limits(memory="1.25G").memory == 5 << 28  # exact, no float rounding


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(timeout=10**400), "timeout"),
    (dict(timeout=float("nan")), "timeout"),
    (dict(timeout=30 * 86400), "timeout"),       # longer than poll(2) can wait
    (dict(namespaces=5), "namespaces"),
    (dict(ports=5), "ports"),
    (dict(ports=[(True, 80)]), "ports[0]"),
    (dict(cap_add=5), "cap_add"),
    (dict(network="bridge", ip=5), "ip"),
    (dict(network="bridge", ip="10.1.2"), "ip"),
    (dict(user=(10**5000, 0)), "user"),
    (dict(rootfs_overlay=1), "rootfs_overlay"),
    (dict(rootfs_overlay_size="0"), "rootfs_overlay_size"),
    (dict(rootfs="/", rootfs_overlay_size="64M"), "rootfs_overlay_size"),  # a bound without the layer
    (dict(namespaces=["user", "mnt"], uid_map=[IdMap(0, 2**32 - 1, 2)]), "uid_map"),
    (dict(namespaces=["user", "mnt"], uid_map=5), "uid_map"),
    (dict(output_limit=0), "output_limit"),
    (dict(output_limit="-1M"), "output_limit"),
    (dict(output_limit="lots"), "output_limit"),
    (dict(output_limit=True), "output_limit"),
    (dict(output_limit=1.5), "output_limit"),
])
def test_spec_shapes_and_ranges(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec(argv=["true"], **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_output_limit_defaults_to_a_bound_and_parses_sizes() -> None:
    assert Spec(argv=["true"]).output_limit == 16 << 20
    assert Spec(argv=["true"], output_limit="64M").output_limit == 64 << 20
    assert Spec(argv=["true"], output_limit=1).output_limit == 1
    assert Spec(argv=["true"], output_limit=None).output_limit is None  # explicitly unbounded


def test_rootfs_overlay_fields() -> None:
    spec = Spec(argv=["true"], rootfs="/", rootfs_overlay=True, rootfs_overlay_size="64M")
    assert spec.rootfs_overlay and spec.rootfs_overlay_size == 64 << 20
    # the default image always has the layer; a size may bound it
    assert Spec(argv=["true"], rootfs_overlay_size="1M").rootfs_overlay_size == 1 << 20


def test_a_bind_source_is_taken_only_as_it_really_is(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert Mount.bind(f"{real}/./", "/x").validated(0).source == str(real)  # normalized, no symlink
    with pytest.raises(SpecError) as info:
        Mount.bind(str(tmp_path / "link"), "/x").validated(3)
    assert info.value.field == "mounts[3].source" and repr(str(real)) in info.value.message
