"""What to run and how to isolate it: validated, immutable data.

A :class:`Spec` is the one description both isolation paths accept: the
container path (namespaces + cgroups, see ``minibox.container``) and the VM
path (QEMU + guest kernel, see ``minibox.vm``).  Field names follow the OCI
runtime spec's ``config.json`` where one exists (``process.args`` -> ``argv``,
``process.env``, ``process.cwd``, ``hostname``, ``root.readonly`` ->
``readonly_rootfs``, ``linux.resources`` -> ``limits``, ``mounts``).

Every field is checked when the Spec is built, before anything exists on the
host, and a bad field raises :class:`minibox.SpecError` naming the field and
the fix.  Specs are frozen records (``minibox._record``: dataclass behaviour
without the cost of importing :mod:`dataclasses`): share them between
threads freely, derive variants with :func:`dataclasses.replace`.

Spec: https://github.com/opencontainers/runtime-spec/blob/main/config.md
"""

from __future__ import annotations

import math
import os

# collections.abc re-exports _collections_abc, which os has loaded already;
# importing the collections package itself would cost a command-line start
# about 2 ms (collections, operator, reprlib, keyword, itertools).
from _collections_abc import Mapping, Sequence

from ._record import field, record
from .errors import SpecError

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from typing import Any, Literal

if TYPE_CHECKING:
    NetworkMode = Literal["none", "bridge", "host"]
NETWORK_MODES: tuple[str, ...] = ("none", "bridge", "host")

#: Namespaces a container can ask for, by their /proc/self/ns names.
NAMESPACES: tuple[str, ...] = ("user", "pid", "mnt", "uts", "ipc", "net", "cgroup", "time")
#: What a container gets when the Spec does not say: everything but user and time.
DEFAULT_NAMESPACES: tuple[str, ...] = ("pid", "mnt", "uts", "ipc", "net", "cgroup")
#: The PATH a command is searched in when ``env`` sets none (docker's default), on both isolations.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: What a tmpfs minibox mounts may hold when nobody said: a ``Mount.tmpfs``
#: without ``size``, the default image's writable layer and its private
#: /tmp.  tmpfs is host memory, and a container without
#: ``Limits(memory=...)`` has no cgroup to charge it to: unbounded, tmpfs(5)
#: offers half the host's RAM to each mount, and ``head -c 20G /dev/zero >
#: /tmp/f`` inside would push the host into its OOM killer.  A write beyond
#: the bound fails inside with ENOSPC; a container also gets one inode per
#: 4 KiB of it (``nr_inodes``), since tmpfs counts only data against size.
DEFAULT_TMPFS_SIZE = 1 << 30

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The largest size the kernel stores: cgroup limits are page counts that
#: top out at LONG_MAX bytes (a bigger memory.limit_in_bytes wraps round
#: to garbage, even 0, on cgroup v1), and tmpfs sizes are longs too.
MAX_SIZE = 2**63 - 1
#: pids.max refuses anything above PID_MAX_LIMIT (include/linux/threads.h:
#: 4 Mi on 64-bit), with EINVAL -- after the cgroup already exists.
PIDS_MAX = 4 * 1024 * 1024
#: Bytes of each captured output stream (stdout, stderr) a Result keeps when
#: ``Spec.output_limit`` is not given: captured output is held in the caller's
#: memory, and untrusted code can print forever.  16 MiB is far above what a
#: command's output is read for (logs, test reports, JSON), was the VM path's
#: bound from the start, and keeps the worst case of one command at ~64 MiB of
#: the caller's memory (two streams, each briefly held twice while it becomes
#: bytes).
DEFAULT_OUTPUT_LIMIT = 16 << 20
#: The longest timeout the waiting code can sleep through (poll(2) takes an
#: int of milliseconds); use ``timeout=None`` for no timeout.
MAX_TIMEOUT = (2**31 - 1) / 1000
# RFC 1123 host name label(s), as sethostname(2) users expect; the kernel
# itself accepts anything up to 64 bytes, but a name a resolver cannot parse
# is a mistake worth catching.
_HOSTNAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")

# The checks below are written out by hand rather than as regular
# expressions: importing re (and the enum it needs) costs a command-line
# start about 3 ms.  Where a pattern used to end in "$", which also matches
# just before one final newline, the hand-written check does the same.


def _size_parts(text: str) -> tuple[str, str, str] | None:
    """``(whole, fraction, unit)`` of a size like ``" 1.5 GiB"``, or None.

    The grammar: optional whitespace, digits, optionally "." and digits,
    optional whitespace, optionally one of K M G T (any case), optionally
    "b" or "ib" (any case of b), optional whitespace.
    """
    rest = text.strip()
    if rest[-1:] in ("b", "B"):
        rest = rest[:-1]
        if rest[-1:] == "i":
            rest = rest[:-1]
    unit = ""
    if rest[-1:] and rest[-1] in "kKmMgGtT":
        unit, rest = rest[-1], rest[:-1]
    whole, dot, fraction = rest.rstrip().partition(".")
    if not whole.isdecimal() or (dot and not fraction.isdecimal()):
        return None
    return whole, fraction, unit


def _valid_hostname(name: str) -> bool:
    """RFC 1123: dot-separated labels of 1-63 letters, digits and '-', none starting or ending with '-'."""
    if name.endswith("\n"):
        name = name[:-1]
    return all(0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and _HOSTNAME_CHARS.issuperset(label)
               for label in name.split("."))


def _valid_cpuset_syntax(text: str) -> bool:
    """cpuset(7) list syntax: ``N`` or ``N-M`` items (1-5 digits each), comma-separated."""
    if text.endswith("\n"):
        text = text[:-1]
    for item in text.split(","):
        first, dash, last = item.partition("-")
        for number in (first, last) if dash else (first,):
            if not (0 < len(number) <= 5 and number.isdecimal()):
                return False
    return True


def _shown(value: object) -> str:
    """``repr(value)`` cut short for an error message (a huge int has no repr at all)."""
    try:
        text = repr(value)
    except ValueError:  # int with more digits than sys.get_int_max_str_digits()
        return "a number too large to print"
    return text if len(text) <= 40 else text[:37] + "..."


def parse_size(value: int | str, field_name: str) -> int:
    """Parse ``64M``, ``1g``, ``512KiB``, ``1048576`` or an int into bytes.

    Units are binary (K = 1024), as in ``docker run --memory``.  Exact
    integer arithmetic (no float: ``"1" + "0" * 400`` must not become
    ``inf``); at most :data:`MAX_SIZE`.
    """
    if isinstance(value, bool):
        raise SpecError(field_name, f"expected a size like '64M' or a byte count, got {_shown(value)}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        parts = _size_parts(value)
        if parts is None:
            raise SpecError(
                field_name,
                f"cannot parse size {_shown(value)}; use bytes or a number with K, M, G or T (e.g. '64M')",
            )
        whole, fraction, unit = parts
        if len(whole.lstrip("0")) > 20:  # int() of thousands of digits is slow, then refused anyway
            raise SpecError(field_name, f"{_shown(value)} is more than the kernel can store (at most 2**63-1 bytes)")
        scale = _SIZE_UNITS[unit.lower()]
        size = int(whole) * scale
        if fraction:
            fraction = fraction[:20]
            size += int(fraction) * scale // 10 ** len(fraction)
    else:
        raise SpecError(field_name, f"expected a size like '64M' or a byte count, got {type(value).__name__}")
    if size <= 0:
        raise SpecError(field_name, f"size must be positive, got {_shown(value)}")
    if size > MAX_SIZE:
        raise SpecError(field_name, f"{_shown(value)} is more than the kernel can store (at most 2**63-1 bytes)")
    return size


def _online_cpus() -> set[int]:
    """CPUs the kernel may schedule on (/sys/devices/system/cpu/online; cpuset(7) list format)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return set(_cpu_list(f.read().strip()))
    except (OSError, ValueError):
        return set(range(os.cpu_count() or 1))


def _cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> [0, 1, 2, 5]; ValueError for a range that runs backwards (the kernel's EINVAL)."""
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if low > high:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.extend(range(low, high + 1))
    return cpus


def _require_absolute(path: object, field_name: str) -> str:
    if not isinstance(path, str) or not path:
        raise SpecError(field_name, f"expected an absolute path string, got {_shown(path)}")
    if "\x00" in path:
        raise SpecError(field_name, "path contains a NUL byte")
    if not path.startswith("/"):
        raise SpecError(field_name, f"path {_shown(path)} is relative; give an absolute path")
    return path


def _normalize_inside(path: str, field_name: str) -> str:
    """Normalize a path that lives inside the sandbox; refuse one that climbs out."""
    _require_absolute(path, field_name)
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise SpecError(field_name, f"path {_shown(path)} uses '..'; mount targets must stay inside the rootfs")
        parts.append(part)
    return "/" + "/".join(parts)


@record(frozen=True)
class Limits:
    """Resource limits (OCI ``linux.resources``), enforced by cgroups or by the VM size.

    ``memory`` and ``memory_swap`` accept bytes or strings like ``"64M"``;
    they are stored as ints.  ``memory_swap`` is memory *plus* swap, as in
    ``docker run --memory-swap``.  ``cpus`` is a CPU count, fractional allowed
    (0.5 = half of one CPU's time).  ``cpu_weight`` is the cgroup v2 weight,
    1..10000 (default 100).  ``pids`` caps the number of tasks.  ``cpuset``
    lists the CPUs it may run on, in the kernel's list format (``"0-1,3"``).
    """

    memory: int | str | None = None
    memory_swap: int | str | None = None
    cpus: float | None = None
    cpu_weight: int | None = None
    pids: int | None = None
    cpuset: str | None = None

    def __post_init__(self) -> None:
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_size(self.memory, "limits.memory"))
            if int(self.memory) < 4 << 20:
                raise SpecError("limits.memory", "below 4M no process can even start; raise it")
        if self.memory_swap is not None:
            swap = parse_size(self.memory_swap, "limits.memory_swap")
            if self.memory is None:
                raise SpecError("limits.memory_swap", "set limits.memory too: memory_swap is memory plus swap")
            if swap < int(self.memory):
                raise SpecError("limits.memory_swap", "must be at least limits.memory (it counts memory plus swap)")
            object.__setattr__(self, "memory_swap", swap)
        if self.cpus is not None:
            if isinstance(self.cpus, bool) or not isinstance(self.cpus, (int, float)):
                raise SpecError("limits.cpus", f"expected a number of CPUs like 0.5, got {_shown(self.cpus)}")
            if self.cpus > (os.cpu_count() or 1):  # compared as int first: a huge int has no float
                raise SpecError("limits.cpus",
                                f"this host has only {os.cpu_count()} CPUs, asked for {_shown(self.cpus)}")
            if not math.isfinite(self.cpus) or self.cpus < 0.01:
                raise SpecError("limits.cpus", f"must be at least 0.01, got {_shown(self.cpus)}")
            object.__setattr__(self, "cpus", float(self.cpus))
        if self.cpu_weight is not None:
            if isinstance(self.cpu_weight, bool) or not isinstance(self.cpu_weight, int):
                raise SpecError("limits.cpu_weight", f"expected an int 1..10000, got {_shown(self.cpu_weight)}")
            if not 1 <= self.cpu_weight <= 10000:
                raise SpecError("limits.cpu_weight", f"must be within 1..10000, got {_shown(self.cpu_weight)}")
        if self.pids is not None:
            if isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 1:
                raise SpecError("limits.pids", f"expected a positive int, got {_shown(self.pids)}")
            if self.pids > PIDS_MAX:
                raise SpecError("limits.pids", f"the kernel accepts at most {PIDS_MAX} (PID_MAX_LIMIT), "
                                               f"got {_shown(self.pids)}")
        if self.cpuset is not None:
            if not isinstance(self.cpuset, str) or not _valid_cpuset_syntax(self.cpuset):
                raise SpecError("limits.cpuset", f"expected a CPU list like '0' or '0-1,3', "
                                                 f"got {_shown(self.cpuset)}")
            try:
                wanted = _cpu_list(self.cpuset)
            except ValueError as e:
                raise SpecError("limits.cpuset", f"{e}; write the lower CPU first, like '0-1'") from e
            online = _online_cpus()
            missing = sorted(set(wanted) - online)
            if missing:
                have = ",".join(str(c) for c in sorted(online))
                raise SpecError("limits.cpuset", f"CPU {missing[0]} is not online; this host has {have}")

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else int(self.memory)

    @property
    def memory_swap_bytes(self) -> int | None:
        return None if self.memory_swap is None else int(self.memory_swap)

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in
                   ("memory", "memory_swap", "cpus", "cpu_weight", "pids", "cpuset"))


@record(frozen=True)
class Mount:
    """One extra mount inside the sandbox (OCI ``mounts[]``).

    Build them with :meth:`bind` and :meth:`tmpfs`; ``target`` is a path
    inside the sandbox, ``source`` a host path (bind mounts only).
    """

    kind: Literal["bind", "tmpfs"]
    target: str
    source: str | None = None
    readonly: bool = False
    size: int | str | None = None  # tmpfs only

    @classmethod
    def bind(cls, source: str, target: str, readonly: bool = False) -> Mount:
        """Make host path ``source`` visible at ``target`` (like ``-v SRC:DST[:ro]``)."""
        return cls("bind", target, source=source, readonly=readonly)

    @classmethod
    def tmpfs(cls, target: str, size: int | str | None = None, readonly: bool = False) -> Mount:
        """A fresh memory-backed file system at ``target``, gone when the sandbox ends."""
        return cls("tmpfs", target, size=size, readonly=readonly)

    def validated(self, index: int) -> Mount:
        where = f"mounts[{index}]"
        if self.kind not in ("bind", "tmpfs"):
            raise SpecError(f"{where}.kind", f"unknown mount kind {_shown(self.kind)}; use Mount.bind or Mount.tmpfs")
        target = _normalize_inside(self.target, f"{where}.target")
        if target == "/":
            raise SpecError(f"{where}.target", "cannot mount over '/'; use Spec.rootfs to choose the root")
        size = self.size
        if self.kind == "bind":
            source = _require_absolute(self.source, f"{where}.source")
            if not os.path.exists(source):
                raise SpecError(f"{where}.source", f"{_shown(source)} does not exist on the host")
            # The source is mounted as named, or not at all: a symlink on its path
            # (planted by whoever can write a directory on it -- a sandbox that had
            # that directory bound read-write, say) would bind something else, e.g.
            # /etc.  The C child opens it without following any symlink, so one
            # swapped in after this check fails the start (ELOOP), never redirects.
            source = os.path.normpath(source)  # "/srv/data/" and "/srv/./data" are /srv/data
            real = os.path.realpath(source)
            if real != source:
                raise SpecError(f"{where}.source", f"{_shown(source)} passes through a symlink (it leads to "
                                                   f"{real!r}); name the real path if that is what you mean")
            if size is not None:
                raise SpecError(f"{where}.size", "size applies to tmpfs mounts only")
        else:
            source = None
            if self.source is not None:
                raise SpecError(f"{where}.source", "tmpfs mounts take no source")
            if size is not None:
                size = parse_size(size, f"{where}.size")
        return Mount(self.kind, target, source=source, readonly=bool(self.readonly), size=size)


@record(frozen=True)
class IdMap:
    """One line of /proc/PID/uid_map or gid_map: ``inside`` maps to ``outside``, ``count`` ids."""

    inside: int
    outside: int
    count: int = 1


@record(frozen=True)
class Spec:
    """Everything needed to run one command in a sandbox; validated on construction.

    See DESIGN.md for the contract.  ``rootfs=None`` means minibox's own
    busybox rootfs (built on first use).  ``timeout`` is wall-clock seconds.
    ``namespaces=None`` means the default set (pid, mnt, uts, ipc, net,
    cgroup; net is left out for ``network="host"``); add ``"user"`` to map
    ids through a user namespace (``uid_map``/``gid_map``, defaulting to the
    caller's own id as root inside).

    ``rootfs_overlay=True`` puts a private, throw-away writable layer (an
    overlay on a tmpfs) over a named ``rootfs``, so the directory on the host
    is never written -- what ``docker run`` users expect; without it a named
    rootfs is used in place (its files are the container's, as with
    ``crun``/``runc``).  The shared default image always gets the layer.
    ``rootfs_overlay_size`` bounds that layer and the default image's
    private /tmp, each (bytes or ``"64M"``; the container sees ENOSPC
    beyond it; 1 GiB when not set: both are host memory).

    ``output_limit`` bounds each captured output stream (stdout, stderr) of
    the command and of each exec, in the caller's memory (bytes or
    ``"64M"``; 16 MiB by default; ``None`` keeps everything).  Beyond it the
    output is read and dropped -- the command runs on -- and the Result's
    bytes end with a ``[minibox: output truncated, ...]`` line.  Output sent
    to the caller's own file descriptors is neither captured nor bounded.
    """

    argv: Sequence[str]
    rootfs: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    cwd: str = "/"
    hostname: str = "minibox"
    user: tuple[int, int] = (0, 0)
    limits: Limits = field(default_factory=Limits)
    network: str = "none"
    mounts: Sequence[Mount] = ()
    readonly_rootfs: bool = False
    rootfs_overlay: bool = False
    rootfs_overlay_size: int | str | None = None
    timeout: float | None = None
    namespaces: Sequence[str] | None = None
    uid_map: Sequence[IdMap] | None = None
    gid_map: Sequence[IdMap] | None = None
    # Hardening (see docs/hardening.md)
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    no_new_privileges: bool = True
    seccomp: str | Mapping[str, Any] = "default"
    rlimits: Mapping[str, int | tuple[int, int]] = field(default_factory=dict)
    tty: bool = False
    init: bool = False
    # VM path
    kernel: str | None = None
    # Networking
    ports: Sequence[tuple[int, int]] = ()
    ip: str | None = None
    host_access: bool = False
    output_limit: int | str | None = DEFAULT_OUTPUT_LIMIT

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        # argv
        if isinstance(self.argv, (str, bytes)) or not isinstance(self.argv, Sequence):
            raise SpecError("argv", "expected a list of strings like ['/bin/sh', '-c', 'echo hi']")
        if not self.argv:
            raise SpecError("argv", "is empty; give the command to run")
        for i, arg in enumerate(self.argv):
            if not isinstance(arg, str):
                raise SpecError(f"argv[{i}]", f"expected a string, got {type(arg).__name__}")
            if "\x00" in arg:
                raise SpecError(f"argv[{i}]", "contains a NUL byte")
        if not self.argv[0]:
            raise SpecError("argv[0]", "is empty; give the program to run")
        set_(self, "argv", tuple(self.argv))
        # rootfs
        if self.rootfs is not None:
            rootfs = _require_absolute(self.rootfs, "rootfs")
            if not os.path.exists(rootfs):
                raise SpecError("rootfs",
                                f"{_shown(rootfs)} does not exist; build one with 'minibox rootfs busybox DIR'")
            if not os.path.isdir(rootfs):
                raise SpecError("rootfs", f"{_shown(rootfs)} is not a directory")
            set_(self, "rootfs", os.path.realpath(rootfs))
        # env
        if not isinstance(self.env, Mapping):
            raise SpecError("env", "expected a mapping of names to strings")
        for key, value in self.env.items():
            if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
                raise SpecError("env", f"invalid variable name {_shown(key)}")
            if not isinstance(value, str):
                raise SpecError(f"env[{_shown(key)}]", f"expected a string, got {type(value).__name__}")
            if "\x00" in value:
                raise SpecError(f"env[{_shown(key)}]", "contains a NUL byte")
        set_(self, "env", dict(self.env))
        # cwd, hostname
        _require_absolute(self.cwd, "cwd")
        if not isinstance(self.hostname, str) or not _valid_hostname(self.hostname) or len(self.hostname) > 64:
            raise SpecError("hostname", f"{_shown(self.hostname)} is not a valid host name "
                            "(letters, digits, '-', '.'; at most 64)")
        # user
        if (not isinstance(self.user, (tuple, list)) or len(self.user) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in self.user)):
            raise SpecError("user", f"expected (uid, gid) ints, got {_shown(self.user)}")
        uid, gid = self.user
        if not (0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
            raise SpecError("user", f"uid and gid must be within 0..4294967294, got {_shown(self.user)}")
        set_(self, "user", (uid, gid))
        # limits
        if not isinstance(self.limits, Limits):
            raise SpecError("limits", "expected a minibox.Limits")
        # network
        if self.network not in NETWORK_MODES:
            raise SpecError("network", f"unknown mode {_shown(self.network)}; use one of {', '.join(NETWORK_MODES)}")
        # mounts
        if isinstance(self.mounts, (str, bytes)) or not isinstance(self.mounts, Sequence):
            raise SpecError("mounts", "expected a list of minibox.Mount")
        mounts = []
        for i, mount in enumerate(self.mounts):
            if not isinstance(mount, Mount):
                raise SpecError(f"mounts[{i}]", "expected a minibox.Mount (Mount.bind or Mount.tmpfs)")
            mounts.append(mount.validated(i))
        set_(self, "mounts", tuple(mounts))
        # the rootfs's writable layer
        if not isinstance(self.rootfs_overlay, bool):
            raise SpecError("rootfs_overlay", f"expected True or False, got {_shown(self.rootfs_overlay)}")
        if self.rootfs_overlay and self.rootfs is not None and any(c in self.rootfs for c in ",:\\"):
            raise SpecError("rootfs", f"{_shown(self.rootfs)} holds ',', ':' or '\\', which overlayfs options "
                                      "cannot carry; use a path without them for rootfs_overlay")
        if self.rootfs_overlay_size is not None:
            if self.rootfs is not None and not self.rootfs_overlay:
                raise SpecError("rootfs_overlay_size", "bounds the overlay layer: set rootfs_overlay=True too")
            set_(self, "rootfs_overlay_size", parse_size(self.rootfs_overlay_size, "rootfs_overlay_size"))
        # timeout
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
                raise SpecError("timeout", f"expected seconds as a number, got {_shown(self.timeout)}")
            if not self.timeout <= MAX_TIMEOUT:  # also NaN; an int too large for a float is refused here
                raise SpecError("timeout", f"at most {MAX_TIMEOUT:.0f} s (24 days); use None for no timeout")
            if self.timeout <= 0:
                raise SpecError("timeout", f"must be positive, got {_shown(self.timeout)}")
        # output_limit: None is an explicit "keep everything", as timeout=None is "no timeout"
        if self.output_limit is not None:
            set_(self, "output_limit", parse_size(self.output_limit, "output_limit"))
        # namespaces
        if self.namespaces is not None:
            if isinstance(self.namespaces, (str, bytes)) or not isinstance(self.namespaces, Sequence):
                raise SpecError("namespaces", "expected a list such as ['pid', 'mnt']")
            for name in self.namespaces:
                if name not in NAMESPACES:
                    raise SpecError("namespaces", f"unknown namespace {_shown(name)}; known: {', '.join(NAMESPACES)}")
            if "mnt" not in self.namespaces:
                raise SpecError("namespaces", "'mnt' is required: the rootfs is set up in a private mount namespace")
            if self.network == "host" and "net" in self.namespaces:
                raise SpecError("namespaces", "network='host' shares the host's network namespace; drop 'net'")
            set_(self, "namespaces", tuple(dict.fromkeys(self.namespaces)))
        for name in ("uid_map", "gid_map"):
            maps: Any = getattr(self, name)
            if maps is None:
                continue
            if (isinstance(maps, (str, bytes)) or not isinstance(maps, Sequence) or not maps
                    or not all(isinstance(m, IdMap) for m in maps)):
                raise SpecError(name, "expected a non-empty list of minibox.spec.IdMap")
            for m in maps:
                numbers = (m.inside, m.outside, m.count)
                if (not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
                        or min(m.inside, m.outside) < 0 or m.count < 1
                        or max(m.inside, m.outside) + m.count > 2**32 - 1):
                    raise SpecError(name, f"invalid mapping {_shown(m)}: ids and counts are ints within 0..2**32-2")
            if "user" not in self.effective_namespaces:
                raise SpecError(name, "id maps need a user namespace; add 'user' to namespaces")
            set_(self, name, tuple(maps))
        # hardening: shapes only here; names are checked by policy.capabilities
        for name in ("cap_add", "cap_drop"):
            value = getattr(self, name)
            if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence)
                    or not all(isinstance(c, str) for c in value)):
                raise SpecError(name, "expected a list of capability names like ['NET_ADMIN']")
            set_(self, name, tuple(value))
        if not isinstance(self.seccomp, (str, Mapping)):
            raise SpecError("seccomp", "expected 'default', 'unconfined' or an OCI linux.seccomp mapping")
        if isinstance(self.seccomp, str) and self.seccomp not in ("default", "unconfined"):
            raise SpecError("seccomp",
                            f"unknown profile {_shown(self.seccomp)}; use 'default', 'unconfined' or a mapping")
        if not isinstance(self.rlimits, Mapping):
            raise SpecError("rlimits", "expected a mapping like {'RLIMIT_NOFILE': 1024}")
        set_(self, "rlimits", dict(self.rlimits))
        if self.kernel is not None:
            kernel = _require_absolute(self.kernel, "kernel")
            if not os.path.isfile(kernel):
                raise SpecError("kernel", f"{_shown(kernel)} is not a file; run 'minibox kernel' to provision one")
        if isinstance(self.ports, (str, bytes)) or not isinstance(self.ports, Sequence):
            raise SpecError("ports", "expected a list of (host_port, sandbox_port) pairs")
        ports = []
        for i, port in enumerate(self.ports):
            if (not isinstance(port, (tuple, list)) or len(port) != 2
                    or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in port)):
                raise SpecError(f"ports[{i}]",
                                f"expected (host_port, sandbox_port) within 1..65535, got {_shown(port)}")
            ports.append((int(port[0]), int(port[1])))
        set_(self, "ports", tuple(ports))
        if self.ip is not None:
            # the form here; whether it is free and in the bridge's subnet when the lease is taken
            import ipaddress

            try:
                if not isinstance(self.ip, str):
                    raise TypeError(type(self.ip).__name__)
                ipaddress.IPv4Address(self.ip)
            except (ValueError, TypeError) as e:
                raise SpecError("ip", f"expected an IPv4 address like '10.88.0.5', got {_shown(self.ip)}") from e
        if (self.ports or self.ip) and self.network != "bridge":
            raise SpecError("ports" if self.ports else "ip", "needs network='bridge'")
        if not isinstance(self.host_access, bool):
            raise SpecError("host_access", f"expected True or False, got {_shown(self.host_access)}")
        if self.host_access and self.network != "bridge":
            # 'host' is the host's network already; 'none' reaches nothing.  Refused rather
            # than ignored, so a Spec never claims a boundary it does not have.
            raise SpecError("host_access", "only means something with network='bridge'")

    @property
    def effective_namespaces(self) -> tuple[str, ...]:
        """The namespaces a container will get, after defaults.

        Rootless mode: for a caller that is not root, ``"user"`` is always
        added -- creating any other namespace needs CAP_SYS_ADMIN, which an
        unprivileged process has only inside a user namespace it owns.  For
        a root caller whose ``user`` is not root, ``"user"`` is added too
        (unless ``namespaces`` is given): the user then runs as a private
        host uid, not as the host's user of the same number.
        """
        if self.namespaces is not None:
            names = tuple(self.namespaces)
        elif self.network == "host":
            names = tuple(ns for ns in DEFAULT_NAMESPACES if ns != "net")
        else:
            names = DEFAULT_NAMESPACES
        if "user" not in names and (os.geteuid() != 0 or (self.namespaces is None and self.user[0] != 0)):
            # A root caller running a non-root user: without a user namespace
            # the command would share that uid with every host process of
            # the same uid (signals, /proc/PID/environ, files); with one it
            # gets a host uid of its own (container/userns.py, default_maps).
            names = ("user", *names)
        return names
