"""The container's plan: a Spec turned into what the C child will do, before anything exists.

runc splits ``libcontainer/configs`` (what a container is) from
``specconv`` (how an OCI spec becomes one); Firecracker splits its
``vmm_config`` from the builder.  Here the split is: this module turns a
:class:`~minibox.spec.Spec` into a :class:`~minibox.container.spawn.ChildPlan`
(argv and envp, ids, capability masks, the seccomp program, rlimits, the
root and its mounts), raising :class:`~minibox.errors.SpecError` for
anything wrong; :mod:`.container` then *executes* the plan (cgroups, clone,
id maps, go).  Nothing here creates a host object, so it is testable
without root.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from ..images.busybox import default_rootfs
from ..spec import Mount, Spec
from .rootfs import overlay_root
from .spawn import ChildPlan
from .userns import default_maps

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_scratch: str | None = None


_overlayfs: bool | None = None


def _overlayfs_available() -> bool:
    """Whether this kernel has overlayfs loaded (/proc/filesystems; filesystems(5))."""
    global _overlayfs
    if _overlayfs is None:
        with open("/proc/filesystems") as f:
            _overlayfs = any(line.split()[-1] == "overlay" for line in f if line.strip())
    return _overlayfs


def _overlay_scratch() -> str:
    """An empty host directory every child may mount its private overlay tmpfs on.

    Mounts made there live in each child's own mount namespace: on the host
    the directory stays empty, and many containers share it at once.  It
    sits beside the image in the state directory (mode 0755), because a
    child in a user namespace is an unprivileged uid on the host and must
    still be able to reach it.
    """
    global _scratch
    if _scratch is None:
        from ..paths import state_dir_name

        path = os.path.join(state_dir_name(), "overlay")
        os.makedirs(path, mode=0o755, exist_ok=True)
        _scratch = path
    return _scratch


def _maps_root(maps: Sequence[Any]) -> bool:
    return any(m.inside <= 0 < m.inside + m.count for m in maps)


def _hardening(spec: Spec, plan: ChildPlan) -> None:
    """Fill the plan's capability, no_new_privs, seccomp and rlimit fields."""
    from ..policy import capabilities

    masks = capabilities.capability_masks(spec)
    plan.set_caps = True
    plan.cap_bounding = masks.bounding
    plan.cap_effective = masks.effective
    plan.cap_permitted = masks.permitted
    plan.cap_inheritable = masks.inheritable
    plan.cap_ambient = masks.ambient
    plan.no_new_privs = spec.no_new_privileges
    caps = capabilities.capability_set(spec)
    if spec.seccomp == "default":  # the common case: cached on disk, no compiler to import
        from ..policy.seccomp.cache import default_program

        plan.seccomp_filter = default_program(caps)
    else:
        from ..policy.seccomp.compile import compile_profile

        plan.seccomp_filter = compile_profile(spec.seccomp, caps=caps)
    if spec.rlimits:  # importing the parser costs a little; most Specs set none
        from ..policy.rlimits import parse_rlimits

        plan.rlimits = parse_rlimits(spec.rlimits)


def process_plan(spec: Spec, argv: Sequence[str]) -> ChildPlan:
    """The process half of the child plan: argv, environment, ids, capabilities, seccomp, rlimits.

    Pure but for reading the seccomp cache: it raises a SpecError for a
    bad field before anything exists.
    """
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", spec.hostname)
    env.setdefault("HOME", "/root" if spec.user[0] == 0 else "/")
    plan = ChildPlan(argv=list(argv), envp=[f"{k}={v}" for k, v in env.items()],
                     path_env=env["PATH"], cwd=spec.cwd, uid=spec.user[0], gid=spec.user[1],
                     cmd=argv[0])
    in_userns = "user" in spec.effective_namespaces
    plan.set_ids = spec.user != (0, 0) or in_userns
    plan.set_groups = not in_userns or os.geteuid() == 0
    if in_userns:
        uid_map, gid_map = default_maps(spec)
        plan.become_root = _maps_root(uid_map) and _maps_root(gid_map)
    _hardening(spec, plan)
    return plan


def choose_root(spec: Spec, plan: ChildPlan) -> tuple[Spec, str, str, bool]:
    """Decide the container's root: ``(spec, image, root, readonly)``.

    minibox's own rootfs is shared by every container that does not name
    one: each gets a private, writable overlay over it (as docker gives a
    container layer), so none can change what the next starts from; the
    overlay's mount steps go into ``plan.root_ops``.  A rootfs the Spec
    names is used in place.  Without overlayfs the shared image is mounted
    read-only with a private /tmp (the returned Spec has that mount).
    """
    image = spec.rootfs or str(default_rootfs())
    root = image
    readonly = spec.readonly_rootfs
    if spec.rootfs is None and _overlayfs_available():
        plan.root_ops, root = overlay_root(image, _overlay_scratch())
    elif spec.rootfs is None:
        readonly = True
        if not any(m.target == "/tmp" for m in spec.mounts):
            spec = dataclasses.replace(spec, mounts=(*spec.mounts, Mount.tmpfs("/tmp")))
    return spec, image, root, readonly
