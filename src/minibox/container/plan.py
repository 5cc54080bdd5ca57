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

import os

from .._record import replace
from ..errors import PreflightError
from ..spec import DEFAULT_PATH, DEFAULT_TMPFS_SIZE, Mount, Spec
from .rootfs import OP_WRITE, WRITE_AS_PID1, MountOp, overlay_root
from .spawn import ChildPlan

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

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


#: How many tasks (processes and threads) a container may hold when the Spec
#: sets no ``Limits(pids=...)``: podman's default pids limit.  It is enforced
#: without a cgroup, through the container's own pid namespace (see
#: :func:`pid_bound_ops` and docs/hardening.md).
DEFAULT_PID_BOUND = 2048

_pid_bound: bool | None = None

#: How many bytes the private writable layer of a container (the default
#: image's, or ``rootfs_overlay=True``) and its private /tmp may each hold
#: when the Spec sets no ``rootfs_overlay_size``: the bound of every tmpfs
#: nobody sized (spec.DEFAULT_TMPFS_SIZE says why).
DEFAULT_LAYER_SIZE = DEFAULT_TMPFS_SIZE


def pid_bound_supported() -> bool:
    """Whether kernel.pid_max is per pid namespace here: Linux >= 6.14 (commit 7863dcc72d0f).

    On older kernels the sysctl is global, so writing it from a container
    would change the host's: minibox then never writes it.
    """
    global _pid_bound
    if _pid_bound is None:
        try:
            major, minor = (int(x) for x in os.uname().release.split(".")[:2])
            _pid_bound = (major, minor) >= (6, 14)
        except ValueError:
            _pid_bound = False
    return _pid_bound


def pid_bound_ops(spec: Spec) -> list[MountOp]:
    """Bound the number of tasks in the container without a cgroup: a fork bomb's stop.

    Since Linux 6.14 ``kernel.pid_max`` belongs to each pid namespace, and a
    pid is allocated in every ancestor namespace, so no process in the
    container -- nor in a namespace it nests -- gets a pid at or above it:
    at most ``pid_max - 1`` tasks exist at once.  pid 1 of the new namespace
    writes it during setup, with its capabilities still whole; afterwards
    ``/proc/sys`` is read-only and CAP_SYS_ADMIN is gone, so the command
    cannot raise it.  It costs one write(2) (a cgroup would cost the v1
    migration wait, 8-19 ms).  With ``Limits(pids=N)`` the cgroup holds it at
    N, and pid_max leaves room for N.
    """
    if "pid" not in spec.effective_namespaces or not pid_bound_supported():
        return []
    bound = max(DEFAULT_PID_BOUND, spec.limits.pids or 0)
    # pids 1..bound; the kernel refuses pid_max below RESERVED_PIDS + 1 (301)
    return [MountOp(OP_WRITE, "/proc/sys/kernel/pid_max", data=str(max(bound + 1, 301)), flags=WRITE_AS_PID1)]


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
    from ..policy.seccomp.cache import program_for  # cached on disk: no compiler to import

    plan.seccomp_filter = program_for(spec.seccomp, caps)
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
    plan.non_dumpable = os.geteuid() == 0   # root inside must not reach the host's binary (CVE-2019-5736)
    if in_userns:  # userns.py is imported by the containers that have a user namespace only
        from .userns import default_maps

        uid_map, gid_map = default_maps(spec)
        plan.become_root = _maps_root(uid_map) and _maps_root(gid_map)
    _hardening(spec, plan)
    return plan


def choose_root(spec: Spec, plan: ChildPlan) -> tuple[Spec, str, str, bool]:
    """Decide the container's root: ``(spec, image, root, readonly)``.

    minibox's own rootfs is shared by every container that does not name
    one: each gets a private, writable overlay over it (as docker gives a
    container layer), so none can change what the next starts from; the
    overlay's mount steps go into ``plan.root_ops``, with a private /tmp
    (the image's own is not world-writable).  A rootfs the Spec names is
    used in place, unless the Spec asks for the same layer over it
    (``rootfs_overlay``).  Without overlayfs the shared image is mounted
    read-only with a private /tmp (the returned Spec has that mount).
    """
    image = spec.rootfs
    if not image:  # the image's module is imported by the containers that use the image only
        from ..images.busybox import default_rootfs

        image = str(default_rootfs())
    root = image
    readonly = spec.readonly_rootfs
    if (spec.rootfs is None or spec.rootfs_overlay) and _overlayfs_available():
        size = DEFAULT_LAYER_SIZE if spec.rootfs_overlay_size is None else int(spec.rootfs_overlay_size)
        plan.root_ops, root = overlay_root(image, _overlay_scratch(), size=size, private_tmp=spec.rootfs is None)
    elif spec.rootfs_overlay:
        raise PreflightError("rootfs_overlay needs overlayfs, and this kernel has none loaded "
                             "(/proc/filesystems); 'modprobe overlay', or use readonly_rootfs")
    elif spec.rootfs is None:
        readonly = True
        if not any(m.target == "/tmp" for m in spec.mounts):
            spec = replace(spec, mounts=(*spec.mounts, Mount.tmpfs("/tmp", size=DEFAULT_LAYER_SIZE)))
    return spec, image, root, readonly
