"""Fixtures of the contract suite: one sandbox factory over both isolations.

Every test here runs once with ``isolation="container"`` and once with
``isolation="vm"``.  The VM cases boot real guests (TCG on the project's
machines), so the fixtures share booted sandboxes per module where the test
only observes (exec into it) rather than changes state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox import Container, Limits, Mount, Sandbox, Spec, VirtualMachine

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups, virtiofsd)")

ISOLATIONS = ("container", "vm")


def make(isolation: str, spec: Spec, **kw: object) -> Sandbox:
    """The sandbox of ``isolation`` for ``spec`` (not started)."""
    if isolation == "container":
        return Container(spec, **kw)  # type: ignore[arg-type]
    return VirtualMachine(spec, **kw)  # type: ignore[arg-type]


def run(isolation: str, spec: Spec, **kw: object) -> object:
    from minibox import run as run_spec

    return run_spec(spec, isolation=isolation, **kw)


@pytest.fixture(scope="module", params=ISOLATIONS)
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A host directory the shared sandbox sees read-only at /data."""
    path = tmp_path_factory.mktemp("contract-data")
    path.chmod(0o755)
    (path / "in.txt").write_text("from the host\n")
    return str(path)


#: What the shared sandbox's Spec sets on both paths (every field it can observe by exec).
BOX_COMMON = dict(
    argv=["sleep", "600"],
    hostname="contract-box",
    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTRACT": "yes"},
    cwd="/tmp",
    user=(1000, 1000),
    readonly_rootfs=True,
    cap_add=["SYS_PTRACE"],
    cap_drop=["NET_RAW"],
    rlimits={"RLIMIT_NOFILE": 321},
)


def box_spec(isolation: str, data_dir: str) -> Spec:
    mounts = [Mount.tmpfs("/scratch", size="8M"), Mount.bind(data_dir, "/data", readonly=True)]
    if isolation == "container":
        # the Limits a VM refuses are observed on the container only
        limits = Limits(memory="128M", memory_swap="256M", cpus=1.0, cpu_weight=50, pids=64, cpuset="0")
        return Spec(limits=limits, mounts=mounts, **BOX_COMMON)  # type: ignore[arg-type]
    return Spec(limits=Limits(memory="128M", cpus=1.0, pids=64), mounts=mounts, **BOX_COMMON)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def box(isolation: str, data_dir: str) -> Iterator[Sandbox]:
    """One running sandbox per isolation and module, observed through exec."""
    with make(isolation, box_spec(isolation, data_dir)) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def custom_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A busybox rootfs of the test's own, with a marker file at /marker."""
    from minibox.images.busybox import build_busybox_rootfs

    path = build_busybox_rootfs(tmp_path_factory.mktemp("contract-root") / "rootfs")
    Path(path, "marker").write_text("custom rootfs\n")
    yield str(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``test_an_honoured_field_is_observed_inside`` exists only for the cells the
    table marks honoured: a refused cell is the refusal test's, not a skip here."""
    kept = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        honoured = getattr(getattr(item, "module", None), "honoured", None)
        if (getattr(item, "originalname", "") == "test_an_honoured_field_is_observed_inside"
                and callspec is not None and honoured is not None
                and not honoured(callspec.params["field"], callspec.params["isolation"])):
            continue
        kept.append(item)
    items[:] = kept
