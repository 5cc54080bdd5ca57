"""The mount plan's bases: each path resolved below the latest mount minibox made above it.

The child resolves "/dev/null" from the fd of the /dev tmpfs, "/proc/sys"
from the fd of its own procfs (csrc/rootfs.c), so renaming /dev or /proc
in a shared rootfs while a container starts redirects nothing.  The fixed
part of the plan is anchored once and cached; these tests check it against
anchoring from scratch.  No root needed.
"""

from __future__ import annotations

import dataclasses

import pytest

from minibox import Mount, Spec
from minibox.container.rootfs import OP_BIND, OP_MOUNT, MountOp, anchored, mount_plan


def by_target(ops: list[MountOp], target: str, kind: int) -> MountOp:
    return next(op for op in ops if op.target == target and op.kind == kind)


def test_paths_below_a_minibox_mount_resolve_from_it() -> None:
    ops = mount_plan(Spec(argv=["true"]), in_userns=False)
    dev = ops.index(by_target(ops, "/dev", OP_MOUNT))
    proc = ops.index(by_target(ops, "/proc", OP_MOUNT))
    null = by_target(ops, "/dev/null", OP_BIND)
    assert (null.base, null.relative_target(), null.source) == (dev, "/null", "/dev/null")
    sysctl = by_target(ops, "/proc/sys", OP_BIND)
    assert sysctl.source_in_root and sysctl.base == proc
    assert (sysctl.relative_target(), sysctl.relative_source()) == ("/sys", "/sys")
    assert by_target(ops, "/proc", OP_MOUNT).base == -1   # the rootfs itself


SPECS = [
    Spec(argv=["true"]),
    Spec(argv=["true"], mounts=[Mount.tmpfs("/tmp"), Mount.tmpfs("/tmp/a"), Mount.bind("/etc", "/tmp/a/etc", True)]),
    Spec(argv=["true"], mounts=[Mount.tmpfs("/proc/acpi")]),       # on the masks' way: re-anchored
    Spec(argv=["true"], mounts=[Mount.tmpfs("/dev/shm")]),        # over a minibox mount: stacked
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("in_userns", [False, True])
def test_the_cached_plan_equals_anchoring_from_scratch(spec: Spec, in_userns: bool) -> None:
    ops = mount_plan(spec, in_userns=in_userns)
    plain = [dataclasses.replace(op, base=-1, base_path="") for op in ops]
    assert anchored(plain) == ops
    for index, op in enumerate(ops):
        assert op.base < index
        if op.base >= 0:
            assert ops[op.base].kind in (OP_MOUNT, OP_BIND)
            assert op.target.startswith(ops[op.base].target + "/")


def test_a_later_mount_on_the_same_path_stacks_rather_than_nests() -> None:
    ops = mount_plan(Spec(argv=["true"], mounts=[Mount.tmpfs("/dev/shm")]), in_userns=False)
    shms = [op for op in ops if op.target == "/dev/shm" and op.kind == OP_MOUNT]
    assert len(shms) == 2 and shms[0].base == shms[1].base   # both below /dev, not one inside the other
