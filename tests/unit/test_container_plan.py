"""container/plan.py: a Spec becomes the child's plan without touching the host."""

from __future__ import annotations

import pytest

from minibox import Spec, SpecError
from minibox.container.plan import DEFAULT_PATH, choose_root, process_plan


def test_process_plan_fills_the_environment_ids_and_hardening(tmp_path: object) -> None:
    spec = Spec(argv=["/bin/echo", "hi"], rootfs=str(tmp_path), env={"A": "1"}, user=(1000, 1000),
                hostname="box")
    plan = process_plan(spec, spec.argv)
    env = dict(e.split("=", 1) for e in plan.envp)
    assert env == {"A": "1", "PATH": DEFAULT_PATH, "HOSTNAME": "box", "HOME": "/"}
    assert (plan.uid, plan.gid, plan.cwd, plan.argv) == (1000, 1000, "/", ["/bin/echo", "hi"])
    assert plan.set_ids and plan.set_caps and plan.no_new_privs
    # a non-root user keeps no capabilities; the default seccomp program is a BPF program
    assert plan.cap_effective == plan.cap_permitted == 0
    assert plan.seccomp_filter and len(plan.seccomp_filter) % 8 == 0


def test_process_plan_rejects_a_bad_field_before_anything_exists(tmp_path: object) -> None:
    spec = Spec(argv=["/bin/true"], rootfs=str(tmp_path), cap_add=("CAP_NOT_A_THING",))
    with pytest.raises(SpecError) as info:
        process_plan(spec, spec.argv)
    assert "cap_add" in str(info.value)


def test_a_named_rootfs_is_used_in_place(tmp_path: object) -> None:
    spec = Spec(argv=["/bin/true"], rootfs=str(tmp_path), readonly_rootfs=True)
    plan = process_plan(spec, spec.argv)
    same, image, root, readonly = choose_root(spec, plan)
    assert (image, root, readonly) == (str(tmp_path), str(tmp_path), True)
    assert same is spec and not plan.root_ops
