"""Linux capabilities: which slices of root's power a container keeps.

Since Linux 2.2 the all-or-nothing power of uid 0 is split into about forty
*capabilities* (``CAP_CHOWN``, ``CAP_NET_ADMIN``, ``CAP_SYS_ADMIN``...), and
every thread carries five sets of them, as capabilities(7) describes:

* **bounding** -- the ceiling: nothing outside it can ever be gained again,
  not even by executing a set-uid-root or file-capability program;
* **permitted** -- what the thread may switch on;
* **effective** -- what the kernel actually checks right now;
* **inheritable** and **ambient** -- what survives ``execve`` into a program
  that has no file capabilities of its own.

This module turns ``Spec.cap_add`` / ``Spec.cap_drop`` into the five 64-bit
masks of ``struct mb_plan`` (bit N = capability number N); the C child drops
everything else just before ``execve`` (``MB_STEP_CAPABILITIES``).  It
configures nothing itself.

The rules follow the OCI runtime spec and Docker (moby ``TweakCapabilities``):

* the default set is podman's 11 (:data:`DEFAULT_CAPABILITIES`): Docker's 14
  without ``NET_RAW`` (raw sockets forge any packet on a shared bridge;
  ``ping`` uses an unprivileged ICMP socket instead, see
  ``container/network.py``), ``MKNOD`` and ``AUDIT_WRITE``;
* ``cap_drop`` is applied first, then ``cap_add`` (an add wins over a drop);
  ``"ALL"`` in ``cap_add`` means every capability this kernel knows minus
  ``cap_drop``; ``"ALL"`` in ``cap_drop`` means start from nothing;
* for uid 0 inside: bounding = permitted = effective = the set, inheritable
  and ambient empty (Docker >= 23 empties inheritable, CVE-2022-24769);
* for any other uid: bounding = the set, and permitted, effective,
  inheritable and ambient are **empty**.  That is what a non-root user gets
  from Docker: the kernel clears permitted/effective on the switch away from
  uid 0 (capabilities(7), "Effect of user ID changes on capabilities"), and
  the bounding set still caps what a file-capability program could gain
  (with ``no_new_privileges`` on, not even that).

Only capabilities up to the running kernel's ``CAP_LAST_CAP``
(``/proc/sys/kernel/cap_last_cap``) are ever put in a mask.

Man pages: capabilities(7), capset(2), prctl(2) (PR_CAPBSET_DROP,
PR_CAP_AMBIENT).  Spec: OCI runtime-spec config.md, ``process.capabilities``.
"""

from __future__ import annotations

from .._record import record
from ..errors import SpecError
from ..spec import Spec

TYPE_CHECKING = False  # collections.abc would import the collections package: annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable

#: Capability numbers, from linux/capability.h (capabilities(7)).
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

#: Number -> canonical name.
CAPABILITY_NAMES: dict[int, str] = {number: name for name, number in CAPABILITIES.items()}

#: What a container keeps by default: podman's default set (containers.conf
#: ``default_capabilities``), which is Docker's 14 minus NET_RAW, MKNOD and AUDIT_WRITE.
DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    "CAP_" + name
    for name in (
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID",
        "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
    )
)


_cap_last_cap: list[int] = []  # read once (functools.cache would import functools and collections)


def cap_last_cap() -> int:
    """The highest capability number the running kernel knows (``/proc/sys/kernel/cap_last_cap``)."""
    if not _cap_last_cap:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _cap_last_cap.append(int(f.read()))
        except (OSError, ValueError):
            # Kernels before 3.2 lack the file; CAP_AUDIT_READ (37) is old enough to assume.
            _cap_last_cap.append(37)
    return _cap_last_cap[0]


def supported_capabilities() -> frozenset[str]:
    """Every capability name this kernel knows."""
    last = cap_last_cap()
    return frozenset(name for name, number in CAPABILITIES.items() if number <= last)


def normalize_name(name: str, field: str = "cap_add") -> str:
    """``"net_admin"``, ``"NET_ADMIN"``, ``"cap_net_admin"`` -> ``"CAP_NET_ADMIN"``.

    ``"ALL"`` stays ``"ALL"``.  An unknown name raises :class:`SpecError`
    naming ``field``.
    """
    if not isinstance(name, str):
        raise SpecError(field, f"expected a capability name like 'NET_ADMIN', got {name!r}")
    upper = name.strip().upper()
    if upper == "ALL":
        return "ALL"
    canonical = upper if upper.startswith("CAP_") else "CAP_" + upper
    if canonical not in CAPABILITIES:
        raise SpecError(
            field,
            f"unknown capability {name!r}; names are those of capabilities(7), "
            f"like 'NET_ADMIN' or 'CAP_SYS_PTRACE' (or 'ALL')",
        )
    return canonical


def resolve(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = ()) -> frozenset[str]:
    """The capability names a container keeps, after ``cap_add`` and ``cap_drop``.

    Same algorithm as Docker: drops first, then adds; ``ALL`` as described in
    the module docstring.  Adding a capability this kernel does not know is a
    :class:`SpecError`; dropping one is a no-op.
    """
    adds = [normalize_name(n, "cap_add") for n in cap_add]
    drops = [normalize_name(n, "cap_drop") for n in cap_drop]
    supported = supported_capabilities()
    for name in adds:
        if name != "ALL" and name not in supported:
            raise SpecError(
                "cap_add",
                f"{name} (number {CAPABILITIES[name]}) is not known to this kernel "
                f"(cap_last_cap is {cap_last_cap()})",
            )
    drop_set = {n for n in drops if n != "ALL"}
    if "ALL" in adds:
        return frozenset(supported - drop_set)
    if "ALL" in drops:
        return frozenset(n for n in adds if n != "ALL")
    return frozenset(((DEFAULT_CAPABILITIES & supported) - drop_set) | set(adds))


def mask_of(names: Iterable[str]) -> int:
    """The 64-bit mask with bit ``CAP_x`` set for each name (names must be canonical)."""
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def names_of(mask: int) -> frozenset[str]:
    """The inverse of :func:`mask_of`; unknown bits become ``"CAP_<n>"``."""
    return frozenset(CAPABILITY_NAMES.get(bit, f"CAP_{bit}") for bit in range(64) if mask >> bit & 1)


@record(frozen=True)
class CapabilityMasks:
    """The five capability sets for ``struct mb_plan`` (``cap_bounding`` ... ``cap_ambient``)."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    @property
    def names(self) -> frozenset[str]:
        """The capability names in the bounding set: what the container can ever have."""
        return names_of(self.bounding)


def masks_for(names: Iterable[str], uid: int) -> CapabilityMasks:
    """Masks for a process running as ``uid`` inside, keeping the capabilities ``names``."""
    bounding = mask_of(names)
    if uid == 0:
        return CapabilityMasks(bounding=bounding, effective=bounding, permitted=bounding, inheritable=0, ambient=0)
    return CapabilityMasks(bounding=bounding, effective=0, permitted=0, inheritable=0, ambient=0)


def capability_set(spec: Spec) -> frozenset[str]:
    """The canonical names a container for ``spec`` keeps (input to ``seccomp.compile_profile``)."""
    return resolve(spec.cap_add, spec.cap_drop)


def capability_masks(spec: Spec) -> CapabilityMasks:
    """The five masks the C child applies for ``spec`` (see the module docstring for the rules)."""
    return masks_for(capability_set(spec), spec.user[0])


__all__ = [
    "CAPABILITIES",
    "CAPABILITY_NAMES",
    "DEFAULT_CAPABILITIES",
    "CapabilityMasks",
    "cap_last_cap",
    "capability_masks",
    "capability_set",
    "mask_of",
    "masks_for",
    "names_of",
    "normalize_name",
    "resolve",
    "supported_capabilities",
]
