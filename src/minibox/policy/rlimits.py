"""Resource limits (rlimits): per-process ceilings the kernel enforces.

Every process carries a pair of limits per resource -- open files, stack size,
core dump size, processes per user... -- as getrlimit(2) describes: the *soft*
limit is what the kernel enforces, the *hard* limit is the ceiling up to which
an unprivileged process may raise its soft limit.  Lowering a hard limit is
one-way without ``CAP_SYS_RESOURCE``.  Unlike cgroups, rlimits are inherited
by every child and counted per process (``RLIMIT_NPROC`` per real uid), so
they complement the container's cgroup limits rather than replace them.

``Spec.rlimits`` uses the OCI names (``process.rlimits[].type``):
``{"RLIMIT_NOFILE": 1024, "RLIMIT_CORE": (0, 0)}``; a single int sets soft =
hard.  ``"nofile"`` (Docker's ``--ulimit`` spelling) is accepted too.
Unlimited is ``"unlimited"``, ``resource.RLIM_INFINITY`` (-1 in Python) or
2**64-1 (what OCI JSON writes).  This module validates them and produces
``(resource number, soft, hard)`` triples for ``struct mb_rlimit``; the C
child calls setrlimit(2) in ``MB_STEP_RLIMITS``.

Man pages: getrlimit(2), prlimit(1).  Spec: OCI runtime-spec config.md,
``process.rlimits``.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import SpecError

#: ``RLIM_INFINITY`` as the kernel's unsigned 64-bit ``rlim_t``.
RLIM_INFINITY_U64 = 2**64 - 1

#: OCI name -> resource number (from Python's ``resource`` module, i.e. the C headers).
RLIMITS: dict[str, int] = {
    name: getattr(resource, name)
    for name in (
        "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
        "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
        "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
    )
    if hasattr(resource, name)
}


class Rlimit(NamedTuple):
    """One validated limit: ``resource`` number, ``soft`` and ``hard`` as unsigned 64-bit values."""

    resource: int
    soft: int
    hard: int

    @property
    def name(self) -> str:
        return next(n for n, number in RLIMITS.items() if number == self.resource)


def normalize_name(name: object) -> str:
    """``"nofile"``, ``"RLIMIT_NOFILE"``, ``"rlimit_nofile"`` -> ``"RLIMIT_NOFILE"``."""
    if not isinstance(name, str):
        raise SpecError("rlimits", f"expected a limit name like 'RLIMIT_NOFILE', got {name!r}")
    upper = name.strip().upper()
    canonical = upper if upper.startswith("RLIMIT_") else "RLIMIT_" + upper
    if canonical not in RLIMITS:
        raise SpecError(
            "rlimits",
            f"unknown limit {name!r}; known: {', '.join(sorted(RLIMITS))} (see getrlimit(2))",
        )
    return canonical


def _value(raw: object, where: str) -> int:
    """One soft or hard value as an unsigned 64-bit integer (infinity = 2**64-1)."""
    if isinstance(raw, str):
        if raw.strip().lower() in ("unlimited", "infinity"):
            return RLIM_INFINITY_U64
        raise SpecError(where, f"expected an int or 'unlimited', got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise SpecError(where, f"expected an int or 'unlimited', got {raw!r}")
    if raw == resource.RLIM_INFINITY:
        return RLIM_INFINITY_U64
    if raw < 0:
        raise SpecError(where, f"must not be negative, got {raw} (use 'unlimited' for no limit)")
    if raw > RLIM_INFINITY_U64:
        raise SpecError(where, f"{raw} does not fit in 64 bits")
    return raw


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def parse_rlimits(rlimits: Mapping[str, object]) -> list[Rlimit]:
    """Validate ``Spec.rlimits`` and return the triples for the C child, sorted by resource.

    Errors (all :class:`SpecError` on field ``rlimits``): an unknown name, the
    same limit named twice (``"nofile"`` and ``"RLIMIT_NOFILE"``), a negative
    or non-integer value, soft above hard, or ``RLIMIT_NOFILE`` above the
    kernel's ``fs.nr_open`` (setrlimit would fail with EPERM even for root).
    """
    if not isinstance(rlimits, Mapping):
        raise SpecError("rlimits", "expected a mapping like {'RLIMIT_NOFILE': 1024}")
    seen: dict[str, object] = {}
    result: list[Rlimit] = []
    for raw_name, raw_value in rlimits.items():
        name = normalize_name(raw_name)
        if name in seen:
            raise SpecError("rlimits", f"{name} is given twice ({seen[name]!r} and {raw_name!r})")
        seen[name] = raw_name
        where = f"rlimits[{name}]"
        if isinstance(raw_value, (tuple, list)):
            if len(raw_value) != 2:
                raise SpecError(where, f"expected (soft, hard), got {raw_value!r}")
            soft, hard = _value(raw_value[0], where), _value(raw_value[1], where)
        else:
            soft = hard = _value(raw_value, where)
        if soft > hard:
            raise SpecError(where, f"soft limit {soft} is above the hard limit {hard}")
        if name == "RLIMIT_NOFILE":
            nr_open = _nr_open()
            if nr_open is not None and hard > nr_open:
                raise SpecError(
                    where,
                    f"hard limit {'unlimited' if hard == RLIM_INFINITY_U64 else hard} exceeds fs.nr_open "
                    f"({nr_open}); the kernel refuses more open files per process",
                )
        result.append(Rlimit(RLIMITS[name], soft, hard))
    result.sort(key=lambda r: r.resource)
    return result


__all__ = ["RLIMITS", "RLIM_INFINITY_U64", "Rlimit", "normalize_name", "parse_rlimits"]
